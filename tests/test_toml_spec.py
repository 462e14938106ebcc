"""Tests of TOML specs: the schema, hostile expressions, error positions and equivalence
with the Python examples.

A TOML spec declares fresh symbols on every load, so specs here may reuse names even
though declarations live in a registry shared by the whole process.
"""

from __future__ import annotations

import builtins
import filecmp
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import sympy.parsing.sympy_parser
from conftest import EXAMPLES

from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.errors import SpecError
from dgcodegen.expressions import parse_expression
from dgcodegen.runtime import load_kernels
from dgcodegen.system import System
from dgcodegen.toml_spec import load_toml_spec

SPECS = EXAMPLES / "specs"

# Line 3 is `objective = '...'`: the expression starts in column 14.
HOSTILE_TEMPLATE = """[problem]
name = "hostile"
objective = {literal}

[parameters]
w = 30
b = []
"""
FIRST_COLUMN = 14


def _literal(expression: str) -> str:
    """Return `expression` as a TOML string literal with the same characters in the file."""
    assert "\n" not in expression
    if "'" not in expression:
        return f"'{expression}'"
    assert '"' not in expression
    assert "\\" not in expression
    return f'"{expression}"'


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _hostile(tmp_path: Path, expression: str) -> tuple[Path, str]:
    """Load a spec whose objective is `expression` and return its path and the error message."""
    spec = _write(tmp_path / "hostile.toml", HOSTILE_TEMPLATE.format(literal=_literal(expression)))
    with pytest.raises(SpecError) as error:
        load_toml_spec(spec)
    return spec, str(error.value)


# (expression, offset of the reported column within the expression, message fragment)
HOSTILE_EXPRESSIONS = [
    ("__import__('os').system('true')", 0, "attribute access is not allowed"),
    ("__import__('os')", 0, "unknown function '__import__'"),
    ("().__class__.__bases__", 0, "attribute access is not allowed"),
    ("b.__class__", 0, "attribute access is not allowed"),
    ("exp(w.T)", 4, "attribute access is not allowed"),
    ("w[30]", 2, "index 30 is out of range for 'w': 0 to 29"),
    ("w[-1]", 2, "negative index into 'w'"),
    ("w[0:2]", 2, "slices of 'w' are not supported"),
    ("w[b]", 2, "index into 'w' must be an integer literal"),
    ("w[True]", 2, "index into 'w' must be an integer literal"),
    ("w[0, 1]", 0, "'w' has shape (30,); give 1 index(es), got 2"),
    ("b[0]", 0, "'b' is a scalar and cannot be indexed"),
    ("b + (lambda: 1)()", 5, "a lambda is not allowed"),
    ("sum([v for v in w])", 4, "a comprehension is not allowed"),
    ("sum(v for v in w)", 3, "a generator expression is not allowed"),
    ("b if b else 1", 0, "a conditional expression"),
    ("(c := b)", 1, "an assignment expression is not allowed"),
    ("f'{b}'", 0, "an f-string is not allowed"),
    ("'text'", 0, "the literal 'text' is not allowed"),
    ("b * True", 4, "the literal True is not allowed"),
    ("b * 1j", 4, "the literal 1j is not allowed"),
    ("b < 1", 0, "a comparison is not allowed"),
    ("b and b", 0, "'and' or 'or' is not allowed"),
    ("b // 2", 0, "the operator '//' is not allowed"),
    ("not b", 0, "the operator 'not' is not allowed"),
    ("eval('1')", 0, "unknown function 'eval'"),
    ("getattr(b, 'x')", 0, "unknown function 'getattr'"),
    ("gamma(b)", 0, "unknown function 'gamma'"),
    ("exp(b=1)", 4, "keyword arguments are not allowed"),
    ("exp(*w)", 4, "'*' unpacking is not allowed"),
    ("w[0](b)", 0, "call a function by its name"),
    ("b + z", 4, "undeclared name 'z'; declared names: b, w"),
    ("__builtins__", 0, "undeclared name '__builtins__'"),
    ("exp + b", 0, "'exp' is a function"),
    ("9**9**9", 0, "the constant 9 ** 9 ** 9 is outside the float64 range"),
    ("b + 10.0**400", 4, "is outside the float64 range"),
    ("b + 0**-1", 4, "division by zero"),
    ("b / 0", 0, "division by zero"),
    ("b + exp(exp(100))", 4, "the constant exp(exp(100)) is outside the float64 range"),
    ("b + log(0)", 4, "the constant log(0) is not finite"),
    ("b + sqrt(-1)", 4, "the constant sqrt(-1) is not a real number"),
    ("b + 1e999", 4, "the number inf is not finite"),
    ("b * 2 ** 4000", 4, "outside the float64 range"),
    ("b ** 1000", 0, "the exponent 1000 is too large"),
    ("exp(w)", 4, "exp takes a scalar, got a vector of shape (30, 1)"),
    ("dot(w, b)", 7, "dot takes a vector or matrix, got a scalar"),
    ("max(b)", 0, "max takes two or more arguments, got 1"),
    ("w * w", 0, "'*' of two vectors or matrices is ambiguous"),
    ("w + b", 0, "'+' needs operands of one shape"),
    ("w", 0, "the expression is a matrix of shape (30, 1)"),
    ("b +", 0, "invalid expression: invalid syntax"),
    ("b + \u00e9", 4, "invalid character '\u00e9'"),
    ("b + \uff42", 4, "invalid character"),
    ("(" * 250 + "b" + ")" * 250, 199, "too many nested parentheses"),
    ("exp(" * 150 + "b" + ")" * 150, 0, "nested more than 100 levels"),
    ("-" * 150 + "b", 0, "nested more than 100 levels"),
    ("-" * 5000 + "b", 0, "nested"),
    ("b * (" * 120 + "b" + ")" * 120, 0, "nested more than 100 levels"),
    ("b" * 10_001, 0, "the maximum is 10000"),
]


