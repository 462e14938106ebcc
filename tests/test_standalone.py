"""Standalone packages from `dgcodegen generate`: they run with only NumPy and Numba.

The solver runs in a virtual environment whose site-packages contains links to NumPy, Numba
and llvmlite (Numba's own dependency) and nothing else, so an import of SymPy or dgcodegen
inside the package would fail the test. Dense-loss, network and reverse-mode packages are
each checked against `dgcodegen solve` on the same spec and data.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, GENERATED

from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.emit import render
from dgcodegen.layout import Layout
from dgcodegen.lower import lower
from dgcodegen.runtime import MATRIX_FREE_RUNTIME_MODULES, generate, render_files

STANDALONE_DISTRIBUTIONS = ("numpy", "numba", "llvmlite")


def _site_packages(python: Path) -> Path:
    command = [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    return Path(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


def _is_distribution_entry(entry: Path) -> bool:
    """Return whether a site-packages entry belongs to NumPy, Numba or llvmlite."""
    for name in STANDALONE_DISTRIBUTIONS:
        if entry.name == name or entry.name.startswith((f"{name}-", f"{name}.")):
            return True
    return False


@pytest.fixture(scope="module")
def numpy_numba_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a fresh virtual environment that can import only NumPy and Numba."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    target = _site_packages(python)
    source = Path(importlib.util.find_spec("numpy").submodule_search_locations[0]).parent
    for entry in sorted(source.iterdir()):
        if _is_distribution_entry(entry):
            (target / entry.name).symlink_to(entry)
    return python


def _run(python: Path, arguments: list[str], cwd: Path, **environment: str):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    env.update(environment)
    return subprocess.run(
        [str(python), *arguments],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _write_breast_cancer_csv(path: Path) -> np.ndarray:
    """Write the logistic regression example's data as CSV and return it as one table."""
    data = load_spec(EXAMPLES / "logistic_regression.py").default_data
    table = np.column_stack([data["x"], data["y"]])
    header = [f"x[{j}]" for j in range(data["x"].shape[1])] + ["y"]
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows([repr(float(v)) for v in row] for row in table)
    return table


