"""The main job: logistic regression on breast cancer data, checked against scikit-learn.

The discrete gradient method runs at `STEP_FACTOR` times gradient descent's stability
bound `2 / L`, gradient descent runs at the same step for comparison, and the result
must match scikit-learn's `LogisticRegression(C=1)` optimum.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .dsl import load_spec
from .emit import template_directory
from .runtime import compile_problem
from .stepper import StepperOptions, gradient_descent
from .training import report, train, write_json

log = logging.getLogger("dgcodegen")

STEP_FACTOR = 100.0
"""The demo's step as a multiple of gradient descent's bound `2 / L`."""

LOSS_TOLERANCE = 1e-10
PARAMETER_TOLERANCE = 1e-6
GRADIENT_DESCENT_STEPS = 200


def example_path(name: str) -> Path:
    """Return the path of a bundled example spec (installed package or source tree)."""
    installed = Path(__file__).parent / "examples" / name
    if installed.is_file():
        return installed
    return template_directory().parent / "examples" / name


def scikit_learn_optimum(features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Fit `LogisticRegression(C=1)` to tight tolerance and return (intercept, weights)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000, solver="newton-cholesky")
    model.fit(features, labels)
    return float(model.intercept_[0]), model.coef_[0].copy()


def _table(history: dict[str, list]) -> list[str]:
    steps = len(history["loss"])
    shown_steps = sorted(
        {s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, steps) if s <= steps}
    )
    header = ("steps", "loss", "|y - x|", "newton", "residual", "energy id.")
    widths = (6, 20, 10, 6, 10, 10)
    lines = [" ".join(f"{name:>{width}}" for name, width in zip(header, widths))]
    for s in shown_steps:
        i = s - 1
        lines.append(
            f"{s:>6} {history['loss'][i]:>20.12f} {history['step_norm'][i]:>10.2e} "
            f"{history['newton_iterations'][i]:>6d} {history['residual'][i]:>10.2e} "
            f"{history['energy_residual'][i]:>10.2e}"
        )
    return lines


def run_demo(
    json_path: Path | None = None, method: str = "mean-value", show_progress: bool = True
) -> int:
    """Run the main job, print its report, and return the process exit code."""
    problem = load_spec(example_path("logistic_regression.py"))
    compiled = compile_problem(problem, show_progress=show_progress, methods=(method,))
    x0 = problem.initial_point
    # The data term's Hessian is sum_i sigmoid'(z_i) a_i a_i^T with sigmoid' <= 1/4 and
    # equality at z = 0, so at w = 0, b = 0 the Hessian is the global curvature bound.
    lipschitz = float(np.linalg.eigvalsh(compiled.hessian(np.zeros_like(x0))).max())
    step = STEP_FACTOR * 2.0 / lipschitz
    samples, features = compiled.data[0].shape
    print(f"breast cancer data: {samples} samples, {features} features")
    bound = 2 / lipschitz
    print(f"L = {lipschitz:.6g}, gradient descent's bound 2/L = {bound:.4g}, step = {step:.4g}")

    descent = gradient_descent(compiled.loss, compiled.gradient, x0, step, GRADIENT_DESCENT_STEPS)
    losses = descent["loss"]
    print(
        f"gradient descent at that step: loss {losses[0]:.6g} -> {losses[1]:.6g} after one step, "
        f"{max(losses):.6g} at its peak, {losses[-1]:.6g} after {len(losses) - 1} steps"
    )

    options = StepperOptions(step=step, tol=1e-10, max_steps=5000)
    result = train(compiled, method, options, show_progress)
    document = report(problem.layout, method, options, result)
    print(f"discrete gradient method ({method}) at the same step:")
    print("\n".join(_table(document["history"])))

    features, labels = problem.default_data["x"], problem.default_data["y"][:, 0]
    intercept, weights = scikit_learn_optimum(features, labels)
    reference = problem.join_parameters({"w": weights, "b": intercept})
    reference_loss = compiled.loss(reference)
    loss_error = abs(result.loss - reference_loss) / abs(reference_loss)
    parameter_error = float(np.abs(result.x - reference).max())
    matched = (
        result.converged and loss_error <= LOSS_TOLERANCE and parameter_error <= PARAMETER_TOLERANCE
    )
    print(f"scikit-learn LogisticRegression(C=1): loss {reference_loss:.12f}")
    print(f"discrete gradient method:             loss {result.loss:.12f}")
    print(
        f"relative loss difference {loss_error:.2e} (tolerance {LOSS_TOLERANCE:g}), "
        f"max parameter difference {parameter_error:.2e} (tolerance {PARAMETER_TOLERANCE:g})"
    )
    print("result matches scikit-learn" if matched else "result does NOT match scikit-learn")

    document["gradient_descent"] = {"step": step, "loss": losses, "diverged": descent["diverged"]}
    document["lipschitz"] = lipschitz
    document["reference"] = {
        "solver": "sklearn.linear_model.LogisticRegression(C=1, solver='newton-cholesky')",
        "loss": reference_loss,
        "relative_loss_difference": loss_error,
        "max_parameter_difference": parameter_error,
        "matches": bool(matched),
    }
    if json_path is not None:
        write_json(document, json_path)
        print(f"wrote {json_path}")
    return 0 if matched else 1
