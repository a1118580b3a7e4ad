"""Prefill pruning without a hand-written decoder loop: forward pre-hooks on decoder layers.

After layer L the policy picks the tokens to keep (see ``attention._start_prune``). The decoder
loop still passes full-length ``position_embeddings``, mask and ``position_ids`` to every layer,
so each later layer's pre-hook gathers them (and, at layer L+1, the hidden states) to the kept
tokens. Filler tokens (rows that keep fewer tokens than the longest) sit on the left, attend
only to themselves and are never attended to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from avl_lab.engine.session import Session


def make_pre_hook(session: Session, layer_idx: int):
    """A ``register_forward_pre_hook(with_kwargs=True)`` hook for decoder layer ``layer_idx``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        run = session.run
        if run is None or run.step != 0 or run.prune is None or layer_idx <= run.prune.layer:
            return None
        ps = run.prune
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if ps.layer_kwargs is None:  # first layer after the prune: gather everything once
            ps.layer_kwargs = _gather_kwargs(kwargs, ps.index, ps.valid, hidden.shape[1])
            hidden = _gather_seq(hidden, ps.index)
        return (hidden, *args[1:]), {**kwargs, **ps.layer_kwargs}

    return hook


def _gather_seq(t: Tensor, index: Tensor) -> Tensor:
    """Gather ``t`` ``[B or 1, P, ...]`` along dim 1 with ``index`` ``[B, m]``."""
    B, m = index.shape
    t = t.expand(B, *t.shape[1:])
    idx = index.view(B, m, *([1] * (t.dim() - 2))).expand(B, m, *t.shape[2:])
    return t.gather(1, idx)


def _gather_kwargs(
    kwargs: dict[str, Any], index: Tensor, valid: Tensor, length: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pe = kwargs.get("position_embeddings")
    if pe is not None:
        out["position_embeddings"] = tuple(_gather_seq(t, index) for t in pe)
    pid = kwargs.get("position_ids")
    if pid is not None:
        out["position_ids"] = _gather_seq(pid, index)
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
