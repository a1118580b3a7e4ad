"""One decode step through a stack of real-size decoder layers: full vs A-VL cache.

Two model shapes (``--shape``, default both), stock ``transformers`` layers with random weights,
one new token per step:

* ``llava16``: ``LlamaDecoderLayer``s with the Vicuna-7B sizes of LLaVA-1.6-7B (hidden 4096,
  32 heads, 32 KV heads, head_dim 128, MLP 11008), 2,880 image + 20 text rows, 1-D RoPE;
* ``qwen25vl`` (``qwen25vl_1k`` / ``_2k`` / ``_4k``): ``Qwen2_5_VLDecoderLayer``s (the layers of
  ``Qwen2_5_VLTextModel``) with the Qwen2.5-VL-7B sizes (hidden 3584, 28 heads, 4 KV heads:
  GQA group 7, head_dim 128, MLP 18944, q/k/v biases), 1,000 / 2,000 / 4,000 image + 60 text
  rows. Position embeddings are M-RoPE ``(cos, sin)`` from ``Qwen2_5_VLRotaryEmbedding`` for
  ``[3, B, 1]`` position ids, as ``Qwen2_5_VLTextModel`` passes them to its layers; the new
  token's position is the one ``Qwen2_5_VLModel.get_rope_index`` + ``rope_deltas`` give it.

The layers run unmodified; only their cache and attention function differ (registered through
``transformers.AttentionInterface``):

* ``full``: every cache row (image + text), stock SDPA;
* ``full (op)``: the same rows through ``core_attention`` (isolates the op from the row cut);
* ``avl``: an A-VL S=45 C=30 cache: the text rows + 45% of the image rows stored, attention
  over the text rows + 30% of the image rows (the new token included) through
  ``core_attention``; ``avl/tok`` is the same with the cache stored token-major (the layout
  ``avl_lab.engine`` uses).

Each step writes the new token's K/V into a preallocated slot (no reallocation), so the time
is the layers' own work. The bytes bound is (weights + full K/V) / (weights + active K/V)
per layer, as in docs/PERFORMANCE.md (~1.08x at batch 1, ~1.5x at batch 8 for LLaVA-1.6).

Usage: ``python benchmarks/decode_step.py [--device cuda] [--shape llava16|qwen25vl|all ...]
[--layers 2] [--batch 1 4 8] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _timing import round_robin
from transformers import AttentionInterface, LlamaConfig, Qwen2_5_VLTextConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLRotaryEmbedding,
)

from avl_lab.ext import core_attention

STORE, KEEP = 0.45, 0.30  # A-VL S=45 (stored image share), C=30 (active image share)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """SDPA unless the step passes ``core_active`` ([B, n] rows), then ``core_attention``."""
    active = kw.get("core_active")
    if active is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling)
    out, _ = core_attention(query, key, value, active, scaling)
    return out.transpose(1, 2), None  # [B, 1, Hq, D] like the other attention functions


AttentionInterface.register("avl_bench", bench_attention)


class SlotCache:
    """Preallocated per-layer K/V ``[B, Hkv, R, D]`` (any strides); ``update`` writes the new
    token into the last row, so the step attends to ``R`` rows without reallocating."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[:, :, -1:].copy_(key_states)
        v[:, :, -1:].copy_(value_states)
        return k, v


def llava16_config(tiny: bool = False) -> LlamaConfig:
    """LLaVA-1.6-7B's decoder layer sizes (``tiny``: 4 heads, hidden 256, for smoke runs)."""
    heads = 4 if tiny else 32
    cfg = LlamaConfig(
        hidden_size=256 if tiny else 4096,
        intermediate_size=688 if tiny else 11008,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64 if tiny else 128,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    )
    cfg._attn_implementation = "avl_bench"
    return cfg


def qwen25vl_config() -> Qwen2_5_VLTextConfig:
    """The text config of Qwen2.5-VL-7B-Instruct (its ``rope_scaling`` is M-RoPE [16, 24, 24])."""
    cfg = Qwen2_5_VLTextConfig(
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        num_hidden_layers=28,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        vocab_size=152064,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
    )
    cfg._attn_implementation = "avl_bench"
    return cfg


