"""Train a compiled problem and report the run as a JSON-ready dictionary."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .coordinate import coordinate_descent
from .dsl import Loss
from .emit import write_atomic
from .errors import SpecError
from .runtime import CompiledProblem
from .stepper import SolveResult, StepperOptions, discrete_gradient_descent

log = logging.getLogger("dgcodegen")


def read_data(problem: Loss, path: Path) -> dict[str, np.ndarray]:
    """Read data columns from `.npz` (one array per column) or `.csv`.

    A CSV file has a header row. A scalar column `y` is the field `y`, and entry `j` of a
    vector column `x` is the field `x[j]`.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"data file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise SpecError(
                f"cannot read {path} as an .npz archive of numeric arrays: {error}; "
                "write it with numpy.savez(path, name=array, ...)"
            ) from error
    if path.suffix == ".csv":
        try:
            return _read_csv(problem, path)
        except UnicodeDecodeError as error:
            raise SpecError(f"{path} is not UTF-8 text: {error}") from error
    raise SpecError(f"unsupported data file {path}: use .npz or .csv")


def _read_csv(problem: Loss, path: Path) -> dict[str, np.ndarray]:
    # utf-8-sig drops the byte-order mark that spreadsheet programs write.
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise SpecError(f"{path} is empty; it needs a header row naming the columns")
        values = []
        for row in reader:
            if len(row) != len(header):
                raise SpecError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                    f"{len(header)}"
                )
            try:
                values.append([float(v) for v in row])
            except ValueError as error:
                raise SpecError(f"{path}, line {reader.line_num}: {error}") from error
        rows = np.array(values, dtype=np.float64).reshape(len(values), len(header))
    position = {name.strip(): index for index, name in enumerate(header)}
    result = {}
    for column in problem.columns:
        fields = (
            [column.name]
            if column.shape == ()
            else [f"{column.name}[{j}]" for j in range(column.size)]
        )
        missing = [f for f in fields if f not in position]
        if missing:
            raise SpecError(f"{path} has no field {missing[0]!r} for the column {column.name!r}")
        values = rows[:, [position[f] for f in fields]] if len(rows) else np.empty((0, len(fields)))
        result[column.name] = values[:, 0] if column.shape == () else values
    return result


def train(
    compiled: CompiledProblem,
    method: str,
    options: StepperOptions,
    show_progress: bool = False,
    solver: str = "newton",
) -> SolveResult:
    """Run the discrete gradient method on a compiled problem.

    `solver` is "newton" (the whole implicit step) or "coordinate" (forward Itoh-Abe
    only, one scalar equation per coordinate).
    """
    progress_bar = None
    callback = None
    if show_progress:
        from tqdm import tqdm

        progress_bar = tqdm(
            total=options.max_steps, desc=f"{method} steps", unit="step", leave=False
        )

        def callback(step: int, loss: float, tau: float) -> None:
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{loss:.6g}", tau=f"{tau:.3g}")

    started = time.perf_counter()
    try:
        if solver == "coordinate":
            result = coordinate_descent(
                compiled.loss,
                compiled.gradient,
                compiled.discrete_gradient(method),
                compiled.problem.initial_point,
                options,
                callback,
            )
        else:
            result = discrete_gradient_descent(
                compiled.loss,
                compiled.gradient,
                compiled.discrete_gradient(method),
                compiled.jacobian(method),
                compiled.problem.initial_point,
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


def report(
    problem: Loss, method: str, options: StepperOptions, result: SolveResult
) -> dict[str, Any]:
    """Return the JSON document of a run."""
    parameters = {
        name: np.asarray(value).tolist()
        for name, value in problem.split_parameters(result.x).items()
    }
    return {
        "problem": problem.name,
        "method": method,
        "step": options.step,
        "schedule": options.schedule,
        "tol": options.tol,
        "parameters": parameters,
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


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write `document` atomically; non-finite floats become null rather than invalid JSON."""
    text = json.dumps(_finite(document), indent=2, allow_nan=False) + "\n"
    write_atomic(Path(path), text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
