"""Network kernels, matrix-free discrete gradients and the Newton-Krylov stepper."""

from __future__ import annotations

import ast
import json

import numpy as np
import pytest
from conftest import EXAMPLES, GENERATED

import dgcodegen as dg
from dgcodegen.cli import main
from dgcodegen.coordinate import coordinate_step
from dgcodegen.dsl import load_spec
from dgcodegen.errors import SpecError
from dgcodegen.krylov import KRYLOV_NEWTON_RTOL, KrylovOptions, newton_krylov_descent
from dgcodegen.matrix_free import CoordinateState, MatrixFreeKernels, relative_identity_error
from dgcodegen.network_cli import train_network
from dgcodegen.runtime import compile_network, generate, load_kernels, render_files
from dgcodegen.stepper import StepperOptions

ACTIVATIONS = {
    "identity": lambda z: z,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "softplus": lambda z: np.logaddexp(0.0, z),
}


def _reference_loss(network: dg.Network, theta: np.ndarray, data: dict) -> float:
    """Evaluate the loss with plain NumPy, independently of the generated kernels."""
    parts = network.split_parameters(theta)
    a = data["x"]
    for index, layer in enumerate(network.layers, start=1):
        a = ACTIVATIONS[layer.activation](a @ parts[f"W{index}"].T + parts[f"b{index}"])
    if network.loss == "softmax_cross_entropy":
        largest = a.max(axis=1, keepdims=True)
        log_sum = largest[:, 0] + np.log(np.exp(a - largest).sum(axis=1))
        per_sample = log_sum - a[np.arange(len(a)), data["label"].astype(int)]
    else:
        per_sample = 0.5 * ((a - data["target"]) ** 2).sum(axis=1)
    total = per_sample.mean() if network.reduction == "mean" else per_sample.sum()
    return float(total + 0.5 * network.weight_decay * theta @ theta)


def _arrays(network: dg.Network) -> dict[str, np.ndarray]:
    """Return the network's default data with a 1-D label column."""
    arrays = dict(network.default_data)
    if "label" in arrays:
        arrays["label"] = arrays["label"][:, 0]
    return arrays


def _classifier_data(rows: int = 300) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(3)
    x = generator.normal(size=(rows, 4))
    label = (x[:, 0] + x[:, 1] ** 2 > 1.0).astype(float) + (x[:, 2] > 0.5)
    return {"x": x, "label": label}


@pytest.fixture(scope="module")
def classifier() -> tuple[dg.Network, MatrixFreeKernels]:
    network = dg.Network(
        [dg.Dense(4, 5, "tanh"), dg.Dense(5, 4, "softplus"), dg.Dense(4, 3)],
        weight_decay=0.01,
        data=_classifier_data(),
        name="test_classifier",
    )
    return network, compile_network(network)


@pytest.fixture(scope="module")
def regression() -> tuple[dg.Network, MatrixFreeKernels]:
    generator = np.random.default_rng(4)
    x = generator.normal(size=(700, 3))
    target = np.column_stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]])
    network = dg.Network(
        [dg.Dense(3, 6, "sigmoid"), dg.Dense(6, 5, "relu"), dg.Dense(5, 2)],
        loss="squared_error",
        reduction="sum",
        data={"x": x, "target": target},
        name="test_regression",
    )
    return network, compile_network(network)


def test_network_data_width_error() -> None:
    # A network declares its input width through its first layer, so the message names the
    # width per sample rather than a dg.data call the spec does not contain.
    data = _classifier_data()
    data["x"] = data["x"][:, :3]
    with pytest.raises(SpecError, match="data for 'x' has shape") as error:
        dg.Network([dg.Dense(4, 3)], data=data, name="test_width")
    assert "expected (n_samples, 4)" in str(error.value)
    assert "4 entries per sample" in str(error.value)
    assert "dg.data" not in str(error.value)


@pytest.fixture(params=["classifier", "regression"])
def compiled(request) -> tuple[dg.Network, MatrixFreeKernels]:
    return request.getfixturevalue(request.param)


