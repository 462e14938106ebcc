"""Time the generated and hand-written logistic-regression kernels under one OpenMP policy.

`OMP_WAIT_POLICY=PASSIVE python -m benchmarks.wait_policy` and the same with ACTIVE print
the best of 5 calls of each kernel on 1,000,000 samples with 30 features. The policy is
read once per process, so each run measures one policy; `python -m benchmarks` uses
PASSIVE.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from benchmarks import handwritten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_of(function, repeats: int = 5) -> float:
    """Return the shortest of `repeats` timed calls, in seconds, after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    from dgcodegen.runtime import load_kernels

    generator = np.random.default_rng(0)
    x = generator.normal(size=(1_000_000, 30))
    y = np.sign(generator.normal(size=1_000_000))
    theta = 0.1 * generator.normal(size=31)
    kernels = load_kernels(os.path.join(ROOT, "generated", "logistic_regression"))
    column = np.ascontiguousarray(y.reshape(-1, 1))
    generated = best_of(lambda: kernels.loss_gradient(theta, x, column))
    hand = best_of(lambda: handwritten.loss_and_gradient(theta, x, y))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(
        f"OMP_WAIT_POLICY {policy}: generated {generated * 1e3:.1f} ms, hand-written Numba "
        f"{hand * 1e3:.1f} ms, generated / hand-written {generated / hand:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
