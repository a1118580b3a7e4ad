"""The attention function ``avl_lab`` registers with transformers.

Prefill: stock SDPA at stock speed (:mod:`avl_lab.engine.prefill_scores`), plus the last prompt
token's attention (head-averaged, per layer) and, when a policy asks, the attention each key
received, handed to the policy, which may prune tokens and evict rows.
Decode: a mask built from the layer's own bookkeeping, and attention over only the rows the
policy marks active, through :func:`avl_lab.ext.core_attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from avl_lab import ext
from avl_lab.engine import prefill_scores
from avl_lab.engine.cache import AVLLayer
from avl_lab.engine.run import PruneState, Run

ATTN_NAME = "avl_lab"


def avl_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """``query`` ``[B, Hq, q, D]``, ``key``/``value`` ``[B, Hkv, R, D]`` → ``[B, q, Hq, D]``."""
    session = getattr(module, "_avl_session", None)
    run: Run | None = None if session is None else session.run
    if run is None:  # not inside a session's generate: behave exactly like stock sdpa
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    layer = run.cache.layers[module.layer_idx]
    scale = module.scaling if scaling is None else scaling
    if run.step == 0:
        return _prefill(run, layer, module, query, key, value, attention_mask, scale, **kwargs)
    return _decode(run, layer, query, key, value, scale, kwargs.get("sliding_window"))


# --- prefill -----------------------------------------------------------------------------------


def _prefill(run, layer, module, query, key, value, mask, scale, **kwargs):
    policy = run.policy
    ctx = run.context(layer.layer_idx)
    causal = kwargs.get("is_causal")
    plan = prefill_scores.plan_mask(module, mask, layer.valid, query.shape[2], causal)
    out, lse = prefill_scores.attention(
        module, query, key, value, mask, scale, plan, want_lse=policy.needs_colsum, **kwargs
    )
    ctx.scores = _last_query_scores(query, key, _visible(mask, layer.valid), scale)
    if policy.needs_colsum:
        ctx.colsum = _colsum_scores(query, key, mask, layer.valid, scale, plan, lse)
    if run.trace is not None:
        run.trace.prefill[layer.layer_idx] = layer.tok.masked_fill(~layer.valid, -1)
    if layer.layer_idx == policy.prune_layer:
        keep_tok = policy.prune_tokens(layer, ctx)
        if keep_tok is not None:
            order = _start_prune(run, layer, keep_tok)
            if order is not None:  # this layer's rows moved: re-align the scores
                ctx.scores = ctx.scores.gather(1, order)
                ctx.colsum = None if ctx.colsum is None else ctx.colsum.gather(1, order)
    keep = policy.prefill_keep(layer, ctx)
    window = kwargs.get("sliding_window")
    if window:  # rows the next query can no longer see leave, as in the stock sliding cache
        keep = _in_window(layer, run.layout.length, window, keep)
    if keep is not None:
        layer.evict(keep)
    n = layer.valid.sum(1)
    full = run.full_rows() if not window else run.full_rows().clamp(max=window - 1)
    run.prefill_stats.record(layer.layer_idx, n, n, full)
    return out, None


def _in_window(layer: AVLLayer, query_tok: int, window: int, rows: Tensor | None) -> Tensor:
    """``rows`` (all valid rows when None) restricted to those a query at padded column
    ``query_tok`` sees through a sliding window (``tok > query_tok - window``, as transformers'
    ``sliding_window_overlay``)."""
    inside = layer.tok > query_tok - window
    return inside & (layer.valid if rows is None else rows)


def _visible(mask: Tensor | None, valid: Tensor) -> Tensor:
    """``[B, R]`` which keys the last query sees (the library mask's last row, or all when None)."""
    return prefill_scores.last_query_visible(mask, valid)


def _last_query_scores(query: Tensor, key: Tensor, visible: Tensor, scale: float) -> Tensor:
    """``[B, R]`` head-averaged attention of the last query (paper Eq. 1); 0 where masked."""
    B, Hq, _, D = query.shape
    Hkv = key.shape[1]
    q = query[:, :, -1].float().view(B, Hkv, Hq // Hkv, D)
    s = torch.einsum("bhgd,bhrd->bhgr", q, key.float()) * scale
    s = s.masked_fill(~visible[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0).mean(dim=(1, 2))


def _colsum_scores(query, key, mask, valid, scale, plan, lse=None) -> Tensor:
    """``[B, R]`` attention received by each key summed over all queries, averaged over heads
    (see :func:`avl_lab.engine.prefill_scores.colsum`)."""
    return prefill_scores.colsum(query, key, scale, plan, mask, valid, lse)


def _start_prune(run: Run, layer: AVLLayer, keep_rows: Tensor) -> Tensor | None:
    """Prune the prompt after this layer: later layers see only kept tokens; evict the rest here
    and in every earlier layer. Returns this layer's eviction order (see ``AVLLayer.evict``)."""
    P = run.layout.length
    keep_tok = torch.zeros(keep_rows.shape[0], P, dtype=torch.bool, device=keep_rows.device)
    keep_tok.scatter_(1, layer.tok, keep_rows & layer.valid)
    keep_tok[:, -1] = True  # the last prompt token produces the next-token logits
    counts = keep_tok.sum(1)
    m = int(counts.max())
    # Ascending stable sort: dropped first, kept last in order; take the last m (kept right-aligned).
    index = torch.sort(keep_tok.to(torch.int8), dim=1, stable=True).indices[:, P - m :]
    valid = torch.arange(m, device=counts.device)[None, :] >= (m - counts)[:, None]
    run.prune = PruneState(
        layer=layer.layer_idx, keep=keep_tok, index=index.masked_fill(~valid, 0), valid=valid
    )
    for earlier in run.cache.layers[: layer.layer_idx]:
        earlier.evict(keep_tok.gather(1, earlier.tok))
    return layer.evict(keep_tok.gather(1, layer.tok))


# --- decode ------------------------------------------------------------------------------------


def _decode(run: Run, layer: AVLLayer, query, key, value, scale, window: int | None = None):
    policy = run.policy
    ctx = run.context(layer.layer_idx)
    active = policy.decode_active(layer, ctx)
    active = layer.valid.clone() if active is None else active & layer.valid
    full = run.full_rows()
    if window:  # a sliding layer (Gemma 3): never more than the stock window sees
        query_tok = run.layout.length + run.step - 1
        active = _in_window(layer, query_tok, window, active)
        full = full.clamp(max=window)
    active[:, -1] = True  # the current token always attends to itself
    idx = rows_to_index(active)  # [B, n]
    out, probs = ext.core_attention(query, key, value, idx, scale)
    run.decode_stats.record(layer.layer_idx, layer.valid.sum(1), active.sum(1), full)
    if run.trace is not None:
        run.trace.decode[-1][layer.layer_idx] = layer.tok.gather(1, idx.clamp(min=0)).masked_fill(
            idx < 0, -1
        )
    if policy.needs_probs:
        full = torch.zeros(active.shape, dtype=probs.dtype, device=probs.device)
        ctx.probs = full.scatter_add_(1, idx.clamp(min=0), probs.masked_fill(idx < 0, 0.0))
    keep = policy.decode_keep(layer, ctx)
    if window:
        keep = _in_window(layer, query_tok + 1, window, keep)
    if keep is not None:
        layer.evict(keep)
    return out.transpose(1, 2), None


def rows_to_index(rows: Tensor) -> Tensor:
    """``[B, R]`` bool → ``[B, n]`` int64 row indices in order, ``-1``-padded, n = max count."""
    counts = rows.sum(1)
    n = int(counts.max())
    order = torch.sort((~rows).to(torch.int8), dim=1, stable=True).indices[:, :n]
    return order.masked_fill(torch.arange(n, device=rows.device)[None, :] >= counts[:, None], -1)