@dataclass(frozen=True)
class Spec:
    """A model's decoder layers and prompt layout: ``text`` rows (half before the image, the
    rest after it; the last is the new token) around ``image`` rows."""

    name: str
    image: int
    text: int
    config: Callable[[], object]
    layer: type
    rope: type
    grid: tuple[int, int] | None = None  # (h, w) merged-patch grid: M-RoPE positions

    @property
    def full_rows(self) -> int:
        return self.image + self.text

    @property
    def stored(self) -> int:
        return self.text + round(STORE * self.image)

    @property
    def n_active(self) -> int:
        return self.text + round(KEEP * self.image)

    def positions(self, B: int, device) -> torch.Tensor:
        """Position ids of the new token (the last cache row), as the model's forward builds
        them: ``[B, 1]`` for 1-D RoPE; ``[3, B, 1]`` for M-RoPE, where the image occupies
        ``max(h, w)`` positions (``Qwen2_5_VLModel.get_rope_index``), so the new token sits at
        ``pre + max(h, w) + (text - pre) - 1`` on all three axes (cache length + rope delta)."""
        if self.grid is None:
            return torch.full((B, 1), self.full_rows - 1, device=device)
        pre = self.text // 2
        p = pre + max(self.grid) + (self.text - pre) - 1
        return torch.full((3, B, 1), p, device=device)


SPECS = {
    "llava16": Spec("LLaVA-1.6", 2880, 20, llava16_config, LlamaDecoderLayer, LlamaRotaryEmbedding),
    # Qwen2.5-VL image tokens = merged 28x28-pixel patches; grids of 1,000 / 2,000 / 4,000.
    **{
        f"qwen25vl_{h * w // 1000}k": Spec(
            "Qwen2.5-VL",
            h * w,
            60,
            qwen25vl_config,
            Qwen2_5_VLDecoderLayer,
            Qwen2_5_VLRotaryEmbedding,
            grid=(h, w),
        )
        for h, w in ((25, 40), (40, 50), (50, 80))
    },
}
GROUPS = {"qwen25vl": [k for k in SPECS if k.startswith("qwen25vl")], "all": list(SPECS)}


