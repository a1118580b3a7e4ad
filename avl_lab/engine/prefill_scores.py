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
  a policy asks: ``colsum[j] = sum_i exp(s_ij - lse_i)`` over the visible (i, j), one extra
  pass over ``q kᵀ`` in the model's dtype, exponentials and sums in fp32, chunked over
  queries so memory stays ``O(chunk × R)``. The causal structure is used, not materialised:
  a chunk of queries ``[s0, e)`` multiplies keys ``[0, e)`` only, and only its diagonal
  block is masked. ``lse`` (the log-sum-exp of each query's scaled scores) comes from the
  attention kernel itself on CPU (``_scaled_dot_product_flash_attention_for_cpu`` returns
  it, with the same output as SDPA); elsewhere each chunk computes it from its own scores
  (the chunk holds every key its queries see, so still one pass). :func:`colsum_ref` is the
  plain specification (a full softmax under a materialised mask).
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
    want_lse: bool = False,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """Prefill attention by ``plan``: ``(out [B, q, Hq, D], lse [B, Hq, q] fp32 or None)``.

    ``lse`` is returned when ``want_lse`` and the kernel provides it (CPU, ``causal``/``rows``);
    it is ``-inf`` on queries that see nothing (padding).
    """
    if plan.kind == "causal":
        if want_lse and _cpu_lse_kernel(query):
            out, lse = _flash_cpu(query, key, value, scale)
            return out.transpose(1, 2).contiguous(), lse
        out, _ = sdpa_attention_forward(module, query, key, value, None, scaling=scale, **kwargs)
        return out, None
    if plan.kind == "rows":
        return _rows_attention(query, key, value, scale, plan.starts, want_lse)
    out, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=scale, **kwargs)
    return out, None


def _cpu_lse_kernel(query: Tensor) -> bool:
    return query.device.type == "cpu" and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"
    )


def _flash_cpu(query: Tensor, key: Tensor, value: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The kernel CPU SDPA dispatches to, which also returns the log-sum-exp (GQA allowed):
    ``(out [B, Hq, q, D], lse [B, Hq, q])``."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, True, scale=scale
    )


