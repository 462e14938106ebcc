"""Lower: turn symbolic kernel specs into printed statements for the templates.

Each kernel becomes a per-sample block (common subexpressions, then one accumulator
per distinct per-sample quantity) and a final block that combines the reduced
accumulators with the data-free term into the outputs. Identical quantities (the two
halves of a symmetric Hessian) share one accumulator.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import sympy as sp

from .derive import Derivation
from .dsl import Loss
from .kernelspec import KernelBuilder, KernelSpec
from .names import check_kernel_variables
from .printer import NumbaPrinter
from .progress import progress
from .ridge import DIVIDED_DIFFERENCE_THRESHOLD

log = logging.getLogger("dgcodegen")


@dataclass
class LoweredKernel:
    """Printed statements of one kernel, ready for the template.

    `accumulate` lists what each sample adds into the totals: an "entry" adds `value`
    at `index`, a "span" adds `coefficient * slope_k` at `offset`, and an "outer" adds
    `coefficient * slope_k slope_k^T` there.
    """

    name: str
    doc: str
    arguments: list[dict]
    shape: tuple[int, ...]
    size: int
    sample_statements: list[tuple[str, str]]
    slopes: list[dict]
    accumulate: list[dict]
    free_statements: list[tuple[str, str]]
    free_entries: list[tuple[int, str]]
    combination: str
    operations: int


@dataclass
class LoweredHelper:
    """A divided-difference helper with a series branch and a direct branch."""

    name: str
    arguments: list[str]
    variable: str
    threshold: float
    kinks: list[str] | None
    series_statements: list[tuple[str, str]]
    series_result: str
    direct_statements: list[tuple[str, str]]
    direct_result: str


@dataclass
class LoweredModule:
    """Everything the kernel template renders."""

    name: str
    columns: list[dict]
    reduction: str
    n_parameters: int
    kernels: list[LoweredKernel]
    helpers: list[LoweredHelper] = field(default_factory=list)


def _names_for(problem: Loss, derivation: Derivation) -> dict[sp.Symbol, str]:
    names: dict[sp.Symbol, str] = {}
    for index, symbol in enumerate(derivation.theta):
        names[symbol] = f"theta_{index}"
    for point in (derivation.x, derivation.y, derivation.u):
        for symbol in point:
            names[symbol] = symbol.name
    names[derivation.r] = "r"
    for column in problem.columns:
        for index, symbol in enumerate(column.symbols):
            names[symbol] = f"data_{column.name}_{index}"
    return names


def _print_block(
    exprs: list[sp.Expr], printer: NumbaPrinter, prefix: str
) -> tuple[list[tuple[str, str]], list[str], int]:
    """CSE a list of expressions and print it as assignments plus result expressions."""
    temporaries = sp.numbered_symbols(prefix, real=True)
    replacements, reduced = sp.cse(exprs, symbols=temporaries, order="canonical")
    statements = []
    operations = 0
    for symbol, value in replacements:
        printer.names[symbol] = symbol.name
        statements.append((symbol.name, printer.doprint(value)))
        operations += sp.count_ops(value)
    results = [printer.doprint(value) for value in reduced]
    operations += sum(sp.count_ops(value) for value in reduced)
    return statements, results, int(operations)


BLOCK_SIZES = {"scalar": lambda n: 1, "vector": lambda n: n, "matrix": lambda n: n * n}


def _plan_samples(
    spec: KernelSpec, derivation: Derivation
) -> tuple[list[tuple[str, int, object]], list[sp.Expr], list[int], int]:
    """List what each sample adds: `(kind, offset or index, ridge details)` per item.

    Returns the plan, the expressions to print (one per plan item, in order), the ridges
    whose slopes the items use, and the total size of the accumulated blocks.
    """
    plan: list[tuple[str, int, object]] = []
    exprs: list[sp.Expr] = []
    used_ridges: list[int] = []
    offset = 0
    for block in spec.sample_blocks:
        for index, value in enumerate(block.dense):
            if value != 0:
                plan.append(("entry", offset + index, None))
                exprs.append(value)
        for ridge, order, weight in block.coordinate_paths:
            kind = "path" if block.kind == "vector" else "path_jacobian"
            plan.append((kind, offset, (ridge, order, weight)))
            exprs.append(derivation.at(derivation.ridges[ridge].z, derivation.x))
            if ridge not in used_ridges:
                used_ridges.append(ridge)
        for ridge, coefficient in block.ridge_coefficients:
            if coefficient != 0:
                plan.append(("span" if block.kind == "vector" else "outer", offset, ridge))
                exprs.append(coefficient)
                if ridge not in used_ridges:
                    used_ridges.append(ridge)
        offset += BLOCK_SIZES[block.kind](derivation.n)
    return plan, exprs, used_ridges, offset


def _accumulate_items(
    plan: list[tuple[str, int, object]],
    printed: list[str],
    derivation: Derivation,
    names: dict[sp.Symbol, str],
) -> list[dict]:
    """Turn the plan and its printed expressions into the template's accumulate items."""
    accumulate = []
    for (kind, where, ridge), value in zip(plan, printed):
        if kind == "entry":
            accumulate.append({"kind": kind, "index": where, "value": value})
        elif kind.startswith("path"):
            ridge_index, order, weight = ridge
            divided = derivation.ridges[ridge_index].divided
            accumulate.append(
                {
                    "kind": kind,
                    "offset": where,
                    "start": value,
                    "slope": ridge_index,
                    "forward": order == "forward",
                    "weight": repr(weight),
                    "helper": divided.function.__name__,
                    "helper_db": divided.derivative_function.__name__,
                    "extra": "".join(f", {names[s]}" for s in divided.extra),
                }
            )
        else:
            accumulate.append({"kind": kind, "offset": where, "coefficient": value, "slope": ridge})
    return accumulate


