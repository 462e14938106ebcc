"""Tests that user-supplied names are checked before they reach generated code.

Hostile names go through the Python DSL (`dg.parameter`, `dg.data`, `dg.Loss(name=...)`,
discrete gradient names, the spec file name) and through TOML specs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import sympy as sp
from conftest import GENERATED

import dgcodegen as dg
from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.errors import CodegenError, SpecError
from dgcodegen.names import MAX_NAME_LENGTH, NAME_PATTERN, check_kernel_variables, name_problem
from dgcodegen.toml_spec import load_toml_spec

HOSTILE_NAMES = [
    "",
    "w'",
    'w"',
    "w'); import os; ('",
    "w\n",
    "w\nimport os",
    "w\r",
    "w\x00",
    "w\t",
    "w w",
    "w.T",
    "w[0]",
    "__import__",
    "__class__",
    "_w",
    "w_",
    "w__x",
    "2w",
    "lambda",
    "class",
    "None",
    "True",
    "import",
    "match",
    "case",
    "_",
    "print",
    "eval",
    "exec",
    "sum",
    "type",
    "np",
    "numba",
    "math",
    "prange",
    "warnings",
    "CHUNK",
    "OPTIONS",
    "KERNELS",
    "softplus",
    "loss",
    "gradient",
    "dg_mean_value",
    "jac_gonzalez",
    "ddiff0",
    "ddiff12_db",
    "a" * (MAX_NAME_LENGTH + 1),
    "a" * 100_000,
    "\u1e83",  # w with an acute accent
    "\uff57",  # fullwidth w, which Python identifiers fold onto "w"
]

VALID_NAMES = ["w", "W", "x1", "a_b", "theta_0", "data", "a" * MAX_NAME_LENGTH]


def _ids(names: list[str]) -> list[str]:
    return [repr(name)[:24] for name in names]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=_ids(HOSTILE_NAMES))
def test_hostile_parameter_name_rejected(name: str) -> None:
    with pytest.raises(SpecError, match="^invalid parameter name ") as error:
        dg.parameter(name)
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=_ids(HOSTILE_NAMES))
def test_hostile_data_name_rejected(name: str) -> None:
    with pytest.raises(SpecError, match="^invalid data name "):
        dg.data(name, 2)


@pytest.mark.parametrize("name", [5, None, b"w", ("w",)])
def test_non_string_name_rejected(name: object) -> None:
    with pytest.raises(SpecError, match="a name must be a string"):
        dg.parameter(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_accepted(name: str) -> None:
    assert name_problem(name) is None


def test_keyword_reason_given() -> None:
    with pytest.raises(SpecError, match="'lambda': it is a Python keyword"):
        dg.parameter("lambda")


def test_long_name_shortened_in_message() -> None:
    with pytest.raises(SpecError, match="100000 characters; use at most 64") as error:
        dg.data("b" * 100_000)
    assert "(100002 characters)" in str(error.value)


# The problem name, which names the generated package


@pytest.mark.parametrize(
    "name",
    [*HOSTILE_NAMES, "os", "sys", "random", "numpy", "sympy", "dgcodegen"],
    ids=_ids([*HOSTILE_NAMES, "os", "sys", "random", "numpy", "sympy", "dgcodegen"]),
)
def test_hostile_problem_name_rejected(name: str) -> None:
    q = dg.parameter("problem_name_q")
    with pytest.raises(SpecError, match="^problem name .* is not a valid identifier"):
        dg.Loss(objective=q**2, name=name)


def test_module_problem_name_reason() -> None:
    q = dg.parameter("module_name_q")
    with pytest.raises(SpecError, match="would shadow the Python module 'random'"):
        dg.Loss(objective=q**2, name="random")


def test_spec_file_stem_checked(tmp_path: Path) -> None:
    text = "import dgcodegen as dg\nq = dg.parameter('stem_q')\nproblem = dg.Loss(objective=q**2)\n"
    spec = tmp_path / "os.py"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match="problem name 'os'"):
        load_spec(spec)


# Data-column names, which appear in kernel code as data_<name> and data_<name>_<entry>


def test_colliding_column_variables_rejected() -> None:
    w = dg.parameter("collide_w")
    a = dg.data("collide", 2)
    b = dg.data("collide_1")
    with pytest.raises(SpecError, match="'collide' and 'collide_1' would both use the kernel"):
        dg.Loss(per_sample=(w * a[1] - b) ** 2)


def test_scalar_column_collision_rejected() -> None:
    w = dg.parameter("scalar_collide_w")
    a = dg.data("scol")
    b = dg.data("scol_0")
    with pytest.raises(SpecError, match="variable 'data_scol_0'"):
        dg.Loss(per_sample=(w * a - b) ** 2)


def test_generated_code_uses_checked_names(tmp_path: Path) -> None:
    source = (
        "import dgcodegen as dg\n"
        "w = dg.parameter('w', 2)\n"
        "first = dg.data('first', 2)\n"
        "second = dg.data('second_1')\n"
        "problem = dg.Loss(per_sample=(w.dot(first) - second) ** 2, name='checked')\n"
    )
    spec = tmp_path / "checked.py"
    spec.write_text(source, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["-q", "generate", str(spec), "--out", str(out)]) == 0
    tree = ast.parse((out / "kernels.py").read_text(encoding="utf-8"))
    identifiers = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    identifiers |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
    data_names = {name for name in identifiers if name.startswith("data_")}
    expected = {"data_first", "data_first_0", "data_first_1", "data_second_1", "data_second_1_0"}
    assert data_names == expected


# Hand-written discrete gradient names


@pytest.mark.parametrize(
    "name",
    ["", "two words", "x\n", "__import__", "lambda", "np", "a" * (MAX_NAME_LENGTH + 1)],
    ids=repr,
)
def test_hostile_discrete_gradient_name_rejected(name: str) -> None:
    p = dg.parameter("dg_name_p", 2)
    hand = dg.DiscreteGradient(lambda x, y: x + y, symmetric=True)
    with pytest.raises(SpecError, match="^invalid discrete gradient name"):
        dg.Loss(objective=p.dot(p), discrete_gradients={name: hand})


def test_discrete_gradient_name_spelled_like_derived() -> None:
    p = dg.parameter("dg_spelling_p", 2)
    hand = dg.DiscreteGradient(lambda x, y: x + y, symmetric=True)
    with pytest.raises(
        SpecError, match=re.escape("taken by a derived discrete gradient ('mean-value')")
    ):
        dg.Loss(objective=p.dot(p), discrete_gradients={"mean_value": hand})


def test_discrete_gradient_names_differing_in_separator() -> None:
    p = dg.parameter("dg_separator_p", 2)
    hand = dg.DiscreteGradient(lambda x, y: x + y, symmetric=True)
    with pytest.raises(SpecError, match="differ only in '-' and '_'"):
        dg.Loss(objective=p.dot(p), discrete_gradients={"by-hand": hand, "by_hand": hand})


# Names in TOML specs

TOML_TEMPLATE = """[problem]
objective = "q**2"

