"""Newton-Krylov solve of the implicit step for problems too large for dense Jacobians.

Each step solves `F(y) = y - x + tau * DG(x, y) = 0` by inexact Newton: the update solves
`(I + tau J) s = -F` with `J v` from Jacobian-vector products, by conjugate gradients when
`J` is symmetric and GMRES otherwise, to the relative accuracy of the Eisenstat-Walker
forcing term (choice 2 of S. C. Eisenstat and H. F. Walker, SIAM J. Sci. Comput. 17, 1996).
A try whose solve fails or raises the loss is rejected and tau shrinks, as in the dense
stepper, and a run that stops early is never reported as converged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import LinearOperator, cg, gmres

from .errors import SolverError, SpecError
from .matrix_free import Linearization, MatrixFreeKernels
from .stepper import (
    MAX_HALVINGS,
    History,
    ProgressCallback,
    SolveResult,
    StepperOptions,
    _check_accepted,
    _end_message,
    _is_converged,
    _is_stationary,
    _next_step,
)

logger = logging.getLogger("dgcodegen")

DENSE_NEWTON_LIMIT = 400
"""Problems with more parameters than this take Newton-Krylov rather than dense Newton: a
dense Jacobian of n columns costs n Jacobian-vector products and an O(n^3) solve."""

FORCING_GAMMA = 0.9
FORCING_ALPHA = 2.0
FORCING_MAX = 0.5
"""Eisenstat-Walker choice 2: `eta_k = FORCING_GAMMA * (|F_k| / |F_k-1|)^FORCING_ALPHA`,
safeguarded and capped at FORCING_MAX."""

PRECONDITIONERS = ("none", "jacobi")
# NOTE: on the digits network (examples/mlp_digits.py, Gonzalez, tau cycling 0.1 to 1e4) the
# Jacobi preconditioner took about 3 times more Krylov iterations than none, and is no default.
JACOBI_PROBES = 8
"""Rademacher probes of the Hutchinson estimate of the Jacobian diagonal."""


@dataclass
class KrylovOptions:
    """Options of the linear solves inside Newton.

    Attributes:
        max_iterations: Maximum Krylov iterations per linear solve.
        restart: GMRES restart length.
        preconditioner: "none", or "jacobi" for the inverse of a Hutchinson estimate of the
            diagonal of `I + tau J`, formed once per try from JACOBI_PROBES products.
        seed: Seed of the Hutchinson probes.
    """

    max_iterations: int = 200
    restart: int = 40
    preconditioner: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preconditioner not in PRECONDITIONERS:
            raise SpecError(
                f"unknown preconditioner {self.preconditioner!r}; choose one of "
                f"{', '.join(PRECONDITIONERS)}"
            )
        if self.max_iterations < 1 or self.restart < 1:
            raise SpecError("max_iterations and restart must be >= 1")


@dataclass
class KrylovResult(SolveResult):
    """A `SolveResult` with the Krylov iterations of each accepted step."""

    krylov_iterations: list[int]


@dataclass
class _Try:
    y: np.ndarray
    residual: float
    newton_iterations: int
    krylov_iterations: int
    failure: str | None


def _residual(x: np.ndarray, y: np.ndarray, tau: float, linearization: Linearization) -> np.ndarray:
    return y - x + tau * linearization.value


def _operator(n: int, tau: float, linearization: Linearization) -> LinearOperator:
    def apply(v: np.ndarray) -> np.ndarray:
        return v + tau * linearization.jvp(np.ascontiguousarray(v.ravel()))

    return LinearOperator((n, n), matvec=apply, dtype=np.float64)


def _jacobi(n: int, operator: LinearOperator, generator: np.random.Generator) -> LinearOperator:
    estimate = np.zeros(n)
    for _ in range(JACOBI_PROBES):
        probe = generator.choice((-1.0, 1.0), size=n)
        estimate += probe * operator.matvec(probe)
    estimate /= JACOBI_PROBES
    # A noisy or negative estimate would make the preconditioner indefinite; clamp it.
    inverse = 1.0 / np.maximum(estimate, 0.1 * max(1.0, float(np.median(np.abs(estimate)))))
    return LinearOperator((n, n), matvec=lambda v: inverse * v.ravel(), dtype=np.float64)


def _linear_solve(
    operator: LinearOperator,
    rhs: np.ndarray,
    symmetric: bool,
    rtol: float,
    options: KrylovOptions,
    preconditioner: LinearOperator | None,
) -> tuple[np.ndarray, int, bool]:
    """Solve `operator s = rhs` to `rtol`; return s, the iterations and whether it converged."""
    count = [0]

    def counter(_: object) -> None:
        count[0] += 1

    if symmetric:
        solution, info = cg(
            operator,
            rhs,
            rtol=rtol,
            atol=0.0,
            maxiter=options.max_iterations,
            M=preconditioner,
            callback=counter,
        )
        if info == 0 and np.all(np.isfinite(solution)):
            return solution, count[0], True
        # CG assumes a positive definite matrix; a non-convex loss can break that, so
        # GMRES takes over from the start.
        logger.debug("CG failed (info %d) after %d iterations; trying GMRES", info, count[0])
    cycles = max(1, math.ceil(options.max_iterations / options.restart))
    solution, info = gmres(
        operator,
        rhs,
        rtol=rtol,
        atol=0.0,
        restart=options.restart,
        maxiter=cycles,
        M=preconditioner,
        callback=counter,
        callback_type="pr_norm",
    )
    return solution, count[0], info == 0 and bool(np.all(np.isfinite(solution)))


def _forcing_term(residual: float, previous_residual: float, eta: float) -> float:
    """Return the next Eisenstat-Walker relative tolerance after the previous one, `eta`."""
    candidate = FORCING_GAMMA * (residual / previous_residual) ** FORCING_ALPHA
    safeguard = FORCING_GAMMA * eta**FORCING_ALPHA
    if safeguard > 0.1:
        # The safeguard keeps eta from falling abruptly while the residual still decreases slowly.
        candidate = max(candidate, safeguard)
    return min(candidate, FORCING_MAX)


def _newton_krylov(
    problem: MatrixFreeKernels,
    method: str,
    x: np.ndarray,
    tau: float,
    options: StepperOptions,
    krylov: KrylovOptions,
    generator: np.random.Generator,
) -> _Try:
    """Solve `y - x + tau * DG(x, y) = 0` from `y = x`; `failure` is None only on success."""
    atol = options.newton_atol * max(1.0, float(np.linalg.norm(x)))
    y = x.copy()
    linearization = problem.linearize(method, x, y)
    residual_vector = _residual(x, y, tau, linearization)
    residual = float(np.linalg.norm(residual_vector))
    previous_residual = None
    eta = FORCING_MAX
    krylov_total = 0

    for iteration in range(options.newton_max_iter + 1):
        if not math.isfinite(residual):
            return _Try(y, residual, iteration, krylov_total, "non-finite Newton residual")
        tolerance = options.newton_rtol * float(np.linalg.norm(y - x)) + atol
        if residual <= tolerance:
            return _Try(y, residual, iteration, krylov_total, None)
        if iteration == options.newton_max_iter:
            break

        if previous_residual is not None:
            eta = _forcing_term(residual, previous_residual, eta)
        # Solving past the Newton tolerance is wasted work.
        eta = max(eta, 0.5 * tolerance / residual)
        operator = _operator(x.size, tau, linearization)
        preconditioner = None
        if krylov.preconditioner == "jacobi":
            preconditioner = _jacobi(x.size, operator, generator)
        update, count, solved = _linear_solve(
            operator, -residual_vector, linearization.symmetric, eta, krylov, preconditioner
        )
        krylov_total += count

        if not solved:
            failure = f"Krylov solve missed relative tolerance {eta:.2e} in {count} iterations"
            return _Try(y, residual, iteration, krylov_total, failure)
        searched = _line_search(problem, method, x, y, update, residual, tau)
        if searched is None:
            failure = "line search found no decrease of |F|"
            return _Try(y, residual, iteration, krylov_total, failure)
        previous_residual = residual
        y, linearization, residual_vector, residual = searched

    failure = f"Newton not converged in {options.newton_max_iter} iterations"
    return _Try(y, residual, options.newton_max_iter, krylov_total, failure)


def _line_search(
    problem: MatrixFreeKernels,
    method: str,
    x: np.ndarray,
    y: np.ndarray,
    update: np.ndarray,
    residual: float,
    tau: float,
) -> tuple[np.ndarray, Linearization, np.ndarray, float] | None:
    scale = 1.0
    for _ in range(MAX_HALVINGS + 1):
        trial = y + scale * update
        linearization = problem.linearize(method, x, trial)
        vector = _residual(x, trial, tau, linearization)
        norm = float(np.linalg.norm(vector))
        if math.isfinite(norm) and norm < residual:
            return trial, linearization, vector, norm
        scale *= 0.5
    return None


def newton_krylov_descent(
    problem: MatrixFreeKernels,
    method: str,
    x0: np.ndarray,
    options: StepperOptions,
    krylov: KrylovOptions | None = None,
    progress: ProgressCallback | None = None,
) -> SolveResult:
    """Minimise with the implicit discrete gradient method, each step by Newton-Krylov.

    The history records Newton iterations per step in `newton_iterations`, and the result
    lists the Krylov iterations of each step in `krylov_iterations`.

    Raises:
        SolverError: the loss or gradient at x0 is not finite, or no tau above
            `min_step * step` gave an accepted step.
    """
    krylov = krylov or KrylovOptions()
    generator = np.random.default_rng(krylov.seed)
    started = time.perf_counter()
    x = np.array(x0, dtype=float)
    value, gradient = problem.loss_gradient(x)
    gradient_norm = float(np.linalg.norm(gradient))
    if not (math.isfinite(value) and math.isfinite(gradient_norm)):
        raise SolverError(
            f"loss {value} or gradient norm {gradient_norm} at x0 is not finite. "
            "Start from a point where both are finite."
        )
    history = History()
    krylov_iterations: list[int] = []
    tau = options.step
    initial_gradient_norm = gradient_norm
    converged = _is_converged(gradient_norm, initial_gradient_norm, options.tol)
    stationary = False
    while not (converged or stationary) and len(history.loss) < options.max_steps:
        first_tau, rejected = tau, 0
        while True:
            attempt = _newton_krylov(problem, method, x, tau, options, krylov, generator)
            failure = attempt.failure
            if failure is None:
                new_value, new_gradient = problem.loss_gradient(attempt.y)
                new_gradient_norm = float(np.linalg.norm(new_gradient))
                failure = _check_accepted(x, value, attempt.y, new_value, new_gradient_norm)
            if failure is None:
                break
            logger.debug("rejected tau = %.3e: %s", tau, failure)
            rejected += 1
            if tau * options.shrink < options.min_step * options.step:
                raise SolverError(
                    f"implicit step failed for every tau from {first_tau:.3e} down to "
                    f"{tau:.3e}; the last try ended with {failure}"
                )
            tau *= options.shrink
        step_norm = float(np.linalg.norm(attempt.y - x))
        change = new_value - value
        history.loss.append(new_value)
        history.step.append(tau)
        history.step_norm.append(step_norm)
        history.newton_iterations.append(attempt.newton_iterations)
        history.residual.append(attempt.residual)
        history.energy_residual.append(change + step_norm**2 / tau)
        history.rejected.append(rejected)
        krylov_iterations.append(attempt.krylov_iterations)
        stationary = _is_stationary(x, value, step_norm, change)
        x, value, gradient_norm = attempt.y, new_value, new_gradient_norm
        if progress is not None:
            progress(len(history.loss), value, tau)
        tau = _next_step(tau, options)
        converged = _is_converged(gradient_norm, initial_gradient_norm, options.tol)

    steps = len(history.loss)
    message = _end_message(
        converged, stationary, gradient_norm, initial_gradient_norm, history, options
    )
    logger.info(
        "Newton-Krylov discrete gradient descent finished in %.3f s after %d steps, %d Krylov "
        "iterations and %d rejected tries (%s)",
        time.perf_counter() - started, steps, sum(krylov_iterations), sum(history.rejected),
        message,
    )  # fmt: skip
    return KrylovResult(
        x, value, gradient_norm, converged, steps, message, history, krylov_iterations
    )
