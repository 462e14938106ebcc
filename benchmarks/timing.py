"""Timing and machine description shared by the benchmark sections."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np


def time_call(function: Callable[[], Any], min_seconds: float = 0.05) -> float:
    """Return the mean time of one call of `function`, over enough calls to last `min_seconds`."""
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            function()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds or calls >= 1 << 20:
            return elapsed / calls
        calls = max(calls * 2, int(calls * min_seconds / max(elapsed, 1e-9)) + 1)


def best_times(
    functions: dict[str, Callable[[], Any]], repeats: int, min_seconds: float = 0.05
) -> dict[str, float]:
    """Return the minimum over `repeats` rounds of the time per call of each function.

    The functions are timed in turns within each round, so a change of machine load during
    the run affects all of them alike, and their ratios stay meaningful.
    """
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            best[name] = min(best[name], time_call(function, min_seconds))
    return best


@numba.njit(parallel=True, cache=True)
def _parallel_sum(values: np.ndarray) -> float:
    total = 0.0
    for i in numba.prange(values.size):
        total += values[i]
    return total


def memory_bandwidth(repeats: int, size: int = 1 << 25) -> dict[str, float]:
    """Measure the read bandwidth in GB/s of summing a float64 array of `size` entries.

    Returns the bandwidth of `numpy.sum` (one thread) and of a Numba `prange` sum over all
    cores. The default size, 256 MiB, is far larger than any cache.
    """
    values = np.random.default_rng(0).standard_normal(size)
    _parallel_sum(values[:16])
    times = best_times(
        {"numpy": lambda: values.sum(), "numba": lambda: _parallel_sum(values)}, repeats
    )
    return {name: values.nbytes / seconds / 1e9 for name, seconds in times.items()}


def blas_description() -> str:
    """Return the BLAS libraries NumPy uses, with their versions and thread counts."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    libraries = [
        f"{info.get('internal_api')} {info.get('version')} ({info.get('num_threads')} threads)"
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return ", ".join(sorted(set(libraries))) or "none found"


def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _threading_layer() -> str:
    """Return the threading layer Numba chose, once a parallel kernel has run."""
    try:
        return numba.threading_layer()
    except ValueError:
        return f"{numba.config.THREADING_LAYER} (no parallel kernel has run yet)"


def machine_description() -> list[tuple[str, str]]:
    """Return (item, value) pairs describing the machine and the library versions."""
    import scipy
    import sympy

    rows = [
        ("processor", _processor_name()),
        ("cores", f"{os.cpu_count()} (Numba threads: {numba.get_num_threads()})"),
        ("Python", platform.python_version()),
        ("NumPy", np.__version__),
        ("SciPy", scipy.__version__),
        ("SymPy", sympy.__version__),
        ("Numba", f"{numba.__version__}, threading layer {_threading_layer()}"),
        ("BLAS", blas_description()),
    ]
    try:
        import jax

        rows.append(("JAX", jax.__version__))
    except ImportError:
        rows.append(("JAX", "not installed"))
    return rows


def format_ratio(value: float) -> str:
    """Format a time ratio with two significant digits."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """Return a Markdown table.

    `align` has one 'l' (left) or 'r' (right) per column, and defaults to 'l' then all 'r'.
    """
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
