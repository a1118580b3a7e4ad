"""When does A-VL's row cut pay off in a decode step? Decode-step time against the rows held.

For each layout (LLaVA-1.5: 32 heads, MHA; Qwen2.5-VL: 28 query / 4 KV heads, GQA 7), batch
and row count (default 1k, 2k, 4k, 8k, 16k, 32k rows; all but ~60 of them image rows, as in a
video or multi-image prompt), one process times decode steps through real 7B-size decoder
layers (``--layers`` of them, random weights) for

* ``stock``: ``model.forward`` with a ``DynamicCache`` of R rows, stock SDPA;
* ``full``, ``avl`` (S=45 C=30 K=3 T=50: the paper's decode parts), ``h2o`` and ``snapkv``
  (ratio 0.5) through ``avl_lab.attach``: the engine's cache, its policy calls, bookkeeping
  and the core-attention op.

No prefill runs (at 32k rows it would take hours on a CPU): each layer's cache is filled with
random K/V and the policy makes its prefill decision from random scores (``prefill_keep``,
as after a real prefill's attention), so the rows stored and used are the policy's own; then
``--steps`` decode steps run through the model, every variant interleaved in shuffled rounds.
Each step's wall time and process CPU time are taken; the ratios are given on both (CPU time is
what other processes on a shared machine disturb least).

Beside the measurements, the bytes model of a step: the weights it reads (every decoder
layer, the final norm, the LM head) + the K/V rows read over the layers; ``model ×full`` =
(W + used·R·kv) / (W + R·kv), the best a row cut can do when a step reads every byte once at
one bandwidth, and the floor, the linear layers and the LM head alone (no policy can go below
it). ``attn share`` = 1 − floor / full: how much of ``full``'s step is attention and cache;
where it is small the cut cannot show. Issue 29's checks (printed under each table) are judged
on process CPU time, as the issue measures them, wall time beside.

``PYTHONPATH=. python benchmarks/decode_crossover.py [--layouts llava15 qwen2_5_vl]
[--rows 1024 2048 ...] [--batch 1 8] [--layers 2] [--steps 6] [--rounds 3] [--tiny]
[--device cuda --dtype bf16] [--json out.json] [--plot out.png]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any

import torch
from transformers import DynamicCache

import avl_lab
from avl_lab.engine.families import family_of
from avl_lab.engine.generation import Run
from avl_lab.engine.layout import token_layout
from avl_lab.models import tiny_random

VARIANTS: dict[str, Any] = {
    "stock": None,
    "full": "full",
    "avl": {"name": "avl", "S": 45, "C": 30, "K": 3, "T": 50},
    "h2o": {"name": "h2o", "ratio": 0.5},
    "snapkv": {"name": "snapkv", "ratio": 0.5},
    # A-VL's vision tiering alone (engine_generate.py's `avl`): not in the default set
    "avl_sc": {"name": "avl", "S": 45, "C": 30},
}
DEFAULT_VARIANTS = ["stock", "full", "avl", "h2o", "snapkv"]
LAYOUTS = {  # 7B decoder sizes
    "llava15": dict(kind="llava", hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                    intermediate_size=11008),
    "qwen2_5_vl": dict(kind="qwen2_5_vl", hidden_size=3584, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944),
}
TEXT = 60  # non-image rows (system prompt, question)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


TINY = dict(hidden_size=128, num_attention_heads=4, intermediate_size=256)  # --tiny (dry runs)


def build(layout: str, layers: int, dtype, device, tiny: bool = False):
    spec = dict(LAYOUTS[layout])
    kind = spec.pop("kind")
    if tiny:
        spec.update(TINY, num_key_value_heads=4 if kind == "llava" else 2)
    extra = {}
    if kind == "qwen2_5_vl":
        hd = spec["hidden_size"] // spec["num_attention_heads"]
        extra = dict(head_dim=hd, mrope_section=[hd // 8, 3 * hd // 16, 3 * hd // 16])
    model, _ = tiny_random(kind, num_hidden_layers=layers, **spec, **extra)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    return model


def prompt(model, batch: int, rows: int, device) -> torch.Tensor:
    """``[B, R]`` token ids: a few text tokens, ``R - TEXT`` image tokens, the rest text."""
    fam = family_of(model)
    img = fam.vision_token_ids(model.config)[0]
    ids = torch.full((batch, rows), 5, dtype=torch.long, device=device)
    ids[:, 8:8 + rows - TEXT] = img
    return ids


def fill_engine(session, ids: torch.Tensor, new: int, gen: torch.Generator) -> Run:
    """The engine's state after a prefill of ``ids``, without running one: random K/V per layer,
    and the policy's prefill decision from random scores."""
    model, B, R = session.model, ids.shape[0], ids.shape[1]
    cfg = model.config.text_config
    hkv, hd = cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    p = next(model.parameters())
    layout = token_layout(ids, None, session.vision_ids)
    run = Run(session.policy, layout, session.num_layers, new, seed=0)
    session.run = run
    run.begin()
    run.begin_forward(B, R)  # the policy's setup
    for i, layer in enumerate(run.cache.layers):
        k = torch.randn(B, hkv, R, hd, generator=gen, device="cpu").to(p)
        run.cache.update(k, torch.randn_like(k), i)
        ctx = run.context(i)
        ctx.head_scores = torch.rand(B, hkv, R, generator=gen).to(p.device, torch.float32).softmax(-1)
        ctx.scores = ctx.head_scores.mean(1)
        ctx.head_colsum = torch.rand(B, hkv, R, generator=gen).to(p.device, torch.float32)
        ctx.colsum = ctx.head_colsum.mean(1)

        def query_probs(rows, per_head=False, _R=R):
            m = int(rows.sum(-1).max())
            shape = (B, hkv, m, _R) if per_head else (B, m, _R)
            return torch.rand(shape, generator=gen).to(p.device).softmax(-1)

        ctx.query_probs = query_probs
        keep = session.policy.prefill_keep(layer, ctx)
        if keep is not None:
            layer.evict(keep)
    return run


