"""Divided differences of univariate functions, with a series branch near coincidence.

A loss term of the form `l(z)` with `z` affine in the parameters (a ridge, such as
`softplus(-y (w . x + b))`) has the exact mean-value discrete gradient
`grad z * (l(z_y) - l(z_x)) / (z_y - z_x)`. The quotient is `0/0` at `z_y = z_x` and
loses digits to cancellation near it, so each divided difference is rendered as its
own kernel helper that switches, per term, to the Taylor series about the midpoint

    (l(c + h/2) - l(c - h/2)) / h = sum_k l^(2k+1)(c) (h/2)^(2k) / (2k+1)!

when `|h| < DIVIDED_DIFFERENCE_THRESHOLD`. With terms up to `l^(9)` the truncation error
is below `(h/2)^10 |l^(11)| / 11!`, about `1e-30 |l^(11)|` at the threshold, while the
direct quotient there loses at most `eps |l| / h`, about `2e-14 |l|`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from .calculus import diff

DIVIDED_DIFFERENCE_THRESHOLD = 1e-2
"""Below this `|z_y - z_x|` the kernels evaluate divided differences by their series."""

SERIES_ORDER = 4
"""Number of series terms after the first: derivatives up to `l^(2 * SERIES_ORDER + 1)`."""


@dataclass(frozen=True)
class DividedDifference:
    """Branches of the first divided difference of `l` and of its derivative in `b`.

    `l` is an expression in `variable`; `extra` lists the other symbols it depends on
    (data entries), which the kernel helper takes as further arguments.
    """

    index: int
    variable: sp.Symbol
    profile: sp.Expr
    extra: tuple[sp.Symbol, ...]

    @property
    def function(self) -> type[sp.Function]:
        """Opaque SymPy function `ddiff<k>(a, b, *extra)` that stands for the quotient."""
        return sp.Function(f"ddiff{self.index}", real=True)

    @property
    def derivative_function(self) -> type[sp.Function]:
        """Opaque SymPy function for `d/db` of the quotient."""
        return sp.Function(f"ddiff{self.index}_db", real=True)

    def kinks(self) -> list[sp.Expr] | None:
        """Points where the profile may not be smooth, or None when they are unknown.

        They are the zeros, in `variable`, of the arguments of `Abs`, `sign` and
        `Heaviside`, of the differences of `Max` and `Min` arguments, and of `Piecewise`
        conditions. The series branch is valid only on intervals that contain none of them.
        """
        candidates = []
        for node in sp.preorder_traversal(self.profile):
            if isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
                candidates.append(node.args[0])
            elif isinstance(node, (sp.Max, sp.Min)):
                candidates += [p - q for p, q in zip(node.args, node.args[1:])]
            elif isinstance(node, sp.Piecewise):
                for piece in node.args:
                    for relation in sp.preorder_traversal(piece.cond):
                        if isinstance(relation, sp.core.relational.Relational):
                            candidates.append(relation.lhs - relation.rhs)
        points: list[sp.Expr] = []
        for candidate in candidates:
            roots = _linear_roots(candidate, self.variable)
            if roots is None:
                return None
            points += [root for root in roots if root not in points]
        return points

    def branches(self, a: sp.Symbol, b: sp.Symbol) -> dict[str, sp.Expr]:
        """Return the direct and series expressions of the quotient and of its `b`-derivative."""
        h = b - a
        center = (a + b) / 2
        c, k = sp.Symbol("c", real=True), sp.Symbol("k", real=True)
        derivatives = [self.profile.subs(self.variable, c)]
        for _ in range(2 * SERIES_ORDER + 2):
            derivatives.append(diff(derivatives[-1], c))
        series = sum(
            derivatives[2 * j + 1] * (k / 2) ** (2 * j) / sp.factorial(2 * j + 1)
            for j in range(SERIES_ORDER + 1)
        )
        series_db = diff(series, c) / 2 + diff(series, k)
        at = {c: center, k: h}
        quotient = (self.profile.subs(self.variable, b) - self.profile.subs(self.variable, a)) / h
        l_prime_b = derivatives[1].subs(c, b)
        return {
            "quotient_series": series.subs(at),
            "quotient_direct": quotient,
            "derivative_series": series_db.subs(at),
            "derivative_direct": (l_prime_b - self.function(a, b, *self.extra)) / h,
        }


def is_affine(expr: sp.Expr, variables: list[sp.Symbol]) -> bool:
    """Return whether `expr` is a polynomial of total degree at most 1 in `variables`."""
    present = [v for v in variables if v in expr.free_symbols]
    if not present:
        return False
    if not expr.is_polynomial(*present):
        return False
    return sp.Poly(expr, *present).total_degree() <= 1


def find_ridge(
    term: sp.Expr, variables: list[sp.Symbol], placeholder: sp.Symbol
) -> tuple[sp.Expr, sp.Expr] | None:
    """Write `term` as `l(z)` with `z` affine in `variables`, if it has that form.

    Returns `(z, l)` with `l` an expression in `placeholder`, or None. The search visits
    subexpressions outermost first, so `z` is the largest affine argument.
    """
    variable_set = set(variables)
    for node in sp.preorder_traversal(term):
        if node is term or not (node.free_symbols & variable_set):
            continue
        if not isinstance(node, sp.Expr) or not is_affine(node, variables):
            continue
        outer = term.xreplace({node: placeholder})
        if not (outer.free_symbols & variable_set):
            return node, outer
    return None


def _linear_roots(expr: sp.Expr, variable: sp.Symbol) -> list[sp.Expr] | None:
    """Zeros of `expr` in `variable` when every `Abs` branch of it is affine, else None.

    `Abs(u)` is replaced by `u` and by `-u` in turn, so `Abs(y z) - 1` gives `z = 1/y` and
    `z = -1/y`. A branch of degree 0 in `variable` has no zero.
    """
    absolutes = sorted({n for n in sp.preorder_traversal(expr) if isinstance(n, sp.Abs)}, key=str)
    if len(absolutes) > 4:
        return None
    roots: list[sp.Expr] = []
    for signs in itertools.product((1, -1), repeat=len(absolutes)):
        branch = expr.xreplace({a: s * a.args[0] for a, s in zip(absolutes, signs)})
        if variable not in branch.free_symbols:
            continue
        if not branch.is_polynomial(variable):
            return None
        polynomial = sp.Poly(branch, variable)
        if polynomial.degree() > 1:
            return None
        slope, offset = polynomial.all_coeffs()
        root = sp.simplify(-offset / slope)
        if root not in roots:
            roots.append(root)
    return roots