def test_environment_lacks_sympy(numpy_numba_python: Path, tmp_path: Path) -> None:
    for module in ("sympy", "dgcodegen", "jinja2", "scipy"):
        result = _run(numpy_numba_python, ["-c", f"import {module}"], tmp_path)
        assert result.returncode != 0, f"{module} is importable in the NumPy-and-Numba venv"
    result = _run(numpy_numba_python, ["-c", "import numba, numpy"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_standalone_matches_dgcodegen_solve(
    numpy_numba_python: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packages = tmp_path / "packages"
    package = packages / "breast_cancer_solver"
    arguments = ["-q", "generate", str(EXAMPLES / "logistic_regression.py"), "--out", str(package)]
    assert main(arguments) == 0
    table = _write_breast_cancer_csv(tmp_path / "data.csv")
    np.save(tmp_path / "data.npy", table)
    options = ["--step", "0.1", "--tol", "1e-10", "--max-steps", "400"]

    reference_json = tmp_path / "reference.json"
    solve = ["-q", "solve", str(EXAMPLES / "logistic_regression.py"), "--data"]
    solve += [str(tmp_path / "data.csv"), "--out", str(GENERATED / "logistic_regression")]
    assert main([*solve, *options, "--json", str(reference_json)]) == 0
    capsys.readouterr()
    reference = json.loads(reference_json.read_text())

    for data_file in ("data.csv", "data.npy"):
        out = tmp_path / f"standalone-{data_file}.json"
        command = ["-m", "breast_cancer_solver", "-q", "--data", str(tmp_path / data_file)]
        result = _run(numpy_numba_python, [*command, *options, "--json", str(out)], packages)
        assert result.returncode == 0, result.stderr
        document = json.loads(out.read_text())
        assert document["converged"] is True
        relative = abs(document["loss"] - reference["loss"]) / abs(reference["loss"])
        assert relative <= 1e-12, f"{data_file}: loss differs by {relative:.3e} relative"
        assert document["steps"] == reference["steps"]
        assert document == reference, f"{data_file}: the JSON documents differ"


def test_standalone_gonzalez_without_scipy(
    numpy_numba_python: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Gonzalez kernels once called np.dot, which Numba compiles only with SciPy.
    packages = tmp_path / "packages"
    arguments = ["-q", "generate", str(EXAMPLES / "rosenbrock.py"), "--out"]
    assert main([*arguments, str(packages / "rosenbrock_gonzalez")]) == 0
    options = ["--method", "gonzalez", "--step", "0.01", "--max-steps", "2"]
    reference_json = tmp_path / "reference.json"
    solve = ["-q", "solve", str(EXAMPLES / "rosenbrock.py"), "--out", str(GENERATED / "rosenbrock")]
    assert main([*solve, *options, "--json", str(reference_json)]) == 3
    capsys.readouterr()

    out = tmp_path / "standalone.json"
    command = ["-m", "rosenbrock_gonzalez", "-q", *options, "--json", str(out)]
    result = _run(numpy_numba_python, command, packages)
    assert result.returncode == 3, result.stderr
    assert json.loads(out.read_text()) == json.loads(reference_json.read_text())


def test_standalone_rejects_bad_input(numpy_numba_python: Path, tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    shutil.copytree(GENERATED / "logistic_regression", packages / "solver")
    python = numpy_numba_python

    missing = _run(python, ["-m", "solver", "--step", "1"], packages)
    assert missing.returncode == 2
    assert "--data" in missing.stderr

    short = tmp_path / "short.npy"
    np.save(short, np.ones((5, 3)))
    result = _run(python, ["-m", "solver", "--data", str(short), "--step", "1"], packages)
    assert result.returncode == 1
    assert "expected (n_samples, 31)" in result.stderr
    assert "Traceback" not in result.stderr

    broken = tmp_path / "nan.csv"
    broken.write_text("y\nnan\n", encoding="utf-8")
    result = _run(python, ["-m", "solver", "--data", str(broken), "--step", "1"], packages)
    assert result.returncode == 1
    assert "no field 'x[0]' for the column 'x'" in result.stderr

    result = _run(python, ["-m", "solver", "--data", str(short), "--step", "-1"], packages)
    assert result.returncode == 2
    assert "expected a finite number > 0" in result.stderr


def test_read_only_install_runs_without_cache(numpy_numba_python: Path, tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    package = packages / "rosenbrock_solver"
    shutil.copytree(GENERATED / "rosenbrock", package, ignore=shutil.ignore_patterns("__pycache__"))
    # A regular file where Numba's folders would go makes every cache location unusable,
    # even for root, which chmod does not stop.
    (package / "__pycache__").write_text("not a folder\n", encoding="utf-8")
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder\n", encoding="utf-8")
    home = str(blocked / "home")
    result = _run(
        numpy_numba_python,
        ["-W", "always", "-m", "rosenbrock_solver", "-q", "--step", "10", "--tol", "1e-10"],
        packages,
        HOME=home,
        XDG_CACHE_HOME=str(blocked / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("compile on every run") == 1, result.stderr
    assert "converged: True" in result.stdout


def test_concurrent_generation_is_consistent(tmp_path: Path) -> None:
    out = tmp_path / "rosenbrock"
    command = [sys.executable, "-m", "dgcodegen", "-q", "generate"]
    command += [str(EXAMPLES / "rosenbrock.py"), "--out", str(out)]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    problem = load_spec(EXAMPLES / "rosenbrock.py")
    fresh = render(lower(problem), problem.fingerprint(), problem.layout)
    assert sorted(path.name for path in out.iterdir()) == sorted(fresh)
    for name, text in fresh.items():
        assert (out / name).read_text(encoding="utf-8") == text, name


def test_runtime_copies_match_sources() -> None:
    problem = load_spec(EXAMPLES / "rosenbrock.py")
    files = render(lower(problem), problem.fingerprint(), problem.layout)
    source = Path(__file__).resolve().parent.parent / "dgcodegen" / "stepper.py"
    copy = files["stepper.py"]
    assert copy.endswith(source.read_text(encoding="utf-8"))
    assert copy.splitlines()[1].startswith("# dgcodegen ")
    assert "copied from dgcodegen/stepper.py" in copy.splitlines()[1]


def test_cache_shared_with_standalone_run(numpy_numba_python: Path, tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    shutil.copytree(
        GENERATED / "rosenbrock",
        packages / "shared_cache",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    result = _run(numpy_numba_python, ["-m", "shared_cache", "-q", "--step", "10"], packages)
    assert result.returncode == 0, result.stderr
    # Numba's cache written by the standalone run must load under dgcodegen's import too.
    script = (
        "import numpy as np; from dgcodegen.runtime import load_kernels; "
        f"kernels = load_kernels({str(packages / 'shared_cache')!r}); "
        "print(kernels.__name__, kernels.loss(np.array([1.0, 2.0])))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["shared_cache.kernels", "100.0"]


def test_load_rejects_second_package_of_same_name(tmp_path: Path) -> None:
    from dgcodegen.errors import SpecError
    from dgcodegen.runtime import load_kernels

    first = tmp_path / "a" / "same_name"
    second = tmp_path / "b" / "same_name"
    for folder in (first, second):
        shutil.copytree(
            GENERATED / "rosenbrock", folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    load_kernels(first)
    with pytest.raises(SpecError, match="a module named 'same_name' from .* is already imported"):
        load_kernels(second)


NETWORK_SPEC = """
import numpy as np
import dgcodegen as dg

generator = np.random.default_rng(3)
x = generator.normal(size=(120, 4))
label = (x[:, 0] + x[:, 1] ** 2 > 1.0).astype(float) + (x[:, 2] > 0.5)
problem = dg.Network(
    [dg.Dense(4, 5, "tanh"), dg.Dense(5, 3)],
    weight_decay=0.01,
    data={"x": x, "label": label},
)
"""
"""A 4-5-3 tanh classifier of 43 parameters: small enough to compile in seconds."""

REVERSE_SPEC = """
import numpy as np
import dgcodegen as dg

w = dg.parameter("w", 3)
x = dg.data("x", 3)
y = dg.data("y")
generator = np.random.default_rng(0)
features = generator.normal(size=(40, 3))
labels = np.where(features @ [1.0, -2.0, 0.5] > 0, 1.0, -1.0)
problem = dg.Loss(
    per_sample=dg.softplus(-y * w.dot(x)),
    regularizer=w.dot(w) / 2,
    data={"x": features, "y": labels},
)
"""
"""A logistic loss of 3 parameters, which the tests give reverse-mode kernels."""


def _numba_cache_environment() -> dict[str, str]:
    """Pass this process's NUMBA_CACHE_DIR on, so a package run reuses the kernels compiled here.

    Without it, both processes cache next to `kernels.py`, and share those entries as well.
    """
    configured = os.environ.get("NUMBA_CACHE_DIR")
    return {"NUMBA_CACHE_DIR": configured} if configured else {}


def _write_columns_csv(path: Path, layout: Layout, arrays: dict[str, np.ndarray]) -> None:
    """Write data columns as CSV with the layout's field names, floats written exactly."""
    columns = [np.asarray(arrays[name]) for name, _ in layout.columns]
    table = np.column_stack([column.reshape(len(column), -1) for column in columns])
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(layout.field_names())
        writer.writerows([repr(float(v)) for v in row] for row in table)


@pytest.fixture(scope="module")
def matrix_free_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a network and a reverse-mode package, their specs and data files.

    `packages/standalone_network` is the package of `spec/standalone_network.py`, with its
    data in `network.csv` and `network.npz`. `packages/standalone_reverse` is the reverse-mode
    package of `spec/standalone_reverse.py`, with its data in `reverse.csv` and `reverse.npz`.
    """
    root = tmp_path_factory.mktemp("matrix_free")
    specs = root / "spec"
    packages = root / "packages"
    specs.mkdir()
    for name, text in (("standalone_network", NETWORK_SPEC), ("standalone_reverse", REVERSE_SPEC)):
        (specs / f"{name}.py").write_text(text, encoding="utf-8")
    network = load_spec(specs / "standalone_network.py")
    arguments = ["-q", "generate", str(specs / "standalone_network.py")]
    assert main([*arguments, "--out", str(packages / "standalone_network")]) == 0
    loss = load_spec(specs / "standalone_reverse.py")
    # `generate` picks reverse-mode kernels above 400 parameters only, so force them here.
    generate(loss, packages / "standalone_reverse", reverse=True)
    for label, problem in (("network", network), ("reverse", loss)):
        _write_columns_csv(root / f"{label}.csv", problem.layout, problem.default_data)
        np.savez(root / f"{label}.npz", **problem.default_data)
    return root


MATRIX_FREE_RUNS = [
    ("network", "mean-value.csv", ["--method", "mean-value", "--step", "10"]),
    (
        "network",
        "gonzalez.npz",
        ["--method", "gonzalez", "--linear-solver", "krylov", "--preconditioner", "jacobi"]
        + ["--schedule", "cycle", "--step", "0.1", "--growth", "10", "--max-step", "100"],
    ),
    ("network", "itoh-abe.csv", ["--method", "itoh-abe", "--step", "10"]),
    ("reverse", "gonzalez.csv", ["--method", "gonzalez", "--step", "10", "--newton-rtol", "0.1"]),
    ("reverse", "mean-value.npz", ["--method", "mean-value", "--linear-solver", "krylov"]),
    ("reverse", "itoh-abe.npz", ["--method", "itoh-abe", "--step", "10"]),
]
"""(package, method and data file, options) of the runs compared with `dgcodegen solve`."""


@pytest.mark.parametrize(("kind", "case", "options"), MATRIX_FREE_RUNS)
def test_matrix_free_package_matches_solve(
    numpy_numba_python: Path,
    matrix_free_packages: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    case: str,
    options: list[str],
) -> None:
    root = matrix_free_packages
    name = f"standalone_{kind}"
    data = root / f"{kind}.{case.rsplit('.', 1)[1]}"
    options = [*options, "--max-steps", "5"]

    reference_json = root / f"reference-{kind}-{case}.json"
    solve = ["-q", "solve", str(root / "spec" / f"{name}.py"), "--data", str(data)]
    solve += ["--out", str(root / "packages" / name)]
    if kind == "reverse":
        solve += ["--kernels", "reverse"]
    assert main([*solve, *options, "--json", str(reference_json)]) == 3
    reference_output = capsys.readouterr().out
    reference = json.loads(reference_json.read_text())

    out = root / f"package-{kind}-{case}.json"
    command = ["-m", name, "-q", "--data", str(data), *options, "--json", str(out)]
    result = _run(numpy_numba_python, command, root / "packages", **_numba_cache_environment())
    assert result.returncode == 3, result.stderr
    assert result.stderr == ""
    document = json.loads(out.read_text())
    assert document["steps"] == reference["steps"] == 5
    assert document["loss"] == reference["loss"]
    assert document == reference, f"{kind} {case}: the JSON documents differ"
    assert result.stdout.replace(str(out), "RUN") == reference_output.replace(
        str(reference_json), "RUN"
    )
    if kind == "network":
        assert 0.0 <= document["training_accuracy"] <= 1.0
    else:
        assert document["kernels"] == "reverse"


def test_network_package_rejects_bad_input(
    numpy_numba_python: Path, matrix_free_packages: Path
) -> None:
    root = matrix_free_packages
    python = numpy_numba_python
    packages = root / "packages"

    def run(*arguments: str) -> subprocess.CompletedProcess:
        command = ["-m", "standalone_network", "-q", *arguments]
        return _run(python, command, packages, **_numba_cache_environment())

    missing = run("--step", "1")
    assert missing.returncode == 2
    assert "the following arguments are required: --data" in missing.stderr

    symmetric = run("--data", str(root / "network.npz"), "--method", "itoh-abe-symmetric")
    assert symmetric.returncode == 2
    assert "invalid choice: 'itoh-abe-symmetric'" in symmetric.stderr

    arrays = dict(np.load(root / "network.npz"))
    for label in (3.0, 0.5, -1.0):
        arrays["label"][7] = label
        bad = root / "bad-label.npz"
        np.savez(bad, **arrays)
        result = run("--data", str(bad))
        assert result.returncode == 1
        assert f"label {label!r} in sample 7 (counting from 0) is not a class" in result.stderr
        assert "labels must be integers from 0 to 2" in result.stderr
        assert "Traceback" not in result.stderr

    wrong_layout = run("--data", str(root / "reverse.csv"))
    assert wrong_layout.returncode == 1
    assert "has no field 'x[3]' for the column 'x'" in wrong_layout.stderr
    assert "Traceback" not in wrong_layout.stderr

    rtol = run("--data", str(root / "network.npz"), "--method", "itoh-abe", "--newton-rtol", "0.5")
    assert rtol.returncode == 1
    assert "remove --newton-rtol" in rtol.stderr


def test_matrix_free_copies_match_sources(tmp_path: Path) -> None:
    spec = tmp_path / "copied_network.py"
    spec.write_text(NETWORK_SPEC, encoding="utf-8")
    files = render_files(load_spec(spec))
    sources = Path(__file__).resolve().parent.parent / "dgcodegen"
    assert "__main__.py" in files
    assert "template matrix_free_main.py.jinja" in files["__main__.py"].splitlines()[1]
    for module in MATRIX_FREE_RUNTIME_MODULES:
        copy = files[f"{module}.py"]
        assert copy.endswith((sources / f"{module}.py").read_text(encoding="utf-8")), module
        assert f"copied from dgcodegen/{module}.py" in copy.splitlines()[1], module
