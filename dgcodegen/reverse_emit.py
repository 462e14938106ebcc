"""Lower and emit the reverse-mode programs of a loss as matrix-free Numba kernels.

The kernels module rendered from `templates/matrix_free.py.jinja` has the interface that
`MatrixFreeKernels` expects: `loss(theta, *data)`, `loss_gradient(theta, *data)` returning
the loss and its gradient, `gradient(theta, *data)` and `hvp(theta, v, *data)`.

The programs are not printed as Python statements. Numba's compile time grows faster than
linearly with the length of a function: printed as straight-line code, the loss of the
1,210-parameter network of `examples/mlp_sympy.py` took 59 s to compile and its gradient
316 s (Numba 0.68, shared 2-core machine). Instead each program is lowered to a *tape*: an
array of operations on a slot array, run by a small interpreter in the template that
compiles once, in seconds, whatever the loss. The tape's length grows linearly with the loss
expression.

The slots of a term's tapes are `theta`, the direction `v`, the data entries of one sample
(the columns side by side) and the program's assignments, in this order. Constants and
scratch slots for subexpressions of an assignment follow in the order the encoder meets
them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp

from . import __version__
from .dsl import Loss
from .emit import (
    GENERATED_LINE,
    PROBLEM_TEMPLATE,
    _check_syntax,
    _layout_literals,
    _runtime_copies,
    environment,
    template_directory,
)
from .errors import CodegenError
from .functions import sigmoid, softplus
from .reverse import ReverseDerivation, TermPrograms, count_operations, derive_reverse

log = logging.getLogger("dgcodegen")

MATRIX_FREE_TEMPLATE = "matrix_free.py.jinja"

OPCODES = (
    "linear",
    "product",
    "power",
    "power_variable",
    "copy",
    "exp",
    "log",
    "sin",
    "cos",
    "tan",
    "tanh",
    "sinh",
    "cosh",
    "atan",
    "asinh",
    "erf",
    "abs",
    "sign",
    "softplus",
    "sigmoid",
    "heaviside",
    "max",
    "min",
    "less",
    "less_equal",
    "greater",
    "greater_equal",
    "equal",
    "not_equal",
    "and",
    "or",
    "not",
    "jump_if_zero",
    "jump",
)
"""Operations of the tape interpreter, numbered in this order. The template defines one
`_OP_<NAME>` constant per entry."""

CODE = {name: number for number, name in enumerate(OPCODES)}

_UNARY = {
    sp.exp: "exp",
    sp.log: "log",
    sp.sin: "sin",
    sp.cos: "cos",
    sp.tan: "tan",
    sp.tanh: "tanh",
    sp.sinh: "sinh",
    sp.cosh: "cosh",
    sp.atan: "atan",
    sp.asinh: "asinh",
    sp.erf: "erf",
    sp.Abs: "abs",
    sp.sign: "sign",
    softplus: "softplus",
    sigmoid: "sigmoid",
}

_COMPARISONS = {
    sp.StrictLessThan: "less",
    sp.LessThan: "less_equal",
    sp.StrictGreaterThan: "greater",
    sp.GreaterThan: "greater_equal",
    sp.Equality: "equal",
    sp.Unequality: "not_equal",
}


@dataclass
class Tape:
    """Operations of one kernel block, in the array form the interpreter runs.

    Each operation is `(opcode, target slot, first operand, end of operands)`, with its
    operands in `operands[first:end]` and one weight per operand for "linear". Each also
    has one entry in `numbers`, which is the constant term of "linear", the factor of
    "product", the exponent of "power" or the value at zero of "heaviside". A jump's target
    is an operation index.
    """

    operations: list[tuple[int, int, int, int]] = field(default_factory=list)
    numbers: list[float] = field(default_factory=list)
    operands: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def emit(
        self,
        name: str,
        target: int,
        operands: list[int],
        number: float = 0.0,
        weights: list[float] | None = None,
    ) -> int:
        """Append one operation and return its index."""
        first = len(self.operands)
        self.operands.extend(operands)
        self.weights.extend(weights if weights is not None else [1.0] * len(operands))
        self.operations.append((CODE[name], target, first, len(self.operands)))
        self.numbers.append(number)
        return len(self.operations) - 1

    def patch_target(self, index: int, target: int) -> None:
        code, _, first, end = self.operations[index]
        self.operations[index] = (code, target, first, end)


class SlotLayout:
    """Slot numbers of the symbols, constants and scratch values of one term's tapes."""

    def __init__(self, derivation: ReverseDerivation, problem: Loss, term: TermPrograms) -> None:
        self.slots: dict[sp.Basic, int] = {}
        for index, symbol in enumerate(derivation.parameters):
            self.slots[symbol] = index
        n = len(derivation.parameters)
        for index, symbol in enumerate(derivation.direction):
            self.slots[symbol] = n + index
        data = [s for column in problem.columns for s in column.symbols]
        for index, symbol in enumerate(data):
            self.slots[symbol] = 2 * n + index
        self.data_offset = 2 * n
        self.size = 2 * n + len(data)
        for symbol, _ in term.assignments:
            self.slots[symbol] = self._new_slot()
        self.constants: dict[float, int] = {}

    def constant(self, value: float) -> int:
        """Return the slot of a constant, which the kernels fill before running a tape."""
        if value not in self.constants:
            self.constants[value] = self._new_slot()
        return self.constants[value]

    def _new_slot(self) -> int:
        self.size += 1
        return self.size - 1

    def scratch(self) -> int:
        return self._new_slot()


