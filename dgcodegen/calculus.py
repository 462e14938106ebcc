"""Differentiation for kernels: derivatives almost everywhere."""

from __future__ import annotations

import sympy as sp


def diff(expr: sp.Expr, *variables: object) -> sp.Expr:
    """Differentiate like `sympy.diff`, then drop `DiracDelta` terms.

    Losses with `Abs`, `sign`, `Max`, `Min`, `Heaviside` or `Piecewise` have kinks or
    jumps whose distributional derivatives contain `DiracDelta`. Kernels use the
    derivative almost everywhere, which is the same expression with those terms set to 0.
    """
    result = sp.diff(expr, *variables)
    if result.has(sp.DiracDelta):
        result = result.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    return result
