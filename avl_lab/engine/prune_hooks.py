"""Prefill pruning without a hand-written decoder loop: forward pre-hooks on decoder layers.

A stage (:mod:`avl_lab.engine.stages`) is decided after a layer's attention (``prune_tokens``)
or here, before a layer runs (``prune_before``, with an optional preview of that layer's own
attention). The decoder loop still passes full-length ``position_embeddings``, mask and
``position_ids`` to every layer, so each later layer's pre-hook gathers them (and, at a stage's
first layer, the hidden states) to the stage's tokens. Filler tokens (rows that keep fewer
tokens than the longest) sit on the left, attend only to themselves and are never attended to.

Families differ in what the loop passes, and the gather follows the tensors rather than the
family: ``position_embeddings`` (cos, sin) have their sequence axis at ``-2`` (``[B, P, D]``, or
Qwen2-VL's 3-D M-RoPE ``[3, B, P, D]``), ``position_ids`` at ``-1`` (``[B, P]``); layers of
different kinds (Gemma 3's sliding and global layers) get different masks and embeddings, each
gathered once. Per-forward extras of the text model (Qwen3-VL's DeepStack) are captured by a
pre-hook on the text model and cut by the family (:mod:`avl_lab.engine.families`). A stage that
renumbers positions also moves the decode step's positions of its layers (their RoPE embeddings
recomputed once per step and stage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from avl_lab.engine.layout import Modality
from avl_lab.engine.stages import PruneState

if TYPE_CHECKING:
    from avl_lab.engine.families import Family
    from avl_lab.engine.generation import Run


class HookedSession(Protocol):
    """What the hooks read of the session that installed them (``engine.session.Session``)."""

    model: nn.Module
    family: Family
    run: Run | None


def make_text_hook(session: HookedSession):
    """A pre-hook on the text model, once per forward: the run's step clock
    (:meth:`~avl_lab.engine.generation.Run.begin_forward`), and in prefill the input embeddings
    and the family's capture of per-forward extras."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        run = session.run
        if run is None:
            return None
        batch, q_len = _batch_and_length(args, kwargs)
        run.begin_forward(batch, q_len)
        if run.step == 0:
            run.inputs_embeds = kwargs.get("inputs_embeds")
            session.family.capture_extras(run, kwargs)
        return None

    return hook


def _batch_and_length(args: tuple, kwargs: dict[str, Any]) -> tuple[int, int]:
    """``(B, q)`` of a text-model forward, from its embeddings or token ids."""
    for name in ("inputs_embeds", "input_ids"):
        t = kwargs.get(name)
        if t is not None:
            return t.shape[0], t.shape[1]
    if args and isinstance(args[0], Tensor):
        return args[0].shape[0], args[0].shape[1]
    raise TypeError("avl_lab: the text model was called without input_ids or inputs_embeds")


def make_pre_hook(session: HookedSession, layer_idx: int):
    """A ``register_forward_pre_hook(with_kwargs=True)`` hook for decoder layer ``layer_idx``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        run = session.run
        if run is None:
            return None
        if run.step != 0:  # decode: only renumbered stages move positions
            return _decode_positions(session, run, layer_idx, args, kwargs) if run.renumber else None
        if not run.prunes and layer_idx not in run.before_layers:
            return None
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if layer_idx == 0 and run.prunes_input:
            hidden = _prune_input(session, run, hidden)
        elif layer_idx in run.before_layers:
            _prune_before(session, run, module, layer_idx, hidden, kwargs)
        stage = run.stage(layer_idx)
        if stage is None:
            return (hidden, *args[1:]), kwargs
        if stage.first == layer_idx:  # the stage's first layer: cut the hidden states once
            hidden = _gather_seq(hidden, stage.rel, -2)
            session.family.gather_extras(run, stage)
        return (hidden, *args[1:]), {**kwargs, **_stage_kwargs(stage, kwargs)}

    return hook


def _stage_kwargs(stage: PruneState, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The layer kwargs gathered to ``stage``'s tokens (once per set of input tensors)."""
    key = tuple(id(v) for v in kwargs.values())  # the same inputs → the same gathered ones
    gathered = stage.layer_kwargs.get(key)
    if gathered is None:
        gathered = stage.layer_kwargs[key] = _gather_kwargs(kwargs, stage)
    return gathered


def _prune_before(session: HookedSession, run: Run, layer: nn.Module, layer_idx: int, hidden: Tensor,
                  kwargs: dict[str, Any]) -> None:
    """``prune_before`` of ``layer_idx``: a new stage starting at this layer."""
    from avl_lab.engine.attention import last_query_scores, query_probs, visible

    stage = run.stage(layer_idx)
    current = {**kwargs, **_stage_kwargs(stage, kwargs)} if stage is not None else kwargs
    rows = run.token_rows(layer_idx)
    ctx = run.context(layer_idx)
    ctx.hidden, ctx.prev_keys = hidden, run.last_keys
    ctx.final_norm = session.family.final_norm(session.family.text_model(session.model))
    if run.policy.needs_preview:
        p = _preview(run, layer, hidden, current)
        ctx.head_scores = last_query_scores(p["query"], p["key"], visible(p["mask"], rows.valid),
                                            p["scale"])
        ctx.scores = ctx.head_scores.mean(1)
        ctx.query_probs = lambda sel, per_head=False: query_probs(
            p["query"], p["key"], p["mask"], rows.valid, p["scale"], sel, per_head)
    keep_rows = run.policy.prune_before(rows, ctx)
    if keep_rows is None:
        return
    new = run.add_stage(keep_rows & rows.valid, rows.tok, layer_idx)
    if run.policy.prune_drops_earlier:
        from avl_lab.engine.attention import evict_earlier

        evict_earlier(run, new.keep, layer_idx)