def stock_cache(model, B: int, R: int, gen: torch.Generator) -> DynamicCache:
    cfg = model.config.text_config
    hkv, hd = cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    p = next(model.parameters())
    cache = DynamicCache(config=model.config)
    for i in range(cfg.num_hidden_layers):
        k = torch.randn(B, hkv, R, hd, generator=gen).to(p)
        cache.update(k, torch.randn_like(k), i)
    return cache


def positions(model, B: int, at: int, device) -> torch.Tensor:
    pos = torch.full((B, 1), at, dtype=torch.long, device=device)
    return pos[None].expand(3, B, 1) if model.config.model_type.startswith("qwen") else pos


def time_steps(model, name: str, ids: torch.Tensor, steps: int, gen) -> tuple[list[tuple[float, float]], dict]:
    """Per-step (wall, process CPU) seconds of ``steps`` decode steps after a filled cache."""
    B, R = ids.shape
    dev = ids.device
    tok = torch.full((B, 1), 7, dtype=torch.long, device=dev)
    times: list[tuple[float, float]] = []
    info: dict[str, Any] = {}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        if VARIANTS[name] is None:
            cache = stock_cache(model, B, R, gen)
            for t in range(steps):
                mask = torch.ones(B, R + t + 1, dtype=torch.long, device=dev)
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                model(input_ids=tok, attention_mask=mask, position_ids=positions(model, B, R + t, dev),
                      cache=cache, use_cache=True, logits_to_keep=1)
                sync()
                times.append((time.perf_counter() - t0, time.process_time() - c0))
            return times, info
        with avl_lab.attach(model, VARIANTS[name]) as session:
            run = fill_engine(session, ids, steps + 1, gen)
            try:
                for t in range(steps):
                    mask = torch.ones(B, R + t + 1, dtype=torch.long, device=dev)
                    sync()
                    t0, c0 = time.perf_counter(), time.process_time()
                    model(input_ids=tok, attention_mask=mask,
                          position_ids=positions(model, B, R + t, dev), cache=run.cache,
                          use_cache=True, logits_to_keep=1)
                    sync()
                    times.append((time.perf_counter() - t0, time.process_time() - c0))
            finally:
                run.finish()
                session.run = None
            stats = run.stats()
            info = {"stored": stats.stored, "used": stats.used}
    return times, info


