"""Run: the implicit discrete gradient stepper.

Each step solves `F(y) = y - x + tau * DG(x, y) = 0` for `y` by Newton's method. Because
`DG(x, y) . (y - x) = V(y) - V(x)`, an exact solve lowers the loss by `|y - x|^2 / tau` for
every `tau > 0`. The stepper takes plain callables: the compiled Numba kernels partially applied
to their data, or hand-written NumPy functions. A try whose Newton solve misses the tolerance,
meets a non-finite value or a singular Newton matrix, or raises the loss is rejected, and
`tau` shrinks before the step is retried from the same point.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import SolverError, SpecError

logger = logging.getLogger("dgcodegen")

LossFunction = Callable[[np.ndarray], float]
GradientFunction = Callable[[np.ndarray], np.ndarray]
PairFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
ProgressCallback = Callable[[int, float, float], None]

MAX_HALVINGS = 10
"""Maximum number of times the line search halves a Newton update."""

DENSE_NEWTON_RTOL = 1e-10
"""Default relative Newton tolerance of the dense stepper: the energy identity is then exact
to about rounding."""

LOSS_INCREASE_SLACK = 1e-12
"""A try is rejected when `V(y) > V(x) + LOSS_INCREASE_SLACK * max(1, |V(x)|)` and `y != x`."""

STATIONARY_STEP = 1e-15
"""A step shorter than `STATIONARY_STEP * max(1, |x|)` ends the run when it also changes the loss
by at most `4 * eps * max(1, |V(x)|)`, a change at rounding level."""

REFRESH_CONTRACTION = 0.1
"""With `reuse_jacobian`, an update from a kept Jacobian that leaves `|F|` above this fraction
of its previous value makes the next update evaluate the Jacobian afresh."""

DIVERGENCE_LOSS = 1e300
"""`gradient_descent` reports divergence once the loss exceeds this value."""


@dataclass
class StepperOptions:
    """Step-size schedule and tolerances of `discrete_gradient_descent`.

    Attributes:
        step: Initial step size tau, > 0.
        schedule: "fixed" changes tau only when a try is rejected, "grow" also multiplies
            it by `growth` after each accepted step up to `max_step`, and "cycle" multiplies it
            by `growth` after each accepted step and starts again from `step` once it would
            pass `max_step`. On a quadratic with Hessian eigenvalues in `[mu, L]`, a cycle from
            about `2 / L` to `2 / mu` gives every eigenvalue a step whose Cayley factor
            `|1 - tau lambda / 2| / (1 + tau lambda / 2)` is near zero, as the shifts of ADI
            iterations do, which a fixed tau cannot.
        growth: Factor applied to tau after each accepted step of the "grow" and "cycle"
            schedules.
        max_step: Upper bound on tau in the "grow" and "cycle" schedules. A larger tau is not
            always faster: on a quadratic the mean-value step multiplies the error by the Cayley
            transform `(I + tau A / 2)^-1 (I - tau A / 2)`, whose eigenvalues tend to -1 as tau
            grows.
        shrink: Factor applied to tau after a rejected try, in (0, 1).
        min_step: The run raises `SolverError` once tau falls below `min_step * step`.
        tol: The run has converged when `|grad V(x)| <= tol * max(1, |grad V(x0)|)`.
        max_steps: Maximum number of accepted steps.
        newton_rtol: Relative part of the Newton tolerance
            `|F(y)| <= newton_rtol * |y - x| + newton_atol * max(1, |x|)`, in [0, 1), or
            None for the solver's default: DENSE_NEWTON_RTOL here, a looser one for
            Newton-Krylov (`krylov.KRYLOV_NEWTON_RTOL`). With
            `F(y) = y - x + tau DG(x, y)` and the exact identity `DG . (y - x) = V(y) - V(x)`,
            a solve to this tolerance still gives `V(y) - V(x) <= -(1 - newton_rtol)
            |y - x|^2 / tau`, so a loose tolerance keeps the decrease guarantee.
        newton_atol: Absolute part of the Newton tolerance, scaled by `max(1, |x|)`.
        newton_max_iter: Maximum number of Newton updates per try.
        reuse_jacobian: Keep the Jacobian, and the inverse of the Newton matrix
            `I + tau * J`, across Newton updates and steps while each update still shrinks
            `|F|` by at least `REFRESH_CONTRACTION`; evaluate it afresh otherwise. The
            tolerance is always checked on the true residual, so this changes the cost of a
            solve, not its accuracy. False evaluates the Jacobian at every update.
    """

    step: float
    schedule: str = "fixed"
    growth: float = 2.0
    max_step: float = 1e8
    shrink: float = 0.25
    min_step: float = 1e-14
    tol: float = 1e-8
    max_steps: int = 1000
    newton_rtol: float | None = None
    newton_atol: float = 1e-13
    newton_max_iter: int = 30
    reuse_jacobian: bool = True

    def relative_tolerance(self, default: float) -> float:
        """Return `newton_rtol`, or `default` (the solver's) when it is None."""
        return default if self.newton_rtol is None else self.newton_rtol

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step) and self.step > 0):
            raise SpecError(f"invalid step {self.step!r}: the step size must be finite and > 0")
        if self.schedule not in ("fixed", "grow", "cycle"):
            raise SpecError(f"invalid schedule {self.schedule!r}: use 'fixed', 'grow' or 'cycle'")
        if self.schedule == "cycle" and not (self.growth > 1 and self.max_step > self.step):
            raise SpecError(
                f"invalid growth {self.growth!r} or max_step {self.max_step!r}: the 'cycle' "
                "schedule needs growth > 1 and max_step > step"
            )
        if self.schedule == "grow" and not (self.growth >= 1 and self.max_step >= self.step):
            raise SpecError(
                f"invalid growth {self.growth!r} or max_step {self.max_step!r}: the 'grow' "
                "schedule needs growth >= 1 and max_step >= step"
            )
        if not 0 < self.shrink < 1:
            raise SpecError(f"invalid shrink {self.shrink!r}: it must lie in (0, 1)")
        if not self.min_step > 0:
            raise SpecError(f"invalid min_step {self.min_step!r}: it must be > 0")
        if not (self.tol >= 0 and self.max_steps >= 0):
            raise SpecError(
                f"invalid tol {self.tol!r} or max_steps {self.max_steps!r}: both must be >= 0"
            )
        if self.newton_rtol is not None and not 0 <= self.newton_rtol < 1:
            raise SpecError(
                f"invalid newton_rtol {self.newton_rtol!r}: it must lie in [0, 1). Below 1 the "
                "loss still falls by at least (1 - newton_rtol) |y - x|^2 / tau per step"
            )
        if self.newton_max_iter < 1:
            raise SpecError(f"invalid newton_max_iter {self.newton_max_iter!r}: it must be >= 1")


