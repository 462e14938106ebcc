"""Parse loss expressions from text without executing them.

`parse_expression` reads a string such as `"softplus(-y * (dot(w, x) + b))"` with
`ast.parse` and walks the syntax tree itself. Nothing is passed to `eval`, `exec`,
`sympify` or `parse_expr`. It admits only:

- integer and float literals (finite, within the float64 range);
- names declared in the namespace it is given, and the constant `pi`;
- `+`, `-`, `*`, `/`, `**` and `@` (matrix times vector or matrix);
- calls of the functions in `FUNCTIONS`, by name, with positional arguments;
- indexing of a declared vector or matrix with integer literals, `w[3]` or `W[1, 2]`,
  from 0 to the extent minus 1.

Everything else is rejected with the line and column of the offending node. That
includes attributes, lambdas, comprehensions, conditional and assignment expressions,
f-strings, comparisons, slices, undeclared names and unknown functions. Negative indices
are rejected too, because `w[-1]` in a loss reads like an off-by-one error.
Constant subexpressions are checked as they are built, so `9**9**9`, `exp(1000)`,
`log(0)` and `sqrt(-1)` are rejected before SymPy evaluates anything large.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sympy as sp

from .errors import SpecError
from .functions import sigmoid, softplus

Value = sp.Expr | sp.ImmutableMatrix

MAX_LENGTH = 10_000
"""Maximum length of an expression, in characters."""

MAX_DEPTH = 100
"""Maximum nesting depth of the syntax tree. The left operands of a chain of binary operators,
such as a sum of many terms, share one level."""

MAX_EXPONENT = 100
"""Largest constant exponent magnitude allowed on a non-constant base."""

MAX_PRODUCT_TERMS = 1_000_000
"""Maximum number of scalar products that one `@` may form, m * k * n for (m, k) @ (k, n)."""

FLOAT64_MAX = 1.7976931348623157e308

CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi}


@dataclass(frozen=True)
class Function:
    """A function that expressions may call.

    Attributes:
        build: maps the argument values to the result.
        arity: number of arguments, or None for two or more.
        takes: "scalar" when every argument must be a scalar, "array" when every argument
            must be a vector or matrix.
    """

    build: Callable[..., Value]
    arity: int | None = 1
    takes: str = "scalar"


def _dot(a: sp.ImmutableMatrix, b: sp.ImmutableMatrix) -> sp.Expr:
    if a.shape != b.shape:
        raise ValueError(f"dot needs two arguments of one shape, got {a.shape} and {b.shape}")
    return sp.Add(*[p * q for p, q in zip(a, b)])


FUNCTIONS: dict[str, Function] = {
    "exp": Function(sp.exp),
    "log": Function(sp.log),
    "sin": Function(sp.sin),
    "cos": Function(sp.cos),
    "tan": Function(sp.tan),
    "tanh": Function(sp.tanh),
    "sinh": Function(sp.sinh),
    "cosh": Function(sp.cosh),
    "atan": Function(sp.atan),
    "asinh": Function(sp.asinh),
    "erf": Function(sp.erf),
    "sqrt": Function(sp.sqrt),
    "abs": Function(sp.Abs),
    "sign": Function(sp.sign),
    "heaviside": Function(sp.Heaviside),
    "softplus": Function(softplus),
    "sigmoid": Function(sigmoid),
    "max": Function(sp.Max, arity=None),
    "min": Function(sp.Min, arity=None),
    "dot": Function(_dot, arity=2, takes="array"),
    "sum": Function(lambda a: sp.Add(*a), arity=1, takes="array"),
}
"""Functions that expressions may call, by name."""

RESERVED_NAMES = frozenset(FUNCTIONS) | frozenset(CONSTANTS)
"""Names that a spec may not declare, because expressions already give them a meaning."""

# Names for the constructs that are rejected, as users know them.
_REJECTED_SYNTAX: dict[type, str] = {
    ast.Attribute: "attribute access",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.IfExp: "a conditional expression (use max, min or heaviside)",
    ast.NamedExpr: "an assignment expression",
    ast.JoinedStr: "an f-string",
    ast.Compare: "a comparison",
    ast.BoolOp: "'and' or 'or'",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.Starred: "'*' unpacking",
    ast.Slice: "a slice",
    ast.Await: "'await'",
    ast.Yield: "'yield'",
    ast.YieldFrom: "'yield from'",
}

_BINARY_OPERATORS: dict[type, str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
    ast.MatMult: "@",
}

_REJECTED_OPERATORS: dict[type, str] = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Not: "not",
    ast.Invert: "~",
}

_ALLOWED_SYNTAX = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.UnaryOp,
    ast.UAdd,
    ast.USub,
    ast.BinOp,
    ast.Call,
    ast.Subscript,
    *_BINARY_OPERATORS,
)

# Characters an expression may contain: printable ASCII and line breaks. Non-ASCII
# letters are rejected because Python folds some of them onto ASCII names (NFKC).
_INVALID_CHARACTER = re.compile(r"[^\x20-\x7e\t\r\n]")

Locate = Callable[[int, int], str]
"""Maps a 1-based line and a 0-based column of the expression text to a place prefix."""


def parse_expression(text: str, namespace: Mapping[str, Value], locate: Locate) -> Value:
    """Parse `text` into a SymPy expression or matrix over the declared names.

    Args:
        text: the expression, in the subset of Python syntax listed in the module docstring.
        namespace: declared names mapped to their symbol (scalar) or matrix of symbols.
        locate: turns a position in `text` into a prefix for error messages, such as
            "spec.toml:12:15".

    Raises:
        SpecError: naming the place of the first rejected construct or value.
    """
    if not isinstance(text, str):
        raise SpecError(f"{locate(1, 0)}: expected an expression string, got {text!r}")
    if len(text) > MAX_LENGTH:
        raise SpecError(
            f"{locate(1, 0)}: the expression has {len(text)} characters; "
            f"the maximum is {MAX_LENGTH}"
        )
    _check_characters(text, locate)
    text, locate = _strip_leading_space(text, locate)
    tree = _parse(text, locate)
    _check_syntax(tree, locate)
    try:
        return _Evaluator(namespace, locate).value(tree.body)
    except RecursionError:
        raise SpecError(f"{locate(1, 0)}: the expression is nested too deeply") from None


def _check_characters(text: str, locate: Locate) -> None:
    match = _INVALID_CHARACTER.search(text)
    if match is None:
        return
    lines = re.split(r"\r\n|\r|\n", text[: match.start()])
    line, column = len(lines), len(lines[-1])
    raise SpecError(
        f"{locate(line, column)}: invalid character {match.group()!r} in the expression; "
        "use ASCII letters, digits and operators"
    )


def _strip_leading_space(text: str, locate: Locate) -> tuple[str, Locate]:
    """Drop leading blanks and line breaks, which `ast.parse` rejects as an indent.

    Returns the stripped text and a `locate` that still points into the original text.
    """
    stripped = text.lstrip(" \t\r\n")
    skipped = text[: len(text) - len(stripped)]
    lines_skipped = len(re.findall(r"\r\n|\r|\n", skipped))
    columns_skipped = len(re.split(r"\r\n|\r|\n", skipped)[-1])

    def shifted(line: int, column: int) -> str:
        if line == 1:
            column += columns_skipped
        return locate(line + lines_skipped, column)

    return stripped, shifted


def _parse(text: str, locate: Locate) -> ast.Expression:
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as error:
        # SyntaxError.offset is 1-based; the text is ASCII, so bytes and characters agree.
        line = error.lineno or 1
        column = max((error.offset or 1) - 1, 0)
        raise SpecError(f"{locate(line, column)}: invalid expression: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise SpecError(f"{locate(1, 0)}: the expression is nested too deeply") from None


def _check_syntax(tree: ast.Expression, locate: Locate) -> None:
    """Reject every node outside the admitted syntax, and trees nested too deeply."""
    stack: list[tuple[ast.AST, ast.AST, int]] = [(tree, tree, 0)]
    while stack:
        node, parent, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError(
                f"{_where(node, locate)}: the expression is nested more than {MAX_DEPTH} "
                "levels deep; split it into simpler terms"
            )
        if isinstance(node, ast.Subscript):
            # Index lists are checked when the subscript is evaluated.
            stack.append((node.value, node, depth + 1))
            continue
        if not isinstance(node, _ALLOWED_SYNTAX):
            construct = _REJECTED_SYNTAX.get(type(node), f"the construct {type(node).__name__}")
            if isinstance(node, (ast.operator, ast.unaryop)):
                symbol = _REJECTED_OPERATORS.get(type(node), type(node).__name__)
                raise SpecError(
                    f"{_where(parent, locate)}: the operator '{symbol}' is not allowed; "
                    "use + - * / ** or @"
                )
            raise SpecError(f"{_where(node, locate)}: {construct} is not allowed in an expression")
        if isinstance(node, ast.Call) and node.keywords:
            raise SpecError(
                f"{_where(node.keywords[0], locate)}: keyword arguments are not allowed; "
                "pass arguments by position"
            )
        for child in ast.iter_child_nodes(node):
            # The left operand of a binary operator continues a chain, evaluated in a loop.
            chained = isinstance(node, ast.BinOp) and child is node.left
            stack.append((child, node, depth if chained else depth + 1))


def _where(node: ast.AST, locate: Locate) -> str:
    return locate(getattr(node, "lineno", 1), getattr(node, "col_offset", 0))


class _Evaluator:
    """Build SymPy values from a syntax tree that `_check_syntax` admitted."""

    def __init__(self, namespace: Mapping[str, Value], locate: Locate) -> None:
        self.namespace = namespace
        self.locate = locate

    def fail(self, node: ast.AST, message: str) -> SpecError:
        return SpecError(f"{_where(node, self.locate)}: {message}")

    def value(self, node: ast.expr) -> Value:
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            # A left-nested chain such as a + b + c + ... is walked in a loop, so a long sum
            # costs no recursion depth.
            spine = [node]
            while isinstance(spine[-1].left, ast.BinOp):
                spine.append(spine[-1].left)
            result = self.value(spine[-1].left)
            for link in reversed(spine):
                result = self.checked(link, self.binary(link, result))
            return result
        if isinstance(node, ast.Call):
            return self.checked(node, self.call(node))
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        raise self.fail(node, f"the construct {type(node).__name__} is not allowed")

    def constant(self, node: ast.Constant) -> sp.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(node, f"the literal {value!r} is not allowed; use a real number")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(node, f"the number {value!r} is not finite")
        if abs(value) > FLOAT64_MAX:
            raise self.fail(node, "the number is outside the float64 range")
        return sp.Integer(value) if isinstance(value, int) else sp.Float(value)

    def name(self, node: ast.Name) -> Value:
        if node.id in self.namespace:
            return self.namespace[node.id]
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if node.id in FUNCTIONS:
            raise self.fail(node, f"{node.id!r} is a function; call it as {node.id}(...)")
        declared = ", ".join(sorted(self.namespace)) or "none"
        raise self.fail(node, f"undeclared name {node.id!r}; declared names: {declared}")

    def binary(self, node: ast.BinOp, left: Value) -> Value:
        """Apply `node`'s operator to the value of its left operand and its right operand."""
        right = self.value(node.right)
        left_matrix = isinstance(left, sp.MatrixBase)
        right_matrix = isinstance(right, sp.MatrixBase)
        symbol = _BINARY_OPERATORS[type(node.op)]
        if isinstance(node.op, (ast.Add, ast.Sub)):
            if left_matrix != right_matrix or (left_matrix and left.shape != right.shape):
                raise self.fail(
                    node,
                    f"'{symbol}' needs operands of one shape, got {_shape(left)} and "
                    f"{_shape(right)}",
                )
            return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node.op, ast.Mult):
            if left_matrix and right_matrix:
                raise self.fail(
                    node, "'*' of two vectors or matrices is ambiguous; use dot(a, b) or a @ b"
                )
            return left * right
        if isinstance(node.op, ast.Div):
            if right_matrix:
                raise self.fail(node, "cannot divide by a vector or matrix")
            if right.is_zero:
                raise self.fail(node, "division by zero")
            return left / right
        if isinstance(node.op, ast.MatMult):
            return self.matrix_product(node, left, right)
        if left_matrix or right_matrix:
            raise self.fail(node, "'**' applies to scalars only")
        return self.power(node, left, right)

    def matrix_product(self, node: ast.BinOp, left: Value, right: Value) -> Value:
        if not (isinstance(left, sp.MatrixBase) and isinstance(right, sp.MatrixBase)):
            raise self.fail(
                node, "'@' needs a matrix on the left and a vector or matrix on the right"
            )
        if left.shape[1] != right.shape[0]:
            raise self.fail(node, f"'@' cannot multiply shapes {left.shape} and {right.shape}")
        if left.shape[0] * left.shape[1] * right.shape[1] > MAX_PRODUCT_TERMS:
            raise self.fail(
                node,
                f"'@' of shapes {left.shape} and {right.shape} forms more than "
                f"{MAX_PRODUCT_TERMS} products; write a smaller product",
            )
        product = sp.ImmutableMatrix(left * right)
        return product[0, 0] if product.shape == (1, 1) else product

    def power(self, node: ast.BinOp, base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
        if base.is_number and exponent.is_number:
            # Estimate the size first: SymPy computes integer powers exactly, so 9**9**9
            # would take minutes and gigabytes.
            b, e = float(abs(base)), float(exponent)
            if b == 0.0 and e < 0.0:
                raise self.fail(node, "division by zero: 0 to a negative power")
            if b != 0.0 and e * math.log10(b) > 308.0:
                raise self.fail(
                    node, f"the constant {ast.unparse(node)} is outside the float64 range"
                )
        elif exponent.is_number and abs(float(exponent)) > MAX_EXPONENT:
            raise self.fail(
                node,
                f"the exponent {exponent} is too large; use at most {MAX_EXPONENT} in magnitude",
            )
        return base**exponent

    def call(self, node: ast.Call) -> Value:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "call a function by its name, such as exp(...)")
        name = node.func.id
        function = FUNCTIONS.get(name)
        if function is None:
            supported = ", ".join(sorted(FUNCTIONS))
            raise self.fail(node, f"unknown function {name!r}; supported functions: {supported}")
        count = len(node.args)
        if function.arity is None and count < 2:
            raise self.fail(node, f"{name} takes two or more arguments, got {count}")
        if function.arity is not None and count != function.arity:
            raise self.fail(node, f"{name} takes {function.arity} argument(s), got {count}")
        arguments = []
        for argument in node.args:
            value = self.value(argument)
            if isinstance(value, sp.MatrixBase) != (function.takes == "array"):
                expected = "a vector or matrix" if function.takes == "array" else "a scalar"
                raise self.fail(argument, f"{name} takes {expected}, got {_shape(value)}")
            arguments.append(value)
        try:
            return function.build(*arguments)
        except ValueError as error:
            raise self.fail(node, str(error)) from None

    def subscript(self, node: ast.Subscript) -> sp.Expr:
        if not isinstance(node.value, ast.Name) or node.value.id not in self.namespace:
            raise self.fail(node, "only declared vectors and matrices can be indexed")
        name = node.value.id
        matrix = self.namespace[name]
        if not isinstance(matrix, sp.MatrixBase):
            raise self.fail(node, f"{name!r} is a scalar and cannot be indexed")
        nodes = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        extents = matrix.shape if matrix.shape[1] > 1 else matrix.shape[:1]
        if len(nodes) != len(extents):
            raise self.fail(
                node,
                f"{name!r} has shape {extents}; give {len(extents)} index(es), got {len(nodes)}",
            )
        indices = [self.index(n, name, extent) for n, extent in zip(nodes, extents)]
        return matrix[indices[0], indices[1] if len(indices) == 2 else 0]

    def index(self, node: ast.expr, name: str, extent: int) -> int:
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
        ):
            raise self.fail(
                node, f"negative index into {name!r}; indices run from 0 to {extent - 1}"
            )
        if isinstance(node, ast.Slice):
            raise self.fail(node, f"slices of {name!r} are not supported; index single entries")
        if not isinstance(node, ast.Constant) or type(node.value) is not int:
            raise self.fail(node, f"index into {name!r} must be an integer literal")
        if not 0 <= node.value < extent:
            raise self.fail(
                node, f"index {node.value} is out of range for {name!r}: 0 to {extent - 1}"
            )
        return node.value

    def checked(self, node: ast.AST, value: Value) -> Value:
        """Return `value` after checking that a constant is a finite real float64."""
        if isinstance(value, sp.MatrixBase) or not value.is_number:
            return value
        # Every constant operand was checked already, so evalf works on float64-sized
        # arguments and stays fast.
        number = value.evalf(20)
        source = ast.unparse(node)
        if number.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise self.fail(node, f"the constant {source} is not finite")
        if number.is_real is not True:
            raise self.fail(node, f"the constant {source} is not a real number")
        if abs(number) > FLOAT64_MAX:
            raise self.fail(node, f"the constant {source} is outside the float64 range")
        return value


def _shape(value: Value) -> str:
    if isinstance(value, sp.MatrixBase):
        return f"a {'vector' if value.shape[1] == 1 else 'matrix'} of shape {value.shape}"
    return "a scalar"
