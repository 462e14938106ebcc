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

ORDERS = ("forward", "reverse")


def path_point(derivation, order: str, k: int) -> list[sp.Expr]:  # noqa: ANN001
    """Return the k-th point of the coordinate path, `k = 0` for x and `k = n` for y."""
    x, y, n = derivation.x, derivation.y, derivation.n
    if order == "forward":
        return list(y[:k]) + list(x[k:])
    return list(x[: n - k]) + list(y[n - k :])


def _coordinate(derivation, order: str, step: int) -> int:  # noqa: ANN001
    """The coordinate that changes between path points `step` and `step + 1`."""
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

    Polynomial quotients are cancelled exactly; other quotients become
    divided-difference helper calls, so the result stays finite at `y_k = x_k`.
    """
    expr = derivation.parts[part]
    n = derivation.n
    dg = [sp.S.Zero] * n
    jac = [[sp.S.Zero] * n for _ in range(n)]
    if not (expr.free_symbols & set(derivation.theta)):
        return dg, jac
    polynomial = expr.is_polynomial(*derivation.theta)
    s = sp.Symbol("s", real=True)
    placeholder = sp.Symbol("z", real=True)
    for step in range(n):
        k = _coordinate(derivation, order, step)
        point = path_point(derivation, order, step)
        if polynomial:
            after = derivation.at(expr, path_point(derivation, order, step + 1))
            quotient = sp.cancel(
                (after - derivation.at(expr, point)) / (derivation.y[k] - derivation.x[k])
            )
            dg[k] = sp.expand(quotient)
            jac[k] = [diff(dg[k], yj) for yj in derivation.y]
            continue
        point[k] = s
        profile = derivation.at(expr, point)
        divided = derivation.divided_difference_for(profile.xreplace({s: placeholder}), placeholder)
        arguments = (derivation.x[k], derivation.y[k], *divided.extra)
        dg[k] = divided.function(*arguments)
        for j, yj in enumerate(derivation.y):
            if j == k:
                jac[k][j] = divided.derivative_function(*arguments)
            elif yj in profile.free_symbols:
                partial = diff(profile, yj).xreplace({s: placeholder})
                entry = derivation.divided_difference_for(partial, placeholder)
                jac[k][j] = entry.function(derivation.x[k], derivation.y[k], *entry.extra)
    return dg, jac