@dataclass
class History:
    """Records of the accepted steps of a run, one entry per step in every list.

    Attributes:
        loss: Loss `V(y)` after the step.
        step: Step size tau of the step.
        step_norm: `|y - x|`.
        newton_iterations: Number of Newton updates of the accepted try.
        residual: Final Newton residual `|F(y)|`.
        energy_residual: `V(y) - V(x) + |y - x|^2 / tau`, zero for an exact solve.
        rejected: Number of rejected tries before the accepted one.
    """

    loss: list[float] = field(default_factory=list)
    step: list[float] = field(default_factory=list)
    step_norm: list[float] = field(default_factory=list)
    newton_iterations: list[int] = field(default_factory=list)
    residual: list[float] = field(default_factory=list)
    energy_residual: list[float] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        """Return a copy of the records as a dict of lists keyed by field name."""
        return {item.name: list(getattr(self, item.name)) for item in fields(self)}


@dataclass
class SolveResult:
    """Outcome of `discrete_gradient_descent`: the final point and how the run ended.

    `loss` is the loss at `x`, and `initial_loss` the loss at the starting point.
    """

    x: np.ndarray
    loss: float
    gradient_norm: float
    converged: bool
    steps: int
    message: str
    history: History
    initial_loss: float


@dataclass
class _NewtonResult:
    y: np.ndarray
    residual: float
    iterations: int
    failure: str | None


