"""Whole pipeline on specs declared in the tests: matrix parameters, mean, dense terms."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import dgcodegen as dg
from dgcodegen.derive import Derivation
from dgcodegen.kernelspec import KernelBuilder
from dgcodegen.runtime import METHODS, compile_problem
from dgcodegen.stepper import StepperOptions, discrete_gradient_descent


def least_squares_problem(rng: np.random.Generator) -> tuple[dg.Loss, np.ndarray]:
    """Mean squared error of a 2 x 3 linear map with an intercept, and its exact solution."""
    weights = dg.parameter("W", (2, 3))
    intercept = dg.parameter("c", 2)
    inputs = dg.data("u", 3)
    targets = dg.data("t", 2)
    residual = targets - weights * inputs - intercept
    features = rng.normal(size=(200, 3))
    truth = rng.normal(size=(2, 3))
    values = features @ truth.T + 0.1 * rng.normal(size=(200, 2)) + np.array([1.0, -2.0])
    problem = dg.Loss(
        per_sample=residual.dot(residual),
        reduction="mean",
        data={"u": features, "t": values},
        name="least_squares",
    )
    design = np.hstack([features, np.ones((200, 1))])
    solution, *_ = np.linalg.lstsq(design, values, rcond=None)
    # Parameters follow declaration order: W row by row, then c.
    expected = np.concatenate([solution[:3].T.ravel(), solution[3]])
    return problem, expected


@pytest.fixture(scope="module")
def least_squares(tmp_path_factory):
    problem, expected = least_squares_problem(np.random.default_rng(0))
    compiled = compile_problem(problem, out=tmp_path_factory.mktemp("least_squares"))
    return compiled, expected


def test_matrix_parameter_layout(least_squares) -> None:
    compiled, _ = least_squares
    names = [s.name for s in compiled.problem.parameter_symbols]
    assert names[:3] == ["W[0, 0]", "W[0, 1]", "W[0, 2]"]
    assert names[6:] == ["c[0]", "c[1]"]


@pytest.mark.parametrize("method", METHODS)
def test_least_squares_reaches_solution(least_squares, method) -> None:
    compiled, expected = least_squares
    options = StepperOptions(step=10.0, tol=1e-12, max_steps=500)
    result = discrete_gradient_descent(
        compiled.loss,
        compiled.gradient,
        compiled.discrete_gradient(method),
        compiled.jacobian(method),
        compiled.problem.initial_point,
        options,
    )
    assert result.converged
    assert np.abs(result.x - expected).max() <= 1e-9


def test_mean_reduction_divides_by_count(least_squares) -> None:
    compiled, _ = least_squares
    theta = np.linspace(-1.0, 1.0, compiled.n)
    weights, c = theta[:6].reshape(2, 3), theta[6:]
    features, targets = compiled.data
    residual = targets - features @ weights.T - c
    assert compiled.loss(theta) == pytest.approx(np.mean(np.sum(residual**2, axis=1)), rel=1e-13)


@pytest.fixture(scope="module")
def dense_term(tmp_path_factory):
    """A per-sample term that is not a ridge l(a . x + c), so it takes the dense path."""
    w = dg.parameter("w", 2)
    s = dg.data("s")
    rng = np.random.default_rng(3)
    problem = dg.Loss(
        per_sample=sp.exp(w[0] * s) * w[1] ** 2 + sp.log(1 + (w[0] - s) ** 2) * w[1],
        regularizer=w.dot(w),
        data={"s": rng.uniform(-1, 1, size=50)},
        name="dense_term",
    )
    return compile_problem(problem, out=tmp_path_factory.mktemp("dense_term"))


@pytest.mark.parametrize("method", METHODS)
def test_dense_term_identity(dense_term, method) -> None:
    rng = np.random.default_rng(4)
    dg_function = dense_term.discrete_gradient(method)
    for _ in range(5):
        x = rng.normal(size=2)
        y = x + 0.3 * rng.normal(size=2)
        change = dense_term.loss(y) - dense_term.loss(x)
        scale = abs(dense_term.loss(x)) + abs(dense_term.loss(y))
        # The mean value of these terms comes from 8-point Gauss-Legendre, not a closed form.
        tolerance = 1e-12 * scale if method == "gonzalez" else 1e-10 * scale
        assert abs(dg_function(x, y) @ (y - x) - change) <= tolerance


@pytest.mark.parametrize("method", METHODS)
def test_dense_term_consistency(dense_term, method) -> None:
    x = np.array([0.3, -0.7])
    difference = dense_term.discrete_gradient(method)(x, x) - dense_term.gradient(x)
    assert np.abs(difference).max() <= 1e-12 * np.abs(dense_term.gradient(x)).max()


def test_dense_term_reports_quadrature(dense_term) -> None:
    derivation = Derivation(dense_term.problem)
    KernelBuilder(derivation).all()
    report = derivation.mean_value_report
    assert any(method.startswith("Gauss-Legendre") for method in report.methods)
    assert 0 < report.quadrature_error < 1e-6
