"""High-precision reference values for dgcodegen problems, independent of its derivation code.

`Reference` evaluates a `dgcodegen.dsl.Loss` in mpmath arithmetic. SymPy differentiates the
per-sample and data-free terms, `sympy.lambdify` turns the derivatives into mpmath functions,
and sums over samples use `mpmath.fsum`. Nothing from `dgcodegen.derive`, `dgcodegen.ridge` or
`dgcodegen.lower` is imported, so tests can compare generated float64 kernels against it.

Every public method aims at a relative error (2-norm or Frobenius norm) below `10**-digits`:

- Direct evaluations (loss, gradient, Hessian, Gonzalez and its Jacobian) run at `p` and at
  `p + CHECK_DIGITS` decimal digits, and `p` grows until both results agree to `digits + 1`
  digits. The Gonzalez methods start `3 * log10(1 / |d|)` digits higher, because their
  numerator `V(y) - V(x) - grad V(m) . d` is `O(|d|^3)` but is formed from values of size
  `|V|`, and the Jacobian divides it by `|d|^4`.
- The mean-value integrals over `s` in [0, 1] use mpmath's Gauss-Legendre nodes, sample by
  sample, with mpmath's error extrapolation. They raise `ReferenceAccuracyError` when the
  summed error estimate stays above `10**-(digits - 5)` of the result.

Results smaller than `10**-(2 * digits)` in norm count as zero in these checks.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import mpmath
import numpy as np
import sympy as sp
from mpmath.calculus.quadrature import GaussLegendre

from dgcodegen.dsl import Loss
from dgcodegen.functions import MPMATH_FUNCTIONS

GUARD_DIGITS = 15
"""Decimal digits carried beyond the requested ones in every evaluation."""

CHECK_DIGITS = 20
"""Extra decimal digits of the second evaluation that checks the first."""

MAX_ATTEMPTS = 4
"""Evaluations with raised precision before `ReferenceAccuracyError`."""

QUADRATURE_SLACK_DIGITS = 5
"""A quadrature error estimate above `10**-(digits - QUADRATURE_SLACK_DIGITS)` raises."""

Vector = list[Any]
"""Entries are `mpmath.mpf`, or Python `int` for entries that are exactly zero."""

_GAUSS_LEGENDRE = GaussLegendre(mpmath.mp)


class ReferenceAccuracyError(RuntimeError):
    """Raised when the reference cannot confirm the requested number of correct digits."""


def as_mpf_vector(values: Any, size: int | None = None) -> list[mpmath.mpf]:
    """Convert a float64 array or a sequence of `mpmath.mpf` to a list of mpf, exactly.

    Raises:
        ValueError: for a non-finite entry or a length other than `size`.
    """
    if isinstance(values, np.ndarray):
        values = np.asarray(values, dtype=np.float64).ravel().tolist()
    elif isinstance(values, mpmath.matrix):
        values = [values[i, j] for i in range(values.rows) for j in range(values.cols)]
    with mpmath.workprec(max(mpmath.mp.prec, 53)):
        vector = [v if isinstance(v, mpmath.mpf) else mpmath.mpf(v) for v in values]
    if size is not None and len(vector) != size:
        raise ValueError(f"expected a vector of {size} entries, got {len(vector)}")
    if not all(mpmath.isfinite(value) for value in vector):
        raise ValueError(f"the vector contains nan or inf: {[mpmath.nstr(v) for v in vector]}")
    return vector


def to_numpy(value: Any) -> np.ndarray:
    """Round an mpf, a list of mpf or an `mpmath.matrix` to a float64 array.

    A column `mpmath.matrix` becomes a 1-D array, and an mpf becomes a 0-D array.
    """
    if isinstance(value, mpmath.matrix):
        array = np.array(value.tolist(), dtype=np.float64)
        return array[:, 0] if value.cols == 1 else array
    if isinstance(value, (list, tuple)):
        return np.array([to_numpy(entry) for entry in value], dtype=np.float64)
    return np.array(float(value), dtype=np.float64)


def relative_error(approx: np.ndarray, exact: Any) -> float:
    """Return `||approx - exact|| / ||exact||` in the 2-norm or Frobenius norm.

    The difference is computed in mpmath from the exact float64 values of `approx`, and the
    denominator has a floor of 1e-300, so an exact zero matched exactly gives 0.
    """
    shape = to_numpy(exact).shape
    approx = np.asarray(approx, dtype=np.float64)
    if approx.shape != shape:
        raise ValueError(f"approx has shape {approx.shape}, but exact has shape {shape}")
    exact_entries = _flatten(exact)
    with mpmath.workdps(max(mpmath.mp.dps, 30)):
        approx_entries = as_mpf_vector(approx)
        difference = _norm([a - e for a, e in zip(approx_entries, exact_entries)])
        scale = max(_norm(exact_entries), mpmath.mpf("1e-300"))
        return float(difference / scale)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [entry for item in value for entry in _flatten(item)]
    if isinstance(value, mpmath.matrix):
        return as_mpf_vector(value)
    return [value]


def _norm(vector: Sequence[Any]) -> mpmath.mpf:
    return mpmath.sqrt(mpmath.fsum(entry * entry for entry in vector))


class _Term:
    """One loss term, its lambdified derivatives, and the data rows it is summed over.

    The data-free term has a single empty row. `mean` divides the sum by the row count.
    """

    def __init__(
        self,
        expr: sp.Expr,
        parameters: list[sp.Symbol],
        data_symbols: list[sp.Symbol],
        rows: list[list[mpmath.mpf]],
        mean: bool,
    ) -> None:
        self.expr = expr
        self.parameters = parameters
        self.arguments = parameters + data_symbols
        self.rows = rows
        self.mean = mean
        self._functions: dict[str, Callable[..., list[Any]]] = {}

    def _lambdify(self, exprs: list[sp.Expr], extra: Sequence[sp.Symbol] = ()) -> Callable:
        return sp.lambdify(
            self.arguments + list(extra),
            exprs,
            modules=[MPMATH_FUNCTIONS, "mpmath"],
            cse=True,
            dummify=True,
        )

    @cached_property
    def exprs(self) -> dict[str, list[sp.Expr]]:
        """The value, gradient and upper triangle of the Hessian (row by row)."""
        n = len(self.parameters)
        gradient = [sp.diff(self.expr, symbol) for symbol in self.parameters]
        hessian = [sp.diff(gradient[i], self.parameters[j]) for i in range(n) for j in range(i, n)]
        return {"value": [self.expr], "gradient": gradient, "hessian": hessian}

    def function(self, kind: str) -> Callable[..., list[Any]]:
        """Return the lambdified `kind` ("value", "gradient" or "hessian") of the term."""
        if kind not in self._functions:
            self._functions[kind] = self._lambdify(self.exprs[kind])
        return self._functions[kind]

    def weighted_function(self, kind: str) -> Callable[..., list[Any]]:
        """Return `function(kind)` with a last argument `w` that multiplies every entry.

        Quadrature passes its weights there, so CSE folds them into a shared factor and the
        weighted node values need additions only.
        """
        key = f"weighted {kind}"
        if key not in self._functions:
            weight = sp.Dummy("weight")
            exprs = [weight * expr for expr in self.exprs[kind]]
            self._functions[key] = self._lambdify(exprs, [weight])
        return self._functions[key]

    def weight(self) -> mpmath.mpf:
        return mpmath.mpf(1) / len(self.rows) if self.mean else mpmath.mpf(1)


class Reference:
    """Loss, derivatives and discrete gradients of a problem, correct to `digits` digits.

    Points are float64 arrays, converted exactly, or sequences of `mpmath.mpf` for points
    that float64 cannot represent (finite differences with tiny steps). Vectors are returned
    as lists of mpf and matrices as `mpmath.matrix`.

    Args:
        problem: the loss to evaluate.
        data: arrays for the data columns, or None for `problem.default_data`.
        digits: number of correct decimal digits the results aim for, at least 16.

    Raises:
        ValueError: for too few digits, missing data, or a per-sample term without data
            columns (its sample count is undefined).
    """

    def __init__(
        self, problem: Loss, data: dict[str, np.ndarray] | None = None, digits: int = 50
    ) -> None:
        if digits < 16:
            raise ValueError(f"digits must be at least 16, got {digits}")
        self.problem = problem
        self.digits = digits
        self.parameters = list(problem.parameter_symbols)
        self.n = len(self.parameters)
        self.data: dict[str, np.ndarray] | None = None
        """The validated data arrays, None for a problem without data."""
        self.terms = self._build_terms(problem, data)

    def _build_terms(self, problem: Loss, data: dict[str, np.ndarray] | None) -> list[_Term]:
        terms = []
        if problem.sample_term != 0:
            if not problem.columns:
                raise ValueError(
                    "the per-sample term uses no data column, so the sample count is undefined. "
                    "Write it as the objective instead"
                )
            arrays = problem.validate_data(data) if data is not None else problem.default_data
            if arrays is None:
                raise ValueError(f"the problem {problem.name!r} has no default data, so pass data=")
            self.data = arrays
            blocks = [arrays[column.name] for column in problem.columns]
            table = np.hstack(blocks)
            rows = [as_mpf_vector(row) for row in table]
            data_symbols = [symbol for column in problem.columns for symbol in column.symbols]
            mean = problem.reduction == "mean"
            terms.append(_Term(problem.sample_term, self.parameters, data_symbols, rows, mean))
        if problem.free_term != 0:
            terms.append(_Term(problem.free_term, self.parameters, [], [[]], mean=False))
        return terms

    @property
    def sample_count(self) -> int:
        """Number of data rows, 0 for a problem without data."""
        return len(self.terms[0].rows) if self.problem.sample_term != 0 else 0

    # Direct evaluations

    def loss(self, theta: Any) -> mpmath.mpf:
        """Return `V(theta)`."""
        point = as_mpf_vector(theta, self.n)
        return self._checked(lambda: self._reduce("value", point), 0)[0]

    def gradient(self, theta: Any) -> Vector:
        """Return `grad V(theta)`."""
        point = as_mpf_vector(theta, self.n)
        return self._checked(lambda: self._reduce("gradient", point), 0)

    def hessian(self, theta: Any) -> mpmath.matrix:
        """Return the Hessian of `V` at `theta`."""
        point = as_mpf_vector(theta, self.n)
        upper = self._checked(lambda: self._reduce("hessian", point), 0)
        return self._symmetric(upper)

    def gonzalez(self, x: Any, y: Any) -> Vector:
        """Return Gonzalez's midpoint discrete gradient.

        It is `grad V(m) + (V(y) - V(x) - grad V(m) . d) / |d|^2 * d` with `d = y - x` and
        `m = (x + y) / 2`, and `grad V(x)` when `y == x`.
        """
        x, y, d = self._points(x, y)
        if not any(d):
            return self.gradient(x)
        return self._checked(lambda: self._gonzalez(x, y, d), self._cancellation_digits(d))

    def gonzalez_jacobian(self, x: Any, y: Any) -> mpmath.matrix:
        """Return the derivative of `gonzalez(x, y)` in `y`.

        With `g = grad V`, `H` its Hessian and `N = V(y) - V(x) - g(m) . d`, the correction
        is `c d` with `c = N / |d|^2`, and
        `dN/dy = g(y) - g(m) - H(m) d / 2` because `d(g(m) . d)/dy = H(m) d / 2 + g(m)`.
        So the Jacobian is `H(m) / 2 + c I + d b^T` with
        `b = dN/dy / |d|^2 - 2 N d / |d|^4`. At `y == x` it is `H(x) / 2`, the limit as
        `d -> 0`, because `c` and `|d| |b|` are `O(|d|)`.
        """
        x, y, d = self._points(x, y)
        if not any(d):
            return self._half_hessian(x)
        entries = self._checked(
            lambda: self._gonzalez_jacobian(x, y, d), self._cancellation_digits(d)
        )
        return mpmath.matrix([entries[i * self.n : (i + 1) * self.n] for i in range(self.n)])

    # Itoh-Abe coordinate increments

    def itoh_abe(self, x: Any, y: Any, order: str = "forward") -> Vector:
        """Return the Itoh-Abe discrete gradient along the coordinate path of `order`.

        `order` is "forward" (first coordinate first), "reverse", or "symmetric" (the mean
        of both). Entry k is `(V(p_after) - V(p_before)) / d_k`, the partial derivative at
        `p_before` when `d_k = 0`.
        """
        if order == "symmetric":
            forward, reverse = self.itoh_abe(x, y, "forward"), self.itoh_abe(x, y, "reverse")
            return [(a + b) / 2 for a, b in zip(forward, reverse)]
        x, y, d = self._points(x, y)
        return self._checked(lambda: self._itoh_abe(x, y, d, order), self._cancellation_digits(d))

    def itoh_abe_jacobian(self, x: Any, y: Any, order: str = "forward") -> mpmath.matrix:
        """Return the derivative of `itoh_abe(x, y, order)` in `y`.

        With `p` and `q` the path points before and after coordinate k changes, entry
        `(k, j)` is `(dV/dy_j(q) - dV/dy_j(p)) / d_k` for coordinates j changed before k,
        `(dV/dx_k(q) - DG_k) / d_k` for `j = k`, and 0 otherwise. The limits at `d_k = 0` are
        the Hessian entry at `p` and half the diagonal Hessian entry there.
        """
        if order == "symmetric":
            forward = self.itoh_abe_jacobian(x, y, "forward")
            reverse = self.itoh_abe_jacobian(x, y, "reverse")
            return (forward + reverse) / 2
        x, y, d = self._points(x, y)
        entries = self._checked(
            lambda: self._itoh_abe_jacobian(x, y, d, order), self._cancellation_digits(d)
        )
        return mpmath.matrix([entries[i * self.n : (i + 1) * self.n] for i in range(self.n)])

    def _path(self, x: Vector, y: Vector, order: str) -> list[tuple[int, Vector, Vector]]:
        """Return `(k, point before, point after)` for each coordinate k along the path."""
        sequence = range(self.n) if order == "forward" else range(self.n - 1, -1, -1)
        point, steps = list(x), []
        for k in sequence:
            after = list(point)
            after[k] = y[k]
            steps.append((k, point, after))
            point = after
        return steps

    def _itoh_abe(self, x: Vector, y: Vector, d: Vector, order: str) -> Vector:
        result = [mpmath.mpf(0)] * self.n
        for k, before, after in self._path(x, y, order):
            if d[k] == 0:
                result[k] = self._reduce("gradient", before)[k]
            else:
                change = self._reduce("value", after)[0] - self._reduce("value", before)[0]
                result[k] = change / d[k]
        return result

    def _itoh_abe_jacobian(self, x: Vector, y: Vector, d: Vector, order: str) -> Vector:
        n = self.n
        entries = [mpmath.mpf(0)] * (n * n)
        changed: list[int] = []
        for k, before, after in self._path(x, y, order):
            if d[k] == 0:
                hessian = self._symmetric(self._reduce("hessian", before))
                for j in changed:
                    entries[k * n + j] = hessian[k, j]
                entries[k * n + k] = hessian[k, k] / 2
            else:
                grad_before = self._reduce("gradient", before)
                grad_after = self._reduce("gradient", after)
                for j in changed:
                    entries[k * n + j] = (grad_after[j] - grad_before[j]) / d[k]
                change = self._reduce("value", after)[0] - self._reduce("value", before)[0]
                entries[k * n + k] = (grad_after[k] - change / d[k]) / d[k]
            changed.append(k)
        return entries

    # Integrals over s in [0, 1]

    def mean_value(self, x: Any, y: Any) -> Vector:
        """Return the mean-value discrete gradient `integral_0^1 grad V(x + s d) ds`.

        It is `grad V(x)` when `y == x`.
        """
        x, _, d = self._points(x, y)
        if not any(d):
            return self.gradient(x)
        return self._integrate("gradient", x, d, power=0)

    def mean_value_jacobian(self, x: Any, y: Any) -> mpmath.matrix:
        """Return the derivative of `mean_value(x, y)` in `y`, `integral_0^1 s H(x + s d) ds`.

        It is `H(x) / 2` when `y == x`. Each sample costs 9 to about 100 Hessian evaluations.
        NOTE: for the 569-sample logistic regression example at 50 digits this took 13 s at
        |d| = 1e-6 and 44 s at |d| = 1 in one measurement (2-core machine, mpmath 1.3 without
        gmpy2); `digits=20` took 5 s and 14 s.
        """
        x, _, d = self._points(x, y)
        if not any(d):
            return self._half_hessian(x)
        return self._symmetric(self._integrate("hessian", x, d, power=1))

    # Helpers

    def _points(self, x: Any, y: Any) -> tuple[Vector, Vector, Vector]:
        """Convert `x` and `y`, and form `d = y - x` exactly."""
        x = as_mpf_vector(x, self.n)
        y = as_mpf_vector(y, self.n)
        d = [mpmath.fsub(b, a, exact=True) for a, b in zip(x, y)]
        return x, y, d

    def _cancellation_digits(self, d: Vector) -> int:
        """Return the extra digits for Gonzalez's correction, `3 * log10(1 / |d|) + 5`."""
        with mpmath.workdps(30):
            size = _norm(d)
        if size == 0:
            return 5
        return math.ceil(3 * max(0.0, -float(mpmath.log10(size)))) + 5

    def _half_hessian(self, theta: Vector) -> mpmath.matrix:
        upper = self._checked(lambda: self._reduce("hessian", theta), 0)
        return self._symmetric([mpmath.ldexp(entry, -1) for entry in upper])

    def _symmetric(self, upper: Vector) -> mpmath.matrix:
        matrix = mpmath.matrix(self.n, self.n)
        k = 0
        for i in range(self.n):
            for j in range(i, self.n):
                matrix[i, j] = matrix[j, i] = upper[k]
                k += 1
        return matrix

    def _reduce(self, kind: str, theta: Vector) -> Vector:
        """Return `[V]`, the gradient or the Hessian's upper triangle at `theta`."""
        totals: Vector = []
        for term in self.terms:
            function = term.function(kind)
            outputs = [function(*theta, *row) for row in term.rows]
            weight = term.weight()
            totals = _add(totals, [weight * mpmath.fsum(column) for column in zip(*outputs)])
        return _require_real(totals, f"at theta = {[mpmath.nstr(t, 8) for t in theta]}")

    def _checked(self, compute: Callable[[], Vector], extra_digits: int) -> Vector:
        """Run `compute` at two precisions, raised until the results agree to `digits + 1` digits.

        Returns the result of the higher precision.

        Raises:
            ReferenceAccuracyError: when the results still differ after `MAX_ATTEMPTS`.
        """
        dps = self.digits + GUARD_DIGITS + extra_digits
        with _gc_paused():
            for _ in range(MAX_ATTEMPTS):
                with mpmath.workdps(dps):
                    low = compute()
                with mpmath.workdps(dps + CHECK_DIGITS):
                    high = compute()
                    difference = _norm([a - b for a, b in zip(low, high)])
                    scale = max(_norm(high), mpmath.mpf(10) ** (-2 * self.digits))
                    relative = difference / scale
                    if relative <= mpmath.mpf(10) ** (-self.digits - 1):
                        return high
                    lost = dps + float(mpmath.log10(relative))
                dps = self.digits + GUARD_DIGITS + math.ceil(lost)
        raise ReferenceAccuracyError(
            f"results at {dps - CHECK_DIGITS} and {dps} digits still differ by "
            f"{mpmath.nstr(relative, 3)} relative; the evaluation cancels more digits than "
            f"{MAX_ATTEMPTS} precision increases recover"
        )

    def _gonzalez(self, x: Vector, y: Vector, d: Vector) -> Vector:
        midpoint = [mpmath.ldexp(mpmath.fadd(a, b, exact=True), -1) for a, b in zip(x, y)]
        gradient = self._reduce("gradient", midpoint)
        numerator = self._gonzalez_numerator(x, y, d, gradient)
        coefficient = numerator / mpmath.fdot(d, d)
        return [g + coefficient * step for g, step in zip(gradient, d)]

    def _gonzalez_numerator(self, x: Vector, y: Vector, d: Vector, gradient: Vector) -> Any:
        """Return `V(y) - V(x) - gradient . d`, which is `O(|d|^3)` for the midpoint gradient."""
        value_x = self._reduce("value", x)[0]
        value_y = self._reduce("value", y)[0]
        return mpmath.fsum([value_y, -value_x, -mpmath.fdot(gradient, d)])

    def _gonzalez_jacobian(self, x: Vector, y: Vector, d: Vector) -> Vector:
        midpoint = [mpmath.ldexp(mpmath.fadd(a, b, exact=True), -1) for a, b in zip(x, y)]
        gradient_m = self._reduce("gradient", midpoint)
        gradient_y = self._reduce("gradient", y)
        hessian = self._symmetric(self._reduce("hessian", midpoint))
        numerator = self._gonzalez_numerator(x, y, d, gradient_m)
        squared = mpmath.fdot(d, d)
        coefficient = numerator / squared

        hessian_d = [mpmath.fdot([hessian[i, j] for j in range(self.n)], d) for i in range(self.n)]
        numerator_gradient = [
            mpmath.fsum([gy, -gm, -hd / 2]) for gy, gm, hd in zip(gradient_y, gradient_m, hessian_d)
        ]
        b = [
            ng / squared - 2 * numerator * step / squared**2
            for ng, step in zip(numerator_gradient, d)
        ]

        entries = []
        for i in range(self.n):
            for j in range(self.n):
                diagonal = coefficient if i == j else 0
                entries.append(hessian[i, j] / 2 + diagonal + d[i] * b[j])
        return entries

    def _integrate(self, kind: str, x: Vector, d: Vector, power: int) -> Vector:
        """Return `integral_0^1 s^power F(x + s d) ds` for F the gradient or Hessian triangle.

        The first pass requires a relative error of `10**-(digits + 3)` from each sample. When
        the summed estimate or the rounding error of the cancelling sum over samples exceeds
        `10**-digits` of the result, the next pass raises the precision by the cancelled
        digits and requires from each sample an absolute error that adds up to below that.

        Raises:
            ReferenceAccuracyError: when the error estimate stays above
                `10**-(digits - QUADRATURE_SLACK_DIGITS)` of the result.
        """
        dps = self.digits + GUARD_DIGITS
        relative_tolerance = mpmath.mpf(10) ** (-self.digits - 3)
        absolute_tolerance = mpmath.mpf(0)
        count = sum(len(term.rows) for term in self.terms)
        with _gc_paused():
            for _ in range(MAX_ATTEMPTS):
                with mpmath.workdps(dps):
                    total, magnitude, error = self._integrate_terms(
                        kind, x, d, power, relative_tolerance, absolute_tolerance
                    )
                    floor = mpmath.mpf(10) ** (-2 * self.digits)
                    scale = max(_norm(total), floor)
                    lost = max(0.0, float(mpmath.log10(max(_norm(magnitude), floor) / scale)))
                    target = mpmath.mpf(10) ** -self.digits * scale
                    if error <= target and dps - lost >= self.digits + GUARD_DIGITS // 2:
                        return total
                    if error > target:
                        relative_tolerance = mpmath.mpf(0)
                        absolute_tolerance = target / (1000 * count)
                dps = self.digits + GUARD_DIGITS + math.ceil(lost)
        with mpmath.workdps(dps):
            if error <= mpmath.mpf(10) ** (QUADRATURE_SLACK_DIGITS - self.digits) * scale:
                return total
        raise ReferenceAccuracyError(
            f"the Gauss-Legendre error estimate {mpmath.nstr(error / scale, 3)} (relative) "
            f"exceeds 1e-{self.digits - QUADRATURE_SLACK_DIGITS}; the integrand may not be "
            "smooth along the segment from x to y"
        )

    def _integrate_terms(
        self,
        kind: str,
        x: Vector,
        d: Vector,
        power: int,
        relative_tolerance: mpmath.mpf,
        absolute_tolerance: mpmath.mpf,
    ) -> tuple[Vector, Vector, mpmath.mpf]:
        """Return the integral, the sum of sample magnitudes and the summed error estimate."""
        totals: Vector = []
        magnitudes: Vector = []
        error = mpmath.mpf(0)
        for term in self.terms:
            function = term.weighted_function(kind)
            weight = term.weight()
            results = []
            for row in term.rows:

                def integrand(
                    s: mpmath.mpf, w: mpmath.mpf, row: Vector = row, function: Callable = function
                ) -> list[Any]:
                    return function(*[a + s * step for a, step in zip(x, d)], *row, w)

                result, row_error = _gauss_legendre(
                    integrand, power, relative_tolerance, absolute_tolerance
                )
                results.append(result)
                error += weight * row_error
            term_totals = [weight * mpmath.fsum(column) for column in zip(*results)]
            term_magnitudes = [
                weight * mpmath.fsum(column, absolute=True) for column in zip(*results)
            ]
            totals = _add(totals, term_totals)
            magnitudes = _add(magnitudes, term_magnitudes)
        return totals, magnitudes, error


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector.

    A full-data Hessian quadrature keeps about 3 * 10^5 mpf objects alive. In one measurement (the logistic
    regression example, mpmath 1.3 without gmpy2) the collections that their allocation
    triggers took half the run time of a mean-value Jacobian. mpf objects form no reference
    cycles, so collecting later loses nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _add(a: Vector, b: Vector) -> Vector:
    return b if not a else [p + q for p, q in zip(a, b)]