def _rows_attention(query, key, value, scale, starts, want_lse):
    """Causal attention of each batch row over its valid suffix ``[starts[b], R)``."""
    B, Hq, q, D = query.shape
    out = query.new_zeros(B, q, Hq, D)  # padded queries: zeros, as SDPA gives them
    lse = None
    use_kernel_lse = want_lse and _cpu_lse_kernel(query)
    if use_kernel_lse:
        lse = torch.full((B, Hq, q), float("-inf"), device=query.device)
    gqa = key.shape[1] != Hq
    for b, s in enumerate(starts):
        qb, kb, vb = query[b : b + 1, :, s:], key[b : b + 1, :, s:], value[b : b + 1, :, s:]
        if use_kernel_lse:
            o, lse[b : b + 1, :, s:] = _flash_cpu(qb, kb, vb, scale)
        else:
            o = F.scaled_dot_product_attention(
                qb, kb, vb, is_causal=True, scale=scale, enable_gqa=gqa
            )
        out[b, s:] = o[0].transpose(0, 1)
    return out, lse


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
    lse: Tensor | None = None,
    *,
    per_kv_head: bool = False,
    chunk: int = COLSUM_CHUNK,
) -> Tensor:
    """Attention received by each key, summed over all queries, averaged over heads.

    Parameters
    ----------
    query : Tensor
        ``[B, Hq, q, D]`` (RoPE applied).
    key : Tensor
        ``[B, Hkv, R, D]``.
    plan, mask, valid
        As for :func:`plan_mask` (``mask`` is read only by ``"masked"`` plans).
    lse : Tensor, optional
        ``[B, Hq, q]`` log-sum-exp of each query's scaled scores, from :func:`attention`;
        computed chunk by chunk when None.
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
        tot = _causal_colsum(query, key, lse, scale, chunk)
    elif plan.kind == "rows":
        tot = torch.zeros(B, Hkv, R, device=key.device)
        for b, s in enumerate(plan.starts):
            lb = None if lse is None else lse[b : b + 1, :, s:]
            tot[b : b + 1, :, s:] = _causal_colsum(
                query[b : b + 1, :, s:], key[b : b + 1, :, s:], lb, scale, chunk
            )
    else:
        tot = _masked_colsum(query, key, mask, valid, scale, chunk)
    G = Hq // Hkv
    return tot / G if per_kv_head else tot.sum(1) / Hq


def _causal_colsum(q: Tensor, k: Tensor, lse: Tensor | None, scale: float, chunk: int) -> Tensor:
    """``[b, Hkv, n]`` probabilities summed over each KV head's queries, causal attention.

    A chunk of queries ``[s0, e)`` sees keys ``[0, e)``; only the diagonal block needs a mask.
    Probabilities are ``2 ** (log2(e) * (scale * q·k - lse))`` (``exp2`` runs ~2.5x faster
    than ``exp`` on CPU); in fp32 the ``- lse`` rides in the product as one extra column.
    """
    b, Hq, n, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    tot = torch.zeros(b, Hkv, n, device=k.device)
    if lse is None:  # no kernel log-sum-exp: each chunk computes its own
        return _causal_colsum_self_lse(q, k, scale, chunk, tot)
    fold = q.dtype in (torch.float32, torch.float64)
    l2 = lse.to(torch.float32) * _LOG2E  # [b, Hq, n]
    if fold:  # [q * scale * log2(e), -lse * log2(e)] · [k, 1] = log2(e) * (scale * q·k - lse)
        q = torch.cat([q * (scale * _LOG2E), -l2[..., None].to(q.dtype)], dim=-1)
        k = torch.cat([k, k.new_ones(b, Hkv, n, 1)], dim=-1)
    else:
        q = q * (scale * _LOG2E)
    Da = q.shape[-1]
    step = _causal_step(chunk, b * Hq, n)
    for s0 in range(0, n, step):
        e = min(n, s0 + step)
        c = e - s0
        qc = q[:, :, s0:e].reshape(b, Hkv, G * c, Da)  # [b, Hkv, G*c, Da]
        s = torch.matmul(qc, k[:, :, :e].transpose(-1, -2)).float().view(b, Hkv, G, c, e)
        if not fold:
            s.sub_(l2[:, :, s0:e].reshape(b, Hkv, G, c, 1))
        s[..., s0:].masked_fill_(_above(c, k.device), float("-inf"))  # keys after the query
        tot[..., :e] += s.exp2_().sum(dim=(2, 3))
    return tot


def _causal_colsum_self_lse(q, k, scale, chunk, tot) -> Tensor:
    b, Hq, n, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    step = _causal_step(chunk, b * Hq, n)
    for s0 in range(0, n, step):
        e = min(n, s0 + step)
        c = e - s0
        qc = q[:, :, s0:e].reshape(b, Hkv, G * c, D)
        s = torch.matmul(qc, k[:, :, :e].transpose(-1, -2)).float().view(b, Hkv, G, c, e)
        s.mul_(scale)[..., s0:].masked_fill_(_above(c, k.device), float("-inf"))
        s.sub_(torch.logsumexp(s, dim=-1, keepdim=True))
        tot[..., :e] += s.exp_().sum(dim=(2, 3))
    return tot


def _causal_step(chunk: int, rows: int, n: int) -> int:
    """Queries per chunk of a causal column-sum pass over ``n`` keys and ``rows`` (batch x
    heads) score rows per query: the ``chunk`` element budget, but at most an eighth of the
    queries (one chunk over all queries would compute the whole square, twice the causal
    work: 2x slower at 604 tokens), and at least 16."""
    return max(16, min(chunk // max(1, rows * n), -(-n // 8)))


def _above(c: int, device) -> Tensor:
    """``[c, c]`` True where the key comes after the query (strict upper triangle)."""
    return torch.ones(c, c, dtype=torch.bool, device=device).triu(1)


def _masked_colsum(q, k, mask, valid, scale, chunk) -> Tensor:
    """``[B, Hkv, R]`` like :func:`_causal_colsum` for any mask (read chunk by chunk)."""
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
