"""Whole ``generate`` through the engine vs stock transformers, side by side in one run.

A random LLaVA with LLaVA-1.5's token layout (576 image tokens) and a mid-size Llama decoder;
decode time per token ((time of N new tokens - time of 1) / (N - 1), so prefill cancels) of:
stock ``model.generate`` (sdpa, DynamicCache), ``attach(full)`` and ``attach(avl S=45 C=30)``.
Variants are interleaved in shuffled rounds; medians and p10–p90; ratios to stock. ``python benchmarks/engine_generate.py [--layers 8] [--hidden 1024] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import avl_lab
from avl_lab.models import tiny_random


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    model, proc = tiny_random(
        "llava", image_seq_length=576, patch_size=1, num_hidden_layers=args.layers,
        hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_attention_heads=args.heads, num_key_value_heads=args.heads,
    )
    from PIL import Image

    images = [Image.new("RGB", (24, 24), (i * 40, 80, 160)) for i in range(args.batch)]
    text = ["USER: <image>\nWhat is written on the sign in this picture? ASSISTANT:"] * args.batch
    inputs = proc(images=images, text=text, return_tensors="pt", padding=True)
    def kw(n: int) -> dict:
        return {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}

    def timed(gen) -> float:
        t0 = time.perf_counter()
        gen(**inputs, **kw(1))
        t1 = time.perf_counter()
        gen(**inputs, **kw(args.new))
        t2 = time.perf_counter()
        return ((t2 - t1) - (t1 - t0)) / (args.new - 1)

    def stock() -> float:
        return timed(model.generate)

    def under(policy):
        def run() -> float:
            with avl_lab.attach(model, policy) as s:
                return timed(s.generate)
        return run

    variants = {"stock": stock, "full": under("full"),
                "avl S=45 C=30": under({"name": "avl", "S": 45, "C": 30})}
    for fn in variants.values():  # warm-up (and the op's build)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(args.rounds):
            order = list(variants)
            random.shuffle(order)
            for name in order:
                times[name].append(variants[name]() * 1e3)
    base = statistics.median(times["stock"])
    print(f"layers={args.layers} hidden={args.hidden} batch={args.batch} new={args.new} "
          f"rows≈{inputs['input_ids'].shape[1]} threads={torch.get_num_threads()}")
    print("| variant | decode ms/token median | p10–p90 | vs stock |\n|---|---|---|---|")
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [ts[0]] * 9
        print(f"| {name} | {statistics.median(ts):.2f} | {q[0]:.2f}–{q[-1]:.2f} | "
              f"{statistics.median(ts) / base:.2f} |")


if __name__ == "__main__":
    main()
