"""Generate, load and run the compiled time loops of a `System`.

The generated package of a system contains `kernels.py`, the kernels of its energy rendered
exactly as for a data-free loss, and `integrator.py`, rendered from
`integrator.py.jinja`: the structure matrix, its derivative, and one Numba time loop per
discrete gradient that runs every step, Newton iteration and save without returning to
Python.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy as sp

from . import __version__
from .calculus import diff
from .derive import GONZALEZ_SERIES_THRESHOLD
from .emit import GENERATED_LINE, KERNEL_TEMPLATE, environment, write_package
from .errors import InternalError, SpecError
from .lower import lower
from .printer import NumbaPrinter
from .system import System

log = logging.getLogger("dgcodegen")

INTEGRATOR_TEMPLATE = "integrator.py.jinja"

SYSTEM_METHODS = ("mean-value", "gonzalez", "itoh-abe", "itoh-abe-symmetric", "mean-value-4")
"""Steps a system can take: every discrete gradient, and the fourth-order mean value."""

FOURTH_ORDER = "mean-value-4"

NEWTON_TOL = 1e-12
"""A step converges once `max|F| <= NEWTON_TOL * max(1, max|x|)` and Newton is at round-off."""

NEWTON_MAX_ITER = 30

MAX_SAVED_BYTES = 2**31
"""Largest memory for saved times, states and energies; a run that needs more is rejected."""

_STATUS_TEXT = {
    1: "Newton's method did not converge",
    2: "a residual was not finite",
    3: "the Newton matrix was singular",
}


# Lowering and rendering


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


def render_integrator(system: System, spec_hash: str) -> str:
    """Render `integrator.py` of a system."""
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
    import ast

    spec_hash = system.fingerprint()
    kernels = render_energy_kernels(system, spec_hash)
    integrator = render_integrator(system, spec_hash)
    init = (
        f"# {GENERATED_LINE}\n"
        f"# dgcodegen {__version__}, spec sha256 {spec_hash}\n"
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


def load_integrator(directory: Path) -> ModuleType:
    """Import the generated package in `directory` and return its `integrator` module."""
    directory = Path(directory)
    if not (directory / "integrator.py").is_file():
        raise SpecError(
            f"no generated integrator at {directory / 'integrator.py'}; run `dgcodegen generate`"
        )
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    package = f"dgcodegen_system_{digest}"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        if spec is None or spec.loader is None:
            raise InternalError(f"cannot import the generated package {directory}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.integrator")


# Running


@dataclass
class Trajectory:
    """Outcome of a run of the time loop.

    Attributes:
        times: times of the saved states.
        states: saved states, one row each: the start, every `save_every` steps, the last.
        energy: `H` at each saved state.
        state: the last state reached.
        steps: steps taken; fewer than requested when a step failed.
        requested: steps requested.
        converged: whether every requested step converged.
        message: what happened, naming the failing step if any.
        newton_updates: Newton updates over all steps.
        max_residual: largest `max|F|` of an accepted step.
        seconds: wall time of the compiled loop, without compilation.
    """

    times: np.ndarray
    states: np.ndarray
    energy: np.ndarray
    state: np.ndarray
    steps: int
    requested: int
    converged: bool
    message: str
    newton_updates: int
    max_residual: float
    seconds: float


class CompiledSystem:
    """The generated time loops and kernels of a system.

    Args:
        system: the declared system.
        integrator: the imported generated `integrator` module.
    """

    def __init__(self, system: System, integrator: ModuleType) -> None:
        self.system = system
        self.integrator = integrator
        self.kernels = sys.modules[integrator.__name__.rsplit(".", 1)[0] + ".kernels"]

    def _vector(self, value: Any, label: str) -> np.ndarray:
        array = np.ascontiguousarray(value, dtype=np.float64)
        if array.shape != (self.system.n,):
            raise SpecError(f"{label} has shape {array.shape}, expected ({self.system.n},)")
        if not np.all(np.isfinite(array)):
            raise SpecError(f"{label} is not finite: {array}")
        return array

    def _method(self, method: str) -> str:
        available = system_methods(self.system)
        if method not in available:
            if method == FOURTH_ORDER:
                raise SpecError(
                    f"--method {FOURTH_ORDER} needs a constant structure matrix, but S of "
                    f"{self.system.name!r} depends on the state; choose one of "
                    f"{', '.join(available)}"
                )
            raise SpecError(f"unknown method {method!r}; choose one of {', '.join(available)}")
        return method.replace("-", "_")

    def energy(self, x: Any) -> float:
        return float(self.kernels.loss(self._vector(x, "the state")))

    def structure(self, x: Any) -> np.ndarray:
        return self.integrator.structure(self._vector(x, "the state"))

    def newton_system(self, method: str, x: Any, y: Any, h: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the residual `F(y)` of the step and its Jacobian `dF/dy`."""
        function = getattr(self.integrator, f"newton_system_{self._method(method)}")
        return function(self._vector(x, "x"), self._vector(y, "y"), float(h))

    def integrate(
        self,
        method: str,
        step: float,
        steps: int,
        save_every: int = 1,
        x0: Any = None,
        tol: float = NEWTON_TOL,
        max_iter: int = NEWTON_MAX_ITER,
    ) -> Trajectory:
        """Run `steps` steps of size `step` in compiled code and return the trajectory.

        Raises:
            SpecError: for an unknown method, a step that is not finite and > 0, or a
                count that is not a positive integer.
        """
        loop = getattr(self.integrator, f"integrate_{self._method(method)}")
        step = _positive_finite(step, "step")
        steps = _positive_integer(steps, "steps")
        save_every = _positive_integer(save_every, "save_every")
        saved_bytes = (steps // save_every + 2) * (self.system.n + 2) * 8
        if saved_bytes > MAX_SAVED_BYTES:
            raise SpecError(
                f"saving every {save_every} of {steps} steps needs {saved_bytes / 2**30:.1f} GiB; "
                f"raise --save-every to at least {_minimum_save_every(steps, self.system.n)}"
            )
        start = self._vector(self.system.initial_point if x0 is None else x0, "the initial state")
        compiling = time.perf_counter()
        loop(start, step, 1, 1, float(tol), int(max_iter))
        log.info("compiled the %s loop in %.2f s", method, time.perf_counter() - compiling)
        started = time.perf_counter()
        times, states, energy, state, steps_taken, status, updates, worst = loop(
            start, step, steps, save_every, float(tol), int(max_iter)
        )
        seconds = time.perf_counter() - started
        converged = status == 0 and steps_taken == steps
        if converged:
            message = f"took {steps} steps of size {step:g}"
        else:
            message = (
                f"step {steps_taken + 1} of {steps} failed at t = {steps_taken * step:.6g}: "
                f"{_STATUS_TEXT.get(int(status), 'unknown status')}; the trajectory ends at "
                "the last converged step"
            )
        log.info("%s with %s in %.3f s: %s", self.system.name, method, seconds, message)
        return Trajectory(
            times,
            states,
            energy,
            state,
            int(steps_taken),
            steps,
            converged,
            message,
            int(updates),
            float(worst),
            seconds,
        )


def _minimum_save_every(steps: int, n: int) -> int:
    per_save = (n + 2) * 8
    return max(1, math.ceil(steps / (MAX_SAVED_BYTES / per_save - 2)))


def _positive_finite(value: Any, label: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"invalid {label} {value!r}: give a finite number > 0") from None
    if not (np.isfinite(number) and number > 0):
        raise SpecError(f"invalid {label} {value!r}: give a finite number > 0")
    return number


def _positive_integer(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SpecError(f"invalid {label} {value!r}: give an integer >= 1")
    return int(value)


def compile_system(system: System, out: Path | None = None) -> CompiledSystem:
    """Generate (unless `out` already holds it) and import the package of `system`."""
    directory = generate_system(system, out)
    return CompiledSystem(system, load_integrator(directory))


def trajectory_report(system: System, method: str, step: float, trajectory: Trajectory) -> dict:
    """Return the JSON document of a run."""
    energy = trajectory.energy
    drift = float(np.max(np.abs(energy - energy[0]))) if len(energy) else 0.0
    return {
        "problem": system.name,
        "method": method,
        "step": step,
        "requested_steps": trajectory.requested,
        "steps": trajectory.steps,
        "converged": trajectory.converged,
        "message": trajectory.message,
        "structure": system.classification.kind,
        "state_names": system.state_names(),
        "state": {
            name: np.asarray(value).tolist()
            for name, value in system.split_state(trajectory.state).items()
        },
        "energy_drift": drift,
        "newton_updates": trajectory.newton_updates,
        "max_residual": trajectory.max_residual,
        "seconds": trajectory.seconds,
        "times": trajectory.times.tolist(),
        "states": trajectory.states.tolist(),
        "energy": energy.tolist(),
    }
