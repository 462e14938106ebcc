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

from . import __version__
from .calculus import diff
from .derive import DISCRETE_GRADIENTS, Derivation
from .dsl import Loss
from .errors import DgcodegenError
from .proofs import DIGITS, MODULES, OutsideDomain, prove_consistency, prove_zero, real_value

log = logging.getLogger("dgcodegen")

PROVEN, CHECKED, FAILED = "proven", "checked", "failed"

TOLERANCE = mpmath.mpf("1e-40")
"""Largest relative error that a numerical check accepts."""

POINTS = 20
"""Random points per numerical check, with `|y - x|` in equal logarithmic steps over SPREAD."""

SPREAD = (1e-6, 1.0)

CONSISTENCY_STEP = mpmath.mpf("1e-45")
"""`t` of the numerical consistency check `DG(x, x + t d) ~ grad V(x)` with `|d| = 1`.

The truncation error is `O(t)`, far below TOLERANCE. The cancellation in `V(y) - V(x)`
costs up to 45 digits, so that check runs at CONSISTENCY_DIGITS.
"""

CONSISTENCY_DIGITS = 150


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
        ("mean-value", mean_value_error, lambda: prove_zero([difference])),
        ("consistency", consistency_error, lambda: prove_consistency(derivation, dg, gradient)),
    ]
    if symmetric:
        swap = {**dict(zip(x, y)), **dict(zip(y, x))}
        antisymmetric = [g - g.xreplace(swap) for g in dg]
        checks.append(("symmetry", symmetry_error, lambda: prove_zero(antisymmetric)))
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
        """Return the point as text and as a JSON record.

        Drawn coordinates are doubles, so their floats are exact; a solved `y` is rounded.
        """
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

    Parameters and data entries are standard normal, and `|y - x|` runs through SPREAD in
    equal logarithmic steps. All of them are doubles, so a reported point reproduces exactly.
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
                raise OutsideDomain(str(error)) from error
            return [real_value(v) for v in results]

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
                except OutsideDomain:
                    continue
                if not relative <= TOLERANCE:
                    return self._failure(point, relative, consistency)
                valid += 1
                if valid == POINTS:
                    return None
        return f"failed: fewer than {POINTS} random points where V and DG are real", {}

    def find_energy_failure(self, evaluate: Callable) -> tuple[str, dict[str, Any]] | None:
        """Solve `y = x - tau DG(x, y)` at random x and check the energy identity.

        `tau` is log-uniform in [0.01, 1], divided by 10 up to four times when Newton fails.

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
                except OutsideDomain:
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
                except (ZeroDivisionError, ValueError, OutsideDomain):
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
