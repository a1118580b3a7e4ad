"""Prefill pruning without a hand-written decoder loop: forward pre-hooks on decoder layers.

After layer L the policy picks the tokens to keep (see ``attention._start_prune``). The decoder
loop still passes full-length ``position_embeddings``, mask and ``position_ids`` to every layer,
so each later layer's pre-hook gathers them (and, at layer L+1, the hidden states) to the kept
tokens. Filler tokens (rows that keep fewer tokens than the longest) sit on the left, attend
only to themselves and are never attended to.

Families differ in what the loop passes, and the gather follows the tensors rather than the
family: ``position_embeddings`` (cos, sin) have their sequence axis at ``-2`` (``[B, P, D]``, or
Qwen2-VL's 3-D M-RoPE ``[3, B, P, D]``), ``position_ids`` at ``-1`` (``[B, P]``); layers of
different kinds (Gemma 3's sliding and global layers) get different masks and embeddings, each
gathered once. Per-forward extras of the text model (Qwen3-VL's DeepStack) are captured by a
pre-hook on the text model and cut by the family (:mod:`avl_lab.engine.families`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from avl_lab.engine.session import Session


def make_text_hook(session: Session):
    """A pre-hook on the text model, once per forward: the run's step clock
    (:meth:`~avl_lab.engine.generation.Run.begin_forward`), and in prefill the family's capture of
    per-forward extras."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        run = session.run
        if run is None:
            return None
        batch, q_len = _batch_and_length(args, kwargs)
        run.begin_forward(batch, q_len)
        if run.step == 0:
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


def make_pre_hook(session: Session, layer_idx: int):
    """A ``register_forward_pre_hook(with_kwargs=True)`` hook for decoder layer ``layer_idx``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        run = session.run
        if run is None or run.step != 0 or run.prune is None or layer_idx <= run.prune.layer:
            return None
        ps = run.prune
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if not ps.layer_kwargs:  # first layer after the prune: cut the hidden states once
            hidden = _gather_seq(hidden, ps.index, -2)
            session.family.gather_extras(run, ps, ps.keep)
        key = tuple(id(v) for v in kwargs.values())  # the same inputs → the same gathered ones
        gathered = ps.layer_kwargs.get(key)
        if gathered is None:
            gathered = ps.layer_kwargs[key] = _gather_kwargs(kwargs, ps.index, ps.valid, ps.keep.shape[1])
        return (hidden, *args[1:]), {**kwargs, **gathered}

    return hook


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


def _gather_kwargs(
    kwargs: dict[str, Any], index: Tensor, valid: Tensor, length: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pe = kwargs.get("position_embeddings")
    if pe is not None:
        out["position_embeddings"] = tuple(_gather_seq(t, index, -2) for t in pe)
    pid = kwargs.get("position_ids")
    if pid is not None:
        out["position_ids"] = _gather_seq(pid, index, -1)
    out["attention_mask"] = _gather_mask(kwargs.get("attention_mask"), index, valid, length)
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
