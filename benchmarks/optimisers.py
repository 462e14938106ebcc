"""Optimiser section: time and steps to `V - V* <= 1e-10 |V*|` on two logistic regressions.

Each tuned method (gradient descent's step, Adam's rate, the discrete gradients' tau) runs
once per setting of a grid. The setting that reaches the target first is then timed
`repeats` times and the fastest run is reported. All methods use the same generated loss,
gradient and Hessian kernels, with Numba and BLAS limited to one thread: the problems have
a few hundred samples, so threads cost more than they save.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from dgcodegen.runtime import METHODS, compile_problem
from dgcodegen.stepper import StepperOptions

from . import methods
from .methods import Problem, Trace, run_traced
from .problems import ERRS_OPTIMUM, compiled_breast_cancer, errs_spec
from .timing import format_ratio, markdown_table

log = logging.getLogger("dgcodegen.benchmarks")

RELATIVE_GAP = 1e-10
"""A run has reached the optimum when `V - V* <= RELATIVE_GAP * |V*|`."""

DG_STEP_FACTORS = (10.0, 30.0, 100.0, 300.0, 1000.0)
"""Step sizes tau of the discrete gradient runs, in units of gradient descent's bound 2/L."""

GD_STEP_FACTORS = (0.5, 0.7, 0.9, 0.99)
"""Step sizes of gradient descent, in units of its bound 2/L."""

DG_CYCLES = ((1.0, 4.0), (10.0, 4.0), (10.0, 8.0), (30.0, 4.0))
"""(first tau in units of 2/L, growth) of the "cycle" schedule runs, which restart from the
first tau once tau would pass `CYCLE_MAX_STEP`."""

CYCLE_MAX_STEP = 2.0
"""Largest tau of the "cycle" runs: `2 / mu` for `mu = 1`, the curvature of the regulariser
`|w|^2 / 2` that both problems share and a lower bound of the Hessian's eigenvalues in w."""

ADAM_RATES = (1e-3, 1e-2, 1e-1, 1.0)

BREAKDOWN_KINDS = (
    "discrete gradient",
    "Jacobian",
    "loss and gradient",
    "rest: inverses, line search, Python",
)


@dataclass
class Result:
    """Best run of one method on one problem.

    `breakdown` maps each kind of call of a discrete gradient run to (calls, seconds), from
    one more run of the best setting with every callable timed.
    """

    method: str
    setting: str
    trace: Trace
    breakdown: dict[str, tuple[int, float]] | None = None


class _Timed:
    """Callable that counts the calls of `function` and adds up their wall time."""

    def __init__(self, function: Callable) -> None:
        self.function = function
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, *arguments: np.ndarray) -> object:
        started = time.perf_counter()
        value = self.function(*arguments)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return value


def _breakdown(
    problem: Problem, method: str, setting: str, target: float, budget: float, quick: bool
) -> dict[str, tuple[int, float]]:
    """Rerun a discrete gradient setting with timed callables and split its time by kind."""
    dg_method = method.removeprefix("DG ")
    timed = {
        "loss and gradient": (_Timed(problem.loss), _Timed(problem.gradient)),
        "discrete gradient": _Timed(problem.discrete_gradient(dg_method)),
        "Jacobian": _Timed(problem.jacobian(dg_method)),
    }
    instrumented = dataclasses.replace(
        problem,
        loss=timed["loss and gradient"][0],
        gradient=timed["loss and gradient"][1],
        discrete_gradient=lambda name: timed["discrete gradient"],
        jacobian=lambda name: timed["Jacobian"],
    )
    runner = _candidates(instrumented, (dg_method,), quick)[method][setting]
    trace = run_traced(runner, target, budget, 10**9)
    loss_calls, gradient_calls = timed["loss and gradient"]
    parts = {
        "loss and gradient": (
            loss_calls.calls + gradient_calls.calls,
            loss_calls.seconds + gradient_calls.seconds,
        ),
        "discrete gradient": (timed["discrete gradient"].calls, timed["discrete gradient"].seconds),
        "Jacobian": (timed["Jacobian"].calls, timed["Jacobian"].seconds),
    }
    kernels = sum(seconds for _, seconds in parts.values())
    parts["rest: inverses, line search, Python"] = (0, max(trace.time - kernels, 0.0))
    parts["total"] = (trace.steps, trace.time)
    return parts


