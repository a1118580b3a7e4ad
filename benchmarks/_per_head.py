"""Per-head rows for ``core_attention.py --per-head``: the op with per-KV-head indices
(``[B, Hkv, n]``) against shared indices (``[B, n]``) over the same bytes.

Each *pattern* is one layer's storage, held twice with the same values: token-major
(``[B, M, Hkv, D]`` passed as its ``[B, Hkv, M, D]`` view: the engine's layout for shared
rows) and head-major (``[B, Hkv, M, D]``: the engine's layout for rows per KV head), and two
index sets that select the same number of (row, head) pairs: ``shared`` (every head the same
rows) and ``heads`` (every head its own). Timed: shared rows on the token-major storage,
per-head rows on both. Patterns:

* ``random`` — every head its own random share of the image rows among all rows (no engine
  produces this; the worst case);
* ``budget`` — per-head budget policies (per-head H2O, SnapKV, PyramidKV, AdaKV): each head's
  kept rows compacted at the front of its slots (the engine's per-head compaction), AdaKV-like
  counts that differ per head (0.5–1.5× the mean), filler up to the largest, then the rows
  appended in decode (``TAIL``); the policy computes over everything it keeps. Shared: the
  same count for every head, compacted the same way;
* ``tiering`` — A-VL ``vision_tiering`` per head (S=45, C=30): the text rows and 45% of the
  image rows stored per head (compacted), each head computing over its own core (30%) among
  them; shared: one core for all heads;
* ``text per head`` — A-VL with TextH2O's text window per KV head (``avl T=50``, the official
  reading): the image core shared by the heads, each head its own half of the text rows; the
  engine keeps such rows aligned (one slot = one token for every head, a head's dropped rows
  holes; token-major) and hands the op its wide index (slot ``j`` or -1); shared: one text half
  for all heads;
* ``tiering, active-first`` — as ``tiering``, but each head's core slots moved to the front of
  its slots (the per-head indices become a common prefix): what arranging the storage by the
  active set would buy; the engine does not do this (see benchmarks/README.md). Its
  ``arrange`` cost is timed too: one copy of all of a layer's stored slots, as a compaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

STORED = 0.45  # tiering: stored share of the image rows (A-VL S=45)
TAIL = 16  # budget: rows appended in decode so far (new tokens, a row of every head)


@dataclass
class Pattern:
    """One layer's storage, ``[B, Hkv, M, D]`` token-major views (``k``/``v``) and the same
    values head-major (``kh``/``vh``), and its two index sets."""

    k: Tensor
    v: Tensor
    shared: Tensor  # [B, n]
    heads: Tensor  # [B, Hkv, n'] -1 padded; per batch row Hkv * n valid entries
    kh: Tensor | None = None
    vh: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kh is None:
            self.kh, self.vh = self.k.contiguous(), self.v.contiguous()


def _rand_rows(rows: int, k: int, gen: torch.Generator) -> Tensor:
    return torch.randperm(rows, generator=gen)[:k].sort().values


def _token_major(B: int, M: int, Hkv: int, D: int, dtype, device, gen) -> tuple[Tensor, Tensor]:
    k = torch.randn(B, M, Hkv, D, generator=gen).to(device, dtype)
    v = torch.randn(B, M, Hkv, D, generator=gen).to(device, dtype)
    return k.transpose(1, 2), v.transpose(1, 2)


def _tiering(shape, B, dtype, device, gen) -> tuple[Pattern, Pattern]:
    """Compacted per-head tiering storage, with random and active-first per-head cores."""
    Hkv, D, text = shape.kv_heads, shape.head_dim, shape.text
    M = text + round(STORED * shape.image)
    core = shape.n_active - text  # image slots computed over, per head
    k, v = _token_major(B, M, Hkv, D, dtype, device, gen)
    text_slots = torch.arange(text)  # compacted: the text rows' slots (any fixed set)

    def core_set() -> Tensor:
        return torch.cat([text_slots, text + _rand_rows(M - text, core, gen)]).sort().values

    shared = torch.stack([core_set() for _ in range(B)]).to(device)
    heads = torch.stack([torch.stack([core_set() for _ in range(Hkv)]) for _ in range(B)])
    prefix = torch.arange(shape.n_active).expand(B, Hkv, -1).contiguous()
    return Pattern(k, v, shared, heads.to(device)), Pattern(k, v, shared, prefix.to(device))


def _text_per_head(shape, B, dtype, device, gen) -> Pattern:
    """Aligned slots: a shared image core, per-head text halves, wide indices (slot or -1)."""
    Hkv, D, text = shape.kv_heads, shape.head_dim, shape.text
    M = text + round(STORED * shape.image)
    core = shape.n_active - text
    k, v = _token_major(B, M, Hkv, D, dtype, device, gen)

    def wide(rows: Tensor) -> Tensor:  # [..., M] bool -> slot number or -1
        return torch.where(rows, torch.arange(M), -1)

    shared = torch.zeros(B, M, dtype=torch.bool)
    heads = torch.zeros(B, Hkv, M, dtype=torch.bool)
    for b in range(B):
        img = text + _rand_rows(M - text, core, gen)
        shared[b, img] = True
        shared[b, _rand_rows(text, text // 2, gen)] = True
        for h in range(Hkv):
            heads[b, h, img] = True
            heads[b, h, _rand_rows(text, text // 2, gen)] = True
    return Pattern(k, v, wide(shared).to(device), wide(heads).to(device))


def _budget(shape, B, dtype, device, gen) -> Pattern:
    """Compacted per-head budgets (counts differ per head) plus a decode tail."""
    Hkv, D, n = shape.kv_heads, shape.head_dim, shape.n_active
    kept = n - TAIL  # mean prompt rows kept per head
    w = 0.5 + torch.rand(B, Hkv, generator=gen)  # 0.5-1.5x the mean, then exact sum
    counts = (w / w.mean(1, keepdim=True) * kept).round().long()
    counts[:, -1] += kept * Hkv - counts.sum(1)  # every batch row: Hkv * kept in all
    M = int(counts.max()) + TAIL
    k, v = _token_major(B, M, Hkv, D, dtype, device, gen)
    tail = torch.arange(M - TAIL, M)
    width = int(counts.max()) + TAIL
    heads = torch.full((B, Hkv, width), -1, dtype=torch.long)
    for b in range(B):
        for h in range(Hkv):
            c = int(counts[b, h])
            heads[b, h, : c + TAIL] = torch.cat([torch.arange(c), tail])
    shared = torch.cat([torch.arange(kept), tail]).expand(B, -1).contiguous()
    return Pattern(k, v, shared.to(device), heads.to(device))


def make_patterns(shape, B, dtype, device, gen, layer, rand: Tensor) -> dict[str, Pattern]:
    """The patterns of one layer; ``random`` reuses the layer's full caches (``layer.k``/``v``
    head-major, ``layer.kt``/``vt`` token-major storage), its shared rows ``layer.a`` and
    ``rand`` ``[B, Hkv, n]``, every head its own random rows."""
    tiering, first = _tiering(shape, B, dtype, device, gen)
    kt, vt = layer.kt.transpose(1, 2), layer.vt.transpose(1, 2)
    return {
        "random": Pattern(kt, vt, layer.a, rand, layer.k, layer.v),
        "budget": _budget(shape, B, dtype, device, gen),
        "tiering": tiering,
        "text per head": _text_per_head(shape, B, dtype, device, gen),
        "tiering, active-first": first,
    }


def pattern_bytes(shape, B: int, dtype) -> int:
    """Storage bytes the patterns add per layer (beyond the full caches)."""
    tier = shape.text + round(STORED * shape.image)
    budget = round(1.5 * shape.n_active) + TAIL
    per_row = 2 * B * shape.kv_heads * shape.head_dim * torch.finfo(dtype).bits // 8
    return 2 * (3 * tier + budget) * per_row  # token- and head-major copies


def variants(layers, impl: str, op) -> dict[str, Callable[[int], object]]:
    """``"<pattern>/shared"`` (token-major storage), ``"<pattern>/per-head token"`` and
    ``"<pattern>/per-head head"`` closures, plus ``arrange``: one ``index_select`` copy of
    all of a head-major tiering layer's stored slots into fresh buffers (K and V), as the
    engine's per-head compaction does."""
    L = len(layers)
    fns: dict[str, Callable[[int], object]] = {}
    for name in layers[0].patterns:
        for key, which, hm in (
            ("shared", "shared", False),
            ("per-head token", "heads", False),
            ("per-head head", "heads", True),
        ):

            def run(i, name=name, which=which, hm=hm):
                x = layers[i % L]
                p = x.patterns[name]
                k, v = (p.kh, p.vh) if hm else (p.k, p.v)
                return op(x.q, k, v, getattr(p, which), impl=impl)

            fns[f"{name}/{key}"] = run

    def arrange(i):
        p = layers[i % L].patterns["tiering"]
        B, H, M, D = p.kh.shape  # head-major storage
        perm = torch.arange(M - 1, -1, -1, device=p.kh.device)  # every slot moves
        rows = (torch.arange(B * H, device=p.kh.device)[:, None] * M + perm).reshape(-1)
        return [t.reshape(-1, D).index_select(0, rows) for t in (p.kh, p.vh)]

    fns["arrange"] = arrange
    return fns


