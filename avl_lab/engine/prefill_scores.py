"""Prefill attention at stock speed, and the attention scores policies read from it.

Prefill under a policy costs what stock prefill costs plus only what the policy asks for:

- **Attention.** The library's mask is classified once per mask object (:func:`plan_mask`):

  * ``causal`` — no mask (no padding), or a mask equal to plain causal attention (a single row
    after prefill pruning): stock ``sdpa_attention_forward`` with SDPA's causal fast path,
    bit for bit what stock ``generate`` computes;
  * ``rows`` — causal attention over a suffix of valid columns per row (left padding, or the
    left filler of prefill pruning): one causal SDPA per row over its valid suffix, which
    skips the masked half that a materialised mask makes SDPA compute (stock pays it);
    padded query positions get zeros, as stock SDPA gives a query that sees nothing;
  * ``masked`` — anything else (sliding windows, bidirectional image blocks): stock SDPA
    with the library's mask.

- **Last-query scores** (paper Eq. 1): one ``[B, Hq, 1, R]`` product, see
  ``attention._last_query_scores``; only the last query's row of the mask is read.

- **Column sums** (attention received per key, summed over queries: H2O, TextH2O), only when
  a policy asks (:func:`attention_colsum`): ``colsum[j] = sum_i P_ij`` over the visible
  (i, j). For ``causal`` and ``rows`` plans the attention itself is computed with them, in one
  pass over ``q kᵀ`` in the model's dtype (exponentials and sums in fp32), chunked over
  queries so memory stays ``O(chunk × R)``: each chunk's probabilities give both ``P V`` and
  the sums, where SDPA followed by a separate column-sum pass computed ``q kᵀ`` twice (1.4x
  less CPU time for attention + sums at LLaVA-NeXT's 2,956 tokens). The causal structure is
  used, not materialised: a chunk of queries ``[s0, e)`` multiplies keys ``[0, e)`` only,
  and only its diagonal block is masked. ``masked`` plans: stock SDPA, then
  :func:`colsum` chunk by chunk. :func:`colsum_ref` is the plain specification (a full
  softmax under a materialised mask).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

#: Elements of one fp32 ``[b, Hq, c, R]`` score block in the column-sum pass (16 MiB): on one
#: CPU thread 2**21..2**22 run at ~0.8x the SDPA call they follow, 2**24 at 1.3x (blocks leave
#: the caches); larger chunks also mean fewer ops, which matters on oversubscribed cores.
COLSUM_CHUNK = 1 << 22
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class MaskPlan:
    """How prefill attention runs for one mask (see the module docstring).

    ``kind`` is ``"causal"``, ``"rows"`` or ``"masked"``; ``starts`` holds, for ``"rows"``,
    the first valid column of each batch row (every later column is valid).
    """

    kind: str
    starts: tuple[int, ...] = ()


CAUSAL = MaskPlan("causal")
MASKED = MaskPlan("masked")

_memo: list = [None, None]  # [weakref to the last mask classified, its suffix starts]


def plan_mask(
    module: nn.Module, mask: Tensor | None, valid: Tensor, q_len: int, is_causal: bool | None = None
) -> MaskPlan:
    """Classify a prefill call's mask.

    Parameters
    ----------
    module : nn.Module
        The attention module (its ``is_causal``, unless the call passes ``is_causal``).
    mask : Tensor or None
        The library's ``[B, 1, q, R]`` bool mask (True = attend), None for plain causal.
    valid : Tensor
        ``[B, R]`` the layer's valid rows (False on padding and prefill-pruning filler).
    q_len : int
        Queries in this call.
    is_causal : bool, optional
        The call's own ``is_causal`` keyword, as ``sdpa_attention_forward`` reads it.
    """
    R = valid.shape[1]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if q_len != R or not causal:
        return MASKED
    if mask is None:
        return CAUSAL if bool(valid.all()) else MASKED
    starts = _suffix_starts(mask)
    if starts is None:
        return MASKED
    cols = torch.arange(R, device=valid.device)[None, :]
    if not torch.equal(valid, cols >= starts[:, None]):
        return MASKED
    if not bool(starts.any()):
        return CAUSAL
    return MaskPlan("rows", tuple(int(s) for s in starts.tolist()))


def _suffix_starts(mask: Tensor) -> Tensor | None:
    """``[B]`` first visible column per row if ``mask`` is causal over a suffix of columns in
    every row (the rows of queries before that column are ignored: padding), else None.
    Memoised on the mask object: every layer of one forward gets the same mask."""
    ref = _memo[0]
    if ref is not None and ref() is mask:
        return _memo[1]
    starts = _classify(mask)
    _memo[0], _memo[1] = weakref.ref(mask), starts
    return starts


def _classify(mask: Tensor) -> Tensor | None:
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1:
        return None
    m = mask[:, 0]  # [B, q, R]
    B, q, R = m.shape
    if q != R:
        return None
    last = m[:, -1]  # [B, R]: the last query sees exactly the valid columns
    starts = R - last.sum(1)
    cols = torch.arange(R, device=m.device)
    if not torch.equal(last, cols[None, :] >= starts[:, None]):
        return None
    causal = torch.ones(q, R, dtype=torch.bool, device=m.device).tril()
    expected = causal[None] & last[:, None, :]
    ignored = (cols[None, :] < starts[:, None])[:, :, None]  # queries on padding/filler
    return starts if bool(((m == expected) | ignored).all()) else None


# --- attention ---------------------------------------------------------------------------------


def attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scale: float,
    plan: MaskPlan,
    **kwargs,
) -> Tensor:
    """Prefill attention by ``plan``: ``out [B, q, Hq, D]`` (see the module docstring)."""
    if plan.kind == "causal":
        return sdpa_attention_forward(module, query, key, value, None, scaling=scale, **kwargs)[0]
    if plan.kind == "rows":
        return _rows_attention(query, key, value, scale, plan.starts)
    return sdpa_attention_forward(module, query, key, value, mask, scaling=scale, **kwargs)[0]


def _rows_attention(query: Tensor, key: Tensor, value: Tensor, scale: float, starts) -> Tensor:
    """Causal attention of each batch row over its valid suffix ``[starts[b], R)``."""
    B, Hq, q, D = query.shape
    out = query.new_zeros(B, q, Hq, D)  # padded queries: zeros, as SDPA gives them
    gqa = key.shape[1] != Hq
    for b, s in enumerate(starts):
        qb, kb, vb = query[b : b + 1, :, s:], key[b : b + 1, :, s:], value[b : b + 1, :, s:]
        o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, enable_gqa=gqa)
        out[b, s:] = o[0].transpose(0, 1)
    return out


def attention_colsum(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scale: float,
    plan: MaskPlan,
    valid: Tensor,
    *,
    chunk: int = COLSUM_CHUNK,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Prefill attention and the column sums, in one pass over ``q kᵀ`` where the mask allows.

    Returns ``(out [B, q, Hq, D], colsum [B, Hkv, R])``: the output as :func:`attention` gives
    it (to rounding: here from the pass's own probabilities), and the attention each key
    received, summed over queries and averaged over each KV head's query group (fp32, 0 on
    invalid rows). ``causal`` and ``rows`` plans: :func:`_causal_fused`, the probabilities of
    each chunk of queries computed once and used twice, for the output (``P V``) and the sums
    (``(1/z)ᵀ P``) — one pass in place of SDPA's plus a second one for the sums. ``masked``:
    stock SDPA, then :func:`colsum`.
    """
    B, Hq, q_len, D = query.shape
    Hkv, R = key.shape[1], key.shape[2]
    G = Hq // Hkv
    if plan.kind == "masked":
        out = attention(module, query, key, value, mask, scale, plan, **kwargs)
        return out, colsum(query, key, scale, plan, mask, valid, per_kv_head=True, chunk=chunk)
    if plan.kind == "causal":
        out, tot = _causal_fused(query, key, value, scale, chunk)
    else:
        out = query.new_zeros(B, Hq, q_len, D)  # padded queries: zeros, as SDPA gives them
        tot = torch.zeros(B, Hkv, R, device=key.device)
        for b, s in enumerate(plan.starts):
            sl = (slice(b, b + 1), slice(None), slice(s, None))
            out[sl], tot[sl] = _causal_fused(query[sl], key[sl], value[sl], scale, chunk)
    return out.transpose(1, 2).contiguous(), tot / G