@contextmanager
def single_thread() -> None:
    """Limit Numba and BLAS to one thread inside the block."""
    from threadpoolctl import threadpool_limits

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(threads)


def _optimum(compiled, x0: np.ndarray) -> float:
    """Return `V*` from Newton's method run to rounding level from L-BFGS-B's solution."""
    from scipy.optimize import minimize

    x = minimize(
        lambda v: (compiled.loss(v), compiled.gradient(v)),
        x0,
        jac=True,
        method="L-BFGS-B",
        options={"ftol": 0.0, "gtol": 1e-10, "maxiter": 10_000},
    ).x
    for _ in range(5):
        x = x - np.linalg.solve(compiled.hessian(x), compiled.gradient(x))
    return compiled.loss(x)


def build_problem(name: str, compiled, dg_methods: tuple[str, ...]) -> Problem:
    """Wrap a compiled problem, with its curvature bound L and optimum V*."""
    x0 = compiled.problem.initial_point
    for method in dg_methods:
        compiled.jacobian(method)(x0, x0 + 1e-3)
        compiled.discrete_gradient(method)(x0, x0 + 1e-3)
    compiled.hessian(x0)
    # sigmoid' <= 1/4 with equality at 0, so the Hessian at 0 bounds it everywhere.
    lipschitz = float(np.linalg.eigvalsh(compiled.hessian(np.zeros_like(x0))).max())
    return Problem(
        name,
        compiled.loss,
        compiled.gradient,
        compiled.hessian,
        compiled.discrete_gradient,
        compiled.jacobian,
        x0,
        lipschitz,
        _optimum(compiled, x0),
    )


def _candidates(problem: Problem, dg_methods: tuple[str, ...], quick: bool) -> dict:
    """Return {method: {setting: runner}} for every method and setting of its grid."""
    bound = 2.0 / problem.lipschitz
    factors = DG_STEP_FACTORS[1:4] if quick else DG_STEP_FACTORS
    candidates: dict[str, dict[str, Callable]] = {}
    for method in dg_methods:
        # An Itoh-Abe Jacobian costs n times the other discrete gradients' Jacobians, so those
        # methods get the settings that were fastest for the others only.
        slow = method.startswith("itoh-abe")
        step_factors = (100.0,) if slow else factors
        if slow:
            cycles = DG_CYCLES[:2]
        elif quick:
            cycles = DG_CYCLES[1:3]
        else:
            cycles = DG_CYCLES
        settings = {
            f"tau = {f:g} x 2/L": StepperOptions(step=f * bound, tol=0.0, max_steps=10**9)
            for f in step_factors
        }
        for first, growth in cycles:
            settings[f"cycle: tau = {first:g} x 2/L, x {growth:g} to {CYCLE_MAX_STEP:g}"] = (
                StepperOptions(
                    step=first * bound,
                    schedule="cycle",
                    growth=growth,
                    max_step=CYCLE_MAX_STEP,
                    tol=0.0,
                    max_steps=10**9,
                )
            )
        candidates[f"DG {method}"] = {
            label: methods.discrete_gradient(problem, method, options)
            for label, options in settings.items()
        }
    candidates["gradient descent"] = {
        f"step = {f:g} x 2/L": methods.gradient_descent(problem, f * bound) for f in GD_STEP_FACTORS
    }
    candidates["Nesterov (restart)"] = {"step = 1/L": methods.nesterov(problem)}
    candidates["Adam"] = {f"rate = {r:g}": methods.adam(problem, r) for r in ADAM_RATES}
    candidates["SciPy L-BFGS-B"] = {"defaults, ftol = gtol = 0": methods.lbfgs(problem)}
    candidates["Newton + line search"] = {"Armijo backtracking": methods.newton(problem)}
    return candidates


