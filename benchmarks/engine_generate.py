"""Whole ``generate`` through the engine vs stock transformers: prefill, decode and peak memory,
side by side in one run.

Random models (``avl_lab.models.tiny_random``) with real token layouts:

* ``llava15``: LLaVA-1.5 (576 image tokens per row + the prompt);
* ``llava_next``: LLaVA-NeXT "anyres" (base tile + a 2x2 grid with row newlines, 2,928 image
  tokens for a square image; rows of a batch alternate image shapes, so they hold different
  counts and the batch is left-padded);
* ``qwen2_5_vl``: Qwen2.5-VL (1,296 merged image tokens of a 576 px image, M-RoPE, GQA).

Decoder sizes default to the issue's (hidden 1,024, 16 heads, MLP 2,048, 4 layers);
``--preset 7b`` measures decode at real LLaVA-1.6-7B layer sizes (hidden 4,096, 32 heads,
MLP 11,008; 2 layers, batch 8, LLaVA-NeXT layout); ``--preset targets`` runs the issue-18
check in one command (:data:`PRESETS`, ~25 min on 2 CPU cores) and ends with a table of its
targets, met or missed.
Variants: stock ``model.generate``
(sdpa, ``DynamicCache``) and ``attach(model, policy)`` for ``full``, ``avl`` (S=45 C=30),
``avl P T`` (S=45 C=30 K=3 P=90 T=50), ``fastv`` (keep 50% after layer 2), ``h2o``
(ratio 0.5), and the in-LLM token methods ``pyramiddrop``, ``sparsevlm``, ``dart`` (their
papers' keep settings, stages placed on 4 layers; ``--preset methods``) and the pre-LLM
methods ``visionzip``, ``vispruner``, ``divprune`` (64 tokens per 576, LLaVA-7B layer sizes;
``--preset pre_llm``). Each sample is one ``generate`` of ``--new`` tokens; a logits processor stamps
the time after every forward: prefill = start → first logits (vision encoder included),
decode = the median (p10–p90) of the time per later token, every step of every round pooled.
``CPU ×stock``: the same ratios in process CPU time (``time.process_time``, all threads), which
a shared, oversubscribed CPU disturbs far less than wall-clock time (run with
``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads sleep instead of spinning on the clock);
``--preset targets`` judges its targets on them on CPU, on wall-clock time on CUDA.
Peak memory: CPU, growth of the process's peak RSS (``VmHWM`` reset through
``/proc/self/clear_refs``) over the RSS before the call; CUDA, ``max_memory_allocated`` over
the allocation before. Cache: the largest K/V bytes the cache
held at any step (``AVLCache.kv_bytes``, allocated room included; stock: the ``DynamicCache``
tensors); ``cache/full`` is that over ``attach(full)``'s, to compare with ``stored``
(session.stats.stored). ``kept work``: prefill decoder token-layers run over those of Full
(prefill pruning); ``expected``: the prefill ratio that predicts if time follows decoder
tokens, ``1 - share * (1 - kept work)`` with ``share`` stock's decoder share of its prefill CPU
time (hooks on the text model; the vision encoder, embeddings and first logits are the rest).

All variants of a layout and batch run interleaved in shuffled rounds (after an untimed
warm-up round for each layout's first batch size); the first round checks that
``attach(full)`` gives stock's tokens; medians and p10–p90; ratios to stock in the same run.

``PYTHONPATH=. python benchmarks/engine_generate.py [--layouts llava15 llava_next qwen2_5_vl]
[--batch 1 8] [--rounds 3] [--new 8] [--prune-layer L] [--threads N]
[--device cuda --dtype bf16] [--preset 7b|targets] [--json out.json]`` (``PYTHONPATH=.``: the
checkout's ``avl_lab``, whatever the environment's install points to; the header prints it)
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from _generate_probes import DecoderClock, PeakMemory, StepProbe, dynamic_cache_bytes, linear_floor
from _generate_report import summary, table
from PIL import Image
from transformers import DynamicCache, LogitsProcessorList

import avl_lab
from avl_lab.engine.families import family_of
from avl_lab.ext import build
from avl_lab.models import tiny_random
from avl_lab.policies.vision_tiering import SIGNALS

POLICIES: dict[str, Any] = {
    "full": "full",
    "avl": {"name": "avl", "S": 45, "C": 30},
    "avl P T": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50},
    "fastv": {"name": "fastv", "keep": 50, "layer": 2},
    "h2o": {"name": "h2o", "ratio": 0.5},
    # The in-LLM token methods (issue 27) at their papers' keep settings, stages placed on a
    # 4-layer decoder as on 32 (PyramidDrop [8, 16, 24] → [1, 2, 3]; SparseVLM [2, 6, 15] →
    # [0, 1, 2]; DART before layer 2 → 1); positions kept (renumbering costs the same and is
    # not defined on Qwen's M-RoPE).
    "pyramiddrop": {"name": "pyramiddrop", "stages": [1, 2, 3], "lam": 0.5, "positions": "keep"},
    "sparsevlm": {"name": "sparsevlm", "stages": [0, 1, 2], "tokens": 192, "positions": "keep"},
    "dart": {"name": "dart", "layer": 1, "keep": 22.2},
    # The pre-LLM methods (issue 28) at 64 tokens per 576 (VisionZip's 54 + 10, VisPruner's 64
    # with half important, DivPrune's 11.1%), per crop on LLaVA-NeXT (per image for DivPrune),
    # positions renumbered as their reference code does.
    "visionzip": {"name": "visionzip", "tokens": 64, "contextual_share": 15.6},
    "vispruner": {"name": "vispruner", "tokens": 64},
    "divprune": {"name": "divprune", "keep": 11.1},
    # Issue 32: A-VL (S=45 C=30 K=3) with each ranking signal of VisionTiering.
    **{f"avl K3 {s}": {"name": "avl", "S": 45, "C": 30, "K": 3, "signal": s}
       for s in SIGNALS},
}
#: What runs without ``--variants`` or a preset: the engine's own policies (issue 18).
DEFAULT_VARIANTS = ["full", "avl", "avl P T", "fastv", "h2o"]
#: Named settings (flags given on the command line win). ``targets`` is the issue-18 check in
#: one command, sized for a 2-core CPU (prefill section ~6 min, 7B decode ~20 min): every
#: layout at batch 1 and 8 (hidden 512, 8 heads of 64, MLP 1,024, 2 layers, pruning after layer 0 so that one of the
#: two layers runs on the kept tokens), then whole-``generate`` decode at LLaVA-7B layer sizes
#: (hidden 4,096, 32 heads, MLP 11,008; batch 8, two layers; LLaVA-1.5 layout, 2 rounds of 24
#: new tokens; LLaVA-NeXT layout, one round of 12: its prompt at batch 8 is ~10 TFLOP of prefill
#: per 7B layer, ~3 min per variant on 2 CPU cores; ~25 min for the whole preset), with the
#: step's floor (the linear layers alone, :func:`_generate_probes.linear_floor`).
PRESETS: dict[str, list[dict[str, Any]]] = {
    "7b": [dict(hidden=4096, heads=32, mlp=11008, layers=2, batch=[8], layouts=["llava_next"],
                variants=["full", "avl"])],
    "targets": [
        dict(hidden=512, heads=8, mlp=1024, layers=2, prune_layer=0, new=3, rounds=5,
             batch=[1, 8], layouts=["llava15", "llava_next", "qwen2_5_vl"], variants=DEFAULT_VARIANTS),
        dict(hidden=4096, heads=32, mlp=11008, layers=2, new=24, rounds=2, no_warmup=True,
             batch=[8], layouts=["llava15"], variants=["full", "avl"], decode_7b=True),
        dict(hidden=4096, heads=32, mlp=11008, layers=2, new=12, rounds=1, no_warmup=True,
             batch=[8], layouts=["llava_next"], variants=["full", "avl"], decode_7b=True),
    ],
    # Issue 27: the in-LLM token methods' prefill saving beside FastV, LLaVA-1.5 and Qwen2.5-VL
    # layouts, 4 layers of hidden 1,024 (~8 min on 2 CPU cores).
    "methods": [dict(layers=4, new=3, rounds=3, batch=[1, 8], layouts=["llava15", "qwen2_5_vl"],
                     variants=["full", "fastv", "pyramiddrop", "sparsevlm", "dart"])],
    # Issue 28: the pre-LLM methods' prefill saving beside FastV (after layer 0) at LLaVA-7B
    # layer sizes (2 layers), LLaVA-1.5 and LLaVA-NeXT layouts, batch 1 (~8 min on 2 CPU cores).
    "pre_llm": [dict(hidden=4096, heads=32, mlp=11008, layers=2, prune_layer=0, new=3, rounds=3,
                     batch=[1], layouts=["llava15", "llava_next"],
                     variants=["full", "fastv", "visionzip", "vispruner", "divprune"])],
    # Issue 32: what each ranking signal costs in prefill and per decode step (update steps
    # every 3rd), LLaVA-1.5 and Qwen2.5-VL layouts, 4 layers of hidden 1,024, 24 new tokens.
    "signals": [dict(layers=4, new=24, rounds=3, batch=[1, 8], layouts=["llava15", "qwen2_5_vl"],
                     variants=["full", *(f"avl K3 {s}" for s in SIGNALS)])],
}  # fmt: skip


def policies(prune_layer: int | None) -> dict[str, Any]:
    """:data:`POLICIES`, with FastV's and A-VL's P pruning after ``prune_layer`` when given."""
    out = copy.deepcopy(POLICIES)
    if prune_layer is not None:
        out["fastv"]["layer"] = prune_layer
        out["avl P T"]["layer"] = prune_layer
    return out


QUESTIONS = [
    "What is written on the sign in this picture?",
    "Describe the image.",
    "Which colour is the car on the left, and what is the licence plate number?",
    "How many people?",
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- layouts ---------------------------------------------------------------------------------


def build_layout(name: str, args) -> tuple[Any, Any, Callable[[int], Any]]:
    """``(model, processor, inputs(batch))`` of a random model with ``name``'s token layout."""
    sizes = dict(num_hidden_layers=args.layers, hidden_size=args.hidden,
                 intermediate_size=args.mlp, num_attention_heads=args.heads)  # fmt: skip
    if name in ("llava15", "llava_next"):
        kind = "llava" if name == "llava15" else "llava_next"
        model, proc = tiny_random(kind, image_seq_length=576, patch_size=1,
                                  num_key_value_heads=args.kv_heads or args.heads, **sizes)
        shapes = [(24, 24)] if kind == "llava" else [(48, 48), (48, 40)]

        def inputs(batch: int):
            images = [Image.new("RGB", shapes[i % len(shapes)], (40 * i % 255, 80, 160))
                      for i in range(batch)]  # fmt: skip
            text = [f"USER: <image>\n{QUESTIONS[i % len(QUESTIONS)]} ASSISTANT:" for i in range(batch)]
            return proc(images=images, text=text, return_tensors="pt", padding=True)

    elif name == "qwen2_5_vl":
        head_dim = args.hidden // args.heads
        model, proc = tiny_random(
            "qwen2_5_vl", head_dim=head_dim, mrope_section=_mrope(head_dim),
            num_key_value_heads=args.kv_heads or max(1, args.heads // 8),
            max_image_tokens=1296, min_image_tokens=4, **sizes,
        )
        side = 36 * proc.image_processor.patch_size * proc.image_processor.merge_size

        def inputs(batch: int):
            from avl_lab.evaluation.prompting import encode

            shapes = [(side, side), (side, side * 3 // 4)]
            images = [Image.new("RGB", shapes[i % 2], (40 * i % 255, 80, 160)) for i in range(batch)]
            return encode(proc, images, [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)])

    else:
        raise ValueError(f"unknown layout {name!r}")
    model.generation_config.eos_token_id = None
    return model, proc, inputs


def _mrope(head_dim: int) -> tuple[int, int, int]:
    """M-RoPE sections (temporal, height, width) summing to ``head_dim // 2``, Qwen's 1:1.5:1.5."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return (t, h, half - t - h)


# --- one sample ------------------------------------------------------------------------------


def run_once(model, inputs, policy, new: int, device) -> dict[str, Any]:
    """One ``generate``: prefill s, decode s/token, peak bytes, cache peak bytes, tokens."""
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    with PeakMemory(device) as mem, DecoderClock(family_of(model).text_model(model)) as dec:
        if policy is None:
            cache = DynamicCache()
            probe = StepProbe(device, lambda: dynamic_cache_bytes(cache))
            probe.start()
            out = model.generate(**inputs, **kw, cache=cache, logits_processor=LogitsProcessorList([probe]))
            stats, kept = None, 1.0
        else:
            with avl_lab.attach(model, policy) as session:
                probe = StepProbe(device, lambda: session.run.cache.kv_bytes() if session.run else 0)
                probe.start()
                out = session.generate(**inputs, **kw, logits_processor=LogitsProcessorList([probe]))
            stats, kept = session.stats, kept_work(session)
    ts, cs = probe.times, probe.cpu
    return {
        "prefill_s": ts[0] - probe.t0,
        "decode_steps": [b - a for a, b in zip(ts, ts[1:], strict=False)],
        "prefill_cpu": cs[0] - probe.c0,
        "decoder_cpu": dec.cpu,
        "decode_cpu_steps": [b - a for a, b in zip(cs, cs[1:], strict=False)],
        "peak_bytes": mem.peak,
        "cache_bytes": max(probe.cache),
        "stored": None if stats is None else stats.stored,
        "kept_work": kept,
        "tokens": out[:, inputs["input_ids"].shape[1]:],
    }


def kept_work(session) -> float:
    """Prefill decoder token-layers run / those Full runs (< 1 only with prefill pruning; each
    layer counts the tokens of the stage in effect there, padded to the batch's longest row)."""
    run = session.last_run
    L, P = run.num_layers, run.layout.length
    tokens = [P if run.stage(i) is None else run.stage(i).index.shape[1] for i in range(L)]
    return sum(tokens) / (L * P)


# --- one table -------------------------------------------------------------------------------


def bench(model, inputs, variants: dict[str, Any], rounds: int, new: int, device, seed: int,
          warmup: bool = True):
    """Interleaved shuffled rounds (after an untimed warm-up round unless ``warmup`` is False);
    the first round checks that ``attach(full)`` gives stock's tokens. Per-variant samples."""
    samples: dict[str, list[dict]] = {k: [] for k in variants}
    rng = random.Random(seed)
    for r in range(rounds + warmup):
        order = list(variants)
        rng.shuffle(order)
        got = {name: run_once(model, inputs, variants[name], new, device) for name in order}
        if r == 0 and "full" in got and not torch.equal(got["full"]["tokens"], got["stock"]["tokens"]):
            raise AssertionError("attach(full) did not reproduce stock generate's tokens")
        if r >= warmup:
            for name, sample in got.items():
                samples[name].append(sample)
    return samples


def _q(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
    return statistics.median(xs), q[0], q[-1]


def summarize(samples: dict[str, list[dict]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for name, ss in samples.items():
        row: dict[str, float | None] = {}
        row["prefill_s"], row["prefill_s_p10"], row["prefill_s_p90"] = _q([s["prefill_s"] for s in ss])
        steps = [t for s in ss for t in s["decode_steps"]] or [float("nan")]  # pooled over rounds
        row["decode_s"], row["decode_s_p10"], row["decode_s_p90"] = _q(steps)
        row["prefill_cpu"] = statistics.median(s["prefill_cpu"] for s in ss)
        row["decode_cpu"] = statistics.median(t for s in ss for t in s["decode_cpu_steps"] or [float("nan")])
        peaks = [s["peak_bytes"] for s in ss if s["peak_bytes"] is not None]
        row["peak_bytes"] = statistics.median(peaks) if peaks else None
        row["cache_bytes"] = max(s["cache_bytes"] for s in ss)
        row["stored"] = ss[0]["stored"]
        row["decoder_share"] = statistics.median(s["decoder_cpu"] / s["prefill_cpu"] for s in ss)
        row["kept_work"] = ss[0]["kept_work"]
        out[name] = row
    base, full = out["stock"], out.get("full")
    for row in out.values():
        row["prefill_x"] = row["prefill_s"] / base["prefill_s"]
        row["decode_x"] = row["decode_s"] / base["decode_s"]
        row["prefill_cpu_x"] = row["prefill_cpu"] / base["prefill_cpu"]
        # What prefill pruning should give if time follows decoder tokens: the rest of stock's
        # prefill (vision encoder, embeddings, logits) stays.
        row["expected_x"] = 1 - base["decoder_share"] * (1 - row["kept_work"])
        row["decode_cpu_x"] = row["decode_cpu"] / base["decode_cpu"]
        row["peak_x"] = row["peak_bytes"] / base["peak_bytes"] if row["peak_bytes"] and base["peak_bytes"] else None
        row["cache_x_full"] = row["cache_bytes"] / full["cache_bytes"] if full else None
    return out


def parse(argv: list[str] | None) -> list[argparse.Namespace]:
    """The command line as one or more sections (a preset may hold several), each a full set
    of settings; flags given explicitly override the preset's values in every section."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layouts", nargs="+", default=["llava15", "llava_next", "qwen2_5_vl"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(POLICIES))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=0, help="0: MHA for LLaVA, heads/8 for Qwen")
    p.add_argument("--mlp", type=int, default=2048)
    p.add_argument("--prune-layer", type=int, default=None,
                   help="layer after which fastv and avl's P prune (default: theirs, 2)")
    p.add_argument("--new", type=int, default=8, help="new tokens per generate")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-warmup", action="store_true",
                   help="time the first round too (otherwise each layout's first batch size "
                        "gets an untimed warm-up round)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="7b: LLaVA-1.6-7B layer sizes, 2 layers, batch 8, llava_next, stock/full/avl;\n"
                        "targets: the issue-18 targets in one command (see PRESETS);\n"
                        "methods: the in-LLM token methods' prefill beside FastV (issue 27);\n"
                        "pre_llm: the pre-LLM methods at LLaVA-7B layer sizes (issue 28)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="fp32 CPU, bf16 CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.decode_7b = False
    if args.preset is None:
        return [args]
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
             if a.startswith("--")}  # fmt: skip
    sections = []
    for values in PRESETS[args.preset]:
        sec = argparse.Namespace(**vars(args))
        for key, value in values.items():
            if key not in given:
                setattr(sec, key, value)
        sections.append(sec)
    return sections


def main(argv: list[str] | None = None) -> int:
    sections = parse(argv)
    first = sections[0]
    if first.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    if first.threads:
        torch.set_num_threads(first.threads)
    device = torch.device(first.device)
    dtype = DTYPES[first.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    build.try_load(device.type)  # build / load the core-attention op before anything is timed
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{str(dtype).removeprefix('torch.')}; avl_lab from {avl_lab.__file__}\n")  # fmt: skip
    report: dict[str, Any] = {"args": [vars(a) for a in sections], "device": name,
                              "torch": torch.__version__, "tables": [], "decode_7b": []}  # fmt: skip
    for args in sections:
        torch.manual_seed(args.seed)
        variants = {"stock": None, **{v: policies(args.prune_layer)[v] for v in args.variants}}
        print(f"## {'Decode at 7B layer sizes' if args.decode_7b else 'Prefill and decode'}: "
              f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, MLP {args.mlp}; "
              f"{args.new} new tokens; {args.rounds} rounds"
              f"{'' if args.no_warmup else ' after a warm-up round'}"
              f"{'' if args.prune_layer is None else f'; pruning after layer {args.prune_layer}'}\n")  # fmt: skip
        for layout in args.layouts:
            model, _, make_inputs = build_layout(layout, args)
            model.to(device, dtype)
            for i, batch in enumerate(args.batch):
                inputs = make_inputs(batch).to(device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                P = inputs["input_ids"].shape[1]
                padded = int((inputs["attention_mask"] == 0).any(1).sum())
                warm = not args.no_warmup and i == 0
                with torch.inference_mode():
                    samples = bench(model, inputs, variants, args.rounds, args.new, device, args.seed, warm)
                    rows = summarize(samples)
                print(f"### {layout}, batch {batch}: {P} prompt tokens, {padded} rows left-padded\n")
                print(table(rows) + "\n", flush=True)
                entry = {"layout": layout, "batch": batch, "prompt_tokens": P, "padded_rows": padded,
                         "rows": rows}  # fmt: skip
                if args.decode_7b:  # what a step costs with attention free: no policy goes below
                    wall, cpu = linear_floor(model, family_of(model).text_model(model), batch)
                    entry["linear_floor"] = {"decode_x": wall / rows["stock"]["decode_s"],
                                             "decode_cpu_x": cpu / rows["stock"]["decode_cpu"]}  # fmt: skip
                    print(f"Linear layers alone (the floor of a decode step): {wall * 1e3:,.1f} ms, "
                          f"{entry['linear_floor']['decode_x']:.2f}× stock's step "
                          f"(CPU {entry['linear_floor']['decode_cpu_x']:.2f}×)\n", flush=True)
                report["decode_7b" if args.decode_7b else "tables"].append(entry)
            del model
    if first.preset == "targets":
        print("## Targets\n")
        print(summary(report["tables"], report["decode_7b"], cpu=device.type == "cpu") + "\n", flush=True)
    if first.json:
        with open(first.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
