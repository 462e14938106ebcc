"""Training of networks and of losses with reverse-mode kernels: options, solver, JSON report.

`cli.py` dispatches here when a spec binds a `dg.Network`, and `reverse_cli.py` trains a loss
with reverse-mode kernels through the same functions. Both take the mean-value and Gonzalez
discrete gradients built from loss, gradient and HVP kernels (`matrix_free.py`), solved by
dense Newton for small problems and by Newton-Krylov (`krylov.py`) above
`DENSE_NEWTON_LIMIT` parameters, and the forward Itoh-Abe step solved coordinate by
coordinate.

`dgcodegen generate` copies this module into network and reverse-mode packages, whose
`__main__` trains through `run_matrix_free` as `dgcodegen solve` does. So at module level it
imports only NumPy, the standard library and modules that those packages copy as well.
`solve_network` alone needs dgcodegen, so it imports `runtime` only when called.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .coordinate import coordinate_descent
from .errors import SpecError
from .krylov import (
    DENSE_NEWTON_LIMIT,
    KRYLOV_NEWTON_RTOL,
    PRECONDITIONERS,
    KrylovOptions,
    newton_krylov_descent,
)
from .layout import Layout
from .matrix_free import MATRIX_FREE_METHODS, MatrixFreeKernels
from .stepper import ProgressCallback, SolveResult, StepperOptions, discrete_gradient_descent
from .training import (
    EXIT_NOT_CONVERGED,
    add_training_arguments,
    print_lines,
    report,
    write_json,
)

if TYPE_CHECKING:
    from .network import Network

log = logging.getLogger("dgcodegen")

LINEAR_SOLVERS = ("auto", "dense", "krylov")

TRAINING_METHODS = (*MATRIX_FREE_METHODS, "itoh-abe")
"""Discrete gradients that networks and losses with reverse-mode kernels train with."""


def add_network_arguments(solve: argparse.ArgumentParser) -> None:
    """Add the options of `solve` that only a network or a reverse-mode loss uses."""
    solve.add_argument(
        "--linear-solver",
        choices=LINEAR_SOLVERS,
        default="auto",
        help="network or reverse-mode loss only: dense Newton, Newton-Krylov, or auto "
        f"(dense up to {DENSE_NEWTON_LIMIT} parameters)",
    )
    solve.add_argument(
        "--preconditioner",
        choices=PRECONDITIONERS,
        default="none",
        help="network or reverse-mode loss only: preconditioner of the Krylov solves",
    )


def package_parser(program: str, description: str, data_required: bool) -> argparse.ArgumentParser:
    """Build the command-line parser of a network or reverse-mode package's `__main__`.

    It takes the `solve` options that apply to these kernels, `--data` and `-q`. `--method`
    offers only `TRAINING_METHODS`.
    """
    # "resolve" lets the options added below replace those of `add_training_arguments`.
    parser = argparse.ArgumentParser(
        prog=program, description=description, conflict_handler="resolve"
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=data_required,
        help="data file: .csv with a header naming the fields, .npy with one row per sample "
        "and the fields in declaration order, or .npz with one array per column",
    )
    add_training_arguments(parser)
    parser.add_argument(
        "--method", choices=TRAINING_METHODS, default="mean-value", help="discrete gradient"
    )
    # `dgcodegen solve` accepts --solver for these problems too, so its command lines run here
    # unchanged. Past the checks of `check_training_arguments` it changes nothing, because
    # itoh-abe always solves coordinate by coordinate here.
    parser.add_argument(
        "--solver", choices=("newton", "coordinate"), default="newton", help=argparse.SUPPRESS
    )
    add_network_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return parser


def check_class_labels(labels: np.ndarray, classes: int, source: Path | str) -> None:
    """Raise SpecError unless every label is an integer class index from 0 to classes - 1.

    `labels` is the checked `label` data column, one row per sample, read from `source`.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0) | (labels >= classes))
    if bad.size:
        raise SpecError(
            f"{source}: label {float(labels[bad[0]])!r} in sample {bad[0]} (counting from 0) is "
            f"not a class index; labels must be integers from 0 to {classes - 1}, one per "
            "output of the last layer"
        )


def compile_kernels(bound: MatrixFreeKernels) -> None:
    """Compile (or load from Numba's cache) the loss, gradient and HVP kernels.

    It calls them at the starting point in the order `runtime.compile_network` does, so the
    memos of `bound` and the numbers of the run match those of `dgcodegen solve`.
    """
    log.info("compiling the loss, gradient and HVP kernels, or loading them from Numba's cache")
    started = time.perf_counter()
    x = bound.layout.initial_point()
    bound.loss(x)
    bound.loss_gradient(x)
    bound.hvp(x, x)
    log.info("compiled kernels in %.2f s", time.perf_counter() - started)


def check_solver_options(args: argparse.Namespace, n: int) -> None:
    """Reject `--linear-solver` and `--preconditioner` where the run would ignore them."""
    if args.method == "itoh-abe":
        for flag, value, default in (
            ("--linear-solver", args.linear_solver, "auto"),
            ("--preconditioner", args.preconditioner, "none"),
        ):
            if value != default:
                raise SpecError(
                    f"{flag} {value} does not apply to --method itoh-abe, which solves one "
                    "scalar equation per coordinate; remove it"
                )
        return
    dense = args.linear_solver == "dense" or (
        args.linear_solver == "auto" and n <= DENSE_NEWTON_LIMIT
    )
    if dense and args.preconditioner != "none":
        raise SpecError(
            f"--preconditioner {args.preconditioner} applies to the Krylov solves of "
            f"Newton-Krylov, and this run of {n} parameters uses dense Newton; remove it or "
            "add --linear-solver krylov"
        )


