"""Coordinate-wise solve of the Itoh-Abe step: one scalar equation per coordinate.

The forward Itoh-Abe discrete gradient `DG_k` depends on `y_0, ..., y_k` only, so the
step `y = x - tau * DG(x, y)` splits into scalar equations solved in coordinate order:

    psi_k(t) = (t - x_k) / tau + (V(p with y_k = t) - V(p)) / (t - x_k) = 0,

with `p` the path point after the earlier coordinates moved. `psi_k(x_k)` is the partial
derivative, and for a loss bounded below `psi_k` changes sign on the downhill side, so a
bracket exists. The root is found by the Illinois variant of regula falsi, which needs
no Jacobian. Each coordinate update lowers the loss by exactly `(t - x_k)^2 / tau` when
solved exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from .errors import SolverError
from .stepper import History, SolveResult, StepperOptions, _end_message

log = logging.getLogger("dgcodegen")

MAX_BRACKET_DOUBLINGS = 200
MAX_SCALAR_ITERATIONS = 200


def _solve_coordinate(
    psi: Callable[[float], float],
    start: float,
    slope: float,
    tolerance: float,
    tau: float | None = None,
) -> tuple[float, int]:
    """Return the root of `psi` beside `start` on the side opposite to `slope`'s sign.

    The bracket search first tries the explicit Euler point `start - tau * slope`. When
    the loss is convex along the coordinate, the secant slope there is at most the slope
    at `start` in size, so psi changes sign within that distance. Otherwise the width
    doubles until it does. A try where psi is not finite, such as beyond a barrier of the
    loss, retreats halfway to the last finite point instead.
    """
    if slope == 0.0:
        return start, 0
    direction = -math.copysign(1.0, slope)
    low, f_low = start, slope
    floor = max(1e-8, 1e-8 * abs(start))
    width = floor
    if tau is not None and math.isfinite(tau * slope):
        width = max(floor, tau * abs(slope))
    iterations = 0
    for _ in range(MAX_BRACKET_DOUBLINGS):
        high = start + direction * width
        f_high = psi(high)
        iterations += 1
        if not math.isfinite(f_high):
            if abs(high - low) <= floor:
                raise SolverError(
                    f"the Itoh-Abe quotient is not finite at t = {high!r}, within {floor:.1e} "
                    f"of the last finite point {low!r}. Check that the loss is finite along "
                    "coordinate moves from the starting point."
                )
            width = 0.5 * (abs(low - start) + width)
            continue
        if math.copysign(1.0, f_high) != math.copysign(1.0, f_low) or f_high == 0.0:
            break
        low, f_low = high, f_high
        width *= 2.0
    else:
        raise SolverError(
            f"no sign change of the coordinate equation within {width:.3e} of {start!r}: "
            "the loss may be unbounded below along this coordinate"
        )
    side = 0
    for _ in range(MAX_SCALAR_ITERATIONS):
        if f_high == 0.0 or f_low == 0.0 or abs(high - low) <= tolerance:
            break
        middle = (low * f_high - high * f_low) / (f_high - f_low)
        if not min(low, high) < middle < max(low, high):
            middle = 0.5 * (low + high)
        f_middle = psi(middle)
        iterations += 1
        if math.copysign(1.0, f_middle) == math.copysign(1.0, f_high):
            high, f_high = middle, f_middle
            if side == -1:
                f_low /= 2.0
            side = -1
        else:
            low, f_low = middle, f_middle
            if side == 1:
                f_high /= 2.0
            side = 1
    # The Illinois halving scales the stored values, so compare true residuals.
    return min((low, high), key=lambda t: abs(psi(t))), iterations + 2


CoordinateQuotient = Callable[[np.ndarray, int, float], float]
"""`quotient(point, k, t)`: the Itoh-Abe entry `DG_k` when coordinate k of `point` moves to t,
so `(V(point with k = t) - V(point)) / (t - point[k])`, and `dV / d point_k` at t = point[k]."""


def quotient_from_discrete_gradient(
    discrete_gradient: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> CoordinateQuotient:
    """Return the coordinate quotient of a forward Itoh-Abe discrete gradient kernel."""

    def quotient(point: np.ndarray, k: int, t: float) -> float:
        trial = point.copy()
        trial[k] = t
        return float(discrete_gradient(point, trial)[k])

    return quotient


def coordinate_step(
    quotient: CoordinateQuotient,
    x: np.ndarray,
    tau: float,
    tolerance: float,
) -> tuple[np.ndarray, int, float]:
    """Take one forward Itoh-Abe step coordinate by coordinate.

    Returns the new point, the number of scalar evaluations, and the largest residual
    `|y_k - x_k + tau DG_k|` over the coordinates.
    """
    point = x.copy()
    evaluations = 0
    residual = 0.0
    for k in range(x.size):

        def psi(t: float, k: int = k) -> float:
            return quotient(point, k, t) + (t - x[k]) / tau

        slope = quotient(point, k, float(point[k]))
        scale = tolerance * max(1.0, abs(x[k]))
        root, count = _solve_coordinate(psi, x[k], slope, scale, tau)
        evaluations += count + 1
        residual = max(residual, abs(root - x[k] + tau * quotient(point, k, root)))
        point = point.copy()
        point[k] = root
    return point, evaluations, residual


def coordinate_descent(
    loss: Callable[[np.ndarray], float],
    gradient: Callable[[np.ndarray], np.ndarray],
    discrete_gradient: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    x0: np.ndarray,
    options: StepperOptions,
    progress: Callable[[int, float, float], None] | None = None,
    quotient: CoordinateQuotient | None = None,
) -> SolveResult:
    """Minimise with coordinate-wise Itoh-Abe steps at the fixed step size `options.step`.

    `discrete_gradient` must be the forward Itoh-Abe discrete gradient, or None when
    `quotient` gives its entries directly. The history records scalar evaluations in
    `newton_iterations`.
    """
    if quotient is None:
        # NOTE: each scalar evaluation then computes the whole discrete gradient vector, so a
        # step costs O(n) kernel calls per coordinate.
        quotient = quotient_from_discrete_gradient(discrete_gradient)
    started = time.perf_counter()
    x = np.array(x0, dtype=float)
    value = float(loss(x))
    initial_loss = value
    gradient_norm = float(np.linalg.norm(gradient(x)))
    initial_gradient_norm = gradient_norm
    threshold = options.tol * max(1.0, gradient_norm)
    stalled = False
    history = History()
    tau = options.step
    tolerance = 1e-15
    while gradient_norm > threshold:
        if len(history.loss) >= options.max_steps:
            break
        y, evaluations, residual = coordinate_step(quotient, x, tau, tolerance)
        new_value = float(loss(y))
        step_norm = float(np.linalg.norm(y - x))
        history.loss.append(new_value)
        history.step.append(tau)
        history.step_norm.append(step_norm)
        history.newton_iterations.append(evaluations)
        history.residual.append(residual)
        history.energy_residual.append(new_value - value + step_norm**2 / tau)
        history.rejected.append(0)
        stalled = step_norm == 0.0
        x, value = y, new_value
        gradient_norm = float(np.linalg.norm(gradient(x)))
        if progress is not None:
            progress(len(history.loss), value, tau)
        if stalled:
            break
    converged = gradient_norm <= threshold
    message = _end_message(
        converged, stalled, gradient_norm, initial_gradient_norm, history, options
    )
    log.info(
        "coordinate-wise Itoh-Abe finished in %.3f s after %d steps (%s)",
        time.perf_counter() - started,
        len(history.loss),
        message,
    )
    steps = len(history.loss)
    return SolveResult(x, value, gradient_norm, converged, steps, message, history, initial_loss)
