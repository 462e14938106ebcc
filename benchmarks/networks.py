"""Networks: code-generation scaling, and training the digits network against Adam.

`python -m benchmarks.networks [--quick]` prints two tables and writes a plot:

1. Generation and compilation time of dense tanh networks with about 10, 100, 1,000 and
   10,000 parameters, cold (an empty kernel cache, in a fresh process) and cached (a second
   fresh process with the same cache). Each row runs in its own process so Numba's
   in-memory state cannot help.
2. The 64-16-10 digits network of `examples/mlp_digits.py`: Adam at the best of several
   full-batch learning rates, then each discrete gradient method until it reaches Adam's
   final training loss, with wall time, the time ratio against Adam, and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SCALING_NETWORKS = {
    10: [(2, 2, "tanh"), (2, 2, "identity")],
    100: [(8, 8, "tanh"), (8, 3, "identity")],
    1000: [(64, 14, "tanh"), (14, 10, "identity")],
    10000: [(64, 128, "tanh"), (128, 10, "identity")],
}
"""Layers `(inputs, outputs, activation)` of the scaling rows, by nominal parameter count."""

ADAM_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

_SCALING_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import numpy as np
import dgcodegen as dg
from dgcodegen.runtime import compile_network
imported = time.perf_counter()
layers = [dg.Dense(i, o, a) for i, o, a in json.loads(sys.argv[1])]
generator = np.random.default_rng(0)
x = generator.normal(size=(512, layers[0].inputs))
label = generator.integers(0, layers[-1].outputs, size=512).astype(float)
network = dg.Network(layers, data={"x": x, "label": label}, name="scaling")
compile_network(network)
done = time.perf_counter()
print(json.dumps({"parameters": network.size, "build": done - imported, "total": done - started}))
"""


@dataclass
class ScalingRow:
    nominal: int
    parameters: int
    cold: float
    cached: float
    cold_total: float
    cached_total: float


def _build_once(layers: list, cache: str) -> dict:
    environment = {**os.environ, "DGCODEGEN_CACHE": cache, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _SCALING_SCRIPT, json.dumps(layers)]
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=True, timeout=1800
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def scaling(sizes: tuple[int, ...]) -> list[ScalingRow]:
    """Time generation and compilation per network size, cold and cached."""
    rows = []
    for nominal in sizes:
        layers = SCALING_NETWORKS[nominal]
        with tempfile.TemporaryDirectory(prefix="dgcodegen-scaling-") as cache:
            cold = _build_once(layers, cache)
            cached = _build_once(layers, cache)
        rows.append(
            ScalingRow(
                nominal,
                cold["parameters"],
                cold["build"],
                cached["build"],
                cold["total"],
                cached["total"],
            )
        )
    return rows


@dataclass
class TrainingRow:
    method: str
    seconds: float | None
    steps: int
    final_loss: float
    test_accuracy: float
    monotone: bool
    note: str
    trace_seconds: list[float]
    trace_loss: list[float]
    discrete_gradient: bool = True


def _accuracy(kernels, theta: np.ndarray, test: dict) -> float:
    outputs = kernels.kernels.predict(theta, np.ascontiguousarray(test["x"], dtype=float))
    return float(np.mean(outputs.argmax(axis=1) == test["label"]))


DG_SCHEDULE = {"step": 0.1, "schedule": "cycle", "growth": 10.0, "max_step": 1e3}
"""Step sizes of the discrete gradient runs: tau cycles 0.1, 1, ..., 1e3. A fixed large tau
makes slow progress, because the step maps each Hessian eigendirection by the factor
`(1 - tau lambda / 2) / (1 + tau lambda / 2)`, which is near -1 for large tau lambda. A
cycle of taus damps every direction in turn. Cycling up to 1e4 took 3 times the kernel
work to reach Adam's loss in a trial: the Newton iterations at tau = 1e4 need hundreds of
Hessian-vector products, and many tries there were rejected."""

DG_RUNS = (
    ("gonzalez", None),
    ("gonzalez", 1e-10),
    ("mean-value", None),
)
"""`(method, newton_rtol)` of the Newton-Krylov rows; None is the Newton-Krylov default
KRYLOV_NEWTON_RTOL, and 1e-10 an exact solve for comparison."""


