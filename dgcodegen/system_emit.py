"""Emit the package of a `System`: the energy's kernels and the compiled time loops.

`kernels.py` contains the kernels of the energy, rendered exactly as for a data-free loss.
`integrator.py`, rendered from `integrator.py.jinja`, contains the structure matrix, its
derivative, the third derivatives of the energy (for constant `S`), and one Numba time
loop per step method.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sympy as sp

from . import __version__
from .calculus import diff
from .derive import GONZALEZ_SERIES_THRESHOLD
from .emit import GENERATED_LINE, KERNEL_TEMPLATE, environment, write_package
from .errors import InternalError
from .lower import lower
from .printer import NumbaPrinter
from .system import FOURTH_ORDER, System

log = logging.getLogger("dgcodegen")

INTEGRATOR_TEMPLATE = "integrator.py.jinja"

SYSTEM_METHODS = ("mean-value", "gonzalez", "itoh-abe", "itoh-abe-symmetric", "mean-value-4")
"""Steps a system can take: every discrete gradient, and the fourth-order mean value."""


@dataclass
class _PrintedBlock:
    statements: list[tuple[str, str]]
    entries: list[tuple[tuple[int, ...], str]]
    operations: int


def _print_entries(
    entries: dict[tuple[int, ...], sp.Expr], names: dict[sp.Symbol, str]
) -> _PrintedBlock:
    """CSE the nonzero entries and print them as assignments and indexed results."""
    printer = NumbaPrinter(dict(names))
    indices = [index for index, value in entries.items() if value != 0]
    values = [entries[index] for index in indices]
    temporaries = sp.numbered_symbols("c", real=True)
    replacements, reduced = sp.cse(values, symbols=temporaries, order="canonical")
    statements = []
    operations = 0
    for symbol, value in replacements:
        printer.names[symbol] = symbol.name
        statements.append((symbol.name, printer.doprint(value)))
        operations += sp.count_ops(value)
    printed = [printer.doprint(value) for value in reduced]
    operations += sum(sp.count_ops(value) for value in reduced)
    return _PrintedBlock(statements, list(zip(indices, printed)), int(operations))


def _third_derivatives(system: System) -> dict[tuple[int, int, int], sp.Expr]:
    """Return `d^3 H / dz_k dz_i dz_j` at `[k, i, j]`, each distinct entry derived once."""
    state, n = system.state_symbols, system.n
    gradient = [diff(system.energy, t) for t in state]
    known: dict[tuple[int, ...], sp.Expr] = {}
    result = {}
    for k in range(n):
        for i in range(n):
            for j in range(n):
                key = tuple(sorted((i, j, k)))
                if key not in known:
                    known[key] = diff(gradient[key[0]], state[key[1]], state[key[2]])
                result[(k, i, j)] = known[key]
    return result


def _methods(system: System) -> list[dict[str, Any]]:
    methods = []
    for label in SYSTEM_METHODS:
        fourth_order = label == FOURTH_ORDER
        if fourth_order and not system.classification.constant:
            continue
        kernel = "mean_value" if fourth_order else label.replace("-", "_")
        methods.append(
            {
                "label": label,
                "name": label.replace("-", "_"),
                "kernel": kernel,
                "fourth_order": fourth_order,
            }
        )
    return methods


def system_methods(system: System) -> tuple[str, ...]:
    """Return the step methods that the generated package of `system` provides."""
    return tuple(method["label"] for method in _methods(system))


def render_integrator(system: System, spec_hash: str, kernels_hash: str) -> str:
    """Render `integrator.py` of a system, stamped with the hash of its `kernels.py`."""
    n = system.n
    names = {symbol: f"z_{i}" for i, symbol in enumerate(system.state_symbols)}
    structure = {(i, j): system.structure[i, j] for i in range(n) for j in range(n)}
    derivative = system.structure_derivative()
    derivative_entries = {
        (k, i, j): derivative[i][j][k] for k in range(n) for i in range(n) for j in range(n)
    }
    fourth_order = system.classification.constant
    module = {
        "name": system.name or "system",
        "n": n,
        "kind": system.classification.kind,
        "constant": system.classification.constant,
        "fourth_order": fourth_order,
        "unpack": [names[s] for s in system.state_symbols],
        "structure": _print_entries(structure, names),
        "derivative": _print_entries(derivative_entries, names),
        "third": _print_entries(_third_derivatives(system), names) if fourth_order else None,
        "methods": _methods(system),
    }
    header = {
        "generated_line": GENERATED_LINE,
        "version": __version__,
        "template": INTEGRATOR_TEMPLATE,
        "spec_hash": spec_hash,
        "kernels_hash": kernels_hash,
    }
    return environment().get_template(INTEGRATOR_TEMPLATE).render(module=module, header=header)


def render_energy_kernels(system: System, spec_hash: str) -> str:
    """Render `kernels.py` of the energy, as for a data-free loss, with the system's hash."""
    header = {
        "generated_line": GENERATED_LINE,
        "version": __version__,
        "template": KERNEL_TEMPLATE,
        "spec_hash": spec_hash,
        "gonzalez_threshold": repr(GONZALEZ_SERIES_THRESHOLD),
    }
    template = environment().get_template(KERNEL_TEMPLATE)
    return template.render(module=lower(system.loss), header=header)


def render_system(system: System) -> dict[str, str]:
    """Render the package of a system: the energy's kernels, the time loops, `__init__.py`.

    Raises:
        InternalError: when a rendered file is not valid Python.
    """
    spec_hash = system.fingerprint()
    kernels = render_energy_kernels(system, spec_hash)
    # Numba compiles the kernels into the cached time loops but invalidates a cache entry
    # only when its own source file changes, so integrator.py carries the kernels' hash.
    kernels_hash = hashlib.sha256(kernels.encode()).hexdigest()
    integrator = render_integrator(system, spec_hash, kernels_hash)
    init = (
        f"# {GENERATED_LINE}\n"
        f"# dgcodegen {__version__}, written by dgcodegen/system_emit.py, spec sha256 {spec_hash}\n"
        f'"""Generated kernels and time loops of the system {system.name!r}."""\n\n'
        "from .integrator import *  # noqa: F401,F403\n"
        "from .kernels import *  # noqa: F401,F403\n"
    )
    files = {"kernels.py": kernels, "integrator.py": integrator, "__init__.py": init}
    try:
        ast.parse(integrator)
    except SyntaxError as error:
        raise InternalError(f"rendered integrator.py is not valid Python: {error}") from error
    return files


def generate_system(system: System, out: Path | None = None) -> Path:
    """Render the package of `system` into `out`, or into the cache, and return the folder."""
    from .runtime import cache_directory

    started = time.perf_counter()
    files = render_system(system)
    if out is None:
        text = files["kernels.py"] + files["integrator.py"]
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        out = cache_directory() / f"{system.name}-{digest}"
    write_package(files, Path(out))
    log.info("generated the system %r in %.2f s", system.name, time.perf_counter() - started)
    return Path(out)
