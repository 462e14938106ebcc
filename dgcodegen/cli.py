"""Command line: `dgcodegen demo`, `generate SPEC`, `solve SPEC` and `verify SPEC`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import DgcodegenError, SolverError, SpecError
from .runtime import METHODS

log = logging.getLogger("dgcodegen")

EXIT_INVALID_INPUT = 1
EXIT_VERIFICATION_FAILED = 1
"""Exit code of `verify` when an identity failed."""
EXIT_NOT_CONVERGED = 3
"""Exit code of `solve` when the run ended without converging (argparse uses 2)."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a finite number > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer >= 1")
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
    generate.add_argument("spec", type=Path, help="Python spec file that binds `problem`")
    generate.add_argument("--out", type=Path, help="output folder (default: generated/<name>)")
    generate.add_argument(
        "--check",
        action="store_true",
        help="write nothing; print a diff and exit 1 if the files on disk differ",
    )

    solve = add_command("solve", "train a spec with the discrete gradient method")
    solve.add_argument("spec", type=Path, help="Python spec file that binds `problem`")
    solve.add_argument(
        "--data", type=Path, help="data file (.npz or .csv); default: the spec's data"
    )
    solve.add_argument("--method", choices=METHODS, default="mean-value", help="discrete gradient")
    solve.add_argument(
        "--solver",
        choices=("newton", "coordinate"),
        default="newton",
        help="Newton's method on the whole step, or (itoh-abe only) one scalar equation "
        "per coordinate without a Jacobian",
    )
    solve.add_argument(
        "--step", type=_positive_float, default=1.0, help="step size tau (default 1)"
    )
    solve.add_argument(
        "--schedule",
        choices=("fixed", "grow"),
        default="fixed",
        help="keep tau fixed, or grow it by --growth after each accepted step",
    )
    solve.add_argument("--growth", type=_positive_float, default=2.0, help="growth factor of tau")
    solve.add_argument("--max-step", type=_positive_float, default=1e8, help="upper bound on tau")
    solve.add_argument(
        "--tol",
        type=_positive_float,
        default=1e-8,
        help="stop when |grad V| <= tol * max(1, |grad V(x0)|) (default 1e-8)",
    )
    solve.add_argument("--max-steps", type=_positive_int, default=1000, help="maximum steps")
    solve.add_argument("--out", type=Path, help="folder for the generated kernels")
    solve.add_argument("--json", type=Path, help="write the run to this JSON file")

    verify = add_command("verify", "prove or check the discrete gradient identities of a spec")
    verify.add_argument("spec", type=Path, help="Python spec file that binds `problem`")
    verify.add_argument("--json", type=Path, help="write the certificate to this JSON file")
    verify.add_argument(
        "--seed", type=int, default=0, help="seed of the random points of numerical checks"
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
    if args.check:
        return _check_generated(problem, out)
    directory = generate(problem, out)
    print(f"wrote kernels of {problem.name!r} to {directory}")
    return 0


def _check_generated(problem, out: Path) -> int:  # noqa: ANN001 - a dsl.Loss
    """Compare a fresh generation with the files in `out`; print a diff of any difference."""
    import difflib

    from .emit import render
    from .lower import lower

    stale = 0
    for name, text in sorted(render(lower(problem), problem.fingerprint()).items()):
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


def _solve(args: argparse.Namespace, show_progress: bool) -> int:
    from .dsl import load_spec
    from .runtime import compile_problem
    from .solve import check_output_path, read_data, report, train, write_json
    from .stepper import StepperOptions

    if args.solver == "coordinate" and args.method != "itoh-abe":
        raise SpecError(
            f"--solver coordinate needs --method itoh-abe, not {args.method}: only the forward "
            "Itoh-Abe step splits into one scalar equation per coordinate"
        )
    if args.json:
        check_output_path(args.json)
    if args.out and args.out.exists() and not args.out.is_dir():
        raise SpecError(f"--out {args.out} is a file; give a folder for the generated package")
    problem = load_spec(args.spec)
    data = problem.validate_data(read_data(problem, args.data)) if args.data else None
    options = StepperOptions(
        step=args.step,
        schedule=args.schedule,
        growth=args.growth,
        max_step=args.max_step,
        tol=args.tol,
        max_steps=args.max_steps,
    )
    compiled = compile_problem(problem, data, args.out, show_progress, methods=(args.method,))
    result = train(compiled, args.method, options, show_progress, solver=args.solver)
    document = report(problem, args.method, options, result)
    print(f"{problem.name}: {result.message}")
    print(f"loss {result.loss:.15g} after {result.steps} steps, converged: {result.converged}")
    for name, value in document["parameters"].items():
        print(f"{name} = {value}")
    if args.json:
        write_json(document, args.json)
        print(f"wrote {args.json}")
    return 0 if result.converged else EXIT_NOT_CONVERGED


def _verify(args: argparse.Namespace) -> int:
    from .dsl import load_spec
    from .solve import check_output_path, write_json
    from .verify import verify

    if args.json:
        check_output_path(args.json)
    problem = load_spec(args.spec)
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
            from .solve import check_output_path

            if args.json:
                check_output_path(args.json)

            return run_demo(args.json, args.method, show_progress)
        if args.command == "generate":
            return _generate(args)
        if args.command == "verify":
            return _verify(args)
        return _solve(args, show_progress)
    except SolverError as error:
        print(f"dgcodegen: error: {error}", file=sys.stderr)
        print(
            "dgcodegen: a smaller --step usually lets the implicit solve succeed", file=sys.stderr
        )
        return EXIT_INVALID_INPUT
    except DgcodegenError as error:
        print(f"dgcodegen: error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT


if __name__ == "__main__":
    sys.exit(main())
