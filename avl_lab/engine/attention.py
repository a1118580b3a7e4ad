"""The attention function ``avl_lab`` registers with transformers.

Prefill: stock SDPA at stock speed (:mod:`avl_lab.engine.prefill_scores`), plus the last prompt
token's attention (head-averaged, per layer) and, when a policy asks, the attention each key
received, handed to the policy, which may prune tokens and evict rows.
Decode: a mask built from the layer's own bookkeeping, and attention over only the rows the
policy marks active, through :func:`avl_lab.ext.core_attention`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from avl_lab import ext
from avl_lab.engine import prefill_scores
from avl_lab.engine.cache import AVLLayer
from avl_lab.engine.generation import Run
from avl_lab.policies.base import DropRows, both, count_rows, rows_to_index, token_mean

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
    scale = module.scaling if scaling is None else scaling
    if run.preview is not None:  # a layer's attention previewed before the layer runs
        run.preview.update(query=query, key=key, mask=attention_mask, scale=scale)
        B, Hq, q, D = query.shape
        return query.new_zeros(B, q, Hq, D), None
    layer = run.cache.layers[module.layer_idx]
    if run.step == 0:
        return _prefill(run, layer, module, query, key, value, attention_mask, scale, **kwargs)
    return _decode(run, layer, query, key, value, scale, kwargs.get("sliding_window"))


# --- prefill -----------------------------------------------------------------------------------


def _prefill(run, layer, module, query, key, value, mask, scale, **kwargs):
    policy = run.policy
    ctx = run.context(layer.layer_idx)
    causal = kwargs.get("is_causal")
    plan = prefill_scores.plan_mask(module, mask, layer.valid, query.shape[2], causal)
    if policy.needs_colsum:
        out, ctx.head_colsum = prefill_scores.attention_colsum(
            module, query, key, value, mask, scale, plan, layer.valid, **kwargs
        )
        ctx.colsum = ctx.head_colsum.mean(1)
    else:
        out = prefill_scores.attention(module, query, key, value, mask, scale, plan, **kwargs)
    ctx.head_scores = last_query_scores(query, key, visible(mask, layer.valid), scale)
    ctx.scores = ctx.head_scores.mean(1)  # [B, R], paper Eq. 1
    if policy.needs_kv_norms:
        ctx.key_norms, ctx.value_norms = key.float().norm(dim=-1), value.float().norm(dim=-1)
    ctx.query_probs = functools.partial(query_probs, query, key, mask, layer.valid, scale)
    if run.trace is not None:
        run.trace.prefill[layer.layer_idx] = layer.tok.masked_fill(~layer.valid, -1)
    if policy.needs_prev_keys and layer.layer_idx + 1 in run.before_layers:
        run.last_keys = key.clone()  # the next layer's prune_before reads them (DART); evictions
        # of this layer's rows must not reach them
    if layer.layer_idx in policy.prune_layers:
        keep_tok = policy.prune_tokens(layer, ctx)
        if keep_tok is not None:
            order = _start_prune(run, layer, keep_tok)
            if order is not None:  # this layer's rows moved: re-align the scores
                ctx.scores = ctx.scores.gather(1, order)
                ctx.head_scores = ctx.head_scores.gather(
                    2, order[:, None].expand(-1, ctx.head_scores.shape[1], -1))
                if ctx.colsum is not None:
                    ctx.colsum = ctx.colsum.gather(1, order)
                    ctx.head_colsum = ctx.head_colsum.gather(
                        2, order[:, None].expand(-1, ctx.head_colsum.shape[1], -1))
                for name in ("key_norms", "value_norms"):
                    t = getattr(ctx, name)
                    if t is not None:
                        setattr(ctx, name, t.gather(2, order[:, None].expand(-1, t.shape[1], -1)))
    keep = policy.prefill_keep(layer, ctx)
    window = kwargs.get("sliding_window")
    if window:  # rows the next query can no longer see leave, as in the stock sliding cache
        keep = _in_window(layer, run.layout.length, window, keep)
    if keep is not None:
        layer.evict(keep)
    n = count_rows(layer.valid)  # [B] (or [B, Hkv]: the stats average the heads at the end)
    full = run.full_rows() if not window else run.full_rows().clamp(max=window - 1)
    run.prefill_stats.record(layer.layer_idx, n, n, full)
    return out, None


def _in_window(layer: AVLLayer, query_tok: int, window: int, rows: Tensor | None) -> Tensor:
    """``rows`` (all valid rows when None) restricted to those a query at padded column
    ``query_tok`` sees through a sliding window (``tok > query_tok - window``, as transformers'
    ``sliding_window_overlay``)."""
    return both(layer.tok > query_tok - window, layer.valid if rows is None else rows)


def visible(mask: Tensor | None, valid: Tensor) -> Tensor:
    """``[B, R]`` which keys the last query sees (the library mask's last row, or all when None)."""
    return prefill_scores.last_query_visible(mask, valid)


def last_query_scores(query: Tensor, key: Tensor, visible: Tensor, scale: float) -> Tensor:
    """``[B, Hkv, R]`` attention of the last query per KV head (averaged over its group of
    query heads; their mean over heads is paper Eq. 1); 0 where masked."""
    B, Hq, _, D = query.shape
    Hkv = key.shape[1]
    q = query[:, :, -1].float().view(B, Hkv, Hq // Hkv, D)
    s = torch.einsum("bhgd,bhrd->bhgr", q, key.float()) * scale
    s = s.masked_fill(~visible[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0).mean(dim=2)


def query_probs(
    query: Tensor,
    key: Tensor,
    mask: Tensor | None,
    valid: Tensor,
    scale: float,
    rows: Tensor,
    per_head: bool = False,
) -> Tensor:
    """``[B, m]`` selected prefill queries' head-averaged attention ``[B, m, R]`` (in prefill a
    layer's rows are its queries; ``per_head``: ``[B, Hkv, m, R]``, averaged over each KV
    head's group of query heads); zero for padding beyond a row's own count."""
    B, Hq, _, D = query.shape
    Hkv = key.shape[1]
    idx = rows_to_index(rows)  # [B, m], -1 = padding
    m = idx.shape[1]
    at = idx.clamp(min=0)
    q = query.float().gather(2, at[:, None, :, None].expand(B, Hq, m, D))  # [B, Hq, m, D]
    s = torch.einsum("bhgcd,bhrd->bhgcr", q.view(B, Hkv, Hq // Hkv, m, D), key.float()) * scale
    see = _rows_visible(mask, valid, at, query.shape[2])  # [B, m, R]
    s = s.masked_fill(~see[:, None, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # [B, Hkv, G, m, R]
    if per_head:
        return p.mean(dim=2).masked_fill((idx < 0)[:, None, :, None], 0.0)
    return p.mean(dim=(1, 2)).masked_fill((idx < 0)[:, :, None], 0.0)


def _rows_visible(mask: Tensor | None, valid: Tensor, at: Tensor, q_len: int) -> Tensor:
    """``[B, m, R]`` which keys the prefill queries ``at`` ``[B, m]`` see (causal when None)."""
    R = valid.shape[1]
    if mask is None:
        cols = torch.arange(R, device=valid.device)
        see = cols[None, None, :] <= (at + (R - q_len))[:, :, None]
    else:
        rows = mask[:, 0].to(torch.bool).expand(at.shape[0], -1, -1)
        see = rows.gather(1, at[:, :, None].expand(*at.shape, rows.shape[-1]))
    return see & valid[:, None, :]


def _start_prune(run: Run, layer: AVLLayer, keep_rows: Tensor) -> Tensor | None:
    """A stage after this layer: later layers see only the kept tokens.

    This layer and the earlier ones keep the rows they computed, as the official code does
    (it cuts only the hidden states, modeling_llama.py l.1817-1851), unless the policy's
    ``prune_drops_earlier`` asks to evict the dropped tokens there too. Returns this layer's
    eviction order (see ``AVLLayer.evict``), None when its rows did not move.
    """
    stage = run.add_stage(keep_rows & layer.valid, layer.tok, layer.layer_idx + 1)
    if not run.policy.prune_drops_earlier:
        return None
    evict_earlier(run, stage.keep, layer.layer_idx)
    return layer.evict(_rows_of(stage.keep, layer.tok))


def evict_earlier(run: Run, keep_tok: Tensor, before: int) -> None:
    """``drop_early``: layers ``0..before-1`` evict the rows of the tokens a stage dropped."""
    for earlier in run.cache.layers[:before]:
        earlier.evict(_rows_of(keep_tok, earlier.tok))


def _rows_of(keep_tok: Tensor, tok: Tensor) -> Tensor:
    """``keep_tok`` ``[B, P]`` read at a layer's rows ``tok`` (``[B, R]``, or ``[B, Hkv, R]`` once
    an earlier policy gave the layer rows per KV head)."""
    return keep_tok.gather(1, tok.flatten(1)).view_as(tok)


# --- decode ------------------------------------------------------------------------------------


def _decode(run: Run, layer: AVLLayer, query, key, value, scale, window: int | None = None):
    """One layer of a decode step. No host sync and no data-dependent shape: the op reads the
    active rows through their mask, as wide as the layer (so its probabilities come back
    aligned with the rows; no index is built), and what does not depend on the layer
    (the step's full count, whether probabilities are needed, the new row's bookkeeping) was
    decided once per step."""
    policy = run.policy
    ctx = run.context(layer.layer_idx)
    valid = layer.valid  # [B, R] or [B, Hkv, R]; the new token's row (the last) is valid
    chosen = policy.decode_active(layer, ctx)
    full = run.full_now
    if window:  # a sliding layer (Gemma 3): never more than the stock window sees
        query_tok = run.layout.length + run.step - 1
        chosen = _in_window(layer, query_tok, window, chosen)
        full = full.clamp(max=window)
    if chosen is None:
        active = valid
    else:  # the current token always attends to itself
        active = both(chosen, valid) | run.cache.last_row(valid.shape[-1])
    per_head = active.dim() == 3 or (run.want_probs and policy.needs_head_probs)
    # the mask as the op's index (row r where set), checked by construction
    out, probs = ext.dispatch(query, key, value, active, scale, per_head,
                              want_probs=run.want_probs)  # None when not wanted: not computed
    run.decode_stats.record_rows(layer.layer_idx, valid, active, full)  # counted at the step's end
    if run.trace is not None:
        run.trace.decode[-1][layer.layer_idx] = layer.tok.masked_fill(~active, -1)
    if run.want_probs:
        _set_probs(run, layer, ctx, probs)
    if window:
        run.windows[layer.layer_idx] = window
    if run.keep_now or window:  # otherwise nothing leaves this layer this step
        _apply_keep(run, layer, policy.decode_keep(layer, ctx) if run.keep_now else None)
    if layer.layer_idx == run.num_layers - 1:  # the step's last layer
        run.decode_stats.flush()
        if run.keep_now:
            end_step(run, ctx)
    return out.transpose(1, 2), None


def end_step(run: Run, ctx) -> None:
    """The policy's decisions for all layers at once (:meth:`Policy.end_step`), applied as each
    layer's own."""
    for layer_idx, keeps in run.policy.end_step(ctx).items():
        for keep in keeps if isinstance(keeps, list) else [keeps]:
            _apply_keep(run, run.cache.layers[layer_idx], keep)


def _apply_keep(run: Run, layer: AVLLayer, keep) -> None:
    """A decode decision (keep mask, DropRows or None), deferred: the rows turn invalid now and
    leave memory at the next step's start (one sync); a sliding layer also drops what the next
    query can no longer see."""
    window = run.windows.get(layer.layer_idx)
    if isinstance(keep, DropRows):
        if not window:
            layer.drop(keep.rows)  # a few rows by number
            return
        keep = keep.keep(layer.valid)
    if window:
        keep = _in_window(layer, run.layout.length + run.step, window, keep)
    if keep is not None:
        layer.evict(keep, defer=True)


def _set_probs(run: Run, layer: AVLLayer, ctx, probs: Tensor) -> None:
    """This step's attention over the layer's rows (the op's probabilities, aligned with the
    rows, 0 where a row took no part): ``ctx.probs`` averaged over all heads (per token, so with
    rows per KV head each head's row of a token carries the token's average) and, when computed
    per KV head, ``ctx.head_probs`` ``[B, Hkv, R]``."""
    if probs.dim() == 2:  # shared rows, head-averaged
        ctx.probs = probs
        return
    ctx.head_probs = per_head = probs  # [B, Hkv, R]
    if not run.token_probs:  # no part reads the average this step (per-head parts, or the
        return  # tiering between its update steps)
    if not layer.per_head:
        ctx.probs = per_head.mean(1)
        return
    # Rows differ between heads: average each token over all heads (0 where a head lacks it).
    valid, T = layer.valid, run.tokens_seen
    ctx.token_probs = token_mean(per_head, layer, T)
    tok = layer.tok.masked_fill(~valid, 0).flatten(1)
    ctx.probs = ctx.token_probs.gather(1, tok).view_as(per_head).masked_fill(~valid, 0.0)
