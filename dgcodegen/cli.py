"""Command line: `dgcodegen demo`, `generate SPEC`, `solve SPEC` and `verify SPEC`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import DgcodegenError, SpecError
from .krylov import DENSE_NEWTON_LIMIT
from .network import Network
from .network_cli import add_network_arguments, solve_network
from .reverse_cli import add_kernel_arguments, pick_kernels, solve_reverse
from .system import System
from .system_cli import (
    add_system_arguments,
    check_loss_arguments,
    generate_system_package,
    solve_system,
)
from .training import (
    DEFAULT_GROWTH,
    DEFAULT_MAX_STEP,
    EXIT_INVALID_INPUT,
    EXIT_NOT_CONVERGED,
    METHODS,
    add_training_arguments,
    report_error,
    silence_stdout,
)

log = logging.getLogger("dgcodegen")

EXIT_VERIFICATION_FAILED = 1
"""Exit code of `verify` when an identity failed."""

__all__ = ["EXIT_INVALID_INPUT", "EXIT_NOT_CONVERGED", "EXIT_VERIFICATION_FAILED", "main"]


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected an integer >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgcodegen",
        description="Derive exact discrete gradients of a symbolic loss, generate Numba "
        "kernels, and train with the implicit discrete gradient method.",
    )
    # SUPPRESS keeps a subcommand from resetting a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log DEBUG details"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log warnings only, no progress bars",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG details")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings only, no progress bars"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, help: str) -> argparse.ArgumentParser:
        # The flags are accepted before and after the subcommand; either sets them.
        command = commands.add_parser(name, help=help, parents=[common])
        return command

    demo = add_command("demo", "train logistic regression on breast cancer data")
    demo.add_argument(
        "--json", type=Path, help="write the run and the comparison to this JSON file"
    )
    demo.add_argument("--method", choices=METHODS, default="mean-value", help="discrete gradient")

    generate = add_command("generate", "derive and render the kernels of a spec")
    generate.add_argument("spec", type=Path, help="spec file: .py binding `problem`, or .toml")
    generate.add_argument(
        "--out", type=Path, help="package folder to write (default: generated/<name>)"
    )
    generate.add_argument(
        "--check",
        action="store_true",
        help="write nothing; print a diff and exit 1 if the files on disk differ",
    )

    solve = add_command("solve", "train a spec with the discrete gradient method")
    solve.add_argument("spec", type=Path, help="spec file: .py binding `problem`, or .toml")
    solve.add_argument(
        "--data",
        type=Path,
        help="data file (.csv, .npy or .npz, as described in the README); default: the spec's data",
    )
    add_training_arguments(solve)
    add_system_arguments(solve)
    add_network_arguments(solve)
    add_kernel_arguments(solve)
    solve.add_argument("--out", type=Path, help="folder for the generated kernels")

    verify = add_command("verify", "prove or check the discrete gradient identities of a spec")
    verify.add_argument("spec", type=Path, help="spec file: .py binding `problem`, or .toml")
    verify.add_argument("--json", type=Path, help="write the certificate to this JSON file")
    verify.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the random points of numerical checks, an integer >= 0",
    )
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    configured = os.environ.get("DGCODEGEN_LOG_LEVEL", "").strip().upper()
    if configured and not (verbose or quiet):
        if configured in ("DEBUG", "INFO", "WARNING", "ERROR"):
            level = getattr(logging, configured)
        else:
            print(
                f"dgcodegen: ignoring DGCODEGEN_LOG_LEVEL={configured!r}; "
                "use DEBUG, INFO, WARNING or ERROR",
                file=sys.stderr,
            )
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("numba").setLevel(logging.WARNING)


def _generate(args: argparse.Namespace) -> int:
    from .dsl import load_spec
    from .runtime import generate

    problem = load_spec(args.spec)
    out = args.out or Path("generated") / problem.name
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out} is a file; give a folder for the generated package")
    if not args.check:
        _check_package_folder(out)
    if isinstance(problem, System):
        return generate_system_package(problem, out, args.check)
    # A loss above the dense limit gets the reverse-mode kernels, as `solve` picks them.
    reverse = not isinstance(problem, Network) and pick_kernels(problem, "auto") == "reverse"
    if args.check:
        return _check_generated(problem, out, reverse)
    directory = generate(problem, out, reverse=reverse)
    if isinstance(problem, Network):
        print(f"wrote the kernels of the network {problem.name!r} to {directory}")
    elif reverse:
        print(f"wrote the reverse-mode kernels of the loss {problem.name!r} to {directory}")
    else:
        print(f"wrote the standalone solver package of {problem.name!r} to {directory}")
    if directory.name.isidentifier():
        data = " --data FILE.csv" if problem.layout.has_data else ""
        print(f"run it with: cd {directory.parent} && python -m {directory.name}{data} --step TAU")
    else:
        log.warning(
            "the folder name %r is not a Python identifier, so `python -m` cannot run the "
            "package; rename the folder to run it",
            directory.name,
        )
    return 0


def _check_package_folder(out: Path) -> None:
    """Reject a package folder whose name `python -m` would resolve to an installed module."""
    import importlib.machinery

    name = out.resolve().name
    if not name.isidentifier():
        return
    # Installed modules only: the search skips the current folder and sys.modules, because
    # `python -m` run next to the package finds the package first.
    local = {str(Path.cwd().resolve()), str(out.resolve().parent)}
    search = [p for p in sys.path if p and str(Path(p).resolve()) not in local]
    if name in sys.builtin_module_names:
        origin = "a built-in module"
    else:
        found = importlib.machinery.PathFinder.find_spec(name, search)
        if found is None:
            return
        origin = found.origin or name
    raise SpecError(
        f"the folder name {name!r} is also the name of the module {origin}, which "
        f"`python -m {name}` would run instead of the package; choose another --out"
    )


def _check_generated(problem, out: Path, reverse: bool = False) -> int:  # noqa: ANN001
    """Compare a fresh generation with the files in `out`; print a diff of any difference.

    `problem` is a Loss or a Network; `reverse` selects the reverse-mode kernels of a Loss.
    """
    import difflib

    from .runtime import render_files

    stale = 0
    files = render_files(problem, reverse=reverse)
    for name, text in sorted(files.items()):
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
        return EXIT_INVALID_INPUT
    print(f"{out} is up to date")
    return 0


LOSS_ONLY_OPTIONS = (
    ("--data", "data", None),
    ("--schedule", "schedule", "fixed"),
    ("--growth", "growth", DEFAULT_GROWTH),
    ("--max-step", "max_step", DEFAULT_MAX_STEP),
    ("--tol", "tol", 1e-8),
    ("--max-steps", "max_steps", 1000),
    ("--newton-rtol", "newton_rtol", None),
)
"""`(flag, attribute, default)` of `solve` options that a system does not use."""

NETWORK_ONLY_OPTIONS = (
    ("--linear-solver", "linear_solver", "auto"),
    ("--preconditioner", "preconditioner", "none"),
)
"""`(flag, attribute, default)` of `solve` options that only a network or a loss with
reverse-mode kernels uses."""

LOSS_KERNEL_OPTIONS = (("--kernels", "kernels", "auto"),)
"""`(flag, attribute, default)` of `solve` options that only a loss uses."""


def _reject_options(args: argparse.Namespace, options: tuple, kind: str) -> None:
    """Raise SpecError for an option set away from its default that `kind` would ignore."""
    for flag, attribute, default in options:
        if getattr(args, attribute) != default:
            raise SpecError(f"{flag} does not apply to {kind}; remove it")


def _solve(args: argparse.Namespace, show_progress: bool) -> int:
    from .dsl import load_spec
    from .runtime import compile_problem
    from .training import check_training_arguments, run_training

    step = args.step
    args.step = 1.0 if step is None else step
    options = check_training_arguments(args)
    args.step = step
    if args.out and args.out.exists() and not args.out.is_dir():
        raise SpecError(f"--out {args.out} is a file; give a folder for the generated package")
    problem = load_spec(args.spec)
    if isinstance(problem, System):
        _reject_options(
            args, LOSS_ONLY_OPTIONS + NETWORK_ONLY_OPTIONS + LOSS_KERNEL_OPTIONS, "a dg.System"
        )
        return solve_system(problem, args, show_progress)
    check_loss_arguments(args)
    options = check_training_arguments(args)
    if isinstance(problem, Network):
        _reject_options(args, LOSS_KERNEL_OPTIONS, "a dg.Network")
        return solve_network(problem, args, options, show_progress)
    if pick_kernels(problem, args.kernels) == "reverse":
        return solve_reverse(problem, args, options, show_progress)
    _reject_options(args, NETWORK_ONLY_OPTIONS, "a dg.Loss with dense kernels")
    data = problem.layout.read_data(args.data) if args.data else None
    compiled = compile_problem(problem, data, args.out, show_progress, methods=(args.method,))
    return run_training(compiled, args, options, show_progress)


def _verify(args: argparse.Namespace) -> int:
    from .dsl import load_spec
    from .system_verify import verify_system
    from .training import check_output_path, write_json
    from .verify import verify

    if args.json:
        check_output_path(args.json)
    problem = load_spec(args.spec)
    if isinstance(problem, Network):
        raise SpecError(
            f"verify covers dg.Loss and dg.System specs, not the dg.Network {problem.name!r}: "
            "a network's discrete gradients are assembled at run time from its loss, gradient "
            "and HVP kernels, and the tests check them numerically"
        )
    if isinstance(problem, System):
        report = verify_system(problem, seed=args.seed)
    else:
        if pick_kernels(problem, "auto") == "reverse":
            raise SpecError(
                f"verify proves the identities of dense symbolic discrete gradients, which the "
                f"{problem.layout.size} parameters of {problem.name!r} put out of reach (the "
                f"limit is {DENSE_NEWTON_LIMIT}); its reverse-mode discrete gradients are "
                "assembled at run time, as a network's are, and the tests check them "
                "numerically. Verify a smaller instance of the same loss instead"
            )
        report = verify(problem, seed=args.seed)
    print(report.certificate(), end="")
    if args.json:
        write_json(report.as_dict(), args.json)
        print(f"wrote {args.json}")
    return 0 if report.passed else EXIT_VERIFICATION_FAILED


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit code (1 for input errors)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    show_progress = not args.quiet and sys.stderr.isatty()
    try:
        if args.command == "demo":
            from .demo import run_demo
            from .training import check_output_path

            if args.json:
                check_output_path(args.json)

            return run_demo(args.json, args.method, show_progress)
        if args.command == "generate":
            return _generate(args)
        if args.command == "verify":
            return _verify(args)
        return _solve(args, show_progress)
    except DgcodegenError as error:
        return report_error("dgcodegen", error)
    except BrokenPipeError:
        # The reader of stdout quit early, as `dgcodegen verify ... | head` does. Training
        # commands handle this in `training.print_lines` and keep their exit code.
        silence_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