def pick_linear_solver(n: int, requested: str) -> str:
    """Return "dense" or "krylov" for a problem of n parameters, and log the choice."""
    if requested == "auto":
        choice = "dense" if n <= DENSE_NEWTON_LIMIT else "krylov"
        name = "dense Newton" if choice == "dense" else "Newton-Krylov"
        log.info("using %s for %d parameters (dense Newton up to %d)", name, n, DENSE_NEWTON_LIMIT)
        return choice
    log.info("using %s Newton for %d parameters, as requested", requested, n)
    return requested


def train_network(
    bound: MatrixFreeKernels,
    method: str,
    options: StepperOptions,
    linear_solver: str = "auto",
    krylov: KrylovOptions | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[SolveResult, str]:
    """Train from the layout's starting point; return the result and the solver used.

    The solver is "dense" or "krylov" Newton, or "coordinate" for Itoh-Abe.
    """
    x0 = bound.layout.initial_point()
    if method == "itoh-abe":
        if options.newton_rtol is not None:
            raise SpecError(
                f"--newton-rtol {options.newton_rtol} sets the tolerance of Newton solves, and "
                "itoh-abe here solves one scalar equation per coordinate to rounding instead; "
                "remove --newton-rtol"
            )
        # One scalar equation per coordinate, each solved from loss values alone.
        log.info("using the coordinate-wise Itoh-Abe solve for %d parameters", bound.n)
        quotient = bound.coordinate_quotient()
        result = coordinate_descent(
            bound.loss, bound.gradient, None, x0, options, progress, quotient=quotient
        )
        return result, "coordinate"
    if method not in MATRIX_FREE_METHODS:
        raise SpecError(
            f"--method {method} is not available for a dg.Network; choose one of "
            f"{', '.join(TRAINING_METHODS)}"
        )
    choice = pick_linear_solver(bound.n, linear_solver)
    if choice == "krylov":
        return newton_krylov_descent(bound, method, x0, options, krylov, progress), choice
    result = discrete_gradient_descent(
        bound.loss,
        bound.gradient,
        bound.discrete_gradient(method),
        bound.jacobian(method),
        x0,
        options,
        progress,
    )
    return result, choice


def matrix_free_report(
    layout: Layout,
    method: str,
    options: StepperOptions,
    result: SolveResult,
    linear_solver: str,
) -> dict[str, Any]:
    """Return the JSON document of a matrix-free run (a network or a reverse-mode loss): the
    loss report plus the solver used and the Newton tolerance it used."""
    document = report(layout, method, options, result)
    document["linear_solver"] = linear_solver
    if linear_solver == "krylov":
        document["newton_rtol"] = options.relative_tolerance(KRYLOV_NEWTON_RTOL)
    elif linear_solver == "coordinate":
        document["newton_rtol"] = None
    krylov_iterations = getattr(result, "krylov_iterations", None)
    if krylov_iterations is not None:
        document["history"]["krylov_iterations"] = list(krylov_iterations)
    return document


def training_accuracy(bound: MatrixFreeKernels, theta: np.ndarray) -> float:
    """Return the fraction of samples whose predicted class, the largest output, is their label."""
    outputs = bound.kernels.predict(theta, bound.data[0])
    return float(np.mean(outputs.argmax(axis=1) == bound.data[1][:, 0]))


def run_matrix_free(
    bound: MatrixFreeKernels,
    args: argparse.Namespace,
    options: StepperOptions,
    classifier: bool = False,
    entries: dict[str, Any] | None = None,
) -> int:
    """Train, print a summary, write the JSON file if requested, and return the exit code.

    Args:
        bound: compiled kernels with the data bound.
        args: the parsed options of `solve` or of a package's `__main__`.
        options: the stepper options checked from `args`.
        classifier: add the training accuracy of a softmax cross-entropy network.
        entries: further entries of the JSON document, such as the kernels used.
    """
    check_solver_options(args, bound.n)
    name = bound.layout.name
    krylov = KrylovOptions(preconditioner=args.preconditioner)
    started = time.perf_counter()
    result, solver = train_network(bound, args.method, options, args.linear_solver, krylov)
    log.info("trained %r in %.2f s", name, time.perf_counter() - started)
    document = matrix_free_report(bound.layout, args.method, options, result, solver)
    document.update(entries or {})
    lines = [
        f"{name}: {result.message}",
        f"loss {result.loss:.15g} after {result.steps} steps, converged: {result.converged}",
    ]
    if classifier:
        accuracy = training_accuracy(bound, result.x)
        document["training_accuracy"] = accuracy
        lines.append(f"training accuracy {accuracy:.4f}")
    # The JSON file comes first, so a reader of stdout that quits early loses no results.
    if args.json:
        write_json(document, args.json)
        lines.append(f"wrote {args.json}")
    print_lines(lines)
    return 0 if result.converged else EXIT_NOT_CONVERGED


def solve_network(
    network: Network,
    args: argparse.Namespace,
    options: StepperOptions,
    show_progress: bool,
) -> int:
    """Run `dgcodegen solve` on a network spec and return the exit code."""
    from .runtime import compile_network

    check_solver_options(args, network.size)
    data = network.layout.read_data(args.data) if args.data else None
    if data is not None:
        data = network.validate_data(data)
    bound = compile_network(network, data, args.out, show_progress)
    classifier = network.loss == "softmax_cross_entropy"
    return run_matrix_free(bound, args, options, classifier=classifier)
