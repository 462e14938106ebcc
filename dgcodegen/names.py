"""Checks on the names a spec supplies, before any of them reaches generated code.

Parameter and data-column names, the problem name and hand-written discrete gradient
names all come from the user. Data-column names appear in kernel code as `data_<name>`
and `data_<name>_<entry>`. The problem name appears in comments and docstrings of the
generated modules and names the package folder. Every declared name can be written in
the expressions of a TOML spec. So each name must be a short ASCII identifier that is
not a Python keyword, not a builtin and not a global of the generated modules.
"""

from __future__ import annotations

import builtins
import keyword
import re
import sys
from typing import Any

from .errors import CodegenError, SpecError

MAX_NAME_LENGTH = 64
"""Maximum length of any user-supplied name, in characters."""

# `fullmatch`, because `$` in `re.match` also matches before a final newline.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*")

DISCRETE_GRADIENT_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9]*([_-][A-Za-z0-9]+)*")

GENERATED_GLOBALS = frozenset(
    {
        # Imports.
        "math",
        "numba",
        "np",
        "os",
        "prange",
        "warnings",
        # Constants and functions of the kernels module.
        "CHUNK",
        "N_PARAMETERS",
        "GONZALEZ_SERIES_THRESHOLD",
        "OPTIONS",
        "KERNELS",
        "serial",
        "softplus",
        "sigmoid",
        "loss",
        "gradient",
        "hessian",
        # Constants and functions of the kernels module of a network.
        "N_OUTPUTS",
        "WEIGHT_DECAY",
        "loss_gradient",
        "loss_gradient_state",
        "hvp",
        "hvp_state",
        "hvp_from_state",
        "STATE_WIDTH",
        "predict",
        "COORDINATE_CHANGE",
        "COORDINATE_COMMIT",
        "COORDINATE_STATE_WIDTH",
        "COORDINATE_TANGENT",
        "coordinate_change",
        "coordinate_commit",
        "coordinate_derivative",
        "coordinate_state",
        # Constants and functions of the integrator module of a system.
        "CONVERGED",
        "EPSILON",
        "METHODS",
        "NON_FINITE",
        "NOT_CONVERGED",
        "N_STATE",
        "SINGULAR",
        "STATUS_TEXT",
        "structure",
        "structure_derivative",
        "third_derivative",
    }
)
"""Public module-level names of the generated kernels and integrator modules.

`tests/test_names.py` fails when a module under `generated/` has a public global that
neither this set nor `GENERATED_FAMILIES` covers.
"""

GENERATED_FAMILIES = re.compile(
    r"(dg|jac|newton|newton_system|integrate)_(mean_value|gonzalez|itoh_abe)[a-z0-9_]*"
    r"|ddiff\d+(_db)?"
)
"""Module-level names generated once per method or per divided difference."""

MODULE_NAMES = frozenset(sys.stdlib_module_names) | {"numpy", "numba", "sympy", "dgcodegen"}
"""Modules that a generated package named after the problem would shadow on `sys.path`."""


def name_problem(name: Any, pattern: re.Pattern[str] = NAME_PATTERN) -> str | None:
    """Return why `name` is not acceptable as a name, or None when it is.

    The reason is a clause to put after "invalid parameter name <name>: " or similar.
    """
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    if len(name) > MAX_NAME_LENGTH:
        return f"it has {len(name)} characters; use at most {MAX_NAME_LENGTH}"
    if not pattern.fullmatch(name):
        separators = "'_' or '-'" if pattern is DISCRETE_GRADIENT_NAME_PATTERN else "'_'"
        return (
            "use ASCII letters and digits, starting with a letter, with single "
            f"{separators} between parts"
        )
    if keyword.iskeyword(name):
        return "it is a Python keyword"
    if keyword.issoftkeyword(name):
        return "it is a Python soft keyword"
    if name in dir(builtins):
        return "it is the name of a Python builtin"
    if name in GENERATED_GLOBALS or GENERATED_FAMILIES.fullmatch(name):
        # User names never appear bare in generated code (data columns become `data_<name>`),
        # so this keeps a later template change from letting one shadow a global.
        return "generated code uses that name"
    return None


def check_name(name: Any, kind: str) -> str:
    """Return `name` when it is a valid `kind` name (e.g. "parameter"), else raise SpecError."""
    problem = name_problem(name)
    if problem is not None:
        raise SpecError(f"invalid {kind} name {_shown(name)}: {problem}")
    return name


def check_problem_name(name: Any) -> str:
    """Return a valid problem name, which also names the generated package, or raise SpecError."""
    problem = name_problem(name)
    if problem is None and name in MODULE_NAMES:
        problem = f"a generated package named {name!r} would shadow the Python module {name!r}"
    if problem is not None:
        raise SpecError(
            f"problem name {_shown(name)} is not a valid identifier: {problem}; "
            'pass name=... (or name = "..." in a TOML spec)'
        )
    return name


def check_discrete_gradient_name(name: Any) -> str:
    """Return a valid name for a hand-written discrete gradient, or raise SpecError."""
    problem = name_problem(name, DISCRETE_GRADIENT_NAME_PATTERN)
    if problem is not None:
        raise SpecError(f"invalid discrete gradient name {_shown(name)}: {problem}")
    return name


def check_column_identifiers(columns: list[tuple[str, int]]) -> None:
    """Reject data columns whose kernel variables coincide.

    Column `c` with `k` entries becomes the argument `data_c` and the per-sample variables
    `data_c_0` to `data_c_<k-1>`, so columns `a` and `a_0` would share `data_a_0`.

    Args:
        columns: `(name, number of entries)` of each data column.
    """
    owners: dict[str, str] = {}
    for name, size in columns:
        for identifier in [f"data_{name}"] + [f"data_{name}_{j}" for j in range(size)]:
            other = owners.setdefault(identifier, name)
            if other != name:
                raise SpecError(
                    f"the data columns {other!r} and {name!r} would both use the kernel "
                    f"variable {identifier!r}; rename one of them"
                )


def check_kernel_variables(names: dict[Any, str]) -> None:
    """Check the kernel variable of each symbol before printing: the last gate for user names.

    Raises:
        CodegenError: when a variable is not an identifier, is a Python keyword, or is
            shared by two symbols. The declaration checks reject such names earlier, so
            this means a name bypassed them.
    """
    owners: dict[str, Any] = {}
    for symbol, variable in names.items():
        if not variable.isidentifier() or not variable.isascii() or keyword.iskeyword(variable):
            raise CodegenError(f"the kernel variable {_shown(variable)} is not a valid identifier")
        other = owners.setdefault(variable, symbol)
        if other != symbol:
            raise CodegenError(
                f"the symbols {other} and {symbol} share the kernel variable {variable!r}"
            )


def _shown(name: Any) -> str:
    """Return `repr(name)`, shortened so that a huge name does not flood the message."""
    text = repr(name)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-12:]} ({len(text)} characters)"
