"""Kernel section: generated kernels against hand-written Numba, JAX, NumPy and lambdify.

The problem is logistic regression with 30 features and a bias (the loss of
`examples/logistic_regression.py`) on synthetic data. Throughput is the size of the data
arrays divided by the time of one call, so a kernel that reads the data twice shows half
the throughput of a kernel that reads it once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import handwritten
from .problems import compiled_breast_cancer, synthetic_logistic_data
from .timing import best_times, format_ratio, markdown_table, memory_bandwidth

log = logging.getLogger("dgcodegen.benchmarks")

LOSS_GRADIENT_TARGET_NUMBA = 1.1
"""Target: generated loss and gradient take at most this times the hand-written Numba time."""

LOSS_GRADIENT_TARGET_JAX = 2 / 3
"""Target: generated loss and gradient take at most this fraction of JAX's time."""


@dataclass
class KernelResults:
    """Timings of the kernel section, in seconds per call, and the measured bandwidth."""

    samples: int
    data_bytes: int
    bandwidth: dict[str, float]
    loss_gradient: dict[str, float]
    loss_gradient_error: dict[str, float]
    pairs: dict[str, tuple[float, float]] = field(default_factory=dict)
    pair_errors: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _relative_difference(value: Any, reference: Any) -> float:
    value = np.atleast_1d(np.asarray(value, dtype=float))
    reference = np.atleast_1d(np.asarray(reference, dtype=float))
    return float(np.abs(value - reference).max() / max(np.abs(reference).max(), 1e-300))


def _jax_loss_and_gradient(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], Any] | None:
    """Return `jax.jit(jax.value_and_grad(V))` in float64 bound to the data, or None."""
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def loss(theta: Any, features: Any, labels: Any) -> Any:
        t = -labels * (features @ theta[:-1] + theta[-1])
        return jnp.sum(jax.nn.softplus(t)) + 0.5 * theta[:-1] @ theta[:-1]

    compiled = jax.jit(jax.value_and_grad(loss))
    features, labels = jnp.asarray(x), jnp.asarray(y)

    def evaluate(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = jax.block_until_ready(compiled(jnp.asarray(theta), features, labels))
        return float(value), np.asarray(gradient)

    return evaluate


def _lambdify_loss_and_gradient(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], Any]:
    """Return loss and gradient from `sympy.lambdify` of the per-sample term and its gradient.

    The per-sample term is `log(1 + exp(t))`, the form a SymPy user would write. It
    overflows for `t` above about 709, which the benchmark data never reach.
    """
    import sympy as sp

    d = x.shape[1]
    weights = sp.symbols(f"w0:{d}", real=True)
    bias, label = sp.symbols("b label", real=True)
    features = sp.symbols(f"x0:{d}", real=True)
    t = -label * (sum(w * f for w, f in zip(weights, features)) + bias)
    term = sp.log(1 + sp.exp(t))
    parameters = (*weights, bias)
    function = sp.lambdify(
        (*parameters, *features, label),
        [term, *(sp.diff(term, p) for p in parameters)],
        "numpy",
        cse=True,
    )
    columns = [np.ascontiguousarray(x[:, j]) for j in range(d)]

    def evaluate(theta: np.ndarray) -> tuple[float, np.ndarray]:
        values = function(*theta, *columns, y)
        gradient = np.array([np.sum(v) for v in values[1:]])
        gradient[:d] += theta[:d]
        return float(np.sum(values[0]) + 0.5 * theta[:d] @ theta[:d]), gradient

    return evaluate


def _loss_gradient_functions(
    compiled: Any, theta: np.ndarray, x: np.ndarray, y: np.ndarray
) -> dict[str, Callable[[], Any]]:
    kernels = compiled.kernels
    data = compiled.data
    functions: dict[str, Callable[[], Any]] = {
        "generated": lambda: kernels.loss_gradient(theta, *data),
        "generated, separate loss and gradient": lambda: (
            kernels.loss(theta, *data),
            kernels.gradient(theta, *data),
        ),
        "generated gradient only": lambda: kernels.gradient(theta, *data),
        "hand-written Numba": lambda: handwritten.loss_and_gradient(theta, x, y),
        "NumPy": lambda: handwritten.numpy_loss_and_gradient(theta, x, y),
    }
    jax_function = _jax_loss_and_gradient(x, y)
    if jax_function is not None:
        functions["JAX"] = lambda: jax_function(theta)
    lambdified = _lambdify_loss_and_gradient(x, y)
    functions["sympy.lambdify"] = lambda: lambdified(theta)
    return functions


