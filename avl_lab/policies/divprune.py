"""DivPrune: keep a max–min-diverse subset of the projected image embeddings, before layer 0.

Paper: https://arxiv.org/abs/2503.02175; code: vbdi/divprune @799e2d9,
``LLaVA/llava/model/llava_arch.py`` (``DivPrune`` l.152-171, its call l.352-383) and
``run_Divprune.sh`` (``LAYER_INDEX=0 SUBSET_RATIO=0.098``). Followed:

- The image block's projected embeddings V (for LLaVA-NeXT the packed block, newline tokens
  included: ``image_features[0]``); D = 1 − cos(V, V) (l.147-155).
- ``round(ratio · N)`` tokens (l.153) chosen greedily: first the token farthest from its
  nearest neighbour (the second-smallest distance in its column, l.164), then each time the
  token whose smallest distance to the chosen ones is largest (l.166-169); ties to the lowest
  index (``argmax``).
- The chosen tokens in their original order (``keep_indexs.sort()``, l.379), text untouched;
  the sequence is rebuilt from them, so positions are renumbered (``positions=renumber``).

Differences: the running minimum (``min(m, D[s_i])``) replaces re-taking the minimum over all
chosen rows at each step (the same values, O(kN) instead of O(k²N)); every image block of every
row, with its own N (the reference: row 0's one image at a fixed ``SYS_TOKEN_LEN = 35``); the
budget is ``keep``% (9.8 by default) or a fixed ``tokens``. When every remaining token is a
near-duplicate of a chosen one (distance ≈ 0, e.g. blank cells), ``argmax`` picks a chosen token
again, as in the reference; the reference then holds that token twice in the sequence
(``keep_indexs`` with repeats), here it is kept once, so fewer tokens than the budget stay. LightCompress (``divprune.py``)
agrees on the selection and, on Qwen2.5-VL, keeps the kept tokens' original 3-D positions
(``positions=keep`` here, the only mode on M-RoPE and Gemma 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avl_lab.policies.base import Context, Policy, Rows
from avl_lab.policies.decode_tiering import WithTiering
from avl_lab.policies.pre_llm import PreLLM, check_tokens, image_runs, per_crop_budget, slots_cut
from avl_lab.policies.registry import register


def max_min_diverse(x: Tensor, k: int) -> Tensor:
    """``[k]`` indices of ``x`` ``[N, D]`` in DivPrune's selection order."""
    xn = F.normalize(x.float(), dim=-1)
    dist = 1.0 - xn @ xn.T
    n = dist.shape[0]
    k = min(k, n)
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    if k == 0:
        return chosen
    first = dist.topk(2, dim=0, largest=False).values[1] if n > 1 else dist[0]
    chosen[0] = first.argmax()
    nearest = dist[chosen[0]]
    for i in range(1, k):
        chosen[i] = nearest.argmax()
        nearest = torch.minimum(nearest, dist[chosen[i]])
    return chosen


def subset_size(n: int, keep: float, tokens: int | None) -> int:
    """``round(keep% · n)`` (Python's rounding, as the reference) or ``tokens``; at least 1."""
    if tokens is not None:
        return per_crop_budget(keep, tokens, n)
    return max(1, min(n, round(keep / 100.0 * n)))


@dataclass
class DivPruneSelect(PreLLM):
    """The method: per image block, ``subset_size`` tokens by max–min diversity."""

    keep: float = 9.8
    tokens: int | None = None

    def prune_input(self, layer: Rows, ctx: Context) -> Tensor:
        B, P = layer.valid.shape
        slots = []
        for b in range(B):
            for cols in image_runs(layer.mod[b]):
                k = subset_size(cols.numel(), self.keep, self.tokens)
                slots.append(b * P + cols[max_min_diverse(ctx.hidden[b, cols], k)])
        if not slots:
            return layer.valid
        return slots_cut(layer, ctx, torch.cat(slots))


@register("divprune", example={"keep": 25.0, "positions": "keep"})
@dataclass
class DivPrune(WithTiering):
    """Parameters
    ----------
    keep : float
        % of each image's tokens kept (reference ``SUBSET_RATIO`` 0.098: 9.8).
    tokens : int, optional
        A fixed number per image instead.
    positions : str
        ``renumber`` (reference) or ``keep``.
    S, C, K, T
        A-VL's decode tiering after the prefill method (each off when omitted).
    """

    keep: float = 9.8
    tokens: int | None = None
    positions: str = "renumber"

    def method(self) -> Policy:
        check_tokens(self.keep, self.tokens, self.positions)
        return DivPruneSelect(positions=self.positions, keep=self.keep, tokens=self.tokens)
