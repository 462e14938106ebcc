"""Symbolic proofs for `verify`: reductions to zero and series of discrete gradients.

`prove_zero` tries exact arithmetic on fractions of sparse polynomials (whose generators
are the symbols and function calls), then `expand`, `cancel(together(...))` and
`simplify`, each under a time bound. `prove_consistency` builds the truncated Laurent series
of `DG(x, x + t d)` in `t` and reduces its coefficients up to `t^0` the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import sympy as sp
from sympy.polys.domains import QQ
from sympy.polys.polyerrors import BasePolynomialError
from sympy.polys.rings import ring as polynomial_ring

from .calculus import diff
from .derive import Derivation
from .functions import MPMATH_FUNCTIONS, sigmoid, softplus
from .timing import time_limit

log = logging.getLogger("dgcodegen")

DIGITS = 50
"""Decimal digits of the numerical checks."""

MODULES = [MPMATH_FUNCTIONS, "mpmath"]
"""lambdify modules for 50-digit evaluation with softplus and sigmoid."""

ATTEMPT_SECONDS = {
    "polynomial fractions": 30.0,
    "expand": 10.0,
    "cancel": 20.0,
    "simplify": 10.0,
}
"""Symbolic reductions in the order tried, with the time bound of each."""

SERIES_SECONDS = 30.0
"""Time bound for building the series of one discrete gradient in the consistency proof."""

SERIES_PRECISIONS = (3, 5, 7)
"""Orders `P` of the series `DG(x, x + t d) + O(t^P)`, tried until the `t^0` term is known."""


class OutsideDomain(Exception):
    """The loss or the discrete gradient is not real and finite at a sampled point."""


def real_value(value: Any) -> mpmath.mpf:
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            raise OutsideDomain(f"complex value {value}")
        value = value.real
    value = mpmath.mpf(value)
    if not mpmath.isfinite(value):
        raise OutsideDomain(f"value {value}")
    return value


_SYMBOLIC_ERRORS = (TimeoutError, ArithmeticError, NotImplementedError, BasePolynomialError)


def prove_zero(exprs: list[sp.Expr]) -> str | None:
    """Return the name of the first reduction that turns every expression into 0, or None."""
    remaining = list(exprs)
    reductions: dict[str, Callable[[list[sp.Expr]], list[sp.Expr]]] = {
        "polynomial fractions": lambda items: _Fractions(*items).nonzero(),
        "expand": lambda items: [e for e in items if sp.expand(e) != 0],
        "cancel": lambda items: [e for e in items if sp.cancel(sp.together(e)) != 0],
        "simplify": lambda items: [e for e in items if sp.simplify(e) != 0],
    }
    for name, reduce in reductions.items():
        started = time.perf_counter()
        try:
            with time_limit(ATTEMPT_SECONDS[name]):
                remaining = reduce(remaining)
        except _SYMBOLIC_ERRORS as error:
            log.debug("%s gave up after %.1f s: %r", name, time.perf_counter() - started, error)
            continue
        if not remaining:
            return name
    return None


class _Fractions:
    """Exact arithmetic on an expression as a fraction of sparse polynomials over QQ.

    Symbols, function calls and powers with non-integer exponents become independent
    generators, so a numerator that vanishes proves the expression zero wherever it is
    defined. A denominator is a product of factors, which avoids the gcd computations of
    `cancel`. A numerator equal to a denominator factor cancels with it.
    """

    def __init__(self, *exprs: sp.Expr) -> None:
        generators: dict[Any, sp.Expr] = {}
        for expr in exprs:
            self._collect(expr, generators)
        names = [f"g{i}" for i in range(max(1, len(generators)))]
        self.ring, *symbols = polynomial_ring(names, QQ)
        self.generators = dict(zip(generators, symbols))
        self.exprs = exprs
        self.memo: dict[sp.Expr, tuple[Any, dict]] = {}

    def nonzero(self) -> list[sp.Expr]:
        """Return the expressions whose numerator is not the zero polynomial."""
        return [expr for expr in self.exprs if self._fraction(expr)[0] != 0]

    @staticmethod
    def _key(expr: sp.Expr) -> Any:
        if isinstance(expr, sp.Function):
            return expr.func, tuple(sp.expand(a) for a in expr.args)
        return expr

    def _collect(self, expr: sp.Expr, generators: dict[Any, sp.Expr]) -> None:
        stack, seen = [expr], set()
        while stack:
            node = stack.pop()
            if node in seen or node.is_Rational or node.is_Float:
                continue
            seen.add(node)
            if node.is_Add or node.is_Mul:
                stack.extend(node.args)
            elif node.is_Pow and node.exp.is_Integer:
                stack.append(node.base)
            else:
                generators.setdefault(self._key(node), node)

    def _fraction(self, expr: sp.Expr) -> tuple[Any, dict]:
        if expr in self.memo:
            return self.memo[expr]
        if expr.is_Rational or expr.is_Float:
            rational = sp.Rational(expr)
            result = (self.ring(QQ(int(rational.p), int(rational.q))), {})
        elif expr.is_Add:
            result = self._fraction(expr.args[0])
            for term in expr.args[1:]:
                result = self._add(result, self._fraction(term))
        elif expr.is_Mul:
            result = (self.ring.one, {})
            for factor in expr.args:
                result = self._multiply(result, self._fraction(factor))
        elif expr.is_Pow and expr.exp.is_Integer:
            base = self._fraction(expr.base)
            if expr.exp < 0:
                base = self._invert(base)
            result = (self.ring.one, {})
            for _ in range(abs(int(expr.exp))):
                result = self._multiply(result, base)
        else:
            result = (self.generators[self._key(expr)], {})
        self.memo[expr] = result
        return result

    def _add(self, a: tuple[Any, dict], b: tuple[Any, dict]) -> tuple[Any, dict]:
        if a[1] == b[1]:
            return a[0] + b[0], a[1]
        common = dict(a[1])
        for factor, exponent in b[1].items():
            common[factor] = max(common.get(factor, 0), exponent)
        return self._lift(a, common) + self._lift(b, common), common

    @staticmethod
    def _lift(fraction: tuple[Any, dict], common: dict) -> Any:
        numerator, denominator = fraction
        for factor, exponent in common.items():
            numerator = numerator * factor ** (exponent - denominator.get(factor, 0))
        return numerator

    def _multiply(self, a: tuple[Any, dict], b: tuple[Any, dict]) -> tuple[Any, dict]:
        denominator = dict(a[1])
        for factor, exponent in b[1].items():
            denominator[factor] = denominator.get(factor, 0) + exponent
        numerator = self.ring.one
        for part in (a[0], b[0]):
            if not part.is_ground and denominator.get(part.monic(), 0) > 0:
                denominator[part.monic()] -= 1
                part = self.ring(part.LC)
            numerator = numerator * part
        return numerator, {f: e for f, e in denominator.items() if e}

    def _invert(self, fraction: tuple[Any, dict]) -> tuple[Any, dict]:
        numerator, denominator = fraction
        if numerator == 0:
            raise ZeroDivisionError("a denominator is identically zero")
        inverse = self._lift((self.ring.one, {}), denominator)
        if numerator.is_ground:
            return inverse.quo_ground(numerator.LC), {}
        return inverse.quo_ground(numerator.LC), {numerator.monic(): 1}


# Consistency through series in t


class _Undecided(Exception):
    """The series cannot be formed, for example through a `Piecewise` that depends on `t`."""


class _Imprecise(Exception):
    """The series needs more terms to determine its `t^0` coefficient."""


_ANALYTIC_ON_REALS = (
    sp.exp,
    sp.sin,
    sp.cos,
    sp.sinh,
    sp.cosh,
    sp.tanh,
    sp.atan,
    sp.asinh,
    sp.erf,
    softplus,
    sigmoid,
)

_EXACT = 10**9
"""Order of a series without truncation error (a term free of `t`)."""


@dataclass
class _Series:
    """Truncated Laurent series `sum(terms[k] t^k) + O(t^order)` with SymPy coefficients."""

    terms: dict[int, sp.Expr]
    order: int

    @property
    def valuation(self) -> int:
        return min(self.terms, default=self.order)

    @property
    def constant(self) -> bool:
        return self.order >= _EXACT


def prove_consistency(derivation: Derivation, dg: list[sp.Expr], gradient: list[sp.Expr]):
    """Prove `lim_{t -> 0} DG(x, x + t d) = grad V(x)` for symbolic `d`, or return None."""
    direction = [sp.Symbol(f"d_{i}", real=True) for i in range(derivation.n)]
    coefficients = None
    for precision in SERIES_PRECISIONS:
        builder = _SeriesBuilder(derivation.x, derivation.y, direction, precision)
        try:
            with time_limit(SERIES_SECONDS):
                coefficients = builder.limit_terms(dg, gradient)
            break
        except _Imprecise:
            continue
        except (_Undecided, RecursionError, *_SYMBOLIC_ERRORS) as error:
            log.debug("no series for the consistency proof: %r", error)
            return None
    if coefficients is None:
        return None
    method = prove_zero(coefficients)
    return None if method is None else f"a series in t, then {method}"


class _SeriesBuilder:
    """Series of expressions in `t` after the substitution `y = x + t d`."""

    def __init__(self, x: list, y: list, direction: list, precision: int) -> None:
        self.precision = precision
        self.leaves = {
            yi: _Series({0: xi, 1: di}, precision) for xi, yi, di in zip(x, y, direction)
        }
        self.memo: dict[sp.Basic, _Series] = {}
        self.probe_values: dict[sp.Symbol, mpmath.mpf] = {}
        self.rng = np.random.default_rng(0)

    def limit_terms(self, dg: list[sp.Expr], gradient: list[sp.Expr]) -> list[sp.Expr]:
        """Return the coefficients of `t^k`, `k <= 0`, of `DG - grad V`, which must vanish."""
        result = []
        for entry, expected in zip(dg, gradient):
            series = self.add(self.build(entry), self.const(-expected))
            if series.order < 1:
                raise _Imprecise
            result += [series.terms[k] for k in sorted(series.terms) if k <= 0]
        if any(term.has(sp.zoo, sp.nan, sp.oo, -sp.oo) for term in result):
            raise _Undecided("a series coefficient is not finite")
        return result

    def const(self, expr: sp.Expr) -> _Series:
        return _Series({0: expr} if expr != 0 else {}, _EXACT)

    def build(self, expr: sp.Basic) -> _Series:
        if expr in self.memo:
            return self.memo[expr]
        if expr in self.leaves:
            result = self.leaves[expr]
        elif not expr.args:
            result = self.const(expr)
        elif expr.is_Add:
            result = self.const(sp.S.Zero)
            for term in expr.args:
                result = self.add(result, self.build(term))
        elif expr.is_Mul:
            result = self.const(sp.S.One)
            for factor in expr.args:
                result = self.multiply(result, self.build(factor))
        elif expr.is_Pow and expr.exp.is_Integer:
            result = self.power(self.build(expr.base), int(expr.exp))
        else:
            result = self.function(expr)
        self.memo[expr] = result
        return result

    def add(self, a: _Series, b: _Series) -> _Series:
        order = min(a.order, b.order)
        terms = {k: v for k, v in a.terms.items() if k < order}
        for k, v in b.terms.items():
            if k < order:
                terms[k] = terms.get(k, sp.S.Zero) + v
        return _Series({k: v for k, v in terms.items() if v != 0}, order)

    def multiply(self, a: _Series, b: _Series) -> _Series:
        order = min(a.order + b.valuation, b.order + a.valuation, _EXACT)
        terms: dict[int, sp.Expr] = {}
        for i, u in a.terms.items():
            for j, v in b.terms.items():
                if i + j < order:
                    terms[i + j] = terms.get(i + j, sp.S.Zero) + u * v
        return _Series({k: v for k, v in terms.items() if v != 0}, order)

    def power(self, base: _Series, exponent: int) -> _Series:
        if exponent < 0:
            base, exponent = self.invert(base), -exponent
        result = self.const(sp.S.One)
        for _ in range(exponent):
            result = self.multiply(result, base)
        return result

    def invert(self, a: _Series) -> _Series:
        """Return `1 / a` after stripping leading coefficients that vanish identically."""
        if a.constant:
            return self.const(1 / a.terms.get(0, sp.S.Zero))
        terms = dict(a.terms)
        while terms and self._vanishes(terms[min(terms)]):
            del terms[min(terms)]
        if not terms:
            raise _Imprecise
        v = min(terms)
        lead = terms.pop(v)
        u = _Series({k - v: c / lead for k, c in terms.items()}, a.order - v)
        result = self.const(sp.S.One)
        power = self.const(sp.S.One)
        negative_u = self.multiply(self.const(sp.S.NegativeOne), u)
        for _ in range(1, a.order - v):
            power = self.multiply(power, negative_u)
            result = self.add(result, power)
        shifted = {k - v: c / lead for k, c in result.terms.items()}
        return _Series(shifted, min(result.order, a.order - v) - v)

    def function(self, expr: sp.Basic) -> _Series:
        """Taylor-expand a call whose arguments are series, at most one of them not constant."""
        arguments = [self.build(argument) for argument in expr.args]
        moving = [i for i, argument in enumerate(arguments) if not argument.constant]
        if not moving:
            return self.const(expr)
        if len(moving) > 1 or not isinstance(expr, (sp.Function, sp.Pow)):
            raise _Undecided(f"cannot expand {type(expr).__name__} in t")
        index = moving[0]
        argument = arguments[index]
        if argument.valuation < 0:
            raise _Undecided(f"the argument of {type(expr).__name__} has a pole at t = 0")
        z = sp.Dummy("z", real=True)
        template = expr.func(*[z if i == index else a for i, a in enumerate(expr.args)])
        start = argument.terms.get(0, sp.S.Zero)
        self._require_regular(expr, index, start)
        step = _Series({k: v for k, v in argument.terms.items() if k != 0}, argument.order)
        result = self.const(template.xreplace({z: start}))
        power = self.const(sp.S.One)
        derivative = template
        for k in range(1, min(argument.order, self.precision)):
            power = self.multiply(power, step)
            derivative = diff(derivative, z)
            coefficient = derivative.xreplace({z: start}) / sp.factorial(k)
            result = self.add(result, self.multiply(self.const(coefficient), power))
        result.order = min(result.order, argument.order, self.precision)
        return result

    def _require_regular(self, expr: sp.Basic, index: int, start: sp.Expr) -> None:
        """Raise _Undecided unless the call is analytic in argument `index` at `start`.

        A constant `start` must be a point where the function is analytic. A `start` that
        varies with the symbols avoids the isolated singular points of every supported
        function for almost all `x`, which is all that an identity in `x` needs.
        """
        if not start.free_symbols:
            analytic = isinstance(expr, _ANALYTIC_ON_REALS) and start.is_extended_real
            nonzero = isinstance(expr, (sp.log, sp.Pow)) and start.is_zero is False
            if not (analytic or nonzero):
                raise _Undecided(f"{expr.func.__name__} may be singular at {start}")
            return
        first, second = self._probe(start), self._probe(start, fresh=True)
        if first is None or second is None or first == second:
            raise _Undecided(f"cannot show that {start} varies, so {expr.func} may be singular")

    def _probe(self, expr: sp.Expr, fresh: bool = False) -> mpmath.mpf | None:
        """Evaluate `expr` at the builder's random point, or at a new one when `fresh`."""
        symbols = sorted(expr.free_symbols, key=lambda s: s.name)
        values = {} if fresh else self.probe_values
        for symbol in symbols:
            if symbol not in values:
                values[symbol] = mpmath.mpf(float(self.rng.standard_normal()))
        try:
            with mpmath.workdps(DIGITS):
                function = sp.lambdify(symbols, expr, MODULES)
                return real_value(function(*[values[s] for s in symbols]))
        except (OutsideDomain, ZeroDivisionError, ValueError, TypeError):
            return None

    def _vanishes(self, coefficient: sp.Expr) -> bool:
        """Decide whether a leading coefficient is identically zero, or raise _Undecided."""
        value = self._probe(coefficient)
        if value is not None and abs(value) > mpmath.mpf("1e-30"):
            return False
        if not _Fractions(coefficient).nonzero():
            return True
        raise _Undecided(f"cannot decide whether {coefficient} vanishes")