@pytest.mark.parametrize(
    ("expression", "offset", "fragment"),
    HOSTILE_EXPRESSIONS,
    ids=[case[0][:30] for case in HOSTILE_EXPRESSIONS],
)
def test_hostile_expression_rejected(
    tmp_path: Path, expression: str, offset: int, fragment: str
) -> None:
    spec, message = _hostile(tmp_path, expression)
    assert fragment in message
    if "nested" not in fragment:
        assert message.startswith(f"{spec}:3:{FIRST_COLUMN + offset}: in objective: ")


def test_nesting_limit_column_in_file(tmp_path: Path) -> None:
    spec, message = _hostile(tmp_path, "exp(" * 150 + "b" + ")" * 150)
    assert re.match(rf"{re.escape(str(spec))}:3:\d+: in objective: ", message)


def test_hostile_expression_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    expression = f"__import__('os').system('touch {marker}')"
    _hostile(tmp_path, expression)
    assert not marker.exists()


def test_loader_parses_no_text_with_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_eval, original_exec, original = builtins.eval, builtins.exec, sp.sympify

    def eval_without_text(source: object, *args: object) -> object:
        # Imports run module code objects through exec, so only source text is forbidden.
        assert not isinstance(source, str), f"eval called on the text {source!r}"
        return original_eval(source, *args)

    def exec_without_text(source: object, *args: object) -> object:
        assert not isinstance(source, str), f"exec called on the text {source!r}"
        return original_exec(source, *args)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"parse_expr called with {args!r}")

    def sympify_without_text(value: object, *args: object, **kwargs: object) -> object:
        assert not isinstance(value, str), f"sympify called on the text {value!r}"
        return original(value, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", eval_without_text)
    monkeypatch.setattr(builtins, "exec", exec_without_text)
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", forbidden)
    monkeypatch.setattr(sp, "sympify", sympify_without_text)
    monkeypatch.setattr(sys.modules["sympy.core.sympify"], "sympify", sympify_without_text)
    problem = load_toml_spec(SPECS / "rosenbrock.toml")
    assert problem.name == "rosenbrock"


# Error positions through escapes and multi-line strings


def test_position_after_escape(tmp_path: Path) -> None:
    # `\u0020` is six characters in the file and one in the expression.
    text = HOSTILE_TEMPLATE.format(literal='"b +\\u0020 z"')
    spec = _write(tmp_path / "escape.toml", text)
    with pytest.raises(SpecError, match=re.escape(f"{spec}:3:24: in objective: undeclared")):
        load_toml_spec(spec)


def test_position_in_multiline_string(tmp_path: Path) -> None:
    text = HOSTILE_TEMPLATE.format(literal='"""\n    (b +\n  z)\n"""')
    spec = _write(tmp_path / "multiline.toml", text)
    with pytest.raises(SpecError, match=re.escape(f"{spec}:5:3: in objective: undeclared")):
        load_toml_spec(spec)


def test_position_in_multiline_literal(tmp_path: Path) -> None:
    text = HOSTILE_TEMPLATE.format(literal="'''\n  b + w[40]'''")
    spec = _write(tmp_path / "literal.toml", text)
    with pytest.raises(SpecError, match=re.escape(f"{spec}:4:9: in objective: index 40")):
        load_toml_spec(spec)


def test_indented_multiline_expression_accepted(tmp_path: Path) -> None:
    text = HOSTILE_TEMPLATE.format(literal='"""\n    b**2 + dot(w, w)\n"""')
    problem = load_toml_spec(_write(tmp_path / "indented.toml", text))
    assert problem.free_term.has(problem.parameter_symbols[0])


def test_inline_table_falls_back_to_file(tmp_path: Path) -> None:
    text = 'problem = { objective = "b + z" }\n[parameters]\nb = []\n'
    spec = _write(tmp_path / "inline.toml", text)
    with pytest.raises(SpecError, match=re.escape(f"{spec}: in objective: undeclared name 'z'")):
        load_toml_spec(spec)


# Schema


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    spec = _write(tmp_path / "broken.toml", "[problem]\nobjective = = 'b'\n")
    with pytest.raises(SpecError, match=r"invalid TOML: .*line 2, column 13"):
        load_toml_spec(spec)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "[problem]\nobjectiv = 'b'\n[parameters]\nb = []\n",
            "unknown key 'objectiv' in [problem]",
        ),
        ("[problems]\n", "unknown key 'problems' in the top level"),
        ("[problem]\nobjective = 'b'\n[parameters]\nb = 'x'\n", "invalid shape 'x' for 'b'"),
        ("[problem]\nobjective = 'b'\n[parameters]\nb = [0]\n", "invalid shape [0] for 'b'"),
        ("[problem]\nobjective = 'b'\n[parameters]\nb = true\n", "invalid shape True for 'b'"),
        ("[problem]\nobjective = 'b[0]'\n[parameters]\nb = [2, 2, 2]\n", "invalid shape"),
        ("[problem]\nobjective = 'b'\n[parameters]\nb = {size = 2}\n", "unknown key 'size'"),
        ("[problem]\nobjective = 2\n[parameters]\nb = []\n", "must be an expression string"),
        (
            "[problem]\nobjective = 'b + c'\n[parameters]\nb = []\nc = []\n[data]\nc = []\n",
            "'c' is declared twice, in [parameters] and [data]",
        ),
        ("[problem]\nobjective = 'b'\n[parameters]\nb = []\nc = []\n", "'c' is declared but no"),
        ("[problem]\nobjective = 'b'\n[parameters]\nb = []\nexp = []\n", "'exp' is the name of a"),
        ("[problem]\nobjective = 'pi'\n[parameters]\npi = []\n", "'pi' is the name of a"),
        ("[problem]\nreduction = 'max'\nobjective = 'b'\n[parameters]\nb = []\n", "reduction"),
        (
            "[problem]\nobjective = 'b**2'\n[parameters]\nb = {initial = '__import__(1)'}\n",
            "initial value of 'b'",
        ),
        ("[problem]\nobjective = 'b**2'\n[parameters]\nb = {initial = 'b'}\n", "undeclared name"),
        ("[problem]\nobjective = 'b**2'\n[parameters]\nb = {initial = true}\n", "contains True"),
        (
            "[problem]\nper_sample = 'b * x'\n[parameters]\nb = []\n[data]\nx = [2, 2]\n",
            "invalid shape [2, 2] for 'x'",
        ),
        (
            "[problem]\nobjective = 'b[0, 0]'\n[parameters]\nb = [100000, 100000]\n",
            "above the maximum of 100000",
        ),
        (
            "[problem]\nobjective = 'b'\ndata = 'absent.csv'\n[parameters]\nb = []\n",
            "data file not found",
        ),
    ],
)
def test_invalid_schema_rejected(tmp_path: Path, text: str, fragment: str) -> None:
    spec = _write(tmp_path / "schema.toml", text)
    with pytest.raises(SpecError) as error:
        load_toml_spec(spec)
    assert fragment in str(error.value)
    assert str(error.value).startswith(str(spec))


