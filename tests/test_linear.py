"""Conjugate gradients and GMRES of dgcodegen.linear against NumPy and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg as scipy_linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from dgcodegen.errors import SpecError
from dgcodegen.linear import (
    STATUSES,
    KrylovSolution,
    _orthogonalize,
    conjugate_gradient,
    gmres,
)


@pytest.fixture(autouse=True, scope="module")
def single_blas_thread():
    """Run BLAS on one thread, because on matrices this small its threads mostly wait.

    On a loaded 2-core machine, a 300 x 300 QR factorisation took 2 s with OpenBLAS threads
    and 8 ms without.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class CountingOperator:
    """`v -> A v` for a dense matrix, counting its applications."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix
        self.calls = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.matrix @ v


def _orthogonal(n: int, generator: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(generator.normal(size=(n, n)))
    return q


def _spd(n: int, condition: float, seed: int) -> np.ndarray:
    """Return a random SPD matrix with eigenvalues log-spaced from 1 to `condition`."""
    q = _orthogonal(n, np.random.default_rng(seed))
    return (q * np.logspace(0.0, math.log10(condition), n)) @ q.T


def _nonsymmetric(n: int, condition: float, seed: int) -> np.ndarray:
    """Return `U diag(s) V^T` with random orthogonal U, V and singular values 1 to `condition`."""
    generator = np.random.default_rng(seed)
    u, v = _orthogonal(n, generator), _orthogonal(n, generator)
    return (u * np.logspace(0.0, math.log10(condition), n)) @ v.T


def _indefinite(n: int, negative: int, seed: int) -> np.ndarray:
    """Return a symmetric matrix with `negative` eigenvalues in [-10, -1], the rest in [1, 10]."""
    generator = np.random.default_rng(seed)
    q = _orthogonal(n, generator)
    eigenvalues = generator.permutation(np.logspace(0.0, 1.0, n))
    eigenvalues[:negative] *= -1.0
    return (q * eigenvalues) @ q.T


def _gonzalez_like(n: int, tau: float, seed: int) -> np.ndarray:
    """Return `I + tau J` with `J = 0.5 H + c I + d w^T`, the form of the Gonzalez Jacobian.

    H is symmetric with eigenvalues spread from 1e-4 to 10 and a few small negative ones,
    like the Hessian of a network loss, and `d w^T` is the nonsymmetric rank-one term.
    """
    generator = np.random.default_rng(seed)
    q = _orthogonal(n, generator)
    eigenvalues = np.logspace(-4.0, 1.0, n)
    eigenvalues[: n // 10] = -generator.uniform(0.0, 1e-3, n // 10)
    hessian = (q * eigenvalues) @ q.T
    d = generator.normal(size=n) / math.sqrt(n)
    w = generator.normal(size=n) / math.sqrt(n)
    jacobian = 0.5 * hessian + 0.01 * np.eye(n) + np.outer(d, w)
    return np.eye(n) + tau * jacobian


def _true_residual(matrix: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(b - matrix @ x) / np.linalg.norm(b))


def _check_solution(
    solution: KrylovSolution, matrix: np.ndarray, b: np.ndarray, rtol: float
) -> None:
    """Check the invariants that every returned solution satisfies."""
    assert solution.status in STATUSES
    assert np.all(np.isfinite(solution.x))
    assert solution.residual == pytest.approx(_true_residual(matrix, b, solution.x), rel=1e-12)
    assert solution.converged == (solution.status == "converged")
    if solution.converged:
        assert solution.residual <= rtol


def _scipy_cg_iterations(matrix: np.ndarray, b: np.ndarray, rtol: float, maxiter: int) -> int:
    count = [0]

    def counter(_: object) -> None:
        count[0] += 1

    _, info = scipy_linalg.cg(matrix, b, rtol=rtol, atol=0.0, maxiter=maxiter, callback=counter)
    assert info == 0
    return count[0]


def _scipy_gmres_iterations(
    matrix: np.ndarray, b: np.ndarray, rtol: float, restart: int, maxiter: int
) -> int:
    count = [0]

    def counter(_: object) -> None:
        count[0] += 1

    _, info = scipy_linalg.gmres(
        matrix,
        b,
        rtol=rtol,
        atol=0.0,
        restart=restart,
        maxiter=maxiter,
        callback=counter,
        callback_type="pr_norm",
    )
    assert info == 0
    return count[0]


@pytest.mark.parametrize("n", [50, 300])
@pytest.mark.parametrize("condition", [10.0, 1e3, 1e6])
def test_cg_spd_against_scipy(n: int, condition: float) -> None:
    matrix = _spd(n, condition, seed=n)
    b = np.random.default_rng(1).normal(size=n)
    rtol = 1e-8
    operator = CountingOperator(matrix)

    solution = conjugate_gradient(operator, b, rtol, max_iterations=20 * n)

    _check_solution(solution, matrix, b, rtol)
    assert solution.converged
    assert solution.iterations == operator.calls
    exact = np.linalg.solve(matrix, b)
    assert np.linalg.norm(solution.x - exact) <= 10 * condition * rtol * np.linalg.norm(exact)
    reference = _scipy_cg_iterations(matrix, b, rtol, 20 * n)
    assert solution.iterations <= 1.1 * reference + 2


@pytest.mark.parametrize("n", [50, 300])
@pytest.mark.parametrize("condition", [10.0, 1e6])
def test_gmres_spd_against_solve(n: int, condition: float) -> None:
    matrix = _spd(n, condition, seed=n + 1)
    b = np.random.default_rng(2).normal(size=n)
    rtol = 1e-8

    solution = gmres(CountingOperator(matrix), b, rtol, restart=n, max_iterations=n)

    _check_solution(solution, matrix, b, rtol)
    assert solution.converged
    exact = np.linalg.solve(matrix, b)
    assert np.linalg.norm(solution.x - exact) <= 10 * condition * rtol * np.linalg.norm(exact)


@pytest.mark.parametrize("n", [50, 300])
@pytest.mark.parametrize("condition", [1.0, 1e2, 1e4])
def test_gmres_nonsymmetric_against_scipy(n: int, condition: float) -> None:
    if condition == 1.0:
        generator = np.random.default_rng(n)
        matrix = np.eye(n) + 0.5 * generator.normal(size=(n, n)) / math.sqrt(n)
    else:
        matrix = _nonsymmetric(n, condition, seed=n)
    b = np.random.default_rng(3).normal(size=n)
    rtol = 1e-8
    operator = CountingOperator(matrix)

    solution = gmres(operator, b, rtol, restart=n, max_iterations=2 * n)

    _check_solution(solution, matrix, b, rtol)
    assert solution.converged
    assert solution.iterations == operator.calls
    exact = np.linalg.solve(matrix, b)
    bound = 10 * np.linalg.cond(matrix) * rtol * np.linalg.norm(exact)
    assert np.linalg.norm(solution.x - exact) <= bound
    reference = _scipy_gmres_iterations(matrix, b, rtol, restart=n, maxiter=2)
    assert solution.iterations <= 1.1 * reference + 2


@pytest.mark.parametrize("tau", [0.1, 10.0, 1e3])
def test_gmres_gonzalez_jacobian(tau: float) -> None:
    n = 300
    matrix = _gonzalez_like(n, tau, seed=4)
    b = np.random.default_rng(5).normal(size=n)
    rtol = 1e-6

    solution = gmres(CountingOperator(matrix), b, rtol, restart=40, max_iterations=400)

    _check_solution(solution, matrix, b, rtol)
    assert solution.converged
    exact = np.linalg.solve(matrix, b)
    bound = 10 * np.linalg.cond(matrix) * rtol * np.linalg.norm(exact)
    assert np.linalg.norm(solution.x - exact) <= bound
    reference = _scipy_gmres_iterations(matrix, b, rtol, restart=40, maxiter=10)
    assert solution.iterations <= 1.2 * reference + 12


def test_cg_indefinite_stops() -> None:
    n = 50
    # Few negative eigenvalues, so the first directions have positive curvature.
    matrix = _indefinite(n, negative=3, seed=6)
    b = np.random.default_rng(7).normal(size=n)
    operator = CountingOperator(matrix)

    solution = conjugate_gradient(operator, b, 1e-8, max_iterations=500)

    _check_solution(solution, matrix, b, 1e-8)
    assert solution.status == "indefinite"
    assert not solution.converged
    assert solution.iterations == operator.calls
    # The returned x is the iterate before the bad direction, so the same solve limited to
    # the iterations before it returns the same x. The last application was the check.
    steps = solution.iterations - 2
    assert steps >= 1
    before = conjugate_gradient(CountingOperator(matrix), b, 1e-8, max_iterations=steps)
    assert before.status == "max_iterations"
    np.testing.assert_array_equal(before.x, solution.x)


def test_gmres_solves_indefinite() -> None:
    n = 50
    matrix = _indefinite(n, negative=25, seed=6)
    b = np.random.default_rng(7).normal(size=n)

    solution = gmres(CountingOperator(matrix), b, 1e-8, restart=n, max_iterations=n)

    _check_solution(solution, matrix, b, 1e-8)
    assert solution.converged
    np.testing.assert_allclose(solution.x, np.linalg.solve(matrix, b), rtol=0, atol=1e-6)


def test_cg_indefinite_first_direction() -> None:
    matrix = np.diag([-1.0, -2.0, 3.0])
    b = np.array([1.0, 1.0, 0.1])

    solution = conjugate_gradient(CountingOperator(matrix), b, 1e-8, max_iterations=10)

    assert solution.status == "indefinite"
    assert solution.iterations == 1
    assert solution.residual == 1.0
    np.testing.assert_array_equal(solution.x, np.zeros(3))


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_reported_residual_is_true(solver: str) -> None:
    # A loose tolerance and a small iteration limit leave residuals well above rounding.
    matrix = _spd(100, 1e4, seed=8)
    b = np.random.default_rng(9).normal(size=100)
    for limit in (1, 3, 10, 30):
        if solver == "cg":
            solution = conjugate_gradient(CountingOperator(matrix), b, 1e-10, limit)
        else:
            solution = gmres(CountingOperator(matrix), b, 1e-10, 8, limit)
        _check_solution(solution, matrix, b, 1e-10)
        assert solution.status == "max_iterations"


@pytest.mark.parametrize("restart", [40, 5])
@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_unchecked_solve_skips_last_product(solver: str, restart: int) -> None:
    # check=False returns the same iterate one product sooner. The updated residual it
    # reports meets rtol and is close to the true one, because the solve is short.
    matrix = _gonzalez_like(120, 10.0, seed=30) if solver == "gmres" else _spd(120, 1e3, seed=30)
    b = np.random.default_rng(31).normal(size=120)
    solutions = {}
    for check in (True, False):
        operator = CountingOperator(matrix)
        if solver == "cg":
            solution = conjugate_gradient(operator, b, 1e-3, 200, check=check)
        else:
            solution = gmres(operator, b, 1e-3, restart, 200, check=check)
        assert solution.iterations == operator.calls
        assert solution.converged
        solutions[check] = solution
    checked, unchecked = solutions[True], solutions[False]
    assert unchecked.iterations == checked.iterations - 1
    assert np.array_equal(unchecked.x, checked.x)
    assert unchecked.residual <= 1e-3
    assert unchecked.residual == pytest.approx(_true_residual(matrix, b, unchecked.x), rel=1e-6)


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_unchecked_solve_reports_failure(solver: str) -> None:
    # Without convergence the true residual is still computed and reported.
    matrix = _spd(100, 1e4, seed=8)
    b = np.random.default_rng(9).normal(size=100)
    if solver == "cg":
        solution = conjugate_gradient(CountingOperator(matrix), b, 1e-10, 3, check=False)
    else:
        solution = gmres(CountingOperator(matrix), b, 1e-10, 8, 3, check=False)
    _check_solution(solution, matrix, b, 1e-10)
    assert solution.status == "max_iterations"


@pytest.mark.parametrize("rtol", [1e-13, 1e-15])
@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_rtol_below_attainable_accuracy(solver: str, rtol: float) -> None:
    """A solve is never reported converged when rounding keeps the true residual above rtol."""
    matrix = _spd(50, 1e6, seed=10)
    b = np.random.default_rng(11).normal(size=50)
    operator = CountingOperator(matrix)
    if solver == "cg":
        solution = conjugate_gradient(operator, b, rtol, max_iterations=1000)
    else:
        solution = gmres(operator, b, rtol, restart=50, max_iterations=1000)
    _check_solution(solution, matrix, b, rtol)
    assert solution.iterations == operator.calls
    assert solution.status in ("converged", "max_iterations", "breakdown")


def test_gmres_restarts() -> None:
    n = 50
    generator = np.random.default_rng(12)
    matrix = np.eye(n) + 0.5 * generator.normal(size=(n, n)) / math.sqrt(n)
    b = generator.normal(size=n)
    full = gmres(CountingOperator(matrix), b, 1e-10, restart=n, max_iterations=n)
    operator = CountingOperator(matrix)

    restarted = gmres(operator, b, 1e-10, restart=5, max_iterations=500)

    _check_solution(restarted, matrix, b, 1e-10)
    assert full.converged
    assert restarted.converged
    assert restarted.iterations == operator.calls
    # Every cycle of 5 ends with one true residual, so more than one cycle ran.
    assert restarted.iterations > 12
    assert restarted.iterations >= full.iterations
    reference = _scipy_gmres_iterations(matrix, b, 1e-10, restart=5, maxiter=100)
    cycles = math.ceil(reference / 5)
    assert restarted.iterations <= 1.2 * (reference + cycles) + 6


def test_orthogonalize_cancellation() -> None:
    """A vector almost in the span of the basis comes out orthogonal to rounding."""
    n, count = 200, 10
    generator = np.random.default_rng(25)
    basis = _orthogonal(n, generator)[:, : count + 1].T.copy()
    w = generator.normal(size=count) @ basis[:count] + 1e-10 * basis[count]
    original = w.copy()

    coefficients, remaining = _orthogonalize(basis, count, w, float(np.linalg.norm(w)))

    assert remaining == pytest.approx(1e-10, rel=1e-4)
    assert np.max(np.abs(basis[:count] @ w)) / remaining <= 1e-14
    np.testing.assert_allclose(np.array(coefficients) @ basis[:count] + w, original, atol=1e-15)


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_identity_converges_in_one_step(solver: str) -> None:
    b = np.random.default_rng(13).normal(size=20)
    calls = []

    def identity(v: np.ndarray) -> np.ndarray:
        calls.append(1)
        # Returning the argument itself catches a solver that updates the result in place.
        return v

    if solver == "cg":
        solution = conjugate_gradient(identity, b, 1e-12, max_iterations=10)
    else:
        solution = gmres(identity, b, 1e-12, restart=10, max_iterations=10)

    assert solution.converged
    # One Krylov iteration and one check of the true residual.
    assert solution.iterations == 2
    assert len(calls) == 2
    assert solution.residual <= 1e-15
    np.testing.assert_allclose(solution.x, b, rtol=1e-15)


def test_gmres_eigenvector_breakdown() -> None:
    n = 30
    generator = np.random.default_rng(14)
    basis = generator.normal(size=(n, n))
    eigenvalues = generator.uniform(1.0, 5.0, n)
    matrix = (basis * eigenvalues) @ np.linalg.inv(basis)
    b = basis[:, 0]

    solution = gmres(CountingOperator(matrix), b, 1e-12, restart=n, max_iterations=n)

    _check_solution(solution, matrix, b, 1e-12)
    assert solution.converged
    assert solution.iterations == 2
    np.testing.assert_allclose(solution.x, b / eigenvalues[0], rtol=1e-12)


def test_cg_eigenvector_converges_in_one_step() -> None:
    matrix = np.diag(np.arange(1.0, 21.0))
    b = np.zeros(20)
    b[4] = 3.0

    solution = conjugate_gradient(CountingOperator(matrix), b, 1e-12, max_iterations=20)

    assert solution.converged
    assert solution.iterations == 2
    np.testing.assert_allclose(solution.x, b / 5.0, rtol=1e-15)


def test_gmres_singular_breakdown() -> None:
    matrix = np.diag([1.0, 2.0, 3.0, 0.0])
    b = np.array([0.0, 0.0, 0.0, 1.0])  # outside the range of the matrix

    solution = gmres(CountingOperator(matrix), b, 1e-8, restart=4, max_iterations=20)

    assert solution.status == "breakdown"
    assert not solution.converged
    assert solution.iterations == 1
    assert solution.residual == 1.0


def test_gmres_stagnation_stops() -> None:
    """GMRES(1) on a rotation gains nothing per cycle, so it stops instead of repeating it."""
    matrix = np.array([[0.0, 1.0], [-1.0, 0.0]])
    b = np.array([1.0, 0.0])
    operator = CountingOperator(matrix)

    solution = gmres(operator, b, 1e-8, restart=1, max_iterations=100)

    assert solution.status == "breakdown"
    assert not solution.converged
    # One inner iteration and the true residual after it.
    assert solution.iterations == 2
    assert operator.calls == 2
    assert solution.residual == 1.0


class InexactOperator:
    """`v -> A v` that is off by a factor `1 + error` for its first `inexact_calls` calls."""

    def __init__(self, matrix: np.ndarray, error: float, inexact_calls: int) -> None:
        self.matrix = matrix
        self.error = error
        self.inexact_calls = inexact_calls
        self.calls = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        self.calls += 1
        factor = 1.0 + self.error if self.calls <= self.inexact_calls else 1.0
        return factor * (self.matrix @ v)


def test_cg_restarts_on_true_residual() -> None:
    """CG restarts when its updated residual met rtol but the true residual missed it."""
    matrix = _spd(50, 100.0, seed=26)
    b = np.random.default_rng(27).normal(size=50)
    rtol = 1e-8
    # The operator is 0.1 % off, as a finite-difference product can be, during the first
    # run, until its updated residual meets rtol. The check and everything after it are exact.
    first_run = conjugate_gradient(CountingOperator(1.001 * matrix), b, rtol, 500)
    operator = InexactOperator(matrix, 1e-3, first_run.iterations - 1)

    solution = conjugate_gradient(operator, b, rtol, 500)

    _check_solution(solution, matrix, b, rtol)
    assert solution.converged
    assert solution.iterations == operator.calls
    assert solution.iterations > first_run.iterations + 1


def test_cg_max_iterations_exact() -> None:
    matrix = _spd(100, 1e6, seed=15)
    b = np.random.default_rng(16).normal(size=100)
    operator = CountingOperator(matrix)

    solution = conjugate_gradient(operator, b, 1e-10, max_iterations=7)

    _check_solution(solution, matrix, b, 1e-10)
    assert solution.status == "max_iterations"
    # Seven CG iterations and the check of the true residual.
    assert operator.calls == 8
    assert solution.iterations == 8


def test_gmres_max_iterations_exact() -> None:
    matrix = _spd(100, 1e6, seed=15)
    b = np.random.default_rng(16).normal(size=100)
    operator = CountingOperator(matrix)

    solution = gmres(operator, b, 1e-10, restart=4, max_iterations=10)

    _check_solution(solution, matrix, b, 1e-10)
    assert solution.status == "max_iterations"
    # Cycles of 4, 4 and 2 inner iterations, each ending with a true residual.
    assert operator.calls == 13
    assert solution.iterations == 13


class FailingOperator:
    """`v -> A v` that returns NaN on the calls listed in `failing`, counted from 1."""

    def __init__(self, matrix: np.ndarray, failing: range) -> None:
        self.matrix = matrix
        self.failing = failing
        self.calls = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        self.calls += 1
        result = self.matrix @ v
        if self.calls in self.failing:
            result[3] = np.nan
        return result


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_non_finite_once(solver: str) -> None:
    """A NaN on the third application stops the solve at the last finite iterate."""
    matrix = _spd(20, 100.0, seed=17)
    b = np.random.default_rng(18).normal(size=20)
    operator = FailingOperator(matrix, range(3, 4))

    if solver == "cg":
        solution = conjugate_gradient(operator, b, 1e-10, max_iterations=100)
    else:
        solution = gmres(operator, b, 1e-10, restart=20, max_iterations=100)

    assert solution.status == "non-finite"
    assert not solution.converged
    # Two good iterations, the failed one and the check of the returned iterate.
    assert solution.iterations == 4
    assert operator.calls == 4
    assert solution.residual == pytest.approx(_true_residual(matrix, b, solution.x), rel=1e-12)
    # The returned x is the iterate of the two good iterations.
    if solver == "cg":
        before = conjugate_gradient(CountingOperator(matrix), b, 1e-10, max_iterations=2)
    else:
        before = gmres(CountingOperator(matrix), b, 1e-10, restart=20, max_iterations=2)
    np.testing.assert_array_equal(solution.x, before.x)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_non_finite_forever(solver: str) -> None:
    """When the check fails too, the solver falls back to x = 0, whose residual is known."""
    matrix = _spd(20, 100.0, seed=17)
    b = np.random.default_rng(18).normal(size=20)
    operator = FailingOperator(matrix, range(3, 1000))

    if solver == "cg":
        solution = conjugate_gradient(operator, b, 1e-10, max_iterations=100)
    else:
        solution = gmres(operator, b, 1e-10, restart=20, max_iterations=100)

    assert solution.status == "non-finite"
    assert not solution.converged
    assert solution.iterations == 4
    np.testing.assert_array_equal(solution.x, np.zeros(20))
    assert solution.residual == 1.0


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_non_finite_preconditioner(solver: str) -> None:
    matrix = _spd(20, 100.0, seed=19)
    b = np.random.default_rng(20).normal(size=20)

    def broken(v: np.ndarray) -> np.ndarray:
        return np.full_like(v, np.inf)

    if solver == "cg":
        solution = conjugate_gradient(CountingOperator(matrix), b, 1e-10, 100, broken)
    else:
        solution = gmres(CountingOperator(matrix), b, 1e-10, 20, 100, broken)

    assert solution.status == "non-finite"
    assert not solution.converged
    np.testing.assert_array_equal(solution.x, np.zeros(20))
    assert solution.residual == 1.0


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_zero_rhs(solver: str) -> None:
    operator = CountingOperator(np.eye(5))
    b = np.zeros(5)
    if solver == "cg":
        solution = conjugate_gradient(operator, b, 1e-8, 10)
    else:
        solution = gmres(operator, b, 1e-8, 5, 10)
    assert solution.converged
    assert solution.status == "converged"
    assert solution.iterations == 0
    assert solution.residual == 0.0
    assert operator.calls == 0
    np.testing.assert_array_equal(solution.x, np.zeros(5))


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_rtol_at_least_one(solver: str) -> None:
    operator = CountingOperator(np.eye(5))
    b = np.ones(5)
    if solver == "cg":
        solution = conjugate_gradient(operator, b, 1.0, 10)
    else:
        solution = gmres(operator, b, 1.0, 5, 10)
    assert solution.converged
    assert solution.iterations == 0
    assert solution.residual == 1.0
    assert operator.calls == 0


def test_jacobi_preconditioner() -> None:
    n = 200
    generator = np.random.default_rng(21)
    scaling = np.logspace(0.0, 3.0, n)
    matrix = scaling[:, None] * _spd(n, 10.0, seed=21) * scaling[None, :]
    b = generator.normal(size=n)
    inverse_diagonal = 1.0 / np.diag(matrix)

    def jacobi(v: np.ndarray) -> np.ndarray:
        return inverse_diagonal * v

    rtol = 1e-8
    plain_cg = conjugate_gradient(CountingOperator(matrix), b, rtol, 20 * n)
    cg_solution = conjugate_gradient(CountingOperator(matrix), b, rtol, 20 * n, jacobi)
    plain_gmres = gmres(CountingOperator(matrix), b, rtol, 40, 20 * n)
    gmres_solution = gmres(CountingOperator(matrix), b, rtol, 40, 20 * n, jacobi)

    for solution in (cg_solution, gmres_solution):
        # The reported residual is that of b - A x, not of the preconditioned system.
        _check_solution(solution, matrix, b, rtol)
        assert solution.converged
    assert cg_solution.iterations < plain_cg.iterations
    assert gmres_solution.iterations < plain_gmres.iterations


def test_cg_indefinite_preconditioner() -> None:
    matrix = _spd(10, 10.0, seed=22)
    b = np.ones(10)

    solution = conjugate_gradient(CountingOperator(matrix), b, 1e-8, 10, lambda v: -v)

    assert solution.status == "breakdown"
    assert solution.iterations == 0
    assert solution.residual == 1.0


def test_operator_reusing_its_output() -> None:
    """An operator may return the same buffer on every call, as compiled kernels do."""
    n = 60
    matrix = np.eye(n) + 0.5 * np.random.default_rng(23).normal(size=(n, n)) / math.sqrt(n)
    b = np.random.default_rng(24).normal(size=n)
    output = np.empty(n)

    def apply(v: np.ndarray) -> np.ndarray:
        np.dot(matrix, v, out=output)
        return output

    solution = gmres(apply, b, 1e-10, restart=n, max_iterations=n)

    _check_solution(solution, matrix, b, 1e-10)
    assert solution.converged


INVALID_ARGUMENTS = [
    ({"rtol": 0.0}, r"rtol must be a finite number > 0, got 0\.0"),
    ({"rtol": -1e-3}, r"rtol .* got -0\.001"),
    ({"rtol": math.nan}, r"rtol .* got nan"),
    ({"rtol": math.inf}, r"rtol .* got inf"),
    ({"rtol": "1e-3"}, r"rtol .* got '1e-3'"),
    ({"max_iterations": 0}, r"max_iterations must be an integer >= 1, got 0"),
    ({"max_iterations": 2.5}, r"max_iterations .* got 2\.5"),
    ({"max_iterations": True}, r"max_iterations .* got True"),
    ({"b": np.ones((3, 1))}, r"b must be a 1-D array, got shape \(3, 1\)\. Pass b\.ravel"),
    ({"b": np.array([1.0, np.nan, 2.0])}, r"b\[1\] = nan"),
    ({"b": np.array([1.0, 2.0, -np.inf])}, r"b\[2\] = -inf"),
    ({"b": np.ones(3) + 1j}, r"b must be real"),
    ({"b": ["a", "b", "c"]}, r"b must be an array of real numbers"),
    ({"apply": None}, r"apply must be a callable"),
    ({"preconditioner": 3.0}, r"preconditioner must be None or a callable"),
]


def _valid_arguments() -> dict:
    return {
        "apply": lambda v: v,
        "b": np.ones(3),
        "rtol": 1e-8,
        "max_iterations": 10,
        "preconditioner": None,
    }


@pytest.mark.parametrize(("arguments", "message"), INVALID_ARGUMENTS)
def test_cg_invalid_arguments(arguments: dict, message: str) -> None:
    values = _valid_arguments() | arguments
    with pytest.raises(SpecError, match=message):
        conjugate_gradient(**values)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        *INVALID_ARGUMENTS,
        ({"restart": 0}, r"restart must be an integer >= 1, got 0"),
        ({"restart": 4.0}, r"restart .* got 4\.0"),
    ],
)
def test_gmres_invalid_arguments(arguments: dict, message: str) -> None:
    values = _valid_arguments() | {"restart": 5} | arguments
    with pytest.raises(SpecError, match=message):
        gmres(**values)


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_operator_wrong_shape(solver: str) -> None:
    def column(v: np.ndarray) -> np.ndarray:
        return v[:, None]

    with pytest.raises(SpecError, match=r"apply returned an array of shape \(4, 1\)"):
        if solver == "cg":
            conjugate_gradient(column, np.ones(4), 1e-8, 10)
        else:
            gmres(column, np.ones(4), 1e-8, 4, 10)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    log_condition=st.floats(0.0, 4.0),
    log_rtol=st.floats(-10.0, -2.0),
)
def test_spd_systems_converge(seed: int, n: int, log_condition: float, log_rtol: float) -> None:
    """Random SPD systems converge, and the reported residual is the true one."""
    generator = np.random.default_rng(seed)
    q = _orthogonal(n, generator)
    eigenvalues = 10.0 ** generator.uniform(0.0, log_condition, n)
    matrix = (q * eigenvalues) @ q.T
    b = generator.normal(size=n)
    rtol = 10.0**log_rtol

    cg_solution = conjugate_gradient(CountingOperator(matrix), b, rtol, 20 * n + 20)
    gmres_solution = gmres(CountingOperator(matrix), b, rtol, n, 2 * n + 2)

    for solution in (cg_solution, gmres_solution):
        _check_solution(solution, matrix, b, rtol)
        assert solution.converged
