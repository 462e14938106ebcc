"""Reverse-mode kernels: gradients and HVPs against SymPy and differences, size, routing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import EXAMPLES

import dgcodegen as dg
from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.matrix_free import MatrixFreeKernels
from dgcodegen.reverse import derive_reverse
from dgcodegen.runtime import compile_matrix_free, compile_network


def _function_loss(reduction: str) -> dg.Loss:
    """A loss that uses every function the DSL allows, long sums, products and powers."""
    a = dg.parameter("a", 2)
    c = dg.parameter("c")
    x = dg.data("x", 2)
    y = dg.data("y")

    z = a[0] * x[0] + a[1] * x[1] + c
    huber = sp.Piecewise((z**2 / 2, sp.Abs(z) < 1), (sp.Abs(z) - sp.Rational(1, 2), True))
    per_sample = (
        sp.exp(a[0] * x[0] / 2)
        + sp.log(1 + a[1] ** 2 + x[1] ** 2)
        + sp.sin(a[0]) * sp.cos(a[1] * x[1])
        + sp.tan(a[0] / 4)
        + sp.tanh(z) ** 2
        + sp.sinh(a[0] / 3) * sp.cosh(a[1] / 3)
        + sp.atan(a[0] * y)
        + sp.asinh(a[1] - y)
        + sp.erf(a[0] * x[1])
        + sp.Abs(a[0] - 0.3) * x[0]
        + dg.softplus(-y * z)
        + dg.sigmoid(a[1] * x[0])
        + sp.Max(a[0], a[1] * x[0], y / 3, evaluate=False)
        + sp.Min(a[0], c)
        + sp.sign(a[0]) * a[1]
        + sp.Heaviside(a[1]) * a[0] ** 2
        + huber
        + sp.sqrt(1 + a[0] ** 2)
        + (2 + a[1] ** 2) ** sp.Rational(-3, 2)
        + a[0] ** 3 * a[1] ** 2 * c * y
        + (1 + c**2) ** 1.5
        + (2 + x[0] ** 2) ** a[1]
        + sum((k + 1) * a[k % 2] * x[k % 2] ** k for k in range(12))
    )
    regularizer = (a[0] ** 2 + a[1] ** 2 + c**2) / 2 + a[0] * a[1] * c + c**4 / 12

    generator = np.random.default_rng(5)
    data = {"x": generator.normal(size=(300, 2)), "y": generator.choice([-1.0, 1.0], 300)}
    return dg.Loss(
        per_sample=per_sample,
        regularizer=regularizer,
        reduction=reduction,
        data=data,
        name=f"functions_{reduction}",
    )


def _reference(problem: dg.Loss, theta: np.ndarray, v: np.ndarray, rows: int):
    """Return the loss, gradient and HVP by `sympy.diff` of every entry, on the first rows."""
    parameters = problem.parameter_symbols
    point = {s: sp.Float(value, 30) for s, value in zip(parameters, theta)}
    gradient_exprs = [sp.diff(problem.sample_term, s) for s in parameters]
    hvp_exprs = [sum(sp.diff(g, s) * w for s, w in zip(parameters, v)) for g in gradient_exprs]
    value, gradient, hvp = 0.0, np.zeros(len(theta)), np.zeros(len(theta))
    for row in range(rows):
        sample = dict(point)
        for column in problem.columns:
            values = np.atleast_1d(problem.default_data[column.name][row])
            sample.update({s: sp.Float(w, 30) for s, w in zip(column.symbols, values)})
        value += float(problem.sample_term.xreplace(sample).evalf(30))
        gradient += [float(g.xreplace(sample).evalf(30)) for g in gradient_exprs]
        hvp += [float(h.xreplace(sample).evalf(30)) for h in hvp_exprs]
    if problem.reduction == "mean":
        value, gradient, hvp = value / rows, gradient / rows, hvp / rows
    free = problem.free_term
    value += float(free.xreplace(point).evalf(30))
    for k, s in enumerate(parameters):
        derivative = sp.diff(free, s)
        gradient[k] += float(derivative.xreplace(point).evalf(30))
        second = [float(sp.diff(derivative, t).xreplace(point)) for t in parameters]
        hvp[k] += float(np.dot(second, v))
    return value, gradient, hvp


@pytest.fixture(scope="module", params=["sum", "mean"])
def function_kernels(request, tmp_path_factory):
    problem = _function_loss(request.param)
    out = tmp_path_factory.mktemp(f"functions_{request.param}")
    return problem, compile_matrix_free(problem, out=out)


THETA = np.array([0.7, -0.4, 0.2])
DIRECTION = np.array([0.3, -1.1, 0.8])


def test_functions_match_sympy_diff(function_kernels) -> None:
    problem, kernels = function_kernels
    rows = 12
    data = {name: array[:rows] for name, array in problem.default_data.items()}
    small = MatrixFreeKernels(kernels.kernels, problem.layout, data)
    value, gradient, hvp = _reference(problem, THETA, DIRECTION, rows)
    assert small.loss(THETA) == pytest.approx(value, rel=1e-13)
    assert np.allclose(small.gradient(THETA), gradient, rtol=1e-12, atol=1e-12)
    assert np.allclose(small.hvp(THETA, DIRECTION), hvp, rtol=1e-11, atol=1e-11)


def test_functions_match_central_differences(function_kernels) -> None:
    _, kernels = function_kernels
    h = 1e-6
    gradient = kernels.gradient(THETA)
    for k in range(THETA.size):
        step = np.zeros(THETA.size)
        step[k] = h
        difference = (kernels.loss(THETA + step) - kernels.loss(THETA - step)) / (2 * h)
        assert difference == pytest.approx(gradient[k], rel=1e-6, abs=1e-6)
    product = kernels.hvp(THETA, DIRECTION)
    ahead = kernels.gradient(THETA + h * DIRECTION)
    behind = kernels.gradient(THETA - h * DIRECTION)
    assert np.allclose((ahead - behind) / (2 * h), product, rtol=1e-5, atol=1e-5)


def test_loss_gradient_returns_same_loss(function_kernels) -> None:
    _, kernels = function_kernels
    value, gradient = kernels.kernels.loss_gradient(THETA, *kernels.data)
    assert value == kernels.loss(THETA)
    assert np.array_equal(gradient, kernels.kernels.gradient(THETA, *kernels.data))


def _objective_loss() -> dg.Loss:
    """A data-free loss: a 30-variable Rosenbrock chain, a guarded log and a far softplus."""
    q = dg.parameter("q", 30)
    chain = sum(100 * (q[i + 1] - q[i] ** 2) ** 2 + (1 - q[i]) ** 2 for i in range(29))
    guarded = sp.Piecewise((sp.log(q[0]), q[0] > 0), (-q[0], True))
    return dg.Loss(objective=chain + guarded + dg.softplus(50 * q[1]), name="chain")


@pytest.fixture(scope="module")
def objective_kernels(tmp_path_factory):
    problem = _objective_loss()
    return problem, compile_matrix_free(problem, out=tmp_path_factory.mktemp("chain"))


def test_objective_hvp_matches_dense_hessian(objective_kernels) -> None:
    problem, kernels = objective_kernels
    generator = np.random.default_rng(2)
    theta = generator.uniform(0.5, 1.5, 30)
    v = generator.normal(size=30)
    symbols = problem.parameter_symbols
    hessian = sp.lambdify(symbols, sp.hessian(problem.free_term.rewrite(sp.log), symbols))
    expected = np.asarray(hessian(*theta), dtype=float) @ v
    assert np.allclose(kernels.hvp(theta, v), expected, rtol=1e-12, atol=1e-9)


def test_untaken_branch_keeps_gradient_finite(objective_kernels) -> None:
    _, kernels = objective_kernels
    theta = np.full(30, 0.5)
    theta[0] = -1.0
    theta[1] = 30.0  # softplus(1500) would overflow as log(1 + exp(z))
    value, gradient = kernels.loss_gradient(theta)
    assert np.isfinite(value)
    assert np.all(np.isfinite(gradient))
    assert np.all(np.isfinite(kernels.hvp(theta, np.ones(30))))
    step = np.zeros(30)
    step[0] = 1e-6
    difference = (kernels.loss(theta + step) - kernels.loss(theta - step)) / 2e-6
    assert difference == pytest.approx(gradient[0], rel=1e-6)


def _mlp_loss(hidden: int, inputs: int = 3, classes: int = 3) -> dg.Loss:
    W1 = dg.parameter("W1", (hidden, inputs))
    b1 = dg.parameter("b1", hidden)
    W2 = dg.parameter("W2", (classes, hidden))
    b2 = dg.parameter("b2", classes)
    x = dg.data("x", inputs)
    y = dg.data("y", classes)
    logits = W2 * (W1 * x + b1).applyfunc(sp.tanh) + b2
    largest = sp.Max(*logits, evaluate=False)
    log_sum_exp = largest + sp.log(sum(sp.exp(z - largest) for z in logits))
    per_sample = log_sum_exp - sum(y[k] * logits[k] for k in range(classes))
    penalty = sum(w**2 for w in [*W1, *b1, *W2, *b2]) / 2000
    return dg.Loss(per_sample=per_sample, regularizer=penalty, reduction="mean")


def test_program_size_grows_linearly() -> None:
    widths = [4, 8, 16, 32]
    counts, sizes = [], []
    for hidden in widths:
        problem = _mlp_loss(hidden)
        counts.append(derive_reverse(problem).sample.operations())
        sizes.append(len(problem.parameter_symbols))
    for label in ("loss", "gradient", "hvp"):
        per_parameter = [count[label] / size for count, size in zip(counts, sizes)]
        assert max(per_parameter[1:]) <= 1.1 * per_parameter[0], (label, per_parameter)
    for count in counts:
        assert count["gradient"] <= 3 * count["loss"]
        assert count["hvp"] <= 8 * count["loss"]


@pytest.fixture(scope="module")
def digits_pair():
    sympy_spec = load_spec(EXAMPLES / "mlp_sympy.py")
    network = load_spec(EXAMPLES / "mlp_digits.py")
    return sympy_spec, compile_matrix_free(sympy_spec), network, compile_network(network)


def test_example_matches_network_kernels(digits_pair) -> None:
    sympy_spec, kernels, network, network_kernels = digits_pair
    assert np.array_equal(sympy_spec.initial_point, network.initial_point)
    generator = np.random.default_rng(4)
    v = generator.normal(size=network.size)
    for scale in (0.0, 0.3):
        theta = network.initial_point + scale * generator.normal(size=network.size)
        expected_value, expected_gradient = network_kernels.loss_gradient(theta)
        value, gradient = kernels.loss_gradient(theta)
        assert value == pytest.approx(expected_value, rel=1e-12)
        assert np.linalg.norm(gradient - expected_gradient) <= 1e-12 * np.linalg.norm(
            expected_gradient
        )
        expected_hvp = network_kernels.hvp(theta, v)
        hvp = kernels.hvp(theta, v)
        assert np.linalg.norm(hvp - expected_hvp) <= 1e-12 * np.linalg.norm(expected_hvp)


def test_solve_example_with_newton_krylov(digits_pair, tmp_path, caplog, capsys) -> None:
    out = tmp_path / "run.json"
    arguments = ["solve", str(EXAMPLES / "mlp_sympy.py"), "--method", "gonzalez"]
    with caplog.at_level(logging.INFO, logger="dgcodegen"):
        code = main([*arguments, "--max-steps", "3", "--json", str(out)])
    assert code == 3
    assert "reverse-mode matrix-free kernels for 1210 parameters" in caplog.text
    assert "Newton-Krylov" in caplog.text
    document = json.loads(out.read_text())
    assert document["kernels"] == "reverse"
    assert document["linear_solver"] == "krylov"
    losses = [digits_pair[1].loss(digits_pair[0].initial_point), *document["history"]["loss"]]
    assert len(losses) == 4
    assert all(after < before for before, after in zip(losses, losses[1:])), losses


SMALL_SPEC = """
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


