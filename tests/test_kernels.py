"""Generated kernels against SymPy, finite differences and their own serial versions."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from dgcodegen.derive import DISCRETE_GRADIENTS
from dgcodegen.runtime import METHODS, CompiledProblem

NUMPY_FUNCTIONS = {
    "softplus": lambda z: np.logaddexp(0.0, z),
    "sigmoid": lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),
}


def sympy_loss(compiled: CompiledProblem, theta: np.ndarray) -> float:
    """Evaluate the loss with `sympy.lambdify` over the bound data, independent of kernels."""
    problem = compiled.problem
    parameters = problem.parameter_symbols
    data_symbols = [s for column in problem.data_symbols for s in column]
    modules = [NUMPY_FUNCTIONS, "numpy"]
    free = sp.lambdify(parameters, problem.free_term, modules=modules)(*theta)
    if not problem.has_data:
        return float(free)
    term = sp.lambdify(parameters + data_symbols, problem.sample_term, modules=modules)
    columns = [column[:, j] for column in compiled.data for j in range(column.shape[1])]
    values = np.broadcast_to(term(*theta, *columns), (len(columns[0]),))
    reduced = values.sum() if problem.reduction == "sum" else values.mean()
    return float(reduced + free)


def random_pair(n: int, seed: int, scale: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=scale, size=n)
    return x, x + rng.normal(scale=scale, size=n)


def central_difference(function, point: np.ndarray, step: float) -> np.ndarray:
    """Columns d function / d point_j by central differences."""
    columns = []
    for j in range(point.size):
        offset = np.zeros_like(point)
        offset[j] = step
        columns.append((function(point + offset) - function(point - offset)) / (2 * step))
    return np.stack(columns, axis=-1)


@pytest.fixture(params=["rosenbrock", "logistic"])
def compiled(request) -> CompiledProblem:
    return request.getfixturevalue(request.param)


def test_loss_matches_sympy(compiled) -> None:
    for seed in range(3):
        theta, _ = random_pair(compiled.n, seed)
        expected = sympy_loss(compiled, theta)
        assert compiled.loss(theta) == pytest.approx(expected, rel=1e-12)


def test_gradient_matches_finite_differences(compiled) -> None:
    theta, _ = random_pair(compiled.n, 7)
    numeric = central_difference(lambda t: np.array(compiled.loss(t)), theta, 1e-6)
    gradient = compiled.gradient(theta)
    scale = np.abs(gradient).max()
    assert np.abs(gradient - numeric).max() <= 1e-6 * scale


def test_hessian_matches_gradient_differences(compiled) -> None:
    theta, _ = random_pair(compiled.n, 8)
    numeric = central_difference(compiled.gradient, theta, 1e-6)
    hessian = compiled.hessian(theta)
    assert np.abs(hessian - numeric).max() <= 1e-6 * np.abs(hessian).max()


@pytest.mark.parametrize("method", METHODS)
def test_discrete_gradient_identity(compiled, method) -> None:
    dg = compiled.discrete_gradient(method)
    for seed in range(5):
        for distance in (1e-8, 1e-4, 1e-2, 0.3, 1.0):
            x, y = random_pair(compiled.n, seed)
            y = x + distance * (y - x) / np.linalg.norm(y - x)
            change = compiled.loss(y) - compiled.loss(x)
            scale = abs(compiled.loss(x)) + abs(compiled.loss(y))
            assert abs(dg(x, y) @ (y - x) - change) <= 1e-13 * scale + 1e-12 * abs(change)


@pytest.mark.parametrize("method", METHODS)
def test_discrete_gradient_consistency(compiled, method) -> None:
    x, _ = random_pair(compiled.n, 3)
    gradient = compiled.gradient(x)
    difference = compiled.discrete_gradient(method)(x, x) - gradient
    assert np.abs(difference).max() <= 1e-12 * np.abs(gradient).max()


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_matches_finite_differences(compiled, method) -> None:
    dg, jacobian = compiled.discrete_gradient(method), compiled.jacobian(method)
    for distance in (0.5, 0.05):
        x, y = random_pair(compiled.n, 11)
        y = x + distance * (y - x) / np.linalg.norm(y - x)
        numeric = central_difference(lambda point: dg(x, point), y, 1e-6)
        exact = jacobian(x, y)
        assert np.abs(exact - numeric).max() <= 1e-6 * np.abs(exact).max()


SYMMETRIC = [method for method in METHODS if DISCRETE_GRADIENTS[method]]


@pytest.mark.parametrize("method", SYMMETRIC)
def test_symmetric_discrete_gradients(compiled, method) -> None:
    dg = compiled.discrete_gradient(method)
    x, y = random_pair(compiled.n, 5)
    forward, backward = dg(x, y), dg(y, x)
    assert np.abs(forward - backward).max() <= 1e-12 * np.abs(forward).max()


def test_mean_value_jacobian_symmetric(compiled) -> None:
    x, y = random_pair(compiled.n, 6)
    jacobian = compiled.jacobian("mean-value")(x, y)
    assert np.abs(jacobian - jacobian.T).max() <= 1e-12 * np.abs(jacobian).max()


KERNEL_ARGUMENTS = {
    "loss": 1,
    "gradient": 1,
    "hessian": 1,
    "dg_mean_value": 2,
    "jac_mean_value": 2,
    "dg_gonzalez_direct": 2,
    "jac_gonzalez_direct": 2,
    "dg_itoh_abe_symmetric": 2,
    "jac_itoh_abe_symmetric": 2,
}


@pytest.mark.parametrize("name", sorted(KERNEL_ARGUMENTS))
def test_parallel_equals_serial(logistic, name) -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, logistic.data[0].shape[0], size=20_000)
    data = [np.ascontiguousarray(column[rows]) for column in logistic.data]
    points = random_pair(logistic.n, 2)[: KERNEL_ARGUMENTS[name]]
    parallel = np.asarray(getattr(logistic.kernels, name)(*points, *data))
    serial = np.asarray(logistic.kernels.serial(name)(*points, *data))
    assert np.abs(parallel - serial).max() <= 1e-12 * np.abs(serial).max()


def test_softplus_loss_finite_at_large_margins(logistic) -> None:
    theta = np.zeros(logistic.n)
    theta[0] = 1000.0
    assert np.isfinite(logistic.loss(theta))
    assert np.all(np.isfinite(logistic.gradient(theta)))
    for method in METHODS:
        assert np.all(np.isfinite(logistic.discrete_gradient(method)(theta, -theta)))
        assert np.all(np.isfinite(logistic.jacobian(method)(theta, -theta)))