def test_schema_error_names_line(tmp_path: Path) -> None:
    spec = _write(tmp_path / "line.toml", "[problem]\nobjective = 'b'\n\n[parameters]\nb = 'x'\n")
    with pytest.raises(SpecError, match=re.escape(f"{spec}:5: invalid shape 'x'")):
        load_toml_spec(spec)


def test_shapes_and_initial_values(tmp_path: Path) -> None:
    text = """[problem]
objective = "s**2 + sum(v) + M[1, 2] + dot(M @ v, M @ v)"

[parameters]
s = { initial = "pi / 2" }
v = { shape = [3], initial = [1, 2, 3] }
M = { shape = [2, 3], initial = 0.5 }
"""
    problem = load_toml_spec(_write(tmp_path / "shapes.toml", text))
    assert [(d.name, d.shape) for d in problem.parameters] == [
        ("s", ()),
        ("v", (3,)),
        ("M", (2, 3)),
    ]
    np.testing.assert_allclose(problem.initial_point[:4], [np.pi / 2, 1, 2, 3])
    np.testing.assert_allclose(problem.initial_point[4:], 0.5)


def test_loaded_through_load_spec() -> None:
    problem = load_spec(SPECS / "rosenbrock.toml")
    assert problem.name == "rosenbrock"
    np.testing.assert_array_equal(problem.initial_point, [-1.2, 1.0])


