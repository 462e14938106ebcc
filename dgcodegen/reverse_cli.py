"""Training of large `Loss` specs with reverse-mode kernels: the kernel choice and `solve`.

`cli.py` dispatches here when a loss has more than `DENSE_NEWTON_LIMIT` parameters, or when
`--kernels reverse` requests it. The loss, gradient and Hessian-vector product kernels come
from `reverse_emit.py`, so the dense symbolic Hessian is never built. Training then runs as
for a `dg.Network`. The mean-value and Gonzalez discrete gradients of `matrix_free.py` are
solved by Newton-Krylov above `DENSE_NEWTON_LIMIT` parameters and by dense Newton, with
Jacobian columns from Hessian-vector products, up to it. Forward Itoh-Abe is solved
coordinate by coordinate from loss values.
"""

from __future__ import annotations

import argparse
import logging

from .dsl import Loss
from .errors import SpecError
from .krylov import DENSE_NEWTON_LIMIT
from .network_cli import TRAINING_METHODS, run_matrix_free
from .stepper import StepperOptions

log = logging.getLogger("dgcodegen")

KERNEL_CHOICES = ("auto", "dense", "reverse")


def add_kernel_arguments(solve: argparse.ArgumentParser) -> None:
    """Add the `--kernels` option of `solve`."""
    solve.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        default="auto",
        help="dg.Loss only: dense symbolic gradient and Jacobian kernels, reverse-mode loss, "
        "gradient and Hessian-vector product kernels, or auto (dense up to "
        f"{DENSE_NEWTON_LIMIT} parameters)",
    )


def pick_kernels(problem: Loss, requested: str) -> str:
    """Return "dense" or "reverse" for `problem`, and log the choice."""
    n = len(problem.parameter_symbols)
    if requested == "auto":
        choice = "dense" if n <= DENSE_NEWTON_LIMIT else "reverse"
        log.info(
            "using %s kernels for %d parameters (dense up to %d)",
            "dense symbolic" if choice == "dense" else "reverse-mode matrix-free",
            n,
            DENSE_NEWTON_LIMIT,
        )
        return choice
    log.info("using %s kernels for %d parameters, as requested", requested, n)
    if requested == "dense" and n > DENSE_NEWTON_LIMIT:
        log.warning(
            "dense symbolic kernels for %d parameters build a Hessian of %d entries; "
            "derivation and compilation can take hours. Drop --kernels dense to get "
            "reverse-mode kernels",
            n,
            n * n,
        )
    return requested


def solve_reverse(
    problem: Loss, args: argparse.Namespace, options: StepperOptions, show_progress: bool
) -> int:
    """Run `dgcodegen solve` on a loss with reverse-mode kernels and return the exit code."""
    from .runtime import compile_matrix_free

    if args.method not in TRAINING_METHODS:
        raise SpecError(
            f"--method {args.method} needs the dense kernels; with reverse-mode kernels choose "
            f"one of {', '.join(TRAINING_METHODS)}, or pass --kernels dense"
        )
    data = problem.layout.read_data(args.data) if args.data else None
    bound = compile_matrix_free(problem, data, args.out, show_progress)
    return run_matrix_free(bound, args, options, entries={"kernels": "reverse"})
