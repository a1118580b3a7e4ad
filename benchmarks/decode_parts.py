"""Where a decode step's time goes, per A-VL part: the op call, the rest of the engine's decode
layer (masks, counts, the policy's hooks), the cache's update and the step's compaction check,
timed by wrapping them, at 7B layer sizes (``decode_crossover.py``'s filled cache, no prefill).

Variants: ``full``; ``sc`` (S=45 C=30); ``sck`` (+ K=3 update steps); ``sct`` (+ TextH2O T=50);
``avl`` (S C K T). Prints, per variant, the step time of each decode step (medians over rounds;
update steps are every third) and the parts' medians over all steps, in ms per step.

``PYTHONPATH=. python benchmarks/decode_parts.py [--layout llava15] [--rows 32768] [--batch 1]
[--rounds 3] [--steps 9] [--tiny]`` (``--tiny``: hidden 128, a smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import decode_crossover as dc  # this directory, as the script runs
import torch

import avl_lab
from avl_lab import ext
from avl_lab.engine import attention, cache

VARIANTS = {
    "full": "full",
    "sc": {"name": "avl", "S": 45, "C": 30},
    "sck": {"name": "avl", "S": 45, "C": 30, "K": 3},
    "sct": {"name": "avl", "S": 45, "C": 30, "T": 50},
    "avl": {"name": "avl", "S": 45, "C": 30, "K": 3, "T": 50},
}
PARTS = {"op": (ext, "dispatch"), "decode": (attention, "_decode"),
         "update": (cache.AVLLayer, "update"), "compact": (cache.AVLCache, "compact")}


def timed(spent: dict[str, float]) -> None:
    """Wrap every part so that its wall time adds to ``spent[part]``."""
    for part, (owner, name) in PARTS.items():
        fn = getattr(owner, name)

        def wrapper(*args, _fn=fn, _part=part, **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                spent[_part] += time.perf_counter() - t0

        setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layout", default="llava15", choices=list(dc.LAYOUTS))
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--tiny", action="store_true", help="tiny layers (a smoke run)")
    args = p.parse_args(argv)
    spent: dict[str, float] = defaultdict(float)
    timed(spent)
    cpu = torch.device("cpu")
    model = dc.build(args.layout, 2, torch.float32, cpu, tiny=args.tiny)
    B, R = args.batch, args.rows
    ids = dc.prompt(model, B, R, cpu)
    gen = torch.Generator().manual_seed(0)
    tok = torch.full((B, 1), 7, dtype=torch.long)
    steps = {n: [[] for _ in range(args.steps)] for n in args.variants}
    parts = {n: defaultdict(list) for n in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            with torch.inference_mode(), avl_lab.attach(model, VARIANTS[name]) as session:
                run = dc.fill_engine(session, ids, args.steps + 1, gen)
                for t in range(args.steps):
                    spent.clear()
                    mask = torch.ones(B, R + t + 1, dtype=torch.long)
                    t0 = time.perf_counter()
                    model(input_ids=tok, attention_mask=mask,
                          position_ids=dc.positions(model, B, R + t, cpu), cache=run.cache,
                          use_cache=True, logits_to_keep=1)
                    steps[name][t].append((time.perf_counter() - t0) * 1e3)
                    for part in PARTS:
                        parts[name][part].append(spent[part] * 1e3)
                    parts[name]["decode - op"].append((spent["decode"] - spent["op"]) * 1e3)
                run.finish()
                session.run = None
    print(f"{args.layout}, {R:,} rows, batch {B}, 2 layers; ms per step, medians of "
          f"{args.rounds} rounds\n")
    print("| variant | " + " | ".join(f"step {t + 1}" for t in range(args.steps)) + " | "
          + " | ".join(list(PARTS) + ["decode - op"]) + " |")
    print("|---" * (1 + args.steps + len(PARTS) + 1) + "|")
    for name in args.variants:
        cells = [f"{statistics.median(s):.1f}" for s in steps[name]]
        cells += [f"{statistics.median(parts[name][k]):.2f}" for k in [*PARTS, "decode - op"]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