def _score(trace: Trace) -> tuple[int, float]:
    """Sort key: runs that reached the target by time, then the others by final loss."""
    return (0, trace.time) if trace.reached else (1, min(trace.losses, default=math.inf))


def run_problem(
    problem: Problem, dg_methods: tuple[str, ...], repeats: int, budget: float, quick: bool
) -> list[Result]:
    """Tune and time every method on `problem`, and return the best run of each."""
    target = problem.optimum + RELATIVE_GAP * abs(problem.optimum)
    max_steps = 20_000 if quick else 500_000
    results = []
    for method, settings in _candidates(problem, dg_methods, quick).items():
        started = time.perf_counter()
        tried = {s: run_traced(r, target, budget, max_steps) for s, r in settings.items()}
        setting = min(tried, key=lambda s: _score(tried[s]))
        best = tried[setting]
        if best.reached:
            for _ in range(repeats - 1):
                again = run_traced(settings[setting], target, budget, max_steps)
                if again.reached and again.time < best.time:
                    best = again
        result = Result(method, setting, best)
        if method.startswith("DG") and best.reached:
            result.breakdown = _breakdown(problem, method, setting, target, budget, quick)
        results.append(result)
        log.info(
            "%s on %s: %s in %.1f s", method, problem.name, setting, time.perf_counter() - started
        )
    return results


def run(repeats: int, quick: bool, checked_in: bool) -> dict[str, tuple[Problem, list[Result]]]:
    """Run the section on both problems, or with `quick` on breast cancer with mean-value only."""
    dg_methods = ("mean-value",) if quick else METHODS
    budget = 2.0 if quick else 30.0
    compiled = {
        "breast cancer (569 x 30, bias)": compiled_breast_cancer(
            checked_in=checked_in, methods=dg_methods
        )
    }
    if not quick:
        compiled["Ehrhardt et al. (200 x 100)"] = compile_problem(errs_spec(), methods=dg_methods)
    output = {}
    with single_thread():
        for name, problem_kernels in compiled.items():
            problem = build_problem(name, problem_kernels, dg_methods)
            output[name] = (problem, run_problem(problem, dg_methods, repeats, budget, quick))
    return output


def _reference(results: list[Result]) -> Trace:
    return next(r.trace for r in results if r.method == "SciPy L-BFGS-B")


def dg_ratio(results: list[Result]) -> tuple[str, float]:
    """Return the fastest discrete gradient method and its time over L-BFGS-B's time."""
    reached = [r for r in results if r.method.startswith("DG") and r.trace.reached]
    reference = _reference(results)
    if not reached or not reference.reached:
        return "none", math.inf
    best = min(reached, key=lambda r: r.trace.time)
    return best.method, best.trace.time / reference.time


def markdown(output: dict[str, tuple[Problem, list[Result]]], plots: dict[str, str]) -> str:
    """Return one table and one plot per problem, and the target ratio of each."""
    lines = []
    for name, (problem, results) in output.items():
        reference = _reference(results)
        rows = []
        for result in sorted(results, key=lambda r: _score(r.trace)):
            trace = result.trace
            gap = (min(trace.losses) - problem.optimum) / abs(problem.optimum)
            reached = trace.reached
            rows.append(
                (
                    result.method,
                    result.setting,
                    f"{trace.steps:,}" if reached else f"not in {trace.steps:,}",
                    f"{trace.time * 1e3:.1f}" if reached else f"> {trace.time * 1e3:.0f}",
                    format_ratio(trace.time / reference.time) if reached else "n/a",
                    f"{gap:.1e}",
                )
            )
        best, ratio = dg_ratio(results)
        verdict = "met" if ratio <= 1 else "NOT met"
        lines += [
            f"### {name}",
            "",
            (
                f"`V* = {problem.optimum:.12f}`, `V(x0) = {problem.loss(problem.x0):.10f}`, "
                f"`L = {problem.lipschitz:.6g}` (largest eigenvalue of the Hessian at 0), "
                f"gradient descent's bound `2/L = {2 / problem.lipschitz:.4g}`."
                + _published_optimum(name, problem.optimum)
            ),
            "",
            markdown_table(
                (
                    "method",
                    "best setting",
                    "steps",
                    "ms to target",
                    "time / L-BFGS-B",
                    "final rel. gap",
                ),
                rows,
            ),
            "",
            (
                f"- fastest discrete gradient ({best}) / L-BFGS-B: **{ratio:.2g}** "
                f"(target <= 1): {verdict}."
            ),
            _limit_sentence(results, best),
            "",
            f"![loss against time and steps, {name}]({plots[name]})",
            "",
        ]
        lines += [_breakdown_table(results), ""]
    return "\n".join(lines)


