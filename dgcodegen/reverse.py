"""Derive by reverse mode: gradients and Hessian-vector products as straight-line programs.

The dense path (`derive.py`) differentiates every entry of the gradient and Hessian
symbolically, which costs O(n^2) expressions for n parameters. This module instead turns
a scalar loss term into a straight-line program of elementary operations, one assignment
per distinct subexpression of the expression DAG, and then appends

1. the adjoint sweep (reverse mode): one pass over the assignments in reverse order,
   which accumulates `adjoint(a) += adjoint(t) * dt/da` for every argument `a` of every
   assignment `t`, and
2. the tangent sweep (forward mode over the forward and adjoint assignments, Pearlmutter's
   R-operator): `tangent(t) = sum_a dt/da * tangent(a)` with `tangent(theta) = v`, so the
   tangents of the parameter adjoints are the Hessian-vector product `H v`.

Each local derivative `dt/da` is `sympy.diff` of one small assignment, with the
assignment's symbol put back where its value reappears (`d tanh(a) = 1 - t^2`). So the
gradient program is a small constant times the size of the loss program, and the
Hessian-vector program a small constant times that. Stable functions stay as they are:
`softplus` differentiates to `sigmoid`, which the kernels evaluate without overflow.

Derivatives of `Abs`, `sign`, `Heaviside`, `Max` and `Min` are taken almost everywhere:
`DiracDelta` terms are dropped, and at a tie `Max` passes half of the adjoint to each
argument (`Heaviside(0) = 1/2`).

Branches of a `Piecewise` stay inside the `Piecewise` assignment, so a branch that is
not taken is never evaluated and cannot put `0 * inf` into the adjoints. Only polynomial
subexpressions of the branches and conditions, which are finite everywhere, become
separate assignments.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sympy as sp

from .dsl import SUPPORTED_FUNCTIONS, Loss
from .errors import CodegenError

log = logging.getLogger("dgcodegen")

Assignment = tuple[sp.Symbol, sp.Expr]


def _is_constant(expr: sp.Basic) -> bool:
    # `is_number` stops at the first symbol it meets; `free_symbols` would walk the whole tree.
    return bool(getattr(expr, "is_number", False))


def _is_polynomial(expr: sp.Basic) -> bool:
    """Return whether `expr` is built from symbols and numbers by +, * and powers >= 0."""
    if isinstance(expr, sp.Symbol) or _is_constant(expr):
        return True
    if isinstance(expr, (sp.Add, sp.Mul)):
        return all(_is_polynomial(arg) for arg in expr.args)
    if isinstance(expr, sp.Pow):
        exponent = expr.exp
        return bool(exponent.is_Integer and exponent >= 0 and _is_polynomial(expr.base))
    return False


def _diff(expr: sp.Expr, argument: sp.Symbol) -> sp.Expr:
    """Return `d expr / d argument` with `DiracDelta` terms, the derivatives of steps, dropped."""
    result = sp.diff(expr, argument)
    if result.has(sp.DiracDelta):
        result = result.xreplace({delta: sp.S.Zero for delta in result.atoms(sp.DiracDelta)})
    if result.has(sp.Derivative, sp.Subs):
        raise CodegenError(f"no explicit derivative of {expr} with respect to {argument}")
    return result


class Program:
    """A straight-line program: assignments `t_k = expr`, each in earlier symbols.

    Every subexpression is assigned once. `linearize` returns the symbol or constant that
    contains an expression's value and adds assignments for the parts not assigned before,
    so the adjoint and tangent sweeps reuse the values of the forward sweep.

    Args:
        prefix: name prefix of the assigned symbols.
        parameters: symbols that the sweeps differentiate by.
    """

    def __init__(self, prefix: str, parameters: Sequence[sp.Symbol]) -> None:
        self.prefix = prefix
        self.parameters = list(parameters)
        self.assignments: list[Assignment] = []
        self._known: dict[sp.Basic, sp.Expr] = {}
        self._active: set[sp.Symbol] = set(parameters)
        self._derivatives: dict[sp.Symbol, dict[sp.Symbol, sp.Expr]] = {}

    def __len__(self) -> int:
        return len(self.assignments)

    def is_active(self, symbol: sp.Basic) -> bool:
        """Return whether `symbol` depends on a parameter."""
        return symbol in self._active

    def _assign(self, expr: sp.Expr) -> sp.Expr:
        """Return the symbol assigned `expr`, adding an assignment when it is new."""
        if isinstance(expr, sp.Symbol) or _is_constant(expr):
            return expr
        known = self._known.get(expr)
        if known is not None:
            return known
        symbol = sp.Symbol(f"{self.prefix}{len(self.assignments)}", real=True)
        self.assignments.append((symbol, expr))
        self._known[expr] = symbol
        if any(s in self._active for s in expr.free_symbols):
            self._active.add(symbol)
        return symbol

    def _atom(self, expr: sp.Basic) -> sp.Expr:
        known = self._known.get(expr)
        if known is not None:
            return known
        if isinstance(expr, sp.Symbol) or _is_constant(expr):
            return expr
        raise KeyError(expr)

    def _is_done(self, expr: sp.Basic) -> bool:
        return expr in self._known or isinstance(expr, sp.Symbol) or _is_constant(expr)

    def linearize(self, expr: sp.Expr) -> sp.Expr:
        """Return the symbol or constant that contains `expr`, assigning its new parts."""
        expr = sp.sympify(expr)
        # A post-order walk with an explicit stack, so deep expressions do not hit Python's
        # recursion limit. Shared subexpressions are found in `_known` and walked once.
        stack: list[tuple[sp.Basic, bool]] = [(expr, False)]
        while stack:
            node, expanded = stack.pop()
            if self._is_done(node):
                continue
            if expanded or isinstance(node, sp.Piecewise):
                self._known[node] = self._build(node)
                continue
            stack.append((node, True))
            stack.extend((arg, False) for arg in node.args if not self._is_done(arg))
        return self._atom(expr)

    def _build(self, node: sp.Basic) -> sp.Expr:
        """Assign one node whose arguments are all assigned, and return its symbol."""
        if isinstance(node, sp.Piecewise):
            return self._assign(self._inline(node))
        atoms = [self._atom(arg) for arg in node.args]
        if isinstance(node, sp.Add):
            return self._assign(sp.Add(*atoms))
        if isinstance(node, sp.Mul):
            return self._fold_product(atoms)
        if isinstance(node, sp.Pow):
            return self._assign(sp.Pow(*atoms))
        if isinstance(node, (sp.Max, sp.Min)):
            # Binary, so each assignment has a two-argument derivative.
            result = atoms[0]
            for atom in atoms[1:]:
                result = self._assign(node.func(result, atom))
            return result
        if isinstance(node, SUPPORTED_FUNCTIONS):
            return self._assign(node.func(*atoms))
        raise CodegenError(
            f"reverse-mode differentiation does not support {type(node).__name__} in {node}"
        )

    def _fold_product(self, atoms: list[sp.Expr]) -> sp.Expr:
        """Assign a product as a chain of binary products, the numeric factor in the last."""
        coefficient = sp.Mul(*[a for a in atoms if _is_constant(a)])
        factors = [a for a in atoms if not _is_constant(a)]
        if len(factors) == 1:
            return self._assign(coefficient * factors[0])
        result = factors[0]
        for index, factor in enumerate(factors[1:], start=2):
            scale = coefficient if index == len(factors) else sp.S.One
            result = self._assign(sp.Mul(scale, result, factor))
        return result

    def _inline(self, expr: sp.Basic) -> sp.Basic:
        """Rebuild a `Piecewise` part with its polynomial subexpressions assigned."""
        if isinstance(expr, sp.Expr) and _is_polynomial(expr):
            return self.linearize(expr)
        if not expr.args:
            return expr
        return expr.func(*[self._inline(arg) for arg in expr.args])

    def derivatives(self, assignment: Assignment) -> dict[sp.Symbol, sp.Expr]:
        """Return `d value / d argument` of one assignment for each active argument.

        The arguments are sorted by name, so generated code does not depend on hash order.
        Zero derivatives are left out.
        """
        symbol, value = assignment
        known = self._derivatives.get(symbol)
        if known is not None:
            return known
        if isinstance(value, sp.Add):
            partials = self._sum_derivatives(value)
        else:
            partials = {a: self._derivative(assignment, a) for a in self._active_arguments(value)}
        known = {a: partials[a] for a in sorted(partials, key=sp.default_sort_key)}
        known = {a: partial for a, partial in known.items() if partial != 0}
        self._derivatives[symbol] = known
        return known

    def _sum_derivatives(self, value: sp.Add) -> dict[sp.Symbol, sp.Expr]:
        """Return the derivatives of a sum term by term, since most terms are `c * symbol`."""
        partials: dict[sp.Symbol, sp.Expr] = {}
        for term in value.args:
            factor, rest = term.as_coeff_Mul()
            if isinstance(rest, sp.Symbol):
                if rest in self._active:
                    partials[rest] = partials.get(rest, sp.S.Zero) + factor
                continue
            for argument in self._active_arguments(term):
                partials[argument] = partials.get(argument, sp.S.Zero) + _diff(term, argument)
        return partials

    def _derivative(self, assignment: Assignment, argument: sp.Symbol) -> sp.Expr:
        """Return `d value / d argument` of one assignment, with the value's symbol reused.

        The assignment's own value is replaced by its symbol where it reappears, as in
        `d tanh(a) / da = 1 - t^2`.
        """
        symbol, value = assignment
        return _diff(value, argument).xreplace({value: symbol})

    def _active_arguments(self, value: sp.Expr) -> list[sp.Symbol]:
        return [s for s in value.free_symbols if s in self._active]


def adjoint_sweep(program: Program, output: sp.Expr) -> list[sp.Expr]:
    """Append the reverse-mode sweep of `output` and return the gradient by parameter.

    Each assignment's adjoint is the sum of its contributions, complete when the sweep
    reaches it because every use of a value comes after its assignment.
    """
    contributions: dict[sp.Basic, list[sp.Expr]] = defaultdict(list)
    if program.is_active(output):
        contributions[output].append(sp.S.One)
    for symbol, value in reversed(list(program.assignments)):
        terms = contributions.pop(symbol, None)
        if not terms:
            continue
        adjoint = program.linearize(sp.Add(*terms))
        if adjoint == 0:
            continue
        for argument, partial in program.derivatives((symbol, value)).items():
            contributions[argument].append(adjoint * partial)
    return [program.linearize(sp.Add(*contributions.get(p, []))) for p in program.parameters]


def tangent_sweep(
    program: Program, direction: Sequence[sp.Symbol], outputs: Iterable[sp.Expr]
) -> list[sp.Expr]:
    """Append the forward-mode sweep along `direction` and return the tangents of `outputs`.

    The sweep covers the assignments made so far. With the gradient as `outputs`, the
    tangents are the Hessian times `direction`.
    """
    tangent: dict[sp.Basic, sp.Expr] = dict(zip(program.parameters, direction))
    for symbol, value in list(program.assignments):
        terms = []
        for argument, partial in program.derivatives((symbol, value)).items():
            if argument in tangent:
                terms.append(partial * tangent[argument])
        if terms:
            result = program.linearize(sp.Add(*terms))
            if result != 0:
                tangent[symbol] = result
    return [tangent.get(output, sp.S.Zero) for output in outputs]


def live_assignments(assignments: list[Assignment], outputs: Iterable[sp.Expr]) -> list[Assignment]:
    """Return the assignments that `outputs` depend on, in program order."""
    needed: set[sp.Basic] = set()
    for output in outputs:
        needed |= output.free_symbols
    live = []
    for symbol, value in reversed(assignments):
        if symbol in needed:
            live.append((symbol, value))
            needed |= value.free_symbols
    live.reverse()
    return live


def expression_operations(expr: sp.Basic) -> int:
    """Return the arithmetic operations and function calls of `expr`.

    A sum or product of k terms counts k - 1 and every other operation 1. It is a cheaper
    stand-in for `sympy.count_ops`, which also counts negations and divisions apart.
    """
    if not expr.args or _is_constant(expr):
        return 0
    own = len(expr.args) - 1 if isinstance(expr, (sp.Add, sp.Mul)) else 1
    return own + sum(expression_operations(arg) for arg in expr.args)


def count_operations(assignments: Iterable[Assignment], outputs: Iterable[sp.Expr] = ()) -> int:
    """Return the operations of the assignments and output expressions."""
    total = sum(expression_operations(value) for _, value in assignments)
    return total + sum(expression_operations(output) for output in outputs)


@dataclass
class TermPrograms:
    """One loss term as a program with its value, gradient and Hessian-vector product.

    Attributes:
        assignments: the whole program: forward, adjoint and tangent sweeps.
        value: the term's value, a symbol of the program or a constant.
        gradient: one entry per parameter.
        hvp: one entry per parameter, the Hessian times `direction`.
    """

    assignments: list[Assignment]
    value: sp.Expr
    gradient: list[sp.Expr]
    hvp: list[sp.Expr]

    def live(self, outputs: Iterable[sp.Expr]) -> list[Assignment]:
        return live_assignments(self.assignments, outputs)

    def operations(self) -> dict[str, int]:
        """Return the operation counts of the loss, gradient and HVP programs."""
        counts = {}
        for label, outputs in (
            ("loss", [self.value]),
            ("gradient", [self.value, *self.gradient]),
            ("hvp", self.hvp),
        ):
            counts[label] = count_operations(self.live(outputs), outputs)
        return counts


def differentiate_term(
    term: sp.Expr, parameters: Sequence[sp.Symbol], direction: Sequence[sp.Symbol], prefix: str
) -> TermPrograms:
    """Build the value, gradient and Hessian-vector programs of one scalar term."""
    program = Program(prefix, parameters)
    value = program.linearize(term)
    forward = len(program)
    gradient = adjoint_sweep(program, value)
    adjoint = len(program) - forward
    hvp = tangent_sweep(program, direction, gradient)
    log.debug(
        "reverse mode: %d forward, %d adjoint and %d tangent assignments",
        forward, adjoint, len(program) - forward - adjoint,
    )  # fmt: skip
    return TermPrograms(list(program.assignments), value, gradient, hvp)


@dataclass
class ReverseDerivation:
    """Programs of a loss's per-sample and data-free terms.

    Attributes:
        parameters: parameter symbols in the order of the flat parameter vector.
        direction: symbols of the HVP direction, one per parameter.
        sample: the per-sample term, summed or averaged over samples.
        free: the data-free term (objective or regularizer).
    """

    parameters: list[sp.Symbol]
    direction: list[sp.Symbol]
    sample: TermPrograms
    free: TermPrograms


def derive_reverse(problem: Loss) -> ReverseDerivation:
    """Differentiate both terms of `problem` by reverse mode, with Hessian-vector products."""
    started = time.perf_counter()
    parameters = problem.parameter_symbols
    direction = [sp.Symbol(f"v_{k}", real=True) for k in range(len(parameters))]
    sample = differentiate_term(problem.sample_term, parameters, direction, "s")
    free = differentiate_term(problem.free_term, parameters, direction, "r")
    log.info(
        "derived reverse-mode programs of %d parameters (%d and %d assignments) in %.2f s",
        len(parameters), len(sample.assignments), len(free.assignments),
        time.perf_counter() - started,
    )  # fmt: skip
    return ReverseDerivation(parameters, direction, sample, free)