def training(quick: bool) -> tuple[float, list[TrainingRow]]:
    """Train the digits network with Adam and with each discrete gradient method."""
    from dgcodegen.baselines import adam
    from dgcodegen.dsl import load_spec
    from dgcodegen.runtime import compile_network

    spec = ROOT / "examples" / "mlp_digits.py"
    network = load_spec(spec)
    test = _load_test_split(spec)
    kernels = compile_network(network)
    x0 = network.initial_point
    adam_steps = 300 if quick else 2000
    # Adam calls the compiled kernel directly: the memo and the forward-pass state that
    # the discrete gradient runs keep would only slow it down.
    module, data = kernels.kernels, kernels.data

    def loss_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        return module.loss_gradient(theta, *data)

    tuning = {rate: adam(loss_gradient, x0, rate, adam_steps) for rate in ADAM_RATES}
    best_rate = min(tuning, key=lambda rate: tuning[rate].loss[-1])
    # The chosen rate runs again, so its time excludes compilation and the tuning runs.
    reference = adam(loss_gradient, x0, best_rate, adam_steps)
    target = reference.loss[-1]
    rows = [
        TrainingRow(
            f"Adam, rate {best_rate:g}",
            reference.seconds[-1],
            adam_steps,
            target,
            _accuracy(kernels, reference.x, test),
            bool(np.all(np.diff(reference.loss) <= 0)),
            f"{adam_steps} full-batch steps, rate best of {', '.join(map(str, ADAM_RATES))}",
            reference.seconds,
            reference.loss,
        )
    ]
    budget = 20 if quick else 300
    for method, rtol in DG_RUNS:
        rows.append(_discrete_gradient_row(kernels, network, test, method, rtol, target, budget))
    rows.append(_itoh_abe_row(kernels, network, test, target, 1 if quick else 3))
    rows.append(_lbfgs_row(loss_gradient, kernels, x0, test, target, adam_steps))
    return best_rate, rows


def _discrete_gradient_row(kernels, network, test, method, rtol, target, budget) -> TrainingRow:
    from dgcodegen.krylov import KRYLOV_NEWTON_RTOL, newton_krylov_descent
    from dgcodegen.stepper import StepperOptions

    losses = [kernels.loss(network.initial_point)]
    seconds = [0.0]
    started = time.perf_counter()
    reached = None
    reached_step = None

    def progress(steps: int, loss: float, tau: float) -> None:
        nonlocal reached, reached_step
        losses.append(loss)
        seconds.append(time.perf_counter() - started)
        if loss <= target and reached is None:
            reached, reached_step = seconds[-1], steps

    options = StepperOptions(max_steps=budget, tol=1e-12, newton_rtol=rtol, **DG_SCHEDULE)
    result = newton_krylov_descent(kernels, method, network.initial_point, options, None, progress)
    steps = len(losses) - 1
    if reached is not None:
        note = f"reached Adam's loss after {reached_step} steps"
    else:
        note = f"not reached in {steps} steps"
    note += f"; {sum(result.krylov_iterations)} Krylov iterations"
    tolerance = options.relative_tolerance(KRYLOV_NEWTON_RTOL)
    return TrainingRow(
        f"{method}, Newton-Krylov, newton_rtol {tolerance:g}",
        reached,
        steps,
        losses[-1],
        _accuracy(kernels, result.x, test),
        bool(np.all(np.diff(losses) <= 0)),
        note,
        seconds,
        losses,
    )


def _itoh_abe_row(kernels, network, test, target, steps) -> TrainingRow:
    from dgcodegen.network_cli import train_network
    from dgcodegen.stepper import StepperOptions

    losses = [kernels.loss(network.initial_point)]
    seconds = [0.0]

    def progress(step: int, loss: float, tau: float) -> None:
        losses.append(loss)
        seconds.append(time.perf_counter() - started)

    # Compile the incremental kernels first, so the timed steps do not include it: a
    # follow to a point one coordinate away commits, and the quotients change and derive.
    quotient = kernels.coordinate_quotient()
    start = network.initial_point
    moved = start.copy()
    moved[0] += 1e-3
    quotient(start, 0, start[0] + 1e-3)
    quotient(moved, 1, moved[1])
    options = StepperOptions(step=1.0, max_steps=steps, tol=1e-12)
    started = time.perf_counter()
    result, _ = train_network(kernels, "itoh-abe", options, progress=progress)
    return TrainingRow(
        "itoh-abe, coordinate-wise, tau 1",
        None,
        steps,
        losses[-1],
        _accuracy(kernels, result.x, test),
        bool(np.all(np.diff(losses) <= 0)),
        f"{steps} steps of {network.size} scalar solves each, {seconds[-1] / steps:.1f} s per step",
        seconds,
        losses,
    )