def bytes_model(model, B: int) -> tuple[float, float]:
    """``(weight bytes a decode step reads, K/V bytes per row over all layers)``.

    The weights are every decoder layer's, the final norm's and the LM head's: the step the
    script times is the whole forward (``logits_to_keep=1``), so the LM head is read each step;
    of the embedding table one row per sequence is read, nothing to count. (With this script's
    512-token vocabulary the head is 0.1% of two layers' weights; with a real one, 32k × 4,096
    for LLaVA-1.5, it would be 0.33 of them, and a model of the layers alone would promise the
    layers' ratio for the whole step.)"""
    text = model.model.language_model
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    skip = {id(p) for p in emb.parameters()}
    params = {id(p): p for p in text.parameters() if id(p) not in skip}
    if head is not None:
        params.update({id(p): p for p in head.parameters()})  # tied: the table, read as the head
    w = sum(p.numel() * p.element_size() for p in params.values())
    cfg = model.config.text_config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_key_value_heads * hd * next(model.parameters()).element_size() * B
    return w, kv * len(text.layers)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--rows", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--max-gib", type=float, default=2.0,
                    help="skip a (batch, rows) point whose K/V for one variant exceeds this")
    ap.add_argument("--tiny", action="store_true", help="small decoder sizes (a dry run of the script)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=list(DTYPES))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="a seaborn PNG of step time vs rows")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    dev = torch.device(args.device)
    print(f"device {args.device}, {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{args.layers} layers, {args.steps} steps × {args.rounds} rounds\n")
    results = []
    for layout in args.layouts:
        model = build(layout, args.layers, dtype, dev, args.tiny)
        for B in args.batch:
            print(f"### {layout}, batch {B}\n")
            print("| rows | variant | step ms (p10–p90) | ×stock | ×full | CPU ×stock | CPU ×full | stored | used | model ×full | floor ×full (CPU) | attn share (CPU) |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            floor, floor_cpu = _floor(model, B)
            for R in args.rows:
                w, kv = bytes_model(model, B)
                if kv * R / 2**30 > args.max_gib:
                    print(f"| {R:,} | (skipped: {kv * R / 2**30:.1f} GiB of K/V > --max-gib) |||||||||||")
                    continue
                ids = prompt(model, B, R, dev)
                gen = torch.Generator().manual_seed(0)
                samples: dict[str, list[float]] = {n: [] for n in args.variants}
                cpu: dict[str, list[float]] = {n: [] for n in args.variants}
                infos: dict[str, dict] = {}
                names = list(args.variants)
                rng = random.Random(R * 31 + B)
                for _ in range(args.rounds):
                    rng.shuffle(names)
                    for n in names:
                        ts, infos[n] = time_steps(model, n, ids, args.steps + 1, gen)
                        samples[n] += [w for w, _ in ts[1:]]  # the first step warms up
                        cpu[n] += [c for _, c in ts[1:]]
                med = {n: statistics.median(s) for n, s in samples.items()}
                cmed = {n: statistics.median(s) for n, s in cpu.items()}
                for n in VARIANTS:
                    if n not in med:
                        continue
                    q = statistics.quantiles(samples[n], n=10) if len(samples[n]) > 1 else [med[n]] * 9
                    cq = statistics.quantiles(cpu[n], n=10) if len(cpu[n]) > 1 else [cmed[n]] * 9
                    used = infos[n].get("used", 1.0)
                    model_x = (w + used * R * kv) / (w + R * kv)
                    row = dict(layout=layout, batch=B, rows=R, variant=n, ms=med[n] * 1e3,
                               p10=q[0] * 1e3, p90=q[-1] * 1e3, x_stock=med[n] / med.get("stock", med[n]),
                               x_full=med[n] / med.get("full", med[n]), stored=infos[n].get("stored"),
                               used=infos[n].get("used"), model_x_full=model_x,
                               floor_x_full=floor / med.get("full", med[n]),
                               cpu_ms=cmed[n] * 1e3, cpu_p10=cq[0] * 1e3, cpu_p90=cq[-1] * 1e3,
                               cpu_x_stock=cmed[n] / cmed.get("stock", cmed[n]),
                               cpu_x_full=cmed[n] / cmed.get("full", cmed[n]),
                               cpu_floor_x_full=floor_cpu / cmed.get("full", cmed[n]))
                    results.append(row)
                    if args.json:  # written as it goes: a killed run keeps its points
                        with open(args.json, "w") as f:
                            json.dump(results, f, indent=1)
                    share, cshare = 1 - row["floor_x_full"], 1 - row["cpu_floor_x_full"]
                    stored, used = (_frac(row["stored"]), _frac(row["used"]))
                    print(f"| {R:,} | {n} | {row['ms']:,.1f} ({row['p10']:,.1f}–{row['p90']:,.1f}) | "
                          f"{row['x_stock']:.2f} | {row['x_full']:.2f} | {row['cpu_x_stock']:.2f} | "
                          f"{row['cpu_x_full']:.2f} | {stored} | {used} | "
                          f"{model_x:.2f} | {row['floor_x_full']:.2f} ({row['cpu_floor_x_full']:.2f}) | "
                          f"{share:.2f} ({cshare:.2f}) |")
            print()
            for line in targets([r for r in results if r["layout"] == layout and r["batch"] == B]):
                print(line)
            print()
        del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot and results:
        _plot(results, args.plot)
    return 0


def targets(rows: list[dict]) -> list[str]:
    """Issue 29's checks on one table, on process CPU time as the issue measures them (wall
    time beside): ``avl`` ×full ≤ the bytes model + 0.05 wherever attention is ≥ 30% of
    ``full``'s step (1 − the linear layers' CPU time / ``full``'s), and ``avl`` never slower
    than ``full`` by more than noise (``full``'s own p10–p90 half-width of CPU time at that
    point, relative to its median). Rows without CPU figures (older JSON) are judged on wall
    time."""
    out = []
    by = {(r["rows"], r["variant"]): r for r in rows}
    for R in sorted({r["rows"] for r in rows}):
        avl, full = by.get((R, "avl")), by.get((R, "full"))
        if avl is None or full is None:
            continue
        cpu = "cpu_p10" in full and "cpu_floor_x_full" in full
        x, ms, p10, p90, floor = (
            ("cpu_x_full", "cpu_ms", "cpu_p10", "cpu_p90", "cpu_floor_x_full") if cpu
            else ("x_full", "ms", "p10", "p90", "floor_x_full"))
        share = 1 - full[floor]
        noise = (full[p90] - full[p10]) / 2 / full[ms]
        slower = avl[x] - 1
        verdict = "met" if slower <= noise else "**missed**"
        line = (f"- {R:,} rows ({'CPU' if cpu else 'wall'} time): avl ×full {avl[x]:.2f} (wall "
                f"{avl['x_full']:.2f}), noise ±{noise:.2f}: not slower than full {verdict}")
        if share >= 0.30:
            ok = avl[x] <= avl["model_x_full"] + 0.05
            line += (f"; attention {share:.2f} of the step: ≤ model {avl['model_x_full']:.2f} + 0.05 "
                     f"{'met' if ok else '**missed**'}")
        out.append(line)
    return out


def _frac(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _floor(model, B: int) -> tuple[float, float]:
    """``(wall s, process CPU s)`` of the step's linear layers alone."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _generate_probes import linear_floor

    return linear_floor(model, model.model.language_model, B)


def _plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(results)
    g = sns.relplot(data=df, x="rows", y="ms", hue="variant", col="layout", row="batch",
                    kind="line", marker="o", facet_kws={"sharey": False})
    g.set(xscale="log", yscale="log")
    for (b, layout), ax in g.axes_dict.items():
        sub = df[(df.batch == b) & (df.layout == layout) & (df.variant == "full")]
        avl = df[(df.batch == b) & (df.layout == layout) & (df.variant == "avl")]
        if len(sub) and len(avl):
            ax.plot(avl.rows, sub.ms.values * avl.model_x_full.values, ls="--", c="gray",
                    label="bytes model (avl)")
            ax.plot(sub.rows, sub.ms.values * sub.floor_x_full.values, ls=":", c="k", label="floor")
            ax.legend(fontsize=7)
    g.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
