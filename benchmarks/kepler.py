"""Kepler problem over many periods: dgcodegen's discrete gradient steps against SciPy.

The orbit of `examples/kepler.py` (eccentricity 0.6, `H = -1/2`, angular momentum 0.8,
period `2 pi`) is integrated for `--periods` periods with every step method of the
generated package, at `--steps-per-period` steps per period, and with SciPy's
`solve_ivp` (DOP853 and Radau). Each row reports the wall time without compilation, the
steps per second, and the final errors of `H`, of the angular momentum and of the
position. The exact orbit is back at its start after a whole number of periods, so the
position error is `|q(T) - q(0)|`.

Run from the repository root::

    python -m benchmarks.kepler [--periods 1000] [--steps-per-period 3000]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy
from scipy.integrate import solve_ivp

from dgcodegen.dsl import load_spec
from dgcodegen.integrate import SYSTEM_METHODS, CompiledSystem, load_integrator

ROOT = Path(__file__).resolve().parent.parent
ENERGY = -0.5
ANGULAR_MOMENTUM = 0.8
START = np.array([0.4, 0.0, 0.0, 2.0])

SCIPY_RUNS = (("DOP853", 1e-10), ("Radau", 1e-8))
"""SciPy methods and their `rtol`; `atol` equals `rtol`. Radau at 1e-10 took about 2 s per
10 periods in a trial on a 2-core machine, so the table uses 1e-8."""


@dataclass
class Row:
    """One run of the benchmark."""

    method: str
    step: str
    steps: int
    seconds: float
    energy_error: float
    momentum_error: float
    position_error: float

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf


def invariants(state: np.ndarray) -> tuple[float, float]:
    """Return `H` and the angular momentum `q_0 p_1 - q_1 p_0` of a state."""
    q0, q1, p0, p1 = state
    energy = (p0 * p0 + p1 * p1) / 2 - 1 / math.hypot(q0, q1)
    return energy, q0 * p1 - q1 * p0


def _row(method: str, step: str, steps: int, seconds: float, final: np.ndarray) -> Row:
    energy, momentum = invariants(final)
    return Row(
        method,
        step,
        steps,
        seconds,
        abs(energy - ENERGY) / abs(ENERGY),
        abs(momentum - ANGULAR_MOMENTUM) / ANGULAR_MOMENTUM,
        float(np.linalg.norm(final[:2] - START[:2])),
    )


def discrete_gradient_rows(periods: int, steps_per_period: int) -> list[Row]:
    """Integrate with every generated step method; mean-value-4 also at a 6 times larger step."""
    system = CompiledSystem(
        load_spec(ROOT / "examples" / "kepler.py"), load_integrator(ROOT / "generated" / "kepler")
    )
    runs = [(method, steps_per_period) for method in SYSTEM_METHODS]
    runs.append(("mean-value-4", steps_per_period // 6))
    rows = []
    for method, per_period in runs:
        step = 2 * math.pi / per_period
        steps = periods * per_period
        trajectory = system.integrate(method, step, steps, save_every=steps)
        if not trajectory.converged:
            raise RuntimeError(f"{method}: {trajectory.message}")
        label = f"2 pi / {per_period}"
        rows.append(_row(method, label, steps, trajectory.seconds, trajectory.state))
    return rows


def _field(t: float, x: np.ndarray) -> np.ndarray:
    q0, q1, p0, p1 = x
    cube = (q0 * q0 + q1 * q1) ** 1.5
    return np.array([p0, p1, -q0 / cube, -q1 / cube])


def _jacobian(t: float, x: np.ndarray) -> np.ndarray:
    q0, q1 = x[0], x[1]
    squared = q0 * q0 + q1 * q1
    cube = squared**1.5
    fifth = squared**2.5
    block = np.array(
        [
            [3 * q0 * q0 / fifth - 1 / cube, 3 * q0 * q1 / fifth],
            [3 * q0 * q1 / fifth, 3 * q1 * q1 / fifth - 1 / cube],
        ]
    )
    result = np.zeros((4, 4))
    result[0, 2] = result[1, 3] = 1.0
    result[2:, :2] = block
    return result


def scipy_rows(periods: int) -> list[Row]:
    """Integrate with SciPy's adaptive DOP853 and Radau (with the exact Jacobian)."""
    rows = []
    for method, rtol in SCIPY_RUNS:
        options = {"jac": _jacobian} if method == "Radau" else {}
        started = time.perf_counter()
        solution = solve_ivp(
            _field,
            (0.0, 2 * math.pi * periods),
            START,
            method=method,
            rtol=rtol,
            atol=rtol,
            **options,
        )
        seconds = time.perf_counter() - started
        if not solution.success:
            raise RuntimeError(f"{method}: {solution.message}")
        # Without t_eval, solution.t contains the start and every accepted step.
        steps = len(solution.t) - 1
        label = f"adaptive, rtol {rtol:g}"
        rows.append(_row(f"SciPy {method}", label, steps, seconds, solution.y[:, -1]))
    return rows


def run(periods: int = 1000, steps_per_period: int = 3000) -> list[Row]:
    """Run every method and return the rows of the table."""
    return discrete_gradient_rows(periods, steps_per_period) + scipy_rows(periods)


def format_table(rows: list[Row]) -> str:
    """Return the rows as a Markdown table."""
    header = (
        "| method | step | steps | wall time (s) | steps/s | rel. error of H | "
        "rel. error of L | position error |"
    )
    lines = [
        header,
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.method} | {row.step} | {row.steps:,} | {row.seconds:.2f} | "
            f"{row.steps_per_second:,.0f} | {row.energy_error:.1e} | "
            f"{row.momentum_error:.1e} | {row.position_error:.1e} |"
        )
    return "\n".join(lines)


def describe_machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"Numba {numba.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=1000, help="periods to integrate")
    parser.add_argument("--steps-per-period", type=int, default=3000, help="fixed steps per period")
    args = parser.parse_args()
    rows = run(args.periods, args.steps_per_period)
    print(f"Kepler, e = 0.6, {args.periods} periods; {describe_machine()}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