# Equivalence with the Python examples

LOGISTIC_TOML = """[problem]
reduction = "sum"
per_sample = "softplus(-y * (dot(w, x) + b))"
regularizer = "dot(w, w) / 2"
data = "samples.csv"

[parameters]
w = 30
b = []

[data]
x = 30
y = []
"""


def _write_logistic_csv(path: Path, rng: np.random.Generator, n: int = 40) -> dict:
    features = rng.standard_normal((n, 30))
    labels = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    header = ",".join([f"x[{j}]" for j in range(30)] + ["y"])
    rows = np.column_stack([features, labels])
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.17g")
    return {"x": features, "y": labels}


def _loss_value(problem, theta: np.ndarray, arrays: dict) -> float:
    """Evaluate `problem`'s loss with SymPy's lambdify, independently of generated kernels."""
    parameters = problem.parameter_symbols
    columns = [s for column in problem.data_symbols for s in column]
    functions = [{"softplus": lambda z: np.logaddexp(0.0, z)}, "numpy"]
    sample = sp.lambdify([parameters, columns], problem.sample_term, functions)
    free = sp.lambdify([parameters], problem.free_term, functions)
    table = np.column_stack(
        [arrays[c.name].reshape(len(arrays[c.name]), -1) for c in problem.columns]
    )
    return float(sum(sample(theta, row) for row in table) + free(theta))


def test_logistic_toml_matches_python(tmp_path: Path) -> None:
    arrays = _write_logistic_csv(tmp_path / "samples.csv", np.random.default_rng(3))
    toml_problem = load_toml_spec(_write(tmp_path / "logistic_regression.toml", LOGISTIC_TOML))
    python_problem = load_spec(EXAMPLES / "logistic_regression.py")
    assert toml_problem.fingerprint() == python_problem.fingerprint()
    np.testing.assert_array_equal(toml_problem.default_data["x"], arrays["x"])
    np.testing.assert_array_equal(toml_problem.default_data["y"].ravel(), arrays["y"])

    theta = np.random.default_rng(4).standard_normal(31) / 4
    from_toml = _loss_value(toml_problem, theta, toml_problem.default_data)
    from_python = _loss_value(python_problem, theta, arrays)
    margins = -arrays["y"] * (arrays["x"] @ theta[:30] + theta[30])
    reference = np.logaddexp(0.0, margins).sum() + theta[:30] @ theta[:30] / 2
    assert from_toml == pytest.approx(reference, rel=1e-12)
    assert from_python == pytest.approx(reference, rel=1e-12)