def _causal_fused(
    q: Tensor, k: Tensor, v: Tensor | None, scale: float, chunk: int
) -> tuple[Tensor | None, Tensor]:
    """``(out [b, Hq, n, D], tot [b, Hkv, n])``: causal attention, and its probabilities summed
    over each KV head's queries (``out`` None, and ``P V`` skipped, when ``v`` is None). A chunk of queries ``[s0, e)`` sees keys ``[0, e)`` (only
    the diagonal block is masked), so it holds whole softmax rows: ``P = 2 ** (s - max)``
    with ``s = log2(e) * scale * q·k`` (``exp2`` runs ~2.5x faster than ``exp`` on CPU),
    ``z = rowsum(P)``, ``out = (P V) / z``, ``tot += (1/z)ᵀ P`` (a matrix-vector product
    instead of normalising ``P`` and summing it: two passes over the block saved)."""
    b, Hq, n, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    fp32 = q.dtype == torch.float32
    q = q * (scale * _LOG2E) if fp32 else q
    out = None if v is None else q.new_empty(b, Hkv, G, n, D)
    tot = torch.zeros(b, Hkv, 1, n, device=k.device)
    step = _causal_step(chunk, b * Hq, n)
    for s0 in range(0, n, step):
        e = min(n, s0 + step)
        c = e - s0
        qc = q[:, :, s0:e].reshape(b, Hkv, G * c, D)
        s = torch.matmul(qc, k[:, :, :e].transpose(-1, -2)).float()  # [b, Hkv, G*c, e]
        if not fp32:
            s.mul_(scale * _LOG2E)
        s.view(b, Hkv, G, c, e)[..., s0:].masked_fill_(_above(c, k.device), float("-inf"))
        p = s.sub_(s.amax(-1, keepdim=True)).exp2_()
        rz = p.sum(-1, keepdim=True).reciprocal_()  # [b, Hkv, G*c, 1]
        if out is not None:
            o = torch.matmul(p.to(v.dtype), v[:, :, :e]) * rz.to(v.dtype)
            out[:, :, :, s0:e] = o.view(b, Hkv, G, c, D)
        tot[..., :e] += torch.matmul(rz.transpose(-1, -2), p)
    return (None if out is None else out.view(b, Hq, n, D)), tot[:, :, 0]


