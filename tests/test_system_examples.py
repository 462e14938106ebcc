"""Examples of `dg.System` against known solutions, run by the checked-in compiled loops."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import sympy as sp
from conftest import EXAMPLES, GENERATED
from scipy.integrate import solve_ivp
from scipy.special import ellipj, ellipk

import dgcodegen as dg
from dgcodegen import integrate
from dgcodegen.cli import main
from dgcodegen.dsl import load_spec
from dgcodegen.errors import SpecError
from dgcodegen.integrate import SYSTEM_METHODS, CompiledSystem, compile_system, load_integrator
from dgcodegen.system import NEGATIVE_SEMIDEFINITE

PENDULUM_PERIOD = 7.4162987092
"""`4 K(1/2)` for the pendulum released at rest from `q = pi/2`."""

LONG_RUN = 100_000


def compiled(name: str) -> CompiledSystem:
    return CompiledSystem(load_spec(EXAMPLES / f"{name}.py"), load_integrator(GENERATED / name))


@pytest.fixture(scope="module")
def pendulum() -> CompiledSystem:
    return compiled("pendulum")


@pytest.fixture(scope="module")
def lotka_volterra() -> CompiledSystem:
    return compiled("lotka_volterra")


def downward_crossings(times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Times where `values` crosses zero from above, by linear interpolation."""
    index = np.nonzero((values[:-1] > 0) & (values[1:] <= 0))[0]
    fraction = values[index] / (values[index] - values[index + 1])
    return times[index] + fraction * (times[index + 1] - times[index])


def relative_drift(energy: np.ndarray, scale: float) -> float:
    return float(np.max(np.abs(energy - energy[0])) / scale)


def test_pendulum_period_reference() -> None:
    assert 4 * ellipk(0.5) == pytest.approx(PENDULUM_PERIOD, abs=1e-10)


@pytest.mark.parametrize("method", ["mean-value", "mean-value-4"])
def test_pendulum_period(pendulum: CompiledSystem, method: str) -> None:
    step = pendulum.system.step
    trajectory = pendulum.integrate(method, step, 30_000)
    crossings = downward_crossings(trajectory.times, trajectory.states[:, 0])
    assert len(crossings) == 4
    period = (crossings[-1] - crossings[0]) / (len(crossings) - 1)
    assert period == pytest.approx(PENDULUM_PERIOD, rel=1e-6)


# Gonzalez is left out because its kernels compile slowest; the Kepler tests cover it.
@pytest.mark.parametrize("method", [m for m in SYSTEM_METHODS if m != "gonzalez"])
def test_pendulum_conserves_energy(pendulum: CompiledSystem, method: str) -> None:
    trajectory = pendulum.integrate(method, pendulum.system.step, 2_000)
    assert trajectory.converged
    # H runs from -1 to 0 on this orbit, so the scale of H is 1.
    assert relative_drift(trajectory.energy, 1.0) <= 1e-12