def kv_dims(cfg) -> tuple[int, int]:
    """(KV heads, head dim); Qwen2.5-VL configs have no ``head_dim`` (hidden / heads)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_key_value_heads, head_dim


def make_cache(L, B, rows, cfg, dtype, device, gen) -> SlotCache:
    kv_heads, head_dim = kv_dims(cfg)
    shape = (B, kv_heads, rows, head_dim)
    kv = [[torch.randn(shape, generator=gen).to(device, dtype) for _ in range(L)] for _ in "kv"]
    return SlotCache(*kv)


def token_major(cache: SlotCache) -> SlotCache:
    """The same values stored ``[B, R, Hkv, D]``, handed to the layers as ``[B, Hkv, R, D]``."""
    tm = [
        [t.transpose(1, 2).contiguous().transpose(1, 2) for t in ts]
        for ts in (cache.keys, cache.values)
    ]
    return SlotCache(*tm)


def avl_active(spec: Spec, B: int, gen) -> torch.Tensor:
    """``[B, n]``: all text rows and the new token, plus 30% of the image rows, sorted. Stored
    rows: ``text // 2`` system-prompt rows, then the kept image rows, then the question rows
    (new token last)."""
    stored = spec.stored
    n_img = stored - spec.text
    pre = spec.text // 2
    text = torch.cat([torch.arange(pre), torch.arange(pre + n_img, stored)])
    k = round(KEEP * spec.image)
    return torch.stack(
        [
            torch.cat([text, pre + torch.randperm(n_img, generator=gen)[:k]]).sort().values
            for _ in range(B)
        ]
    )


def make_step(layers, x, emb, cache: SlotCache, active):
    """``fn(i)``: one decode step of hidden states ``x`` [B, 1, hidden] through ``layers``."""

    def run(_i):
        h = x
        for layer in layers:
            h = layer(h, cache=cache, position_embeddings=emb, core_active=active)
        return h

    return run


def run_spec(spec: Spec, layers, cfg, rope, args, device, dtype, gen) -> None:
    """Time one shape at every batch size; prints one table row per batch."""
    full_rows, stored = spec.full_rows, spec.stored
    es = torch.finfo(dtype).bits // 8
    w_bytes = sum(p.numel() for p in layers[0].parameters()) * es  # per layer
    kv_heads, head_dim = kv_dims(cfg)
    L = len(layers)
    for B in args.batch:
        caches = {
            "full": make_cache(L, B, full_rows, cfg, dtype, device, gen),
            "avl": make_cache(L, B, stored, cfg, dtype, device, gen),
        }
        caches["avl_tok"] = token_major(caches["avl"])
        act = avl_active(spec, B, gen).to(device)
        all_rows = torch.arange(full_rows, device=device).expand(B, -1).contiguous()
        x = torch.randn(B, 1, cfg.hidden_size, generator=gen).to(device, dtype)
        emb = rope(x, spec.positions(B, device))  # (cos, sin) [B, 1, head_dim]

        fns = {
            "full": make_step(layers, x, emb, caches["full"], None),
            "full_op": make_step(layers, x, emb, caches["full"], all_rows),
            "avl": make_step(layers, x, emb, caches["avl"], act),
            "avl_tok": make_step(layers, x, emb, caches["avl_tok"], act),
        }
        with torch.inference_mode():
            ref = fns["full"](0)
            torch.testing.assert_close(fns["full_op"](0), ref, atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(fns["avl_tok"](0), fns["avl"](0), atol=1e-2, rtol=1e-2)
            st = round_robin(fns, args.rounds, 1, device, warmup=2, seed=args.seed)
        kv_row = 2 * B * kv_heads * head_dim * es
        n_act = act.shape[1]
        bound = (w_bytes + full_rows * kv_row) / (w_bytes + n_act * kv_row)
        ms = {k: v.median / 1e3 for k, v in st.items()}
        print(
            f"| {spec.name} {full_rows}/{stored}/{n_act} | {B} | {ms['full']:.1f} | "
            f"{ms['full_op']:.1f} | {ms['avl']:.1f} | {ms['avl_tok']:.1f} | "
            f"{ms['full'] / ms['avl']:.2f} | {ms['full'] / ms['avl_tok']:.2f} | "
            f"{ms['full_op'] / ms['avl']:.2f} | {bound:.2f} |",
            flush=True,
        )
        del caches, fns


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--shape",
        "--shapes",
        nargs="+",
        default=["all"],
        choices=[*SPECS, *GROUPS],
        help="model shapes or groups (qwen25vl = its 1k/2k/4k image sizes; all)",
    )
    p.add_argument("--layers", type=int, default=None, help="decoder layers (2 CPU, 4 GPU)")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4, 8])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="fp32 CPU, bf16 GPU")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="1/16-width layers: a smoke run")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    L = args.layers or (4 if cuda else 2)
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    args.rounds = args.rounds or (30 if cuda else 8)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    keys = list(dict.fromkeys(k for s in args.shape for k in GROUPS.get(s, [s])))

    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(
        f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {L} "
        f"layers, {str(dtype).removeprefix('torch.')}\n"
    )
    print(
        "| shape rows full/avl stored/active | B | full (SDPA) ms | full (op) ms | avl ms | "
        "avl/tok ms | SDPA/avl | SDPA/avl-tok | full-op/avl | bytes bound |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    built = None  # (config factory, layers, cfg, rope): one stack per model, shared by sizes
    for key in keys:
        spec = SPECS[key]
        if built is None or built[0] is not spec.config:
            built = None  # free the previous model's layers before building the next
            cfg = spec.config()
            stack = [spec.layer(cfg, i).to(device, dtype).eval() for i in range(L)]
            built = (spec.config, stack, cfg, spec.rope(cfg).to(device))
            del stack
        run_spec(spec, built[1], built[2], built[3], args, device, dtype, gen)
    print(
        "\nmedians of one decode step over all layers; full-op/avl: the same kernel over all "
        "rows vs the active rows; bound = bytes read per layer (weights + K/V), full / avl."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
