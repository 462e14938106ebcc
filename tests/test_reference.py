"""Tests of the high-precision reference: identities, finite differences and precision control."""

from __future__ import annotations

from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy as sp
from reference import (
    Reference,
    ReferenceAccuracyError,
    as_mpf_vector,
    relative_error,
    to_numpy,
)

import dgcodegen as dg
from dgcodegen.dsl import Loss, load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

STEP = mpmath.ldexp(1, -66)
"""Finite-difference step, about 1.4e-20, a power of two so that `y +- STEP` is exact."""

DISCRETE_GRADIENTS = {
    "mean_value": "mean_value_jacobian",
    "gonzalez": "gonzalez_jacobian",
}


def small_softplus_problem() -> tuple[Loss, dict[str, np.ndarray]]:
    """Return a 3-parameter softplus loss with a mean over 20 random samples, and its data."""
    coef = dg.parameter("ref_coef", 2)
    offset = dg.parameter("ref_offset")
    feature = dg.data("ref_feature", 2)
    label = dg.data("ref_label")
    problem = dg.Loss(
        per_sample=dg.softplus(-label * (coef.dot(feature) + offset)),
        reduction="mean",
        regularizer=coef.dot(coef) / 2 + offset**4 / 4,
    )
    rng = np.random.default_rng(7)
    data = {
        "ref_feature": rng.normal(size=(20, 2)),
        "ref_label": np.where(rng.random(20) < 0.5, -1.0, 1.0),
    }
    return problem, data


@pytest.fixture(scope="module")
def rosenbrock() -> Reference:
    return Reference(load_spec(EXAMPLES / "rosenbrock.py"), digits=60)


@pytest.fixture(scope="module")
def softplus_mean() -> Reference:
    problem, data = small_softplus_problem()
    return Reference(problem, data, digits=60)


@pytest.fixture(params=["rosenbrock", "softplus_mean"])
def reference(request: pytest.FixtureRequest) -> Reference:
    return request.getfixturevalue(request.param)


def pair(n: int, distance: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.5, size=n)
    direction = rng.normal(size=n)
    return x, x + distance * direction / np.linalg.norm(direction)


def exact_difference(x: np.ndarray, y: np.ndarray) -> list:
    """Return `y - x` in mpf without rounding, because float64 subtraction may round."""
    return [mpmath.fsub(b, a, exact=True) for a, b in zip(as_mpf_vector(x), as_mpf_vector(y))]


def relative_difference(a: list, b: list) -> mpmath.mpf:
    """Return `||a - b|| / ||b||` of two mpf vectors at 120 digits."""
    with mpmath.workdps(120):
        difference = mpmath.sqrt(mpmath.fsum((p - q) ** 2 for p, q in zip(a, b)))
        return difference / mpmath.sqrt(mpmath.fsum(q**2 for q in b))


def entries(matrix: mpmath.matrix) -> list:
    return [matrix[i, j] for i in range(matrix.rows) for j in range(matrix.cols)]


