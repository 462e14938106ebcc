"""Verify: prove or check the identities that make each discrete gradient of a spec exact.

For every discrete gradient that dgcodegen derives (the keys of `DISCRETE_GRADIENTS`) and
every one the spec supplies by hand, `verify` checks

- the mean-value identity `DG(x, y) . (y - x) = V(y) - V(x)`;
- consistency `DG(x, x) = grad V(x)`, as the limit of `DG(x, x + t d)` for `t -> 0`;
- symmetry `DG(x, y) = DG(y, x)`, for symmetric discrete gradients only;
- the energy identity `V(y) - V(x) = -|y - x|^2 / tau` of the step `y = x - tau DG(x, y)`.

`V` is the loss of one sample with the data entries as free symbols. Every discrete gradient
is linear in the loss, so an identity proven for `V` holds for every data set and for both
reductions.

Each identity is first evaluated with 50-digit mpmath arithmetic at 20 random points. A
relative error above 1e-40 at any of them, measured against the size of the terms that
cancel, makes the result `failed`, with that point.
Otherwise SymPy tries to reduce the difference to zero, each attempt under a time bound:
exact arithmetic on fractions of sparse polynomials whose generators are the symbols and
function calls (`cancel` without its gcd computations), then `expand`,
`cancel(together(...))` and `simplify`. A reduction to zero makes the result `proven`, and
numerical agreement without one makes it `checked`. Consistency is proven through the
truncated Laurent series of `DG(x, x + t d)` in `t`, whose coefficients up to `t^0` are then
reduced the same way. The energy identity is `proven` when the mean-value identity is,
because dotting `y - x + tau DG(x, y) = 0` with `y - x` gives it. Otherwise it is checked on
steps that Newton's method solves at random `x` and `tau`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mpmath
import numpy as np
import sympy as sp
from sympy.polys.domains import QQ
from sympy.polys.polyerrors import BasePolynomialError
from sympy.polys.rings import ring as polynomial_ring

from . import __version__
from .calculus import diff
from .derive import DISCRETE_GRADIENTS, Derivation, _time_limit
from .dsl import Loss
from .errors import DgcodegenError
from .functions import MPMATH_FUNCTIONS, sigmoid, softplus

log = logging.getLogger("dgcodegen")

PROVEN, CHECKED, FAILED = "proven", "checked", "failed"

DIGITS = 50
"""Decimal digits of the numerical checks."""

TOLERANCE = mpmath.mpf("1e-40")
"""Largest relative error that a numerical check accepts."""

POINTS = 20
"""Random points per numerical check; `|y - x|` is spread log-uniformly over SPREAD."""

SPREAD = (1e-6, 1.0)

CONSISTENCY_STEP = mpmath.mpf("1e-45")
"""`t` of the numerical consistency check `DG(x, x + t d) ~ grad V(x)` with `|d| = 1`.