def _prune_input(session: HookedSession, run: Run, hidden: Tensor) -> Tensor:
    """``prune_input``: a stage from layer 0 on; returns the input embeddings with any the
    policy wrote."""
    from avl_lab.policies.base import InputCut

    rows = run.token_rows(0)
    ctx = run.context(0)
    ctx.hidden = hidden
    if run.vision is not None:
        ctx.vision = run.vision.features(run.layout.modality == int(Modality.IMAGE), run.image_info)
    cut = run.policy.prune_input(rows, ctx)
    if cut is None:
        return hidden
    keep = cut.keep if isinstance(cut, InputCut) else cut
    if isinstance(cut, InputCut):
        hidden = torch.where(cut.replace[..., None], cut.embeds.to(hidden.dtype), hidden)
        if run.trace is not None:
            run.trace.inputs_embeds = hidden
    run.add_stage(keep & rows.valid, rows.tok, 0)
    return hidden


_NOT_FOR_ATTENTION = ("cache", "past_key_values", "past_key_value", "use_cache", "output_attentions")


def _preview(run: Run, layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The layer's own query and key over its incoming tokens (its input norm, q/k projections,
    RoPE and any q/k norm, through the stock attention module), before the layer runs."""
    attn_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_ATTENTION}
    run.preview = {}
    try:
        with torch.no_grad():
            layer.self_attn(hidden_states=layer.input_layernorm(hidden), **attn_kwargs)
        return run.preview
    finally:
        run.preview = None


def _decode_positions(session: HookedSession, run: Run, layer_idx: int, args: tuple,
                      kwargs: dict[str, Any]):
    """A decode step in a renumbered stage's layer: positions moved down by the stage's shift
    (the RoPE embeddings recomputed once per step and stage)."""
    stage = run.stage(layer_idx)
    if stage is None or stage.shift is None:
        return None
    pos = kwargs.get("position_ids")
    if pos is None:
        raise RuntimeError("avl_lab: renumbered positions need the decoder layers' position_ids")
    new = stage.decode_kwargs.get(run.step)
    if new is None:
        moved = pos - stage.shift.to(pos.device)[:, None]
        hidden = args[0] if args else kwargs["hidden_states"]
        text_model = session.family.text_model(session.model)
        new = {"position_ids": moved,
               "position_embeddings": session.family.rope(text_model, hidden, moved)}
        stage.decode_kwargs = {run.step: new}  # one step kept: the previous one is done
    return args, {**kwargs, **new}


def _gather_seq(t: Tensor, index: Tensor, seq_dim: int) -> Tensor:
    """Gather ``t`` along its sequence axis ``seq_dim`` (batch axis just before it, size B or 1)
    with ``index`` ``[B, m]``; leading and trailing axes are kept."""
    seq_dim %= t.dim()
    B, m = index.shape
    shape = list(t.shape)
    shape[seq_dim - 1] = B
    t = t.expand(*shape)
    view = [1] * t.dim()
    view[seq_dim - 1], view[seq_dim] = B, m
    shape[seq_dim] = m
    return t.gather(seq_dim, index.view(view).expand(*shape))


def _gather_kwargs(kwargs: dict[str, Any], stage: PruneState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pe = kwargs.get("position_embeddings")
    if pe is not None:
        out["position_embeddings"] = tuple(_gather_seq(t, stage.pos_index, -2) for t in pe)
    pid = kwargs.get("position_ids")
    if pid is not None:
        out["position_ids"] = (_gather_seq(pid, stage.index, -1) if stage.position_ids is None
                               else stage.position_ids)
    out["attention_mask"] = _gather_mask(kwargs.get("attention_mask"), stage.index, stage.valid,
                                         stage.keep.shape[1])
    return out


def _gather_mask(mask: Tensor | None, index: Tensor, valid: Tensor, length: int) -> Tensor:
    """``[B, 1, m, m]`` bool mask over the kept tokens (causal when ``mask`` is None)."""
    B, m = index.shape
    if mask is None:
        mask = torch.ones(length, length, dtype=torch.bool, device=index.device).tril()[None, None]
    mask = mask.to(torch.bool).expand(B, 1, *mask.shape[-2:])
    rows = mask.gather(2, index[:, None, :, None].expand(B, 1, m, mask.shape[-1]))
    sub = rows.gather(3, index[:, None, None, :].expand(B, 1, m, m))
    sub = sub & valid[:, None, None, :]
    eye = torch.eye(m, dtype=torch.bool, device=index.device)[None, None]
    return sub | (eye & ~valid[:, None, :, None])  # filler attends to itself only
