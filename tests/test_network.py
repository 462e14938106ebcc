"""Network kernels, matrix-free discrete gradients and the Newton-Krylov stepper."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dgcodegen as dg
from conftest import EXAMPLES, GENERATED
from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.errors import SpecError
from dgcodegen.krylov import KrylovOptions, newton_krylov_descent
from dgcodegen.matrix_free import MatrixFreeKernels, relative_identity_error
from dgcodegen.network_cli import train_network
from dgcodegen.runtime import compile_network, load_kernels
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
    options = StepperOptions(step=tau, max_steps=6, tol=1e-12)
    result = newton_krylov_descent(kernels, method, network.initial_point, options)
    losses = [kernels.loss(network.initial_point), *result.history.loss]
    assert all(after < before for before, after in zip(losses, losses[1:]))
    assert result.steps == 6
    # Gonzalez satisfies the identity exactly; the mean value only to its quadrature error,
    # which grows with the step length |y - x|.
    bound = 1e-9 if method == "gonzalez" else 1e-5
    assert max(abs(r) for r in result.history.energy_residual) <= bound * losses[0]


def test_krylov_matches_dense_newton(classifier) -> None:
    network, kernels = classifier
    options = StepperOptions(step=5.0, max_steps=5, tol=1e-12)
    dense, dense_choice = train_network(kernels, "gonzalez", options, "dense")
    krylov, krylov_choice = train_network(kernels, "gonzalez", options, "krylov")
    assert (dense_choice, krylov_choice) == ("dense", "krylov")
    assert np.max(np.abs(dense.x - krylov.x)) <= 1e-8


def test_jacobi_preconditioner_gives_same_steps(classifier) -> None:
    network, kernels = classifier
    options = StepperOptions(step=20.0, max_steps=3, tol=1e-12)
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
