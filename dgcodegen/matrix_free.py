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
each Newton iterate and at the accepted point, and several of these coincide."""

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
        self._memo: dict[bytes, tuple[float, Vector]] = {}
        self._loss_memo: dict[bytes, float] = {}

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
            _remember(self._loss_memo, key, float(self.kernels.loss(theta, *self.data)))
        return self._loss_memo[key]

    def loss_gradient(self, theta: Vector) -> tuple[float, Vector]:
        """Return the loss and its gradient; the gradient is read-only, as it may be shared."""
        theta = self._vector(theta, "theta")
        key = theta.tobytes()
        if key not in self._memo:
            value, gradient = self.kernels.loss_gradient(theta, *self.data)
            gradient.setflags(write=False)
            _remember(self._memo, key, (float(value), gradient))
        return self._memo[key]

    def gradient(self, theta: Vector) -> Vector:
        return self.loss_gradient(theta)[1]

    def hvp(self, theta: Vector, v: Vector) -> Vector:
        """Return the Hessian of the loss at theta times v."""
        return self.kernels.hvp(self._vector(theta, "theta"), self._vector(v, "v"), *self.data)

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

    def coordinate_quotient(self) -> Callable[[Vector, int, float], float]:
        """Return the forward Itoh-Abe entry `quotient(point, k, t)` from loss values.

        Each call costs one loss evaluation; `V(point)` is kept while the same point object
        is passed, and `t == point[k]` costs one gradient evaluation.
        """
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


def _remember(memo: dict, key: bytes, value: Any) -> None:
    if len(memo) >= MEMO_SIZE:
        del memo[next(iter(memo))]
    memo[key] = value


def relative_identity_error(kernels: MatrixFreeKernels, method: str, x: Vector, y: Vector) -> float:
    """Return `|DG . (y - x) - (V(y) - V(x))|` relative to `max(1, |V(x)|, |V(y)|)`."""
    value = kernels.linearize(method, x, y).value
    change = kernels.loss(y) - kernels.loss(x)
    scale = max(1.0, abs(kernels.loss(x)), abs(kernels.loss(y)))
    return abs(float(value @ (y - x)) - change) / scale if math.isfinite(change) else math.inf
