"""Load and run the compiled time loops of a `System`.

`system_emit` renders the package. Each call of a time loop runs a chunk of steps, with
every Newton iteration and save, without returning to Python, and `CompiledSystem`
strings the chunks together into one trajectory.
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

from .errors import InternalError, SpecError
from .system import FOURTH_ORDER, System
from .system_emit import SYSTEM_METHODS, generate_system, render_system, system_methods

__all__ = [
    "SYSTEM_METHODS",
    "CompiledSystem",
    "Trajectory",
    "compile_system",
    "load_integrator",
    "render_system",
]

log = logging.getLogger("dgcodegen")

NEWTON_TOL = 1e-12
"""A step converges once `max|F| <= NEWTON_TOL * max(1, max|x|)` and Newton is at round-off."""

NEWTON_MAX_ITER = 30

CHUNK_STEPS = 2**16
"""Steps per call of the compiled loop, so Python works once per chunk, not once per step."""

MAX_SAVED_BYTES = 2**31
"""Largest memory for saved times, states and energies; a run that needs more is rejected."""

_STATUS_TEXT = {
    1: "Newton's method did not converge",
    2: "a residual was not finite",
    3: "the Newton matrix was singular",
}


def load_integrator(directory: Path) -> ModuleType:
    """Import the generated package in `directory` and return its `integrator` module."""
    directory = Path(directory)
    if not (directory / "integrator.py").is_file():
        raise SpecError(
            f"no generated integrator at {directory / 'integrator.py'}; run `dgcodegen generate`"
        )
    # The name depends on the folder only, because Numba's cache records the module name of
    # each compiled function. A package regenerated in the same process is imported afresh.
    folder_digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    package = f"dgcodegen_system_{folder_digest}"
    content = hashlib.sha256()
    for name in ("__init__.py", "kernels.py", "integrator.py"):
        content.update((directory / name).read_bytes())
    loaded = sys.modules.get(package)
    if loaded is not None and getattr(loaded, "_dgcodegen_content", None) != content.hexdigest():
        for name in (package, f"{package}.kernels", f"{package}.integrator"):
            sys.modules.pop(name, None)
        loaded = None
    if loaded is None:
        spec = importlib.util.spec_from_file_location(
            package, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        if spec is None or spec.loader is None:
            raise InternalError(f"cannot import the generated package {directory}")
        module = importlib.util.module_from_spec(spec)
        module._dgcodegen_content = content.hexdigest()
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.integrator")


# Running


def _caused_by_interrupt(error: BaseException) -> bool:
    """Return whether a KeyboardInterrupt is in the cause or context chain of `error`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


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
        show_progress: bool = False,
    ) -> Trajectory:
        """Run `steps` steps of size `step` in compiled code and return the trajectory.

        The compiled loop runs CHUNK_STEPS steps per call, so a progress bar (with
        `show_progress`) and Ctrl-C take effect between chunks. Ctrl-C ends the run with
        the trajectory so far, reported as not converged.

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
        tol = float(tol)
        max_iter = int(max_iter)
        compiling = time.perf_counter()
        log.info("compiling the %s time loop, or loading it from Numba's cache", method)
        loop(start, start, 0, step, 1, 1, tol, max_iter)
        log.info("compiled the %s loop in %.2f s", method, time.perf_counter() - compiling)

        log.info("integrating %d steps of size %g in compiled code", steps, step)
        run = _Run(self.energy(start), start)
        progress_bar = _progress_bar(steps, method) if show_progress else None
        started = time.perf_counter()
        try:
            while run.steps < steps and run.status == 0:
                count = min(CHUNK_STEPS, steps - run.steps)
                chunk = loop(run.x, run.previous, run.steps, step, count, save_every, tol, max_iter)
                run.add(chunk)
                if progress_bar is not None:
                    progress_bar.update(chunk[5])
        except KeyboardInterrupt:
            run.interrupted = True
        except SystemError as error:
            # A Ctrl-C that arrives while Numba unpickles a cached object surfaces as a
            # SystemError chained to the KeyboardInterrupt.
            if not _caused_by_interrupt(error):
                raise
            run.interrupted = True
        finally:
            if progress_bar is not None:
                progress_bar.close()
        seconds = time.perf_counter() - started

        if run.steps % save_every != 0:
            run.save(run.steps * step, run.x, self.energy(run.x))
        converged = run.status == 0 and run.steps == steps
        message = f"took {steps} steps of size {step:g}"
        if run.interrupted:
            message = (
                f"interrupted after {run.steps} of {steps} steps, at t = {run.steps * step:.6g}"
            )
        elif not converged:
            message = (
                f"step {run.steps + 1} of {steps} failed at t = {run.steps * step:.6g}: "
                f"{_STATUS_TEXT.get(run.status, 'unknown status')}; the trajectory ends at "
                "the last converged step"
            )
        log.info("%s with %s in %.3f s: %s", self.system.name, method, seconds, message)
        return Trajectory(
            np.concatenate(run.times),
            np.concatenate(run.states),
            np.concatenate(run.energy),
            run.x,
            run.steps,
            steps,
            converged,
            message,
            run.updates,
            run.worst,
            seconds,
        )


class _Run:
    """Saved states and counters of a run, collected over the chunks of the time loop."""

    def __init__(self, energy: float, start: np.ndarray) -> None:
        self.times = [np.zeros(1)]
        self.states = [start[np.newaxis, :].copy()]
        self.energy = [np.array([energy])]
        self.x = start
        self.previous = start
        self.steps = 0
        self.status = 0
        self.updates = 0
        self.worst = 0.0
        self.interrupted = False

    def add(self, chunk: tuple) -> None:
        times, states, energy, x, previous, steps_taken, status, updates, worst = chunk
        self.save(times, states, energy)
        self.x, self.previous = x, previous
        self.steps += int(steps_taken)
        self.status = int(status)
        self.updates += int(updates)
        self.worst = max(self.worst, float(worst))

    def save(self, times: Any, states: np.ndarray, energy: Any) -> None:
        self.times.append(np.atleast_1d(np.asarray(times, dtype=np.float64)))
        self.states.append(np.atleast_2d(states))
        self.energy.append(np.atleast_1d(np.asarray(energy, dtype=np.float64)))


def _progress_bar(steps: int, method: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"{method} steps", unit="step", leave=False)


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
    """Render the package of `system` into `out` or the cache, then import it.

    Files that already have the rendered content are left untouched.
    """
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
