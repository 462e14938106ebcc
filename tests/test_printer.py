"""Tests of the Numba printer: exact output strings, rejected expressions, and printed
code compiled with `numba.njit` and compared against SymPy evaluated at 30 digits.
"""

from __future__ import annotations

import math
import re

import mpmath
import numba
import pytest
import sympy as sp

from dgcodegen.emit import KERNEL_TEMPLATE, template_directory
from dgcodegen.errors import CodegenError
from dgcodegen.functions import sigmoid, softplus
from dgcodegen.printer import NumbaPrinter

X = sp.Symbol("x", real=True)
NAMES = {X: "a"}
REFERENCE_DIGITS = 30

# About 45 ulps: a few roundings in the printed arithmetic plus libm's error of about
# one ulp per call stay far below it.
RELATIVE_TOLERANCE = 1e-14


def _print(expr: sp.Expr) -> str:
    return NumbaPrinter(NAMES).doprint(expr)


def _template_function_source(name: str) -> str:
    """Return the decorated definition of `name` from the kernel template.

    The kernel template defines `softplus` and `sigmoid` in plain Python between Jinja
    blocks, so the test compiles the shipped implementation rather than a copy.
    """
    lines = (template_directory() / KERNEL_TEMPLATE).read_text(encoding="utf-8").splitlines()
    start = lines.index(f"def {name}(z):")
    body = [lines[start - 1], lines[start]]
    for line in lines[start + 1 :]:
        if line and not line.startswith("    "):
            break
        body.append(line)
    return "\n".join(body).rstrip() + "\n"


def _template_namespace() -> dict[str, object]:
    # The template compiles with cache=True, which functions built by exec cannot use.
    namespace: dict[str, object] = {
        "math": math,
        "numba": numba,
        "OPTIONS": {"cache": False, "error_model": "numpy", "fastmath": False},
    }
    for name in ("softplus", "sigmoid"):
        exec(_template_function_source(name), namespace)  # noqa: S102 - template source
    return namespace


_NAMESPACE = _template_namespace()
_COMPILED: dict[str, numba.core.registry.CPUDispatcher] = {}


def _compile(expr: sp.Expr) -> numba.core.registry.CPUDispatcher:
    """Print `expr` in the variable `a` and compile `def f(a): return <text>` with njit."""
    text = _print(expr)
    if text not in _COMPILED:
        namespace = dict(_NAMESPACE)
        exec(f"def f(a):\n    return {text}\n", namespace)  # noqa: S102 - printer output
        _COMPILED[text] = numba.njit(error_model="numpy")(namespace["f"])
    return _COMPILED[text]


def _reference(expr: sp.Expr, value: float) -> float:
    """Evaluate `expr` at the exact binary value of `value` to 30 digits."""
    exact = sp.Float(value, REFERENCE_DIGITS)
    return float(sp.N(expr.xreplace({X: exact}), REFERENCE_DIGITS))


def _huber(z: sp.Expr) -> sp.Expr:
    return sp.Piecewise((z**2 / 2, sp.Abs(z) <= 1), (sp.Abs(z) - sp.Rational(1, 2), True))


# Each case: id, expression in X, points where the compiled code must match SymPy.
NUMERIC_CASES = [
    ("huber", _huber(X), [-3.0, -1.0, -0.5, 0.0, 1.0, 2.5]),
    ("huber_shifted", _huber(X - 3), [0.0, 2.5, 3.0, 4.0, 7.0]),
    ("max_three", sp.Max(X, 1 - X, X**2 / 4), [-3.0, 0.25, 0.5, 1.0, 5.0]),
    ("min_three", sp.Min(X, 1 - X, -(X**2)), [-3.0, 0.25, 0.5, 1.0, 5.0]),
    ("min_two", sp.Min(X, 2), [-1.0, 2.0, 3.5]),
    ("heaviside", sp.Heaviside(X), [-2.0, 0.0, 3.0]),
    ("heaviside_zero_at_zero", sp.Heaviside(X, 0), [-2.0, 0.0, 3.0]),
    ("heaviside_one_at_zero", sp.Heaviside(X, 1), [-2.0, 0.0, 3.0]),
    ("abs", sp.Abs(X), [-2.5, 0.0, 3.0]),
    ("sign", sp.sign(X), [-2.0, 0.0, 3.0]),
    ("sign_product", X * sp.sign(X - 1), [-2.0, 1.0, 3.0]),
    ("coefficient_2_70", 2**70 * X, [1.5, -3.0]),
    ("coefficient_3_50", 3**50 * X**2 + 1, [1.5, -0.25]),
    ("big_integer_sum", X + sp.Integer(3**50), [2.0]),
    ("rational_third", sp.Rational(1, 3) * X, [1.0, 7.0]),
    ("rational_constant", X + sp.Rational(1, 3), [0.0]),
    ("rational_division", X / 3, [1.0, 7.0]),
    ("sqrt", sp.sqrt(X), [0.5, 2.0]),
    ("inverse_sqrt", 1 / sp.sqrt(X), [0.5, 2.0]),
    ("power_three_halves", X ** sp.Rational(3, 2), [2.0]),
    ("power_minus_two", X**-2, [3.0, -0.7]),
    ("power_minus_five", X**-5, [1.3]),
    ("power_five", X**5, [1.7, -2.0]),
    ("power_four", X**4, [-1.1]),
    ("power_of_sum", (X + 1) ** 7, [0.3]),
    ("softplus", softplus(X), [-1000.0, -30.0, 0.0, 30.0, 1000.0]),
    ("sigmoid", sigmoid(X), [-1000.0, -30.0, 0.0, 30.0, 1000.0]),
    ("softplus_composite", softplus(-2 * X) + sigmoid(X / 2), [-400.0, 0.1, 400.0]),
    (
        "math_functions",
        sp.exp(X)
        + sp.log(X)
        + sp.sin(X)
        + sp.cos(X)
        + sp.tan(X)
        + sp.tanh(X)
        + sp.sinh(X)
        + sp.cosh(X)
        + sp.atan(X)
        + sp.asinh(X)
        + sp.erf(X),
        [0.3, 1.7],
    ),
    ("pi_and_e", sp.pi * X + sp.E, [2.0]),
]


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        pytest.param(expr, value, id=f"{name}-{value:g}")
        for name, expr, values in NUMERIC_CASES
        for value in values
    ],
)
def test_compiled_matches_sympy(expr: sp.Expr, value: float) -> None:
    actual = _compile(expr)(value)
    expected = _reference(expr, value)
    assert math.isclose(actual, expected, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-300), (
        f"{_print(expr)} at {value}: {actual!r} != {expected!r}"
    )


