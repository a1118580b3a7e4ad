"""Guided reading: teach one decoder attention head where the answer's characters are drawn.

On the reading tasks every answer character sits in a known grid cell, i.e. one image
token. :class:`ReadAttention` hooks one decoder layer's self-attention, recomputes that
layer's attention row of one query head at the supervised positions only (its own q/k
projections, RoPE and causal mask, so the model keeps running SDPA) and returns the mean
``-log`` probability the head pays to the target image token.

On easy-vqa the head is taught the same way to look at the shape: from every position that
predicts an answer character, the ``-log`` of the attention mass on the shape's image tokens
(:meth:`ReadAttention.region_loss`). A second head, in a later layer, is taught to compare:
from the same positions it attends to the question's colour or shape word if and only if
the image shows that colour or shape (``region_loss`` with ``present``), so "is there a red
shape?" becomes how much that head attends to "red".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.models.llama.modeling_llama import rotate_half

__all__ = ["ReadAttention"]


class ReadAttention:
    """Context manager capturing the inputs of ``attn`` (a Llama self-attention module).

    ``with ReadAttention(attn, head) as probe: model(...)`` then ``probe.loss(targets)``,
    where ``targets[b, q]`` is the key position query ``q`` should read (-100: none).
    """

    def __init__(self, attn: torch.nn.Module, head: int) -> None:
        self.attn = attn
        self.head = head
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._handle: Any = None

    def __enter__(self) -> ReadAttention:
        def hook(_mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            self.inputs = (hidden, cos, sin)

        self._handle = self.attn.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        """Mean ``-log`` attention of the head from each supervised query to its target."""
        b, q = torch.nonzero(targets >= 0, as_tuple=True)
        logp = self._log_attention(b, q)
        return -logp[torch.arange(len(b)), targets[b, q]].mean()

    def region_loss(
        self, queries: torch.Tensor, keys: torch.Tensor, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean ``-log`` of the attention mass the head pays, from each query (``queries[b, q]``
        true), to the key region of its sample (``keys[b, k]`` true).

        With ``present`` ``[B]`` (bool), a sample where it is false is taught the opposite,
        ``-log(1 - mass)``: the head then answers a question with how much it attends there.
        """
        b, q = torch.nonzero(queries, as_tuple=True)
        logp = self._log_attention(b, q)
        log_mass = logp.masked_fill(~keys[b], float("-inf")).logsumexp(-1)
        if present is None:
            return -log_mass.mean()
        away = torch.log(-torch.expm1(log_mass.clamp(max=-1e-6)))  # log(1 - mass), stable
        return -torch.where(present[b], log_mass, away).mean()

    def _log_attention(self, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``[N, T]`` log attention of the head from query ``q[n]`` of sample ``b[n]``."""
        if self.inputs is None:
            raise RuntimeError("ReadAttention.loss() before the hooked layer ran")
        hidden, cos, sin = self.inputs
        cos, sin = (t.expand(hidden.shape[0], -1, -1) for t in (cos, sin))  # [1, T, d] or [B, T, d]
        attn, d = self.attn, self.attn.head_dim
        kv_head = self.head // attn.num_key_value_groups
        query = attn.q_proj(hidden[b, q]).view(len(b), -1, d)[:, self.head]  # [N, d]
        query = query * cos[b, q] + rotate_half(query) * sin[b, q]
        keys = attn.k_proj(hidden).view(*hidden.shape[:2], -1, d)[:, :, kv_head]  # [B, T, d]
        keys = keys * cos + rotate_half(keys) * sin
        scores = torch.einsum("ntd,nd->nt", keys[b], query) / math.sqrt(d)
        future = torch.arange(hidden.shape[1], device=hidden.device)[None, :] > q[:, None]
        return scores.masked_fill(future, float("-inf")).log_softmax(-1)
