"""Explicit optimisers to compare the discrete gradient method with, on the same kernels.

Only NumPy is used. Each optimiser records the loss and the wall time after every step, so
runs of different methods can be plotted against time as well as steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import SpecError

LossGradient = Callable[[np.ndarray], tuple[float, np.ndarray]]


@dataclass
class Trace:
    """Loss and elapsed wall time at the start and after each step of a run."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    x: np.ndarray | None = None
    diverged: bool = False


def adam(
    loss_gradient: LossGradient,
    x0: np.ndarray,
    rate: float,
    steps: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-8,
    target: float | None = None,
) -> Trace:
    """Run full-batch Adam (Kingma and Ba, 2015) and return its trace.

    Args:
        loss_gradient: returns the loss and its gradient at a point.
        x0: starting point.
        rate: learning rate, > 0.
        steps: number of steps.
        target: stop early once the loss is at most this value.

    The run stops early, with `diverged` set, when the loss becomes non-finite.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise SpecError(f"invalid Adam rate {rate!r}: expected a finite number > 0")
    started = time.perf_counter()
    x = np.array(x0, dtype=float)
    first = np.zeros_like(x)
    second = np.zeros_like(x)
    value, gradient = loss_gradient(x)
    trace = Trace([float(value)], [0.0])
    for step in range(1, steps + 1):
        first = beta1 * first + (1.0 - beta1) * gradient
        second = beta2 * second + (1.0 - beta2) * gradient * gradient
        corrected_first = first / (1.0 - beta1**step)
        corrected_second = second / (1.0 - beta2**step)
        x = x - rate * corrected_first / (np.sqrt(corrected_second) + epsilon)
        value, gradient = loss_gradient(x)
        trace.loss.append(float(value))
        trace.seconds.append(time.perf_counter() - started)
        if not math.isfinite(value):
            trace.diverged = True
            break
        if target is not None and value <= target:
            break
    trace.x = x
    return trace
