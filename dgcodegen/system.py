"""Declare: a system `x' = S(x) grad H(x)` with a state, an energy and a structure matrix.

A spec declares the state with `dg.state` (the same real symbols as `dg.parameter`) and
binds a `System` to the name `problem`::

    q, p = dg.state("q"), dg.state("p")
    problem = dg.System(
        energy=p**2 / 2 - sp.cos(q),
        structure=[[0, 1], [-1, 0]],
        initial={"q": sp.pi / 2, "p": 0},
        step=0.01,
    )

The energy is handled like a data-free loss, so every discrete gradient of a `Loss`
applies to it. `classify_structure` decides symbolically whether `S` is skew (then `H`
is conserved), negative semidefinite (then `H` does not increase) or neither.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any

import sympy as sp

from .calculus import diff
from .dsl import Loss, ParameterSymbol, _as_scalar, _check_functions, parameter
from .errors import SpecError
from .proofs import prove_zero

SKEW = "skew"
NEGATIVE_SEMIDEFINITE = "negative semidefinite"
GENERAL = "general"

FOURTH_ORDER = "mean-value-4"
"""Name of the fourth-order average vector field step, which needs a constant `S`."""

MAX_MINOR_SIZE = 6
"""Largest state size whose structure matrix is tested through all principal minors.

