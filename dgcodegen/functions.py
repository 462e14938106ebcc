"""Numerically stable special functions usable inside loss expressions.

`softplus(z) = log(1 + exp(z))` and `sigmoid(z) = 1 / (1 + exp(-z))` are SymPy
functions with exact derivatives, exact high-precision evaluation through mpmath,
and overflow-free kernel implementations (`max(z, 0) + log1p(exp(-|z|))` and the
two-sided logistic), so generated code stays finite at `|z| = 1000`.
"""

from __future__ import annotations

import mpmath
import sympy as sp


class sigmoid(sp.Function):  # noqa: N801 - SymPy functions are lower case
    """Logistic function `1 / (1 + exp(-z))`."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex != 1:
            raise sp.ArgumentIndexError(self, argindex)
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, z: sp.Expr) -> sp.Expr | None:
        if z.is_zero:
            return sp.Rational(1, 2)
        return None

    def _eval_rewrite_as_exp(self, z: sp.Expr, **kwargs: object) -> sp.Expr:
        return 1 / (1 + sp.exp(-z))

    def _eval_evalf(self, prec: int) -> sp.Expr:
        return (1 / (1 + sp.exp(-self.args[0]))).evalf(prec_to_dps(prec))

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return self.args[0].is_real


class softplus(sp.Function):  # noqa: N801 - SymPy functions are lower case
    """Softplus `log(1 + exp(z))`, whose derivative is `sigmoid(z)`."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        if argindex != 1:
            raise sp.ArgumentIndexError(self, argindex)
        return sigmoid(self.args[0])

    @classmethod
    def eval(cls, z: sp.Expr) -> sp.Expr | None:
        if z.is_zero:
            return sp.log(2)
        return None

    def _eval_rewrite_as_log(self, z: sp.Expr, **kwargs: object) -> sp.Expr:
        return sp.log(1 + sp.exp(z))

    def _eval_evalf(self, prec: int) -> sp.Expr | None:
        z = self.args[0].evalf(prec_to_dps(prec))
        if not z.is_Number:
            return None
        # log1p keeps the digits of softplus(z) ~ exp(z) for very negative z.
        with mpmath.workprec(prec + 10):
            value = mpmath.log1p(mpmath.exp(z._to_mpmath(prec + 10)))
        return sp.Float(value, precision=prec)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return self.args[0].is_real


def prec_to_dps(prec: int) -> int:
    """Convert a binary precision in bits to decimal digits, as `evalf` expects."""
    return max(1, int(prec * 0.30103) + 1)


def _mpmath_softplus(z):  # type: ignore[no-untyped-def]
    import mpmath

    return mpmath.log1p(mpmath.exp(z))


def _mpmath_sigmoid(z):  # type: ignore[no-untyped-def]
    import mpmath

    return 1 / (1 + mpmath.exp(-z))


MPMATH_FUNCTIONS = {"softplus": _mpmath_softplus, "sigmoid": _mpmath_sigmoid}
"""mpmath implementations: `lambdify(..., modules=[MPMATH_FUNCTIONS, "mpmath"])`."""

SPECIAL_FUNCTIONS = (softplus, sigmoid)
