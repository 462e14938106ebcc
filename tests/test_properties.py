"""Property-based tests: random losses, every discrete gradient, identities and finiteness.

Losses are sums of univariate functions of random affine combinations of 1 to 6 variables
(exp, softplus, tanh, sin, log(1 + z^2), sqrt(eps + z^2), powers) plus a random
polynomial, the forms for which dgcodegen derives exact discrete gradients.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dgcodegen as dg
from dgcodegen.derive import DISCRETE_GRADIENTS
from dgcodegen.runtime import METHODS, compile_problem

PROFILES = {
    "exp": lambda z: sp.exp(z / 2),
    "softplus": dg.softplus,
    "tanh": sp.tanh,
    "sin": sp.sin,
    "log1p_square": lambda z: sp.log(1 + z**2),
    "smooth_abs": lambda z: sp.sqrt(sp.Rational(1, 100) + z**2),
    "cube": lambda z: z**3 / 6,
}

STEPS = (0.0, 1e-14, 1e-10, 1e-6, 1e-2, 1.0)

coefficients = st.integers(min_value=-3, max_value=3)


@st.composite
def losses(draw) -> tuple[int, list[tuple[str, list[int], int]], list[tuple[int, int, int]]]:
    """Draw (n, ridge terms (profile, slope, offset), polynomial terms (coefficient, i, j))."""
    n = draw(st.integers(min_value=1, max_value=6))
    ridges = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(PROFILES)),
                st.lists(coefficients, min_size=n, max_size=n).filter(any),
                coefficients,
            ),
            min_size=1,
            max_size=3,
        )
    )
    polynomial = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=3),
                st.integers(min_value=0, max_value=n - 1),
                st.integers(min_value=0, max_value=n - 1),
            ),
            max_size=3,
        )
    )
    return n, ridges, polynomial


def build(description, counter=[0]):  # noqa: B006 - a counter of built problems
    n, ridges, polynomial = description
    counter[0] += 1
    q = dg.parameter(f"q{counter[0]}", n)
    objective = sum((q[i] ** 2 for i in range(n)), sp.S.Zero) / 10
    for profile, slope, offset in ridges:
        z = sum((a * q[i] for i, a in enumerate(slope)), sp.S.Zero) + offset
        objective += PROFILES[profile](z)
    for coefficient, i, j in polynomial:
        objective += coefficient * q[i] ** 2 * q[j] ** 2 / 10
    return dg.Loss(objective=objective, name=f"property{counter[0]}")


# Each example generates and compiles its own kernels, about 10 s, so three examples keep
# the suite near its 10-minute budget.
@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(description=losses(), seed=st.integers(min_value=0, max_value=2**16))
def test_random_loss_discrete_gradients(tmp_path_factory, description, seed) -> None:
    problem = build(description)
    compiled = compile_problem(problem, out=tmp_path_factory.mktemp("property"))
    rng = np.random.default_rng(seed)
    n = compiled.n
    x = rng.uniform(-1.5, 1.5, size=n)
    direction = rng.normal(size=n)
    direction /= np.linalg.norm(direction)
    for method in METHODS:
        dg_function, jacobian = compiled.discrete_gradient(method), compiled.jacobian(method)
        errors = []
        for h in STEPS:
            y = x + h * direction
            value = dg_function(x, y)
            assert np.all(np.isfinite(value)), (method, h)
            assert np.all(np.isfinite(jacobian(x, y))), (method, h)
            change = compiled.loss(y) - compiled.loss(x)
            scale = abs(compiled.loss(x)) + abs(compiled.loss(y)) + np.abs(value).sum() * h
            assert abs(value @ (y - x) - change) <= 1e-12 * scale, (method, h)
            midpoint = compiled.gradient(x + h * direction / 2)
            errors.append(np.abs(value - midpoint).max())
        if DISCRETE_GRADIENTS[method]:
            # Symmetric discrete gradients agree with grad V(midpoint) to second order.
            for h, error in zip(STEPS[1:5], errors[1:5]):
                assert error <= 1e3 * h**2 + 1e-12 * (1 + np.abs(compiled.gradient(x)).max())