def _lbfgs_row(loss_gradient, kernels, x0, test, target, budget) -> TrainingRow:
    """Run SciPy's L-BFGS-B on the compiled kernel, the usual full-batch quasi-Newton choice."""
    from scipy.optimize import minimize

    losses = [float(loss_gradient(x0)[0])]
    seconds = [0.0]
    started = time.perf_counter()

    def evaluate(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = loss_gradient(theta)
        seconds.append(time.perf_counter() - started)
        losses.append(float(value))
        return value, gradient

    accepted = [losses[0]]

    def record(intermediate_result) -> None:
        accepted.append(float(intermediate_result.fun))

    result = minimize(
        evaluate, x0, jac=True, method="L-BFGS-B", callback=record,
        options={"maxfun": budget, "maxiter": budget, "ftol": 0.0, "gtol": 0.0},
    )  # fmt: skip
    # Line searches evaluate points that are not accepted, so the trace keeps the lowest
    # loss so far. The time to target is when an evaluation first reached it.
    best = list(np.minimum.accumulate(losses))
    reached = next((t for t, value in zip(seconds, best) if value <= target), None)
    return TrainingRow(
        "SciPy L-BFGS-B, for reference",
        reached,
        result.nit,
        best[-1],
        _accuracy(kernels, result.x, test),
        bool(np.all(np.diff(accepted) <= 0)),
        f"{len(losses) - 1} loss and gradient evaluations, as many as Adam's steps; "
        "the trace is the lowest loss so far",
        seconds,
        best,
        discrete_gradient=False,
    )


CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)
"""Fractions of Adam's run whose best loss so far serves as an extra target."""


@dataclass
class Checkpoint:
    """An intermediate target: Adam's lowest loss within its first `steps` steps."""

    steps: int
    loss: float
    adam_seconds: float
    seconds: list[float | None]


def _first_time(row: TrainingRow, target: float) -> float | None:
    """Return the wall time at which the row's loss first fell to the target, or None."""
    for seconds, loss in zip(row.trace_seconds, row.trace_loss):
        if loss <= target:
            return seconds
    return None


def checkpoints(rows: list[TrainingRow]) -> list[Checkpoint]:
    """Return the time each row took to reach Adam's best loss at each of CHECKPOINTS.

    Adam's loss does not fall at every step, so the target at step k is its lowest loss in
    steps 0 to k, and Adam's time is when it first reached that loss.
    """
    adam_row, others = rows[0], rows[1:]
    result = []
    for fraction in CHECKPOINTS:
        steps = round(fraction * adam_row.steps)
        losses = adam_row.trace_loss[: steps + 1]
        best = int(np.argmin(losses))
        target = losses[best]
        times = [_first_time(row, target) for row in others]
        result.append(Checkpoint(steps, target, adam_row.trace_seconds[best], times))
    return result


def _load_test_split(spec: Path) -> dict:
    namespace: dict = {}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)  # noqa: S102 - our example
    return namespace["TEST"]