@pytest.mark.parametrize(
    ("name", "method", "scale"),
    [
        ("pendulum", "mean-value", 1.0),
        ("kepler", "gonzalez", 0.5),
        # Gauss-Legendre mean value, not exact, but its error at this step is below round-off.
        ("kepler", "mean-value", 0.5),
        ("lotka_volterra", "mean-value", 2.0),
        ("duffing", "mean-value", 0.75),
        ("henon_heiles", "mean-value", 0.1247),
    ],
)
def test_energy_drift_over_long_run(name: str, method: str, scale: float) -> None:
    system = compiled(name)
    trajectory = system.integrate(method, system.system.step, LONG_RUN, save_every=100)
    assert trajectory.converged, trajectory.message
    assert trajectory.steps == LONG_RUN
    assert len(trajectory.energy) == LONG_RUN // 100 + 1
    assert np.allclose(trajectory.times, np.arange(LONG_RUN // 100 + 1) * 100 * system.system.step)
    assert relative_drift(trajectory.energy, scale) <= 1e-12


def test_kepler_invariants_over_one_period() -> None:
    kepler = compiled("kepler")
    step = kepler.system.step
    steps = round(2 * math.pi / step)
    trajectory = kepler.integrate("gonzalez", step, steps, save_every=10)
    q0, q1, p0, p1 = trajectory.states.T
    assert trajectory.energy[0] == pytest.approx(-0.5, abs=1e-15)
    assert relative_drift(trajectory.energy, 0.5) <= 1e-12
    momentum = q0 * p1 - q1 * p0
    assert np.max(np.abs(momentum - 0.8)) <= 1e-5
    # After one period of 2 pi the orbit is back at its start, up to the O(h^2) phase error.
    assert np.allclose(trajectory.state, [0.4, 0.0, 0.0, 2.0], atol=1e-2)


def test_kepler_period() -> None:
    kepler = compiled("kepler")
    trajectory = kepler.integrate("gonzalez", kepler.system.step, 32_000)
    # q_1 rises through zero at each pericenter passage, where q_1'' = 0.
    crossings = downward_crossings(trajectory.times, -trajectory.states[:, 1])
    assert len(crossings) == 10
    period = (crossings[-1] - crossings[0]) / (len(crossings) - 1)
    assert period == pytest.approx(2 * math.pi, rel=1e-5)


def test_lotka_volterra_invariant_and_orbit(lotka_volterra: CompiledSystem) -> None:
    step = lotka_volterra.system.step
    trajectory = lotka_volterra.integrate("mean-value", step, 2_000)
    assert relative_drift(trajectory.energy, 2.0) <= 1e-13

    def field(t: float, x: np.ndarray) -> list[float]:
        return [x[0] * (x[1] - 2), x[1] * (1 - x[0])]

    reference = solve_ivp(
        field, (0, 20), [1.0, 1.0], "DOP853", t_eval=trajectory.times, rtol=1e-12, atol=1e-12
    )
    assert np.max(np.abs(reference.y.T - trajectory.states)) <= 1e-3


def test_duffing_matches_elliptic_solution() -> None:
    duffing = compiled("duffing")
    q0 = 1.0
    frequency = math.sqrt(1 + q0**2)
    parameter = q0**2 / (2 * (1 + q0**2))
    trajectory = duffing.integrate("mean-value", duffing.system.step, 10_000)
    cn = ellipj(frequency * trajectory.times, parameter)[1]
    assert np.max(np.abs(trajectory.states[:, 0] - q0 * cn)) <= 5e-6


def test_fourth_order_error_ratio() -> None:
    duffing = compiled("duffing")
    q0 = 1.0
    frequency = math.sqrt(1 + q0**2)
    parameter = q0**2 / (2 * (1 + q0**2))
    errors = {}
    for method in ("mean-value", "mean-value-4"):
        for step in (0.05, 0.025):
            trajectory = duffing.integrate(method, step, round(10 / step))
            cn = ellipj(frequency * trajectory.times, parameter)[1]
            errors[method, step] = np.max(np.abs(trajectory.states[:, 0] - q0 * cn))
    assert 3.5 <= errors["mean-value", 0.05] / errors["mean-value", 0.025] <= 4.5
    assert 14 <= errors["mean-value-4", 0.05] / errors["mean-value-4", 0.025] <= 18


def test_damped_energy_decreases_every_step() -> None:
    damped = compiled("damped_oscillator")
    trajectory = damped.integrate("mean-value", damped.system.step, 5_000)
    assert np.all(np.diff(trajectory.energy) < 0)

    def field(t: float, x: np.ndarray) -> list[float]:
        return [x[1], -x[0] - 0.1 * x[1]]

    reference = solve_ivp(
        field, (0, 50), [1.0, 0.0], "DOP853", t_eval=trajectory.times, rtol=1e-12, atol=1e-12
    )
    assert np.max(np.abs(reference.y.T - trajectory.states)) <= 1e-4


@pytest.mark.parametrize("method", SYSTEM_METHODS[:4])
def test_jacobian_matches_finite_differences(lotka_volterra: CompiledSystem, method: str) -> None:
    x = np.array([0.8, 1.7])
    y = np.array([0.9, 1.5])
    h = 0.3
    _, jacobian = lotka_volterra.newton_system(method, x, y, h)
    delta = 1e-6
    for k in range(2):
        shift = np.zeros(2)
        shift[k] = delta
        plus, _ = lotka_volterra.newton_system(method, x, y + shift, h)
        minus, _ = lotka_volterra.newton_system(method, x, y - shift, h)
        column = (plus - minus) / (2 * delta)
        assert np.allclose(jacobian[:, k], column, rtol=1e-7, atol=1e-8), (k, jacobian, column)


def test_fourth_order_jacobian_matches_finite_differences() -> None:
    kepler = compiled("kepler")
    x = np.array([0.4, 0.1, 0.2, 1.9])
    y = np.array([0.45, 0.2, 0.1, 1.8])
    h = 0.2
    _, jacobian = kepler.newton_system("mean-value-4", x, y, h)
    delta = 1e-6
    for k in range(4):
        shift = np.zeros(4)
        shift[k] = delta
        plus, _ = kepler.newton_system("mean-value-4", x, y + shift, h)
        minus, _ = kepler.newton_system("mean-value-4", x, y - shift, h)
        column = (plus - minus) / (2 * delta)
        assert np.allclose(jacobian[:, k], column, rtol=1e-7, atol=1e-8), (k, jacobian, column)


def test_chunks_do_not_change_trajectory(pendulum: CompiledSystem, monkeypatch) -> None:
    whole = pendulum.integrate("mean-value", 0.01, 100, save_every=3)
    monkeypatch.setattr(integrate, "CHUNK_STEPS", 7)
    chunked = pendulum.integrate("mean-value", 0.01, 100, save_every=3, show_progress=True)
    assert np.array_equal(whole.states, chunked.states)
    assert np.array_equal(whole.times, chunked.times)
    assert np.array_equal(whole.energy, chunked.energy)
    assert whole.newton_updates == chunked.newton_updates
    assert len(chunked.times) == 100 // 3 + 2
    assert chunked.times[-1] == pytest.approx(1.0)


def test_interrupt_keeps_trajectory(pendulum: CompiledSystem, monkeypatch) -> None:
    loop = pendulum.integrator.integrate_mean_value
    calls = []

    def interrupted(*arguments):
        calls.append(arguments)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loop(*arguments)

    proxy = types.SimpleNamespace(integrate_mean_value=interrupted)
    system = CompiledSystem.__new__(CompiledSystem)
    system.system, system.integrator, system.kernels = pendulum.system, proxy, pendulum.kernels
    monkeypatch.setattr(integrate, "CHUNK_STEPS", 10)
    trajectory = system.integrate("mean-value", 0.01, 100)
    assert not trajectory.converged
    assert trajectory.steps == 10
    assert trajectory.message.startswith("interrupted after 10 of 100 steps")
    assert len(trajectory.states) == 11


def test_singular_newton_matrix_is_detected(pendulum: CompiledSystem) -> None:
    rhs = np.ones(2)
    _, solved = pendulum.integrator._solve(np.zeros((2, 2)), rhs)
    assert solved is False
    update, solved = pendulum.integrator._solve(2 * np.eye(2), rhs)
    assert solved is True
    assert np.array_equal(update, rhs / 2)


def test_failed_step_is_reported(lotka_volterra: CompiledSystem) -> None:
    trajectory = lotka_volterra.integrate("mean-value", 5.0, 50)
    assert not trajectory.converged
    assert trajectory.steps < 50
    assert f"step {trajectory.steps + 1} of 50 failed" in trajectory.message
    assert np.array_equal(trajectory.states[-1], trajectory.state)
    assert np.all(np.isfinite(trajectory.states))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"step": math.nan, "steps": 10}, "invalid step"),
        ({"step": -0.1, "steps": 10}, "invalid step"),
        ({"step": 0.1, "steps": 0}, "invalid steps"),
        ({"step": 0.1, "steps": 10, "save_every": 0}, "invalid save_every"),
        ({"step": 0.1, "steps": 10, "x0": [1.0]}, r"shape \(1,\), expected \(2,\)"),
        ({"step": 0.1, "steps": 10, "x0": [1.0, math.inf]}, "not finite"),
        ({"step": 0.1, "steps": 10**9}, "GiB; raise --save-every to at least 15"),
    ],
)
def test_bad_run_arguments(lotka_volterra: CompiledSystem, options: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        lotka_volterra.integrate("mean-value", **options)


def test_fourth_order_needs_constant_structure(lotka_volterra: CompiledSystem) -> None:
    with pytest.raises(SpecError, match="needs a constant structure matrix"):
        lotka_volterra.integrate("mean-value-4", 0.01, 10)


def test_cli_solve_writes_trajectory(tmp_path, capsys) -> None:
    path = tmp_path / "run.json"
    arguments = ["-q", "solve", str(EXAMPLES / "pendulum.py"), "--steps", "1001"]
    arguments += ["--save-every", "250", "--out", str(GENERATED / "pendulum")]
    assert main([*arguments, "--json", str(path)]) == 0
    document = json.loads(path.read_text())
    assert document["times"] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.001])
    assert len(document["states"]) == 6
    assert len(document["energy"]) == 6
    assert document["converged"] is True
    assert document["step"] == 0.001
    assert document["state"]["q"] == pytest.approx(document["states"][-1][0])
    assert "took 1001 steps" in capsys.readouterr().out


