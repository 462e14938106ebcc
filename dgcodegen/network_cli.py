"""Training of `Network` specs: solver choice, the `solve` options and the JSON report.

`cli.py` dispatches here when a spec binds a `dg.Network`. Networks take the mean-value
and Gonzalez discrete gradients built from loss, gradient and HVP kernels
(`matrix_free.py`), solved by dense Newton for small networks and by Newton-Krylov
(`krylov.py`) above `DENSE_NEWTON_LIMIT` parameters.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

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
from .network import Network
from .stepper import ProgressCallback, SolveResult, StepperOptions, discrete_gradient_descent
from .training import EXIT_NOT_CONVERGED, report, write_json

log = logging.getLogger("dgcodegen")

LINEAR_SOLVERS = ("auto", "dense", "krylov")


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
            f"{', '.join((*MATRIX_FREE_METHODS, 'itoh-abe'))}"
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


def solve_network(
    network: Network,
    args: argparse.Namespace,
    options: StepperOptions,
    show_progress: bool,
) -> int:
    """Run `dgcodegen solve` on a network spec and return the exit code."""
    from .runtime import compile_network

    data = network.layout.read_data(args.data) if args.data else None
    if data is not None:
        data = network.validate_data(data)
    bound = compile_network(network, data, args.out, show_progress)
    krylov = KrylovOptions(preconditioner=args.preconditioner)
    started = time.perf_counter()
    result, choice = train_network(bound, args.method, options, args.linear_solver, krylov)
    log.info("trained %r in %.2f s", network.name, time.perf_counter() - started)
    document = matrix_free_report(network.layout, args.method, options, result, choice)
    print(f"{network.name}: {result.message}")
    print(f"loss {result.loss:.15g} after {result.steps} steps, converged: {result.converged}")
    outputs = bound.kernels.predict(result.x, bound.data[0])
    if network.loss == "softmax_cross_entropy":
        accuracy = float(np.mean(outputs.argmax(axis=1) == bound.data[1][:, 0]))
        document["training_accuracy"] = accuracy
        print(f"training accuracy {accuracy:.4f}")
    if args.json:
        write_json(document, args.json)
        print(f"wrote {args.json}")
    return 0 if result.converged else EXIT_NOT_CONVERGED