The truncation error is `O(t)`, far below TOLERANCE. The cancellation in `V(y) - V(x)`
costs up to 45 digits, so that check runs at CONSISTENCY_DIGITS.
"""

CONSISTENCY_DIGITS = 150

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

MODULES = [MPMATH_FUNCTIONS, "mpmath"]
_SYMBOLIC_ERRORS = (TimeoutError, ArithmeticError, NotImplementedError, BasePolynomialError)

NOTES = [
    (
        "V is the loss of one sample with the data entries as free symbols. Every discrete "
        "gradient is linear in the loss, so an identity proven for V holds for every data "
        "set and for both reductions."
    ),
    (
        f"Numerical checks use {DIGITS}-digit mpmath at {POINTS} random points with |y - x| "
        f"from {SPREAD[0]:g} to {SPREAD[1]:g}, and consistency uses y = x + 1e-45 d at "
        f"{CONSISTENCY_DIGITS} digits."
    ),
]
"""Sentences that every certificate ends with."""


@dataclass
class Result:
    """Outcome of one identity for one discrete gradient."""

    identity: str
    discrete_gradient: str
    status: str
    method: str
    point: dict[str, Any] | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        record = {
            "identity": self.identity,
            "discrete_gradient": self.discrete_gradient,
            "status": self.status,
            "method": self.method,
            "seconds": round(self.seconds, 3),
        }
        if self.point is not None:
            record["point"] = self.point
        return record


@dataclass
class Report:
    """All results for one spec."""

    spec: str
    parameters: int
    symmetric: dict[str, bool] = field(default_factory=dict)
    """Whether each discrete gradient is declared symmetric, by name."""
    results: list[Result] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.status != FAILED for result in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "dgcodegen_version": __version__,
            "parameters": self.parameters,
            "passed": self.passed,
            "symmetric": self.symmetric,
            "notes": NOTES,
            "results": [result.as_dict() for result in self.results],
        }

    def certificate(self) -> str:
        """Render the report as text, one line per identity and discrete gradient."""
        names = [name + " (symmetric)" * self.symmetric[name] for name in self.symmetric]
        lines = [
            f"dgcodegen {__version__} verify: {self.spec} ({self.parameters} parameters)",
            f"discrete gradients: {', '.join(names)}",
            f"{'identity':<12} {'discrete gradient':<20} result",
        ]
        for result in self.results:
            lines.append(f"{result.identity:<12} {result.discrete_gradient:<20} {result.method}")
        lines += NOTES
        failed = sum(result.status == FAILED for result in self.results)
        lines.append(f"{failed} identities failed." if failed else "No identity failed.")
        return "\n".join(lines) + "\n"


class _OutsideDomain(Exception):
    """The loss or the discrete gradient is not real and finite at a sampled point."""


# Verification of one spec


def verify(problem: Loss, seed: int = 0) -> Report:
    """Check every derived and hand-written discrete gradient of `problem`.

    Time bounds on the symbolic work apply on the main thread only, because they use
    SIGALRM.

    Args:
        problem: the spec's loss.
        seed: seed of the random points of the numerical checks.
    """
    started = time.perf_counter()
    derivation = Derivation(problem)
    sampler = _Sampler(derivation, seed)
    report = Report(problem.name or "problem", derivation.n)
    candidates = [(name, symmetric, None) for name, symmetric in DISCRETE_GRADIENTS.items()]
    candidates += [(name, h.symmetric, h) for name, h in problem.discrete_gradients.items()]
    for name, symmetric, hand in candidates:
        report.symmetric[name] = symmetric
        try:
            if hand is None:
                dg = derivation.symbolic_discrete_gradient(name)
            else:
                x, y = sp.Matrix(derivation.x), sp.Matrix(derivation.y)
                dg = problem.evaluate_discrete_gradient(name, x, y)
        except DgcodegenError as error:
            identities = ["mean-value", "consistency"] + ["symmetry"] * symmetric + ["energy"]
            report.results += [Result(i, name, FAILED, f"not derived: {error}") for i in identities]
            continue
        report.results += _verify_one(derivation, sampler, name, dg, symmetric)
    failed = sum(result.status == FAILED for result in report.results)
    log.info(
        "verified %d identities of %s, %d failed, in %.1f s",
        len(report.results),
        report.spec,
        failed,
        time.perf_counter() - started,
    )
    return report


def _verify_one(
    derivation: Derivation, sampler: _Sampler, name: str, dg: list[sp.Expr], symmetric: bool
) -> list[Result]:
    x, y = derivation.x, derivation.y
    evaluate = sampler.compile(x + y, dg)
    loss = derivation.one_sample_loss()
    difference = _dot(dg, derivation.d) - (derivation.at(loss, y) - derivation.at(loss, x))
    gradient = [derivation.at(diff(loss, t), x) for t in derivation.theta]

    def mean_value_error(point: _Point) -> mpmath.mpf:
        terms = [
            g * (b - a)
            for g, a, b in zip(evaluate(point.x + point.y, point.data), point.x, point.y)
        ]
        before, after = sampler.value(point.x, point.data), sampler.value(point.y, point.data)
        scale = sum(abs(term) for term in terms) + abs(before) + abs(after)
        return _ratio(abs(sum(terms) - (after - before)), scale)

    def consistency_error(point: _Point) -> mpmath.mpf:
        with mpmath.workdps(CONSISTENCY_DIGITS):
            near = [a + CONSISTENCY_STEP * b for a, b in zip(point.x, point.direction)]
            return _relative(evaluate(point.x + near, point.data), sampler.gradient(point))

    def symmetry_error(point: _Point) -> mpmath.mpf:
        forward = evaluate(point.x + point.y, point.data)
        return _relative(forward, evaluate(point.y + point.x, point.data))

    checks = [
        ("mean-value", mean_value_error, lambda: _prove_zero([difference])),
        ("consistency", consistency_error, lambda: _prove_consistency(derivation, dg, gradient)),
    ]
    if symmetric:
        swap = {**dict(zip(x, y)), **dict(zip(y, x))}
        antisymmetric = [g - g.xreplace(swap) for g in dg]
        checks.append(("symmetry", symmetry_error, lambda: _prove_zero(antisymmetric)))
    results = [_check(identity, name, error, prove, sampler) for identity, error, prove in checks]
    results.append(_check_energy(results[0], evaluate, sampler, name))
    for result in results:
        log.debug("%s identity of %s: %s", result.identity, name, result.method)
    return results


def _check(
    identity: str,
    name: str,
    error: Callable[[_Point], mpmath.mpf],
    prove: Callable[[], str | None],
    sampler: _Sampler,
) -> Result:
    """Evaluate an identity at random points, then try to prove it if it held at all."""
    started = time.perf_counter()
    failure = sampler.find_failure(error, consistency=identity == "consistency")
    if failure is not None:
        result = Result(identity, name, FAILED, failure[0], failure[1])
    elif (method := prove()) is None:
        text = f"checked at {POINTS} points to {float(TOLERANCE):.0e}, no proof found"
        result = Result(identity, name, CHECKED, text)
    else:
        result = Result(identity, name, PROVEN, f"proven by {method}")
    result.seconds = time.perf_counter() - started
    return result


def _check_energy(mean_value: Result, evaluate: Callable, sampler: _Sampler, name: str) -> Result:
    """Prove the energy identity from the mean-value identity, or check it on solved steps."""
    if mean_value.status == PROVEN:
        method = "proven: follows from the mean-value identity (dot the step with y - x)"
        return Result("energy", name, PROVEN, method)
    started = time.perf_counter()
    failure = sampler.find_energy_failure(evaluate)
    if failure is not None:
        result = Result("energy", name, FAILED, failure[0], failure[1])
    else:
        text = f"checked at {POINTS} solved steps to {float(TOLERANCE):.0e}"
        result = Result("energy", name, CHECKED, text)
    result.seconds = time.perf_counter() - started
    return result


# Random points and numerical checks


@dataclass
class _Point:
    x: list[mpmath.mpf]
    y: list[mpmath.mpf]
    direction: list[mpmath.mpf]
    data: list[mpmath.mpf]

    def describe(self, names: list[str], consistency: bool) -> tuple[str, dict[str, Any]]:
        """Return the point as text and as a JSON record; floats keep every digit drawn."""
        point: dict[str, Any] = {"x": [float(v) for v in self.x]}
        if consistency:
            point["d"] = [float(v) for v in self.direction]
            point["t"] = float(CONSISTENCY_STEP)
        else:
            point["y"] = [float(v) for v in self.y]
        if names:
            point["data"] = {name: float(v) for name, v in zip(names, self.data)}
        return ", ".join(f"{key}={value}" for key, value in point.items()), point


class _Sampler:
    """Random points, and 50-digit evaluation of `V`, its gradient and discrete gradients.

    Parameters and data entries are standard normal, and `|y - x|` runs log-uniformly
    through SPREAD. All of them are doubles, so a reported point reproduces exactly.
    """

    def __init__(self, derivation: Derivation, seed: int) -> None:
        self.n = derivation.n
        self.seed = seed
        self.data_symbols = [s for column in derivation.problem.data_symbols for s in column]
        loss = derivation.one_sample_loss()
        gradient = [derivation.at(diff(loss, t), derivation.x) for t in derivation.theta]
        self._value = self.compile(derivation.x, [derivation.at(loss, derivation.x)])
        self._gradient = self.compile(derivation.x, gradient)

    def compile(self, arguments: list[sp.Symbol], exprs: list[sp.Expr]) -> Callable:
        """Lambdify `exprs` in `arguments` and the data symbols, returning real mpf values."""
        function = sp.lambdify(arguments + self.data_symbols, exprs, MODULES, cse=True)

        def evaluate(values: list[mpmath.mpf], data: list[mpmath.mpf]) -> list[mpmath.mpf]:
            try:
                results = function(*values, *data)
            except (ZeroDivisionError, ValueError, OverflowError) as error:
                raise _OutsideDomain(str(error)) from error
            return [_real(v) for v in results]

        return evaluate

    def value(self, point: list[mpmath.mpf], data: list[mpmath.mpf]) -> mpmath.mpf:
        return self._value(point, data)[0]

    def gradient(self, point: _Point) -> list[mpmath.mpf]:
        return self._gradient(point.x, point.data)

    def points(self) -> Iterator[_Point]:
        """Yield up to 10 * POINTS random points, so that POINTS of them can be in the domain."""
        rng = np.random.default_rng(self.seed)
        low, high = (math.log10(bound) for bound in SPREAD)
        for attempt in range(10 * POINTS):
            x = rng.standard_normal(self.n)
            direction = rng.standard_normal(self.n)
            direction /= np.linalg.norm(direction)
            y = x + 10 ** (low + (high - low) * (attempt % POINTS) / (POINTS - 1)) * direction
            data = rng.standard_normal(len(self.data_symbols))
            yield _Point(*(_mpf_list(v) for v in (x, y, direction, data)))

    def find_failure(
        self, error: Callable[[_Point], mpmath.mpf], consistency: bool = False
    ) -> tuple[str, dict[str, Any]] | None:
        """Return the text and record of the first point with an error above TOLERANCE."""
        valid = 0
        with mpmath.workdps(DIGITS):
            for point in self.points():
                try:
                    relative = error(point)
                except _OutsideDomain:
                    continue
                if not relative <= TOLERANCE:
                    return self._failure(point, relative, consistency)
                valid += 1
                if valid == POINTS:
                    return None
        return f"failed: fewer than {POINTS} random points where V and DG are real", {}

    def find_energy_failure(self, evaluate: Callable) -> tuple[str, dict[str, Any]] | None:
        """Solve `y = x - tau DG(x, y)` at random x and tau and check the energy identity.

        The solve and the check run with 20 guard digits, because the residual of the step
        enters the identity divided by `|y - x|`.
        """
        rng = np.random.default_rng(self.seed + 1)
        valid = 0
        with mpmath.workdps(DIGITS + 20):
            for point in self.points():
                tau = mpmath.mpf(10 ** rng.uniform(-2, 0))
                try:
                    y, tau = self._solve_step(evaluate, point, tau)
                    if y is None:
                        text, record = point.describe(self._names(), consistency=False)
                        del record["y"]
                        return f"failed: Newton did not converge at x={record['x']}", record
                    dv = self.value(y, point.data) - self.value(point.x, point.data)
                except _OutsideDomain:
                    continue
                squared = sum((b - a) ** 2 for a, b in zip(point.x, y)) / tau
                relative = _ratio(abs(dv + squared), abs(dv) + squared)
                if not relative <= TOLERANCE:
                    solved = _Point(point.x, y, point.direction, point.data)
                    text, record = self._failure(solved, relative, consistency=False)
                    record["tau"] = float(tau)
                    return f"{text}, tau={float(tau)}", record
                valid += 1
                if valid == POINTS:
                    return None
        return f"failed: fewer than {POINTS} random points where V and DG are real", {}

    def _solve_step(self, evaluate: Callable, point: _Point, tau: mpmath.mpf):
        """Run Newton on `y - x + tau DG(x, y) = 0`, shrinking tau tenfold after a failure.

        Returns `(y, tau)`, with `y = None` when five values of tau failed.
        """
        x, data = point.x, point.data
        tolerance = mpmath.mpf(10) ** -(DIGITS + 10)
        for _ in range(5):

            def residual(*y: mpmath.mpf, tau: mpmath.mpf = tau) -> list[mpmath.mpf]:
                g = evaluate(list(x) + list(y), data)
                return [b - a + tau * gi for a, b, gi in zip(x, y, g)]

            explicit = [a - tau * g for a, g in zip(x, self._gradient(x, data))]
            for start in (explicit, list(x)):
                try:
                    found = mpmath.findroot(
                        residual, start, solver="mdnewton", norm=_norm, verify=False, maxsteps=50
                    )
                    y = [found[i] for i in range(self.n)]
                    if _norm(residual(*y)) <= tolerance * max(1, _norm(y)):
                        return y, tau
                except (ZeroDivisionError, ValueError, _OutsideDomain):
                    continue
            tau /= 10
        return None, tau

    def _failure(
        self, point: _Point, relative: mpmath.mpf, consistency: bool
    ) -> tuple[str, dict[str, Any]]:
        text, record = point.describe(self._names(), consistency)
        record["relative_error"] = float(relative)
        return f"failed at {text}: relative error {float(relative):.1e}", record

    def _names(self) -> list[str]:
        return [s.name for s in self.data_symbols]


def _real(value: Any) -> mpmath.mpf:
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            raise _OutsideDomain(f"complex value {value}")
        value = value.real
    value = mpmath.mpf(value)
    if not mpmath.isfinite(value):
        raise _OutsideDomain(f"value {value}")
    return value


def _mpf_list(values: np.ndarray) -> list[mpmath.mpf]:
    return [mpmath.mpf(float(v)) for v in values]


def _norm(values: Any) -> mpmath.mpf:
    return mpmath.norm(values, "inf")


def _ratio(difference: mpmath.mpf, scale: mpmath.mpf) -> mpmath.mpf:
    return difference / scale if scale else difference


def _relative(a: list[mpmath.mpf], b: list[mpmath.mpf]) -> mpmath.mpf:
    """Return `max|a - b| / max(|a|, |b|)`, entrywise maxima."""
    scale = max(max(abs(v) for v in a), max(abs(v) for v in b))
    return _ratio(max(abs(u - v) for u, v in zip(a, b)), scale)


def _dot(a: list[sp.Expr], b: list[sp.Expr]) -> sp.Expr:
    return sp.Add(*[ai * bi for ai, bi in zip(a, b)])


# Symbolic proofs


def _prove_zero(exprs: list[sp.Expr]) -> str | None:
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
            with _time_limit(ATTEMPT_SECONDS[name]):
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
    defined. A denominator is kept as a product of factors, which avoids the gcd
    computations of `cancel`; a numerator equal to a denominator factor cancels with it.
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


def _prove_consistency(derivation: Derivation, dg: list[sp.Expr], gradient: list[sp.Expr]):
    """Prove `lim_{t -> 0} DG(x, x + t d) = grad V(x)` for symbolic `d`, or return None."""
    direction = [sp.Symbol(f"d_{i}", real=True) for i in range(derivation.n)]
    coefficients = None
    for precision in SERIES_PRECISIONS:
        builder = _SeriesBuilder(derivation.x, derivation.y, direction, precision)
        try:
            with _time_limit(SERIES_SECONDS):
                coefficients = builder.limit_terms(dg, gradient)
            break
        except _Imprecise:
            continue
        except (_Undecided, RecursionError, *_SYMBOLIC_ERRORS) as error:
            log.debug("no series for the consistency proof: %r", error)
            return None
    if coefficients is None:
        return None
    method = _prove_zero(coefficients)
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
        """Return the coefficients of `t^k`, `k <= 0`, of `DG - grad V`; all must vanish."""
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
                return _real(function(*[values[s] for s in symbols]))
        except (_OutsideDomain, ZeroDivisionError, ValueError, TypeError):
            return None

    def _vanishes(self, coefficient: sp.Expr) -> bool:
        """Decide whether a leading coefficient is identically zero, or raise _Undecided."""
        value = self._probe(coefficient)
        if value is not None and abs(value) > mpmath.mpf("1e-30"):
            return False
        if not _Fractions(coefficient).nonzero():
            return True
        raise _Undecided(f"cannot decide whether {coefficient} vanishes")
