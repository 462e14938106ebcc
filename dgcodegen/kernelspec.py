"""Describe each kernel as blocks of per-sample quantities and a combination.

A kernel sums blocks (a scalar, an n-vector or an n x n matrix) over samples, adds
the data-free term's blocks, and applies a fixed *combination* to the totals. The
combinations are the identity for every kernel except Gonzalez's, whose correction
`(V(y) - V(x) - grad V(m) . d) / |d|^2` is a nonlinear function of the totals.

A block's per-sample value is dense entries plus, for each ridge term `l(z)` of the
loss, `coefficient * slope` (vector) or `coefficient * slope slope^T` (matrix), where
`slope = grad z`. Kernels evaluate the ridge parts in loops, so their code grows with
the parameter count n, not with n^2.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import sympy as sp

from . import itoh_abe
from .calculus import diff
from .derive import Derivation, _flatten

log = logging.getLogger("dgcodegen")


@dataclass
class Argument:
    """A kernel argument: a flat float64 vector (or scalar) and the symbols it binds."""

    name: str
    symbols: list[sp.Symbol]
    scalar: bool = False


@dataclass
class Block:
    """One summed quantity: `kind` is "scalar", "vector" or "matrix"."""

    kind: str
    dense: list[sp.Expr]
    ridge_coefficients: list[tuple[int, sp.Expr]] = field(default_factory=list)
    coordinate_paths: list[tuple[int, str, float]] = field(default_factory=list)
    """Itoh-Abe terms `(ridge, order, weight)`, summed along the coordinate path of `order`."""


@dataclass
class KernelSpec:
    """Symbolic description of one kernel before lowering."""

    name: str
    arguments: list[Argument]
    shape: tuple[int, ...]
    sample_blocks: list[Block]
    free_blocks: list[Block]
    combination: str
    doc: str


class KernelBuilder:
    """Build the kernel specs of one derivation."""

    def __init__(self, derivation: Derivation) -> None:
        self.dv = derivation
        self.n = derivation.n
        self.theta_argument = [Argument("theta", derivation.theta)]
        self.pair_arguments = [Argument("x", derivation.x), Argument("y", derivation.y)]
        self.series_arguments = self.pair_arguments + [
            Argument("u", derivation.u),
            Argument("r", [derivation.r], scalar=True),
        ]

    def _spec(self, name, arguments, shape, blocks, combination, doc) -> KernelSpec:
        """Build a spec from `blocks(part, with_ridges)`, which returns a list of Blocks."""
        return KernelSpec(
            name,
            arguments,
            shape,
            blocks("sample", True),
            blocks("free", False),
            combination,
            doc,
        )

    def _ridge(self, with_ridges: bool, coefficient) -> list[tuple[int, sp.Expr]]:
        if not with_ridges:
            return []
        return [(k, coefficient(ridge)) for k, ridge in enumerate(self.dv.ridges)]

    def _scalar(self, part: str, with_ridges: bool, dense, ridge_value) -> Block:
        value = dense(part)
        if with_ridges:
            value += sum((ridge_value(ridge) for ridge in self.dv.ridges), sp.S.Zero)
        return Block("scalar", [value])

    # Point kernels

    def loss(self) -> KernelSpec:
        dv = self.dv

        def blocks(part: str, with_ridges: bool) -> list[Block]:
            return [
                self._scalar(
                    part,
                    with_ridges,
                    lambda p: dv.parts[p],
                    lambda ridge: dv.ridge_derivative(ridge, 0, dv.theta),
                )
            ]

        return self._spec("loss", self.theta_argument, (), blocks, "identity", "Loss V(theta).")

    def gradient(self) -> KernelSpec:
        dv = self.dv

        def blocks(part: str, with_ridges: bool) -> list[Block]:
            ridge = self._ridge(with_ridges, lambda r: dv.ridge_derivative(r, 1, dv.theta))
            return [Block("vector", dv.gradient(part), ridge)]

        doc = "Gradient of V at theta."
        return self._spec("gradient", self.theta_argument, (self.n,), blocks, "identity", doc)

    def loss_gradient(self) -> KernelSpec:
        """Loss and gradient from one pass over the data, sharing subexpressions."""
        loss, gradient = self.loss(), self.gradient()

        def blocks(part: str, with_ridges: bool) -> list[Block]:
            source = (loss, gradient)
            if part == "sample":
                return [block for spec in source for block in spec.sample_blocks]
            return [block for spec in source for block in spec.free_blocks]

        shape = (self.n + 1,)
        doc = "Loss V(theta) and its gradient, as a tuple."
        return self._spec("loss_gradient", self.theta_argument, shape, blocks, "loss_gradient", doc)

    def hessian(self) -> KernelSpec:
        dv = self.dv

        def blocks(part: str, with_ridges: bool) -> list[Block]:
            ridge = self._ridge(with_ridges, lambda r: dv.ridge_derivative(r, 2, dv.theta))
            return [Block("matrix", _flatten(dv.hessian(part)), ridge)]

        shape = (self.n, self.n)
        return self._spec(
            "hessian", self.theta_argument, shape, blocks, "identity", "Hessian of V."
        )

    # Mean value

    def mean_value(self) -> list[KernelSpec]:
        dv = self.dv

        def dg_blocks(part: str, with_ridges: bool) -> list[Block]:
            ridge = self._ridge(with_ridges, lambda r: dv.ridge_quotients(r)[0])
            return [Block("vector", dv.mean_value(part)[0], ridge)]

        def jac_blocks(part: str, with_ridges: bool) -> list[Block]:
            ridge = self._ridge(with_ridges, lambda r: dv.ridge_quotients(r)[1])
            return [Block("matrix", _flatten(dv.mean_value(part)[1]), ridge)]

        for ridge in dv.ridges:
            dv.mean_value_report.methods.append(f"divided difference: {ridge.divided.profile}")
        return [
            self._spec(
                "dg_mean_value",
                self.pair_arguments,
                (self.n,),
                dg_blocks,
                "identity",
                "Mean-value discrete gradient: integral of grad V(x + s (y - x)) over [0, 1].",
            ),
            self._spec(
                "jac_mean_value",
                self.pair_arguments,
                (self.n, self.n),
                jac_blocks,
                "identity",
                "Jacobian in y of the mean-value discrete gradient.",
            ),
        ]

    # Gonzalez

    def _difference(self, part: str, with_ridges: bool) -> Block:
        dv = self.dv
        return self._scalar(
            part,
            with_ridges,
            lambda p: dv.at(dv.parts[p], dv.y) - dv.at(dv.parts[p], dv.x),
            lambda ridge: dv.ridge_derivative(ridge, 0, dv.y) - dv.ridge_derivative(ridge, 0, dv.x),
        )

    def _gradient_at(self, part: str, with_ridges: bool, point: list[sp.Expr]) -> Block:
        dv = self.dv
        ridge = self._ridge(with_ridges, lambda r: dv.ridge_derivative(r, 1, point))
        return Block("vector", [dv.at(g, point) for g in dv.gradient(part)], ridge)

    def _hessian_at_midpoint(self, part: str, with_ridges: bool) -> Block:
        dv = self.dv
        ridge = self._ridge(with_ridges, lambda r: dv.ridge_derivative(r, 2, dv.m))
        return Block("matrix", [dv.at(h, dv.m) for h in _flatten(dv.hessian(part))], ridge)

    def _series(self, part: str, with_ridges: bool, order: int, jacobian: bool) -> list[Block]:
        """Blocks of `P = D^order V(m)[u]^order / (order! 2^(order - 1))` and its derivatives.

        For a ridge term `P = l^(order)(z(m)) (a . u)^order / (order! 2^(order - 1))` with
        `a = grad z`, so `dP/dy = l^(order + 1)(z(m)) (a . u)^order a / (2 order! 2^(order - 1))`
        and `dP/du = l^(order)(z(m)) order (a . u)^(order - 1) a / (order! 2^(order - 1))`.
        """
        dv = self.dv
        scale = sp.factorial(order) * 2 ** (order - 1)

        def along(ridge) -> sp.Expr:
            return sum((a * u for a, u in zip(ridge.slope, dv.u)), sp.S.Zero)

        p_dense = dv.directional(part, order)
        value = self._scalar(
            part,
            with_ridges,
            lambda p: p_dense,
            lambda r: dv.ridge_derivative(r, order, dv.m) * along(r) ** order / scale,
        )
        if not jacobian:
            return [value]
        grad_y = Block(
            "vector",
            [diff(p_dense, yi) for yi in dv.y],
            self._ridge(
                with_ridges,
                lambda r: dv.ridge_derivative(r, order + 1, dv.m) * along(r) ** order / (2 * scale),
            ),
        )
        grad_u = Block(
            "vector",
            [diff(p_dense, ui) for ui in dv.u],
            self._ridge(
                with_ridges,
                lambda r: (
                    dv.ridge_derivative(r, order, dv.m) * order * along(r) ** (order - 1) / scale
                ),
            ),
        )
        return [value, grad_y, grad_u]

    def gonzalez(self) -> list[KernelSpec]:
        dv, n = self.dv, self.n

        def direct(part: str, with_ridges: bool) -> list[Block]:
            return [self._difference(part, with_ridges), self._gradient_at(part, with_ridges, dv.m)]

        def series(part: str, with_ridges: bool) -> list[Block]:
            blocks = [self._gradient_at(part, with_ridges, dv.m)]
            for order in (3, 5):
                blocks += self._series(part, with_ridges, order, jacobian=False)
            return blocks

        def jac_direct(part: str, with_ridges: bool) -> list[Block]:
            return direct(part, with_ridges) + [
                self._gradient_at(part, with_ridges, dv.y),
                self._hessian_at_midpoint(part, with_ridges),
            ]

        def jac_series(part: str, with_ridges: bool) -> list[Block]:
            blocks = [self._hessian_at_midpoint(part, with_ridges)]
            for order in (3, 5):
                blocks += self._series(part, with_ridges, order, jacobian=True)
            return blocks

        pair, series_args = self.pair_arguments, self.series_arguments
        return [
            self._spec(
                "dg_gonzalez_direct",
                pair,
                (n,),
                direct,
                "gonzalez_direct_dg",
                "Gonzalez discrete gradient, direct form of the correction.",
            ),
            self._spec(
                "dg_gonzalez_series",
                series_args,
                (n,),
                series,
                "gonzalez_series_dg",
                "Gonzalez discrete gradient, series form of the correction.",
            ),
            self._spec(
                "jac_gonzalez_direct",
                pair,
                (n, n),
                jac_direct,
                "gonzalez_direct_jac",
                "Jacobian in y of the Gonzalez discrete gradient, direct form.",
            ),
            self._spec(
                "jac_gonzalez_series",
                series_args,
                (n, n),
                jac_series,
                "gonzalez_series_jac",
                "Jacobian in y of the Gonzalez discrete gradient, series form.",
            ),
        ]

    # Itoh-Abe

    def itoh_abe(self) -> list[KernelSpec]:
        dv, n = self.dv, self.n
        specs = []
        variants = (("itoh_abe", ("forward",)), ("itoh_abe_symmetric", itoh_abe.ORDERS))
        for name, orders in variants:
            weight = 1.0 / len(orders)

            def paths(with_ridges: bool, orders=orders, weight=weight) -> list:
                if not with_ridges:
                    return []
                return [(k, order, weight) for k in range(len(dv.ridges)) for order in orders]

            def dg_blocks(part: str, with_ridges: bool, orders=orders, paths=paths) -> list[Block]:
                values = [dv.itoh_abe(part, order)[0] for order in orders]
                dense = [sum(entries, sp.S.Zero) / len(orders) for entries in zip(*values)]
                return [Block("vector", dense, [], paths(with_ridges))]

            def jac_blocks(part: str, with_ridges: bool, orders=orders, paths=paths) -> list[Block]:
                values = [_flatten(dv.itoh_abe(part, order)[1]) for order in orders]
                dense = [sum(entries, sp.S.Zero) / len(orders) for entries in zip(*values)]
                return [Block("matrix", dense, [], paths(with_ridges))]

            label = "Itoh-Abe" if len(orders) == 1 else "Symmetrized Itoh-Abe"
            specs.append(
                self._spec(
                    f"dg_{name}",
                    self.pair_arguments,
                    (n,),
                    dg_blocks,
                    "identity",
                    f"{label} discrete gradient: coordinate increments of V.",
                )
            )
            specs.append(
                self._spec(
                    f"jac_{name}",
                    self.pair_arguments,
                    (n, n),
                    jac_blocks,
                    "identity",
                    f"Jacobian in y of the {label} discrete gradient.",
                )
            )
        return specs

    def all(self) -> list[KernelSpec]:
        """Return every kernel the runtime needs, in a fixed order."""
        started = time.perf_counter()
        kernels = [self.loss(), self.gradient(), self.loss_gradient(), self.hessian()]
        kernels += self.mean_value()
        kernels += self.gonzalez()
        kernels += self.itoh_abe()
        log.info("derived %d kernels in %.2f s", len(kernels), time.perf_counter() - started)
        for line in self.dv.mean_value_report.methods:
            log.info("mean value by %s", line)
        return kernels
