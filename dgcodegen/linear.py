"""Matrix-free conjugate gradients and restarted GMRES on NumPy alone.

The Newton-Krylov stepper solves `(I + tau J) s = -F` with one Jacobian-vector product per
Krylov iteration. These solvers need nothing but NumPy, so the stepper can be copied into
generated packages without SciPy, and they add little per call to solves of a few
iterations.

Both start from x = 0. They stop on the residual that the iteration updates, but report the
true relative residual `|b - A x| / |b|` of the returned x, which costs one more operator
application, because rounding can make the updated residual smaller than the true one.
When the true residual misses the tolerance that the updated one met, the solver restarts
from the returned x while iterations remain. A caller that checks the solution itself,
as Newton does with its own residual, can pass `check=False` to skip that last product.

The module imports only NumPy and sibling modules that do the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import SpecError

Operator = Callable[[np.ndarray], np.ndarray]

STATUSES = ("converged", "max_iterations", "indefinite", "breakdown", "non-finite")
"""Values of `KrylovSolution.status`."""

BREAKDOWN_TOLERANCE = 1e-14
"""GMRES treats a new Arnoldi vector as zero when orthogonalisation leaves less than this
fraction of the norm of the operator's output. The rest is rounding error, and scaling it
up to a unit basis vector would fill the basis with noise."""

REORTHOGONALIZATION_RATIO = math.sqrt(0.5)
"""GMRES orthogonalises a vector a second time when the first pass of modified Gram-Schmidt
leaves less than this fraction of its norm. Such cancellation loses orthogonality to the
basis, and a second pass restores it. On symmetric matrices most iterations need it."""


@dataclass
class KrylovSolution:
    """Result of a Krylov solve of `A x = b` from x = 0.

    Attributes:
        x: The approximate solution. It is finite even when the status is "non-finite".
        iterations: Operator applications, which are the Krylov iterations and the checks
            of the true residual `b - A x`, one after each CG run or GMRES cycle.
        residual: True relative residual `|b - A x| / |b|` of `x`, 0.0 when b = 0. A solve
            with `check=False` that converged reports the updated residual instead.
        converged: True when `residual <= rtol` and no operator application returned a
            non-finite value.
        status: "converged"; "max_iterations" when the iteration limit was reached;
            "indefinite" when CG met a direction p with `p . A p <= 0`; "breakdown" when
            the iteration can make no further progress, for example on a singular matrix,
            with a CG preconditioner that is not positive definite, or when rounding keeps
            the true residual from decreasing; "non-finite" when the operator, the
            preconditioner or the iteration produced a NaN or infinity.
    """

    x: np.ndarray
    iterations: int
    residual: float
    converged: bool
    status: str


def conjugate_gradient(
    apply: Operator,
    b: np.ndarray,
    rtol: float,
    max_iterations: int,
    preconditioner: Operator | None = None,
    check: bool = True,
) -> KrylovSolution:
    """Solve `A x = b` for symmetric positive definite A by preconditioned conjugate gradients.

    A direction p with `p . A p <= 0` shows that A is not positive definite. The solve then
    stops with status "indefinite" and returns the iterate before that direction, which is
    x = 0 when it is the first one, so the caller can switch to GMRES. When the updated
    residual met rtol but the true residual did not, CG restarts from the true residual
    while iterations remain.

    Args:
        apply: `v -> A v` on 1-D float64 arrays. It must not modify its argument.
        b: Right-hand side, a finite 1-D array.
        rtol: Relative tolerance on `|b - A x| / |b|`, > 0.
        max_iterations: Maximum CG iterations over all restarts, >= 1. The checks of the
            true residual, one per restart and one at the end, are not counted here, but in
            `KrylovSolution.iterations`.
        preconditioner: `v -> M^-1 v` for a symmetric positive definite M, or None.
        check: When False, a run whose updated residual meets rtol returns without
            computing the true residual.

    Returns:
        The solution with its true relative residual, or with the updated one when
        `check` is False and the updated one met rtol.

    Raises:
        SpecError: an argument is invalid, or an operator returned an array of the wrong
            shape.
    """
    b, b_norm = _check_arguments(apply, b, rtol, max_iterations, preconditioner)
    if b_norm == 0.0:
        return KrylovSolution(np.zeros_like(b), 0, 0.0, True, "converged")

    x = np.zeros_like(b)
    residual, residual_norm = b, b_norm
    steps = checks = 0
    status = "max_iterations"
    while residual_norm / b_norm > rtol and steps < max_iterations:
        trial, used, stop, updated = _cg_run(
            apply, preconditioner, x, residual, rtol * b_norm, max_iterations - steps
        )
        steps += used
        start_norm = residual_norm
        if not check and stop == "converged" and trial is not None:
            x, residual_norm, status = trial, updated, stop
            break
        if trial is not None:
            checked, applications = _true_residual(apply, b, trial)
            checks += applications
            if checked is None:
                stop = "non-finite"
            else:
                x = trial
                residual, residual_norm = checked
        if stop == "converged":
            # Only the updated residual met rtol. Restart from the true residual unless it
            # grew over the run, which means rounding dominates the updated residual.
            if residual_norm < start_norm:
                continue
            stop = "breakdown"
        if stop != "max_iterations":
            status = stop
        break
    return _solution(x, steps + checks, residual_norm / b_norm, rtol, status)


def _cg_run(
    apply: Operator,
    preconditioner: Operator | None,
    x: np.ndarray,
    residual: np.ndarray,
    target: float,
    budget: int,
) -> tuple[np.ndarray | None, int, str, float]:
    """Run preconditioned CG from x and its true residual for at most `budget` iterations.

    The run stops early when the updated residual norm is at most `target`.

    Returns:
        The last iterate, or None when the run took no step, the number of operator
        applications, the reason it stopped ("converged", "max_iterations", "indefinite",
        "breakdown" or "non-finite") and the updated residual norm of the last iterate.
    """
    r = residual
    rr = float(r @ r)
    z = r if preconditioner is None else _call(preconditioner, r, "preconditioner")
    rz = float(r @ z)
    if not math.isfinite(rz):
        return None, 0, "non-finite", math.sqrt(rr)
    if rz <= 0.0:
        # r is nonzero here, so M is not positive definite.
        return None, 0, "breakdown", math.sqrt(rr)

    p = z
    current = x
    iterate = None
    used = 0
    while used < budget:
        ap = _call(apply, p, "apply")
        used += 1
        curvature = float(p @ ap)
        if not math.isfinite(curvature):
            return iterate, used, "non-finite", math.sqrt(rr)
        if curvature <= 0.0:
            return iterate, used, "indefinite", math.sqrt(rr)
        alpha = rz / curvature
        if not math.isfinite(alpha):
            # The curvature is so small that A is numerically singular along p.
            return iterate, used, "breakdown", math.sqrt(rr)
        r = r - alpha * ap
        rr = float(r @ r)
        if not math.isfinite(rr):
            return iterate, used, "non-finite", math.sqrt(rr)
        current = current + alpha * p
        iterate = current
        if math.sqrt(rr) <= target:
            return iterate, used, "converged", math.sqrt(rr)

        if preconditioner is None:
            z, rz_next = r, rr
        else:
            z = _call(preconditioner, r, "preconditioner")
            rz_next = float(r @ z)
            if not math.isfinite(rz_next):
                return iterate, used, "non-finite", math.sqrt(rr)
            if rz_next <= 0.0:
                return iterate, used, "breakdown", math.sqrt(rr)
        p = z + (rz_next / rz) * p
        rz = rz_next
    return iterate, used, "max_iterations", math.sqrt(rr)


def gmres(
    apply: Operator,
    b: np.ndarray,
    rtol: float,
    restart: int,
    max_iterations: int,
    preconditioner: Operator | None = None,
    check: bool = True,
) -> KrylovSolution:
    """Solve `A x = b` by restarted GMRES with right preconditioning.

    The Arnoldi basis is built by modified Gram-Schmidt, with a second, classical pass when
    the first cancels most of a vector, and the least-squares problem is reduced by Givens
    rotations. Right preconditioning solves `A M^-1 u = b` with `x = M^-1 u`, so the residual that
    GMRES minimises and tests is the unpreconditioned `b - A x`. Each restart starts from
    the true residual. The solve stops with status "breakdown" when A maps a Krylov
    direction into the span of the basis without reducing the residual, as on a singular
    A. It also stops so when a whole cycle did not reduce the true residual, because every
    further cycle would then repeat it.

    Args:
        apply: `v -> A v` on 1-D float64 arrays. It must not modify its argument.
        b: Right-hand side, a finite 1-D array.
        rtol: Relative tolerance on `|b - A x| / |b|`, > 0.
        restart: Arnoldi vectors per cycle, >= 1.
        max_iterations: Maximum inner iterations over all cycles, >= 1. The true residuals
            of the restarts and the final check are not counted here, but in
            `KrylovSolution.iterations`.
        preconditioner: `v -> M^-1 v`, or None.
        check: When False, a cycle whose least-squares residual meets rtol returns without
            computing the true residual.

    Returns:
        The solution with its true relative residual, or with the least-squares one when
        `check` is False and the least-squares one met rtol.

    Raises:
        SpecError: an argument is invalid, or an operator returned an array of the wrong
            shape.
    """
    _check_count(restart, "restart", "the number of Arnoldi vectors per cycle, such as 40")
    b, b_norm = _check_arguments(apply, b, rtol, max_iterations, preconditioner)
    if b_norm == 0.0:
        return KrylovSolution(np.zeros_like(b), 0, 0.0, True, "converged")

    x = np.zeros_like(b)
    residual, residual_norm = b, b_norm
    steps = checks = 0
    status = "max_iterations"
    while residual_norm / b_norm > rtol and steps < max_iterations:
        size = min(restart, max_iterations - steps)
        correction, used, stop, estimate = _gmres_cycle(
            apply, preconditioner, residual, residual_norm, rtol * b_norm, size
        )
        steps += used
        met = correction is not None and stop is None and estimate <= rtol * b_norm
        if not check and met and np.isfinite(correction).all():
            x, residual_norm, status = x + correction, estimate, "converged"
            break
        if correction is not None:
            trial = x + correction
            checked, applications = _true_residual(apply, b, trial)
            checks += applications
            if checked is None:
                stop = "non-finite"
            elif checked[1] < residual_norm:
                x = trial
                residual, residual_norm = checked
            elif stop is None:
                stop = "breakdown"
        if stop is not None:
            status = stop
            break
    return _solution(x, steps + checks, residual_norm / b_norm, rtol, status)


def _gmres_cycle(
    apply: Operator,
    preconditioner: Operator | None,
    residual: np.ndarray,
    residual_norm: float,
    target: float,
    size: int,
) -> tuple[np.ndarray | None, int, str | None, float]:
    """Run one GMRES cycle of at most `size` iterations from the true residual.

    The cycle ends early when the residual norm of the least-squares problem is at most
    `target` or the Krylov space contains the solution (a happy breakdown).

    Returns:
        The correction to x, or None when no direction was usable, the number of operator
        applications, "breakdown" or "non-finite" when the cycle hit one, else None, and
        the residual norm of the least-squares problem.
    """
    basis = np.empty((size + 1, residual.size))
    basis[0] = residual / residual_norm
    # Columns of the triangular factor R of the rotated Hessenberg matrix, and the rotated
    # right-hand side, whose last entry is the residual norm of the least-squares problem.
    columns: list[list[float]] = []
    cosines: list[float] = []
    sines: list[float] = []
    rhs = [residual_norm]
    stop = None
    used = 0
    for j in range(size):
        if preconditioner is None:
            direction = basis[j]
        else:
            direction = _call(preconditioner, basis[j], "preconditioner")
        # A copy, because orthogonalisation updates w in place, and apply may return its
        # argument or reuse one output buffer.
        w = np.array(_call(apply, direction, "apply"))
        used += 1
        w_norm = float(np.linalg.norm(w))
        if not math.isfinite(w_norm):
            stop = "non-finite"
            break
        column, next_norm = _orthogonalize(basis, j + 1, w, w_norm)

        for i in range(j):
            upper, lower = column[i], column[i + 1]
            column[i] = cosines[i] * upper + sines[i] * lower
            column[i + 1] = cosines[i] * lower - sines[i] * upper
        pivot = math.hypot(column[j], next_norm)
        if pivot <= BREAKDOWN_TOLERANCE * w_norm:
            # A maps this direction into the span of the images of the earlier ones, so R
            # would be singular. The least-squares solution over the earlier ones is kept.
            stop = "breakdown"
            break
        cosine, sine = column[j] / pivot, next_norm / pivot
        column[j] = pivot
        columns.append(column)
        cosines.append(cosine)
        sines.append(sine)
        rhs.append(-sine * rhs[j])
        rhs[j] *= cosine
        if next_norm <= BREAKDOWN_TOLERANCE * w_norm or abs(rhs[j + 1]) <= target:
            break
        basis[j + 1] = w / next_norm

    count = len(columns)
    estimate = abs(rhs[count])
    if count == 0:
        return None, used, stop, estimate
    coefficients = _back_substitute(columns, rhs[:count])
    correction = coefficients @ basis[:count]
    if preconditioner is not None:
        correction = _call(preconditioner, correction, "preconditioner")
    return correction, used, stop, estimate


def _orthogonalize(
    basis: np.ndarray, count: int, w: np.ndarray, w_norm: float
) -> tuple[list[float], float]:
    """Orthogonalise w in place against the first `count` rows of `basis`.

    Returns:
        The Hessenberg entries, the projections of w onto those rows, and the norm of what
        remains of w.
    """
    coefficients = []
    for i in range(count):
        projection = float(basis[i] @ w)
        w -= projection * basis[i]
        coefficients.append(projection)
    remaining = float(np.linalg.norm(w))
    if remaining < REORTHOGONALIZATION_RATIO * w_norm:
        # The second pass is classical Gram-Schmidt, two matrix-vector products instead of
        # 2 * count vector operations. Its projections are at rounding level, so they need
        # no sequential update.
        projections = basis[:count] @ w
        w -= projections @ basis[:count]
        coefficients = [c + float(p) for c, p in zip(coefficients, projections)]
        remaining = float(np.linalg.norm(w))
    return coefficients, remaining


def _back_substitute(columns: list[list[float]], rhs: list[float]) -> np.ndarray:
    """Solve `R y = rhs` for the upper triangular R given by its columns."""
    count = len(columns)
    solution = [0.0] * count
    for i in reversed(range(count)):
        total = rhs[i]
        for k in range(i + 1, count):
            total -= columns[k][i] * solution[k]
        solution[i] = total / columns[i][i]
    return np.array(solution)


def _true_residual(
    apply: Operator, b: np.ndarray, x: np.ndarray
) -> tuple[tuple[np.ndarray, float] | None, int]:
    """Compute `b - A x` and its norm.

    Returns:
        The residual and its norm, or None when x or the residual is not finite, and the
        number of operator applications, 0 when x is not finite.
    """
    if not np.isfinite(x).all():
        return None, 0
    residual = b - _call(apply, x, "apply")
    norm = float(np.linalg.norm(residual))
    if not math.isfinite(norm):
        return None, 1
    return (residual, norm), 1


def _solution(
    x: np.ndarray, iterations: int, residual: float, rtol: float, status: str
) -> KrylovSolution:
    converged = status != "non-finite" and residual <= rtol
    return KrylovSolution(x, iterations, residual, converged, "converged" if converged else status)


def _call(operator: Operator, vector: np.ndarray, name: str) -> np.ndarray:
    """Apply an operator and check that it returned a vector of the same length."""
    result = np.asarray(operator(vector), dtype=np.float64)
    if result.shape != vector.shape:
        raise SpecError(
            f"{name} returned an array of shape {result.shape} for a vector of shape "
            f"{vector.shape}. It must return a 1-D array of the same length."
        )
    return result


def _check_count(value: object, name: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SpecError(f"{name} must be an integer >= 1, got {value!r}. Pass {meaning}.")


def _check_arguments(
    apply: object,
    b: object,
    rtol: object,
    max_iterations: object,
    preconditioner: object,
) -> tuple[np.ndarray, float]:
    """Validate the arguments shared by both solvers; return b as float64 and its norm."""
    if not callable(apply):
        raise SpecError(
            f"apply must be a callable v -> A v, got {type(apply).__name__}. Pass a function "
            "that returns the operator applied to a 1-D array."
        )
    if preconditioner is not None and not callable(preconditioner):
        raise SpecError(
            f"preconditioner must be None or a callable v -> M^-1 v, got "
            f"{type(preconditioner).__name__}."
        )
    is_number = isinstance(rtol, (int, float, np.integer, np.floating))
    if isinstance(rtol, bool) or not is_number or not (math.isfinite(rtol) and rtol > 0):
        raise SpecError(
            f"rtol must be a finite number > 0, got {rtol!r}. Pass a relative tolerance "
            "such as 1e-6."
        )
    _check_count(max_iterations, "max_iterations", "a maximum number of iterations such as 200")

    if np.iscomplexobj(b):
        raise SpecError("b must be real, got a complex array. Solve for real and imaginary parts.")
    try:
        vector = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SpecError(f"b must be an array of real numbers: {error}") from error
    if vector.ndim != 1:
        raise SpecError(f"b must be a 1-D array, got shape {vector.shape}. Pass b.ravel().")
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        bad = np.flatnonzero(~np.isfinite(vector))
        if bad.size == 0:
            raise SpecError("the norm of b overflows float64. Scale b and the operator down.")
        raise SpecError(
            f"b must be finite, but b[{bad[0]}] = {vector[bad[0]]}. Check the right-hand side."
        )
    return vector, norm
