"""The main job end to end: breast cancer logistic regression against scikit-learn."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from dgcodegen.demo import LOSS_TOLERANCE, PARAMETER_TOLERANCE, STEP_FACTOR, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[int, str, dict]:
    path = tmp_path_factory.mktemp("demo") / "demo.json"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exit_code = run_demo(path, show_progress=False)
    return exit_code, output.getvalue(), json.loads(path.read_text())


def test_demo_matches_scikit_learn(demo) -> None:
    exit_code, output, document = demo
    assert exit_code == 0, output
    assert "result matches scikit-learn" in output
    assert document["converged"] is True
    assert document["reference"]["relative_loss_difference"] <= LOSS_TOLERANCE
    assert document["reference"]["max_parameter_difference"] <= PARAMETER_TOLERANCE


def test_demo_step_far_above_bound(demo) -> None:
    _, _, document = demo
    assert document["step"] >= STEP_FACTOR * 2 / document["lipschitz"] * (1 - 1e-12)
    assert min(document["history"]["step"]) == document["step"]


def test_demo_loss_decreases_every_step(demo) -> None:
    _, _, document = demo
    losses = document["history"]["loss"]
    # Near the optimum the true decrease |y - x|^2 / tau falls below the rounding error of a
    # 569-term sum, so the recorded loss may rise by a few units in the last place.
    rounding = 1e-13 * abs(losses[-1])
    assert all(later <= earlier + rounding for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < losses[0]


def test_demo_gradient_descent_fails_at_step(demo) -> None:
    _, _, document = demo
    descent = document["gradient_descent"]["loss"]
    assert descent[1] > descent[0]
    assert descent[-1] > 2 * document["loss"]


def test_demo_output_has_progress_table(demo) -> None:
    _, output, document = demo
    assert "steps" in output
    assert "energy id." in output
    assert f"{document['steps']:>6}" in output
