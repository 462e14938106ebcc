"""Declare: the DSL that builds a problem, and its input validation.

A spec declares parameters and data columns, then binds a `Loss` to the name
`problem`. Every entry of a parameter or data column is a real SymPy symbol, so
the loss is an ordinary SymPy expression::

    w = dg.parameter("w", 30)
    b = dg.parameter("b")
    x = dg.data("x", 30)
    y = dg.data("y")
    problem = dg.Loss(per_sample=dg.softplus(-y * (w.dot(x) + b)), regularizer=w.dot(w) / 2)

A spec may also supply discrete gradients written by hand, as `DiscreteGradient` values in
`Loss(discrete_gradients=...)`; `dgcodegen verify` checks them like the derived ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

from .errors import SpecError
from .functions import sigmoid, softplus
from .layout import Layout
from .names import (
    check_column_identifiers,
    check_discrete_gradient_name,
    check_name,
    check_problem_name,
)

Shape = tuple[int, ...]

SUPPORTED_FUNCTIONS: tuple[type, ...] = (
    sp.exp,
    sp.log,
    sp.sin,
    sp.cos,
    sp.tan,
    sp.tanh,
    sp.sinh,
    sp.cosh,
    sp.atan,
    sp.asinh,
    sp.erf,
    sp.Abs,
    sp.sign,
    sp.Max,
    sp.Min,
    sp.Heaviside,
    sp.Piecewise,
    softplus,
    sigmoid,
)
"""Functions that may appear in a loss; each has a kernel implementation."""


class _Declared(sp.Symbol):
    """Real symbol for one entry of a declared parameter or data column.

    The declaration is part of the symbol's identity, so two declarations named `w` give
    different symbols, a loss keeps its own `w`, and a loss using both is rejected.
    """

    _declared_shape: Shape

    def __new__(cls, name: str, shape: Shape = (), order: int = 0) -> _Declared:
        symbol = sp.Symbol.__xnew__(cls, name, real=True)
        symbol._declared_shape = tuple(shape)
        symbol._declaration_order = order
        return symbol

    def __getnewargs_ex__(self) -> tuple[tuple, dict]:
        return (self.name, self._declared_shape, self._declaration_order), {}

    def _hashable_content(self) -> tuple:
        return super()._hashable_content() + (self._declared_shape, self._declaration_order)


class ParameterSymbol(_Declared):
    """Entry of a parameter."""


class DataSymbol(_Declared):
    """Entry of a per-sample data column."""


@dataclass(frozen=True)
class Declaration:
    """A named parameter or data column of a given shape."""

    name: str
    shape: Shape
    kind: str  # "parameter" or "data"
    symbols: tuple[sp.Symbol, ...]
    order: int = 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def value(self) -> sp.Expr | sp.ImmutableMatrix:
        """Return the symbol (scalar) or the matrix of symbols the spec works with."""
        if self.shape == ():
            return self.symbols[0]
        rows = self.shape[0]
        cols = self.shape[1] if len(self.shape) == 2 else 1
        return sp.ImmutableMatrix(rows, cols, list(self.symbols))


_REGISTRY: dict[sp.Symbol, Declaration] = {}
_DECLARATION_COUNTER = itertools.count()


def _normalize_shape(name: str, shape: int | tuple[int, ...] | None, max_rank: int) -> Shape:
    if shape is None:
        return ()
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(shape)
    except TypeError:
        raise SpecError(f"{name!r} has shape {shape!r}; give an int or a tuple of ints") from None
    if len(shape) > max_rank:
        raise SpecError(
            f"{name!r} has shape {shape}, of rank {len(shape)}; declare at most rank {max_rank}"
        )
    for extent in shape:
        if not isinstance(extent, (int, np.integer)) or extent < 1:
            raise SpecError(f"{name!r} has shape {shape}; every extent must be a positive integer")
    return tuple(int(extent) for extent in shape)


def _declare(name: str, shape: Shape, kind: str, symbol_class: type[_Declared]) -> Declaration:
    check_name(name, kind)
    if shape == ():
        names = [name]
    else:
        names = [f"{name}[{', '.join(map(str, index))}]" for index in np.ndindex(*shape)]
    order = next(_DECLARATION_COUNTER)
    symbols = tuple(symbol_class(n, shape, order) for n in names)
    declaration = Declaration(name, shape, kind, symbols, order)
    for symbol in declaration.symbols:
        _REGISTRY[symbol] = declaration
    return declaration


def parameter(name: str, shape: int | tuple[int, ...] | None = None) -> Any:
    """Declare a real parameter: a scalar, a vector (`shape=n`) or a matrix (`shape=(m, n)`).

    Returns a SymPy symbol for a scalar and an immutable SymPy matrix (a column for a
    vector) otherwise.
    """
    return _declare(name, _normalize_shape(name, shape, 2), "parameter", ParameterSymbol).value()


def data(name: str, shape: int | tuple[int, ...] | None = None) -> Any:
    """Declare a data column with one scalar (`shape=None`) or vector (`shape=n`) per sample."""
    return _declare(name, _normalize_shape(name, shape, 1), "data", DataSymbol).value()


def declaration_of(symbol: sp.Symbol) -> Declaration:
    """Return the declaration that owns `symbol`, or raise SpecError for an unknown one."""
    try:
        return _REGISTRY[symbol]
    except KeyError:
        raise SpecError(
            f"unknown symbol {symbol.name!r}: declare it with dg.parameter({symbol.name!r}) "
            f"or dg.data({symbol.name!r})"
        ) from None


def _as_scalar(expr: Any, label: str) -> sp.Expr:
    if isinstance(expr, sp.MatrixBase):
        if expr.shape != (1, 1):
            raise SpecError(f"{label} must be a scalar, but it is a matrix of shape {expr.shape}")
        expr = expr[0, 0]
    try:
        expr = sp.sympify(expr)
    except sp.SympifyError as error:
        raise SpecError(f"{label} is not a SymPy expression: {expr!r}") from error
    if not isinstance(expr, sp.Expr):
        raise SpecError(f"{label} must be a scalar expression, got {type(expr).__name__}")
    return expr


def _distinct_nodes(expr: sp.Basic) -> Iterator[sp.Basic]:
    """Yield each distinct subexpression of `expr` once, in preorder.

    `sympy.preorder_traversal` visits a shared subexpression once per use, which for a
    network written in SymPy repeats each hidden unit for every output that uses it.
    """
    seen: set[sp.Basic] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(reversed(node.args))


def _check_functions(expr: sp.Expr, label: str) -> None:
    for node in _distinct_nodes(expr):
        if isinstance(node, (sp.Derivative, sp.Integral, sp.Subs, sp.Sum, sp.Product, sp.Limit)):
            raise SpecError(
                f"{label} contains the unevaluated {type(node).__name__} {node}; "
                "evaluate it with .doit() or write it out explicitly"
            )
        if isinstance(node, sp.Function) and not isinstance(node, SUPPORTED_FUNCTIONS):
            names = ", ".join(sorted(f.__name__ for f in SUPPORTED_FUNCTIONS))
            raise SpecError(
                f"{label} uses the unsupported function {type(node).__name__!s} in {node}; "
                f"supported functions: {names}"
            )
        if node.is_number and node.is_real is False and node.is_finite is not False:
            raise SpecError(f"{label} contains the non-real number {node}")
        if node in (sp.oo, -sp.oo, sp.zoo, sp.nan):
            raise SpecError(f"{label} contains the non-finite value {node}")


@dataclass(frozen=True)
class DiscreteGradient:
    """A discrete gradient `DG(x, y)` of the one-sample loss, written by hand.

    `function(x, y)` receives two n x 1 SymPy matrices of real symbols: the current and the
    next flat parameter vector, with the parameters in declaration order and matrix
    parameters row-major (the order of `Loss.parameter_symbols`). It returns the n entries
    of `DG(x, y)` as a list or a SymPy matrix, in those symbols and the data symbols of
    the spec. The loss it must be a discrete gradient of is `per_sample + regularizer`
    (or `objective`) for one sample. `dgcodegen verify` checks it like a derived one.

    Args:
        function: maps `(x, y)` to the entries of `DG(x, y)`.
        symmetric: whether `DG(x, y) = DG(y, x)`; verify checks the claim when it is true.
    """

    function: Callable[[sp.Matrix, sp.Matrix], Any]
    symmetric: bool = False


@dataclass
class Loss:
    """A loss `reduction_i per_sample(params, data_i) + regularizer(params)`.

    Args:
        objective: data-free loss `V(params)`, for problems without data.
        per_sample: term evaluated for each sample; may use data columns.
        reduction: "sum" or "mean" over samples.
        regularizer: data-free term added to the reduced per-sample term.
        data: default data, a mapping from data-column name to an array with one row
            per sample.
        initial: starting point, a mapping from parameter name to an array; missing
            parameters start at zero.
        name: identifier for generated code; the spec's file name by default.
        discrete_gradients: hand-written discrete gradients by name, checked by
            `dgcodegen verify`.
    """

    objective: Any = 0
    per_sample: Any = None
    reduction: str = "sum"
    regularizer: Any = None
    data: dict[str, Any] | None = None
    initial: dict[str, Any] | None = None
    name: str | None = None
    discrete_gradients: dict[str, DiscreteGradient] | None = None
    parameters: list[Declaration] = field(init=False)
    columns: list[Declaration] = field(init=False)

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean"):
            raise SpecError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.name is not None:
            check_problem_name(self.name)
        objective = _as_scalar(self.objective, "the objective")
        regularizer = _as_scalar(self.regularizer or 0, "the regularizer")
        if objective != 0 and regularizer != 0:
            raise SpecError("give either objective or regularizer (both are the data-free term)")
        self.free_term = objective + regularizer
        self.sample_term = _as_scalar(self.per_sample or 0, "the per-sample term")
        for label, term in (
            ("the per-sample term", self.sample_term),
            ("the data-free term", self.free_term),
        ):
            if term.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
                raise SpecError(f"{label} is not finite: {term}; check for nan or inf constants")
        self._collect_declarations()
        self._check_terms()
        self.initial_point = self._initial_vector(self.initial or {})
        self.default_data = self.validate_data(self.data) if self.data is not None else None
        self._check_discrete_gradients()

    def _collect_declarations(self) -> None:
        declarations: list[Declaration] = []
        for expr in (self.sample_term, self.free_term):
            for symbol in sorted(expr.free_symbols, key=lambda s: s.name):
                declaration = declaration_of(symbol)
                if declaration not in declarations:
                    declarations.append(declaration)
        # Declaration order, so the flat parameter vector follows the spec's reading order.
        declarations.sort(key=lambda d: d.order)
        self.parameters = [d for d in declarations if d.kind == "parameter"]
        self.columns = [d for d in declarations if d.kind == "data"]
        if not self.parameters:
            raise SpecError("the loss depends on no parameter; declare one with dg.parameter")
        names = [d.name for d in self.parameters + self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SpecError(
                f"the loss uses two declarations named {duplicates[0]!r}; "
                "give each parameter and data column its own name"
            )
        check_column_identifiers([(d.name, d.size) for d in self.columns])

    def _check_terms(self) -> None:
        if self.sample_term != 0 and not self.columns:
            raise SpecError(
                "the per-sample term uses no data column; pass a data-free loss as "
                "objective= (or regularizer=) instead"
            )
        data_in_free = [s.name for s in self.free_term.free_symbols if isinstance(s, DataSymbol)]
        if data_in_free:
            raise SpecError(
                f"the data-free term uses the data symbol {sorted(data_in_free)[0]!r}; "
                "move that part into per_sample"
            )
        _check_functions(self.sample_term, "the per-sample term")
        _check_functions(self.free_term, "the data-free term")
        if self.columns and self.sample_term == 0:
            raise SpecError("data columns are declared but there is no per-sample term")

    def _check_discrete_gradients(self) -> None:
        from .derive import DISCRETE_GRADIENTS

        if self.discrete_gradients is None:
            self.discrete_gradients = {}
        if not isinstance(self.discrete_gradients, dict):
            raise SpecError(
                "discrete_gradients must be a dict from name to dg.DiscreteGradient, got a "
                f"{type(self.discrete_gradients).__name__}"
            )
        n = len(self.parameter_symbols)
        x = sp.Matrix([sp.Symbol(f"x_{i}", real=True) for i in range(n)])
        y = sp.Matrix([sp.Symbol(f"y_{i}", real=True) for i in range(n)])
        # Names are compared with '-' read as '_', the spelling of kernel names.
        taken = {derived.replace("-", "_"): derived for derived in DISCRETE_GRADIENTS}
        for name, value in self.discrete_gradients.items():
            check_discrete_gradient_name(name)
            other = taken.setdefault(name.replace("-", "_"), name)
            if other in DISCRETE_GRADIENTS:
                raise SpecError(
                    f"the discrete gradient name {name!r} is taken by a derived discrete "
                    f"gradient ({other!r}); choose another name"
                )
            if other != name:
                raise SpecError(
                    f"the discrete gradient names {other!r} and {name!r} differ only in '-' "
                    "and '_'; choose names that differ in letters or digits"
                )
            if not isinstance(value, DiscreteGradient):
                raise SpecError(
                    f"discrete gradient {name!r} is a {type(value).__name__}; wrap it as "
                    "dg.DiscreteGradient(function, symmetric=...)"
                )
            if not callable(value.function):
                raise SpecError(
                    f"discrete gradient {name!r} has the non-callable function "
                    f"{value.function!r}; pass a function of (x, y)"
                )
            if not isinstance(value.symmetric, bool):
                raise SpecError(
                    f"discrete gradient {name!r} has symmetric={value.symmetric!r}; "
                    "pass True or False"
                )
            self.evaluate_discrete_gradient(name, x, y)

    def evaluate_discrete_gradient(
        self, name: str, x: sp.MatrixBase, y: sp.MatrixBase
    ) -> list[sp.Expr]:
        """Call the hand-written discrete gradient `name` at `(x, y)` and check its entries.

        Raises:
            SpecError: when the function raises, returns the wrong number of entries or
                something other than SymPy expressions, or uses a symbol other than the
                entries of `x`, `y` and the data symbols.
        """
        label = f"discrete gradient {name!r}"
        try:
            result = self.discrete_gradients[name].function(x, y)
        except Exception as error:
            raise SpecError(f"{label} raised {type(error).__name__}: {error}") from error
        entries = _discrete_gradient_entries(result, len(x), label)
        allowed = set(x) | set(y) | {s for column in self.data_symbols for s in column}
        for index, entry in enumerate(entries):
            where = f"entry {index} of {label}"
            for symbol in sorted(entry.free_symbols - allowed, key=lambda s: s.name):
                if isinstance(symbol, ParameterSymbol):
                    raise SpecError(
                        f"{where} uses the parameter symbol {symbol.name!r}; write it in "
                        "the x and y that the function receives"
                    )
                raise SpecError(
                    f"{where} uses the unknown symbol {symbol.name!r}; use only the entries "
                    "of x and y and the data symbols"
                )
            _check_functions(entry, where)
        return entries

    @property
    def parameter_symbols(self) -> list[sp.Symbol]:
        """All parameter entries, flattened in declaration order (row-major)."""
        return [s for d in self.parameters for s in d.symbols]

    @property
    def data_symbols(self) -> list[list[sp.Symbol]]:
        """Entries of each data column, in column order."""
        return [list(d.symbols) for d in self.columns]

    @property
    def has_data(self) -> bool:
        return bool(self.columns)

    @property
    def layout(self) -> Layout:
        """Names, shapes and starting point, for code that runs without SymPy."""
        return Layout(
            name=self.name or "",
            parameters=tuple((d.name, d.shape) for d in self.parameters),
            columns=tuple((d.name, d.shape) for d in self.columns),
            initial=tuple(float(v) for v in self.initial_point),
        )

    def validate_data(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check data arrays against the declared columns and return them as 2-D float64.

        Raises:
            SpecError: for a missing or unknown column, a wrong shape, unequal sample
                counts, or a `nan`/`inf` entry.
        """
        return self.layout.validate_data(arrays)

    def _initial_vector(self, initial: dict[str, Any]) -> np.ndarray:
        names = {d.name: d for d in self.parameters}
        unknown = sorted(set(initial) - set(names))
        if unknown:
            raise SpecError(
                f"initial value given for {unknown[0]!r}, which is not a parameter the loss "
                f"uses; the loss uses {[d.name for d in self.parameters]}"
            )
        parts = []
        for declaration in self.parameters:
            try:
                value = np.asarray(initial.get(declaration.name, 0.0), dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise SpecError(
                    f"initial value of {declaration.name!r} is not numeric: {error}"
                ) from error
            if value.shape != declaration.shape and value.size == declaration.size:
                value = value.reshape(declaration.shape)
            if value.shape != declaration.shape and value.shape != ():
                raise SpecError(
                    f"initial value of {declaration.name!r} has shape {value.shape}, "
                    f"expected {declaration.shape}"
                )
            value = np.broadcast_to(value, declaration.shape)
            if not np.all(np.isfinite(value)):
                raise SpecError(f"initial value of {declaration.name!r} is not finite")
            parts.append(value.ravel())
        return np.concatenate(parts).astype(np.float64)

    def split_parameters(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat parameter vector into arrays named and shaped as declared."""
        return self.layout.split_parameters(vector)

    def join_parameters(self, values: dict[str, Any]) -> np.ndarray:
        """Flatten named parameter arrays into one vector; the inverse of `split_parameters`."""
        return self.layout.join_parameters(values)

    def fingerprint(self) -> str:
        """Return a hash of everything that determines the generated code."""
        text = "\n".join(
            [
                self.reduction,
                sp.srepr(self.sample_term),
                sp.srepr(self.free_term),
                repr([(d.name, d.shape, d.kind) for d in self.parameters + self.columns]),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _discrete_gradient_entries(result: Any, n: int, label: str) -> list[sp.Expr]:
    if isinstance(result, sp.MatrixBase):
        if n not in result.shape or 1 not in result.shape:
            raise SpecError(f"{label} returned a matrix of shape {result.shape}, expected ({n}, 1)")
        result = list(result)
    if not isinstance(result, (list, tuple)):
        raise SpecError(
            f"{label} returned a value of type {type(result).__name__}, expected a list or a "
            f"SymPy matrix of {n} entries"
        )
    if len(result) != n:
        raise SpecError(
            f"{label} returned {len(result)} entries, expected {n}: one per parameter entry"
        )
    entries = []
    for index, entry in enumerate(result):
        try:
            entry = sp.sympify(entry, strict=True)
        except sp.SympifyError:
            raise SpecError(
                f"entry {index} of {label} is the {type(entry).__name__} {entry!r}, "
                "not a SymPy expression"
            ) from None
        if not isinstance(entry, sp.Expr):
            raise SpecError(
                f"entry {index} of {label} is a {type(entry).__name__}, not a scalar expression"
            )
        entries.append(entry)
    return entries


def load_spec(path: str | Path) -> Loss:
    """Load a spec: execute a Python file, or read a `.toml` file without executing anything.

    A Python spec must bind a Loss to the name `problem`; see `toml_spec` for TOML specs.

    Raises:
        SpecError: when the file is missing, fails to run, or binds no Loss.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    if path.suffix == ".toml":
        from .toml_spec import load_toml_spec

        return load_toml_spec(path)
    module_name = f"_dgcodegen_spec_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot load {path} as a Python module; the spec must be a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SpecError:
        raise
    except SystemExit as error:
        raise SpecError(
            f"the spec {path} called sys.exit({error.code!r}) while loading; a spec must only "
            "bind `problem`, so remove the call or guard it with `if __name__ == '__main__':`"
        ) from error
    except Exception as error:
        raise SpecError(
            f"running the spec {path} failed: {type(error).__name__}: {error}"
        ) from error
    finally:
        sys.modules.pop(module_name, None)
    problem = getattr(module, "problem", None)
    from .network import Network
    from .system import System

    if not isinstance(problem, (Loss, System, Network)):
        raise SpecError(
            f"{path} must bind a dg.Loss, a dg.System or a dg.Network to the name 'problem', "
            f"found {type(problem).__name__}"
        )
    if problem.name is None:
        problem.name = path.stem
    check_problem_name(problem.name)
    return problem