def _float(expr: sp.Basic) -> float:
    try:
        value = float(expr)
    except TypeError:
        raise CodegenError(f"the constant {expr} is not a real number") from None
    if not math.isfinite(value):
        raise CodegenError(f"the number {expr} is outside the float64 range")
    return value


class Encoder:
    """Encode assignments of a term into tapes of the interpreter's operations."""

    def __init__(self, layout: SlotLayout) -> None:
        self.layout = layout

    def slot(self, expr: sp.Basic, tape: Tape) -> int:
        """Return a slot holding `expr`, encoding the operations it needs into `tape`."""
        if isinstance(expr, sp.Symbol):
            try:
                return self.layout.slots[expr]
            except KeyError:
                raise CodegenError(f"the symbol {expr.name!r} has no slot") from None
        if expr in (sp.true, sp.false):
            return self.layout.constant(1.0 if expr == sp.true else 0.0)
        if expr.is_number:
            return self.layout.constant(_float(expr))
        target = self.layout.scratch()
        self.encode(expr, target, tape)
        return target

    def encode(self, expr: sp.Basic, target: int, tape: Tape) -> None:
        """Encode operations that write `expr` into slot `target`."""
        if isinstance(expr, sp.Symbol) or expr.is_number or expr in (sp.true, sp.false):
            tape.emit("copy", target, [self.slot(expr, tape)])
        elif isinstance(expr, sp.Add):
            self._linear(expr, target, tape)
        elif isinstance(expr, sp.Mul):
            coefficient, rest = expr.as_coeff_Mul()
            factors = [self.slot(f, tape) for f in sp.Mul.make_args(rest)]
            tape.emit("product", target, factors, _float(coefficient))
        elif isinstance(expr, sp.Pow):
            base = self.slot(expr.base, tape)
            if expr.exp.is_number:
                tape.emit("power", target, [base], _float(expr.exp))
            else:
                tape.emit("power_variable", target, [base, self.slot(expr.exp, tape)])
        elif isinstance(expr, sp.Piecewise):
            self._piecewise(expr, target, tape)
        elif isinstance(expr, sp.Heaviside):
            at_zero = _float(expr.args[1]) if len(expr.args) > 1 else 0.5
            tape.emit("heaviside", target, [self.slot(expr.args[0], tape)], at_zero)
        elif expr.func in _UNARY:
            tape.emit(_UNARY[expr.func], target, [self.slot(expr.args[0], tape)])
        elif isinstance(expr, (sp.Max, sp.Min)):
            name = "max" if isinstance(expr, sp.Max) else "min"
            tape.emit(name, target, [self.slot(arg, tape) for arg in expr.args])
        elif type(expr) in _COMPARISONS:
            operands = [self.slot(expr.lhs, tape), self.slot(expr.rhs, tape)]
            tape.emit(_COMPARISONS[type(expr)], target, operands)
        elif isinstance(expr, (sp.And, sp.Or)):
            name = "and" if isinstance(expr, sp.And) else "or"
            tape.emit(name, target, [self.slot(arg, tape) for arg in expr.args])
        elif isinstance(expr, sp.Not):
            tape.emit("not", target, [self.slot(expr.args[0], tape)])
        else:
            raise CodegenError(f"no tape operation for {type(expr).__name__} in {expr}")

    def _linear(self, expr: sp.Add, target: int, tape: Tape) -> None:
        constant = 0.0
        slots, weights = [], []
        for term in expr.args:
            coefficient, rest = term.as_coeff_Mul()
            if rest == 1:
                constant += _float(coefficient)
            else:
                slots.append(self.slot(rest, tape))
                weights.append(_float(coefficient))
        tape.emit("linear", target, slots, constant, weights)

    def _piecewise(self, expr: sp.Piecewise, target: int, tape: Tape) -> None:
        """Encode the branches with jumps, so only the taken branch is evaluated."""
        to_end = []
        for value, condition in expr.args:
            if condition == sp.true:
                self.encode(value, target, tape)
                break
            skip = tape.emit("jump_if_zero", -1, [self.slot(condition, tape)])
            self.encode(value, target, tape)
            to_end.append(tape.emit("jump", -1, []))
            tape.patch_target(skip, len(tape.operations))
        else:
            raise CodegenError(f"Piecewise without a final True branch cannot be encoded: {expr}")
        for index in to_end:
            tape.patch_target(index, len(tape.operations))