@pytest.mark.parametrize(
    ("expr", "value", "expected"),
    [
        pytest.param(sp.sign(X), -2.0, -1.0, id="sign-negative"),
        pytest.param(sp.sign(X), 0.0, 0.0, id="sign-zero"),
        pytest.param(sp.sign(X), 3.0, 1.0, id="sign-positive"),
        pytest.param(sp.Heaviside(X), -2.0, 0.0, id="heaviside-negative"),
        pytest.param(sp.Heaviside(X), 0.0, 0.5, id="heaviside-zero"),
        pytest.param(sp.Heaviside(X), 3.0, 1.0, id="heaviside-positive"),
        pytest.param(softplus(X), 1000.0, 1000.0, id="softplus-large"),
        pytest.param(sigmoid(X), 1000.0, 1.0, id="sigmoid-large"),
        pytest.param(sigmoid(X), -1000.0, 0.0, id="sigmoid-small"),
    ],
)
def test_compiled_exact_values(expr: sp.Expr, value: float, expected: float) -> None:
    assert _compile(expr)(value) == expected


@pytest.mark.parametrize("value", [-1000.0, -30.0, 0.0, 30.0, 1000.0])
def test_softplus_sigmoid_finite(value: float) -> None:
    assert math.isfinite(_compile(softplus(X))(value))
    assert math.isfinite(_compile(sigmoid(X))(value))


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        pytest.param(
            sp.Heaviside(X), "(1.0 if a > 0.0 else (0.5 if a == 0.0 else 0.0))", id="heaviside"
        ),
        pytest.param(
            sp.Heaviside(X, 0),
            "(1.0 if a > 0.0 else (0.0 if a == 0.0 else 0.0))",
            id="heaviside-h0",
        ),
        pytest.param(sp.sign(X), "(1.0 if a > 0.0 else (-1.0 if a < 0.0 else 0.0))", id="sign"),
        pytest.param(sp.Abs(X), "abs(a)", id="abs"),
        pytest.param(sp.Max(X, 0), "max(0.0, a)", id="max-two"),
        pytest.param(sp.Min(X, 2), "min(2.0, a)", id="min-two"),
        pytest.param(X**-2, "(1.0/(a*a))", id="power-minus-two"),
        pytest.param(X**2, "(a*a)", id="power-two"),
        pytest.param(X**5, "a**5", id="power-five"),
        pytest.param(sp.sqrt(X), "math.sqrt(a)", id="sqrt"),
        pytest.param(1 / sp.sqrt(X), "(1.0/math.sqrt(a))", id="inverse-sqrt"),
        pytest.param(sp.Rational(1, 3), "0.3333333333333333", id="rational"),
        pytest.param(sp.Integer(2**70), "1.1805916207174113e+21", id="integer-2-70"),
        pytest.param(2**70 * X, "1.1805916207174113e+21*a", id="coefficient-2-70"),
        pytest.param(sp.Integer(3**50), "7.178979876918526e+23", id="integer-3-50"),
        pytest.param(sp.Integer(7), "7.0", id="small-integer"),
        pytest.param(sp.exp(X), "math.exp(a)", id="exp"),
        pytest.param(softplus(X), "softplus(a)", id="softplus"),
        pytest.param(sigmoid(X), "sigmoid(a)", id="sigmoid"),
    ],
)
def test_printed_text_exact(expr: sp.Expr, text: str) -> None:
    assert _print(expr) == text


