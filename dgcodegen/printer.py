"""Print SymPy expressions as Python source that Numba compiles in nopython mode.

Differences from SymPy's `PythonCodePrinter` that matter for Numba:

- every number is a float literal, so integers above `2**64` do not fail to type and
  `1/3` is not integer arithmetic;
- `Piecewise`, `Heaviside` and `sign` become if-expressions, which evaluate only the
  branch taken (unlike `numpy.select`);
- `Max` and `Min` become nested binary `max` and `min`;
- small integer powers become products, half-integer powers use `math.sqrt`;
- `softplus`, `sigmoid` and divided-difference helpers print as calls to functions the
  generated module defines;
- anything else unknown, and every unevaluated `Derivative`, `Integral`, `Subs`, `re`
  or `im`, raises CodegenError naming the expression.
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .errors import CodegenError

_REJECTED = (sp.Derivative, sp.Integral, sp.Subs, sp.re, sp.im)

_MATH_FUNCTIONS = {
    "exp": "math.exp",
    "log": "math.log",
    "sin": "math.sin",
    "cos": "math.cos",
    "tan": "math.tan",
    "tanh": "math.tanh",
    "sinh": "math.sinh",
    "cosh": "math.cosh",
    "atan": "math.atan",
    "asinh": "math.asinh",
    "erf": "math.erf",
}


class NumbaPrinter(PythonCodePrinter):
    """Printer for kernel bodies; `names` maps symbols to identifiers in the kernel."""

    def __init__(self, names: dict[sp.Symbol, str], helpers: set[str] | None = None) -> None:
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})
        self.names = names
        self.helpers = helpers or set()

    def doprint(self, expr: sp.Expr, assign_to: str | None = None) -> str:  # type: ignore[override]
        check_printable(expr)
        return super().doprint(expr, assign_to)

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        try:
            return self.names[expr]
        except KeyError:
            raise CodegenError(f"the symbol {expr.name!r} has no kernel variable") from None

    def _print_float64(self, expr: sp.Expr) -> str:
        value = float(expr)
        if not math.isfinite(value):
            raise CodegenError(f"the number {expr} is outside the float64 range")
        return repr(value)

    _print_Integer = _print_float64
    _print_Rational = _print_float64
    _print_Float = _print_float64
    _print_NumberSymbol = _print_float64

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, expr: sp.Expr) -> str:
        raise CodegenError("infinity cannot appear in a kernel")

    _print_NegativeInfinity = _print_Infinity
    _print_ComplexInfinity = _print_Infinity
    _print_NaN = _print_Infinity

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exponent = expr.args
        base_text = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"])
        if exponent.is_Integer and 1 <= exponent <= 4:
            return "(" + "*".join([base_text] * int(exponent)) + ")"
        if exponent.is_Integer and -4 <= exponent <= -1:
            return "(1.0/(" + "*".join([base_text] * int(-exponent)) + "))"
        if exponent == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if exponent == -sp.S.Half:
            return f"(1.0/math.sqrt({self._print(base)}))"
        if exponent.is_Integer and abs(int(exponent)) <= 2**53:
            return f"{base_text}**{int(exponent)}"
        return f"{base_text}**{self.parenthesize(exponent, 100)}"

    def _print_Function(self, expr: sp.Function) -> str:
        name = type(expr).__name__
        arguments = ", ".join(self._print(a) for a in expr.args)
        if name in _MATH_FUNCTIONS:
            return f"{_MATH_FUNCTIONS[name]}({arguments})"
        if name in ("softplus", "sigmoid") or name in self.helpers:
            return f"{name}({arguments})"
        raise CodegenError(f"no kernel implementation for the function {name} in {expr}")

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_sin = _print_Function
    _print_cos = _print_Function
    _print_tan = _print_Function
    _print_tanh = _print_Function
    _print_sinh = _print_Function
    _print_cosh = _print_Function
    _print_atan = _print_Function
    _print_asinh = _print_Function
    _print_erf = _print_Function

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_sign(self, expr: sp.sign) -> str:
        value = self._print(expr.args[0])
        return f"(1.0 if {value} > 0.0 else (-1.0 if {value} < 0.0 else 0.0))"

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        value = self._print(expr.args[0])
        at_zero = self._print(expr.args[1]) if len(expr.args) > 1 else "0.5"
        return f"(1.0 if {value} > 0.0 else ({at_zero} if {value} == 0.0 else 0.0))"

    def _print_Max(self, expr: sp.Max) -> str:
        return self._binary_chain("max", expr.args)

    def _print_Min(self, expr: sp.Min) -> str:
        return self._binary_chain("min", expr.args)

    def _binary_chain(self, name: str, args: tuple[sp.Expr, ...]) -> str:
        text = self._print(args[0])
        for arg in args[1:]:
            text = f"{name}({text}, {self._print(arg)})"
        return text

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        if expr.args[-1].cond != sp.true:
            raise CodegenError(f"Piecewise without a final True branch cannot be printed: {expr}")
        text = f"({self._print(expr.args[-1].expr)})"
        for piece in reversed(expr.args[:-1]):
            text = f"(({self._print(piece.expr)}) if ({self._print(piece.cond)}) else {text})"
        return text

    def _print_BooleanTrue(self, expr: sp.Expr) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: sp.Expr) -> str:
        return "False"

    def emptyPrinter(self, expr: object) -> str:  # noqa: N802 - SymPy's hook name
        raise CodegenError(f"cannot print {type(expr).__name__} in a kernel: {expr}")

    def _print_not_supported(self, expr: sp.Basic) -> str:
        raise CodegenError(f"cannot print {type(expr).__name__} in a kernel: {expr}")


def check_printable(expr: sp.Basic) -> None:
    """Raise CodegenError when `expr` contains an unevaluated or complex-valued node."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, _REJECTED):
            raise CodegenError(
                f"the unevaluated {type(node).__name__} {node} reached code generation; "
                "declare every symbol real and avoid constructs without explicit derivatives"
            )
        if node.is_number and node.is_real is False and node.is_finite is not False:
            raise CodegenError(f"the non-real number {node} reached code generation")