@pytest.mark.parametrize("method", ["mean-value", "gonzalez", "itoh-abe"])
def test_forced_reverse_kernels_lower_loss(tmp_path, caplog, method) -> None:
    spec = tmp_path / "small_logistic.py"
    spec.write_text(SMALL_SPEC)
    out = tmp_path / "run.json"
    arguments = ["solve", str(spec), "--kernels", "reverse", "--method", method, "--step", "10"]
    with caplog.at_level(logging.INFO, logger="dgcodegen"):
        code = main([*arguments, "--max-steps", "5", "--json", str(out)])
    assert code == 3
    assert "using reverse kernels for 3 parameters, as requested" in caplog.text
    document = json.loads(out.read_text())
    assert document["kernels"] == "reverse"
    losses = document["history"]["loss"]
    assert len(losses) == 5
    assert all(after < before for before, after in zip(losses, losses[1:])), losses


@pytest.mark.parametrize(
    ("extra", "solver", "rtol"),
    [
        (["--linear-solver", "krylov"], "krylov", 0.5),
        (["--linear-solver", "krylov", "--newton-rtol", "0.9"], "krylov", 0.9),
        (["--linear-solver", "dense"], "dense", 1e-10),
    ],
)
def test_reverse_json_records_tolerance_in_force(tmp_path, extra, solver, rtol) -> None:
    # The JSON must name the tolerance the solver used, and the decrease it certifies
    # must hold at every step.
    spec = tmp_path / "small_logistic.py"
    spec.write_text(SMALL_SPEC)
    out = tmp_path / "run.json"
    arguments = ["solve", str(spec), "--kernels", "reverse", "--method", "gonzalez"]
    main([*arguments, "--step", "10", "--max-steps", "4", *extra, "--json", str(out)])
    document = json.loads(out.read_text())
    assert (document["linear_solver"], document["newton_rtol"]) == (solver, rtol)
    history = document["history"]
    for norm, residual, tau, change in zip(
        history["step_norm"], history["residual"], history["step"], history["energy_residual"]
    ):
        assert residual <= rtol * norm + 1e-12
        # energy_residual = V(y) - V(x) + |d|^2 / tau, at most rtol |d|^2 / tau.
        assert change <= rtol * norm**2 / tau + 1e-12


