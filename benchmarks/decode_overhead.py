"""Per-layer host overhead of a decode step: the engine's Python and bookkeeping, measured where
compute is negligible (a tiny random LLaVA, hidden 64, 16 layers, one thread), side by side.

What a GPU exposes: there the device's work is fast and the host's work per layer is what a
step waits for. Each variant runs ``generate`` of ``--new`` tokens; a logits processor stamps the
time after every forward; the decode time per step (median over steps 2.. of every round) is
divided by the layer count. ``overhead`` = that minus stock's, in ms per layer per step: the
issue-29 targets are ``full`` and ``avl`` ≤ 0.10, ``h2o`` ≤ 0.20. Rounds are interleaved in
shuffled order; the ops per layer per step (every aten op a ``TorchDispatchMode`` sees, over the
layers) and the host syncs per step are counted in one extra round.

``PYTHONPATH=. python benchmarks/decode_overhead.py [--layers 16] [--hidden 64] [--rounds 7]
[--new 24] [--batch 2]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LogitsProcessor, LogitsProcessorList

import avl_lab
from avl_lab.models import tiny_random

VARIANTS = {
    "stock": None,
    "full": "full",
    "avl": {"name": "avl", "S": 45, "C": 30, "K": 3},
    "avl_t": {"name": "avl", "S": 45, "C": 30, "K": 3, "T": 50},  # + TextH2O: rows per KV head
    "h2o": {"name": "h2o", "ratio": 0.5},
    "snapkv": {"name": "snapkv", "ratio": 0.5},
}
TARGETS = {"full": 0.10, "avl": 0.10, "h2o": 0.20}


class OpCount(TorchDispatchMode):
    """aten ops and host syncs once counting is switched on (after the first logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.ops = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.ops += 1
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
                self.syncs += 1
        return func(*args, **(kwargs or {}))


class Stamps(LogitsProcessor):
    def __init__(self, mode: OpCount | None = None) -> None:
        self.t: list[float] = []
        self.mode = mode

    def __call__(self, input_ids, scores):
        self.t.append(time.perf_counter())
        if self.mode is not None:
            self.mode.on = True  # count the decode steps, not prefill
        return scores


def run(model, inputs, policy, new: int, mode: OpCount | None = None) -> list[float]:
    """Per-step decode times (s) of one ``generate`` (steps 2..new)."""
    stamps = Stamps(mode)
    kw = dict(max_new_tokens=new, do_sample=False, logits_processor=LogitsProcessorList([stamps]))
    ctx = mode if mode is not None else _Null()
    with ctx:
        if policy is None:
            model.generate(**inputs, **kw)
        else:
            with avl_lab.attach(model, policy) as session:
                session.generate(**inputs, **kw)
    return [b - a for a, b in zip(stamps.t[1:], stamps.t[2:])]


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--new", type=int, default=24)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, proc = tiny_random("llava", seed=0, num_hidden_layers=args.layers,
                              hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                              num_attention_heads=4, num_key_value_heads=4)
    model.generation_config.eos_token_id = None
    from tests.helpers import make_inputs

    inputs = make_inputs(proc, n=args.batch)
    names = list(args.variants)
    for name in names:  # warm-up
        run(model, inputs, VARIANTS[name], 4)
    steps: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(names)
        for name in names:
            steps[name] += run(model, inputs, VARIANTS[name], args.new)
    counts = {}
    for name in names:
        mode = OpCount()
        run(model, inputs, VARIANTS[name], args.new, mode)
        counts[name] = mode
    L, n_steps = args.layers, args.new - 1  # decode forwards counted
    per_layer = {n: statistics.median(steps[n]) * 1e3 / L for n in steps}
    q = {n: statistics.quantiles(steps[n], n=10) for n in steps}
    print(f"decode per layer per step: {L} layers, hidden {args.hidden}, batch {args.batch}, "
          f"{args.new} new tokens, {args.rounds} rounds, {args.threads} thread(s); torch "
          f"{torch.__version__}\n")
    print("| variant | ms / layer / step (p10–p90) | overhead vs stock | target | aten ops / layer / step | host syncs / step |")
    print("|---|---|---|---|---|---|")
    for n in VARIANTS:
        if n not in steps:
            continue
        over = per_layer[n] - per_layer["stock"] if "stock" in per_layer else float("nan")
        target = TARGETS.get(n)
        mark = "" if target is None else ("met" if over <= target else "**missed**")
        c = counts[n]
        print(f"| {n} | {per_layer[n]:.3f} ({q[n][0] * 1e3 / L:.3f}–{q[n][-1] * 1e3 / L:.3f}) | "
              f"{over:+.3f} | {'' if target is None else f'≤ {target:.2f} {mark}'} | "
              f"{c.ops / n_steps / L:.0f} | {c.syncs / n_steps:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
