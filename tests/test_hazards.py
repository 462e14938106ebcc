"""Kinks, large integers and extreme arguments: kernels compile and match a 50-digit reference."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from reference import Reference, relative_error

import dgcodegen as dg
from dgcodegen.runtime import METHODS, compile_problem

REFERENCE_METHODS = {
    "mean-value": ("mean_value", {}),
    "gonzalez": ("gonzalez", {}),
    "itoh-abe": ("itoh_abe", {"order": "forward"}),
    "itoh-abe-symmetric": ("itoh_abe", {"order": "symmetric"}),
}


@pytest.fixture(scope="module")
def kinked(tmp_path_factory):
    """Squared hinge plus a Huber loss of the margin: Max, Piecewise and Abs per sample."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    labels = np.sign(features @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=60))
    w = dg.parameter("w", 3)
    x = dg.data("x", 3)
    y = dg.data("y")
    margin = y * w.dot(x)
    huber = sp.Piecewise((margin**2 / 2, sp.Abs(margin) <= 1), (sp.Abs(margin) - sp.S.Half, True))
    problem = dg.Loss(
        per_sample=sp.Max(0, 1 - margin) ** 2 + huber / 10,
        regularizer=w.dot(w) / 2,
        data={"x": features, "y": labels},
        name="kinked",
    )
    compiled = compile_problem(problem, out=tmp_path_factory.mktemp("kinked"))
    return compiled, Reference(problem)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("distance", (0.0, 1e-12, 1e-6, 1e-3))
def test_kinked_loss_against_reference(kinked, method, distance) -> None:
    compiled, reference = kinked
    rng = np.random.default_rng(int(distance * 1e12) % 1000)
    x = rng.normal(size=3)
    direction = rng.normal(size=3)
    y = x + distance * direction / np.linalg.norm(direction)
    name, options = REFERENCE_METHODS[method]
    exact = getattr(reference, name)(x, y, **options)
    assert relative_error(compiled.discrete_gradient(method)(x, y), exact) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_kinked_identity_across_kinks(kinked, method) -> None:
    compiled, _ = kinked
    rng = np.random.default_rng(5)
    for _ in range(10):
        x = rng.normal(size=3)
        y = x + rng.normal(size=3)
        change = compiled.loss(y) - compiled.loss(x)
        scale = abs(compiled.loss(x)) + abs(compiled.loss(y))
        assert abs(compiled.discrete_gradient(method)(x, y) @ (y - x) - change) <= 1e-12 * scale


@pytest.fixture(scope="module")
def extreme(tmp_path_factory):
    """Huge integer coefficients, Heaviside, sign and softplus far in both tails."""
    q = dg.parameter("q", 2)
    objective = (
        (2**70 * q[0] - 3**44 * q[1]) ** 2 / sp.Integer(2) ** 140
        + sp.Heaviside(q[0]) * q[0] ** 2
        + sp.sign(q[1]) * q[1] ** 3
        + dg.softplus(1000 * q[0])
        + dg.softplus(-1000 * q[1])
    )
    problem = dg.Loss(objective=objective, name="extreme")
    compiled = compile_problem(problem, out=tmp_path_factory.mktemp("extreme"))
    return compiled, problem


@pytest.mark.parametrize("point", ([1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [0.0, 0.0], [3.0, -2.0]))
def test_extreme_loss_matches_sympy(extreme, point) -> None:
    compiled, problem = extreme
    exact = problem.free_term.xreplace(dict(zip(problem.parameter_symbols, point))).evalf(50)
    value = compiled.loss(np.array(point))
    assert np.isfinite(value)
    assert value == pytest.approx(float(exact), rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("method", METHODS)
def test_extreme_discrete_gradients_finite(extreme, method) -> None:
    compiled, _ = extreme
    x = np.array([1.0, -1.0])
    for distance in (0.0, 1e-14, 1e-6, 1e-2, 1.0):
        y = x + distance * np.array([0.6, -0.8])
        assert np.all(np.isfinite(compiled.discrete_gradient(method)(x, y)))
        assert np.all(np.isfinite(compiled.jacobian(method)(x, y)))