def plot(rows: list[TrainingRow], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_step) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        by_time.plot(row.trace_seconds, row.trace_loss, label=row.method)
        by_step.plot(range(len(row.trace_loss)), row.trace_loss, label=row.method)
    for axes, label in ((by_time, "wall time (s)"), (by_step, "step")):
        axes.axhline(target, color="gray", linestyle=":", linewidth=1)
        axes.set_xlabel(label)
        axes.set_ylabel("training loss")
        axes.set_yscale("log")
    by_step.set_xscale("symlog")
    by_time.legend(fontsize=8)
    figure.suptitle("64-16-10 tanh network on digits: training loss")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_section(quick: bool, plots: Path | None = None) -> str:
    """Run both benchmarks and return the "Neural networks" section of BENCHMARKS.md."""
    plots = plots or ROOT / "docs" / "benchmarks"
    sizes = (10, 100) if quick else tuple(SCALING_NETWORKS)
    scaling_rows = scaling(sizes)
    best_rate, rows = training(quick)
    target = rows[0].final_loss
    plot(rows, target, plots / "networks.png")
    lines = [
        "## Neural networks",
        "",
        "Command: `python -m benchmarks.networks`"
        + (" --quick" if quick else "")
        + " (also part of `python -m benchmarks`).",
        "",
        "### Generation and compilation time",
        "",
        "Dense tanh networks on 512 random samples. `build` is `compile_network`: rendering the",
        "template, writing the package, importing it and compiling (or loading from Numba's cache)",
        "the loss, gradient and HVP kernels. `process` adds starting Python and importing",
        "dgcodegen. Cold runs use an empty kernel cache; cached runs reuse it in a new process.",
        "",
        "| nominal | parameters | build cold (s) | build cached (s) | process cold (s) | process cached (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in scaling_rows:
        lines.append(
            f"| {row.nominal:,} | {row.parameters:,} | {row.cold:.2f} | {row.cached:.2f} | "
            f"{row.cold_total:.2f} | {row.cached_total:.2f} |"
        )
    thousand = next((row for row in scaling_rows if row.nominal == 1000), None)
    if thousand is not None:
        met = thousand.cold < 60 and thousand.cached < 2
        lines += [
            "",
            (
                f"- digits network scale, 1,000 parameters: build **{thousand.cold:.2f} s** "
                f"cold (target < 60 s), **{thousand.cached:.2f} s** cached (target < 2 s): "
                f"{'met' if met else 'NOT met'}."
            ),
        ]
    adam_row = rows[0]
    lines += [
        "",
        "### Training the digits network",
        "",
        "`examples/mlp_digits.py`: 64-16-10 tanh network, 1,210 parameters, softmax",
        "cross-entropy with weight decay 1e-3, trained full-batch on 1,347 images, accuracy on",
        f"the other 450. The target is Adam's final loss ({target:.6f}, rate {best_rate:g}).",
        "The discrete gradient runs cycle tau through 0.1, 1, ..., 1e3 and stop at a step budget;",
        "`time to target` is the wall time at which the loss first fell to Adam's final loss.",
        "`newton_rtol` is the Newton tolerance `|F(y)| <= newton_rtol |y - x|` of each step. With",
        "0.5, the Newton-Krylov default, each step still lowers the loss by at least",
        "`|y - x|^2 / (2 tau)`; 1e-10 solves the step exactly, for comparison. SciPy's",
        "L-BFGS-B, with its default threads and as many evaluations as Adam's steps, is a",
        "reference outside the target: it gives no per-step decrease guarantee.",
        "",
        "| method | time to target (s) | ratio to Adam | steps | final loss | test accuracy | loss decreased every step | note |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        ratio = "-" if row.seconds is None else f"{row.seconds / adam_row.seconds:.2f}"
        lines.append(
            f"| {row.method} | {_seconds(row.seconds)} | {ratio} | {row.steps} | "
            f"{row.final_loss:.6f} | {row.test_accuracy:.4f} | {'yes' if row.monotone else 'no'} "
            f"| {row.note} |"
        )
    dg_times = [
        row.seconds for row in rows[1:] if row.seconds is not None and row.discrete_gradient
    ]
    if dg_times:
        best = min(dg_times) / adam_row.seconds
        verdict = "met" if best <= 1.0 else "NOT met"
        summary = (
            "- digits network, fastest discrete gradient time to Adam's final loss / Adam: "
            f"**{best:.2f}** (target <= 1): {verdict}."
        )
    else:
        summary = (
            "- digits network: no discrete gradient run reached Adam's final loss within its "
            "budget (target: no more time than Adam): NOT met."
        )
    lines += ["", summary]
    lines += [
        "",
        "Time to reach intermediate targets, each Adam's lowest loss within its first steps:",
        "the ratio depends on where the target falls, because the curves cross. Near Adam's",
        "final loss every method's curve flattens, so small changes of a trajectory move its",
        "time to that target a lot.",
        "",
        "| Adam steps | target loss | Adam (s) | "
        + " | ".join(f"{row.method} (s, ratio)" for row in rows[1:])
        + " |",
        "|---:|---:|---:|" + "---:|" * (len(rows) - 1),
    ]
    for point in checkpoints(rows):
        cells = [
            "-" if seconds is None else f"{seconds:.2f} ({seconds / point.adam_seconds:.2f})"
            for seconds in point.seconds
        ]
        lines.append(
            f"| {point.steps} | {point.loss:.6f} | {point.adam_seconds:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    relative = Path("docs") / "benchmarks" / "networks.png"
    lines += ["", f"![training loss against time and steps]({relative.as_posix()})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.networks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two small sizes, short runs")
    args = parser.parse_args(argv)
    print(markdown_section(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
