"""Newton-Krylov solve of the implicit step for problems too large for dense Jacobians.

Each step solves `F(y) = y - x + tau * DG(x, y) = 0` by inexact Newton: the update solves
`(I + tau J) s = -F` with `J v` from Jacobian-vector products, by conjugate gradients when
`J` is symmetric and GMRES otherwise, to the relative accuracy of the Eisenstat-Walker
forcing term (choice 2 of S. C. Eisenstat and H. F. Walker, SIAM J. Sci. Comput. 17, 1996).
A try whose solve fails or raises the loss is rejected and tau shrinks, as in the dense
stepper, and a run that stops early is never reported as converged.

Unless `StepperOptions.newton_rtol` sets another tolerance, steps are solved only to
`|F(y)| <= 0.5 |y - x|`. Because
`DG . (y - x) = V(y) - V(x)` holds for any y (exactly for Gonzalez, to quadrature error for
the mean value), `V(y) - V(x) = (F . d - |d|^2) / tau` with
`d = y - x`, so the loss still falls by at least `(1 - newton_rtol) |d|^2 / tau`: the
loose solve keeps the decrease guarantee of the exact one at a fraction of the Krylov
iterations. The linear solvers come from `linear.py`, so the module needs only NumPy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import SolverError, SpecError
from .linear import conjugate_gradient, gmres
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

KRYLOV_NEWTON_RTOL = 0.5
"""Default relative Newton tolerance of Newton-Krylov steps. A step solved to
`|F(y)| <= 0.5 |y - x|` still lowers the loss by at least `|y - x|^2 / (2 tau)` (see
`StepperOptions.newton_rtol`), and on the digits network it took a fifth of the Krylov
iterations of a solve to 1e-10 (2,919 against 15,702 over 150 Gonzalez steps)."""

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
        try_budget: Maximum Krylov iterations per try. A try that needs more is rejected and
            tau shrinks: such a tau costs more than several steps at smaller ones. The
            true-residual checks of the last linear solve may pass it by two products.
        restart: GMRES restart length.
        preconditioner: "none", or "jacobi" for the inverse of a Hutchinson estimate of the
            diagonal of `I + tau J`, formed once per try from JACOBI_PROBES products.
        seed: Seed of the Hutchinson probes.
    """

    max_iterations: int = 200
    try_budget: int = 400
    restart: int = 40
    preconditioner: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preconditioner not in PRECONDITIONERS:
            raise SpecError(
                f"unknown preconditioner {self.preconditioner!r}; choose one of "
                f"{', '.join(PRECONDITIONERS)}"
            )
        if min(self.max_iterations, self.restart, self.try_budget) < 1:
            raise SpecError(
                f"max_iterations {self.max_iterations}, restart {self.restart} and try_budget "
                f"{self.try_budget} must all be >= 1"
            )


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


Operator = Callable[[np.ndarray], np.ndarray]


def _operator(tau: float, linearization: Linearization) -> Operator:
    return lambda v: v + tau * linearization.jvp(np.ascontiguousarray(v))


def _jacobi(n: int, operator: Operator, generator: np.random.Generator) -> Operator:
    estimate = np.zeros(n)
    for _ in range(JACOBI_PROBES):
        probe = generator.choice((-1.0, 1.0), size=n)
        estimate += probe * operator(probe)
    estimate /= JACOBI_PROBES
    # A noisy or negative estimate would make the preconditioner indefinite; clamp it.
    inverse = 1.0 / np.maximum(estimate, 0.1 * max(1.0, float(np.median(np.abs(estimate)))))
    return lambda v: inverse * v


def _linear_solve(
    operator: Operator,
    rhs: np.ndarray,
    symmetric: bool,
    rtol: float,
    options: KrylovOptions,
    preconditioner: Operator | None,
    max_iterations: int,
) -> tuple[np.ndarray, int, bool]:
    """Solve `operator s = rhs` to `rtol`; return s, the operator applications and whether
    it converged."""
    # Newton evaluates its own residual after every update, so the linear solvers skip
    # the product that would check theirs.
    used = 0
    if symmetric:
        solution = conjugate_gradient(
            operator, rhs, rtol, max_iterations, preconditioner, check=False
        )
        if solution.converged:
            return solution.x, solution.iterations, True
        used = solution.iterations
        # CG assumes a positive definite matrix; a non-convex loss can break that, so
        # GMRES takes over from the start.
        logger.debug("CG stopped (%s) after %d products; trying GMRES", solution.status, used)
        if max_iterations - used < 1:
            return solution.x, used, False
        max_iterations -= used
    solution = gmres(
        operator, rhs, rtol, options.restart, max_iterations, preconditioner, check=False
    )
    return solution.x, used + solution.iterations, solution.converged


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
    rtol = options.relative_tolerance(KRYLOV_NEWTON_RTOL)
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
        tolerance = rtol * float(np.linalg.norm(y - x)) + atol
        if residual <= tolerance:
            return _Try(y, residual, iteration, krylov_total, None)
        if iteration == options.newton_max_iter:
            break

        if previous_residual is not None:
            eta = _forcing_term(residual, previous_residual, eta)
        # Solving past the Newton tolerance is wasted work.
        eta = max(eta, 0.5 * tolerance / residual)
        operator = _operator(tau, linearization)
        preconditioner = None
        if krylov.preconditioner == "jacobi":
            preconditioner = _jacobi(x.size, operator, generator)
        allowed = min(krylov.max_iterations, krylov.try_budget - krylov_total)
        if allowed < 1:
            failure = f"Krylov budget of {krylov.try_budget} iterations per try spent"
            return _Try(y, residual, iteration, krylov_total, failure)
        update, count, solved = _linear_solve(
            operator,
            -residual_vector,
            linearization.symmetric,
            eta,
            krylov,
            preconditioner,
            allowed,
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
    initial_loss = float(value)
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
        x,
        value,
        gradient_norm,
        converged,
        steps,
        message,
        history,
        initial_loss,
        krylov_iterations,
    )