@dataclass
class LoweredBlock:
    """One loss term's contribution to one kernel, as a tape and its outputs.

    Attributes:
        tape: the operations.
        value: slot of the term's value, or -1 for an HVP block.
        entries: `(parameter index, slot)` of the gradient or HVP entries that are not zero.
        operations: arithmetic operations and function calls of the block's assignments.
    """

    tape: Tape
    value: int
    entries: list[tuple[int, int]]
    operations: int


def _lower_block(
    term: TermPrograms, value: sp.Expr | None, entries: list[sp.Expr], encoder: Encoder
) -> LoweredBlock:
    outputs = [e for e in entries if e != 0] + ([] if value is None else [value])
    live = term.live(outputs)
    tape = Tape()
    for symbol, expr in live:
        encoder.encode(expr, encoder.layout.slots[symbol], tape)
    value_slot = -1 if value is None else encoder.slot(value, tape)
    slots = [(k, encoder.slot(e, tape)) for k, e in enumerate(entries) if e != 0]
    return LoweredBlock(tape, value_slot, slots, count_operations(live, outputs))


@dataclass
class LoweredTerm:
    """The loss, gradient and HVP tapes of one term, with its slot layout."""

    loss: LoweredBlock
    gradient: LoweredBlock
    hvp: LoweredBlock
    slots: int
    data_offset: int
    constants: dict[float, int]


def lower_term(problem: Loss, derivation: ReverseDerivation, term: TermPrograms) -> LoweredTerm:
    """Lower the loss, gradient and HVP blocks of one term into tapes."""
    layout = SlotLayout(derivation, problem, term)
    encoder = Encoder(layout)
    blocks = [
        _lower_block(term, term.value, [], encoder),
        _lower_block(term, term.value, term.gradient, encoder),
        _lower_block(term, None, term.hvp, encoder),
    ]
    return LoweredTerm(
        *blocks,
        slots=layout.size,
        data_offset=layout.data_offset,
        constants=layout.constants,
    )


def _array_text(values: list, per_line: int = 16) -> str:
    """Return the items of a list as lines of comma-separated literals."""
    rows = [values[i : i + per_line] for i in range(0, len(values), per_line)]
    return "\n".join("    " + ", ".join(repr(v) for v in row) + "," for row in rows)


def _block_literals(block: LoweredBlock) -> dict[str, object]:
    return {
        "operations": _array_text([entry for op in block.tape.operations for entry in op], 4),
        "n_operations": len(block.tape.operations),
        "numbers": _array_text(block.tape.numbers, 8),
        "operands": _array_text(block.tape.operands),
        "weights": _array_text(block.tape.weights, 8),
        "value": block.value,
        "entry_indices": _array_text([k for k, _ in block.entries]),
        "entry_slots": _array_text([slot for _, slot in block.entries]),
        "operations_count": block.operations,
    }


def _term_literals(term: LoweredTerm) -> dict[str, object]:
    return {
        "loss": _block_literals(term.loss),
        "gradient": _block_literals(term.gradient),
        "hvp": _block_literals(term.hvp),
        "slots": term.slots,
        "data_offset": term.data_offset,
        "constant_slots": _array_text(list(term.constants.values())),
        "constant_values": _array_text(list(term.constants), 4),
    }


RENDER_CACHE_FOLDER = "reverse-renders"
"""Folder under the kernel cache (`runtime.cache_directory`) that contains rendered files."""

RENDER_CACHE_SIZE = 16
"""Renderings kept in the cache folder. Every change of a loss or of dgcodegen's code adds
one, about 1 MB for `examples/mlp_sympy.py`, and the oldest go first."""


