"""Plain-PyTorch core-cache decode attention: the specification of every fast op."""

from __future__ import annotations

import torch
from torch import Tensor


def core_attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float | None = None,
    per_head_probs: bool = False,
    want_probs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Decode attention over a subset of cache rows.

    Parameters
    ----------
    q : Tensor
        ``[B, Hq, 1, D]`` queries of the current decode step.
    k, v : Tensor
        ``[B, Hkv, N, D]`` the layer's cache (GQA: ``Hq % Hkv == 0``, heads not repeated).
    active : Tensor
        int64 row indices into ``N``, ``-1`` = padding (a row, or a head, with fewer active
        rows than ``n``). Either ``[B, n]``: the same rows for every kv head; or
        ``[B, Hkv, n]``: kv head ``h`` (and its ``G = Hq // Hkv`` query heads
        ``h * G .. h * G + G - 1``) reads its own rows ``active[:, h]``.
    scale : float, optional
        Softmax scale; ``D ** -0.5`` when None.
    per_head_probs : bool
        Return ``probs`` per kv head (see below). Implied by a ``[B, Hkv, n]`` ``active``.
    want_probs : bool
        False: the caller drops the probabilities; ``probs`` is None (the fast ops then skip
        computing them).

    Returns
    -------
    out : Tensor
        ``[B, Hq, 1, D]`` in ``q.dtype``: ``softmax(q K[a]^T * scale) V[a]``. A query head
        whose kv head has no active index gives zeros.
    probs : Tensor or None
        None when not ``want_probs``; else float32 attention probabilities aligned with ``active`` (0 where ``active == -1``):
        ``[B, Hkv, n]`` averaged over the ``G`` query heads of each kv head when
        ``per_head_probs`` or ``active`` is per head (with per-head rows, an average over all
        heads of "row ``j``" would mix different rows); else ``[B, n]`` averaged over all
        ``Hq`` query heads.
    """
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    per_head = active.dim() == 3
    idx = active if per_head else active[:, None, :].expand(B, Hkv, active.shape[-1])
    n = idx.shape[2]  # idx: [B, Hkv, n]
    valid = idx >= 0
    rows = idx.clamp(min=0)[..., None].expand(B, Hkv, n, D)
    k_a = k.gather(2, rows).float()  # [B, Hkv, n, D]
    v_a = v.gather(2, rows).float()
    qg = q.float().view(B, Hkv, G, D)
    s = torch.einsum("bhgd,bhnd->bhgn", qg, k_a) * scale  # [B, Hkv, G, n]
    s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # no valid row -> 0
    out = torch.einsum("bhgn,bhnd->bhgd", p, v_a)  # [B, Hkv, G, D]
    out = out.reshape(B, Hq, 1, D).to(q.dtype)
    if not want_probs:
        return out, None
    if per_head or per_head_probs:
        return out, p.mean(dim=2)  # [B, Hkv, n]
    return out, p.mean(dim=(1, 2))  # [B, n]
