"""What ``engine_generate.py`` measures inside one ``generate``: a time stamp and the cache's
K/V bytes after every forward, and the peak memory growth of the call."""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache, LogitsProcessor


class StepProbe(LogitsProcessor):
    """Called after every forward of ``generate``: wall and process CPU time stamps and the
    cache's K/V bytes. :meth:`start` stamps the start of the call."""

    def __init__(self, device: torch.device, cache_bytes: Callable[[], int]) -> None:
        self.device, self.cache_bytes = device, cache_bytes
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.cache: list[int] = []

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __call__(self, input_ids, scores):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.cache.append(self.cache_bytes())
        return scores


def dynamic_cache_bytes(cache: DynamicCache) -> int:
    """Bytes of the K/V tensors a stock ``DynamicCache`` holds."""
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class PeakMemory:
    """Peak memory growth of the block: CUDA allocations, or the process's RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: float | None = None  # bytes

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self.base = _reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self.peak = _status_kb("VmHWM") * 1024 - self.base


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):  # give freed heap pages back, so RSS starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_rss_peak() -> int | None:
    """Reset ``VmHWM`` to the current RSS (Linux); the RSS in bytes, or None if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return None


class DecoderClock:
    """Process CPU time of the text decoder's first forward (the prefill) inside a ``with``
    block: hooks on the text model, removed on exit. The rest of prefill (vision encoder,
    embeddings, the first logits) is what prefill pruning cannot save."""

    def __init__(self, text_model: torch.nn.Module) -> None:
        self.module = text_model
        self.cpu: float | None = None

    def __enter__(self) -> DecoderClock:
        def pre(module, args, kwargs):
            if self.cpu is None:
                self._c0 = time.process_time()

        def post(module, args, kwargs, out):
            if self.cpu is None:
                self.cpu = time.process_time() - self._c0

        self._handles = [self.module.register_forward_pre_hook(pre, with_kwargs=True),
                         self.module.register_forward_hook(post, with_kwargs=True)]  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def linear_floor(model: torch.nn.Module, text_model: torch.nn.Module, batch: int, rounds: int = 10) -> tuple[float, float]:
    """``(wall s, process CPU s)``: the median time of one decode step's linear layers alone —
    every ``nn.Linear`` of the decoder and the LM head applied to a ``[batch, 1, in]`` input —
    i.e. what a step costs with attention, caches and bookkeeping all free. No cache policy can
    bring a step below it."""
    p = next(model.parameters())
    linears = [m for m in text_model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    if head is not None and all(head is not m for m in linears):
        linears.append(head)
    inputs = [torch.randn(batch, 1, m.in_features, dtype=p.dtype, device=p.device) for m in linears]
    walls, cpus = [], []
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms up
            if p.device.type == "cuda":
                torch.cuda.synchronize(p.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for m, x in zip(linears, inputs, strict=True):
                m(x)
            if p.device.type == "cuda":
                torch.cuda.synchronize(p.device)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    walls, cpus = sorted(walls[1:]), sorted(cpus[1:])
    return walls[len(walls) // 2], cpus[len(cpus) // 2]
