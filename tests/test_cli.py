"""Tests of the command line, run in-process through `dgcodegen.cli.main`.

Solves write kernels to the cache folder (`$DGCODEGEN_CACHE`, which conftest.py points at
a fresh temporary folder), where Numba also caches the compiled code. Compiling the
logistic regression kernels took 15 to 30 s on a 2-core machine, so every logistic solve
here shares one kernel folder. That works because the generated code depends on the spec
and never on the --data file.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.emit import GENERATED_LINE
from dgcodegen.stepper import LOSS_INCREASE_SLACK

REPO = Path(__file__).resolve().parent.parent
ROSENBROCK = REPO / "examples" / "rosenbrock.py"
LOGISTIC = REPO / "examples" / "logistic_regression.py"
LOGISTIC_ROWS = 100

# Least squares with a 2-vector column `u` and a scalar column `v`, and no default data.
# Its kernels are generated but never compiled, because every case here fails earlier.
REGRESSION_SPEC = """\
import dgcodegen as dg

w = dg.parameter("w", 2)
u = dg.data("u", 2)
v = dg.data("v")

problem = dg.Loss(per_sample=(w.dot(u) - v) ** 2, regularizer=w.dot(w) / 2)
"""


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run the command line with `args` and return the exit code, stdout and stderr."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_usage_error(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[object, str]:
    """Run a command line that argparse rejects and return the exit code and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    return exit_info.value.code, capsys.readouterr().err


def _write_csv(path: Path, header: list[str], rows: np.ndarray) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for row in rows:
            writer.writerow([repr(float(value)) for value in row])
    return path


def _logistic_objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    return float(np.sum(np.logaddexp(0.0, -y * (x @ w + b))) + w @ w / 2)


# Rosenbrock


@pytest.fixture(scope="module")
def rosenbrock_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    """Solve Rosenbrock with the mean-value method and return the exit code and JSON."""
    out = tmp_path_factory.mktemp("rosenbrock") / "out.json"
    arguments = ["solve", ROSENBROCK, "--step", "10", "--max-steps", "5000", "--tol", "1e-13"]
    code = main([str(argument) for argument in arguments] + ["--json", str(out)])
    return code, json.loads(out.read_text(encoding="utf-8"))


def test_solve_rosenbrock_exit_zero(rosenbrock_run: tuple[int, dict]) -> None:
    code, _ = rosenbrock_run
    assert code == 0


def test_solve_rosenbrock_json_keys(rosenbrock_run: tuple[int, dict]) -> None:
    _, document = rosenbrock_run
    for key in ("method", "step", "parameters", "loss", "converged", "history"):
        assert key in document, key
    assert document["method"] == "mean-value"
    assert document["step"] == 10.0
    assert document["converged"] is True


def test_solve_rosenbrock_initial_loss(rosenbrock_run: tuple[int, dict]) -> None:
    # The spec starts at (-1.2, 1), where 100 (1 - 1.44)^2 + 2.2^2 = 24.2.
    _, document = rosenbrock_run
    assert document["initial_loss"] == pytest.approx(24.2, rel=1e-14)
    assert document["history"]["loss"][0] < document["initial_loss"]


def test_solve_rosenbrock_reaches_minimum(rosenbrock_run: tuple[int, dict]) -> None:
    _, document = rosenbrock_run
    x = document["parameters"]["x"]
    assert len(x) == 2
    assert abs(x[0] - 1.0) <= 1e-10
    assert abs(x[1] - 1.0) <= 1e-10
    assert document["loss"] <= 1e-20


def test_solve_rosenbrock_history_lengths(rosenbrock_run: tuple[int, dict]) -> None:
    _, document = rosenbrock_run
    history = document["history"]
    length = len(history["loss"])
    assert length == document["steps"]
    assert length > 0
    assert len(history["newton_iterations"]) == length
    assert len(history["residual"]) == length


