"""Tests of the benchmark harness: a quick run end to end, and the step-size sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_report(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    out = tmp_path / "BENCHMARKS.md"
    command = [
        sys.executable, "-m", "benchmarks", "--quick", "--out", str(out),
        "--sections", "kernels", "optimisers", "sweep",
    ]  # fmt: skip

    completed = subprocess.run(
        command,
        check=False,
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "python -m benchmarks --quick" in text
    for heading in (
        "## Machine",
        "## Targets",
        "## Kernels",
        "## Optimisers",
        "## Step-size sweep",
    ):
        assert heading in text
    assert "hand-written Numba" in text
    assert "SciPy L-BFGS-B" in text
    assert "Numba" in text
    assert "BLAS" in text
    for plot in ("kernels.png", "optimisers-0.png", "sweep.png"):
        assert (tmp_path / "docs" / "benchmarks" / plot).stat().st_size > 0
        assert f"docs/benchmarks/{plot}" in text


def test_report_keeps_introduction_and_sections(tmp_path):
    from benchmarks import report

    out = tmp_path / "BENCHMARKS.md"
    kepler = "## Kepler problem: 1000 periods\n\nkept table"
    report.write(out, "python -m benchmarks", ["## Kernels\n\nfirst"], [kepler])
    text = out.read_text(encoding="utf-8")
    out.write_text(text.replace(report.DEFAULT_INTRO, "Edited introduction."), encoding="utf-8")

    report.write(out, "python -m benchmarks", ["## Kernels\n\nsecond"], [])
    rewritten = out.read_text(encoding="utf-8")

    assert "Edited introduction." in rewritten
    assert "kept table" in rewritten
    assert "second" in rewritten
    assert "first" not in rewritten
    assert rewritten.count("## Kepler problem") == 1


def test_report_replaces_section_by_heading(tmp_path):
    from benchmarks import report

    out = tmp_path / "BENCHMARKS.md"
    report.write(out, "cmd", [], ["## Kepler problem: 1000 periods\n\nold table"])

    report.write(out, "cmd", [], ["## Kepler problem: 1000 periods\n\nnew table"])
    text = out.read_text(encoding="utf-8")

    assert "new table" in text
    assert "old table" not in text


@pytest.mark.parametrize("factor", [0.1, 100.0, 1e6])
def test_sweep_loss_falls_every_step(logistic, factor):
    from benchmarks.sweep import lipschitz_bound, sweep_row

    lipschitz = lipschitz_bound(logistic)

    row = sweep_row(logistic, "mean-value", factor, lipschitz, steps=10)

    assert len(row.dg_losses) == 11
    assert np.all(np.diff(row.dg_losses) < 0)
    if factor < 1:
        assert row.gd_monotone
    else:
        assert not row.gd_monotone
        assert row.gd_losses[-1] > row.dg_losses[-1]


def test_sweep_gd_grows_at_huge_step(logistic):
    from benchmarks.sweep import lipschitz_bound, sweep_row

    row = sweep_row(logistic, "mean-value", 1e6, lipschitz_bound(logistic), steps=10)

    assert row.gd_losses[-1] > 1e6 * row.gd_losses[0]


def test_report_keeps_unmarked_introduction(tmp_path):
    from benchmarks import report

    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nOlder introduction.\n\n## Kepler problem\n\ntable\n")

    report.write(out, "cmd", ["## Kernels\n\nnew"], [])
    text = out.read_text(encoding="utf-8")

    assert "Older introduction." in text
    assert report.INTRO_START in text
    assert "## Kepler problem\n\ntable" in text


def test_checkpoints_use_adam_running_minimum():
    from benchmarks.networks import TrainingRow, checkpoints

    adam = TrainingRow("Adam", 4.0, 4, 0.5, 0.9, False, "", [0, 1, 2, 3, 4], [5, 3, 4, 1, 0.5])
    other = TrainingRow("DG", None, 2, 2.0, 0.9, True, "", [0, 1.5, 3.0], [5, 2.5, 2.0])
    points = checkpoints([adam, other])
    # At 2 of 4 steps Adam's lowest loss is 3 (step 1, reached at 1 s), not its loss 4.
    assert [point.steps for point in points] == [1, 2, 3, 4]
    assert [point.loss for point in points] == [3, 3, 1, 0.5]
    assert [point.adam_seconds for point in points] == [1, 1, 3, 4]
    assert [point.seconds for point in points] == [[1.5], [1.5], [None], [None]]


def test_partial_report_keeps_order_and_targets(tmp_path):
    from benchmarks import report
    from benchmarks.__main__ import kept_targets

    out = tmp_path / "BENCHMARKS.md"
    first = ["## Targets\n\n- generated loss and gradient: 1\n- fastest discrete gradient: 2"]
    report.write(out, "python -m benchmarks", [*first, "## Kernels\n\nold kernels"], [])
    report.write(out, "python -m benchmarks", [], ["## Neural networks\n\nold networks"])
    previous = report.previous_targets(out)
    targets = kept_targets(previous, ["networks"]) + ["- digits network: 3"]

    report.write(
        out,
        "python -m benchmarks --sections networks",
        ["## Targets\n\n" + "\n".join(targets)],
        ["## Neural networks\n\nnew networks"],
        partial=True,
    )
    text = out.read_text(encoding="utf-8")

    assert previous == ["- generated loss and gradient: 1", "- fastest discrete gradient: 2"]
    assert "- generated loss and gradient: 1" in text
    assert "- digits network: 3" in text
    assert "new networks" in text
    assert "old networks" not in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Targets", "## Kernels", "## Neural networks"]
    assert "Generated by `python -m benchmarks`;" in text
    assert "`python -m benchmarks --sections networks`" in text