# --- scores ------------------------------------------------------------------------------------


def last_query_visible(mask: Tensor | None, valid: Tensor) -> Tensor:
    """``[B, R]`` the keys the last query sees: the last row of the library mask (all keys
    when None: causal), valid rows only."""
    if mask is None:
        return valid
    return mask[:, 0, -1].to(torch.bool) & valid


def colsum(
    query: Tensor,
    key: Tensor,
    scale: float,
    plan: MaskPlan,
    mask: Tensor | None,
    valid: Tensor,
    *,
    per_kv_head: bool = False,
    chunk: int = COLSUM_CHUNK,
) -> Tensor:
    """Attention received by each key, summed over all queries, averaged over heads, without
    the attention output (:func:`attention_colsum` gives both for the price of one pass).

    Parameters
    ----------
    query : Tensor
        ``[B, Hq, q, D]`` (RoPE applied).
    key : Tensor
        ``[B, Hkv, R, D]``.
    plan, mask, valid
        As for :func:`plan_mask` (``mask`` is read only by ``"masked"`` plans).
    per_kv_head : bool
        Return ``[B, Hkv, R]`` (averaged over each KV head's query group) instead of ``[B, R]``.

    Returns
    -------
    Tensor
        ``[B, R]`` (or ``[B, Hkv, R]``) fp32; 0 on invalid rows.
    """
    B, Hq, _, _ = query.shape
    Hkv, R = key.shape[1], key.shape[2]
    if plan.kind == "causal":
        tot = _causal_fused(query, key, None, scale, chunk)[1]
    elif plan.kind == "rows":
        tot = torch.zeros(B, Hkv, R, device=key.device)
        for b, s in enumerate(plan.starts):
            sl = (slice(b, b + 1), slice(None), slice(s, None))
            tot[sl] = _causal_fused(query[sl], key[sl], None, scale, chunk)[1]
    else:
        tot = _masked_colsum(query, key, mask, valid, scale, chunk)
    G = Hq // Hkv
    return tot / G if per_kv_head else tot.sum(1) / Hq