def _limit_sentence(results: list[Result], best: str) -> str:
    """Return what the fastest discrete gradient run spends its time on, from its breakdown."""
    result = next((r for r in results if r.method == best), None)
    if result is None or result.breakdown is None:
        return ""
    reference = _reference(results)
    steps, total = result.breakdown["total"]
    dg_calls, dg_seconds = result.breakdown["discrete gradient"]
    jacobian_calls, jacobian_seconds = result.breakdown["Jacobian"]
    return (
        f"- what limits it: {steps} steps against {reference.steps} L-BFGS-B iterations, and "
        f"each step solves its implicit equation to the default Newton tolerance "
        f"(`newton_rtol = 1e-10`) with {dg_calls / max(steps, 1):.1f} discrete gradient "
        f"evaluations ({100 * dg_seconds / total:.0f}% of the time) and "
        f"{jacobian_calls / max(steps, 1):.2f} Jacobian evaluations "
        f"({100 * jacobian_seconds / total:.0f}%) per step, where L-BFGS-B needs one loss and "
        "gradient evaluation per iteration."
    )


def _published_optimum(name: str, optimum: float) -> str:
    if "Ehrhardt" not in name:
        return ""
    difference = abs(optimum - ERRS_OPTIMUM) / ERRS_OPTIMUM
    return (
        f" The published `V* = {ERRS_OPTIMUM}` differs from the computed one by {difference:.1e}."
    )


def _breakdown_table(results: list[Result]) -> str:
    """Return where the time of each discrete gradient run goes."""
    rows = []
    for result in results:
        if result.breakdown is None:
            continue
        total = result.breakdown["total"][1]
        cells = [result.method, f"{result.breakdown['total'][0]}", f"{total * 1e3:.1f}"]
        for kind in BREAKDOWN_KINDS:
            calls, seconds = result.breakdown[kind]
            count = f"{calls} calls, " if calls else ""
            cells.append(f"{count}{100 * seconds / total:.0f}%")
        rows.append(cells)
    if not rows:
        return ""
    header = ("discrete gradient run", "steps", "ms (timed run)", *BREAKDOWN_KINDS)
    return (
        "Where the time of the discrete gradient runs goes, from one more run of each best "
        "setting with every kernel call timed:\n\n" + markdown_table(header, rows)
    )


def plot(problem: Problem, results: list[Result], path: Path) -> None:
    """Plot the relative loss gap against wall time and against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_step) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor = RELATIVE_GAP / 100
    for result in results:
        trace = result.trace
        gap = np.maximum((np.array(trace.losses) - problem.optimum) / abs(problem.optimum), floor)
        style = "-" if result.method.startswith("DG") else "--"
        by_time.plot(np.array(trace.seconds) * 1e3, gap, style, label=result.method)
        by_step.plot(np.arange(len(gap)), gap, style, label=result.method)
    for axes, label in ((by_time, "wall time (ms)"), (by_step, "steps")):
        axes.set_xscale("symlog", linthresh=1.0 if axes is by_step else 0.1)
        axes.set_yscale("log")
        axes.axhline(RELATIVE_GAP, color="black", linewidth=0.8)
        axes.set_xlabel(label)
        axes.set_ylabel("(V - V*) / |V*|")
    by_step.legend(fontsize=7)
    figure.suptitle(problem.name)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