def lower_kernel(
    spec: KernelSpec, derivation: Derivation, names: dict[sp.Symbol, str], helpers: set[str]
) -> LoweredKernel:
    """Lower one kernel spec into printed statements."""
    printer = NumbaPrinter(dict(names), helpers)
    plan, exprs, used_ridges, size = _plan_samples(spec, derivation)

    slope_positions = []
    for ridge in used_ridges:
        for j, value in enumerate(derivation.ridges[ridge].slope):
            if value != 0:
                slope_positions.append((ridge, j))
                exprs.append(value)
    sample_statements, printed, sample_ops = _print_block(exprs, printer, "s")
    accumulate = _accumulate_items(plan, printed, derivation, names)
    slope_values = printed[len(plan) :]
    slopes = [
        {
            "ridge": ridge,
            "entries": [(j, v) for (k, j), v in zip(slope_positions, slope_values) if k == ridge],
        }
        for ridge in used_ridges
    ]

    free_exprs, free_indices, offset = [], [], 0
    for block in spec.free_blocks:
        for index, value in enumerate(block.dense):
            if value != 0:
                free_exprs.append(value)
                free_indices.append(offset + index)
        offset += BLOCK_SIZES[block.kind](derivation.n)
    free_statements, free_printed, free_ops = _print_block(free_exprs, printer, "t")

    arguments = [
        {"name": a.name, "scalar": a.scalar, "unpack": [names[s] for s in a.symbols]}
        for a in spec.arguments
    ]
    return LoweredKernel(
        spec.name,
        spec.doc,
        arguments,
        spec.shape,
        size,
        sample_statements,
        slopes,
        accumulate,
        free_statements,
        list(zip(free_indices, free_printed)),
        spec.combination,
        sample_ops + free_ops,
    )


def lower_helpers(derivation: Derivation, names: dict[sp.Symbol, str]) -> list[LoweredHelper]:
    """Lower the divided-difference helpers that the mean-value kernels call."""
    helpers = []
    a, b = sp.Symbol("a", real=True), sp.Symbol("b", real=True)
    for divided in derivation.divided_differences:
        branches = divided.branches(a, b)
        extra = [names[s] for s in divided.extra]
        helper_names = {divided.function.__name__, divided.derivative_function.__name__}
        for kind, name in (
            ("quotient", divided.function),
            ("derivative", divided.derivative_function),
        ):
            printer = NumbaPrinter({**names, a: "a", b: "b"}, helper_names)
            kinks = divided.kinks()
            kink_text = None if kinks is None else [printer.doprint(k) for k in kinks]
            series_statements, series, _ = _print_block([branches[f"{kind}_series"]], printer, "q")
            direct_statements, direct, _ = _print_block([branches[f"{kind}_direct"]], printer, "p")
            helpers.append(
                LoweredHelper(
                    name.__name__,
                    ["a", "b", *extra],
                    "b - a",
                    DIVIDED_DIFFERENCE_THRESHOLD,
                    kink_text,
                    series_statements,
                    series[0],
                    direct_statements,
                    direct[0],
                )
            )
    return helpers


def lower(
    problem: Loss, derivation: Derivation | None = None, show_progress: bool = False
) -> LoweredModule:
    """Derive and lower every kernel of `problem`, with a progress bar if `show_progress`."""
    derivation = derivation or Derivation(problem)
    specs = KernelBuilder(derivation).all()
    started = time.perf_counter()
    names = _names_for(problem, derivation)
    check_kernel_variables(names)
    helper_names = {
        f.__name__
        for d in derivation.divided_differences
        for f in (d.function, d.derivative_function)
    }
    kernels = [
        lower_kernel(spec, derivation, names, helper_names)
        for spec in progress(specs, "lowering kernels", show_progress)
    ]
    helpers = lower_helpers(derivation, names)
    log.info(
        "lowered %d kernels (%d operations) in %.2f s",
        len(kernels),
        sum(k.operations for k in kernels),
        time.perf_counter() - started,
    )
    columns = [
        {"name": c.name, "argument": f"data_{c.name}", "size": c.size} for c in problem.columns
    ]
    return LoweredModule(
        problem.name or "problem",
        columns,
        problem.reduction,
        derivation.n,
        kernels,
        helpers,
    )