def check(layers, op, ref, tol: dict) -> None:
    """Every pattern's shared and per-head op results equal the reference."""
    x = layers[0]
    for name, p in x.patterns.items():
        for which, k, v in (("shared", p.k, p.v), ("heads", p.k, p.v), ("heads", p.kh, p.vh)):
            a = getattr(p, which)
            out, probs = op(x.q, k, v, a)
            r_out, r_probs = ref(x.q, k, v, a)
            torch.testing.assert_close(out.float(), r_out.float(), **tol, msg=f"{name} {which}")
            torch.testing.assert_close(probs, r_probs, atol=1e-5, rtol=1e-3, msg=f"{name} {which}")
        assert int((p.heads >= 0).sum()) == int((p.shared >= 0).sum()) * p.k.shape[1], name  # same bytes


HEADER = (
    "| shape rows/active | B | dtype | rows | op shared µs (token-major) | op per-head µs, "
    "token-major | op per-head µs, head-major | per-head/shared, token / head | "
    "GB/s shared / per-head token / head | x BW shared / per-head token / head | probe GB/s |"
    "\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def rows(r: dict) -> list[str]:
    """Table rows of one case (``r`` from ``core_attention.run_case``): per-head rows on
    token- and head-major storage against shared rows on token-major storage (the engine's
    shared layout)."""
    st, sh, nbytes, bw = r["st"], r["shape"], r["sel_bytes"], r["probe"]
    out = []
    for name in r["patterns"]:
        s, pt, ph = (st[f"{name}/{k}"] for k in ("shared", "per-head token", "per-head head"))
        g = [nbytes / (t.median * 1e-6) / 1e9 for t in (s, pt, ph)]
        out.append(
            f"| {sh.name} {sh.rows}/{r['n']} | {r['batch']} | {r['dtype']} | {name} | "
            f"{s.cell()} | {pt.cell()} | {ph.cell()} | "
            f"{pt.median / s.median:.2f} / {ph.median / s.median:.2f} | "
            f"{g[0]:.1f} / {g[1]:.1f} / {g[2]:.1f} | "
            f"{bw / g[0]:.2f} / {bw / g[1]:.2f} / {bw / g[2]:.2f} | {bw:.1f} |"
        )
    return out
