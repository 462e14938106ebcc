"""Command-line handling of `System` specs: `generate`, `solve` and `verify`.

`cli.py` dispatches here when a spec binds a `dg.System`, so the loss commands keep their
own options and messages.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import numpy as np

from .errors import SpecError
from .system import FOURTH_ORDER, System
from .training import EXIT_NOT_CONVERGED, positive_int


def add_system_arguments(solve: argparse.ArgumentParser) -> None:
    """Add the options of `solve` that only a system uses, and the fourth-order method.

    `--step` loses its default, so that a system falls back to the step of its spec and a
    loss to tau = 1.
    """
    solve.set_defaults(step=None)
    for action in solve._actions:  # argparse has no public way to extend choices.
        if action.dest == "method" and action.choices is not None:
            action.choices = (*action.choices, FOURTH_ORDER)
        if action.dest == "step":
            action.help = "step size: tau of a loss (default 1), h of a system (default: its step=)"
    solve.add_argument(
        "--steps",
        type=positive_int,
        help="system only: number of time steps to take; --tol, --schedule, --growth, "
        "--max-step and --max-steps apply to a loss only",
    )
    solve.add_argument(
        "--save-every",
        type=positive_int,
        default=None,
        help="system only: save the state every K steps, and after the last (default 1)",
    )


def check_loss_arguments(args: argparse.Namespace) -> None:
    """Reject the system-only options for a loss and give `--step` its default of 1."""
    if args.method == FOURTH_ORDER:
        raise SpecError(f"--method {FOURTH_ORDER} integrates a dg.System; the spec binds a loss")
    for flag, value in (("--steps", args.steps), ("--save-every", args.save_every)):
        if value is not None:
            raise SpecError(f"{flag} applies to a dg.System; for a loss use --max-steps")
    if args.step is None:
        args.step = 1.0


def generate_system_package(system: System, out: Path, check: bool) -> int:
    """Write the package of `system` into `out`, or with `check` compare it with `out`."""
    from .system_emit import generate_system, render_system

    if not check:
        directory = generate_system(system, out)
        print(f"wrote kernels and time loops of the system {system.name!r} to {directory}")
        return 0
    stale = 0
    for name, text in sorted(render_system(system).items()):
        path = out / name
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != text:
            stale += 1
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"{path} (on disk)",
                    tofile=f"{path} (fresh)",
                )
            )
    if stale:
        print(f"{stale} file(s) in {out} are out of date; run `dgcodegen generate` to rewrite them")
        return 1
    print(f"{out} is up to date")
    return 0


def solve_system(system: System, args: argparse.Namespace, show_progress: bool = False) -> int:
    """Integrate `system` with the command-line options and return the exit code (3: a step failed)."""
    from .integrate import compile_system, trajectory_report
    from .training import write_json

    step = args.step if args.step is not None else system.step
    if step is None:
        raise SpecError(f"no step size for the system {system.name!r}: pass --step H or step=")
    if args.steps is None:
        raise SpecError("--steps N is required for a system: the number of time steps")
    if args.solver != "newton":
        raise SpecError("--solver coordinate applies to a loss; a system step uses Newton's method")
    method = args.method
    compiled = compile_system(system, args.out)
    save_every = args.save_every or 1
    trajectory = compiled.integrate(
        method, step, args.steps, save_every, show_progress=show_progress
    )
    document = trajectory_report(system, method, step, trajectory)
    energy = trajectory.energy
    print(f"{system.name}: {trajectory.message}")
    print(
        f"t = {trajectory.steps * step:.10g}, H = {energy[-1]:.17g}, "
        f"max |H - H(x0)| = {document['energy_drift']:.3e} over {len(energy)} saved states"
    )
    for name, value in system.split_state(trajectory.state).items():
        print(f"{name} = {np.asarray(value).tolist()}")
    print(f"{trajectory.steps / max(trajectory.seconds, 1e-12):.4g} steps/s in the compiled loop")
    if args.json:
        write_json(document, args.json)
        print(f"wrote {args.json}")
    return 0 if trajectory.converged else EXIT_NOT_CONVERGED
