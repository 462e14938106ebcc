"""Layered models: dense networks declared by their layers, not weight by weight.

A `Network` is a chain of `Dense` layers `a_l = act_l(W_l a_(l-1) + b_l)` with a loss on the
last layer's output. Its kernels are rendered from `templates/network.py.jinja` as loops
over the layer sizes, with the gradient by backpropagation and Hessian-vector products by
Pearlmutter's R-operator, so the generated code and its compile time do not grow with the
number of weights. Discrete gradients of a network are built from these kernels in
`matrix_free.py`, and implicit steps are solved by Newton-Krylov in `krylov.py`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SpecError
from .layout import Layout
from .names import check_problem_name

ACTIVATIONS = ("identity", "tanh", "relu", "sigmoid", "softplus")
"""Activation functions of a `Dense` layer."""

LOSSES = ("softmax_cross_entropy", "squared_error")
"""Losses on the network output: softmax cross-entropy against integer class labels in
the data column `label`, or half the squared error against the data column `target`."""

INITIALIZATIONS = ("glorot", "zeros")


@dataclass(frozen=True)
class Dense:
    """A dense layer `act(W a + b)` with `W` of shape (outputs, inputs)."""

    inputs: int
    outputs: int
    activation: str = "identity"

    def __post_init__(self) -> None:
        for label, value in (("inputs", self.inputs), ("outputs", self.outputs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"invalid Dense {label} {value!r}: expected an integer >= 1")
        if self.activation not in ACTIVATIONS:
            raise SpecError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )


@dataclass
class Network:
    """A dense network trained on data, with an optional L2 penalty on all parameters.

    Args:
        layers: the layers, input first; each layer's `inputs` equals the previous
            layer's `outputs`.
        loss: "softmax_cross_entropy" (data columns `x` and `label`, labels 0 to
            classes - 1) or "squared_error" (data columns `x` and `target`).
        weight_decay: lambda of the penalty `lambda / 2 * |theta|^2`, >= 0.
        reduction: "mean" or "sum" over samples.
        data: default data by column name.
        initial: "glorot" (uniform Glorot weights drawn with `seed`, zero biases), "zeros",
            or a dict of arrays by parameter name (`W1`, `b1`, `W2`, ...).
        seed: seed of the Glorot draw.
        name: problem name; the spec file's stem when None.
    """

    layers: list[Dense]
    loss: str = "softmax_cross_entropy"
    weight_decay: float = 0.0
    reduction: str = "mean"
    data: dict[str, Any] | None = None
    initial: str | dict[str, Any] = "glorot"
    seed: int = 0
    name: str | None = None
    default_data: dict[str, np.ndarray] | None = field(init=False, default=None)
    initial_point: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        if not self.layers or not all(isinstance(layer, Dense) for layer in self.layers):
            raise SpecError("layers must be a non-empty list of dg.Dense layers")
        for index, (before, after) in enumerate(zip(self.layers, self.layers[1:]), start=1):
            if before.outputs != after.inputs:
                raise SpecError(
                    f"layer {index + 1} takes {after.inputs} inputs, but layer {index} gives "
                    f"{before.outputs} outputs; make them equal"
                )
        if self.loss not in LOSSES:
            raise SpecError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.loss == "softmax_cross_entropy" and self.layers[-1].outputs < 2:
            raise SpecError("softmax_cross_entropy needs a last layer with at least 2 outputs")
        if self.reduction not in ("sum", "mean"):
            raise SpecError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        decay = self.weight_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay >= 0:
            raise SpecError(f"invalid weight_decay {decay!r}: expected a finite number >= 0")
        if not math.isfinite(decay):
            raise SpecError(f"invalid weight_decay {decay!r}: expected a finite number >= 0")
        self.weight_decay = float(decay)
        if self.name is not None:
            check_problem_name(self.name)
        self.initial_point = self._initial_vector()
        if self.data is not None:
            self.default_data = self.validate_data(self.data)

    @property
    def parameters(self) -> list[tuple[str, tuple[int, ...]]]:
        """`(name, shape)` of `W1, b1, W2, b2, ...`, in the order of the parameter vector."""
        result = []
        for index, layer in enumerate(self.layers, start=1):
            result.append((f"W{index}", (layer.outputs, layer.inputs)))
            result.append((f"b{index}", (layer.outputs,)))
        return result

    @property
    def columns(self) -> list[tuple[str, tuple[int, ...]]]:
        target = ("label", ()) if self.loss == "softmax_cross_entropy" else None
        if target is None:
            target = ("target", (self.layers[-1].outputs,))
        return [("x", (self.layers[0].inputs,)), target]

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for _, shape in self.parameters)

    @property
    def has_data(self) -> bool:
        return True

    @property
    def layout(self) -> Layout:
        return Layout(
            name=self.name or "",
            parameters=tuple(self.parameters),
            columns=tuple(self.columns),
            initial=tuple(float(v) for v in self.initial_point),
        )

    def validate_data(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check data against the layout, and labels against the number of classes."""
        result = self.layout.validate_data(arrays)
        if self.loss == "softmax_cross_entropy":
            labels = result["label"][:, 0]
            classes = self.layers[-1].outputs
            bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels >= classes))
            if bad.size:
                raise SpecError(
                    f"label {float(labels[bad[0]])!r} at row {bad[0]} is not a class index 0 to "
                    f"{classes - 1}; labels must be integers below the last layer's outputs"
                )
        return result

    def split_parameters(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        return self.layout.split_parameters(vector)

    def join_parameters(self, values: dict[str, Any]) -> np.ndarray:
        return self.layout.join_parameters(values)

    def _initial_vector(self) -> np.ndarray:
        if isinstance(self.initial, dict):
            layout = Layout("", tuple(self.parameters), (), ())
            vector = layout.join_parameters(self.initial)
            if not np.all(np.isfinite(vector)):
                raise SpecError("the initial parameters contain nan or inf")
            return vector
        if self.initial not in INITIALIZATIONS:
            raise SpecError(
                f"unknown initial {self.initial!r}; use 'glorot', 'zeros' or a dict of arrays"
            )
        if self.initial == "zeros":
            return np.zeros(self.size)
        generator = np.random.default_rng(self.seed)
        parts = []
        for layer in self.layers:
            limit = math.sqrt(6.0 / (layer.inputs + layer.outputs))
            weights = generator.uniform(-limit, limit, size=(layer.outputs, layer.inputs))
            parts += [weights.ravel(), np.zeros(layer.outputs)]
        return np.concatenate(parts)

    def fingerprint(self) -> str:
        """Return a hash of everything that determines the generated code."""
        text = repr(
            (
                [(layer.inputs, layer.outputs, layer.activation) for layer in self.layers],
                self.loss,
                repr(self.weight_decay),
                self.reduction,
                self.layout.initial,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()


def layer_plans(network: Network) -> list[dict[str, Any]]:
    """Sizes, parameter offsets and activation code of each layer, for the template."""
    plans, offset, column = [], 0, 0
    for index, layer in enumerate(network.layers, start=1):
        weights = offset
        biases = weights + layer.outputs * layer.inputs
        offset = biases + layer.outputs
        # Columns of the layer's z and a in the forward-pass state of `hvp_state`.
        state_z, state_a = column, column + layer.outputs
        column += 2 * layer.outputs
        plans.append(
            {
                "index": index,
                "inputs": layer.inputs,
                "outputs": layer.outputs,
                "weights": weights,
                "biases": biases,
                "activation": layer.activation,
                "state_z": state_z,
                "state_a": state_a,
            }
        )
    return plans