def _require_real(vector: Vector, where: str) -> Vector:
    """Return `vector`, or raise ValueError when an entry is complex (a log of a negative)."""
    if any(isinstance(entry, mpmath.mpc) for entry in vector):
        raise ValueError(f"the loss is not real {where}")
    return vector


def _gauss_legendre(
    integrand: Callable[[mpmath.mpf, mpmath.mpf], list[Any]],
    power: int,
    relative_tolerance: mpmath.mpf,
    absolute_tolerance: mpmath.mpf,
) -> tuple[Vector, mpmath.mpf]:
    """Integrate `s^power * F(s)` over [0, 1] with mpmath's Gauss-Legendre nodes.

    `integrand(s, w)` returns the vector `w * F(s)`. The degree rises as in `mpmath.quad`,
    with `3 * 2^(degree - 1)` nodes, from 1 until the error estimate is below
    `max(relative_tolerance * |result|, absolute_tolerance)`, or up to mpmath's
    `guess_degree` for the working precision. Returns the last result and its error
    estimate; the caller checks the estimate.
    """
    prec = mpmath.mp.prec
    results: list[Vector] = []
    error = mpmath.inf
    for degree in range(1, _GAUSS_LEGENDRE.guess_degree(prec) + 1):
        nodes = _GAUSS_LEGENDRE.get_nodes(mpmath.mpf(0), mpmath.mpf(1), degree, prec)
        values = [integrand(node, weight * node**power) for node, weight in nodes]
        results.append([mpmath.fsum(column) for column in zip(*values)])
        _require_real(results[-1], "on the segment from x to y")
        if len(results) == 1:
            continue
        error = _estimate_error(results)
        tolerance = max(relative_tolerance * _norm(results[-1]), absolute_tolerance)
        if error <= tolerance:
            break
    return results[-1], error


def _estimate_error(results: list[Vector]) -> mpmath.mpf:
    """Estimate the error of the last of successive quadrature results, in the 2-norm.

    This is mpmath 1.3's `QuadratureRule.estimate_error` applied to relative differences:
    with `D1`, `D2` the log10 of the relative change from the previous and the one before,
    the relative error is `10**min(0, max(D1**2 / D2, 2 * D1))`, which assumes that each
    degree doubles the correct digits. mpmath applies it to absolute differences, so its
    cap `min(0, ...)` is only meaningful for results of magnitude near 1.
    """
    last = results[-1]
    change = _norm([a - b for a, b in zip(last, results[-2])])
    if len(results) == 2 or change == 0:
        return change
    earlier_change = _norm([a - b for a, b in zip(last, results[-3])])
    scale = _norm(last)
    if earlier_change == 0 or scale == 0:
        return change
    d1 = mpmath.log10(change / scale)
    d2 = mpmath.log10(earlier_change / scale)
    if d2 >= 0:
        return max(change, scale)
    return scale * mpmath.mpf(10) ** min(0, max(d1**2 / d2, 2 * d1))