[parameters]
q = []
{key} = []
"""


def _toml_key(name: str) -> str:
    """Write `name` as a TOML key, escaping what a basic string needs."""
    escaped = "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\u{ord(c):04x}" for c in name)
    return f'"{escaped}"'


TOML_HOSTILE = [n for n in HOSTILE_NAMES if len(n) < 1000]


@pytest.mark.parametrize("name", TOML_HOSTILE, ids=_ids(TOML_HOSTILE))
def test_hostile_toml_parameter_name_rejected(tmp_path: Path, name: str) -> None:
    spec = tmp_path / "names.toml"
    spec.write_text(TOML_TEMPLATE.format(key=_toml_key(name)), encoding="utf-8")
    with pytest.raises(SpecError, match="invalid parameter name|declared twice") as error:
        load_toml_spec(spec)
    assert str(error.value).startswith(str(spec))


@pytest.mark.parametrize("name", ["os", "lambda", "w\nimport os", "a b", "x" * 65])
def test_hostile_toml_problem_name_rejected(tmp_path: Path, name: str) -> None:
    spec = tmp_path / "names.toml"
    text = f'[problem]\nname = {_toml_key(name)}\nobjective = "q**2"\n\n[parameters]\nq = []\n'
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=re.escape(f"{spec}:2: problem name")):
        load_toml_spec(spec)


def test_toml_data_name_checked(tmp_path: Path) -> None:
    spec = tmp_path / "names.toml"
    text = (
        '[problem]\nper_sample = "q * x"\n\n[parameters]\nq = []\n\n[data]\nx = []\n"None" = []\n'
    )
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=re.escape(f"{spec}:9: invalid data name 'None'")):
        load_toml_spec(spec)


# The reserved names follow the generated modules


def _module_globals(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_generated_globals_are_reserved() -> None:
    modules = [*GENERATED.glob("*/kernels.py"), *GENERATED.glob("*/integrator.py")]
    assert modules
    for path in modules:
        for name in sorted(_module_globals(path)):
            if NAME_PATTERN.fullmatch(name):
                assert name_problem(name) is not None, f"{name} of {path} is not reserved"


def test_symbol_named_like_kernel_variable() -> None:
    # A plain symbol named like a kernel variable is no declared parameter.
    w = dg.parameter("reserved_w")
    with pytest.raises(SpecError, match="unknown symbol 'theta_0'"):
        dg.Loss(objective=w**2 + sp.Symbol("theta_0", real=True))


@pytest.mark.parametrize("variable", ["data_w\n", "lambda", "data w", "data_\u1e83", ""])
def test_kernel_variable_gate_rejects(variable: str) -> None:
    with pytest.raises(CodegenError, match="is not a valid identifier"):
        check_kernel_variables({sp.Symbol("a"): variable})


def test_kernel_variable_gate_rejects_shared() -> None:
    names = {sp.Symbol("a"): "data_a_0", sp.Symbol("b"): "data_a_0"}
    with pytest.raises(CodegenError, match="share the kernel variable 'data_a_0'"):
        check_kernel_variables(names)
