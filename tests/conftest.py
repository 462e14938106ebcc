"""Shared fixtures: compiled example problems, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgcodegen.dsl import load_spec
from dgcodegen.runtime import CompiledProblem, load_kernels

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GENERATED = ROOT / "generated"


def compiled_example(name: str) -> CompiledProblem:
    """Load an example spec with the checked-in kernels of generated/<name>."""
    problem = load_spec(EXAMPLES / f"{name}.py")
    return CompiledProblem(problem, load_kernels(GENERATED / name), None)


@pytest.fixture(scope="session")
def rosenbrock() -> CompiledProblem:
    return compiled_example("rosenbrock")


@pytest.fixture(scope="session")
def logistic() -> CompiledProblem:
    return compiled_example("logistic_regression")
