"""Train generated kernels with the discrete gradient method and report the run as JSON.

`dgcodegen solve` and the `__main__` of a standalone generated package both run through
this module, so the two give the same options, the same run and the same JSON. It imports
only NumPy, the standard library and sibling modules that do the same, because
`dgcodegen generate` copies it into standalone packages. tqdm draws a progress bar when it
is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .coordinate import coordinate_descent
from .errors import DgcodegenError, SolverError, SpecError
from .files import write_atomic
from .layout import Layout
from .stepper import DENSE_NEWTON_RTOL, SolveResult, StepperOptions, discrete_gradient_descent

log = logging.getLogger("dgcodegen")

METHODS = ("mean-value", "gonzalez", "itoh-abe", "itoh-abe-symmetric")
"""Discrete gradients of every generated module, as named on the command line."""

EXIT_INVALID_INPUT = 1
"""Exit code for invalid input and failed solves."""

EXIT_NOT_CONVERGED = 3
"""Exit code of a run that ended without converging (argparse uses 2)."""

_KERNEL_NAMES = {method: method.replace("-", "_") for method in METHODS}


class BoundKernels:
    """Generated kernels with the data bound, taking flat float64 parameter vectors.

    Args:
        kernels: the imported generated `kernels` module.
        layout: names, shapes and starting point of the problem.
        data: arrays by column name, checked against `layout`.
    """

    def __init__(self, kernels: ModuleType, layout: Layout, data: dict[str, Any]) -> None:
        self.kernels = kernels
        self.layout = layout
        validated = layout.validate_data(data)
        self.data = tuple(validated[name] for name, _ in layout.columns)
        self.n = layout.size

    def _vector(self, value: np.ndarray, label: str) -> np.ndarray:
        array = np.ascontiguousarray(value, dtype=np.float64)
        if array.shape != (self.n,):
            raise SpecError(f"{label} has shape {array.shape}, expected ({self.n},)")
        return array

    def loss(self, theta: np.ndarray) -> float:
        return float(self.kernels.loss(self._vector(theta, "theta"), *self.data))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        return self.kernels.gradient(self._vector(theta, "theta"), *self.data)

    def loss_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Return the loss and its gradient from one pass over the data."""
        value, gradient = self.kernels.loss_gradient(self._vector(theta, "theta"), *self.data)
        return float(value), gradient

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        return self.kernels.hessian(self._vector(theta, "theta"), *self.data)

    def _pair_kernel(self, prefix: str, method: str) -> Callable[[np.ndarray, np.ndarray], Any]:
        if method not in METHODS:
            raise SpecError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        kernel = getattr(self.kernels, f"{prefix}_{_KERNEL_NAMES[method]}")
        data = self.data

        def evaluate(x: np.ndarray, y: np.ndarray) -> Any:
            return kernel(self._vector(x, "x"), self._vector(y, "y"), *data)

        return evaluate

    def discrete_gradient(self, method: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Return `DG(x, y)` of the named method."""
        return self._pair_kernel("dg", method)

    def jacobian(self, method: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Return `d DG(x, y) / d y` of the named method."""
        return self._pair_kernel("jac", method)


def train(
    bound: BoundKernels,
    method: str,
    options: StepperOptions,
    show_progress: bool = False,
    solver: str = "newton",
) -> SolveResult:
    """Run the discrete gradient method from the layout's starting point.

    `solver` is "newton" (the whole implicit step) or "coordinate" (forward Itoh-Abe
    only, one scalar equation per coordinate).
    """
    progress_bar = _progress_bar(options.max_steps, method) if show_progress else None
    callback = None
    if progress_bar is not None:

        def callback(step: int, loss: float, tau: float) -> None:
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{loss:.6g}", tau=f"{tau:.3g}")

    started = time.perf_counter()
    x0 = bound.layout.initial_point()
    try:
        if solver == "coordinate":
            result = coordinate_descent(
                bound.loss, bound.gradient, bound.discrete_gradient(method), x0, options, callback
            )
        else:
            result = discrete_gradient_descent(
                bound.loss,
                bound.gradient,
                bound.discrete_gradient(method),
                bound.jacobian(method),
                x0,
                options,
                callback,
            )
    finally:
        if progress_bar is not None:
            progress_bar.close()
    log.info(
        "solved with %s in %.2f s: %d steps, loss %.12g, converged %s",
        method,
        time.perf_counter() - started,
        result.steps,
        result.loss,
        result.converged,
    )
    return result


def _progress_bar(total: int, method: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"{method} steps", unit="step", leave=False)


def report(
    layout: Layout, method: str, options: StepperOptions, result: SolveResult
) -> dict[str, Any]:
    """Return the JSON document of a run."""
    parameters = {
        name: np.asarray(value).tolist()
        for name, value in layout.split_parameters(result.x).items()
    }
    return {
        "problem": layout.name,
        "method": method,
        "step": options.step,
        "schedule": options.schedule,
        "tol": options.tol,
        "newton_rtol": options.relative_tolerance(DENSE_NEWTON_RTOL),
        "parameters": parameters,
        "initial_loss": result.initial_loss,
        "loss": result.loss,
        "gradient_norm": result.gradient_norm,
        "converged": result.converged,
        "steps": result.steps,
        "message": result.message,
        "history": result.history.as_dict(),
    }


def check_output_path(path: Path) -> None:
    """Raise SpecError before a long run when `path` cannot be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"output path {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise SpecError(f"folder {path.parent} of the output {path} does not exist")
    try:
        # The file is written through a temporary file in the same folder and a rename.
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise SpecError(f"cannot write the output {path}: {error}") from error


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write `document` atomically; non-finite floats become null rather than invalid JSON."""
    text = json.dumps(_finite(document), indent=2, allow_nan=False) + "\n"
    try:
        write_atomic(Path(path), text)
    except OSError as error:
        raise SpecError(f"cannot write {path}: {error}") from error


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def positive_float(text: str) -> float:
    """Parse a command-line value that must be a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a finite number > 0")
    return value


def unit_fraction(text: str) -> float:
    """Parse a command-line value that must lie in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number in [0, 1)")
    return 0.0 if value == 0 else value


def positive_int(text: str) -> int:
    """Parse a command-line value that must be an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
    return value


DEFAULT_GROWTH = 2.0
DEFAULT_MAX_STEP = 1e8
"""Defaults of `--growth` and `--max-step`; a fixed schedule rejects other values."""


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the method, solver, step-size and output options of a training run."""
    parser.add_argument("--method", choices=METHODS, default="mean-value", help="discrete gradient")
    parser.add_argument(
        "--solver",
        choices=("newton", "coordinate"),
        default="newton",
        help="Newton's method on the whole step, or (itoh-abe only) one scalar equation "
        "per coordinate without a Jacobian",
    )
    parser.add_argument(
        "--step", type=positive_float, default=1.0, help="step size tau (default 1)"
    )
    parser.add_argument(
        "--schedule",
        choices=("fixed", "grow", "cycle"),
        default="fixed",
        help="keep tau fixed; grow it by --growth after each accepted step up to --max-step; "
        "or cycle: grow it and restart from --step once it would pass --max-step",
    )
    parser.add_argument(
        "--growth",
        type=positive_float,
        default=DEFAULT_GROWTH,
        help="growth factor of tau in the grow and cycle schedules",
    )
    parser.add_argument(
        "--max-step",
        type=positive_float,
        default=DEFAULT_MAX_STEP,
        help="upper bound on tau in the grow and cycle schedules",
    )
    parser.add_argument(
        "--tol",
        type=positive_float,
        default=1e-8,
        help="stop when |grad V| <= tol * max(1, |grad V(x0)|) (default 1e-8)",
    )
    parser.add_argument("--max-steps", type=positive_int, default=1000, help="maximum steps")
    parser.add_argument(
        "--newton-rtol",
        type=unit_fraction,
        help="solve each step to |F(y)| <= NEWTON_RTOL * |y - x|, in [0, 1); the loss still "
        "falls by (1 - NEWTON_RTOL) |y - x|^2 / tau or more (default 1e-10, 0.5 for "
        "Newton-Krylov)",
    )
    parser.add_argument("--json", type=Path, help="write the run to this JSON file")


def check_training_arguments(args: argparse.Namespace) -> StepperOptions:
    """Check the training options before any slow work and return the stepper options."""
    if args.solver == "coordinate" and args.method != "itoh-abe":
        raise SpecError(
            f"--solver coordinate needs --method itoh-abe, not {args.method}: only the forward "
            "Itoh-Abe step splits into one scalar equation per coordinate"
        )
    if args.newton_rtol is not None and args.solver == "coordinate":
        raise SpecError(
            f"--newton-rtol {args.newton_rtol} sets the tolerance of Newton solves, and "
            "--solver coordinate solves each scalar equation to rounding instead; remove "
            "--newton-rtol"
        )
    if args.schedule == "fixed":
        changed = [
            f"{flag} {value:g}"
            for flag, value, default in (
                ("--growth", args.growth, DEFAULT_GROWTH),
                ("--max-step", args.max_step, DEFAULT_MAX_STEP),
            )
            if value != default
        ]
        if changed:
            verb, pronoun = ("applies", "it") if len(changed) == 1 else ("apply", "them")
            raise SpecError(
                f"{' and '.join(changed)} only {verb} to --schedule grow or cycle, and the "
                f"schedule is fixed; add --schedule grow or cycle, or remove {pronoun}"
            )
    if args.json:
        check_output_path(args.json)
    tolerance = {} if args.newton_rtol is None else {"newton_rtol": args.newton_rtol}
    return StepperOptions(
        step=args.step,
        schedule=args.schedule,
        growth=args.growth,
        max_step=args.max_step,
        tol=args.tol,
        max_steps=args.max_steps,
        **tolerance,
    )


def run_training(
    bound: BoundKernels,
    args: argparse.Namespace,
    options: StepperOptions,
    show_progress: bool,
) -> int:
    """Train, print a summary, write the JSON file if requested, and return the exit code."""
    result = train(bound, args.method, options, show_progress, solver=args.solver)
    document = report(bound.layout, args.method, options, result)
    if args.solver == "coordinate":
        document["newton_rtol"] = None
    # The JSON file comes first, so a reader of stdout that quits early loses no results.
    if args.json:
        write_json(document, args.json)
    lines = [
        f"{bound.layout.name}: {result.message}",
        f"loss {result.loss:.15g} after {result.steps} steps, converged: {result.converged}",
    ]
    lines += [f"{name} = {value}" for name, value in document["parameters"].items()]
    if args.json:
        lines.append(f"wrote {args.json}")
    print_lines(lines)
    return 0 if result.converged else EXIT_NOT_CONVERGED


def print_lines(lines: list[str]) -> None:
    """Print lines to stdout, and stop quietly when its reader has quit, as `head` does.

    stdout then points at the null device, so the flush at exit raises nothing, and the
    caller still returns the exit code of the run.
    """
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at the null device, so that writes and the flush at exit raise nothing."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def report_error(program: str, error: DgcodegenError) -> int:
    """Print an error for the command line and return its exit code."""
    print(f"{program}: error: {error}", file=sys.stderr)
    if isinstance(error, SolverError) and "implicit step failed" in str(error):
        print(
            f"{program}: a smaller --step usually lets the implicit solve succeed; if it does "
            "not, check that the loss is finite and bounded below near the last point",
            file=sys.stderr,
        )
    return EXIT_INVALID_INPUT