def _point(network: dg.Network, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return network.initial_point + 0.3 * generator.normal(size=network.size)


def test_loss_matches_numpy(compiled) -> None:
    network, kernels = compiled
    theta = _point(network, 0)
    expected = _reference_loss(network, theta, _arrays(network))
    assert abs(kernels.loss(theta) - expected) <= 1e-12 * max(1.0, abs(expected))
    value, _ = kernels.loss_gradient(theta)
    assert value == kernels.loss(theta)


def test_gradient_matches_differences(compiled) -> None:
    network, kernels = compiled
    theta = _point(network, 1)
    data = _arrays(network)
    h = 1e-6
    basis = np.eye(network.size)
    differences = np.array(
        [
            (
                _reference_loss(network, theta + h * e, data)
                - _reference_loss(network, theta - h * e, data)
            )
            / (2 * h)
            for e in basis
        ]
    )
    gradient = kernels.gradient(theta)
    assert np.max(np.abs(gradient - differences)) <= 1e-6 * max(1.0, np.max(np.abs(gradient)))


def test_hvp_matches_differences(compiled) -> None:
    network, kernels = compiled
    theta = _point(network, 2)
    v = np.random.default_rng(5).normal(size=network.size)
    h = 1e-6
    differences = (kernels.gradient(theta + h * v) - kernels.gradient(theta - h * v)) / (2 * h)
    product = kernels.hvp(theta, v)
    assert np.max(np.abs(product - differences)) <= 1e-6 * max(1.0, np.max(np.abs(product)))


def test_hvp_from_state_equals_hvp(compiled) -> None:
    # The stored forward pass contains the same numbers the plain kernel recomputes, and the
    # sums run in the same order, so the products agree bit for bit.
    network, kernels = compiled
    module = kernels.kernels
    theta = _point(network, 21)
    state = module.hvp_state(theta, *kernels.data)
    assert state.shape == (len(kernels.data[0]), module.STATE_WIDTH)
    for seed in (22, 23):
        v = np.random.default_rng(seed).normal(size=network.size)
        expected = module.hvp(theta, v, *kernels.data)
        assert np.array_equal(module.hvp_from_state(theta, v, state, kernels.data[0]), expected)
        assert np.array_equal(kernels.hvp(theta, v), expected)
    # A new point must not reuse the stored pass.
    other = _point(network, 24)
    v = np.ones(network.size)
    assert np.array_equal(kernels.hvp(other, v), module.hvp(other, v, *kernels.data))


def test_fused_state_matches_kernels(compiled) -> None:
    # loss_gradient_state runs the pass of loss_gradient and writes what hvp_state writes,
    # so all three results agree bit for bit. Products at a memoised point reuse its state.
    network, kernels = compiled
    module = kernels.kernels
    theta = _point(network, 25)
    value, gradient, state = module.loss_gradient_state(theta, *kernels.data)
    expected_value, expected_gradient = module.loss_gradient(theta, *kernels.data)
    assert value == expected_value
    assert np.array_equal(gradient, expected_gradient)
    assert np.array_equal(state, module.hvp_state(theta, *kernels.data))
    columns = [name for name, _ in kernels.layout.columns]
    bound = MatrixFreeKernels(module, kernels.layout, dict(zip(columns, kernels.data)))
    assert bound._fused
    bound.loss_gradient(theta)
    calls = []
    original = module.hvp_state
    try:
        module.hvp_state = lambda *args: calls.append(args) or original(*args)
        v = np.random.default_rng(26).normal(size=network.size)
        assert np.array_equal(bound.hvp(theta, v), module.hvp(theta, v, *kernels.data))
    finally:
        module.hvp_state = original
    assert calls == []


def test_hessian_is_symmetric(classifier) -> None:
    network, kernels = classifier
    hessian = kernels.hessian(_point(network, 3))
    assert np.max(np.abs(hessian - hessian.T)) <= 1e-12 * np.max(np.abs(hessian))


@pytest.mark.parametrize("method", ["gonzalez", "mean-value"])
@pytest.mark.parametrize("distance", [0.0, 1e-9, 1e-4, 0.1, 1.0])
def test_discrete_gradient_identity(compiled, method: str, distance: float) -> None:
    network, kernels = compiled
    x = _point(network, 6)
    direction = np.random.default_rng(7).normal(size=network.size)
    y = x + distance * direction / np.linalg.norm(direction)
    error = relative_identity_error(kernels, method, x, y)
    # Gonzalez is exact. The 8-node Gauss-Legendre mean value is exact to rounding on short
    # steps of the smooth classifier, but not across the kinks of the ReLU regression network.
    smooth = network.name == "test_classifier"
    if method == "gonzalez" or distance < 0.1:
        bound = 1e-12
    else:
        bound = 1e-10 if smooth else 1e-2
    assert error <= bound


@pytest.mark.parametrize("method", ["gonzalez", "mean-value"])
def test_discrete_gradient_consistent(compiled, method: str) -> None:
    network, kernels = compiled
    x = _point(network, 8)
    gradient = kernels.gradient(x)
    value = kernels.linearize(method, x, x).value
    assert np.max(np.abs(value - gradient)) <= 1e-13 * max(1.0, np.max(np.abs(gradient)))


@pytest.mark.parametrize("method", ["gonzalez", "mean-value"])
@pytest.mark.parametrize("distance", [1e-3, 0.5])
def test_jvp_matches_differences(classifier, method: str, distance: float) -> None:
    # The smooth classifier only: differences across the regression network's ReLU kinks
    # are not derivatives.
    network, kernels = classifier
    generator = np.random.default_rng(9)
    x = _point(network, 10)
    y = x + distance * generator.normal(size=network.size) / np.sqrt(network.size)
    v = generator.normal(size=network.size)
    # The Gonzalez correction divides a cancelling difference by |d|^2, so its rounding
    # noise is amplified; h = 1e-5 keeps that below the bound without truncation error.
    h = 1e-5
    plus = kernels.linearize(method, x, y + h * v).value
    minus = kernels.linearize(method, x, y - h * v).value
    product = kernels.linearize(method, x, y).jvp(v)
    scale = max(1.0, np.max(np.abs(product)))
    assert np.max(np.abs(product - (plus - minus) / (2 * h))) <= 1e-4 * scale


def test_mean_value_jacobian_symmetric(classifier) -> None:
    network, kernels = classifier
    x = _point(network, 11)
    y = _point(network, 12)
    jacobian = kernels.jacobian("mean-value")(x, y)
    assert np.max(np.abs(jacobian - jacobian.T)) <= 1e-12 * np.max(np.abs(jacobian))


def test_softmax_stable_at_large_logits(classifier) -> None:
    network, kernels = classifier
    theta = network.initial_point.copy()
    # The last bias sits at the end of the vector: logits of 1e4 would overflow exp.
    theta[-3:] = [1e4, -1e4, 0.0]
    value, gradient = kernels.loss_gradient(theta)
    assert np.isfinite(value)
    assert np.all(np.isfinite(gradient))
    assert np.all(np.isfinite(kernels.hvp(theta, np.ones(network.size))))


@pytest.mark.parametrize(
    ("method", "tau"),
    [
        ("gonzalez", 0.1),
        ("gonzalez", 100.0),
        ("gonzalez", 1e6),
        ("mean-value", 0.1),
        ("mean-value", 100.0),
        # Each mean-value product costs 8 HVPs, and tau = 1e6 needs hundreds per solve.
        ("mean-value", 1e4),
    ],
)
def test_krylov_loss_decreases_every_step(classifier, method: str, tau: float) -> None:
    network, kernels = classifier
    options = StepperOptions(step=tau, max_steps=6, tol=1e-12, newton_rtol=1e-10)
    result = newton_krylov_descent(kernels, method, network.initial_point, options)
    losses = [kernels.loss(network.initial_point), *result.history.loss]
    assert all(after < before for before, after in zip(losses, losses[1:]))
    assert result.steps == 6
    # Gonzalez satisfies the identity exactly; the mean value only to its quadrature error,
    # which grows with the step length |y - x|.
    bound = 1e-9 if method == "gonzalez" else 1e-5
    assert max(abs(r) for r in result.history.energy_residual) <= bound * losses[0]


@pytest.mark.parametrize("tau", [0.1, 100.0, 1e6])
@pytest.mark.parametrize("rtol", [0.5, 0.9])
def test_loose_krylov_solve_keeps_certified_decrease(classifier, tau: float, rtol: float) -> None:
    # A solve to |F| <= rtol |d| with the exact Gonzalez identity gives
    # V(y) - V(x) = (F . d - |d|^2) / tau <= -(1 - rtol) |d|^2 / tau.
    network, kernels = classifier
    options = StepperOptions(step=tau, max_steps=6, tol=1e-12, newton_rtol=rtol)
    result = newton_krylov_descent(kernels, "gonzalez", network.initial_point, options)
    assert result.steps == 6
    losses = [kernels.loss(network.initial_point), *result.history.loss]
    for before, after, norm, residual in zip(
        losses, losses[1:], result.history.step_norm, result.history.residual
    ):
        assert residual <= rtol * norm + 1e-13 * max(1.0, np.linalg.norm(result.x))
        bound = (1.0 - rtol) * norm**2 / tau
        assert after - before <= -bound + 1e-12 * abs(before)
        assert bound > 0.0


def test_default_krylov_tolerance_is_loose_and_reported(classifier) -> None:
    network, kernels = classifier
    loose = newton_krylov_descent(
        kernels, "gonzalez", network.initial_point, StepperOptions(step=100.0, max_steps=4)
    )
    tight = newton_krylov_descent(
        kernels,
        "gonzalez",
        network.initial_point,
        StepperOptions(step=100.0, max_steps=4, newton_rtol=1e-10),
    )
    assert sum(loose.krylov_iterations) < sum(tight.krylov_iterations)
    assert all(
        residual <= KRYLOV_NEWTON_RTOL * norm + 1e-12
        for residual, norm in zip(loose.history.residual, loose.history.step_norm)
    )
    assert max(tight.history.residual) <= 1e-8


def test_krylov_try_budget_rejects_expensive_tries(classifier, caplog) -> None:
    network, kernels = classifier
    options = StepperOptions(step=1e6, max_steps=2, tol=1e-12, newton_rtol=1e-10)
    krylov = KrylovOptions(try_budget=3)
    with caplog.at_level("DEBUG", logger="dgcodegen"):
        result = newton_krylov_descent(kernels, "gonzalez", network.initial_point, options, krylov)
    assert "Krylov budget of 3 iterations per try spent" in caplog.text
    assert sum(result.history.rejected) >= 1
    # The true-residual checks of the last solve may pass the budget by two products.
    assert all(count <= 3 + 2 for count in result.krylov_iterations)
    losses = [kernels.loss(network.initial_point), *result.history.loss]
    assert all(after < before for before, after in zip(losses, losses[1:]))


@pytest.mark.parametrize("rtol", [-0.1, 1.0, 2.0])
def test_newton_rtol_outside_unit_interval_is_rejected(rtol: float) -> None:
    with pytest.raises(SpecError, match=f"invalid newton_rtol {rtol!r}"):
        StepperOptions(step=1.0, newton_rtol=rtol)


def test_krylov_matches_dense_newton(classifier) -> None:
    network, kernels = classifier
    options = StepperOptions(step=5.0, max_steps=5, tol=1e-12, newton_rtol=1e-10)
    dense, dense_choice = train_network(kernels, "gonzalez", options, "dense")
    krylov, krylov_choice = train_network(kernels, "gonzalez", options, "krylov")
    assert (dense_choice, krylov_choice) == ("dense", "krylov")
    assert np.max(np.abs(dense.x - krylov.x)) <= 1e-8


def test_jacobi_preconditioner_gives_same_steps(classifier) -> None:
    network, kernels = classifier
    options = StepperOptions(step=20.0, max_steps=3, tol=1e-12, newton_rtol=1e-10)
    plain = newton_krylov_descent(kernels, "gonzalez", network.initial_point, options)
    krylov = KrylovOptions(preconditioner="jacobi")
    preconditioned = newton_krylov_descent(
        kernels, "gonzalez", network.initial_point, options, krylov
    )
    assert np.max(np.abs(plain.x - preconditioned.x)) <= 1e-8
    assert preconditioned.steps == 3


def test_krylov_reaches_tolerance(classifier) -> None:
    network, kernels = classifier
    options = StepperOptions(step=10.0, max_steps=100, tol=1e-3)
    result = newton_krylov_descent(kernels, "gonzalez", network.initial_point, options)
    assert result.converged, result.message
    initial = np.linalg.norm(kernels.gradient(network.initial_point))
    assert np.linalg.norm(kernels.gradient(result.x)) <= 1e-3 * max(1.0, initial)


def test_auto_picks_krylov_above_limit(caplog) -> None:
    network = load_spec(EXAMPLES / "mlp_digits.py")
    kernels = MatrixFreeKernels(
        load_kernels(GENERATED / "mlp_digits"), network.layout, network.default_data
    )
    options = StepperOptions(step=10.0, max_steps=3, tol=1e-12)
    with caplog.at_level("INFO", logger="dgcodegen"):
        result, choice = train_network(kernels, "gonzalez", options)
    assert choice == "krylov"
    assert "Newton-Krylov" in caplog.text
    losses = [kernels.loss(network.initial_point), *result.history.loss]
    assert all(after < before for before, after in zip(losses, losses[1:]))


def test_solve_network_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    arguments = [
        "-q",
        "solve",
        str(EXAMPLES / "mlp_digits.py"),
        "--out",
        str(GENERATED / "mlp_digits"),
    ]
    code = main(
        [*arguments, "--method", "gonzalez", "--step", "10", "--max-steps", "2", "--json", str(out)]
    )
    assert code == 3
    document = json.loads(out.read_text())
    assert document["linear_solver"] == "krylov"
    assert len(document["history"]["krylov_iterations"]) == 2
    assert document["parameters"]["W1"] and len(document["parameters"]["W1"]) == 16
    assert 0.0 <= document["training_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "itoh-abe", "--linear-solver", "krylov"], "--linear-solver krylov does"),
        (["--method", "itoh-abe", "--preconditioner", "jacobi"], "--preconditioner jacobi does"),
        (["--linear-solver", "dense", "--preconditioner", "jacobi"], "uses dense Newton"),
    ],
)
def test_solve_network_rejects_ignored_options(capsys, options: list[str], message: str) -> None:
    # Checked before the kernels compile, so the run fails at once.
    code = main(["solve", str(EXAMPLES / "mlp_digits.py"), *options])
    assert code != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"layers": [dg.Dense(3, 4), dg.Dense(5, 2)]}, "layer 2 takes 5 inputs"),
        ({"layers": []}, "non-empty list"),
        ({"layers": [dg.Dense(3, 1)]}, "at least 2 outputs"),
        ({"layers": [dg.Dense(3, 2)], "loss": "hinge"}, "unknown loss"),
        ({"layers": [dg.Dense(3, 2)], "weight_decay": -1.0}, "invalid weight_decay"),
        ({"layers": [dg.Dense(3, 2)], "weight_decay": float("nan")}, "invalid weight_decay"),
        ({"layers": [dg.Dense(3, 2)], "initial": "random"}, "unknown initial"),
        ({"layers": [dg.Dense(3, 2)], "reduction": "max"}, "reduction must be"),
    ],
)
def test_network_rejects_invalid_spec(arguments: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        dg.Network(**arguments)


def test_dense_rejects_invalid_layer() -> None:
    with pytest.raises(SpecError, match="unknown activation 'gelu'"):
        dg.Dense(3, 2, "gelu")
    with pytest.raises(SpecError, match="invalid Dense outputs 0"):
        dg.Dense(3, 0)


@pytest.mark.parametrize(
    ("label", "message"),
    [(2.0, "label 2.0 at row 1"), (0.5, "label 0.5 at row 1"), (-1.0, "label -1.0 at row 1")],
)
def test_network_rejects_bad_labels(label: float, message: str) -> None:
    data = {"x": np.zeros((3, 3)), "label": np.array([0.0, label, 1.0])}
    with pytest.raises(SpecError, match=message):
        dg.Network([dg.Dense(3, 2)], data=data)


def test_network_rejects_wrong_data_shape() -> None:
    data = {"x": np.zeros((3, 4)), "label": np.zeros(3)}
    with pytest.raises(SpecError, match="expected \\(n_samples, 3\\)"):
        dg.Network([dg.Dense(3, 2)], data=data)


def test_glorot_start_is_reproducible() -> None:
    first = dg.Network([dg.Dense(3, 4, "tanh"), dg.Dense(4, 2)], seed=5)
    second = dg.Network([dg.Dense(3, 4, "tanh"), dg.Dense(4, 2)], seed=5)
    other = dg.Network([dg.Dense(3, 4, "tanh"), dg.Dense(4, 2)], seed=6)
    assert np.array_equal(first.initial_point, second.initial_point)
    assert not np.array_equal(first.initial_point, other.initial_point)
    assert first.fingerprint() != other.fingerprint()


# Incremental evaluation for the coordinate-wise Itoh-Abe step.


def _bind(network: dg.Network) -> MatrixFreeKernels:
    """Generate and import a network's kernels without compiling the gradient and HVP."""
    directory = generate(network)
    return MatrixFreeKernels(load_kernels(directory), network.layout, network.default_data)


@pytest.fixture(scope="module")
def saturating() -> tuple[dg.Network, MatrixFreeKernels]:
    """A classifier whose hidden and last layers have relu, sigmoid and tanh units."""
    network = dg.Network(
        [dg.Dense(4, 5, "relu"), dg.Dense(5, 4, "sigmoid"), dg.Dense(4, 3, "tanh")],
        reduction="sum",
        weight_decay=0.1,
        data=_classifier_data(200),
        name="test_saturating",
    )
    return network, _bind(network)


@pytest.fixture(scope="module")
def smooth_regression() -> tuple[dg.Network, MatrixFreeKernels]:
    """A regression network with an identity first layer and a softplus output layer."""
    generator = np.random.default_rng(13)
    x = generator.normal(size=(300, 3))
    target = np.column_stack([np.log1p(np.exp(x[:, 0])), np.abs(x[:, 1])])
    network = dg.Network(
        [dg.Dense(3, 4), dg.Dense(4, 2, "softplus")],
        loss="squared_error",
        weight_decay=0.01,
        data={"x": x, "target": target},
        name="test_smooth_regression",
    )
    return network, _bind(network)


@pytest.fixture(params=["classifier", "regression", "saturating", "smooth_regression"])
def any_network(request) -> tuple[dg.Network, MatrixFreeKernels]:
    return request.getfixturevalue(request.param)


def _layer_coordinates(network: dg.Network, seed: int) -> list[int]:
    """Return the first, last and a random weight, and the first and last bias, of each layer."""
    generator = np.random.default_rng(seed)
    coordinates, offset = [], 0
    for layer in network.layers:
        weights = layer.outputs * layer.inputs
        coordinates += [offset, offset + weights - 1, offset + int(generator.integers(weights))]
        coordinates += [offset + weights, offset + weights + layer.outputs - 1]
        offset += weights + layer.outputs
    return coordinates


@pytest.mark.parametrize("distance", [1e-9, 1e-3, 0.5, 5.0])
def test_coordinate_loss_matches_full_loss(any_network, distance: float) -> None:
    network, kernels = any_network
    theta = _point(network, 20)
    state = CoordinateState(kernels, theta)
    signs = np.random.default_rng(21).choice([-1.0, 1.0], size=network.size)
    for k in _layer_coordinates(network, 22):
        t = theta[k] + signs[k] * distance
        trial = theta.copy()
        trial[k] = t
        expected = kernels.loss(trial)
        assert abs(state.loss(k, t) - expected) <= 1e-12 * abs(expected), f"coordinate {k}"


def test_coordinate_derivative_matches_gradient(any_network) -> None:
    network, kernels = any_network
    theta = _point(network, 23)
    state = CoordinateState(kernels, theta)
    gradient = kernels.gradient(theta)
    derivatives = np.array([state.derivative(k) for k in range(network.size)])
    assert np.max(np.abs(derivatives - gradient)) <= 1e-12 * max(1.0, np.max(np.abs(gradient)))


def test_coordinate_change_accurate_at_tiny_steps(any_network) -> None:
    # A difference of two full losses carries a rounding error of about eps * V / h, here
    # 2e-6 * V. The incremental change does not, so change / h stays within O(h) of the slope.
    network, kernels = any_network
    theta = _point(network, 24)
    state = CoordinateState(kernels, theta)
    gradient = kernels.gradient(theta)
    h = 1e-10
    for k in _layer_coordinates(network, 25):
        slope = state.change(k, theta[k] + h) / h
        assert abs(slope - gradient[k]) <= 1e-7 * max(1.0, abs(gradient[k])), f"coordinate {k}"


def test_coordinate_state_matches_forward_after_commits(any_network) -> None:
    network, kernels = any_network
    generator = np.random.default_rng(26)
    theta = _point(network, 27)
    state = CoordinateState(kernels, theta)
    for _ in range(3):
        for k in generator.permutation(network.size):
            theta[k] += 0.2 * generator.normal()
            state.commit(int(k), theta[k])
    assert np.array_equal(state.theta, theta)
    fresh = kernels.kernels.coordinate_state(theta, kernels.data[0])
    scale = max(1.0, np.max(np.abs(fresh)))
    assert np.max(np.abs(state.activations - fresh)) <= 1e-12 * scale
    expected = kernels.loss(theta)
    assert abs(state.value - expected) <= 1e-12 * abs(expected)


def test_coordinate_quotient_follows_any_point(classifier) -> None:
    network, kernels = classifier
    quotient = kernels.coordinate_quotient()
    reference = kernels.coordinate_quotient(incremental=False)
    point = _point(network, 28)
    first = quotient(point, 3, point[3] + 0.1)
    assert abs(first - reference(point.copy(), 3, point[3] + 0.1)) <= 1e-10
    # The point changes in place, in two coordinates at once and then back, and each call
    # must see the point it gets.
    point[0] += 0.3
    point[7] -= 0.2
    moved = quotient(point, 3, point[3] + 0.1)
    assert abs(moved - reference(point.copy(), 3, point[3] + 0.1)) <= 1e-10
    point[7] += 0.2
    back = quotient(point, 5, point[5] - 0.1)
    assert abs(back - reference(point.copy(), 5, point[5] - 0.1)) <= 1e-10


@pytest.mark.parametrize("tau", [1.0, 1e3])
def test_incremental_itoh_abe_step_matches_loss_path(any_network, tau: float) -> None:
    network, kernels = any_network
    x = _point(network, 29)
    incremental, _, residual = coordinate_step(kernels.coordinate_quotient(), x, tau, 1e-15)
    from_losses, _, _ = coordinate_step(
        kernels.coordinate_quotient(incremental=False), x, tau, 1e-15
    )
    assert np.max(np.abs(incremental - from_losses)) <= 1e-10 * max(1.0, np.max(np.abs(x)))
    assert residual <= 1e-12 * max(1.0, tau)


@pytest.mark.parametrize("tau", [1.0, 1e3])
def test_incremental_itoh_abe_decreases_loss(any_network, tau: float) -> None:
    network, kernels = any_network
    options = StepperOptions(step=tau, max_steps=4, tol=1e-12)
    result, choice = train_network(kernels, "itoh-abe", options)
    assert choice == "coordinate"
    losses = [kernels.loss(network.initial_point), *result.history.loss]
    assert result.steps == 4
    assert all(after < before for before, after in zip(losses, losses[1:]))
    # With every scalar equation solved, the step lowers the loss by |y - x|^2 / tau.
    assert max(abs(r) for r in result.history.energy_residual) <= 1e-10 * losses[0]


@pytest.mark.parametrize("name", ["saturating", "smooth_regression"])
def test_network_module_defines_names_once(request, name: str) -> None:
    # The incremental kernels come from a second template, so a name it shares with
    # network.py.jinja would silently replace the other definition.
    network, _ = request.getfixturevalue(name)
    tree = ast.parse(render_files(network)["kernels.py"])
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [target.id for target in node.targets if isinstance(target, ast.Name)]
    duplicates = sorted({entry for entry in names if names.count(entry) > 1})
    assert duplicates == []
