"""Plain-PyTorch core-cache decode attention: the specification of every fast op."""

from __future__ import annotations

import torch
from torch import Tensor


def core_attention_ref(
    q: Tensor, k: Tensor, v: Tensor, active: Tensor, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Decode attention over a subset of cache rows.

    Parameters
    ----------
    q : Tensor
        ``[B, Hq, 1, D]`` queries of the current decode step.
    k, v : Tensor
        ``[B, Hkv, N, D]`` the layer's cache (GQA: ``Hq % Hkv == 0``, heads not repeated).
    active : Tensor
        ``[B, n]`` int64 row indices into ``N``, shared by all heads; ``-1`` pads rows that
        have fewer active rows than ``n``.
    scale : float, optional
        Softmax scale; ``D ** -0.5`` when None.

    Returns
    -------
    out : Tensor
        ``[B, Hq, 1, D]`` in ``q.dtype``: ``softmax(q K[a]^T * scale) V[a]``. A row with no
        active index gives zeros.
    probs : Tensor
        ``[B, n]`` float32 attention probabilities averaged over the ``Hq`` heads, aligned
        with ``active`` (0 where ``active == -1``).
    """
    B, Hq, _, D = q.shape
    Hkv, n = k.shape[1], active.shape[1]
    G = Hq // Hkv
    scale = D**-0.5 if scale is None else scale
    valid = active >= 0  # [B, n]
    idx = active.clamp(min=0)[:, None, :, None].expand(B, Hkv, n, D)
    k_a = k.gather(2, idx).float()  # [B, Hkv, n, D]
    v_a = v.gather(2, idx).float()
    qg = q.float().view(B, Hkv, G, D)
    s = torch.einsum("bhgd,bhnd->bhgn", qg, k_a) * scale  # [B, Hkv, G, n]
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # empty rows -> 0
    out = torch.einsum("bhgn,bhnd->bhgd", p, v_a)  # [B, Hkv, G, D]
    out = out.reshape(B, Hq, 1, D).to(q.dtype)
    probs = p.mean(dim=(1, 2))  # [B, n]
    return out, probs
