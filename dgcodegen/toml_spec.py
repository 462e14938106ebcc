"""Declare a loss or a system in a TOML file instead of a Python program.

A TOML spec is read, never executed: its expressions go through `parse_expression`,
which admits only numbers, declared names, arithmetic and a fixed list of functions.
This is `examples/specs/rosenbrock.toml`::

    [problem]
    objective = "(1 - x[0])**2 + 100 * (x[1] - x[0]**2)**2"

    [parameters]
    x = { shape = 2, initial = [-1.2, 1.0] }

A loss has these tables:

- `[problem]`: `name` (default: the file name without `.toml`), `reduction` ("sum" or
  "mean"), `per_sample`, `regularizer`, `objective` (expression strings, as in
  `dg.Loss`), and `data`, a default data file (`.csv`, `.npz` or `.npy`, read like
  `dgcodegen solve --data`) relative to the spec file.
- `[parameters]`: one key per parameter. The value is its shape: `[]` or `{}` for a
  scalar, `n` or `[n]` for a vector, `[m, n]` for a matrix, or a table
  `{ shape = ..., initial = ... }` with a starting value.
- `[data]`: one key per data column, with its shape: `[]` for a scalar, `n` for a
  vector.

A system `x' = S(x) grad H(x)` has these instead:

- `[system]`: `name`, `energy` (an expression string), `structure` (rows of numbers or
  expression strings, one row and one column per state entry) and `step`.
- `[state]`: the state variables, declared like `[parameters]`.

Starting values are numbers or constant expression strings such as `"pi / 2"`. Errors
name the file, and the line and column where they can be found (see `toml_positions`
for the limits).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sympy as sp

from .dsl import Loss, data, parameter
from .errors import SpecError
from .expressions import RESERVED_NAMES, Value, parse_expression
from .names import check_name, check_problem_name
from .system import System
from .toml_positions import TomlPositions

LOSS_TABLES = ("problem", "parameters", "data")
SYSTEM_TABLES = ("system", "state")
PROBLEM_KEYS = ("name", "reduction", "per_sample", "regularizer", "objective", "data")
SYSTEM_KEYS = ("name", "energy", "structure", "step")
EXPRESSION_KEYS = ("per_sample", "regularizer", "objective")
PARAMETER_KEYS = ("shape", "initial")
DECLARATION_KINDS = {"parameters": "parameter", "state": "state", "data": "data"}

MAX_ENTRIES = 100_000
"""Maximum number of entries of all declarations together, each one a SymPy symbol."""


def load_toml_spec(path: str | Path) -> Loss | System:
    """Read a TOML spec and return its Loss or System.

    A loss whose `[problem]` names a data file gets that file as its default data.

    Raises:
        SpecError: for invalid TOML, unknown tables or keys, invalid names or shapes, and
            rejected expressions, naming the file and where possible the line and column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read the spec {path}: {error}") from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: invalid TOML: {error}") from error
    spec = _TomlSpec(path, document, TomlPositions(path, text))
    if any(table in document for table in SYSTEM_TABLES):
        return spec.load_system()
    return spec.load_loss()


