"""Shared fixtures: compiled example problems, built once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from dgcodegen.dsl import load_spec
from dgcodegen.runtime import CompiledProblem, load_kernels

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GENERATED = ROOT / "generated"


def pytest_configure(config: pytest.Config) -> None:
    """Keep kernels that tests generate out of the user's cache folder."""
    if "DGCODEGEN_CACHE" not in os.environ:
        os.environ["DGCODEGEN_CACHE"] = tempfile.mkdtemp(prefix="dgcodegen-test-cache-")


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