A matrix of size n has 2^n - 1 principal minors; above this size a matrix that is not
skew is classified as general."""


def state(name: str, shape: int | tuple[int, ...] | None = None) -> Any:
    """Declare a real state variable: a scalar, or a vector with `shape=n`.

    The entries are the same kind of symbol as those of `dg.parameter`.
    """
    return parameter(name, shape)


@dataclass(frozen=True)
class Classification:
    """Kind of a structure matrix `S`, and how it was established.

    Attributes:
        kind: SKEW, NEGATIVE_SEMIDEFINITE or GENERAL.
        constant: whether `S` is free of the state.
        method: how the kind was established, for the verify certificate.
    """

    kind: str
    constant: bool
    method: str


class System:
    """A system `x' = S(x) grad H(x)` integrated by discrete gradient steps.

    Each step solves `y = x + h S((x + y) / 2) DG(x, y)`, where `DG` is a discrete
    gradient of `H`. Then `H(y) - H(x) = h DG^T S DG`, which is zero for skew `S` and
    at most zero for negative semidefinite `S`.

    Args:
        energy: the energy `H`, a scalar SymPy expression in the state symbols.
        structure: the n x n matrix `S`, as a SymPy matrix or nested lists, constant or
            depending on the state. Rows and columns follow the flat state vector: the
            state variables in declaration order, vectors entry by entry.
        initial: starting state, a mapping from state name to a number or an array;
            missing state variables start at zero.
        step: default step size `h` of `dgcodegen solve`.
        name: identifier for generated code; the spec's file name by default.
        state: the state variables, optional; when given, they must be exactly the
            variables of the energy.
    """

    def __init__(
        self,
        energy: Any,
        structure: Any,
        initial: dict[str, Any] | None = None,
        step: float | None = None,
        name: str | None = None,
        state: Any = None,
    ) -> None:
        energy = _as_scalar(energy, "the energy")
        self.loss = Loss(objective=energy, initial=_numeric_initial(initial), name=name)
        self.energy = energy
        self.step = _check_step(step)
        self.state_symbols = self.loss.parameter_symbols
        self.n = len(self.state_symbols)
        self._check_state(state)
        self.structure = _structure_matrix(structure, self.state_symbols)
        self.classification = classify_structure(self.structure, self.state_symbols)

    @property
    def name(self) -> str | None:
        return self.loss.name

    @name.setter
    def name(self, value: str | None) -> None:
        self.loss.name = value

    @property
    def initial_point(self) -> Any:
        return self.loss.initial_point

    @property
    def state_variables(self) -> list:
        """Declarations of the state variables, in the order of the flat state vector."""
        return self.loss.parameters

    def state_names(self) -> list[str]:
        """Name of each entry of the flat state vector, such as `q` or `q[1]`."""
        return [symbol.name for symbol in self.state_symbols]

    def split_state(self, vector: Any) -> dict[str, Any]:
        """Split a flat state vector into arrays named and shaped as declared."""
        return self.loss.split_parameters(vector)

    def structure_derivative(self) -> list[list[list[sp.Expr]]]:
        """Return `dS_ij / dx_k` as nested lists indexed `[i][j][k]`."""
        return [
            [[diff(self.structure[i, j], t) for t in self.state_symbols] for j in range(self.n)]
            for i in range(self.n)
        ]

    def fingerprint(self) -> str:
        """Return a hash of everything that determines the generated code."""
        text = "\n".join(
            [
                "system",
                self.loss.fingerprint(),
                sp.srepr(sp.ImmutableMatrix(self.structure)),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def _check_state(self, declared: Any) -> None:
        if declared is None:
            return
        if isinstance(declared, sp.MatrixBase):
            symbols = list(declared)
        elif isinstance(declared, (list, tuple)):
            symbols = []
            for item in declared:
                symbols += list(item) if isinstance(item, sp.MatrixBase) else [item]
        else:
            symbols = [declared]
        for symbol in symbols:
            if not isinstance(symbol, ParameterSymbol):
                raise SpecError(f"state= contains {symbol!r}, which is not declared with dg.state")
        missing = sorted(s.name for s in set(symbols) - set(self.state_symbols))
        if missing:
            raise SpecError(
                f"the state entry {missing[0]!r} does not appear in the energy; every state "
                "variable must enter H"
            )
        extra = sorted(s.name for s in set(self.state_symbols) - set(symbols))
        if extra:
            raise SpecError(
                f"the energy uses {extra[0]!r}, which is not in state=; add it to the state"
            )


def _numeric_initial(initial: dict[str, Any] | None) -> dict[str, Any] | None:
    """Evaluate SymPy numbers such as `sp.pi / 2` in the initial state to floats."""
    if initial is None:
        return None
    if not isinstance(initial, dict):
        raise SpecError(f"initial must be a dict from state name to value, got {initial!r}")
    result = {}
    for key, value in initial.items():
        if isinstance(value, sp.Basic):
            if not value.is_number:
                raise SpecError(f"initial value of {key!r} is the non-numeric {value}")
            value = float(value)
        result[key] = value
    return result


def _check_step(step: Any) -> float | None:
    if step is None:
        return None
    try:
        value = float(step)
    except (TypeError, ValueError):
        raise SpecError(f"invalid step {step!r}: give a finite number > 0") from None
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"invalid step {step!r}: the step size must be finite and > 0")
    return value


def _structure_matrix(structure: Any, state_symbols: list[sp.Symbol]) -> sp.ImmutableMatrix:
    """Check that `structure` is an n x n matrix of expressions in the state only."""
    n, state = len(state_symbols), set(state_symbols)
    try:
        matrix = sp.ImmutableMatrix(structure)
    except (TypeError, ValueError, sp.SympifyError) as error:
        raise SpecError(
            f"the structure matrix is not a matrix: {error}; give nested lists or a SymPy Matrix"
        ) from error
    if matrix.shape != (n, n):
        raise SpecError(
            f"the structure matrix has shape {matrix.shape}, expected ({n}, {n}): one row and "
            f"one column per entry of the state {[s.name for s in state_symbols]}, which are the "
            "variables of the energy"
        )
    for (i, j), entry in zip(itertools.product(range(n), range(n)), matrix):
        label = f"entry ({i}, {j}) of the structure matrix"
        entry = _as_scalar(entry, label)
        if entry.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
            raise SpecError(f"{label} is not finite: {entry}")
        _check_functions(entry, label)
        unknown = sorted(s.name for s in entry.free_symbols - state)
        if unknown:
            raise SpecError(
                f"{label} uses {unknown[0]!r}, which is not a state variable of the energy; "
                "S may depend only on the state"
            )
    return matrix


def classify_structure(structure: sp.MatrixBase, state: list[sp.Symbol]) -> Classification:
    """Decide symbolically whether `S` is skew, negative semidefinite or neither.

    `S` is skew when every entry of `S + S^T` reduces to zero. Otherwise it is negative
    semidefinite when every principal minor of `-(S + S^T) / 2` is provably nonnegative
    for all real states (SymPy's sign assumptions after `factor`), and general when a
    minor is negative or cannot be decided.
    """
    constant = not (structure.free_symbols & set(state))
    symmetric = structure + structure.T
    method = prove_zero(list(symmetric))
    if method is not None:
        return Classification(SKEW, constant, f"S + S^T reduces to zero by {method}")
    n = structure.shape[0]
    if n > MAX_MINOR_SIZE:
        return Classification(
            GENERAL, constant, f"S + S^T is not zero; no definiteness test above size {n}"
        )
    negative_part = -symmetric / 2
    for size in range(1, n + 1):
        for rows in itertools.combinations(range(n), size):
            minor = sp.factor(sp.expand(negative_part.extract(list(rows), list(rows)).det()))
            if minor.is_nonnegative is not True:
                reason = "is negative" if minor.is_negative else "has no provable sign"
                return Classification(
                    GENERAL,
                    constant,
                    f"the principal minor {list(rows)} of -(S + S^T)/2 {reason}: {minor}",
                )
    return Classification(
        NEGATIVE_SEMIDEFINITE,
        constant,
        "every principal minor of -(S + S^T)/2 is nonnegative",
    )
