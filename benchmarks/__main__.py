"""Command line of the benchmarks: `python -m benchmarks [--quick] [--out FILE]`."""

from __future__ import annotations

import os

# libgomp, Numba's default OpenMP threading layer here, busy-waits between parallel regions
# by default. On a loaded 2-core machine that made a 20,000-row kernel take 1 s instead of
# 1 ms, so the benchmarks let idle threads sleep. It must be set before libgomp starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import importlib.util
import logging
import shlex
import sys
import time
from pathlib import Path

from . import kernels, optimisers, report, sweep
from .problems import ROOT
from .timing import machine_description, markdown_table

log = logging.getLogger("dgcodegen.benchmarks")

SECTIONS = ("kernels", "optimisers", "sweep", "kepler", "networks")
"""Sections of the report; "kepler" and "networks" come from modules of their own."""

TARGET_PREFIXES = {
    "kernels": "- generated loss and gradient",
    "optimisers": "- fastest discrete gradient",
    "networks": "- digits network",
}
"""Start of the lines each section adds to the Targets list, so partial runs keep the others."""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run the benchmarks and write BENCHMARKS.md."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "smoke run: small data, mean-value kernels only, fewer settings, checked-in "
            "kernels, 2 repeats"
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to write"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="sections to run (default: all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timing repeats (default 5, quick 2)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples of the kernel benchmark (default 1,000,000, quick 20,000)",
    )
    return parser.parse_args(argv)


def machine_section(load: tuple[float, float, float]) -> str:
    """Return the machine table, with the load average `load` taken at the start."""
    rows = machine_description()
    rows.append(("load average at start", f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"))
    rows.append(("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "unset")))
    return "## Machine\n\n" + markdown_table(("item", "value"), rows, align="ll")


def extra_sections(names: list[str], quick: bool) -> list[str]:
    """Return the sections of the other benchmark modules that provide `markdown_section`.

    Each module `benchmarks.NAME` may define `markdown_section(quick: bool) -> str`, which
    returns a whole level-2 section. Without it, the section in the earlier report is kept.
    """
    sections = []
    for name in names:
        if importlib.util.find_spec(f"benchmarks.{name}") is None:
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        section = getattr(module, "markdown_section", None)
        if section is None:
            log.warning(
                "benchmarks.%s has no markdown_section(quick); keeping its old section", name
            )
            continue
        sections.append(section(quick=quick))
    return sections


def main(argv: list[str] | None = None) -> int:
    """Run the requested sections, write the report and return the exit code."""
    args = parse_arguments(argv)
    # dgcodegen logs one INFO line per solve, thousands here, so only this package's show.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    samples = args.samples or (20_000 if quick else 1_000_000)
    checked_in = quick
    out = args.out.resolve()
    plots = out.parent / "docs" / "benchmarks"
    plots.mkdir(parents=True, exist_ok=True)
    link = plots.relative_to(out.parent).as_posix()
    command = shlex.join(
        ["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.perf_counter()

    load = os.getloadavg()
    sections = []
    targets: list[str] = []
    if "kernels" in args.sections:
        results = kernels.run(samples, repeats, checked_in, quick)
        kernels.plot(results, plots / "kernels.png")
        body = kernels.markdown(results, f"{link}/kernels.png")
        sections.append("## Kernels\n\n" + body)
        targets += [line for line in body.splitlines() if line.startswith("- generated")]
    if "optimisers" in args.sections:
        output = optimisers.run(repeats, quick, checked_in)
        names = {}
        for index, (name, (problem, results)) in enumerate(output.items()):
            names[name] = f"{link}/optimisers-{index}.png"
            optimisers.plot(problem, results, plots / f"optimisers-{index}.png")
        body = optimisers.markdown(output, names)
        sections.append("## Optimisers\n\n" + body)
        targets += [
            f"{line} ({name})"
            for name, (problem, results) in output.items()
            for line in [_dg_target(results)]
        ]
    if "sweep" in args.sections:
        steps = 5 if quick else 50
        rows = sweep.run(steps, quick, checked_in)
        sweep.plot(rows, steps, plots / "sweep.png")
        sections.append("## Step-size sweep\n\n" + sweep.markdown(rows, steps, f"{link}/sweep.png"))
    extra = extra_sections(
        [name for name in ("kepler", "networks") if name in args.sections], quick
    )
    targets += [
        line for section in extra for line in section.splitlines()
        if line.startswith(TARGET_PREFIXES["networks"])
    ]  # fmt: skip

    partial = set(args.sections) != set(SECTIONS)
    if partial:
        targets = kept_targets(report.previous_targets(out), args.sections) + targets
    summary = "## Targets\n\n" + ("\n".join(targets) if targets else "No target was measured.")
    sections.insert(0, summary)
    sections.insert(0, machine_section(load))
    report.write(out, command, sections, extra, partial=partial)
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)
    return 0


def kept_targets(previous: list[str], refreshed: list[str]) -> list[str]:
    """Return the lines of `previous` that belong to sections not in `refreshed`."""
    remaining = []
    for line in previous:
        owners = [name for name, prefix in TARGET_PREFIXES.items() if line.startswith(prefix)]
        if owners and owners[0] not in refreshed:
            remaining.append(line)
    return remaining


def _dg_target(results: list) -> str:
    method, ratio = optimisers.dg_ratio(results)
    verdict = "met" if ratio <= 1 else "NOT met"
    return (
        f"- fastest discrete gradient ({method}) time to target / L-BFGS-B: **{ratio:.2g}** "
        f"(target <= 1): {verdict}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
