"""Core-cache decode attention: the op against full attention and the index_select path.

One decode query per head over one layer's KV cache: LLaVA-1.5-7B / 1.6-7B shapes (32 query
and KV heads, head_dim 128) and Qwen2.5-VL-7B shapes (28 query heads, 4 KV heads: GQA group 7,
head_dim 128) at 1,000 / 2,000 / 4,000 vision tokens. Columns, all timed in one process and
interleaved:

* ``SDPA full``  — ``F.scaled_dot_product_attention`` over all ``N`` rows;
* ``best full``  — the fastest of SDPA, matmul+softmax and the op over all rows (arange);
* ``index_select`` — the active rows copied into preallocated buffers, then matmul+softmax
  (+ head-averaged probs, which the op also returns);
* ``op``         — ``avl_lab.ext.core_attention`` on the active rows.

The last two run on two cache layouts with the same values: ``head`` = ``[B, Hkv, N, D]``
contiguous (stock Hugging Face caches), ``token`` = a ``[B, N, Hkv, D]`` buffer passed as its
``[B, Hkv, N, D]`` transposed view (how ``avl_lab.engine`` stores its cache: a selected
token's rows for all heads are one contiguous run).
Full attention always reads the head-major cache.

Every layer has its own buffers and active set; ``L`` layers are cycled (as many as fit in
``--budget-gib``, at most 32) so the caches are cold. GB/s counts the K/V bytes of the
active rows; the probe is ``x.sum()`` over a 256 MiB buffer (two alternated), timed in the
same round-robin as the variants; "x BW" = op time / (active K/V bytes / probe GB/s).

``--per-head`` adds, to the same round-robin, the op with per-kv-head rows (``active``
``[B, Hkv, n]``) against shared rows over the same bytes, in the row patterns of
``_per_head.py`` (random rows, and the engine's per-head budget and tiering layouts), and
prints a second table: per-head against shared, GB/s and x BW for both.

Usage: ``python benchmarks/core_attention.py [--device cuda] [--quick] [--shapes llava qwen25vl]
[--per-head]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import _per_head as per_head
import torch
import torch.nn.functional as F
from _timing import ReadProbe, Stat, round_robin

from avl_lab.ext import core_attention, core_attention_ref


@dataclass(frozen=True)
class Shape:
    """A decode layout: ``text`` prompt rows around ``image`` rows (half before, half after)."""

    name: str
    image: int
    text: int
    keep: float = 0.30  # active fraction of the image rows (A-VL core set C=30)
    heads: int = 32
    kv_heads: int = 32
    head_dim: int = 128

    @property
    def rows(self) -> int:
        return self.image + self.text

    @property
    def n_active(self) -> int:
        return self.text + round(self.keep * self.image)


SHAPES = {
    "llava15": Shape("LLaVA-1.5", image=576, text=64),  # 640 rows, 237 active (37%)
    "llava16": Shape("LLaVA-1.6", image=2880, text=20),  # 2,900 rows, 884 active (30%)
    # Qwen2.5-VL-7B (Qwen2.5-7B decoder): 28 query heads over 4 KV heads, ~60 chat-template rows.
    "qwen25vl_1k": Shape("Qwen2.5-VL", image=1000, text=60, heads=28, kv_heads=4),  # 1060/360
    "qwen25vl_2k": Shape("Qwen2.5-VL", image=2000, text=60, heads=28, kv_heads=4),  # 2060/660
    "qwen25vl_4k": Shape("Qwen2.5-VL", image=4000, text=60, heads=28, kv_heads=4),  # 4060/1260
}
GROUPS = {
    "llava": ["llava15", "llava16"],
    "qwen25vl": ["qwen25vl_1k", "qwen25vl_2k", "qwen25vl_4k"],
    "all": list(SHAPES),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def active_rows(shape: Shape, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, n]`` sorted indices: all text rows plus a random ``keep`` share of image rows."""
    pre = shape.text // 2  # system prompt before the image, question after it
    text = torch.cat([torch.arange(pre), torch.arange(pre + shape.image, shape.rows)])
    k = shape.n_active - shape.text
    rows = []
    for _ in range(batch):
        img = pre + torch.randperm(shape.image, generator=gen)[:k]
        rows.append(torch.cat([text, img]).sort().values)
    return torch.stack(rows)