def test_cli_solve_reports_failed_step(capsys) -> None:
    arguments = ["-q", "solve", str(EXAMPLES / "lotka_volterra.py"), "--steps", "50"]
    arguments += ["--step", "5", "--out", str(GENERATED / "lotka_volterra")]
    assert main(arguments) == 3
    assert "step 2 of 50 failed" in capsys.readouterr().out


def test_cli_solve_rejects_misplaced_options(capsys) -> None:
    system = ["-q", "solve", str(EXAMPLES / "pendulum.py")]
    assert main(system) == 1
    assert "--steps N is required" in capsys.readouterr().err
    loss = ["-q", "solve", str(EXAMPLES / "rosenbrock.py"), "--steps", "10"]
    assert main(loss) == 1
    assert "--steps applies to a dg.System" in capsys.readouterr().err
    assert main(["-q", "solve", str(EXAMPLES / "rosenbrock.py"), "--method", "mean-value-4"]) == 1
    assert "integrates a dg.System" in capsys.readouterr().err


def test_cli_verify_system(tmp_path, capsys) -> None:
    path = tmp_path / "certificate.json"
    arguments = ["-q", "verify", str(EXAMPLES / "damped_oscillator.py"), "--json", str(path)]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert "structure matrix: negative semidefinite, constant" in output
    assert "H(y) <= H(x)" in output
    document = json.loads(path.read_text())
    assert document["passed"] is True
    assert document["structure"].startswith("negative semidefinite")


