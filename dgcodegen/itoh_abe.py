"""Itoh-Abe discrete gradients: coordinate increments, from function values only.

With `p_k = (y_0, ..., y_{k-1}, x_k, ..., x_{n-1})` the forward discrete gradient is

    DG_k = (V(p_{k+1}) - V(p_k)) / (y_k - x_k),

which telescopes to `DG . (y - x) = V(y) - V(x)`. The reverse order changes the last
coordinate first, and the symmetrized discrete gradient is the mean of the two.

Each quotient is a divided difference of `g_k(s) = V(p_k with coordinate k set to s)`
between `x_k` and `y_k`. For a polynomial loss SymPy cancels it exactly. Otherwise it
becomes a divided-difference helper with a series branch near `y_k = x_k`, and the
Jacobian entry `d DG_k / d y_j` is the divided difference of `d g_k / d y_j`.

A ridge term `l(z)` of the per-sample loss needs no symbolic work: along the path the
affine `z` moves by `a_j (y_j - x_j)` per coordinate, so `DG_k = a_k DD_l(z_k, z_{k+1})`
with `z_k = z(p_k)`. The kernels accumulate those prefix sums in a loop.
"""

from __future__ import annotations

import sympy as sp

from .calculus import diff
from .ridge import find_ridge

ORDERS = ("forward", "reverse")


def path_point(derivation, order: str, k: int) -> list[sp.Expr]:  # noqa: ANN001
    """Return the k-th point of the coordinate path, `k = 0` for x and `k = n` for y."""
    x, y, n = derivation.x, derivation.y, derivation.n
    if order == "forward":
        return list(y[:k]) + list(x[k:])
    return list(x[: n - k]) + list(y[n - k :])


def _coordinate(derivation, order: str, step: int) -> int:  # noqa: ANN001
    """Return the coordinate that changes between path points `step` and `step + 1`."""
    return step if order == "forward" else derivation.n - 1 - step


def explicit_discrete_gradient(derivation, expr: sp.Expr, order: str) -> list[sp.Expr]:  # noqa: ANN001
    """Return the Itoh-Abe discrete gradient of `expr` as plain quotients."""
    result = [sp.S.Zero] * derivation.n
    for step in range(derivation.n):
        k = _coordinate(derivation, order, step)
        before = derivation.at(expr, path_point(derivation, order, step))
        after = derivation.at(expr, path_point(derivation, order, step + 1))
        result[k] = (after - before) / (derivation.y[k] - derivation.x[k])
    return result


def dense_discrete_gradient(derivation, part: str, order: str):  # noqa: ANN001, ANN201
    """Return the Itoh-Abe discrete gradient of a loss part and its Jacobian in y.

    Each additive term is handled on its own: polynomial quotients are cancelled exactly,
    ridge terms `l(a . x + c)` become `a_k DD_l(z_k, z_{k+1})`, and other quotients become
    divided-difference helper calls, so the result stays finite at `y_k = x_k`.
    """
    n = derivation.n
    dg = [sp.S.Zero] * n
    jac = [[sp.S.Zero] * n for _ in range(n)]
    placeholder = sp.Symbol("z", real=True)
    for term in sp.Add.make_args(derivation.parts[part]):
        if not (term.free_symbols & set(derivation.theta)):
            continue
        if term.is_polynomial(*derivation.theta):
            _add_polynomial(derivation, term, order, dg, jac)
            continue
        ridge = find_ridge(term, derivation.theta, placeholder)
        if ridge is not None:
            _add_ridge(derivation, *ridge, placeholder, order, dg, jac)
        else:
            _add_general(derivation, term, order, dg, jac, placeholder)
    return dg, jac


def _add_polynomial(derivation, term, order, dg, jac) -> None:  # noqa: ANN001
    for step in range(derivation.n):
        k = _coordinate(derivation, order, step)
        if derivation.theta[k] not in term.free_symbols:
            continue
        before = derivation.at(term, path_point(derivation, order, step))
        after = derivation.at(term, path_point(derivation, order, step + 1))
        quotient = sp.expand(sp.cancel((after - before) / (derivation.y[k] - derivation.x[k])))
        dg[k] += quotient
        for j, yj in enumerate(derivation.y):
            jac[k][j] += diff(quotient, yj)


def _add_ridge(derivation, z, outer, placeholder, order, dg, jac) -> None:  # noqa: ANN001
    divided = derivation.divided_difference_for(outer, placeholder)
    slope = [diff(z, t) for t in derivation.theta]
    changed: list[int] = []
    for step in range(derivation.n):
        k = _coordinate(derivation, order, step)
        if slope[k] != 0:
            start = derivation.at(z, path_point(derivation, order, step))
            end = derivation.at(z, path_point(derivation, order, step + 1))
            dg[k] += slope[k] * divided.function(start, end, *divided.extra)
            at_start = divided.derivative_function(end, start, *divided.extra)
            at_end = divided.derivative_function(start, end, *divided.extra)
            for j in changed:
                jac[k][j] += slope[k] * slope[j] * (at_start + at_end)
            jac[k][k] += slope[k] ** 2 * at_end
        changed.append(k)


def _add_general(derivation, term, order, dg, jac, placeholder) -> None:  # noqa: ANN001
    s = sp.Symbol("s", real=True)
    for step in range(derivation.n):
        k = _coordinate(derivation, order, step)
        if derivation.theta[k] not in term.free_symbols:
            continue
        point = path_point(derivation, order, step)
        point[k] = s
        profile = derivation.at(term, point)
        divided = derivation.divided_difference_for(profile.xreplace({s: placeholder}), placeholder)
        arguments = (derivation.x[k], derivation.y[k], *divided.extra)
        dg[k] += divided.function(*arguments)
        for j, yj in enumerate(derivation.y):
            if j == k:
                jac[k][j] += divided.derivative_function(*arguments)
            elif yj in profile.free_symbols:
                partial = diff(profile, yj).xreplace({s: placeholder})
                entry = derivation.divided_difference_for(partial, placeholder)
                jac[k][j] += entry.function(derivation.x[k], derivation.y[k], *entry.extra)