def central_difference_jacobian(function, x: list, y: list) -> mpmath.matrix:
    """Return `d function(x, y) / dy` by central differences with step `STEP`."""
    n = len(y)
    columns = []
    for j in range(n):
        plus = [mpmath.fadd(v, STEP, exact=True) if i == j else v for i, v in enumerate(y)]
        minus = [mpmath.fsub(v, STEP, exact=True) if i == j else v for i, v in enumerate(y)]
        high, low = function(x, plus), function(x, minus)
        with mpmath.workdps(120):
            columns.append([(a - b) / (2 * STEP) for a, b in zip(high, low)])
    return mpmath.matrix([[columns[j][i] for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("method", sorted(DISCRETE_GRADIENTS))
@pytest.mark.parametrize("distance", [1e-3, 0.5, 2.0])
def test_mean_value_identity(reference: Reference, method: str, distance: float) -> None:
    x, y = pair(reference.n, distance)
    discrete_gradient = getattr(reference, method)(x, y)
    with mpmath.workdps(120):
        change = reference.loss(y) - reference.loss(x)
        error = abs(mpmath.fdot(discrete_gradient, exact_difference(x, y)) - change) / abs(change)
    assert error <= 1e-40


@pytest.mark.parametrize("method", sorted(DISCRETE_GRADIENTS))
def test_consistency_at_equal_points(reference: Reference, method: str) -> None:
    x, _ = pair(reference.n, 0.0)
    gradient = reference.gradient(x)
    assert relative_difference(getattr(reference, method)(x, x), gradient) <= 1e-55
    with mpmath.workdps(120):
        half_hessian = entries(reference.hessian(x) / 2)
    jacobian = getattr(reference, DISCRETE_GRADIENTS[method])(x, x)
    assert relative_difference(entries(jacobian), half_hessian) <= 1e-55


@pytest.mark.parametrize("method", sorted(DISCRETE_GRADIENTS))
def test_jacobian_matches_finite_differences(reference: Reference, method: str) -> None:
    x, y = pair(reference.n, 0.7, seed=3)
    x, y = as_mpf_vector(x), as_mpf_vector(y)
    expected = central_difference_jacobian(getattr(reference, method), x, y)
    jacobian = getattr(reference, DISCRETE_GRADIENTS[method])(x, y)
    assert relative_difference(entries(jacobian), entries(expected)) <= 1e-35


def test_hessian_matches_finite_differences(reference: Reference) -> None:
    x, _ = pair(reference.n, 0.0, seed=4)
    x = as_mpf_vector(x)
    expected = central_difference_jacobian(lambda _, theta: reference.gradient(theta), x, x)
    assert relative_difference(entries(reference.hessian(x)), entries(expected)) <= 1e-35


def test_gonzalez_jacobian_near_coincidence(reference: Reference) -> None:
    x, y = pair(reference.n, 1e-14, seed=5)
    jacobian = reference.gonzalez_jacobian(x, y)
    assert all(mpmath.isfinite(entry) for entry in entries(jacobian))
    with mpmath.workdps(120):
        half_hessian = entries(reference.hessian(x) / 2)
    assert relative_difference(entries(jacobian), half_hessian) <= 1e-12


def test_gonzalez_near_coincidence_is_precise(reference: Reference) -> None:
    """At |d| = 1e-14 the correction loses up to 42 digits, which 80-digit results confirm."""
    x, y = pair(reference.n, 1e-14, seed=6)
    precise = Reference(reference.problem, reference.data, digits=80)
    assert relative_difference(reference.gonzalez(x, y), precise.gonzalez(x, y)) <= 1e-58
    jacobian = entries(reference.gonzalez_jacobian(x, y))
    assert relative_difference(jacobian, entries(precise.gonzalez_jacobian(x, y))) <= 1e-58


def test_gonzalez_correction_is_second_order(reference: Reference) -> None:
    """`gonzalez - grad V(m)` is `c d` with `c = O(|d|)`, so it shrinks like `|d|^2`."""
    for distance in (1e-6, 1e-10, 1e-14):
        x, y = pair(reference.n, distance, seed=8)
        pairs = zip(as_mpf_vector(x), as_mpf_vector(y))
        midpoint = [mpmath.ldexp(mpmath.fadd(a, b, exact=True), -1) for a, b in pairs]
        gonzalez, gradient = reference.gonzalez(x, y), reference.gradient(midpoint)
        with mpmath.workdps(120):
            size = mpmath.sqrt(mpmath.fsum((a - b) ** 2 for a, b in zip(gonzalez, gradient)))
        assert 0 < size <= 1e3 * distance**2


def test_loss_cancellation_raises_precision() -> None:
    """`exp(t) - 1 - t` at t = 1e-20 cancels 40 digits, which the precision check recovers."""
    t = dg.parameter("ref_t")
    reference = Reference(dg.Loss(objective=sp.exp(t) - 1 - t), digits=50)
    point = np.array([1e-20])
    with mpmath.workdps(200):
        exact = mpmath.expm1(mpmath.mpf(1e-20)) - mpmath.mpf(1e-20)
        error = abs(reference.loss(point) - exact) / exact
    assert error <= 1e-50


def test_quadrature_of_kink_raises() -> None:
    """The gradient of |t| jumps at s = 1/3 on [-1, 2], so Gauss-Legendre converges slowly."""
    t = dg.parameter("ref_kink")
    reference = Reference(dg.Loss(objective=sp.Abs(t)), digits=20)
    with pytest.raises(ReferenceAccuracyError, match="Gauss-Legendre error estimate"):
        reference.mean_value(np.array([-1.0]), np.array([2.0]))


def test_logistic_regression_subsample() -> None:
    problem = load_spec(EXAMPLES / "logistic_regression.py")
    rows = np.random.default_rng(9).choice(len(problem.default_data["y"]), 12, replace=False)
    data = {name: array[rows] for name, array in problem.default_data.items()}
    reference = Reference(problem, data, digits=30)
    x, y = pair(reference.n, 0.3, seed=10)

    mean_value = reference.mean_value(x, y)
    with mpmath.workdps(60):
        change = reference.loss(y) - reference.loss(x)
        error = abs(mpmath.fdot(mean_value, exact_difference(x, y)) - change) / abs(change)
    assert error <= 1e-25

    jacobian = to_numpy(reference.mean_value_jacobian(x, y))
    assert jacobian.shape == (31, 31)
    assert np.allclose(jacobian, jacobian.T, rtol=0, atol=0)
    assert np.all(np.linalg.eigvalsh(jacobian) > 0)
    assert to_numpy(reference.gonzalez_jacobian(x, y)).shape == (31, 31)


def test_logistic_regression_full_data_gonzalez() -> None:
    reference = Reference(load_spec(EXAMPLES / "logistic_regression.py"), digits=30)
    assert reference.sample_count == 569
    x, y = pair(reference.n, 0.3, seed=11)
    gonzalez = reference.gonzalez(x, y)
    with mpmath.workdps(60):
        change = reference.loss(y) - reference.loss(x)
        error = abs(mpmath.fdot(gonzalez, exact_difference(x, y)) - change) / abs(change)
    assert error <= 1e-25


def test_to_numpy_shapes() -> None:
    vector = [mpmath.mpf(1), mpmath.mpf(2)]
    assert to_numpy(vector).shape == (2,)
    assert to_numpy(mpmath.matrix(vector)).shape == (2,)
    assert to_numpy(mpmath.matrix([[1, 2], [3, 4]])).shape == (2, 2)
    assert to_numpy(mpmath.mpf(3)).shape == ()


def test_relative_error_values() -> None:
    with mpmath.workdps(50):
        exact = [mpmath.mpf(1) / 3, mpmath.mpf(2)]
    approx = np.array([1 / 3, 2.0])
    assert 0 < relative_error(approx, exact) < 1e-16
    assert relative_error(np.zeros(2), [mpmath.mpf(0), mpmath.mpf(0)]) == 0
    assert relative_error(np.array([1e-290, 0.0]), [mpmath.mpf(0), mpmath.mpf(0)]) > 1
    with pytest.raises(ValueError, match="shape"):
        relative_error(np.zeros(3), exact)


def test_invalid_input_raises(rosenbrock: Reference) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Reference(rosenbrock.problem, digits=10)
    with pytest.raises(ValueError, match="2 entries"):
        rosenbrock.gradient(np.zeros(3))
    with pytest.raises(ValueError, match="nan or inf"):
        rosenbrock.gradient(np.array([np.nan, 0.0]))