def test_gradient_flow_is_the_loss_step() -> None:
    loss = load_spec(EXAMPLES / "rosenbrock.py")
    system = dg.System(
        energy=loss.free_term,
        structure=-sp.eye(2),
        initial={"x": [-1.2, 1.0]},
        name="rosenbrock_flow",
    )
    assert system.classification.kind == NEGATIVE_SEMIDEFINITE
    step = 1e-3
    compiled_flow = compile_system(system)
    trajectory = compiled_flow.integrate("mean-value", step, 20)
    assert trajectory.converged
    for x, y in zip(trajectory.states[:-1], trajectory.states[1:]):
        # S = -I turns the step into the loss step y = x - tau DG(x, y) with tau = h.
        residual = y - x + step * compiled_flow.kernels.dg_mean_value(x, y)
        assert np.max(np.abs(residual)) <= 1e-12
    assert np.all(np.diff(trajectory.energy) < 0)


def test_regenerated_package_is_reloaded(tmp_path) -> None:
    structures = ([[0, 1], [-1, 0]], [[0, 2], [-2, -1]])
    for structure in structures:
        q, p = dg.state("q"), dg.state("p")
        system = dg.System(energy=(q**2 + p**2) / 2, structure=structure, name="oscillator")
        integrator = compile_system(system, tmp_path / "oscillator").integrator
        assert integrator.structure(np.zeros(2)).tolist() == structure