def expression_digest(expressions: list[sp.Basic]) -> str:
    """Return a SHA-256 digest of SymPy expressions that is the same in every process.

    Each distinct subexpression is hashed once, from its class name and its arguments'
    digests, so shared subexpressions cost nothing more. `sp.srepr` of the digits loss
    of `examples/mlp_sympy.py` repeats them and took 6.5 s.
    """
    memo: dict[sp.Basic, str] = {}
    for root in expressions:
        stack = [root]
        while stack:
            expr = stack[-1]
            if expr in memo:
                stack.pop()
                continue
            pending = [arg for arg in expr.args if arg not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if expr.args:
                text = f"{type(expr).__name__}({','.join(memo[arg] for arg in expr.args)})"
            else:
                text = sp.srepr(expr)
            memo[expr] = hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256("|".join(memo[root] for root in expressions).encode()).hexdigest()


def _code_digest() -> str:
    """Return a digest of dgcodegen's modules and templates, which determine the rendering."""
    templates = [path for path in sorted(template_directory().glob("*")) if path.is_file()]
    paths = sorted(Path(__file__).parent.glob("*.py")) + templates
    digest = hashlib.sha256(__version__.encode())
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def render_cache_key(problem: Loss) -> str:
    """Return the key of a loss's rendered package: its terms, layout and dgcodegen's code."""
    parts = [
        _code_digest(),
        problem.reduction,
        expression_digest([problem.sample_term, problem.free_term]),
        repr([(d.name, d.shape, d.kind) for d in problem.parameters + problem.columns]),
        repr(problem.layout),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cached_render(problem: Loss) -> dict[str, str]:
    """Return the rendered files of a loss from the render cache, deriving them on a miss.

    Derivation and rendering took 4.8 s of a 10 s start of `examples/mlp_sympy.py` with
    compiled kernels in Numba's cache. A cache folder that cannot be written only costs
    the saving.
    """
    from .files import write_atomic
    from .runtime import cache_directory

    started = time.perf_counter()
    path = cache_directory() / RENDER_CACHE_FOLDER / f"{render_cache_key(problem)}.json"
    try:
        files = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        files = None
    if isinstance(files, dict) and all(isinstance(v, str) for v in files.values()):
        elapsed = time.perf_counter() - started
        log.info("loaded the rendered kernels from %s in %.2f s", path, elapsed)
        return files
    files = render_matrix_free(problem, derive_reverse(problem))
    try:
        write_atomic(path, json.dumps(files))
        _prune(path.parent)
    except OSError as error:
        log.warning("cannot keep the rendered kernels in %s: %s", path.parent, error)
    return files


def _prune(folder: Path) -> None:
    """Delete all but the RENDER_CACHE_SIZE most recently written renderings in `folder`."""
    entries = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
    for stale in entries[RENDER_CACHE_SIZE:]:
        stale.unlink(missing_ok=True)


def render_matrix_free(
    problem: Loss, derivation: ReverseDerivation | None = None
) -> dict[str, str]:
    """Render the kernels, layout and `__init__` of a loss's matrix-free package, by file name.

    Without a derivation, the files come from the render cache when an earlier run rendered
    the same loss with the same dgcodegen code (see `render_cache_key`).
    """
    if derivation is None:
        return _cached_render(problem)
    derivation = derivation or derive_reverse(problem)
    started = time.perf_counter()
    terms = {
        "sample": _term_literals(lower_term(problem, derivation, derivation.sample)),
        "free": _term_literals(lower_term(problem, derivation, derivation.free)),
    }
    layout = problem.layout
    # The tapes and the layout determine the generated code; `Loss.fingerprint` would print
    # the whole expression tree, which repeats every shared subexpression.
    spec_hash = hashlib.sha256(repr((problem.reduction, layout, terms)).encode()).hexdigest()
    header = {"generated_line": GENERATED_LINE, "version": __version__, "spec_hash": spec_hash}
    templates = environment()
    files = {
        "kernels.py": templates.get_template(MATRIX_FREE_TEMPLATE).render(
            name=layout.name,
            n_parameters=layout.size,
            reduction=problem.reduction,
            columns=[f"data_{column.name}" for column in problem.columns],
            terms=terms,
            opcodes=[name.upper() for name in OPCODES],
            header={**header, "template": MATRIX_FREE_TEMPLATE},
        ),
        "problem.py": templates.get_template(PROBLEM_TEMPLATE).render(
            layout=_layout_literals(layout), header={**header, "template": PROBLEM_TEMPLATE}
        ),
        "__init__.py": (
            f"# {GENERATED_LINE}\n"
            f"# dgcodegen {__version__}, written by dgcodegen/reverse_emit.py, "
            f"spec sha256 {spec_hash}\n"
            f'"""Matrix-free kernels and layout of the loss {layout.name!r}."""\n\n'
            "from .kernels import *  # noqa: F401,F403\n"
            "from .problem import LAYOUT  # noqa: F401\n"
        ),
    }
    files.update(_runtime_copies(("errors", "layout"), spec_hash))
    _check_syntax(files)
    log.info("lowered and rendered matrix-free kernels in %.2f s", time.perf_counter() - started)
    return files
