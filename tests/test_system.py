"""System DSL: structure classification, input errors and the verify certificate."""

from __future__ import annotations

import hashlib
import math

import pytest
import sympy as sp
from conftest import EXAMPLES

import dgcodegen as dg
from dgcodegen.dsl import load_spec
from dgcodegen.emit import GENERATED_LINE
from dgcodegen.errors import SpecError
from dgcodegen.system import GENERAL, NEGATIVE_SEMIDEFINITE, SKEW, classify_structure
from dgcodegen.system_emit import render_system, system_methods
from dgcodegen.system_verify import NONE, verify_system
from dgcodegen.verify import FAILED, PROVEN


def oscillator(structure, **options) -> dg.System:
    q, p = dg.state("q"), dg.state("p")
    return dg.System(energy=(q**2 + p**2) / 2, structure=structure(q, p), **options)


@pytest.mark.parametrize(
    ("structure", "kind", "constant"),
    [
        (lambda q, p: [[0, 1], [-1, 0]], SKEW, True),
        (lambda q, p: [[0, q * p], [-q * p, 0]], SKEW, False),
        (lambda q, p: [[0, 1], [-1, -2]], NEGATIVE_SEMIDEFINITE, True),
        (lambda q, p: [[-(1 + q**2), 1], [-1, -(p**2)]], NEGATIVE_SEMIDEFINITE, False),
        (lambda q, p: [[-1, 0], [0, -1]], NEGATIVE_SEMIDEFINITE, True),
        (lambda q, p: [[0, 1], [0, 0]], GENERAL, True),
        (lambda q, p: [[1, 0], [0, -1]], GENERAL, True),
        (lambda q, p: [[0, 1], [-1, -q]], GENERAL, False),
    ],
    ids=[
        "skew",
        "skew-state",
        "damped",
        "damped-state",
        "gradient-flow",
        "nilpotent",
        "indefinite",
        "damping-of-unknown-sign",
    ],
)
def test_structure_classification(structure, kind: str, constant: bool) -> None:
    system = oscillator(structure)
    assert system.classification.kind == kind
    assert system.classification.constant is constant


def test_classification_names_the_failing_minor() -> None:
    q = dg.state("q")
    matrix = sp.Matrix([[1, 0], [0, 0]])
    classification = classify_structure(matrix, [q])
    assert classification.kind == GENERAL
    assert "[0]" in classification.method


def test_state_order_follows_declarations() -> None:
    q = dg.state("q", 2)
    p = dg.state("p", 2)
    system = dg.System(
        energy=p.dot(p) / 2 + q.dot(q) / 2,
        structure=sp.BlockMatrix(
            [[sp.zeros(2), sp.eye(2)], [-sp.eye(2), sp.zeros(2)]]
        ).as_explicit(),
        initial={"q": [1, 2], "p": [3, 4]},
    )
    assert system.state_names() == ["q[0]", "q[1]", "p[0]", "p[1]"]
    assert system.initial_point.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_initial_accepts_sympy_numbers() -> None:
    system = oscillator(lambda q, p: [[0, 1], [-1, 0]], initial={"q": sp.pi / 2})
    assert system.initial_point[0] == pytest.approx(math.pi / 2, rel=1e-16)


