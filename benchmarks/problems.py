"""Problems of the benchmarks, built with the dgcodegen DSL, and their compiled kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import dgcodegen as dg
from dgcodegen.dsl import load_spec
from dgcodegen.runtime import CompiledProblem, compile_problem, load_kernels

ROOT = Path(__file__).resolve().parent.parent

ERRS_OPTIMUM = 42.6183912085
"""`V*` of the Ehrhardt-Riis-Ringholm-Schoenlieb problem as stated with its definition."""


def breast_cancer_spec() -> dg.Loss:
    """Return the loss of `examples/logistic_regression.py`, the problem of `dgcodegen demo`."""
    return load_spec(ROOT / "examples" / "logistic_regression.py")


def compiled_breast_cancer(
    data: dict[str, Any] | None = None, checked_in: bool = True, methods: tuple[str, ...] = ()
) -> CompiledProblem:
    """Return the breast cancer loss compiled, with `data` bound (the spec's data when None).

    With `checked_in`, the kernels are those of `generated/logistic_regression`, whose Numba
    cache is usually warm; otherwise `compile_problem` generates them into the kernel cache.
    Any data with 30 features fits them, since the data are arguments of the kernels.
    """
    problem = breast_cancer_spec()
    if checked_in:
        return CompiledProblem(
            problem, load_kernels(ROOT / "generated" / "logistic_regression"), data
        )
    return compile_problem(problem, data=data, methods=methods)


def synthetic_logistic_data(samples: int, features: int = 30, seed: int = 0) -> dict[str, Any]:
    """Return standard normal features and +-1 labels of a noisy linear model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features))
    truth = rng.standard_normal(features) / np.sqrt(features)
    y = np.where(x @ truth + 0.5 * rng.standard_normal(samples) > 0, 1.0, -1.0)
    return {"x": x, "y": y}


def errs_data() -> dict[str, np.ndarray]:
    """Return the data of the logistic regression problem of arXiv 1805.06444.

    NumPy's legacy generator seeded with 10 draws the labels `sign(normal(200))` first and
    then the features `normal((200, 100))`.
    """
    generator = np.random.RandomState(10)
    labels = np.sign(generator.normal(size=200))
    features = generator.normal(size=(200, 100))
    return {"x": features, "y": labels}


def errs_spec() -> dg.Loss:
    """Return `V(w) = 1/2 sum_i softplus(-y_i x_i . w) + |w|^2 / 2` with its data."""
    w = dg.parameter("w", 100)
    x = dg.data("x", 100)
    y = dg.data("y")
    return dg.Loss(
        per_sample=dg.softplus(-y * w.dot(x)) / 2,
        reduction="sum",
        regularizer=w.dot(w) / 2,
        data=errs_data(),
        name="errs_logistic",
    )
