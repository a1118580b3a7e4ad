"""One decode step through a stack of real-size LLaVA-1.6-7B decoder layers: full vs A-VL cache.

Stock ``transformers`` ``LlamaDecoderLayer``s with the Vicuna-7B sizes of LLaVA-1.6-7B (hidden
4096, 32 heads, 32 KV heads, head_dim 128, MLP 11008; random weights), one new token per step.
The layers run unmodified; only their cache and attention function differ (registered through
``transformers.AttentionInterface``):

* ``full``: every cache row (2,880 image + 20 text = 2,900), stock SDPA;
* ``full (op)``: the same rows through ``core_attention`` (isolates the op from the row cut);
* ``avl``: an A-VL S=45 C=30 cache: 20 text + 45% of the image rows stored (1,316 rows),
  attention over text + 30% of the image rows (884 rows, the new token included) through
  ``core_attention``; ``avl/tok`` is the same with the cache stored token-major (the
  layout ``avl_lab.engine`` uses).

Each step writes the new token's K/V into a preallocated slot (no reallocation), so the time
is the layers' own work. The bytes bound is (weights + full K/V) / (weights + active K/V)
per layer, as in docs/PERFORMANCE.md (~1.08x at batch 1, ~1.5x at batch 8 for LLaVA-1.6).

Usage: ``python benchmarks/decode_step.py [--device cuda] [--layers 2] [--batch 1 4 8]``
"""

from __future__ import annotations

import argparse
import sys

import torch
from _timing import round_robin
from transformers import AttentionInterface, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from avl_lab.ext import core_attention

IMAGE, TEXT, STORE, KEEP = 2880, 20, 0.45, 0.30
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


def make_cache(L, B, rows, cfg, dtype, device, gen) -> SlotCache:
    shape = (B, cfg.num_key_value_heads, rows, cfg.head_dim)
    kv = [[torch.randn(shape, generator=gen).to(device, dtype) for _ in range(L)] for _ in "kv"]
    return SlotCache(*kv)


def token_major(cache: SlotCache) -> SlotCache:
    """The same values stored ``[B, R, Hkv, D]``, handed to the layers as ``[B, Hkv, R, D]``."""
    tm = [
        [t.transpose(1, 2).contiguous().transpose(1, 2) for t in ts]
        for ts in (cache.keys, cache.values)
    ]
    return SlotCache(*tm)


def avl_active(B: int, stored: int, gen) -> torch.Tensor:
    """``[B, n]``: all text rows and the new token, plus 30% of the image rows, sorted. Stored
    rows: 10 system-prompt rows, then the kept image rows, then 10 question rows (new last)."""
    n_img = stored - TEXT
    pre = TEXT // 2
    text = torch.cat([torch.arange(pre), torch.arange(pre + n_img, stored)])
    k = round(KEEP * IMAGE)
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
            h = layer(h, past_key_values=cache, position_embeddings=emb, core_active=active)
        return h

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
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
    rounds = args.rounds or (30 if cuda else 8)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = llava16_config(args.tiny)
    layers = [LlamaDecoderLayer(cfg, i).to(device, dtype).eval() for i in range(L)]
    rope = LlamaRotaryEmbedding(cfg).to(device)
    full_rows, stored = IMAGE + TEXT, TEXT + round(STORE * IMAGE)
    es = torch.finfo(dtype).bits // 8
    w_bytes = sum(p.numel() for p in layers[0].parameters()) * es  # per layer
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(
        f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {L} "
        f"layers, {str(dtype).removeprefix('torch.')}; rows: full {full_rows}, avl stored "
        f"{stored}, active {TEXT + round(KEEP * IMAGE)}\n"
    )
    print(
        "| B | full (SDPA) ms | full (op) ms | avl ms | avl/tok ms | SDPA/avl | SDPA/avl-tok "
        "| full-op/avl | bytes bound |\n|---|---|---|---|---|---|---|---|---|"
    )
    for B in args.batch:
        caches = {
            "full": make_cache(L, B, full_rows, cfg, dtype, device, gen),
            "avl": make_cache(L, B, stored, cfg, dtype, device, gen),
        }
        caches["avl_tok"] = token_major(caches["avl"])
        act = avl_active(B, stored, gen).to(device)
        all_rows = torch.arange(full_rows, device=device).expand(B, -1).contiguous()
        pos = torch.full((B, 1), full_rows - 1, device=device)  # RoPE position of the new token
        x = torch.randn(B, 1, cfg.hidden_size, generator=gen).to(device, dtype)
        emb = rope(x, pos)

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
            st = round_robin(fns, rounds, 1, device, warmup=2, seed=args.seed)
        kv_row = 2 * B * cfg.num_key_value_heads * cfg.head_dim * es
        n_act = act.shape[1]
        bound = (w_bytes + full_rows * kv_row) / (w_bytes + n_act * kv_row)
        ms = {k: v.median / 1e3 for k, v in st.items()}
        print(
            f"| {B} | {ms['full']:.1f} | {ms['full_op']:.1f} | {ms['avl']:.1f} | "
            f"{ms['avl_tok']:.1f} | {ms['full'] / ms['avl']:.2f} | "
            f"{ms['full'] / ms['avl_tok']:.2f} | {ms['full_op'] / ms['avl']:.2f} | {bound:.2f} |",
            flush=True,
        )
        del caches
    print(
        "\nmedians of one decode step over all layers; full-op/avl: the same kernel over all "
        "rows vs the active rows; bound = bytes read per layer (weights + K/V), full / avl."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