def test_newton_rtol_rejected_for_coordinate_solves(tmp_path, capsys) -> None:
    spec = tmp_path / "small_logistic.py"
    spec.write_text(SMALL_SPEC)
    reverse = ["solve", str(spec), "--kernels", "reverse", "--method", "itoh-abe"]
    assert main([*reverse, "--newton-rtol", "0.5"]) == 1
    assert "remove --newton-rtol" in capsys.readouterr().err
    dense = ["solve", str(spec), "--method", "itoh-abe", "--solver", "coordinate"]
    assert main([*dense, "--newton-rtol", "0.5"]) == 1
    assert "remove --newton-rtol" in capsys.readouterr().err


def test_reverse_kernels_reject_symmetric_itoh_abe(tmp_path, capsys) -> None:
    spec = tmp_path / "small_logistic.py"
    spec.write_text(SMALL_SPEC)
    arguments = ["solve", str(spec), "--kernels", "reverse", "--method", "itoh-abe-symmetric"]
    assert main(arguments) == 1
    assert "--kernels dense" in capsys.readouterr().err


def test_kernels_option_rejected_for_network(capsys) -> None:
    arguments = ["solve", str(EXAMPLES / "mlp_digits.py"), "--kernels", "dense"]
    assert main(arguments) == 1
    assert "--kernels does not apply to a dg.Network" in capsys.readouterr().err