def _causal_step(chunk: int, rows: int, n: int) -> int:
    """Queries per chunk of a causal pass over ``n`` keys and ``rows`` (batch x heads) score
    rows per query: the ``chunk`` element budget, but at most an eighth of the queries (one
    chunk over all queries would compute the whole square, twice the causal work: 2x slower
    at 604 tokens), and at least 16."""
    return max(16, min(chunk // max(1, rows * n), -(-n // 8)))


def _above(c: int, device) -> Tensor:
    """``[c, c]`` True where the key comes after the query (strict upper triangle)."""
    return torch.ones(c, c, dtype=torch.bool, device=device).triu(1)


def _masked_colsum(q, k, mask, valid, scale, chunk) -> Tensor:
    """``[B, Hkv, R]`` like :func:`_causal_fused`'s sums, for any mask (read chunk by chunk)."""
    B, Hq, Q, D = q.shape
    Hkv, R = k.shape[1], k.shape[2]
    G = Hq // Hkv
    tot = torch.zeros(B, Hkv, R, device=k.device)
    step = max(1, chunk // max(1, B * Hq * R))
    for s0 in range(0, Q, step):
        e = min(Q, s0 + step)
        c = e - s0
        vis = _visible_rows(mask, valid, s0, e, Q)  # [B, c, R]
        qc = q[:, :, s0:e].reshape(B, Hkv, G * c, D)
        s = torch.matmul(qc, k.transpose(-1, -2)).float().view(B, Hkv, G, c, R).mul_(scale)
        s.masked_fill_(~vis[:, None, None], float("-inf"))
        p = s.sub_(torch.logsumexp(s, dim=-1, keepdim=True)).exp_().nan_to_num_(0.0)
        tot += p.sum(dim=(2, 3))
    return tot


def _visible_rows(mask: Tensor | None, valid: Tensor, s0: int, e: int, q_len: int) -> Tensor:
    """``[B, e - s0, R]`` which keys queries ``s0 .. e-1`` see (causal when ``mask`` is None)."""
    R = valid.shape[1]
    if mask is not None:
        return mask[:, 0, s0:e].to(torch.bool) & valid[:, None, :]
    rows = torch.arange(s0, e, device=valid.device)[:, None] + (R - q_len)
    causal = torch.arange(R, device=valid.device)[None, :] <= rows
    return causal[None] & valid[:, None, :]


def colsum_ref(
    query: Tensor, key: Tensor, visible: Tensor, scale: float, per_kv_head: bool = False
) -> Tensor:
    """Specification of :func:`colsum`: ``[B, R]`` softmax probabilities under the
    materialised ``visible`` ``[B, q, R]`` mask, fp32, summed over queries, averaged over
    heads (queries that see nothing contribute 0); ``per_kv_head``: ``[B, Hkv, R]``, averaged
    over each KV head's group."""
    B, Hq, Q, D = query.shape
    Hkv = key.shape[1]
    s = torch.einsum("bhgqd,bhrd->bhgqr", query.float().view(B, Hkv, Hq // Hkv, Q, D), key.float())
    s = (s * scale).masked_fill(~visible[:, None, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # [B, Hkv, G, q, R]
    return p.mean(dim=2).sum(2) if per_kv_head else p.mean(dim=(1, 2)).sum(1)