def test_rosenbrock_toml_generates_same_package(tmp_path: Path) -> None:
    toml_out, python_out = tmp_path / "toml", tmp_path / "python"
    assert main(["-q", "generate", str(SPECS / "rosenbrock.toml"), "--out", str(toml_out)]) == 0
    assert main(["-q", "generate", str(EXAMPLES / "rosenbrock.py"), "--out", str(python_out)]) == 0
    names = sorted(p.name for p in python_out.glob("*.py"))
    assert sorted(p.name for p in toml_out.glob("*.py")) == names
    _, mismatch, errors = filecmp.cmpfiles(toml_out, python_out, names, shallow=False)
    assert mismatch == []
    assert errors == []

    kernels = load_kernels(toml_out)
    for point in ([-1.2, 1.0], [1.0, 1.0], [0.3, -0.7]):
        x = np.array(point)
        value = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        gradient = [-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)]
        assert kernels.loss(x) == pytest.approx(value, rel=1e-14, abs=1e-14)
        np.testing.assert_allclose(kernels.gradient(x), gradient, rtol=1e-14, atol=1e-13)


PENDULUM_TOML = """[system]
energy = "p**2 / 2 - cos(q)"
structure = [["0", "1"], [-1, 0]]
step = 1e-3

[state]
q = { initial = "pi / 2" }
p = []
"""


def test_pendulum_system_matches_python(tmp_path: Path) -> None:
    system = load_toml_spec(_write(tmp_path / "pendulum.toml", PENDULUM_TOML))
    python_system = load_spec(EXAMPLES / "pendulum.py")
    assert isinstance(system, System)
    assert system.fingerprint() == python_system.fingerprint()
    np.testing.assert_array_equal(system.initial_point, python_system.initial_point)
    assert system.step == python_system.step


@pytest.mark.parametrize(
    ("structure", "fragment"),
    [
        ('[["0", "1"]]', "structure must be 2 rows of 2 entries"),
        ('[["0", "__import__(1)"], ["-1", "0"]]', "entry (0, 1) of structure: unknown function"),
        ('[["0", "w"], ["-1", "0"]]', "entry (0, 1) of structure: undeclared name 'w'"),
        ('[["0", true], ["-1", "0"]]', "expected a number or an expression string"),
    ],
)
def test_invalid_structure_rejected(tmp_path: Path, structure: str, fragment: str) -> None:
    text = PENDULUM_TOML.replace('[["0", "1"], [-1, 0]]', structure)
    spec = _write(tmp_path / "pendulum.toml", text)
    with pytest.raises(SpecError) as error:
        load_toml_spec(spec)
    assert fragment in str(error.value)
    assert str(error.value).startswith(f"{spec}:3: ")


def test_large_matrix_product_rejected() -> None:
    # 101 * 100 * 101 scalar products is just above the limit of one million.
    left = sp.ImmutableMatrix(101, 100, sp.symbols("left0:10100"))
    right = sp.ImmutableMatrix(100, 101, sp.symbols("right0:10100"))
    with pytest.raises(SpecError, match="^1:4: '@' of shapes .* forms more than 1000000"):
        parse_expression(
            "sum(L @ R)", {"L": left, "R": right}, lambda line, column: f"{line}:{column}"
        )


def test_long_flat_sum_accepted(tmp_path: Path) -> None:
    # A chain of binary operators shares one nesting level, so a long sum is no deep tree.
    expression = " + ".join(["b**2"] * 1000)
    spec = tmp_path / "long_sum.toml"
    spec.write_text(
        f'[problem]\nname = "long_sum"\nobjective = "{expression}"\n\n[parameters]\nb = []\n',
        encoding="utf-8",
    )
    problem = load_spec(spec)
    assert problem.free_term == 1000 * problem.parameter_symbols[0] ** 2
