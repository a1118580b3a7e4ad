"""Core-cache decode attention: the op against full attention and the index_select path.

One decode query per head over one layer's KV cache, LLaVA-1.5-7B / 1.6-7B shapes (32 query
and KV heads, head_dim 128). Columns, all timed in one process and interleaved:

* ``SDPA full``  — ``F.scaled_dot_product_attention`` over all ``N`` rows;
* ``best full``  — the fastest of SDPA, matmul+softmax and the op over all rows (arange);
* ``index_select`` — the active rows copied into preallocated buffers, then matmul+softmax
  (+ head-averaged probs, which the op also returns);
* ``op``         — ``avl_lab.ext.core_attention`` on the active rows.

Every layer has its own buffers and active set; ``L`` layers are cycled (as many as fit in
``--budget-gib``, at most 32) so the caches are cold. GB/s counts the K/V bytes a variant
must read (all rows for full attention, active rows otherwise); "x BW" is time over the
time the bandwidth probe (``x.sum()`` over 512 MiB, same run) would take for those bytes.

Usage: ``python benchmarks/core_attention.py [--device cuda] [--quick]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _timing import Stat, read_bandwidth_probe, round_robin

from avl_lab.ext import core_attention, core_attention_ref


@dataclass(frozen=True)
class Shape:
    """A LLaVA decode layout: ``text`` prompt rows around ``image`` rows."""

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


def make_layers(shape, batch, dtype, device, budget_gib, gen):
    B, H, Hkv, D, N = batch, shape.heads, shape.kv_heads, shape.head_dim, shape.rows
    layer_bytes = 2 * B * Hkv * N * D * torch.finfo(dtype).bits // 8
    n_layers = int(max(2, min(32, budget_gib * 2**30 // layer_bytes)))
    layers = []
    for _ in range(n_layers):
        q = torch.randn(B, H, 1, D, generator=gen).to(device, dtype)
        k = torch.randn(B, Hkv, N, D, generator=gen).to(device, dtype)
        v = torch.randn(B, Hkv, N, D, generator=gen).to(device, dtype)
        a = active_rows(shape, B, gen).to(device)
        # Flat row ids for index_select over k.view(-1, D), built once per layer (they only
        # change at update steps), so the baseline pays for the copy alone.
        base = torch.arange(B, device=device)[:, None] * Hkv + torch.arange(Hkv, device=device)
        flat = (base[:, :, None] * N + a[:, None, :]).reshape(-1)
        layers.append((q, k, v, a, flat))
    return layers, layer_bytes


def variants(layers, shape, dtype, impl):
    """Closures ``fn(i)`` running one variant on layer ``i % L``."""
    L = len(layers)
    B, H, _, D = layers[0][0].shape
    Hkv, n = shape.kv_heads, layers[0][3].shape[1]
    G, scale = H // Hkv, D**-0.5
    gqa = G > 1
    kbuf = torch.empty(B * Hkv * n, D, dtype=dtype, device=layers[0][0].device)
    vbuf = torch.empty_like(kbuf)
    full_idx = [torch.arange(shape.rows, device=kbuf.device).expand(B, -1).contiguous()]

    def sdpa_full(i):
        q, k, v, _, _ = layers[i % L]
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)

    def matmul_full(i):
        q, k, v, _, _ = layers[i % L]
        s = torch.matmul(q.view(B, Hkv, G, D), k.transpose(-1, -2)) * scale
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(dtype)
        return torch.matmul(p, v).view(B, H, 1, D)

    def op_full(i):
        q, k, v, _, _ = layers[i % L]
        return core_attention(q, k, v, full_idx[0], scale, impl=impl)

    def index_select(i):
        q, k, v, _, flat = layers[i % L]
        torch.index_select(k.view(-1, D), 0, flat, out=kbuf)
        torch.index_select(v.view(-1, D), 0, flat, out=vbuf)
        ka, va = kbuf.view(B, Hkv, n, D), vbuf.view(B, Hkv, n, D)
        s = torch.matmul(q.view(B, Hkv, G, D), ka.transpose(-1, -2)) * scale
        p = torch.softmax(s, dim=-1, dtype=torch.float32)
        out = torch.matmul(p.to(dtype), va).view(B, H, 1, D)
        return out, p.mean(dim=(1, 2))

    def op(i):
        q, k, v, a, _ = layers[i % L]
        return core_attention(q, k, v, a, scale, impl=impl)

    return {
        "sdpa_full": sdpa_full,
        "matmul_full": matmul_full,
        "op_full": op_full,
        "index_select": index_select,
        "op": op,
    }


def check(fns, layers, dtype) -> None:
    """Every variant must agree with the reference before anything is timed."""
    q, k, v, a, _ = layers[0]
    ref_out, ref_p = core_attention_ref(q, k, v, a)
    full = torch.ones_like(a[:, :1]) * torch.arange(k.shape[2], device=a.device)
    full_out = core_attention_ref(q, k, v, full)[0]
    tol = {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for name in ("sdpa_full", "matmul_full"):
        torch.testing.assert_close(fns[name](0).float(), full_out.float(), **tol, msg=name)
    torch.testing.assert_close(fns["op_full"](0)[0].float(), full_out.float(), **tol)
    for name in ("index_select", "op"):
        out, p = fns[name](0)
        torch.testing.assert_close(out.float(), ref_out.float(), **tol, msg=name)
        torch.testing.assert_close(p, ref_p, atol=1e-5, rtol=1e-3, msg=name)


def run_case(shape, batch, dname, device, args, probe_gbs, gen):
    dtype = DTYPES[dname]
    layers, layer_bytes = make_layers(shape, batch, dtype, device, args.budget_gib, gen)
    impl = "cuda" if device.type == "cuda" else "cpu"
    fns = variants(layers, shape, dtype, impl)
    check(fns, layers, dtype)
    calls = len(layers) if device.type == "cuda" else 1
    rounds = args.rounds or (15 if args.quick else (40 if layer_bytes < 3e8 else 20))
    st = round_robin(fns, rounds, calls, device, warmup=3, seed=args.seed)
    n = layers[0][3].shape[1]
    sel_bytes = layer_bytes * n / shape.rows
    best = min(("sdpa_full", "matmul_full", "op_full"), key=lambda k: st[k].median)
    del layers, fns
    return {
        "shape": shape,
        "batch": batch,
        "dtype": dname,
        "n": n,
        "st": st,
        "best": best,
        "layer_bytes": layer_bytes,
        "sel_bytes": sel_bytes,
        "probe": probe_gbs,
    }


def row(r) -> str:
    st: dict[str, Stat] = r["st"]
    op, sd, bf, ix = st["op"], st["sdpa_full"], st[r["best"]], st["index_select"]
    gbs = r["sel_bytes"] / (op.median * 1e-6) / 1e9
    sh = r["shape"]
    return (
        f"| {sh.name} {sh.rows}/{r['n']} | {r['batch']} | {r['dtype']} | {sd.cell()} | "
        f"{bf.cell()} {r['best'].replace('_full', '')} | {ix.cell()} | {op.cell()} | "
        f"{op.median / sd.median:.2f} | {op.median / bf.median:.2f} | "
        f"{op.median / ix.median:.2f} | {gbs:.1f} | {r['probe'] / gbs:.2f} |"
    )


HEADER = (
    "| shape rows/active | B | dtype | SDPA full µs | best full µs | index_select µs | "
    "op µs | op/SDPA | op/best | op/idx | op GB/s | op x BW |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="LLaVA-1.6 fp32 only, few rounds")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--rounds", type=int, default=0, help="timed rounds (0: by size)")
    p.add_argument("--budget-gib", type=float, default=None, help="cache buffers per case")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.dtypes, args.batch = ["llava16"], ["fp32"], [1]
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
    probe = read_bandwidth_probe(device)
    print(
        f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"read-bandwidth probe {probe:.1f} GB/s\n"
    )
    print(HEADER, flush=True)
    results = []
    for s in args.shapes:
        for b in args.batch:
            for d in args.dtypes:
                r = run_case(SHAPES[s], b, d, device, args, probe, gen)
                results.append(r)
                print(row(r), flush=True)
    print("\nbest full: fastest of sdpa / matmul(+softmax) / op over all rows (named).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