def test_generate_large_loss_writes_reverse_kernels(tmp_path, capsys) -> None:
    out = tmp_path / "mlp_sympy"
    assert main(["-q", "generate", str(EXAMPLES / "mlp_sympy.py"), "--out", str(out)]) == 0
    assert "reverse-mode kernels of the loss 'mlp_sympy'" in capsys.readouterr().out
    kernels = (out / "kernels.py").read_text()
    assert "template matrix_free.py.jinja" in kernels
    assert (out / "__main__.py").is_file()


def test_parallel_sums_repeat_exactly(function_kernels) -> None:
    _, kernels = function_kernels
    assert kernels.data[0].shape[0] > 256  # more than one chunk of samples
    first = kernels.kernels.hvp(THETA, DIRECTION, *kernels.data)
    for _ in range(3):
        assert np.array_equal(kernels.kernels.hvp(THETA, DIRECTION, *kernels.data), first)


RENDER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_reverse import _function_loss
from dgcodegen.reverse_emit import render_matrix_free
sys.stdout.write(render_matrix_free(_function_loss("sum"))["kernels.py"])
"""


def test_generated_source_ignores_hash_seed() -> None:
    script = RENDER_SCRIPT.format(tests=str(Path(__file__).parent))
    sources = []
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        completed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=environment
        )
        assert completed.returncode == 0, completed.stderr
        sources.append(completed.stdout)
    assert sources[0] == sources[1]


def test_render_cache_reuses_rendering(tmp_path, monkeypatch) -> None:
    # The second rendering of the same loss reads the cache instead of deriving again, and
    # gives the same files. A changed loss or a corrupt entry renders afresh.
    from dgcodegen import reverse_emit

    monkeypatch.setenv("DGCODEGEN_CACHE", str(tmp_path))
    problem = _function_loss("mean")
    derivations = []
    original = reverse_emit.derive_reverse

    def counting(loss: dg.Loss):
        derivations.append(loss.name)
        return original(loss)

    monkeypatch.setattr(reverse_emit, "derive_reverse", counting)
    first = reverse_emit.render_matrix_free(problem)
    second = reverse_emit.render_matrix_free(problem)
    assert second == first
    assert derivations == ["functions_mean"]
    entries = list((tmp_path / reverse_emit.RENDER_CACHE_FOLDER).iterdir())
    assert len(entries) == 1

    entries[0].write_text("{not json", encoding="utf-8")
    assert reverse_emit.render_matrix_free(problem) == first
    assert len(derivations) == 2

    assert reverse_emit.render_cache_key(_function_loss("sum")) != entries[0].stem

    monkeypatch.setattr(reverse_emit, "RENDER_CACHE_SIZE", 1)
    reverse_emit.render_matrix_free(_function_loss("sum"))
    remaining = list((tmp_path / reverse_emit.RENDER_CACHE_FOLDER).iterdir())
    assert [path.stem for path in remaining] == [
        reverse_emit.render_cache_key(_function_loss("sum"))
    ]


def test_render_cache_key_ignores_hash_seed() -> None:
    # The key must be equal in every process, whatever PYTHONHASHSEED randomises.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_reverse; "
        "from dgcodegen.reverse_emit import render_cache_key; "
        "print(render_cache_key(test_reverse._function_loss('mean')))"
    )
    keys = set()
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parent)],
            env=environment, capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        keys.add(result.stdout.strip().splitlines()[-1])
    assert len(keys) == 1