def test_max_three_binary_chain() -> None:
    text = _print(sp.Max(X, 1 - X, X**2 / 4))
    assert text.startswith("max(max(")
    assert text.count("max(") == 2
    assert "reduce" not in text
    assert "numpy" not in text


def test_min_three_binary_chain() -> None:
    text = _print(sp.Min(X, 1 - X, -(X**2)))
    assert text.startswith("min(min(")
    assert text.count("min(") == 2
    assert "reduce" not in text


def test_piecewise_prints_if_expression() -> None:
    text = _print(_huber(X))
    assert " if " in text
    assert " else " in text
    assert "select" not in text
    assert "numpy" not in text


def test_piecewise_branch_order() -> None:
    expr = sp.Piecewise((X, X < 0), (2 * X, X < 1), (3 * X, True))
    compiled = _compile(expr)
    assert compiled(-1.0) == -1.0
    assert compiled(0.5) == 1.0
    assert compiled(2.0) == 6.0


def test_helper_function_printed() -> None:
    helper = sp.Function("dd0")
    printer = NumbaPrinter(NAMES, helpers={"dd0"})
    assert printer.doprint(helper(X, 2 * X)) == "dd0(a, 2.0*a)"


# Rejected expressions


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        pytest.param(sp.Derivative(X**2, X), "Derivative(x**2, x)", id="derivative"),
        pytest.param(sp.Integral(X**2, (X, 0, 1)), "Integral(x**2, (x, 0, 1))", id="integral"),
        pytest.param(sp.Subs(X**2, X, 1), "Subs(x**2, x, 1)", id="subs"),
        pytest.param(sp.Function("f")(X), "the function f in f(x)", id="undefined-function"),
        pytest.param(sp.DiracDelta(X), "DiracDelta in DiracDelta(x)", id="dirac-delta"),
        pytest.param(sp.I * X, "non-real number I", id="imaginary-unit"),
        pytest.param(sp.oo, "infinity", id="infinity"),
        pytest.param(-sp.oo, "infinity", id="negative-infinity"),
        pytest.param(sp.zoo, "infinity", id="complex-infinity"),
    ],
)
def test_printer_rejects_expression(expr: sp.Expr, message: str) -> None:
    with pytest.raises(CodegenError, match=re.escape(message)):
        _print(expr)


@pytest.mark.parametrize("part", [sp.re, sp.im], ids=["re", "im"])
def test_printer_rejects_real_imaginary(part: type[sp.Function]) -> None:
    # re and im of a real symbol simplify away, so the symbol carries no assumptions.
    z = sp.Symbol("z")
    expr = part(z)
    with pytest.raises(CodegenError, match=re.escape(f"unevaluated {part.__name__} {expr}")):
        NumbaPrinter({z: "a"}).doprint(expr)


def test_printer_rejects_nested_derivative() -> None:
    expr = X**2 + sp.exp(sp.Derivative(sp.Function("g")(X), X))
    with pytest.raises(CodegenError, match="unevaluated Derivative"):
        _print(expr)


def test_printer_rejects_unmapped_symbol() -> None:
    stray = sp.Symbol("stray", real=True)
    with pytest.raises(CodegenError, match="the symbol 'stray' has no kernel variable"):
        _print(X + stray)


def test_piecewise_without_default_rejected() -> None:
    expr = sp.Piecewise((X, X > 0))
    with pytest.raises(CodegenError, match="Piecewise without a final True branch"):
        _print(expr)


def test_printer_rejects_float_overflow() -> None:
    with pytest.raises(CodegenError, match="float64"):
        _print(sp.Integer(2**1100) * X)


def test_huge_exponent_not_int_literal() -> None:
    text = _print(X ** (2**70))
    assert str(2**70) not in text


# SymPy reference values of the special functions


@pytest.mark.parametrize("z", [-100, -1000])
def test_softplus_evalf_keeps_precision(z: int) -> None:
    with mpmath.workdps(REFERENCE_DIGITS + 10):
        expected = mpmath.log1p(mpmath.exp(z))
    actual = sp.N(softplus(z), REFERENCE_DIGITS)
    assert abs(actual - sp.Float(expected, REFERENCE_DIGITS)) <= 1e-25 * abs(expected)


@pytest.mark.parametrize("z", [-1000, -30, 0, 30, 1000])
def test_sigmoid_evalf_matches_mpmath(z: int) -> None:
    with mpmath.workdps(REFERENCE_DIGITS + 10):
        expected = 1 / (1 + mpmath.exp(-z))
    actual = sp.N(sigmoid(z), REFERENCE_DIGITS)
    assert abs(actual - sp.Float(expected, REFERENCE_DIGITS)) <= 1e-25 * abs(expected)