@pytest.mark.parametrize(
    ("structure", "message"),
    [
        (lambda q, p: [[0, 1, 0], [-1, 0, 0]], "shape (2, 3), expected (2, 2)"),
        (lambda q, p: [[0, 1, 0], [-1, 0, 0], [0, 0, 0]], "shape (3, 3), expected (2, 2)"),
        (lambda q, p: [[0, 1], [-1, sp.oo]], "entry (1, 1) of the structure matrix"),
        (lambda q, p: [[0, sp.Symbol("c")], [-1, 0]], "uses 'c', which is not a state"),
        (lambda q, p: [[0, sp.Function("f")(q)], [-1, 0]], "unsupported function f"),
    ],
    ids=["not-square", "wrong-size", "infinite", "unknown-symbol", "unknown-function"],
)
def test_bad_structure_is_rejected(structure, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        oscillator(structure)


@pytest.mark.parametrize("step", [0, -1e-3, math.inf, math.nan, "fast"])
def test_bad_step_is_rejected(step) -> None:
    with pytest.raises(SpecError, match="step"):
        oscillator(lambda q, p: [[0, 1], [-1, 0]], step=step)


def test_state_missing_from_energy_is_named() -> None:
    dg.state("q")
    p = dg.state("p")
    with pytest.raises(SpecError, match=r"state \['p'\], which are the variables of the energy"):
        dg.System(energy=p**2 / 2, structure=[[0, 1], [-1, 0]])


def test_initial_of_unknown_state_is_rejected() -> None:
    with pytest.raises(SpecError, match="'r'"):
        oscillator(lambda q, p: [[0, 1], [-1, 0]], initial={"r": 1.0})


def test_state_argument_must_match_energy() -> None:
    q, p, r = dg.state("q"), dg.state("p"), dg.state("r")
    with pytest.raises(SpecError, match="'r' does not appear in the energy"):
        dg.System(energy=q**2 + p**2, structure=[[0, 1], [-1, 0]], state=[q, p, r])
    with pytest.raises(SpecError, match="uses 'p', which is not in state="):
        dg.System(energy=q**2 + p**2, structure=[[0, 1], [-1, 0]], state=[q])


def test_data_symbol_in_energy_is_rejected() -> None:
    q, c = dg.state("q"), dg.data("c")
    with pytest.raises(SpecError, match="data"):
        dg.System(energy=c * q**2, structure=[[0]])


def test_verify_pendulum_proves_conservation() -> None:
    report = verify_system(load_spec(EXAMPLES / "pendulum.py"))
    energy = [r for r in report.results if r.identity == "energy"]
    assert [r.discrete_gradient for r in energy] == [
        "mean-value",
        "gonzalez",
        "itoh-abe",
        "itoh-abe-symmetric",
        "mean-value-4",
    ]
    assert all(r.status == PROVEN for r in energy)
    assert all("H(y) = H(x)" in r.method for r in energy)
    assert report.passed
    assert report.certificate().splitlines()[1].startswith("structure matrix: skew, constant")


def test_verify_damped_proves_decrease() -> None:
    report = verify_system(load_spec(EXAMPLES / "damped_oscillator.py"))
    energy = {r.discrete_gradient: r for r in report.results if r.identity == "energy"}
    for name in ("mean-value", "gonzalez", "itoh-abe", "itoh-abe-symmetric"):
        assert energy[name].status == PROVEN
        assert "H(y) <= H(x)" in energy[name].method
    assert energy["mean-value-4"].status == NONE
    assert report.as_dict()["structure"].startswith("negative semidefinite")


def test_verify_general_structure_claims_nothing() -> None:
    system = oscillator(lambda q, p: [[0, 1], [0, 0]])
    report = verify_system(system)
    energy = [r for r in report.results if r.identity == "energy"]
    assert energy
    assert all(r.status == NONE for r in energy)
    assert report.passed


def test_verify_lotka_volterra_state_dependent() -> None:
    report = verify_system(load_spec(EXAMPLES / "lotka_volterra.py"))
    energy = {r.discrete_gradient: r for r in report.results if r.identity == "energy"}
    assert sorted(energy) == ["gonzalez", "itoh-abe", "itoh-abe-symmetric", "mean-value"]
    assert all(r.status == PROVEN for r in energy.values())
    assert "state-dependent" in report.structure


def test_verify_kepler_mean_value_is_not_exact() -> None:
    report = verify_system(load_spec(EXAMPLES / "kepler.py"))
    energy = {r.discrete_gradient: r for r in report.results if r.identity == "energy"}
    for name in ("gonzalez", "itoh-abe", "itoh-abe-symmetric"):
        assert energy[name].status == PROVEN
    assert energy["mean-value"].status == FAILED


def test_integrator_carries_kernels_hash() -> None:
    files = render_system(load_spec(EXAMPLES / "damped_oscillator.py"))
    digest = hashlib.sha256(files["kernels.py"].encode()).hexdigest()
    assert f"Compiled with kernels.py of sha256 {digest}." in files["integrator.py"]
    assert files["integrator.py"].startswith(f"# {GENERATED_LINE}\n")


def test_state_dependent_structure_has_no_fourth_order() -> None:
    system = load_spec(EXAMPLES / "lotka_volterra.py")
    assert system_methods(system) == ("mean-value", "gonzalez", "itoh-abe", "itoh-abe-symmetric")
    integrator = render_system(system)["integrator.py"]
    assert "def integrate_mean_value_4" not in integrator
    assert "structure_derivative(midpoint)" in integrator