@dataclass
class Layer:
    """One layer's buffers: the cache head-major (``k``/``v`` ``[B, Hkv, N, D]``) and
    token-major (``kt``/``vt`` storage ``[B, N, Hkv, D]``), the active rows and the flat row
    ids the index_select baselines use (built once: they only change at update steps)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    kt: torch.Tensor
    vt: torch.Tensor
    a: torch.Tensor
    flat_head: torch.Tensor
    flat_tok: torch.Tensor
    patterns: dict[str, per_head.Pattern] = field(default_factory=dict)  # --per-head


def head_active_rows(shape: Shape, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, Hkv, n]``: per kv head, all text rows plus its own random ``keep`` share of the
    image rows (sorted): as many rows per head as :func:`active_rows`, so the same bytes."""
    return torch.stack([active_rows(shape, shape.kv_heads, gen) for _ in range(batch)])


def make_layers(
    shape: Shape, batch: int, dtype, device, budget_gib: float, gen, with_heads: bool = False
) -> list[Layer]:
    B, H, Hkv, D, N = batch, shape.heads, shape.kv_heads, shape.head_dim, shape.rows
    per_layer = 2 * kv_bytes(shape, B, dtype)  # head- and token-major copies
    if with_heads:
        per_layer += per_head.pattern_bytes(shape, B, dtype)
    n_layers = int(max(2, min(32, budget_gib * 2**30 // per_layer)))
    layers = []
    for _ in range(n_layers):
        q = torch.randn(B, H, 1, D, generator=gen).to(device, dtype)
        k = torch.randn(B, Hkv, N, D, generator=gen).to(device, dtype)
        v = torch.randn(B, Hkv, N, D, generator=gen).to(device, dtype)
        a = active_rows(shape, B, gen).to(device)
        bh = torch.arange(B, device=device)[:, None] * Hkv + torch.arange(Hkv, device=device)
        flat_head = (bh[:, :, None] * N + a[:, None, :]).reshape(-1)  # rows of k.view(-1, D)
        tok = torch.arange(B, device=device)[:, None, None] * N + a[:, None, :]  # [B, 1, n]
        heads = torch.arange(Hkv, device=device)[None, :, None]
        flat_tok = (tok * Hkv + heads).reshape(-1)  # rows of kt.view(-1, D), head-major order
        kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        layer = Layer(q, k, v, kt, vt, a, flat_head, flat_tok)
        if with_heads:
            rand = head_active_rows(shape, B, gen).to(device)
            layer.patterns = per_head.make_patterns(shape, B, dtype, device, gen, layer, rand)
        layers.append(layer)
    return layers


def kv_bytes(shape: Shape, batch: int, dtype, rows: int | None = None) -> int:
    """K and V bytes of ``rows`` (default all) cache rows of one layer."""
    rows = shape.rows if rows is None else rows
    return 2 * batch * shape.kv_heads * rows * shape.head_dim * torch.finfo(dtype).bits // 8


def variants(layers: list[Layer], shape: Shape, dtype, impl: str) -> dict:
    """Closures ``fn(i)`` running one variant on layer ``i % L``."""
    L = len(layers)
    B, H, _, D = layers[0].q.shape
    Hkv, n, N = shape.kv_heads, layers[0].a.shape[1], shape.rows
    G, scale = H // Hkv, D**-0.5
    dev = layers[0].q.device
    kbuf = torch.empty(B * Hkv * n, D, dtype=dtype, device=dev)
    vbuf = torch.empty_like(kbuf)
    full_idx = torch.arange(N, device=dev).expand(B, -1).contiguous()

    def attend(q, ka, va):  # ka, va [B, Hkv, n, D], any strides
        s = torch.matmul(q.view(B, Hkv, G, D), ka.transpose(-1, -2)) * scale
        p = torch.softmax(s, dim=-1, dtype=torch.float32)
        out = torch.matmul(p.to(dtype), va).view(B, H, 1, D)
        return out, p.mean(dim=(1, 2))

    def sdpa_full(i):
        x = layers[i % L]
        return F.scaled_dot_product_attention(x.q, x.k, x.v, scale=scale, enable_gqa=G > 1)

    def matmul_full(i):
        x = layers[i % L]
        s = torch.matmul(x.q.view(B, Hkv, G, D), x.k.transpose(-1, -2)) * scale
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(dtype)
        return torch.matmul(p, x.v).view(B, H, 1, D)

    def op_full(i):
        x = layers[i % L]
        return core_attention(x.q, x.k, x.v, full_idx, scale, impl=impl)

    def idx_head(i):
        x = layers[i % L]
        torch.index_select(x.k.view(-1, D), 0, x.flat_head, out=kbuf)
        torch.index_select(x.v.view(-1, D), 0, x.flat_head, out=vbuf)
        return attend(x.q, kbuf.view(B, Hkv, n, D), vbuf.view(B, Hkv, n, D))

    def idx_tok(i):  # rows gathered from the token-major cache into head-major buffers
        x = layers[i % L]
        torch.index_select(x.kt.view(-1, D), 0, x.flat_tok, out=kbuf)
        torch.index_select(x.vt.view(-1, D), 0, x.flat_tok, out=vbuf)
        return attend(x.q, kbuf.view(B, Hkv, n, D), vbuf.view(B, Hkv, n, D))

    def op_head(i):
        x = layers[i % L]
        return core_attention(x.q, x.k, x.v, x.a, scale, impl=impl)

    def op_tok(i):
        x = layers[i % L]
        return core_attention(
            x.q, x.kt.transpose(1, 2), x.vt.transpose(1, 2), x.a, scale, impl=impl
        )

    fns = {
        "sdpa_full": sdpa_full,
        "matmul_full": matmul_full,
        "op_full": op_full,
        "idx_head": idx_head,
        "op_head": op_head,
        "idx_tok": idx_tok,
        "op_tok": op_tok,
    }
    if layers[0].patterns:
        fns.update(per_head.variants(layers, impl, core_attention))
    return fns


def check(fns: dict, layers: list[Layer], dtype) -> None:
    """Every variant must agree with the reference before anything is timed."""
    x = layers[0]
    ref_out, ref_p = core_attention_ref(x.q, x.k, x.v, x.a)
    full = torch.arange(x.k.shape[2], device=x.a.device).expand(x.a.shape[0], -1)
    full_out = core_attention_ref(x.q, x.k, x.v, full)[0]
    tol = {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for name in ("sdpa_full", "matmul_full", "op_full"):
        got = fns[name](0)
        got = got[0] if isinstance(got, tuple) else got
        torch.testing.assert_close(got.float(), full_out.float(), **tol, msg=name)
    # GQA: the op (and the reference) group query heads ``h`` on kv head ``h // G`` without
    # repeating K/V; check that against plain multi-head attention over repeated K/V rows
    # (the repeat_kv convention of Hugging Face models), which shares no grouping code.
    G = x.q.shape[1] // x.k.shape[1]
    if G > 1:
        mha = core_attention_ref(
            x.q, x.k.repeat_interleave(G, dim=1), x.v.repeat_interleave(G, dim=1), x.a
        )
        torch.testing.assert_close(ref_out, mha[0], **tol, msg=f"reference vs MHA, group {G}")
        torch.testing.assert_close(ref_p, mha[1], atol=1e-6, rtol=1e-5, msg="reference vs MHA")
    for name in ("idx_head", "op_head", "idx_tok", "op_tok"):
        out, p = fns[name](0)
        torch.testing.assert_close(out.float(), ref_out.float(), **tol, msg=name)
        # index_select scores are computed in the cache dtype; the op accumulates in fp32.
        ptol = (
            {"atol": 1e-5, "rtol": 1e-3} if name.startswith("op") else {"atol": 1e-4, "rtol": 0.1}
        )
        torch.testing.assert_close(p, ref_p, **ptol, msg=name)
    if x.patterns:
        per_head.check(layers, core_attention, core_attention_ref, tol)


def run_case(shape: Shape, batch: int, dname: str, device, args, probe: ReadProbe, gen) -> dict:
    dtype = DTYPES[dname]
    layers = make_layers(shape, batch, dtype, device, args.budget_gib, gen, args.per_head)
    impl = "cuda" if device.type == "cuda" else "cpu"
    fns = variants(layers, shape, dtype, impl)
    check(fns, layers, dtype)
    fns["probe"] = probe
    calls = len(layers) if device.type == "cuda" else 1
    big = kv_bytes(shape, batch, dtype) > 3e8
    rounds = args.rounds or (12 if args.quick else (15 if big else 30))
    st = round_robin(fns, rounds, calls, device, warmup=3, seed=args.seed)
    n = layers[0].a.shape[1]
    best = min(("sdpa_full", "matmul_full", "op_full"), key=lambda k: st[k].median)
    return {
        "shape": shape,
        "batch": batch,
        "dtype": dname,
        "n": n,
        "st": st,
        "best": best,
        "sel_bytes": kv_bytes(shape, batch, dtype, n),
        "probe": probe.gbs(st["probe"]),
        "layers": len(layers),
        "patterns": list(layers[0].patterns),
    }


LAYOUTS = {"head": ("idx_head", "op_head"), "token": ("idx_tok", "op_tok")}


def rows(r: dict) -> list[str]:
    st: dict[str, Stat] = r["st"]
    sd, bf = st["sdpa_full"], st[r["best"]]
    sh = r["shape"]
    out = []
    for layout, (ix_name, op_name) in LAYOUTS.items():
        op, ix = st[op_name], st[ix_name]
        gbs = r["sel_bytes"] / (op.median * 1e-6) / 1e9
        out.append(
            f"| {sh.name} {sh.rows}/{r['n']} | {r['batch']} | {r['dtype']} | {layout} | "
            f"{sd.cell()} | {bf.cell()} {r['best'].replace('_full', '')} | {ix.cell()} | "
            f"{op.cell()} | {op.median / sd.median:.2f} | {op.median / bf.median:.2f} | "
            f"{op.median / ix.median:.2f} | {gbs:.1f} | {r['probe']:.1f} | {r['probe'] / gbs:.2f} |"
        )
    return out


HEADER = (
    "| shape rows/active | B | dtype | cache layout | SDPA full µs | op shared µs | "
    "op per-head µs | per-head/shared | per-head/SDPA | shared x BW | per-head x BW | "
    "probe GB/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)

HEADER = (
    "| shape rows/active | B | dtype | cache layout | SDPA full µs | best full µs | "
    "index_select µs | op µs | op/SDPA | op/best | op/idx | op GB/s | probe GB/s | op x BW |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--quick", action="store_true", help="LLaVA-1.6 and Qwen2.5-VL 2k, fp32 B=1, few rounds"
    )
    p.add_argument(
        "--shapes",
        nargs="+",
        default=["all"],
        choices=[*SHAPES, *GROUPS],
        help="shapes or groups (llava, qwen25vl, all)",
    )
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--rounds", type=int, default=0, help="timed rounds (0: by size)")
    p.add_argument("--budget-gib", type=float, default=None, help="cache buffers per case")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-head", action="store_true", help="also time the op with per-kv-head rows")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.dtypes, args.batch = ["llava16", "qwen25vl_2k"], ["fp32"], [1]
    args.shapes = list(dict.fromkeys(k for s in args.shapes for k in GROUPS.get(s, [s])))
    if args.budget_gib is None:
        args.budget_gib = 8.0 if args.device == "cuda" else 1.5
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    probe = ReadProbe(device, mbytes=1024 if device.type == "cuda" else 256)
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print(HEADER, flush=True)
    results = []
    for s in args.shapes:
        for b in args.batch:
            for d in args.dtypes:
                r = run_case(SHAPES[s], b, d, device, args, probe, gen)
                results.append(r)
                print("\n".join(rows(r)), flush=True)
    print(
        "\nbest full: fastest of sdpa / matmul(+softmax) / op over all rows (named); full "
        "attention always reads the head-major cache. x BW: op time / (selected K+V bytes / "
        "probe GB/s)."
    )
    if args.per_head:
        print(
            "\nPer-head rows (same round-robin): per-head vs shared indices over the same "
            "bytes, patterns as in benchmarks/_per_head.py.\n"
        )
        print(per_head.HEADER)
        for r in results:
            print("\n".join(per_head.rows(r)))
        print("\narrange (one copy of a tiering layer's stored slots, K and V, head-major):")
        for r in results:
            sh = r["shape"]
            print(
                f"  {sh.name} {sh.rows}/{r['n']} B={r['batch']} {r['dtype']}: "
                f"{r['st']['arrange'].cell()} µs"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