def _pair_functions(
    compiled: Any, theta_x: np.ndarray, theta_y: np.ndarray, x: np.ndarray, y: np.ndarray
) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Return (generated, hand-written NumPy) pairs of the discrete gradient kernels."""
    kernels, data = compiled.kernels, compiled.data
    middle = 0.5 * (theta_x + theta_y)
    return {
        "mean-value DG": (
            lambda: kernels.dg_mean_value(theta_x, theta_y, *data),
            lambda: handwritten.numpy_mean_value(theta_x, theta_y, x, y),
        ),
        "Gonzalez DG": (
            lambda: kernels.dg_gonzalez(theta_x, theta_y, *data),
            lambda: handwritten.numpy_gonzalez(theta_x, theta_y, x, y),
        ),
        "mean-value Jacobian": (
            lambda: kernels.jac_mean_value(theta_x, theta_y, *data),
            lambda: handwritten.numpy_mean_value_jacobian(theta_x, theta_y, x, y),
        ),
        "Gonzalez Jacobian": (
            lambda: kernels.jac_gonzalez(theta_x, theta_y, *data),
            lambda: handwritten.numpy_gonzalez_jacobian(theta_x, theta_y, x, y),
        ),
        "Hessian": (
            lambda: kernels.hessian(middle, *data),
            lambda: handwritten.numpy_hessian(middle, x, y),
        ),
    }


def run(samples: int, repeats: int, checked_in: bool, quick: bool = False) -> KernelResults:
    """Time every kernel at `samples` samples and return the results.

    `quick` times the mean-value kernels only, which saves compiling the Gonzalez ones.
    """
    started = time.perf_counter()
    data = synthetic_logistic_data(samples)
    methods = ("mean-value",) if quick else ("mean-value", "gonzalez")
    compiled = compiled_breast_cancer(data, checked_in=checked_in, methods=methods)
    x = compiled.data[0]
    y = np.ascontiguousarray(compiled.data[1][:, 0])
    rng = np.random.default_rng(1)
    theta = 0.1 * rng.standard_normal(x.shape[1] + 1)
    theta_y = theta + 0.05 * rng.standard_normal(theta.size)
    bandwidth = memory_bandwidth(repeats)

    functions = _loss_gradient_functions(compiled, theta, x, y)
    outputs = {name: function() for name, function in functions.items()}
    reference = outputs["NumPy"]
    errors = {}
    for name, output in outputs.items():
        if name == "generated gradient only":
            errors[name] = _relative_difference(output, reference[1])
        else:
            value = np.append(output[0], output[1])
            errors[name] = _relative_difference(value, np.append(*reference))
    slow = {name: functions.pop(name) for name in ("sympy.lambdify",) if name in functions}
    times = best_times(functions, repeats)
    times.update(best_times(slow, max(1, repeats // 2), min_seconds=0.0))

    pairs = _pair_functions(compiled, theta, theta_y, x, y)
    if quick:
        pairs = {name: pair for name, pair in pairs.items() if name.startswith("mean-value")}
    # The first calls also compile kernels that warm_up leaves out, such as the Hessian.
    pair_errors = {
        name: _relative_difference(generated(), numpy_version())
        for name, (generated, numpy_version) in pairs.items()
    }
    pair_times = best_times(
        {f"{name}|{side}": pair[i] for name, pair in pairs.items() for i, side in enumerate("gn")},
        repeats,
    )
    results = KernelResults(
        samples=samples,
        data_bytes=x.nbytes + compiled.data[1].nbytes,
        bandwidth=bandwidth,
        loss_gradient=times,
        loss_gradient_error=errors,
    )
    for name in pairs:
        results.pairs[name] = (pair_times[f"{name}|g"], pair_times[f"{name}|n"])
    results.pair_errors = pair_errors
    if "JAX" not in functions:
        results.notes.append("JAX is not installed, so its row is missing.")
    log.info("kernel section took %.1f s", time.perf_counter() - started)
    return results


def _throughput(results: KernelResults, seconds: float) -> float:
    return results.data_bytes / seconds / 1e9


def loss_gradient_ratios(results: KernelResults) -> dict[str, float]:
    """Return the generated loss-and-gradient time over the hand Numba and JAX times."""
    times = results.loss_gradient
    return {
        "numba": times["generated"] / times["hand-written Numba"],
        "jax": times["generated"] / times["JAX"] if "JAX" in times else float("nan"),
    }


def _loss_gradient_table(results: KernelResults) -> str:
    peak = max(results.bandwidth.values())
    reference = results.loss_gradient["hand-written Numba"]
    rows = []
    for name, seconds in sorted(results.loss_gradient.items(), key=lambda item: item[1]):
        gigabytes = _throughput(results, seconds)
        rows.append(
            (
                name,
                f"{seconds * 1e3:.2f}",
                format_ratio(seconds / reference),
                f"{gigabytes:.2f}",
                f"{100 * gigabytes / peak:.0f}%",
                f"{results.loss_gradient_error[name]:.1e}",
            )
        )
    loss_table = markdown_table(
        (
            "implementation",
            "ms per call",
            "time / hand Numba",
            "GB/s",
            "of bandwidth",
            "max rel. difference to NumPy",
        ),
        rows,
    )
    return loss_table


def _pair_table(results: KernelResults) -> str:
    pair_rows = []
    for name, (generated, numpy_time) in results.pairs.items():
        pair_rows.append(
            (
                name,
                f"{generated * 1e3:.2f}",
                f"{numpy_time * 1e3:.2f}",
                format_ratio(generated / numpy_time),
                f"{_throughput(results, generated):.2f}",
                f"{results.pair_errors[name]:.1e}",
            )
        )
    pair_table = markdown_table(
        (
            "kernel",
            "generated (ms)",
            "NumPy (ms)",
            "generated / NumPy",
            "generated GB/s",
            "max rel. difference",
        ),
        pair_rows,
    )
    return pair_table


def markdown(results: KernelResults, plot: str) -> str:
    """Return the section's Markdown: tables, target ratios and the plot."""
    loss_table = _loss_gradient_table(results)
    pair_table = _pair_table(results)
    ratios = loss_gradient_ratios(results)
    lines = [
        (
            f"Logistic regression with N = {results.samples:,} samples, 30 features and a bias, "
            f"float64, all cores. The data are {results.data_bytes / 1e6:.0f} MB. Memory "
            f"bandwidth in this run: {results.bandwidth['numba']:.2f} GB/s with a Numba `prange` "
            f"sum over all cores, {results.bandwidth['numpy']:.2f} GB/s with `numpy.sum` "
            "(256 MiB array). GB/s is data size over time per call."
        ),
        "",
        "### Loss and gradient",
        "",
        loss_table,
        "",
        (
            "`generated` calls the generated `loss_gradient` kernel, which reads the data once "
            "and shares subexpressions between the loss and the gradient, as the hand-written "
            "Numba kernel and JAX do. `generated, separate loss and gradient` calls the `loss` "
            "and `gradient` kernels, which read it twice."
        ),
        "",
        _target_line(
            "generated loss and gradient / hand-written Numba",
            ratios["numba"],
            LOSS_GRADIENT_TARGET_NUMBA,
        ),
        _target_line("generated loss and gradient / JAX", ratios["jax"], LOSS_GRADIENT_TARGET_JAX),
        "",
        "### Discrete gradients and Jacobians against NumPy",
        "",
        (
            "The NumPy versions use BLAS for `X^T diag(s) X`, while the generated Jacobians add "
            "one outer product per sample. The points are about 0.3 apart, so Gonzalez uses its "
            "direct form."
        ),
        "",
        pair_table,
        "",
        f"![kernel throughput]({plot})",
    ]
    lines += [f"\n{note}" for note in results.notes]
    return "\n".join(lines)


def _target_line(label: str, ratio: float, target: float) -> str:
    if not np.isfinite(ratio):
        return f"- {label}: not measured (target <= {target:.2g})."
    verdict = "met" if ratio <= target else "NOT met"
    return f"- {label}: **{ratio:.2f}** (target <= {target:.2g}): {verdict}."


def plot(results: KernelResults, path: Path) -> None:
    """Plot the throughput of every kernel against the measured bandwidth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"loss+grad: {name}" for name in results.loss_gradient]
    values = [_throughput(results, s) for s in results.loss_gradient.values()]
    for name, (generated, numpy_time) in results.pairs.items():
        labels += [f"{name}: generated", f"{name}: NumPy"]
        values += [_throughput(results, generated), _throughput(results, numpy_time)]
    figure, axes = plt.subplots(figsize=(8, 0.3 * len(labels) + 1.5))
    axes.barh(range(len(labels)), values, color="tab:blue")
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.axvline(results.bandwidth["numba"], color="tab:red", label="memory bandwidth (sum)")
    axes.set_xlabel("GB/s (data size / time per call)")
    axes.set_title(f"Kernel throughput, N = {results.samples:,}")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
