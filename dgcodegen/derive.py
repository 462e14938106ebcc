"""Derive: exact gradients, discrete gradients and their Jacobians as SymPy expressions.

Every kernel is described by *quantities* of one loss part (the per-sample term or
the data-free term), which are summed over samples, and a *combination* that maps the
summed quantities to the outputs. Discrete gradients are linear in the loss, so for
all but Gonzalez's the combination is the identity; Gonzalez's correction is a
nonlinear function of the summed loss difference and midpoint gradient.

Notation: `x` is the current point, `y` the next one, `d = y - x`, `m = (x + y) / 2`,
`r = |d|` and `u = d / r`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import sympy as sp

from . import itoh_abe
from .calculus import diff
from .dsl import Loss
from .errors import DerivationError
from .ridge import DividedDifference, find_ridge
from .timing import time_limit

log = logging.getLogger("dgcodegen")

GONZALEZ_SERIES_THRESHOLD = 1e-2
"""Below this `|y - x|` Gonzalez kernels use the series form of the correction.

The direct correction `(V(y) - V(x) - grad V(m) . d) / |d|^2` loses about
`eps |V| / |d|` to cancellation, which is `2e-14 |V|` at the threshold. The series
`(D^3 V(m)[d, d, d] / 24 + D^5 V(m)[d]^5 / 1920) / |d|^2` truncates at
`|d|^6 |D^7 V| / 322560`, about `3e-18 |D^7 V|` there. The classical balance point
with the leading series term alone is `(eps |V| / |V'''|)^(1/3)`; keeping the fifth-order
term moves the balance out to this larger, safer threshold.
"""

GAUSS_LEGENDRE_NODES = 8
"""Node count for mean-value integrands that are neither polynomial nor closed-form."""

CLOSED_FORM_SECONDS = 5.0
"""Time bound for `sympy.integrate` on one loss term."""

DENSE_WARNING_PARAMETERS = 20
"""Above this parameter count a per-sample term without ridge form triggers a warning."""

DISCRETE_GRADIENTS = {
    "mean-value": True,
    "gonzalez": True,
    "itoh-abe": False,
    "itoh-abe-symmetric": True,
}
"""Discrete gradients that `Derivation.symbolic_discrete_gradient` derives, each mapped to
whether it is symmetric, `DG(x, y) = DG(y, x)`."""


@dataclass(frozen=True)
class Ridge:
    """A loss term `l(z)` with `z` affine in the parameters and `slope = grad z`."""

    z: sp.Expr
    divided: DividedDifference
    slope: list[sp.Expr]


@dataclass
class MeanValueReport:
    """Record of the method behind the mean-value discrete gradient of each loss term."""

    methods: list[str] = field(default_factory=list)
    quadrature_error: float = 0.0


class Derivation:
    """All symbolic derivatives of one problem, computed on demand and cached."""

    def __init__(self, problem: Loss) -> None:
        self.problem = problem
        self.theta = problem.parameter_symbols
        self.n = len(self.theta)
        self.x = [sp.Symbol(f"x_{i}", real=True) for i in range(self.n)]
        self.y = [sp.Symbol(f"y_{i}", real=True) for i in range(self.n)]
        self.u = [sp.Symbol(f"u_{i}", real=True) for i in range(self.n)]
        self.r = sp.Symbol("r", nonnegative=True)
        self.d = [yi - xi for xi, yi in zip(self.x, self.y)]
        self.m = [(xi + yi) / 2 for xi, yi in zip(self.x, self.y)]
        self.divided_differences: list[DividedDifference] = []
        self.mean_value_report = MeanValueReport()
        self._cache: dict[tuple[str, str], object] = {}
        self.ridges, rest = self._split_ridges(problem.sample_term)
        self.parts = {"sample": rest, "free": problem.free_term}
        if rest != 0 and self.n > DENSE_WARNING_PARAMETERS:
            log.warning(
                "the per-sample term %s is not of the form l(a . x + c), so its kernels hold "
                "about n^2 = %d expressions per sample; derivation and compilation may take "
                "minutes",
                _short(rest),
                self.n**2,
            )

    def _split_ridges(self, expr: sp.Expr) -> tuple[list[Ridge], sp.Expr]:
        """Split the per-sample term into ridge terms `l(z)` and a remainder.

        Kernels sum ridge terms as `coefficient * slope` (and `slope slope^T` for
        matrices) in loops, so their size grows linearly with the parameter count.
        """
        ridges, rest = [], sp.S.Zero
        placeholder = sp.Symbol("z", real=True)
        for term in sp.Add.make_args(expr):
            found = (
                find_ridge(term, self.theta, placeholder)
                if term.free_symbols & set(self.theta)
                else None
            )
            if found is None:
                rest += term
                continue
            z, outer = found
            divided = self.divided_difference_for(outer, placeholder)
            slope = [diff(z, t) for t in self.theta]
            ridges.append(Ridge(z, divided, slope))
        return ridges, rest

    def divided_difference_for(self, outer: sp.Expr, placeholder: sp.Symbol) -> DividedDifference:
        """Return the divided-difference helper of `l = outer(placeholder)`, shared by equal `l`."""
        variable = sp.Symbol("z", real=True)
        profile = outer.xreplace({placeholder: variable})
        for candidate in self.divided_differences:
            if candidate.profile == profile:
                return candidate
        extra = tuple(sorted(profile.free_symbols - {variable}, key=lambda s: s.name))
        divided = DividedDifference(len(self.divided_differences), variable, profile, extra)
        self.divided_differences.append(divided)
        return divided

    def ridge_derivative(self, ridge: Ridge, order: int, point: list[sp.Expr]) -> sp.Expr:
        """`l^(order)(z(point))` for a ridge term."""
        divided = ridge.divided
        derivative = diff(divided.profile, divided.variable, order)
        return derivative.xreplace({divided.variable: self.at(ridge.z, point)})

    # Substitution helpers

    def at(self, expr: sp.Expr, point: list[sp.Expr]) -> sp.Expr:
        """Return `expr` with the parameters replaced by `point`."""
        return expr.xreplace(dict(zip(self.theta, point)))

    def _cached(self, key: tuple[str, str], build: Callable[[], object]) -> object:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def gradient(self, part: str) -> list[sp.Expr]:
        """Gradient of a loss part in the parameters."""
        expr = self.parts[part]
        return self._cached(("gradient", part), lambda: [diff(expr, t) for t in self.theta])

    def hessian(self, part: str) -> list[list[sp.Expr]]:
        """Hessian of a loss part; entries below the diagonal repeat those above."""

        def build() -> list[list[sp.Expr]]:
            grad = self.gradient(part)
            rows = [[sp.S.Zero] * self.n for _ in range(self.n)]
            for i in range(self.n):
                for j in range(i, self.n):
                    rows[i][j] = rows[j][i] = diff(grad[i], self.theta[j])
            return rows

        return self._cached(("hessian", part), build)

    # Mean value (average vector field)

    def mean_value(self, part: str) -> tuple[list[sp.Expr], list[list[sp.Expr]]]:
        """Return the mean-value discrete gradient of a part and its Jacobian in `y`."""
        return self._cached(("mean_value", part), lambda: self._mean_value(part))

    def _mean_value(self, part: str) -> tuple[list[sp.Expr], list[list[sp.Expr]]]:
        dg = [sp.S.Zero] * self.n
        jac = [[sp.S.Zero] * self.n for _ in range(self.n)]
        polynomial = sp.S.Zero
        for term in sp.Add.make_args(self.parts[part]):
            if not (term.free_symbols & set(self.theta)):
                continue
            if term.is_polynomial(*self.theta):
                polynomial += term
                continue
            term_dg, term_jac, method = self._mean_value_term(term)
            self.mean_value_report.methods.append(f"{method}: {_short(term)}")
            _accumulate(dg, jac, term_dg, term_jac)
        if polynomial != 0:
            term_dg, term_jac, method = self._mean_value_polynomial(polynomial)
            self.mean_value_report.methods.append(f"{method}: {_short(polynomial)}")
            _accumulate(dg, jac, term_dg, term_jac)
        return dg, jac

    def _mean_value_term(self, term: sp.Expr) -> tuple[list, list, str]:
        placeholder = sp.Symbol("z", real=True)
        ridge = find_ridge(term, self.theta, placeholder)
        if ridge is not None:
            return (*self._mean_value_ridge(*ridge, placeholder), "divided difference")
        closed = _closed_form_segment_integral(self, term)
        if closed is not None:
            return (*closed, "closed form")
        nodes = GAUSS_LEGENDRE_NODES
        error = self._quadrature_error_estimate(term, nodes)
        self.mean_value_report.quadrature_error = max(
            self.mean_value_report.quadrature_error, error
        )
        log.warning(
            "no exact mean value of %s: using Gauss-Legendre with %d nodes, estimated relative "
            "error %.1e at random points with |y - x| = 1",
            _short(term),
            nodes,
            error,
        )
        method = f"Gauss-Legendre, {nodes} nodes, estimated relative error {error:.1e}"
        return (*self._mean_value_quadrature(term, nodes), method)

    def _quadrature_error_estimate(self, term: sp.Expr, nodes: int, samples: int = 5) -> float:
        """Estimate the relative error of `nodes`-point Gauss-Legendre against twice the nodes.

        Parameters and data entries are drawn from a standard normal distribution and
        `y - x` is a random direction of length 1; the estimate is the largest relative
        difference over `samples` draws, at 30 digits.
        """
        import mpmath

        from .functions import MPMATH_FUNCTIONS

        others = sorted(term.free_symbols - set(self.theta), key=lambda s: s.name)
        grad = sp.lambdify(
            self.theta + others,
            [diff(term, t) for t in self.theta],
            modules=[MPMATH_FUNCTIONS, "mpmath"],
        )
        rng = np.random.default_rng(0)
        worst = 0.0
        with mpmath.workdps(30):
            for _ in range(samples):
                x = rng.normal(size=self.n)
                d = rng.normal(size=self.n)
                d /= np.linalg.norm(d)
                extra = [mpmath.mpf(v) for v in rng.normal(size=len(others))]

                def rule(count: int) -> list:
                    points, weights = _gauss_legendre(count)
                    total = [mpmath.mpf(0)] * self.n
                    for point, weight in zip(points, weights):
                        at = [
                            mpmath.mpf(xi) + mpmath.mpf(str(point)) * mpmath.mpf(di)
                            for xi, di in zip(x, d)
                        ]
                        values = grad(*at, *extra)
                        total = [t + mpmath.mpf(str(weight)) * v for t, v in zip(total, values)]
                    return total

                coarse, fine = rule(nodes), rule(2 * nodes)
                scale = max(max(abs(v) for v in fine), mpmath.mpf("1e-300"))
                difference = max(abs(a - b) for a, b in zip(coarse, fine))
                worst = max(worst, float(difference / scale))
        return worst

    def _mean_value_ridge(
        self, z: sp.Expr, outer: sp.Expr, placeholder: sp.Symbol
    ) -> tuple[list, list]:
        divided = self.divided_difference_for(outer, placeholder)
        ridge = Ridge(z, divided, [diff(z, t) for t in self.theta])
        quotient, derivative = self.ridge_quotients(ridge)
        dg = [a * quotient for a in ridge.slope]
        jac = [[a * b * derivative for b in ridge.slope] for a in ridge.slope]
        return dg, jac

    def ridge_quotients(self, ridge: Ridge) -> tuple[sp.Expr, sp.Expr]:
        """Divided difference of `l` between `z(x)` and `z(y)`, and its derivative in `z(y)`."""
        divided = ridge.divided
        z_x, z_y = self.at(ridge.z, self.x), self.at(ridge.z, self.y)
        quotient = divided.function(z_x, z_y, *divided.extra)
        derivative = divided.derivative_function(z_x, z_y, *divided.extra)
        return quotient, derivative

    def _mean_value_polynomial(self, term: sp.Expr) -> tuple[list, list, str]:
        s = sp.Symbol("s", real=True)
        grad = [diff(term, t) for t in self.theta]
        segment = [xi + s * di for xi, di in zip(self.x, self.d)]
        try:
            with time_limit(CLOSED_FORM_SECONDS):
                dg = []
                for g in grad:
                    poly = sp.Poly(self.at(g, segment), s)
                    coefficients = poly.all_coeffs()[::-1]
                    dg.append(sum(c / (k + 1) for k, c in enumerate(coefficients)))
                jac = [[diff(g, yj) for yj in self.y] for g in dg]
            return dg, jac, "closed form (polynomial)"
        except TimeoutError:
            degree = sp.Poly(term, *self.theta).total_degree()
            nodes = max(1, math.ceil(degree / 2))
            dg, jac = self._mean_value_quadrature(term, nodes)
            return dg, jac, f"Gauss-Legendre, {nodes} nodes, exact for degree {degree}"

    def _mean_value_quadrature(self, term: sp.Expr, nodes: int) -> tuple[list, list]:
        points, weights = _gauss_legendre(nodes)
        grad = [diff(term, t) for t in self.theta]
        hess = [[diff(g, t) for t in self.theta] for g in grad]
        dg = [sp.S.Zero] * self.n
        jac = [[sp.S.Zero] * self.n for _ in range(self.n)]
        for s, w in zip(points, weights):
            point = [xi + s * di for xi, di in zip(self.x, self.d)]
            for i in range(self.n):
                dg[i] += w * self.at(grad[i], point)
                for j in range(self.n):
                    jac[i][j] += w * s * self.at(hess[i][j], point)
        return dg, jac

    # Whole discrete gradients, for verification

    def explicit(self, expr: sp.Expr) -> sp.Expr:
        """Replace every divided-difference helper call by its direct quotient."""
        for divided in self.divided_differences:
            profile, variable = divided.profile, divided.variable

            def quotient(a, b, *extra, profile=profile, variable=variable):  # noqa: ANN001, ANN202
                return (profile.xreplace({variable: b}) - profile.xreplace({variable: a})) / (b - a)

            expr = expr.replace(divided.function, quotient)
        return expr

    def one_sample_loss(self) -> sp.Expr:
        """`V` for one sample with symbolic data: per-sample term plus data-free term.

        Every discrete gradient here is linear in the loss, so an identity proven for this
        expression, with the data entries as free symbols, holds for every data set and
        both reductions.
        """
        return self.problem.sample_term + self.problem.free_term

    def symbolic_discrete_gradient(self, method: str) -> list[sp.Expr]:
        """Return DG(x, y) of the one-sample loss as explicit expressions in x, y and data."""
        loss = self.one_sample_loss()
        if method == "mean-value":
            dg = [a + b for a, b in zip(self.mean_value("sample")[0], self.mean_value("free")[0])]
            for ridge in self.ridges:
                quotient = self.ridge_quotients(ridge)[0]
                dg = [g + a * quotient for g, a in zip(dg, ridge.slope)]
            return [self.explicit(g) for g in dg]
        if method == "gonzalez":
            grad_m = [self.at(diff(loss, t), self.m) for t in self.theta]
            squared = sum(di**2 for di in self.d)
            remainder = self.at(loss, self.y) - self.at(loss, self.x) - _dot(grad_m, self.d)
            return [g + remainder / squared * di for g, di in zip(grad_m, self.d)]
        if method in ("itoh-abe", "itoh-abe-symmetric"):
            orders = ("forward",) if method == "itoh-abe" else itoh_abe.ORDERS
            parts = [itoh_abe.explicit_discrete_gradient(self, loss, o) for o in orders]
            return [sum(values, sp.S.Zero) / len(parts) for values in zip(*parts)]
        raise DerivationError(f"unknown discrete gradient {method!r}")

    def itoh_abe(self, part: str, order: str) -> tuple[list[sp.Expr], list[list[sp.Expr]]]:
        """Return the Itoh-Abe discrete gradient of a part in `order` and its Jacobian in y."""
        return self._cached(
            (f"itoh_abe_{order}", part),
            lambda: itoh_abe.dense_discrete_gradient(self, part, order),
        )

    # Gonzalez midpoint discrete gradient

    def directional(self, part: str, order: int) -> sp.Expr:
        """`D^order V(m)[u, ..., u] / (order! 2^(order-1))`: the odd series coefficient."""

        def build() -> sp.Expr:
            t = sp.Symbol("t", real=True)
            point = [mi + t * ui for mi, ui in zip(self.m, self.u)]
            expr = diff(self.at(self.parts[part], point), t, order).subs(t, 0)
            return expr / (sp.factorial(order) * 2 ** (order - 1))

        return self._cached((f"directional{order}", part), build)


def _closed_form_segment_integral(derivation: Derivation, term: sp.Expr):
    """Integrate `grad term` along the segment with SymPy, or return None.

    The result is accepted only when it arrives within CLOSED_FORM_SECONDS, contains no
    unevaluated integral or case split, stays finite at `y = x`, and matches the
    gradient there. Closed forms with a removable singularity at `y = x` are rejected,
    because their kernels would lose digits near it.
    """
    s = sp.Symbol("s", real=True)
    segment = [xi + s * di for xi, di in zip(derivation.x, derivation.d)]
    try:
        with time_limit(CLOSED_FORM_SECONDS):
            dg = []
            for t in derivation.theta:
                integrand = derivation.at(diff(term, t), segment)
                value = sp.integrate(integrand, (s, 0, 1))
                if value.has(sp.Integral, sp.Piecewise):
                    return None
                at_x = value.xreplace(dict(zip(derivation.y, derivation.x)))
                if at_x.has(sp.nan, sp.zoo, sp.oo):
                    return None
                if sp.simplify(at_x - derivation.at(diff(term, t), derivation.x)) != 0:
                    return None
                dg.append(value)
            if not _matches_quadrature(derivation, term, dg):
                log.warning("sympy.integrate gave a wrong mean value of %s; not used", _short(term))
                return None
            jac = [[diff(g, yj) for yj in derivation.y] for g in dg]
    except TimeoutError:
        log.info("sympy.integrate exceeded %.0f s on %s", CLOSED_FORM_SECONDS, _short(term))
        return None
    return dg, jac


def _matches_quadrature(derivation: Derivation, term: sp.Expr, closed: list[sp.Expr]) -> bool:
    """Compare a closed-form mean value with adaptive quadrature at random points, 30 digits."""
    import mpmath

    from .functions import MPMATH_FUNCTIONS

    modules = [MPMATH_FUNCTIONS, "mpmath"]
    others = sorted(term.free_symbols - set(derivation.theta), key=lambda s: s.name)
    grad = sp.lambdify(
        derivation.theta + others, [diff(term, t) for t in derivation.theta], modules
    )
    value = sp.lambdify(derivation.x + derivation.y + others, closed, modules)
    rng = np.random.default_rng(1)
    with mpmath.workdps(30):
        for _ in range(3):
            x = [mpmath.mpf(v) for v in rng.normal(size=derivation.n)]
            y = [mpmath.mpf(v) for v in rng.normal(size=derivation.n)]
            extra = [mpmath.mpf(v) for v in rng.normal(size=len(others))]
            got = value(*x, *y, *extra)
            for i in range(derivation.n):

                def integrand(s, i=i):  # noqa: ANN001, ANN202 - mpmath callback
                    return grad(*[a + s * (b - a) for a, b in zip(x, y)], *extra)[i]

                expected = mpmath.quad(integrand, [0, 1])
                if abs(got[i] - expected) > mpmath.mpf("1e-20") * max(1, abs(expected)):
                    return False
    return True


def _gauss_legendre(nodes: int) -> tuple[list[sp.Float], list[sp.Float]]:
    """Gauss-Legendre nodes and weights on [0, 1] at 30 digits."""
    points, weights = np.polynomial.legendre.leggauss(nodes)
    result_points, result_weights = [], []
    for p, w in zip(points, weights):
        result_points.append(sp.Float((p + 1) / 2, 17))
        result_weights.append(sp.Float(w / 2, 17))
    return result_points, result_weights


def _accumulate(dg, jac, term_dg, term_jac) -> None:
    for i in range(len(dg)):
        dg[i] += term_dg[i]
        for j in range(len(dg)):
            jac[i][j] += term_jac[i][j]


def _flatten(rows: list[list[sp.Expr]]) -> list[sp.Expr]:
    return [entry for row in rows for entry in row]


def _unflatten(values: list[sp.Expr], n: int) -> list[list[sp.Expr]]:
    return [list(values[i * n : (i + 1) * n]) for i in range(n)]


def _dot(a: list[sp.Expr], b: list[sp.Expr]) -> sp.Expr:
    return sp.Add(*[ai * bi for ai, bi in zip(a, b)])


def _short(expr: sp.Expr, limit: int = 80) -> str:
    text = str(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_derivable(problem: Loss) -> None:
    """Raise DerivationError when a loss term has no usable derivative."""
    for part in (problem.sample_term, problem.free_term):
        for t in problem.parameter_symbols:
            derivative = diff(part, t)
            if derivative.has(sp.Derivative, sp.Subs):
                raise DerivationError(f"the derivative of {_short(part)} in {t} is not explicit")
