"""Wall-clock timing shared by the runtime, the quick start and the benchmarks."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def measure(fn: Callable[[], object], *, warmup: int = 5, repeat: int = 50) -> list[float]:
    """Seconds per call of ``fn`` for ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3