class _TomlSpec:
    """One parsed TOML document being turned into a Loss or a System."""

    def __init__(self, path: Path, document: dict[str, Any], positions: TomlPositions) -> None:
        self.path = path
        self.document = document
        self.positions = positions
        self.namespace: dict[str, Value] = {}
        self.declared: dict[str, tuple[str, list[sp.Symbol]]] = {}

    def load_loss(self) -> Loss:
        self._check_keys(self.document, LOSS_TABLES, "")
        problem = self._table("problem")
        self._check_keys(problem, PROBLEM_KEYS, "problem")
        initial = self._declare_parameters("parameters")
        self._declare_columns()
        terms = {
            key: self._expression("problem", problem, key)
            for key in EXPRESSION_KEYS
            if key in problem
        }
        self._check_all_used(terms.values())
        name = self._problem_name("problem", problem)
        try:
            loss = Loss(
                objective=terms.get("objective", 0),
                per_sample=terms.get("per_sample"),
                regularizer=terms.get("regularizer"),
                reduction=problem.get("reduction", "sum"),
                initial=initial,
                name=name,
            )
        except SpecError as error:
            raise SpecError(f"{self.path}: {error}") from None
        if "data" in problem:
            self._load_data(loss, problem["data"])
        return loss

    def load_system(self) -> System:
        self._check_keys(self.document, SYSTEM_TABLES, "")
        system = self._table("system")
        self._check_keys(system, SYSTEM_KEYS, "system")
        initial = self._declare_parameters("state")
        if "energy" not in system:
            raise SpecError(f"{self._where('system')}: [system] needs an energy expression")
        energy = self._expression("system", system, "energy")
        structure = self._structure(system.get("structure"))
        self._check_all_used([energy])
        name = self._problem_name("system", system)
        try:
            return System(
                energy=energy,
                structure=structure,
                initial=initial,
                step=system.get("step"),
                name=name,
            )
        except SpecError as error:
            raise SpecError(f"{self.path}: {error}") from None

    def _where(self, table: str, key: str | None = None) -> str:
        return self.positions.where(table, key)

    def _table(self, name: str) -> dict[str, Any]:
        table = self.document.get(name, {})
        if not isinstance(table, dict):
            raise SpecError(f"{self._where('', name)}: '{name}' must be a table, written [{name}]")
        return table

    def _check_keys(
        self, table: dict[str, Any], allowed: tuple[str, ...], name: str, inline: str = ""
    ) -> None:
        """Reject keys outside `allowed` in table `name`, or in its inline table `inline`."""
        for key in table:
            if key in allowed:
                continue
            where = f"[{name}]" if name else "the top level"
            if inline:
                where = f"the table of {inline!r} in [{name}]"
            raise SpecError(
                f"{self._where(name, inline or key)}: unknown key {key!r} in {where}; "
                f"expected one of {', '.join(allowed)}"
            )

    def _problem_name(self, table: str, values: dict[str, Any]) -> str:
        name = values.get("name", self.path.stem)
        try:
            return check_problem_name(name)
        except SpecError as error:
            raise SpecError(f"{self._where(table, 'name')}: {error}") from None

    def _check_declared_name(self, table: str, name: str) -> None:
        try:
            check_name(name, DECLARATION_KINDS[table])
        except SpecError as error:
            raise SpecError(f"{self._where(table, name)}: {error}") from None
        if name in RESERVED_NAMES:
            raise SpecError(
                f"{self._where(table, name)}: {name!r} is the name of a function or constant "
                "that expressions use; choose another name"
            )
        if name in self.declared:
            raise SpecError(
                f"{self._where(table, name)}: {name!r} is declared twice, in "
                f"[{self.declared[name][0]}] and [{table}]; give each its own name"
            )

    def _declare_parameters(self, table: str) -> dict[str, Any]:
        """Declare the parameters (or state variables) of `table` and return initial values."""
        initial: dict[str, Any] = {}
        for name, value in self._table(table).items():
            self._check_declared_name(table, name)
            shape = value
            if isinstance(value, dict):
                self._check_keys(value, PARAMETER_KEYS, table, name)
                shape = value.get("shape", [])
                if "initial" in value:
                    label = f"{self._where(table, name)}: initial value of {name!r}"
                    initial[name] = self._initial(value["initial"], label)
            self._bind(table, name, parameter(name, self._shape(table, name, shape, 2)))
        return initial

    def _declare_columns(self) -> None:
        for name, value in self._table("data").items():
            self._check_declared_name("data", name)
            shape = value
            if isinstance(value, dict):
                self._check_keys(value, ("shape",), "data", name)
                shape = value.get("shape", [])
            self._bind("data", name, data(name, self._shape("data", name, shape, 1)))

    def _bind(self, table: str, name: str, value: Value) -> None:
        self.namespace[name] = value
        symbols = list(value) if isinstance(value, sp.MatrixBase) else [value]
        self.declared[name] = (table, symbols)

    def _shape(self, table: str, name: str, shape: Any, max_rank: int) -> tuple[int, ...]:
        extents = [shape] if isinstance(shape, int) and not isinstance(shape, bool) else shape
        valid = (
            isinstance(extents, list)
            and len(extents) <= max_rank
            and all(type(e) is int and e >= 1 for e in extents)
        )
        if not valid:
            forms = "[] for a scalar, n or [n] for a vector"
            if max_rank == 2:
                forms += ", [m, n] for a matrix"
            raise SpecError(
                f"{self._where(table, name)}: invalid shape {shape!r} for {name!r}; use {forms}"
            )
        declared = sum(len(symbols) for _, symbols in self.declared.values())
        if declared + math.prod(extents) > MAX_ENTRIES:
            raise SpecError(
                f"{self._where(table, name)}: {name!r} of shape {tuple(extents)} brings the "
                f"declared entries above the maximum of {MAX_ENTRIES}"
            )
        return tuple(extents)

    def _initial(self, value: Any, label: str) -> Any:
        """Return a starting value with constant expression strings such as "pi / 2" evaluated."""
        if isinstance(value, list):
            return [self._initial(item, label) for item in value]
        if isinstance(value, str):
            return float(parse_expression(value, {}, lambda line, column: label))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{label} contains {value!r}; use numbers or expression strings")
        return value

    def _expression(self, table: str, values: dict[str, Any], key: str) -> sp.Expr:
        text = values[key]
        if not isinstance(text, str):
            raise SpecError(
                f"{self._where(table, key)}: {key} must be an expression string, got {text!r}"
            )
        locate_in_file = self.positions.string_locator(table, key, text)

        def locate(line: int, column: int) -> str:
            return f"{locate_in_file(line, column)}: in {key}"

        value = parse_expression(text, self.namespace, locate)
        if isinstance(value, sp.MatrixBase):
            raise SpecError(
                f"{locate(1, 0)}: the expression is a matrix of shape {value.shape}; "
                f"{key} must be a scalar"
            )
        return value

    def _structure(self, rows: Any) -> list[list[sp.Expr]]:
        """Parse the structure matrix: rows of numbers or expression strings."""
        where = self._where("system", "structure")
        n = sum(len(symbols) for _, symbols in self.declared.values())
        square = (
            isinstance(rows, list)
            and len(rows) == n
            and all(isinstance(row, list) and len(row) == n for row in rows)
        )
        if not square:
            raise SpecError(
                f"{where}: structure must be {n} rows of {n} entries, one per state entry, "
                'such as [["0", "1"], ["-1", "0"]]'
            )
        # NOTE: an error in an entry is located by the line of the `structure` key only.
        return [
            [
                self._structure_entry(entry, f"{where}: entry ({i}, {j}) of structure")
                for j, entry in enumerate(row)
            ]
            for i, row in enumerate(rows)
        ]

    def _structure_entry(self, entry: Any, label: str) -> sp.Expr:
        if isinstance(entry, bool) or not isinstance(entry, (int, float, str)):
            raise SpecError(f"{label}: expected a number or an expression string, got {entry!r}")
        text = entry if isinstance(entry, str) else repr(entry)
        value = parse_expression(text, self.namespace, lambda line, column: label)
        if isinstance(value, sp.MatrixBase):
            raise SpecError(f"{label}: an entry must be a scalar, got shape {value.shape}")
        return value

    def _check_all_used(self, terms: Iterable[sp.Expr]) -> None:
        used = set().union(*(term.free_symbols for term in terms))
        for name, (table, symbols) in self.declared.items():
            if not used.intersection(symbols):
                raise SpecError(
                    f"{self._where(table, name)}: {name!r} is declared but no expression "
                    "uses it; remove it or use it"
                )

    def _load_data(self, loss: Loss, file: Any) -> None:
        where = self._where("problem", "data")
        if not isinstance(file, str):
            raise SpecError(f"{where}: data must be a file name string, got {file!r}")
        try:
            arrays = loss.layout.read_data(self.path.parent / file)
        except SpecError as error:
            raise SpecError(f"{where}: {error}") from None
        loss.data = arrays
        loss.default_data = arrays
