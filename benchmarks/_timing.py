"""Shared timing helpers for the benchmarks (see docs/PERFORMANCE.md, "How to measure").

All variants run in one process, interleaved in shuffled round-robin repetitions after a
warm-up; every sample times ``calls`` consecutive calls (each on a different layer's
buffers, so caches stay cold) and is reported per call.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Stat:
    """Median and p10/p90 of per-call times in microseconds."""

    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, xs: list[float]) -> Stat:
        s = sorted(xs)
        q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
        return cls(statistics.median(s), q[0], q[-1])

    def cell(self) -> str:
        return f"{fmt_us(self.median)} ({fmt_us(self.p10)}–{fmt_us(self.p90)})"


def fmt_us(us: float) -> str:
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[int], object], start: int, calls: int, device: torch.device) -> float:
    """Microseconds per call of ``fn(i)`` for ``i`` in ``start .. start + calls - 1``."""
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(start, start + calls):
            fn(i)
        b.record()
        b.synchronize()
        return a.elapsed_time(b) * 1e3 / calls
    t0 = time.perf_counter()
    for i in range(start, start + calls):
        fn(i)
    return (time.perf_counter() - t0) * 1e6 / calls


def round_robin(
    fns: dict[str, Callable[[int], object]],
    rounds: int,
    calls: int,
    device: torch.device,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, Stat]:
    """Time every ``fns[name](layer)`` in shuffled round-robin order; returns per-call stats."""
    rng = random.Random(seed)
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    cursor = 0
    for r in range(warmup + rounds):
        rng.shuffle(names)
        for name in names:
            sync(device)
            t = time_calls(fns[name], cursor, calls, device)
            if r >= warmup:
                samples[name].append(t)
        cursor += calls
    return {k: Stat.of(v) for k, v in samples.items()}


class ReadProbe:
    """``probe(i)`` sums one of two buffers far larger than the caches (alternating, so that
    consecutive calls stay cold); ``nbytes`` per call. Timed among the variants of a run, it
    measures the read bandwidth available under the same conditions."""

    def __init__(self, device: torch.device, mbytes: int = 256) -> None:
        n = mbytes * 2**20 // 4
        self.bufs = [torch.ones(n, device=device) for _ in range(2)]
        self.nbytes = n * 4

    def __call__(self, i: int) -> torch.Tensor:
        return self.bufs[i % 2].sum()

    def gbs(self, stat: Stat) -> float:
        return self.nbytes / (stat.median * 1e-6) / 1e9