def test_solve_rosenbrock_loss_nonincreasing(rosenbrock_run: tuple[int, dict]) -> None:
    # The stepper accepts a rise of LOSS_INCREASE_SLACK * max(1, |V|), because near the
    # minimum the loss kernel's rounding error exceeds the exact decrease |y - x|^2 / tau.
    _, document = rosenbrock_run
    losses = document["history"]["loss"]
    for step, (before, after) in enumerate(zip(losses, losses[1:]), start=1):
        allowed = before + LOSS_INCREASE_SLACK * max(1.0, abs(before))
        assert after <= allowed, f"loss rose from {before!r} to {after!r} at step {step}"
    assert losses[-1] < losses[0]


def test_solve_rosenbrock_gonzalez(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "gonzalez.json"
    code, stdout, _ = _run(
        capsys, "solve", ROSENBROCK, "--method", "gonzalez", "--step", "10",
        "--max-steps", "5000", "--tol", "1e-13", "--json", out,
    )  # fmt: skip
    document = json.loads(out.read_text(encoding="utf-8"))
    x = document["parameters"]["x"]
    assert code == 0
    assert document["method"] == "gonzalez"
    assert abs(x[0] - 1.0) <= 1e-10
    assert abs(x[1] - 1.0) <= 1e-10
    assert "rosenbrock:" in stdout


# generate


def test_generate_writes_package(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, stdout, _ = _run(capsys, "generate", ROSENBROCK, "--out", tmp_path)
    assert code == 0
    assert str(tmp_path) in stdout
    for name in ("kernels.py", "__init__.py"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        ast.parse(text, filename=name)
        assert text.startswith("# Generated by dgcodegen; do not edit"), name
        assert text.splitlines()[0] == f"# {GENERATED_LINE}", name


def test_generate_twice_identical(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(capsys, "generate", ROSENBROCK, "--out", first)[0] == 0
    assert _run(capsys, "generate", ROSENBROCK, "--out", second)[0] == 0
    for name in ("kernels.py", "__init__.py"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_generate_default_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, _ = _run(capsys, "generate", ROSENBROCK)
    assert code == 0
    assert (tmp_path / "generated" / "rosenbrock" / "kernels.py").is_file()


def test_generate_respects_umask(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        code, _, _ = _run(capsys, "generate", ROSENBROCK, "--out", tmp_path)
    finally:
        os.umask(previous)
    assert code == 0
    assert (tmp_path / "kernels.py").stat().st_mode & 0o777 == 0o644


def test_generate_abs_loss(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "absolute.py"
    spec.write_text(
        "import sympy as sp\nimport dgcodegen as dg\n\n"
        "q = dg.parameter('q', 2)\n"
        "problem = dg.Loss(objective=sp.Abs(q[0] - 1) + (q[1] - 2) ** 2)\n",
        encoding="utf-8",
    )
    code, _, stderr = _run(capsys, "generate", spec, "--out", tmp_path / "out")
    assert code == 0, stderr


# Logistic regression with data from a file


@pytest.fixture(scope="module")
def logistic_subset() -> dict[str, np.ndarray]:
    data = load_spec(LOGISTIC).default_data
    assert data is not None
    return {"x": data["x"][:LOGISTIC_ROWS], "y": data["y"][:LOGISTIC_ROWS, 0]}


@pytest.fixture(scope="module")
def logistic_runs(
    tmp_path_factory: pytest.TempPathFactory, logistic_subset: dict[str, np.ndarray]
) -> dict[str, tuple[int, dict]]:
    """Solve logistic regression on the subset from .npz and from .csv.

    Returns the exit code and JSON document by file suffix.
    """
    folder = tmp_path_factory.mktemp("logistic")
    npz = folder / "subset.npz"
    np.savez(npz, **logistic_subset)
    header = [f"x[{j}]" for j in range(30)] + ["y"]
    rows = np.column_stack([logistic_subset["x"], logistic_subset["y"]])
    csv_path = _write_csv(folder / "subset.csv", header, rows)

    # The Hessian at the minimum has eigenvalues from 0.89 to 28.8, so the best tau for
    # a quadratic, 2 / sqrt(lambda_min * lambda_max), is 0.39. With tau = 0.2 the run
    # converges in under 100 steps. With tau = 10 it does not converge in 1000 steps,
    # because the mean-value step multiplies the error along flat directions by almost -1.
    runs = {}
    for path in (npz, csv_path):
        out = folder / f"{path.suffix[1:]}.json"
        arguments = ["solve", LOGISTIC, "--data", path, "--step", "0.2", "--json", out]
        code = main([str(argument) for argument in arguments])
        runs[path.suffix] = (code, json.loads(out.read_text(encoding="utf-8")))
    return runs


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_logistic_data_converges(logistic_runs: dict[str, tuple[int, dict]], suffix: str) -> None:
    code, document = logistic_runs[suffix]
    assert code == 0
    assert document["converged"] is True
    assert len(document["parameters"]["w"]) == 30
    assert math.isfinite(document["loss"])


def test_logistic_csv_matches_npz(logistic_runs: dict[str, tuple[int, dict]]) -> None:
    npz_loss = logistic_runs[".npz"][1]["loss"]
    csv_loss = logistic_runs[".csv"][1]["loss"]
    assert math.isclose(csv_loss, npz_loss, rel_tol=1e-12)


def test_logistic_matches_scikit_learn(
    logistic_runs: dict[str, tuple[int, dict]], logistic_subset: dict[str, np.ndarray]
) -> None:
    # LogisticRegression(C=1) minimises the same objective, with the intercept unpenalised.
    x, y = logistic_subset["x"], logistic_subset["y"]
    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x, y)
    reference = _logistic_objective(x, y, model.coef_[0], model.intercept_[0])
    document = logistic_runs[".npz"][1]
    w = np.array(document["parameters"]["w"])
    b = document["parameters"]["b"]
    assert math.isclose(_logistic_objective(x, y, w, b), document["loss"], rel_tol=1e-12)
    assert document["loss"] <= reference * (1 + 1e-10)
    assert np.max(np.abs(w - model.coef_[0])) <= 1e-5
    assert abs(b - model.intercept_[0]) <= 1e-5


# Input errors: exit code 1 and a message on stderr


@pytest.fixture(scope="module")
def regression_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = tmp_path_factory.mktemp("regression") / "cli_regression.py"
    spec.write_text(REGRESSION_SPEC, encoding="utf-8")
    return spec


def _regression_rows(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3))


def test_missing_spec_exits_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "absent.py"
    code, _, stderr = _run(capsys, "solve", missing)
    assert code == 1
    assert "spec file not found" in stderr
    assert str(missing) in stderr


def test_generate_missing_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, stderr = _run(capsys, "generate", tmp_path / "absent.py", "--out", tmp_path)
    assert code == 1
    assert "spec file not found" in stderr


def test_missing_data_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    missing = tmp_path / "absent.npz"
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", missing)
    assert code == 1
    assert "data file not found" in stderr
    assert str(missing) in stderr


def test_unsupported_data_suffix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "data.txt"
    path.write_text("u[0],u[1],v\n1,2,3\n", encoding="utf-8")
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "use .npz, .npy or .csv" in stderr


def test_data_wrong_column_shape(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "wide.npz"
    np.savez(path, u=np.ones((5, 3)), v=np.ones(5))
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "data for 'u' has shape (5, 3)" in stderr
    assert "expected (n_samples, 2)" in stderr


def test_csv_missing_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = _write_csv(tmp_path / "short.csv", ["u[0]", "v"], _regression_rows()[:, :2])
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "no field 'u[1]' for the column 'u'" in stderr


def test_csv_non_numeric_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "text.csv"
    path.write_text("u[0],u[1],v\n1,2,3\n4,five,6\n", encoding="utf-8")
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "text.csv, line 3" in stderr
    assert "five" in stderr


def test_csv_short_row_names_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "short_row.csv"
    path.write_text("u[0],u[1],v\n1,2,3\n4,5\n", encoding="utf-8")
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "line 3: 2 fields, but the header has 3" in stderr


def test_csv_with_byte_order_mark(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "bom.csv"
    text = "u[0],u[1],v\n" + "".join(f"{i},{i % 3},{2 * i}\n" for i in range(8))
    path.write_text("\ufeff" + text, encoding="utf-8")
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path, "--max-steps", "2")
    assert "no field" not in stderr
    assert code in (0, 3)


def test_corrupt_npz_rejected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"not a zip archive")
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "cannot read" in stderr
    assert "numpy.savez" in stderr


def test_json_path_folder_rejected_early(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, stderr = _run(capsys, "solve", ROSENBROCK, "--json", tmp_path)
    assert code == 1
    assert "is a folder" in stderr


def test_generate_out_file_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x", encoding="utf-8")
    code, _, stderr = _run(capsys, "generate", ROSENBROCK, "--out", target)
    assert code == 1
    assert "is a file" in stderr


def test_quiet_flag_after_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, stderr = _run(capsys, "generate", ROSENBROCK, "--out", tmp_path / "k", "-q")
    assert code == 0
    assert "INFO" not in stderr


def test_csv_nan_names_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    rows = _regression_rows()
    rows[3, 2] = np.nan
    path = _write_csv(tmp_path / "nan.csv", ["u[0]", "u[1]", "v"], rows)
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "data for 'v' contains nan or inf" in stderr
    assert "first at row 3" in stderr


def test_npz_nan_names_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    u = np.ones((5, 2))
    u[1, 0] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, u=u, v=np.ones(5))
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "data for 'u' contains nan or inf" in stderr
    assert "first at row 1" in stderr


def test_csv_header_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    path = tmp_path / "header_only.csv"
    path.write_text("u[0],u[1],v\n", encoding="utf-8")
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "no samples" in stderr


def test_solve_without_data(capsys: pytest.CaptureFixture[str], regression_spec: Path) -> None:
    code, _, stderr = _run(capsys, "solve", regression_spec)
    assert code == 1
    assert stderr.startswith("dgcodegen: error: ")


def test_solve_without_data_hint(capsys: pytest.CaptureFixture[str], regression_spec: Path) -> None:
    code, _, stderr = _run(capsys, "solve", regression_spec)
    assert code == 1
    assert "--data" in stderr


# Usage errors: argparse exits with code 2 and names the option


@pytest.mark.parametrize("step", ["0", "-1", "inf", "nan", "ten"])
def test_invalid_step_rejected(capsys: pytest.CaptureFixture[str], step: str) -> None:
    code, stderr = _run_usage_error(capsys, "solve", ROSENBROCK, "--step", step)
    assert code == 2
    assert "argument --step" in stderr
    assert repr(step) in stderr


def test_invalid_max_steps_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = _run_usage_error(capsys, "solve", ROSENBROCK, "--max-steps", "0")
    assert code == 2
    assert "argument --max-steps" in stderr


@pytest.mark.parametrize("rtol", ["1", "1.5", "-0.1", "nan", "loose"])
def test_invalid_newton_rtol_rejected(capsys: pytest.CaptureFixture[str], rtol: str) -> None:
    code, stderr = _run_usage_error(capsys, "solve", ROSENBROCK, "--newton-rtol", rtol)
    assert code == 2
    assert "argument --newton-rtol" in stderr
    assert repr(rtol) in stderr


def test_loose_newton_rtol_keeps_decrease(tmp_path: Path) -> None:
    # Below 1, each step still lowers the loss by (1 - rtol) |y - x|^2 / tau or more.
    out = tmp_path / "loose.json"
    arguments = ["solve", ROSENBROCK, "--step", "10", "--max-steps", "40", "--newton-rtol"]
    main([str(argument) for argument in [*arguments, "0.5", "--json", out]])
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["newton_rtol"] == 0.5
    history = document["history"]
    losses = [_rosenbrock_start_loss(), *history["loss"]]
    for before, after, norm, residual in zip(
        losses, losses[1:], history["step_norm"], history["residual"]
    ):
        assert residual <= 0.5 * norm + 1e-12
        assert after - before <= -0.5 * norm**2 / 10 + 1e-12 * abs(before)


def _rosenbrock_start_loss() -> float:
    problem = load_spec(ROSENBROCK)
    x, y = problem.layout.initial_point()
    return float((1 - x) ** 2 + 100 * (y - x**2) ** 2)


def test_unknown_method_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = _run_usage_error(capsys, "solve", ROSENBROCK, "--method", "bogus")
    assert code == 2
    assert "argument --method: invalid choice: 'bogus'" in stderr


def test_missing_command_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = _run_usage_error(capsys)
    assert code == 2
    assert "command" in stderr


# python -m dgcodegen


def test_module_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "absent.py"
    completed = subprocess.run(
        [sys.executable, "-m", "dgcodegen", "solve", str(missing)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1
    assert "spec file not found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_generate_keeps_user_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "training.py").write_text("print('mine')\n", encoding="utf-8")
    spec = Path(__file__).resolve().parent.parent / "examples" / "rosenbrock.py"
    code, _, stderr = _run(capsys, "generate", spec, "--out", folder)
    assert code == 1
    assert "contains training.py, which dgcodegen did not generate" in stderr
    assert (folder / "training.py").read_text(encoding="utf-8") == "print('mine')\n"
    assert not (folder / "kernels.py").exists()


def test_generate_rejects_module_folder_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = Path(__file__).resolve().parent.parent / "examples" / "rosenbrock.py"
    code, _, stderr = _run(capsys, "generate", spec, "--out", tmp_path / "json")
    assert code == 1
    assert "is also the name of the module" in stderr
    assert not (tmp_path / "json").exists()


def test_csv_duplicate_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, regression_spec: Path
) -> None:
    rows = _regression_rows()
    path = _write_csv(
        tmp_path / "twice.csv", ["u[0]", "u[1]", "v", "v"], np.column_stack([rows, rows[:, 2]])
    )
    code, _, stderr = _run(capsys, "solve", regression_spec, "--data", path)
    assert code == 1
    assert "names the field 'v' twice, in columns 3 and 4" in stderr


def test_spec_calling_exit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "exits.py"
    spec.write_text("import sys\nsys.exit(0)\n", encoding="utf-8")
    code, _, stderr = _run(capsys, "solve", spec)
    assert code == 1
    assert "called sys.exit(0) while loading" in stderr


@pytest.mark.skipif(not Path("/proc/version").exists(), reason="needs Linux /proc")
def test_unwritable_json_rejected_before_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = Path(__file__).resolve().parent.parent / "examples" / "rosenbrock.py"
    code, stdout, stderr = _run(capsys, "solve", spec, "--json", "/proc/dgcodegen-run.json")
    assert code == 1
    assert "cannot write the output /proc/dgcodegen-run.json" in stderr
    assert "loss" not in stdout


def test_verify_rejects_negative_seed(capsys: pytest.CaptureFixture[str]) -> None:
    spec = Path(__file__).resolve().parent.parent / "examples" / "rosenbrock.py"
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(spec), "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec_name", "arguments", "message"),
    [
        ("pendulum", ["--steps", "10", "--tol", "1e-6"], "--tol does not apply to a dg.System"),
        ("pendulum", ["--steps", "10", "--max-steps", "5"], "--max-steps does not apply"),
        (
            "rosenbrock",
            ["--linear-solver", "krylov"],
            "--linear-solver does not apply to a dg.Loss",
        ),
        ("rosenbrock", ["--preconditioner", "jacobi"], "--preconditioner does not apply"),
    ],
)
def test_solve_rejects_inapplicable_option(
    capsys: pytest.CaptureFixture[str], spec_name: str, arguments: list[str], message: str
) -> None:
    spec = Path(__file__).resolve().parent.parent / "examples" / f"{spec_name}.py"
    code, stdout, stderr = _run(capsys, "solve", spec, *arguments)
    assert code == 1
    assert message in stderr
    assert stdout == ""


def test_closed_stdout_keeps_json_and_exit_code(tmp_path: Path) -> None:
    # A reader that quits early, as `| head` does, must not cost the JSON file or turn a
    # run that did not converge into exit code 0.
    out = tmp_path / "run.json"
    command = [sys.executable, "-m", "dgcodegen", "solve", str(ROSENBROCK), "--max-steps", "2"]
    process = subprocess.Popen(
        [*command, "--step", "0.001", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    process.stdout.close()
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 3, stderr.decode()
    assert json.loads(out.read_text(encoding="utf-8"))["steps"] == 2
    assert b"Traceback" not in stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--growth", "3"], "--growth 3 only applies to --schedule grow or cycle"),
        (["--max-step", "0.01"], "--max-step 0.01 only applies to --schedule grow or cycle"),
    ],
)
def test_solve_rejects_schedule_options_of_fixed(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code = main(["solve", str(ROSENBROCK), *options])
    assert code != 0
    assert message in capsys.readouterr().err
