"""Tests of the implicit discrete gradient stepper on hand-written NumPy problems."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from dgcodegen.errors import SolverError, SpecError
from dgcodegen.stepper import (
    DENSE_NEWTON_RTOL,
    SolveResult,
    StepperOptions,
    discrete_gradient_descent,
    gradient_descent,
)

EPS = np.finfo(float).eps


class Quadratic:
    """`V = x^T A x / 2 - b^T x` with SPD `A`, its mean-value DG `A (x + y) / 2 - b` and `A / 2`."""

    def __init__(self, n: int, condition: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        self.eigenvalues = np.logspace(0, np.log10(condition), n)
        a = q @ np.diag(self.eigenvalues) @ q.T
        self.a = (a + a.T) / 2
        self.b = 10 * rng.standard_normal(n)
        self.minimizer = np.linalg.solve(self.a, self.b)
        self.lipschitz = self.eigenvalues.max()

    def loss(self, x: np.ndarray) -> float:
        return float(x @ self.a @ x / 2 - self.b @ x)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.a @ x - self.b

    def discrete_gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.a @ (x + y) / 2 - self.b

    def jacobian(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.a / 2

    def solve(self, x0: np.ndarray, options: StepperOptions, **overrides) -> SolveResult:
        functions = {
            "loss": self.loss,
            "gradient": self.gradient,
            "discrete_gradient": self.discrete_gradient,
            "jacobian": self.jacobian,
        }
        functions.update(overrides)
        return discrete_gradient_descent(x0=x0, options=options, **functions)

    def loss_rounding_bound(self, norm_bound: np.ndarray) -> np.ndarray:
        """Bound the rounding error of `loss` at points with `|x| <= norm_bound`."""
        n = self.b.size
        scale = (
            np.linalg.norm(np.abs(self.a), 2) * norm_bound**2 / 2
            + np.linalg.norm(self.b) * norm_bound
        )
        return 2 * n * EPS * scale


def iterate_norm_bounds(result: SolveResult, x0: np.ndarray) -> np.ndarray:
    """Bound `|x|` at the start of each step by `|x0|` plus the earlier step norms."""
    earlier_steps = np.concatenate([[0.0], np.cumsum(result.history.step_norm)[:-1]])
    return np.linalg.norm(x0) + earlier_steps


def assert_newton_tolerance_met(result: SolveResult, x0: np.ndarray, options: StepperOptions):
    step_norm = np.array(result.history.step_norm)
    tolerance = options.relative_tolerance(
        DENSE_NEWTON_RTOL
    ) * step_norm + options.newton_atol * np.maximum(1.0, iterate_norm_bounds(result, x0))
    assert np.all(np.array(result.history.residual) <= tolerance)


def assert_energy_identity(problem: Quadratic, result: SolveResult, x0: np.ndarray):
    """Check `V(y) - V(x) + |y - x|^2 / tau` against the Newton residual and loss rounding.

    For this DG the energy residual equals `F . (y - x) / tau` up to the rounding of the
    two loss values.
    """
    history = result.history
    step_norm = np.array(history.step_norm)
    tau = np.array(history.step)
    norm_bound = iterate_norm_bounds(result, x0) + step_norm
    bound = np.array(history.residual) * step_norm / tau + 2 * problem.loss_rounding_bound(
        norm_bound
    )
    assert np.all(np.abs(history.energy_residual) <= bound)


@pytest.fixture(scope="module")
def quadratic() -> Quadratic:
    return Quadratic(n=8, condition=1e3)


@pytest.fixture(scope="module")
def rosenbrock() -> dict:
    """Rosenbrock `(1 - a)^2 + 100 (b - a^2)^2` with its exact mean-value DG and Jacobian."""
    a, b, c, d, s = sp.symbols("a b c d s", real=True)
    loss = (1 - a) ** 2 + 100 * (b - a**2) ** 2
    gradient = [sp.diff(loss, v) for v in (a, b)]
    segment = {a: a + s * (c - a), b: b + s * (d - b)}
    mean_value = [
        sp.integrate(sp.expand(g.subs(segment, simultaneous=True)), (s, 0, 1)) for g in gradient
    ]
    identity = mean_value[0] * (c - a) + mean_value[1] * (d - b) - (loss.subs({a: c, b: d}) - loss)
    assert sp.expand(identity) == 0
    jacobian = [[sp.diff(entry, v) for v in (c, d)] for entry in mean_value]
    loss_f = sp.lambdify((a, b), loss)
    gradient_f = sp.lambdify((a, b), gradient)
    mean_value_f = sp.lambdify((a, b, c, d), mean_value)
    jacobian_f = sp.lambdify((a, b, c, d), jacobian)
    return {
        "loss": lambda x: float(loss_f(*x)),
        "gradient": lambda x: np.array(gradient_f(*x), dtype=float),
        "discrete_gradient": lambda x, y: np.array(mean_value_f(*x, *y), dtype=float),
        "jacobian": lambda x, y: np.array(jacobian_f(*x, *y), dtype=float),
    }


def test_quadratic_converges_above_gd_bound(quadratic):
    # For the mean-value DG the error contracts by the Cayley transform of tau * A / 2,
    # fastest at tau = 2 / sqrt(lambda_min * lambda_max), here about 32 times 2 / L.
    tau = 2 / np.sqrt(quadratic.eigenvalues.min() * quadratic.eigenvalues.max())
    assert tau > 10 * 2 / quadratic.lipschitz
    x0 = np.zeros(quadratic.b.size)
    options = StepperOptions(step=tau, tol=1e-12, max_steps=2000)

    result = quadratic.solve(x0, options)

    assert result.converged
    assert "converged" in result.message
    assert result.steps == len(result.history.loss)
    error = np.linalg.norm(result.x - quadratic.minimizer)
    assert error <= 1e-9 * np.linalg.norm(quadratic.minimizer)
    losses = np.array([quadratic.loss(x0), *result.history.loss])
    assert np.all(np.diff(losses) <= 1e-12 * np.maximum(1.0, np.abs(losses[:-1])))
    assert_newton_tolerance_met(result, x0, options)
    assert_energy_identity(quadratic, result, x0)


def test_quadratic_huge_step_keeps_energy_identity(quadratic):
    tau = 1e4 * 2 / quadratic.lipschitz
    x0 = np.zeros(quadratic.b.size)
    options = StepperOptions(step=tau, max_steps=200)

    result = quadratic.solve(x0, options)

    assert result.steps == 200
    assert result.history.step[0] == tau
    losses = np.array([quadratic.loss(x0), *result.history.loss])
    assert np.all(np.diff(losses) < 0)
    assert_newton_tolerance_met(result, x0, options)
    assert_energy_identity(quadratic, result, x0)


def test_gradient_descent_diverges_at_huge_step(quadratic):
    x0 = np.zeros(quadratic.b.size)

    run = gradient_descent(
        quadratic.loss, quadratic.gradient, x0, 1e4 * 2 / quadratic.lipschitz, 200
    )

    assert run["diverged"]
    assert len(run["loss"]) < 201
    assert np.all(np.diff(run["loss"]) > 0)
    assert np.all(np.isfinite(run["x"]))


def test_gradient_descent_converges_below_bound(quadratic):
    x0 = np.zeros(quadratic.b.size)

    run = gradient_descent(quadratic.loss, quadratic.gradient, x0, 1 / quadratic.lipschitz, 50)

    assert not run["diverged"]
    assert len(run["loss"]) == 51
    assert np.all(np.diff(run["loss"]) < 0)


def test_rosenbrock_grow_reaches_minimum(rosenbrock):
    # max_step bounds tau because near (1, 1) a large tau makes the mean-value step reflect
    # the error in the stiff direction (Hessian eigenvalues about 0.4 and 1002) instead of
    # shrinking it.
    x0 = np.array([-1.2, 1.0])
    options = StepperOptions(step=1e-3, schedule="grow", max_step=0.1, tol=1e-14, max_steps=5000)

    result = discrete_gradient_descent(x0=x0, options=options, **rosenbrock)

    assert result.converged
    assert np.max(np.abs(result.x - 1.0)) <= 1e-10
    assert max(result.history.step) == pytest.approx(0.1)
    losses = np.array([rosenbrock["loss"](x0), *result.history.loss])
    assert np.all(np.diff(losses) <= 1e-12 * np.maximum(1.0, np.abs(losses[:-1])))
    assert_newton_tolerance_met(result, x0, options)


def test_zero_jacobian_rejects_and_converges():
    # With a zero Jacobian the Newton update is -F(y), a damped fixed-point iteration, which
    # reaches the tolerance within newton_max_iter iterations only once tau has shrunk.
    problem = Quadratic(n=5, condition=10.0, seed=1)
    x0 = np.zeros(5)
    tau = 100 * 2 / problem.lipschitz
    options = StepperOptions(step=tau, tol=1e-10, max_steps=3000)

    result = problem.solve(x0, options, jacobian=lambda x, y: np.zeros((5, 5)))

    assert result.converged
    assert result.history.rejected[0] > 0
    assert max(result.history.step) < tau
    assert np.linalg.norm(result.x - problem.minimizer) <= 1e-8 * np.linalg.norm(problem.minimizer)
    assert_newton_tolerance_met(result, x0, options)
    assert_energy_identity(problem, result, x0)


def test_nan_discrete_gradient_far_from_x(quadratic):
    radius = 0.5

    def discrete_gradient(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if np.linalg.norm(y - x) > radius:
            return np.full_like(x, np.nan)
        return quadratic.discrete_gradient(x, y)

    x0 = np.zeros(quadratic.b.size)
    tau = 1e4 * 2 / quadratic.lipschitz
    options = StepperOptions(step=tau, schedule="grow", max_step=tau, max_steps=100)

    result = quadratic.solve(x0, options, discrete_gradient=discrete_gradient)

    assert result.steps == 100
    assert sum(result.history.rejected) > 0
    assert max(result.history.step_norm) <= radius
    assert min(result.history.step) < tau
    losses = np.array([quadratic.loss(x0), *result.history.loss])
    assert np.all(np.diff(losses) <= 1e-12 * np.maximum(1.0, np.abs(losses[:-1])))
    assert_newton_tolerance_met(result, x0, options)
    assert_energy_identity(quadratic, result, x0)


def test_loss_increase_rejects_try(quadratic):
    x0 = np.zeros(quadratic.b.size)
    spiked_points: list[np.ndarray] = []

    def loss(x: np.ndarray) -> float:
        # The first point other than x0 reports a loss 1e6 higher, as a bad solve would.
        if not spiked_points and np.any(x != x0):
            spiked_points.append(x.copy())
            return quadratic.loss(x) + 1e6
        return quadratic.loss(x)

    tau = 2 / quadratic.lipschitz
    options = StepperOptions(step=tau, max_steps=5)

    result = quadratic.solve(x0, options, loss=loss)

    assert len(spiked_points) == 1
    assert result.history.rejected == [1, 0, 0, 0, 0]
    assert result.history.step[0] == tau * options.shrink
    assert np.all(np.diff([quadratic.loss(x0), *result.history.loss]) < 0)


def test_nan_discrete_gradient_raises(quadratic):
    x0 = np.zeros(quadratic.b.size)
    options = StepperOptions(step=1.0)

    with pytest.raises(SolverError) as error:
        quadratic.solve(x0, options, discrete_gradient=lambda x, y: np.full_like(x, np.nan))

    message = str(error.value)
    assert "tau = " in message
    assert "residual nan" in message
    assert "non-finite Newton residual" in message
    assert "jacobian" in message


def test_nan_jacobian_raises(quadratic):
    n = quadratic.b.size
    options = StepperOptions(step=1.0)

    with pytest.raises(SolverError, match="non-finite Jacobian"):
        quadratic.solve(np.zeros(n), options, jacobian=lambda x, y: np.full((n, n), np.nan))


def test_max_steps_reached_not_converged(quadratic):
    x0 = np.zeros(quadratic.b.size)

    result = quadratic.solve(x0, StepperOptions(step=1e-3, max_steps=3))

    assert not result.converged
    assert result.steps == 3
    assert "max_steps = 3 reached" in result.message
    assert result.loss == result.history.loss[-1]
    assert result.gradient_norm == pytest.approx(np.linalg.norm(quadratic.gradient(result.x)))


def test_converged_at_x0_takes_no_steps(quadratic):
    result = quadratic.solve(quadratic.minimizer, StepperOptions(step=1.0, tol=1e-8))

    assert result.converged
    assert result.steps == 0
    assert result.history.as_dict()["loss"] == []
    np.testing.assert_array_equal(result.x, quadratic.minimizer)


def test_stalled_run_not_converged(quadratic):
    # With tau * |grad V(x0)| below the Newton atol, y = x0 solves the step within tolerance,
    # so the run stalls away from the minimum and must not report convergence.
    x0 = np.zeros(quadratic.b.size)
    tau = 1e-16 / np.linalg.norm(quadratic.gradient(x0))

    result = quadratic.solve(x0, StepperOptions(step=tau))

    assert not result.converged
    assert result.steps == 1
    assert "stalled" in result.message
    assert "gradient norm" in result.message
    assert result.history.step_norm == [0.0]


def test_constant_offset_keeps_stopping_point(quadratic):
    x0 = np.zeros(quadratic.b.size)
    options = StepperOptions(step=1.0, tol=1e-8, max_steps=2000)
    plain = quadratic.solve(x0, options)
    shifted = discrete_gradient_descent(
        lambda x: quadratic.loss(x) + 1e9,
        quadratic.gradient,
        quadratic.discrete_gradient,
        quadratic.jacobian,
        x0,
        options,
    )
    assert shifted.steps == plain.steps


def test_progress_and_history_per_step(quadratic):
    calls: list[tuple[int, float, float]] = []
    x0 = np.zeros(quadratic.b.size)
    options = StepperOptions(step=1e-3, schedule="grow", growth=3.0, max_step=0.1, max_steps=6)

    result = discrete_gradient_descent(
        quadratic.loss,
        quadratic.gradient,
        quadratic.discrete_gradient,
        quadratic.jacobian,
        x0,
        options,
        progress=lambda step, loss, tau: calls.append((step, loss, tau)),
    )

    history = result.history.as_dict()
    assert [call[0] for call in calls] == [1, 2, 3, 4, 5, 6]
    assert [call[1] for call in calls] == history["loss"]
    assert [call[2] for call in calls] == history["step"]
    assert history["step"] == pytest.approx([1e-3, 3e-3, 9e-3, 2.7e-2, 8.1e-2, 0.1])
    assert set(history) == {
        "loss",
        "step",
        "step_norm",
        "newton_iterations",
        "residual",
        "energy_residual",
        "rejected",
    }
    assert all(len(values) == 6 for values in history.values())
    assert history["newton_iterations"] == [1] * 6


def test_cycle_schedule_restarts_from_step(quadratic):
    x0 = np.zeros(quadratic.b.size)
    options = StepperOptions(step=1e-3, schedule="cycle", growth=3.0, max_step=0.05, max_steps=9)

    result = quadratic.solve(x0, options)

    expected = [1e-3, 3e-3, 9e-3, 2.7e-2] * 2 + [1e-3]
    assert result.history.step == pytest.approx(expected)
    losses = np.array([quadratic.loss(x0), *result.history.loss])
    assert np.all(np.diff(losses) < 0)


def test_cycle_schedule_beats_fixed_step(quadratic):
    x0 = np.zeros(quadratic.b.size)
    best_fixed = 2 / np.sqrt(quadratic.eigenvalues.min() * quadratic.eigenvalues.max())
    fixed = StepperOptions(step=best_fixed, tol=1e-10, max_steps=2000)
    cycle = StepperOptions(
        step=2 / quadratic.lipschitz,
        schedule="cycle",
        growth=4.0,
        max_step=2 / quadratic.eigenvalues.min(),
        tol=1e-10,
        max_steps=2000,
    )

    fixed_result = quadratic.solve(x0, fixed)
    cycle_result = quadratic.solve(x0, cycle)

    assert fixed_result.converged
    assert cycle_result.converged
    assert cycle_result.steps < fixed_result.steps / 2


@pytest.mark.parametrize("reuse", [True, False])
def test_jacobian_reuse_keeps_tolerance(rosenbrock, reuse):
    x0 = np.array([-1.2, 1.0])
    options = StepperOptions(step=1e-2, tol=1e-9, max_steps=5000, reuse_jacobian=reuse)
    calls = []

    def counted_jacobian(x, y):
        calls.append(1)
        return rosenbrock["jacobian"](x, y)

    result = discrete_gradient_descent(
        x0=x0, options=options, **{**rosenbrock, "jacobian": counted_jacobian}
    )

    assert result.converged
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-6)
    assert_newton_tolerance_met(result, x0, options)
    losses = np.array([rosenbrock["loss"](x0), *result.history.loss])
    assert np.all(np.diff(losses) <= 1e-12 * np.maximum(1.0, np.abs(losses[:-1])))
    updates = sum(result.history.newton_iterations)
    if reuse:
        assert len(calls) < updates / 2
    else:
        assert len(calls) >= updates


@pytest.mark.parametrize(
    "overrides",
    [
        {"step": 0.0},
        {"step": float("nan")},
        {"schedule": "adaptive"},
        {"schedule": "grow", "growth": 0.5},
        {"schedule": "grow", "max_step": 1e-3},
        {"schedule": "cycle", "growth": 1.0},
        {"schedule": "cycle", "max_step": 1.0},
        {"shrink": 1.0},
        {"min_step": 0.0},
        {"newton_max_iter": 0},
    ],
)
def test_invalid_options_raise(overrides):
    arguments = {"step": 1.0, **overrides}

    with pytest.raises(SpecError):
        StepperOptions(**arguments)


def test_non_vector_x0_raises(quadratic):
    with pytest.raises(SpecError, match="1-D"):
        quadratic.solve(np.zeros((2, 4)), StepperOptions(step=1.0))