@dataclass
class _Step:
    y: np.ndarray
    loss: float
    gradient: np.ndarray
    gradient_norm: float
    tau: float
    newton: _NewtonResult
    rejected: int


def _norm(vector: np.ndarray) -> float:
    return float(np.linalg.norm(vector))


def _newton_residual(x: np.ndarray, y: np.ndarray, tau: float, dg: PairFunction) -> np.ndarray:
    value = np.asarray(dg(x, y), dtype=float)
    if value.shape != x.shape:
        raise SpecError(f"discrete_gradient returned shape {value.shape}, expected {x.shape}")
    return y - x + tau * value


def _line_search(
    x: np.ndarray, y: np.ndarray, update: np.ndarray, residual: float, tau: float, dg: PairFunction
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Halve the Newton update until `|F|` decreases. Return None if it never does."""
    scale = 1.0
    for _ in range(MAX_HALVINGS + 1):
        trial = y + scale * update
        trial_vector = _newton_residual(x, trial, tau, dg)
        trial_residual = _norm(trial_vector)
        if math.isfinite(trial_residual) and trial_residual < residual:
            return trial, trial_vector, trial_residual
        scale *= 0.5
    return None


@dataclass
class _NewtonMatrix:
    """Jacobian kept between Newton updates, with the inverse of `I + tau * jacobian`."""

    jacobian: np.ndarray | None = None
    tau: float = math.nan
    inverse: np.ndarray | None = None

    def invert(self, tau: float) -> str | None:
        """Set `inverse` for `tau` from the kept Jacobian, and return why that failed or None."""
        matrix = tau * self.jacobian
        matrix[np.diag_indices_from(matrix)] += 1.0
        try:
            # One inverse serves every update that reuses this matrix, each a matrix-vector
            # product; the solve's accuracy comes from the residual test, not from here.
            self.inverse = np.linalg.inv(matrix)
        except np.linalg.LinAlgError:
            self.inverse = None
            return "singular Newton matrix"
        self.tau = tau
        if not np.all(np.isfinite(self.inverse)):
            self.inverse = None
            return "singular Newton matrix"
        return None

    def refresh(
        self, x: np.ndarray, y: np.ndarray, tau: float, jacobian: PairFunction
    ) -> str | None:
        """Evaluate the Jacobian at `(x, y)`, invert, and return why that failed or None."""
        value = np.array(jacobian(x, y), dtype=float)
        if value.shape != (x.size, x.size):
            raise SpecError(f"jacobian returned shape {value.shape}, expected {(x.size, x.size)}")
        if not np.all(np.isfinite(value)):
            self.jacobian = self.inverse = None
            return "non-finite Jacobian"
        self.jacobian = value
        return self.invert(tau)


def _line_search_failure(
    x: np.ndarray,
    y: np.ndarray,
    update: np.ndarray,
    residual: float,
    tau: float,
    dg: PairFunction,
    iteration: int,
) -> _NewtonResult:
    """Return the failure of a solve whose line search found no decrease of `|F|`.

    A full update to a point where `F` is not finite is reported as such, with that residual.
    """
    trial = _norm(_newton_residual(x, y + update, tau, dg))
    if not math.isfinite(trial):
        return _NewtonResult(y, trial, iteration, "non-finite Newton residual")
    return _NewtonResult(y, residual, iteration, "line search found no decrease of |F|")


def _newton_solve(
    x: np.ndarray,
    tau: float,
    dg: PairFunction,
    jacobian: PairFunction,
    options: StepperOptions,
    kept: _NewtonMatrix | None = None,
    gradient_at_x: np.ndarray | None = None,
) -> _NewtonResult:
    """Solve `y - x + tau * DG(x, y) = 0` from `y = x`. `failure` is None only on success.

    `kept` carries the Jacobian between calls when `options.reuse_jacobian` is set. An update
    from a kept Jacobian that finds no decrease of `|F|` is retried with a fresh one, so a
    solve fails only when a freshly evaluated Jacobian fails. `gradient_at_x`, when given,
    stands in for `DG(x, x)`, equal to `grad V(x)` for every discrete gradient, which saves
    one evaluation of `DG` per solve.
    """
    if kept is None or not options.reuse_jacobian:
        kept = _NewtonMatrix()
    atol = options.newton_atol * max(1.0, _norm(x))
    y = x.copy()
    if gradient_at_x is not None and gradient_at_x.shape == x.shape:
        residual_vector = tau * gradient_at_x
    else:
        residual_vector = _newton_residual(x, y, tau, dg)
    residual = _norm(residual_vector)
    fresh = False

    for iteration in range(options.newton_max_iter + 1):
        if not math.isfinite(residual):
            return _NewtonResult(y, residual, iteration, "non-finite Newton residual")
        # NOTE: the rounding error of F grows like eps * tau * |DG terms|, which this tolerance
        # does not scale with. At large tau near a minimum a solve can miss it by rounding
        # alone, and the stepper then rejects the try and shrinks tau.
        if residual <= options.relative_tolerance(DENSE_NEWTON_RTOL) * _norm(y - x) + atol:
            return _NewtonResult(y, residual, iteration, None)
        if iteration == options.newton_max_iter:
            break

        failure = None
        if kept.jacobian is None or not options.reuse_jacobian:
            failure, fresh = kept.refresh(x, y, tau, jacobian), True
        elif kept.inverse is None or kept.tau != tau:
            failure = kept.invert(tau)
        if failure is not None:
            return _NewtonResult(y, residual, iteration, failure)
        update = -(kept.inverse @ residual_vector)

        searched = _line_search(x, y, update, residual, tau, dg)
        if searched is None and not fresh:
            failure, fresh = kept.refresh(x, y, tau, jacobian), True
            if failure is not None:
                return _NewtonResult(y, residual, iteration, failure)
            update = -(kept.inverse @ residual_vector)
            searched = _line_search(x, y, update, residual, tau, dg)
        if searched is None:
            return _line_search_failure(x, y, update, residual, tau, dg, iteration)
        contraction = searched[2] / residual
        y, residual_vector, residual = searched
        if contraction > REFRESH_CONTRACTION:
            kept.jacobian = kept.inverse = None
        fresh = False

    failure = f"Newton not converged in {options.newton_max_iter} iterations"
    return _NewtonResult(y, residual, options.newton_max_iter, failure)


def _take_step(
    x: np.ndarray,
    value: float,
    tau: float,
    functions: tuple[LossFunction, GradientFunction, PairFunction, PairFunction],
    options: StepperOptions,
    kept: _NewtonMatrix | None = None,
    gradient_at_x: np.ndarray | None = None,
) -> _Step:
    """Try `tau`, shrinking it after each rejected try, until a try is accepted.

    Raises:
        SolverError: tau fell below `options.min_step * options.step`.
    """
    loss, gradient, dg, jacobian = functions
    first_tau = tau
    rejected = 0
    while True:
        newton = _newton_solve(x, tau, dg, jacobian, options, kept, gradient_at_x)
        failure = newton.failure
        if failure is None:
            new_value = float(loss(newton.y))
            new_gradient = np.asarray(gradient(newton.y), dtype=float)
            new_gradient_norm = _norm(new_gradient)
            failure = _check_accepted(x, value, newton.y, new_value, new_gradient_norm)
        if failure is None:
            return _Step(
                newton.y, new_value, new_gradient, new_gradient_norm, tau, newton, rejected
            )

        logger.debug("rejected tau = %.3e: %s, residual %.3e", tau, failure, newton.residual)
        rejected += 1
        if tau * options.shrink < options.min_step * options.step:
            raise SolverError(
                f"implicit step failed for every tau from {first_tau:.3e} down to {tau:.3e}. The "
                f"last try at tau = {tau:.3e} ended with {failure} (Newton residual "
                f"{newton.residual:.3e}, loss {value:.6e}). Check that jacobian is the derivative "
                "of discrete_gradient with respect to y and that both are finite near x, or "
                "raise newton_max_iter or lower min_step."
            )
        tau *= options.shrink


def _check_accepted(
    x: np.ndarray, value: float, y: np.ndarray, new_value: float, new_gradient_norm: float
) -> str | None:
    """Return why a solved try must be rejected, or None if it can be accepted."""
    if not math.isfinite(new_value):
        return f"non-finite loss {new_value} at y"
    increase = new_value - value
    if increase > LOSS_INCREASE_SLACK * max(1.0, abs(value)) and not np.array_equal(x, y):
        return f"loss increase {increase:.3e}"
    if not math.isfinite(new_gradient_norm):
        return "non-finite gradient at y"
    return None


def _is_converged(gradient_norm: float, initial_gradient_norm: float, tol: float) -> bool:
    # Relative to the starting gradient, not to |V|, so a constant added to the loss does not
    # change where the run stops.
    return gradient_norm <= tol * max(1.0, initial_gradient_norm)


def discrete_gradient_descent(
    loss: LossFunction,
    gradient: GradientFunction,
    discrete_gradient: PairFunction,
    jacobian: PairFunction,
    x0: np.ndarray,
    options: StepperOptions,
    progress: ProgressCallback | None = None,
) -> SolveResult:
    """Minimise a loss with the implicit discrete gradient method `y = x - tau * DG(x, y)`.

    Args:
        loss: `V(x)`, a float.
        gradient: `grad V(x)`, shape (n,).
        discrete_gradient: `DG(x, y)`, shape (n,), with `DG(x, y) . (y - x) = V(y) - V(x)`
            and `DG(x, x) = grad V(x)`.
        jacobian: `d DG(x, y) / d y`, shape (n, n).
        x0: Starting point, shape (n,).
        options: Step-size schedule and tolerances.
        progress: Called as `progress(steps, loss, tau)` after each accepted step, with the
            number of accepted steps so far and the tau of the last step.

    Returns:
        The final point. `converged` is True when the gradient test of `options.tol` passed
        or the last step left x and the loss unchanged ("loss stationary" in `message`).

    Raises:
        SolverError: The loss or gradient at x0 is not finite, or no tau above
            `min_step * step` gave an accepted step.
        SpecError: x0 is not a vector, or a callable returned an array of the wrong shape.
    """
    start = time.perf_counter()
    x = np.array(x0, dtype=float)
    if x.ndim != 1:
        raise SpecError(f"invalid x0 shape {x.shape}: expected a 1-D parameter vector")
    value = float(loss(x))
    initial_loss = value
    current_gradient = np.asarray(gradient(x), dtype=float)
    gradient_norm = _norm(current_gradient)
    if not (math.isfinite(value) and math.isfinite(gradient_norm)):
        raise SolverError(
            f"loss {value} or gradient norm {gradient_norm} at x0 is not finite. "
            "Start from a point where both are finite."
        )

    functions = (loss, gradient, discrete_gradient, jacobian)
    kept = _NewtonMatrix()
    history = History()
    tau = options.step
    initial_gradient_norm = gradient_norm
    converged = _is_converged(gradient_norm, initial_gradient_norm, options.tol)
    stationary = False
    while not (converged or stationary) and len(history.loss) < options.max_steps:
        step = _take_step(x, value, tau, functions, options, kept, current_gradient)
        step_norm = _norm(step.y - x)
        change = step.loss - value
        energy_residual = change + step_norm**2 / step.tau
        _record(history, step, step_norm, energy_residual)
        logger.debug(
            "step %d: loss %.10e, tau %.3e, |y - x| %.3e, %d Newton iterations, residual %.3e, "
            "energy residual %.3e, %d rejected",
            len(history.loss), step.loss, step.tau, step_norm, step.newton.iterations,
            step.newton.residual, energy_residual, step.rejected,
        )  # fmt: skip

        stationary = _is_stationary(x, value, step_norm, change)
        x, value, gradient_norm = step.y, step.loss, step.gradient_norm
        current_gradient = step.gradient
        if progress is not None:
            progress(len(history.loss), value, step.tau)
        tau = _next_step(step.tau, options)
        converged = _is_converged(gradient_norm, initial_gradient_norm, options.tol)

    steps = len(history.loss)
    message = _end_message(
        converged, stationary, gradient_norm, initial_gradient_norm, history, options
    )
    logger.info(
        "discrete gradient descent finished in %.3f s after %d steps and %d rejected tries (%s)",
        time.perf_counter() - start, steps, sum(history.rejected), message,
    )  # fmt: skip
    return SolveResult(x, value, gradient_norm, converged, steps, message, history, initial_loss)


def _end_message(
    converged: bool,
    stationary: bool,
    gradient_norm: float,
    initial_gradient_norm: float,
    history: History,
    options: StepperOptions,
) -> str:
    """Return how a run ended: converged, stalled, or out of steps."""
    threshold = options.tol * max(1.0, initial_gradient_norm)
    if converged:
        return f"converged: gradient norm {gradient_norm:.3e} <= {threshold:.3e}"
    if stationary:
        return _stationary_message(gradient_norm, threshold, history.step[-1])
    return (
        f"max_steps = {options.max_steps} reached before convergence: gradient norm "
        f"{gradient_norm:.3e} > {threshold:.3e}"
    )


def _next_step(tau: float, options: StepperOptions) -> float:
    """Return the tau of the next step after a step accepted at `tau`."""
    if options.schedule == "grow":
        return min(tau * options.growth, options.max_step)
    if options.schedule == "cycle":
        grown = tau * options.growth
        return grown if grown <= options.max_step else options.step
    return tau


def _is_stationary(x: np.ndarray, value: float, step_norm: float, change: float) -> bool:
    short_step = step_norm <= STATIONARY_STEP * max(1.0, _norm(x))
    return short_step and abs(change) <= 4 * np.finfo(float).eps * max(1.0, abs(value))


def _stationary_message(gradient_norm: float, threshold: float, tau: float) -> str:
    # A try is accepted at y = x when tau * |grad V(x)| is within the Newton tolerance, so a
    # stalled run is not a minimum: it reports converged only through the gradient test.
    return (
        f"stalled at tau = {tau:.3e}: the last step moved x by at most {STATIONARY_STEP:g} * "
        f"max(1, |x|) and left the loss unchanged, but the gradient norm {gradient_norm:.3e} "
        f"is above {threshold:.3e}; try a larger step or a looser tol"
    )


def _record(history: History, step: _Step, step_norm: float, energy_residual: float) -> None:
    history.loss.append(step.loss)
    history.step.append(step.tau)
    history.step_norm.append(step_norm)
    history.newton_iterations.append(step.newton.iterations)
    history.residual.append(step.newton.residual)
    history.energy_residual.append(energy_residual)
    history.rejected.append(step.rejected)


def gradient_descent(
    loss: LossFunction, gradient: GradientFunction, x0: np.ndarray, step: float, max_steps: int
) -> dict[str, object]:
    """Run explicit gradient descent `x <- x - step * grad V(x)`, for comparison.

    Returns:
        A dict with "loss" (the loss at x0, then after each step), "diverged" (True when the
        loss became non-finite or exceeded `DIVERGENCE_LOSS`) and "x" (the last iterate).
        A step to a non-finite loss is neither stored in "loss" nor taken.
    """
    x = np.array(x0, dtype=float)
    losses = [float(loss(x))]
    if not math.isfinite(losses[0]) or losses[0] > DIVERGENCE_LOSS:
        return {"loss": losses, "diverged": True, "x": x}

    diverged = False
    # Overflow is the expected outcome of a diverging run, and the loop checks for it.
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(max_steps):
            candidate = x - step * np.asarray(gradient(x), dtype=float)
            value = float(loss(candidate))
            if not math.isfinite(value):
                diverged = True
                break
            x = candidate
            losses.append(value)
            if value > DIVERGENCE_LOSS:
                diverged = True
                break
    return {"loss": losses, "diverged": diverged, "x": x}
