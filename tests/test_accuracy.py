"""Discrete gradients and Jacobians against a 50-digit reference for |y - x| from 0 to 1."""

from __future__ import annotations

import numpy as np
import pytest
from reference import Reference, relative_error

from dgcodegen.runtime import CompiledProblem

DISTANCES = (0.0, 1e-14, 1e-10, 1e-6, 1e-3, 9.9e-3, 1.01e-2, 0.1, 0.5, 1.0)
"""Step lengths, including both sides of the Gonzalez and divided-difference switches."""

TOLERANCE = 1e-8

KERNELS = {
    "mean-value": ("mean_value", "mean_value_jacobian", {}),
    "gonzalez": ("gonzalez", "gonzalez_jacobian", {}),
    "itoh-abe": ("itoh_abe", "itoh_abe_jacobian", {"order": "forward"}),
    "itoh-abe-symmetric": ("itoh_abe", "itoh_abe_jacobian", {"order": "symmetric"}),
}


def assert_matches_reference(compiled, reference, method: str, x, y) -> None:
    """Assert that the kernel DG and Jacobian of `method` match the reference at (x, y)."""
    dg_name, jacobian_name, options = KERNELS[method]
    dg_exact = getattr(reference, dg_name)(x, y, **options)
    jacobian_exact = getattr(reference, jacobian_name)(x, y, **options)
    assert relative_error(compiled.discrete_gradient(method)(x, y), dg_exact) <= TOLERANCE
    assert relative_error(compiled.jacobian(method)(x, y), jacobian_exact) <= TOLERANCE


def pair_at(n: int, distance: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.5, size=n)
    direction = rng.normal(size=n)
    return x, x + distance * direction / np.linalg.norm(direction)


@pytest.fixture(scope="module")
def rosenbrock_reference(rosenbrock) -> Reference:
    return Reference(rosenbrock.problem)


SUBSET_ROWS = slice(0, 569, 14)
"""41 of the 569 breast cancer samples: the mean-value reference Jacobian costs about
0.1 s per sample at 50 digits, so the whole data set would take minutes per point."""


@pytest.fixture(scope="module")
def logistic_subset(logistic) -> CompiledProblem:
    problem = logistic.problem
    data = {name: array[SUBSET_ROWS] for name, array in problem.default_data.items()}
    return CompiledProblem(problem, logistic.kernels, data)


@pytest.fixture(scope="module")
def logistic_reference(logistic_subset) -> Reference:
    problem = logistic_subset.problem
    data = {c.name: array for c, array in zip(problem.columns, logistic_subset.data)}
    return Reference(problem, data)


@pytest.mark.parametrize("method", sorted(KERNELS))
@pytest.mark.parametrize("distance", DISTANCES)
def test_rosenbrock_against_reference(rosenbrock, rosenbrock_reference, method, distance) -> None:
    x, y = pair_at(rosenbrock.n, distance)
    assert_matches_reference(rosenbrock, rosenbrock_reference, method, x, y)


@pytest.mark.parametrize("method", sorted(KERNELS))
@pytest.mark.parametrize("distance", (0.0, 1e-14, 1e-6, 9.9e-3, 1.01e-2, 1.0))
def test_logistic_against_reference(logistic_subset, logistic_reference, method, distance) -> None:
    logistic = logistic_subset
    x, y = pair_at(logistic.n, distance, seed=1)
    assert_matches_reference(logistic, logistic_reference, method, x, y)


def test_gonzalez_correction_near_coincidence(rosenbrock, rosenbrock_reference) -> None:
    """The correction DG - grad V(m) itself, not only DG, is accurate for tiny steps."""
    for distance in (1e-14, 1e-10, 1e-6, 1e-3, 1e-2, 0.1, 1.0):
        x, y = pair_at(rosenbrock.n, distance, seed=2)
        midpoint = (x + y) / 2
        exact = np.array(
            [
                float(a - b)
                for a, b in zip(
                    rosenbrock_reference.gonzalez(x, y), rosenbrock_reference.gradient(midpoint)
                )
            ]
        )
        computed = rosenbrock.discrete_gradient("gonzalez")(x, y) - rosenbrock.gradient(midpoint)
        scale = np.abs(rosenbrock.gradient(midpoint)).max()
        assert np.abs(computed - exact).max() <= 1e-13 * scale


@pytest.mark.parametrize("method", sorted(KERNELS))
def test_logistic_some_coordinates_fixed(logistic_subset, logistic_reference, method) -> None:
    """Coordinates with y_k = x_k take the series branch of their own quotient."""
    x, y = pair_at(logistic_subset.n, 0.5, seed=3)
    y[::2] = x[::2]
    assert_matches_reference(logistic_subset, logistic_reference, method, x, y)


@pytest.mark.parametrize("method", sorted(KERNELS))
def test_logistic_step_orthogonal_to_sample(logistic_subset, logistic_reference, method) -> None:
    """A step with a . (y - x) = 0 for one sample leaves that sample's quotient at 0/0."""
    x, y = pair_at(logistic_subset.n, 0.5, seed=4)
    features, labels = logistic_subset.data
    slope = -labels[0, 0] * np.append(features[0], 1.0)
    d = y - x
    y = x + (d - (d @ slope) / (slope @ slope) * slope)
    assert_matches_reference(logistic_subset, logistic_reference, method, x, y)
