"""Discrete gradients and their Jacobian-vector products from loss, gradient and HVP kernels.

For models with thousands of parameters, such as the networks of `network.py`, dense
symbolic Jacobians are out of reach, so the discrete gradients are assembled at run time
from three kernels: the loss, the gradient and the Hessian-vector product (HVP).

- Gonzalez: `DG = g(m) + c d` with `d = y - x`, `m = (x + y) / 2`, `g = grad V` and
  `c = (V(y) - V(x) - g(m) . d) / |d|^2`. The identity `DG . d = V(y) - V(x)` is
  exact. Its Jacobian-vector product needs one HVP at `m` per vector.
- mean value: `DG = sum_i w_i g(x + s_i d)` with Gauss-Legendre nodes on [0, 1]. The
  quadrature is exact for polynomial losses up to degree `2 * nodes`, and otherwise the
  identity holds up to the quadrature error, which the stepper's loss check guards. Its
  Jacobian `sum_i w_i s_i H(x + s_i d)` is symmetric.

The module imports only NumPy and sibling modules that do the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .errors import SpecError
from .layout import Layout

MATRIX_FREE_METHODS = ("mean-value", "gonzalez")
"""Discrete gradients available from loss, gradient and HVP kernels with Jacobian-vector
products. The forward Itoh-Abe discrete gradient is available through `coordinate_quotient`,
for the coordinate-wise solve, which needs no Jacobian."""

QUADRATURE_NODES = 8
"""Gauss-Legendre nodes of the mean-value discrete gradient: exact for polynomial losses of
degree up to 16 along the segment."""

ROUNDING_FACTOR = 64.0
"""The Gonzalez correction is dropped when `|V(y) - V(x) - g(m) . d|` is below this many
units of rounding of its terms, because it is then rounding noise divided by `|d|^2`."""

MEMO_SIZE = 4
"""Points whose loss and gradient are kept. A Newton-Krylov step evaluates both at `x`, at
each Newton iterate and at the accepted point, and several of these coincide. When the
forward-pass states fit in STATE_LIMIT_BYTES, the memo grows to hold the quadrature
points of the mean value as well (see `MatrixFreeKernels`)."""

STATE_LIMIT_BYTES = 256 * 2**20
"""Maximum memory that forward-pass states for Hessian-vector products may take; above it,
each product repeats the forward pass rather than hold the memory."""

INCREMENTAL_KERNELS = (
    "coordinate_state",
    "coordinate_change",
    "coordinate_commit",
    "coordinate_derivative",
)
"""Kernels of network modules that `CoordinateState` uses for the Itoh-Abe step."""

Vector = np.ndarray


@dataclass
class Linearization:
    """A discrete gradient at `(x, y)` and its Jacobian with respect to `y`, as products.

    Attributes:
        value: `DG(x, y)`.
        jvp: `v -> (d DG(x, y) / d y) v`.
        symmetric: True when that Jacobian is a symmetric matrix.
    """

    value: Vector
    jvp: Callable[[Vector], Vector]
    symmetric: bool


class MatrixFreeKernels:
    """Loss, gradient and HVP kernels with the data bound, and discrete gradients built on them.

    Args:
        kernels: a module with `loss(theta, *data)`, `loss_gradient(theta, *data)` returning
            the loss and its gradient, and `hvp(theta, v, *data)`.
        layout: names, shapes and starting point of the problem.
        data: arrays by column name, checked against `layout`.
        nodes: Gauss-Legendre nodes of the mean-value discrete gradient.
    """

    def __init__(
        self,
        kernels: ModuleType,
        layout: Layout,
        data: dict[str, Any],
        nodes: int = QUADRATURE_NODES,
    ) -> None:
        self.kernels = kernels
        self.layout = layout
        validated = layout.validate_data(data)
        self.data = tuple(validated[name] for name, _ in layout.columns)
        self.n = layout.size
        points, weights = np.polynomial.legendre.leggauss(nodes)
        self.nodes = (points + 1.0) / 2.0
        self.weights = weights / 2.0
        self._memo: dict[bytes, tuple[float, Vector, np.ndarray | None]] = {}
        self._loss_memo: dict[bytes, float] = {}
        self._state: tuple[bytes, np.ndarray] | None = None
        width = getattr(kernels, "STATE_WIDTH", None)
        rows = len(self.data[0]) if self.data else 0
        state_bytes = rows * (width or 0) * 8
        self._keeps_state = width is not None and state_bytes <= STATE_LIMIT_BYTES
        # Network kernels can return the forward pass with the gradient. Kept beside each
        # memoised gradient, it spares the Hessian-vector products at that point their own
        # forward pass: Gonzalez multiplies at the midpoint and the mean value at its
        # quadrature points, whose gradients the discrete gradient needs anyway.
        self._memo_size = MEMO_SIZE
        self._fused = False
        if width is not None and hasattr(kernels, "loss_gradient_state"):
            capacity = max(MEMO_SIZE, nodes + 3)
            if state_bytes * capacity <= STATE_LIMIT_BYTES:
                self._memo_size, self._fused = capacity, True

    def _vector(self, value: Vector, label: str) -> Vector:
        array = np.ascontiguousarray(value, dtype=np.float64)
        if array.shape != (self.n,):
            raise SpecError(f"{label} has shape {array.shape}, expected ({self.n},)")
        return array

    def loss(self, theta: Vector) -> float:
        theta = self._vector(theta, "theta")
        key = theta.tobytes()
        if key in self._memo:
            return self._memo[key][0]
        if key not in self._loss_memo:
            value = float(self.kernels.loss(theta, *self.data))
            _remember(self._loss_memo, key, value, self._memo_size)
        return self._loss_memo[key]

    def loss_gradient(self, theta: Vector) -> tuple[float, Vector]:
        """Return the loss and its gradient; the gradient is read-only, as it may be shared."""
        theta = self._vector(theta, "theta")
        key = theta.tobytes()
        if key not in self._memo:
            state = None
            if self._fused:
                value, gradient, state = self.kernels.loss_gradient_state(theta, *self.data)
            else:
                value, gradient = self.kernels.loss_gradient(theta, *self.data)
            gradient.setflags(write=False)
            _remember(self._memo, key, (float(value), gradient, state), self._memo_size)
        value, gradient, _ = self._memo[key]
        return value, gradient

    def gradient(self, theta: Vector) -> Vector:
        return self.loss_gradient(theta)[1]

    def hvp(self, theta: Vector, v: Vector) -> Vector:
        """Return the Hessian of the loss at theta times v.

        Network kernels keep the forward pass at the last theta, so a Krylov solve, which
        multiplies many vectors at one point, runs it once, and not at all at a point
        whose gradient is memoised with its forward pass.
        """
        theta, v = self._vector(theta, "theta"), self._vector(v, "v")
        if not self._keeps_state:
            return self.kernels.hvp(theta, v, *self.data)
        key = theta.tobytes()
        memoised = self._memo.get(key)
        if memoised is not None and memoised[2] is not None:
            return self.kernels.hvp_from_state(theta, v, memoised[2], self.data[0])
        if self._state is None or self._state[0] != key:
            self._state = (key, self.kernels.hvp_state(theta, *self.data))
        return self.kernels.hvp_from_state(theta, v, self._state[1], self.data[0])

    def hessian(self, theta: Vector) -> Vector:
        """Return the dense Hessian, one HVP per column; for small problems only."""
        identity = np.eye(self.n)
        columns = [self.hvp(theta, identity[k]) for k in range(self.n)]
        return np.column_stack(columns)

    def linearize(self, method: str, x: Vector, y: Vector) -> Linearization:
        """Return `DG(x, y)` of the named method and its Jacobian-vector product."""
        x, y = self._vector(x, "x"), self._vector(y, "y")
        if method == "gonzalez":
            return self._gonzalez(x, y)
        if method == "mean-value":
            return self._mean_value(x, y)
        raise SpecError(
            f"the discrete gradient {method!r} is not available matrix-free; choose one of "
            f"{', '.join(MATRIX_FREE_METHODS)}"
        )

    def discrete_gradient(self, method: str) -> Callable[[Vector, Vector], Vector]:
        """Return `DG(x, y)` of the named method."""
        return lambda x, y: self.linearize(method, x, y).value

    def jacobian(self, method: str) -> Callable[[Vector, Vector], Vector]:
        """Return the dense `d DG(x, y) / d y`, one product per column; for small problems."""

        def dense(x: Vector, y: Vector) -> Vector:
            product = self.linearize(method, x, y).jvp
            identity = np.eye(self.n)
            return np.column_stack([product(identity[k]) for k in range(self.n)])

        return dense

    def coordinate_quotient(
        self, incremental: bool = True
    ) -> Callable[[Vector, int, float], float]:
        """Return the forward Itoh-Abe entry `quotient(point, k, t)` from loss values.

        When the kernels have the incremental kernels of a network (`INCREMENTAL_KERNELS`)
        and `incremental` is True, a call costs a pass over the layers from coordinate k's
        layer on (see `CoordinateState`). Otherwise each call costs one loss evaluation;
        `V(point)` is kept while the same point object is passed, and `t == point[k]` costs
        one gradient evaluation.
        """
        if incremental and all(hasattr(self.kernels, name) for name in INCREMENTAL_KERNELS):
            return self._incremental_quotient()
        cached: dict[str, Any] = {"point": None, "value": 0.0, "gradient": None}

        def quotient(point: Vector, k: int, t: float) -> float:
            if cached["point"] is not point:
                cached.update(point=point, value=self.loss(point), gradient=None)
            h = t - point[k]
            if h == 0.0:
                if cached["gradient"] is None:
                    cached["gradient"] = self.gradient(point)
                return float(cached["gradient"][k])
            trial = point.copy()
            trial[k] = t
            return (self.loss(trial) - cached["value"]) / h

        return quotient

    def _incremental_quotient(self) -> Callable[[Vector, int, float], float]:
        """Return `quotient(point, k, t)` computed from a `CoordinateState` that follows point.

        `coordinate_step` passes points that differ from the previous one in the coordinate
        it has just solved, which costs one commit. Every call compares the whole point with
        the state's, so a point changed in place or out of order only costs a rebuild.
        """
        state: CoordinateState | None = None

        def quotient(point: Vector, k: int, t: float) -> float:
            nonlocal state
            point = self._vector(point, "point")
            if state is None:
                state = CoordinateState(self, point)
            else:
                # A step starts at coordinate 0, so a move there rebuilds the state, and the
                # rounding of commits never builds up over more than one step.
                state.follow(point, allow_commit=k > 0)
            h = t - point[k]
            if h == 0.0:
                return state.derivative(k)
            return state.change(k, t) / h

        return quotient

    def _gonzalez(self, x: Vector, y: Vector) -> Linearization:
        d = y - x
        squared = float(d @ d)
        midpoint = 0.5 * (x + y)
        value_m, gradient_m = self.loss_gradient(midpoint)
        if squared == 0.0:
            return Linearization(gradient_m, lambda v: 0.5 * self.hvp(midpoint, v), False)
        value_x = self.loss(x)
        value_y, gradient_y = self.loss_gradient(y)
        slope = float(gradient_m @ d)
        numerator = value_y - value_x - slope
        noise = np.finfo(float).eps * (abs(value_x) + abs(value_y) + abs(slope))
        if abs(numerator) <= ROUNDING_FACTOR * noise:
            # The correction is O(|d|^3) and below rounding, so the midpoint gradient
            # satisfies the identity to rounding and keeps the map smooth.
            return Linearization(gradient_m, lambda v: 0.5 * self.hvp(midpoint, v), False)
        c = numerator / squared
        value = gradient_m + c * d

        def jvp(v: Vector) -> Vector:
            half_hessian_v = 0.5 * self.hvp(midpoint, v)
            change = (gradient_y - gradient_m) @ v - half_hessian_v @ d - 2.0 * c * (d @ v)
            return half_hessian_v + c * v + (change / squared) * d

        return Linearization(value, jvp, False)

    def _mean_value(self, x: Vector, y: Vector) -> Linearization:
        d = y - x
        points = [x + s * d for s in self.nodes]
        value = np.zeros(self.n)
        for weight, point in zip(self.weights, points):
            value += weight * self.gradient(point)

        def jvp(v: Vector) -> Vector:
            product = np.zeros(self.n)
            for weight, s, point in zip(self.weights, self.nodes, points):
                product += (weight * s) * self.hvp(point, v)
            return product

        return Linearization(value, jvp, True)


class CoordinateState:
    """Per-sample activations of a network at one point, moved one coordinate at a time.

    Wraps the kernels of `templates/network_coordinate.py.jinja`. The loss change or the
    partial derivative for coordinate k costs a pass over the samples and the layers from
    k's layer on, instead of a full loss evaluation. Changes are computed in forms free of
    cancellation, so a small `change(k, t)` does not carry the rounding error of the loss.

    Args:
        bound: network kernels with `INCREMENTAL_KERNELS` and the data bound.
        theta: the starting point; the state keeps a copy.
    """

    def __init__(self, bound: MatrixFreeKernels, theta: Vector) -> None:
        self._bound = bound
        self._kernels = bound.kernels
        self.rebuild(theta)

    def rebuild(self, theta: Vector) -> None:
        """Move the state to theta with a full forward pass."""
        self.theta = np.array(self._bound._vector(theta, "theta"))
        self.value = self._bound.loss(self.theta)
        self.activations = self._kernels.coordinate_state(self.theta, self._bound.data[0])
        self.commits = 0

    def change(self, k: int, t: float) -> float:
        """Return `V(theta with theta[k] = t) - V(theta)` without moving the state."""
        index = self._index(k)
        return float(
            self._kernels.coordinate_change(
                self.theta, self.activations, index, float(t), *self._bound.data
            )
        )

    def loss(self, k: int, t: float) -> float:
        """Return the loss at theta with theta[k] = t without moving the state."""
        return self.value + self.change(k, t)

    def derivative(self, k: int) -> float:
        """Return the partial derivative of the loss by theta[k] at theta."""
        index = self._index(k)
        return float(
            self._kernels.coordinate_derivative(
                self.theta, self.activations, index, *self._bound.data
            )
        )

    def commit(self, k: int, t: float) -> None:
        """Set theta[k] = t and update the activations from k's layer on."""
        index = self._index(k)
        self.value += float(
            self._kernels.coordinate_commit(
                self.theta, self.activations, index, float(t), *self._bound.data
            )
        )
        self.commits += 1

    def follow(self, point: Vector, allow_commit: bool = True) -> None:
        """Move the state to point: one commit when exactly one coordinate differs, else a rebuild.

        Rebuilds also replace commits after `n` of them, which bounds the rounding that
        incremental updates add to the activations.
        """
        moved = np.flatnonzero(point != self.theta)
        if moved.size == 0:
            return
        if allow_commit and moved.size == 1 and self.commits < self._bound.n:
            index = int(moved[0])
            self.commit(index, float(point[index]))
        else:
            self.rebuild(point)

    def _index(self, k: int) -> int:
        if not 0 <= k < self._bound.n:
            raise IndexError(f"coordinate {k} is out of range for {self._bound.n} parameters")
        return int(k)


def _remember(memo: dict, key: bytes, value: Any, size: int) -> None:
    if len(memo) >= size:
        del memo[next(iter(memo))]
    memo[key] = value


def relative_identity_error(kernels: MatrixFreeKernels, method: str, x: Vector, y: Vector) -> float:
    """Return `|DG . (y - x) - (V(y) - V(x))|` relative to `max(1, |V(x)|, |V(y)|)`."""
    value = kernels.linearize(method, x, y).value
    change = kernels.loss(y) - kernels.loss(x)
    scale = max(1.0, abs(kernels.loss(x)), abs(kernels.loss(y)))
    return abs(float(value @ (y - x)) - change) / scale if math.isfinite(change) else math.inf
