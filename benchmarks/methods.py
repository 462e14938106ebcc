"""Optimisers the discrete gradient method is compared with, each recording a trace.

Every method takes the same compiled loss and gradient and records `(seconds, loss)` after
each step into a `Trace`. A trace ends when the loss gap reaches its target, the step limit
or the time budget, so no method pays for steps after the target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dgcodegen.errors import SolverError
from dgcodegen.stepper import StepperOptions, discrete_gradient_descent

Vector = np.ndarray


class _Stop(Exception):
    """Raised inside a callback to end a run early."""


@dataclass
class Trace:
    """Loss after each step of one run, with the wall time since the run started."""

    target: float
    budget: float
    max_steps: int
    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    failure: str | None = None

    def record(self, loss: float) -> None:
        """Store the loss after a step, and raise `_Stop` once the run should end."""
        elapsed = time.perf_counter() - self.started
        self.seconds.append(elapsed)
        self.losses.append(float(loss))
        if self.reached or not math.isfinite(loss):
            raise _Stop
        if elapsed > self.budget or len(self.losses) > self.max_steps:
            raise _Stop

    @property
    def reached(self) -> bool:
        return bool(self.losses) and self.losses[-1] <= self.target

    @property
    def steps(self) -> int:
        """Number of steps taken; the first record is the starting point."""
        return len(self.losses) - 1

    @property
    def time(self) -> float:
        return self.seconds[-1] if self.seconds else math.inf


def run_traced(
    method: Callable[[Trace], None], target: float, budget: float, max_steps: int
) -> Trace:
    """Run `method(trace)` until it returns or stops, and return the trace."""
    trace = Trace(target, budget, max_steps)
    try:
        method(trace)
    except _Stop:
        pass
    except (SolverError, FloatingPointError, np.linalg.LinAlgError) as error:
        trace.failure = str(error)
    return trace


@dataclass
class Problem:
    """Loss, gradient, Hessian and discrete gradients of a compiled problem."""

    name: str
    loss: Callable[[Vector], float]
    gradient: Callable[[Vector], Vector]
    hessian: Callable[[Vector], Vector]
    discrete_gradient: Callable[[str], Callable[[Vector, Vector], Vector]]
    jacobian: Callable[[str], Callable[[Vector, Vector], Vector]]
    x0: Vector
    lipschitz: float
    optimum: float


def discrete_gradient(problem: Problem, method: str, options: StepperOptions) -> Callable:
    """Return a runner of `discrete_gradient_descent` with the named discrete gradient."""
    dg, jacobian = problem.discrete_gradient(method), problem.jacobian(method)

    def run(trace: Trace) -> None:
        trace.record(problem.loss(problem.x0))
        discrete_gradient_descent(
            problem.loss,
            problem.gradient,
            dg,
            jacobian,
            problem.x0,
            options,
            lambda steps, loss, tau: trace.record(loss),
        )

    return run


def gradient_descent(problem: Problem, step: float) -> Callable:
    """Return a runner of gradient descent `x <- x - step grad V(x)`."""

    def run(trace: Trace) -> None:
        x = problem.x0.copy()
        trace.record(problem.loss(x))
        while True:
            x = x - step * problem.gradient(x)
            trace.record(problem.loss(x))

    return run


def nesterov(problem: Problem) -> Callable:
    """Return a runner of Nesterov's accelerated gradient with step 1/L and gradient restart.

    The momentum restarts when the step goes against the gradient, the adaptive restart of
    O'Donoghue and Candes (2015), which keeps the method from oscillating on strongly convex
    losses without knowing their strong convexity constant.
    """
    step = 1.0 / problem.lipschitz

    def run(trace: Trace) -> None:
        x = problem.x0.copy()
        previous = x.copy()
        trace.record(problem.loss(x))
        k = 0
        while True:
            k += 1
            lookahead = x + (k - 1) / (k + 2) * (x - previous)
            gradient = problem.gradient(lookahead)
            previous, x = x, lookahead - step * gradient
            if gradient @ (x - previous) > 0:
                k = 0
            trace.record(problem.loss(x))

    return run


def adam(problem: Problem, rate: float) -> Callable:
    """Return a runner of Adam with learning rate `rate` and the default betas (0.9, 0.999)."""
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    def run(trace: Trace) -> None:
        x = problem.x0.copy()
        first = np.zeros_like(x)
        second = np.zeros_like(x)
        trace.record(problem.loss(x))
        k = 0
        while True:
            k += 1
            gradient = problem.gradient(x)
            first = beta1 * first + (1 - beta1) * gradient
            second = beta2 * second + (1 - beta2) * gradient * gradient
            corrected = first / (1 - beta1**k)
            x = x - rate * corrected / (np.sqrt(second / (1 - beta2**k)) + epsilon)
            trace.record(problem.loss(x))

    return run


def lbfgs(problem: Problem) -> Callable:
    """Return a runner of SciPy's L-BFGS-B, stopped by its callback at the target."""
    from scipy.optimize import minimize

    def run(trace: Trace) -> None:
        trace.record(problem.loss(problem.x0))

        def callback(intermediate_result) -> None:
            try:
                trace.record(intermediate_result.fun)
            except _Stop:
                raise StopIteration from None

        minimize(
            lambda x: (problem.loss(x), problem.gradient(x)),
            problem.x0,
            jac=True,
            method="L-BFGS-B",
            callback=callback,
            options={"ftol": 0.0, "gtol": 0.0, "maxiter": trace.max_steps},
        )

    return run


def newton(problem: Problem) -> Callable:
    """Return a runner of Newton's method with a backtracking (Armijo) line search."""

    def run(trace: Trace) -> None:
        x = problem.x0.copy()
        value = problem.loss(x)
        trace.record(value)
        while True:
            gradient = problem.gradient(x)
            direction = -np.linalg.solve(problem.hessian(x), gradient)
            slope = gradient @ direction
            scale = 1.0
            while True:
                candidate = x + scale * direction
                candidate_value = problem.loss(candidate)
                if candidate_value <= value + 1e-4 * scale * slope or scale < 1e-10:
                    break
                scale *= 0.5
            x, value = candidate, candidate_value
            trace.record(value)

    return run
