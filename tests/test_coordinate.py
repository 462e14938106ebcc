"""Coordinate-wise Itoh-Abe solve: same step as Newton's, without a Jacobian."""

from __future__ import annotations

import numpy as np
import pytest

from dgcodegen.coordinate import (
    _solve_coordinate,
    coordinate_descent,
    coordinate_step,
    quotient_from_discrete_gradient,
)
from dgcodegen.errors import SolverError
from dgcodegen.stepper import StepperOptions, discrete_gradient_descent


def test_coordinate_step_matches_newton_step(rosenbrock) -> None:
    dg = rosenbrock.discrete_gradient("itoh-abe")
    x = np.array([-1.2, 1.0])
    tau = 1e-3
    y, _, residual = coordinate_step(quotient_from_discrete_gradient(dg), x, tau, 1e-15)
    # A fresh Jacobian at every update converges quadratically, far below the Newton
    # tolerance, which the comparison at 1e-12 needs. A kept Jacobian stops at the tolerance.
    options = StepperOptions(step=tau, max_steps=1, tol=0.0, reuse_jacobian=False)
    newton = discrete_gradient_descent(
        rosenbrock.loss, rosenbrock.gradient, dg, rosenbrock.jacobian("itoh-abe"), x, options
    )
    assert residual <= 1e-13
    assert np.abs(y - newton.x).max() <= 1e-12


def test_coordinate_descent_rosenbrock(rosenbrock) -> None:
    options = StepperOptions(step=0.01, max_steps=20_000, tol=1e-13)
    result = coordinate_descent(
        rosenbrock.loss,
        rosenbrock.gradient,
        rosenbrock.discrete_gradient("itoh-abe"),
        rosenbrock.problem.initial_point,
        options,
    )
    losses = np.array(result.history.loss)
    assert result.converged
    assert np.abs(result.x - 1.0).max() <= 1e-9
    assert np.all(np.diff(losses) <= 1e-15)
    assert np.abs(result.history.energy_residual).max() <= 1e-12


def test_coordinate_step_unbounded_raises() -> None:
    def linear_dg(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([1.0, 0.0])

    # V = x_0 has no minimum, but its step still has a root: t = x_0 - tau.
    y, _, _ = coordinate_step(quotient_from_discrete_gradient(linear_dg), np.zeros(2), 0.5, 1e-15)
    assert y[0] == pytest.approx(-0.5, abs=1e-14)

    def concave_dg(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # V = -x_0^4 / 4 - x_0: unbounded below and falling faster than any quadratic.
        a, b = x[0], y[0]
        quotient = -(a**3 + a**2 * b + a * b**2 + b**3) / 4 - 1.0
        return np.array([quotient, 0.0])

    with pytest.raises(SolverError, match="unbounded below"):
        coordinate_step(quotient_from_discrete_gradient(concave_dg), np.zeros(2), 10.0, 1e-15)


def _count_quotient(loss):
    """Return the forward Itoh-Abe quotient of a one-coordinate loss and its call counter."""
    calls = []

    def quotient(point: np.ndarray, k: int, t: float) -> float:
        calls.append(t)
        h = t - point[k]
        if h == 0.0:
            step = 1e-6
            return (loss(point[k] + step) - loss(point[k] - step)) / (2 * step)
        return (loss(t) - loss(point[k])) / h

    return quotient, calls


@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
def test_convex_bracket_first_try(tau: float) -> None:
    # On a convex coordinate the Euler point x - tau V'(x) brackets the root, so the first
    # try is that point and no doubling from a tiny width is needed.
    def loss(t: float) -> float:
        return t**4 / 4 + t * t / 2

    quotient, calls = _count_quotient(loss)
    y, evaluations, residual = coordinate_step(quotient, np.array([2.0]), tau, 1e-15)
    quotient, _ = _count_quotient(loss)
    _, doubled = _solve_coordinate(
        lambda t: quotient(np.array([2.0]), 0, t) + (t - 2.0) / tau, 2.0, 10.0, 1e-15
    )
    assert residual <= 1e-12
    assert 2.0 - tau * 10.0 <= y[0] < 2.0
    assert calls[1] == pytest.approx(2.0 - tau * 10.0, rel=1e-9)
    assert evaluations - 1 < doubled


def test_bracket_retreats_from_barrier() -> None:
    # V = -log(1 - t) + t^2 is finite only for t < 1. From x = -3 with tau = 10 the Euler
    # point is far beyond the barrier, so the search retreats and finds the root before it.
    def loss(t: float) -> float:
        with np.errstate(invalid="ignore", divide="ignore"):
            return -np.log(1.0 - t) + t * t if t < 1.0 else np.nan

    quotient, _ = _count_quotient(loss)
    x = np.array([-3.0])
    y, _, residual = coordinate_step(quotient, x, 10.0, 1e-15)
    assert residual <= 1e-12
    assert x[0] < y[0] < 1.0
    assert loss(y[0]) < loss(x[0])


def test_coordinate_end_message_matches_newton(rosenbrock) -> None:
    # Out of steps, both solvers name the step limit and the threshold the same way.
    options = StepperOptions(step=0.01, max_steps=3, tol=1e-13)
    start = rosenbrock.problem.initial_point
    coordinate = coordinate_descent(
        rosenbrock.loss,
        rosenbrock.gradient,
        rosenbrock.discrete_gradient("itoh-abe"),
        start,
        options,
    )
    newton = discrete_gradient_descent(
        rosenbrock.loss,
        rosenbrock.gradient,
        rosenbrock.discrete_gradient("itoh-abe"),
        rosenbrock.jacobian("itoh-abe"),
        start,
        options,
    )
    prefix = "max_steps = 3 reached before convergence: gradient norm"
    assert coordinate.message.startswith(prefix)
    assert newton.message.startswith(prefix)
    assert coordinate.message.split(" > ")[1] == newton.message.split(" > ")[1]
    assert coordinate.initial_loss == newton.initial_loss
