"""Per-head tables that explain a policy's choices: ``coverage`` and ``drift``.

- ``coverage``: for samples whose answer's image tokens are known, the share of them inside
  the top-S% image tokens by the last prompt token's attention (the set A-VL's VisionTiering and
  FastV keep), per layer and per head, and for the head average (``head="mean"``, what A-VL
  ranks by). ``random`` is the share a random S% set covers on average (S% itself, rounded
  down). ``blank_share`` is the share of the head's image attention on blank grid cells and
  ``answer_share`` the share on the answer's tokens.
- ``drift``: p% PPCI between the last prompt token's image attention and each decode step's,
  per layer and per head (and the head average), with ``answer_share`` at that step and
  ``peak_share``, the share of the head's image attention on its single most attended token.
"""

from __future__ import annotations

import pandas as pd
import torch

from avl_lab.experiments.analysis.heads import HeadAttention
from avl_lab.metrics import ppci
from avl_lab.policies.base import count_of


def _heads(per_head: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``[H, N]`` → ``[("0", row), ..., ("mean", head average)]``."""
    return [(str(h), row) for h, row in enumerate(per_head)] + [("mean", per_head.mean(0))]


def _share(vec: torch.Tensor, where: torch.Tensor | None) -> float:
    if where is None:
        return float("nan")
    total = float(vec.sum())
    return float(vec[where].sum()) / total if total > 0 else float("nan")


def coverage(samples: list[HeadAttention], shares=(30, 45)) -> pd.DataFrame:
    """Answer coverage of the prefill top-S% set, per sample, layer, head and S."""
    rows = []
    for s in samples:
        if s.answer is None:
            continue
        n = s.prefill.shape[-1]
        for layer, per_head in enumerate(s.prefill):
            for head, vec in _heads(per_head):
                order = torch.argsort(vec, descending=True, stable=True)
                base = {"sample": s.id, "layer": layer, "head": head,
                        "blank_share": _share(vec, s.blank), "answer_share": _share(vec, s.answer)}
                for S in shares:
                    k = int(count_of(S, torch.tensor([n])))
                    top = torch.zeros(n, dtype=torch.bool)
                    top[order[:k]] = True
                    rows.append({**base, "S": S, "coverage": float(top[s.answer].float().mean()),
                                 "random": k / n})
    return pd.DataFrame(rows)


def drift(samples: list[HeadAttention], ps=(10, 30, 50)) -> pd.DataFrame:
    """p% PPCI of each decode step's image attention against the last prompt token's."""
    rows = []
    for s in samples:
        for t, per_layer in enumerate(s.decode, start=1):
            for layer, per_head in enumerate(per_layer):
                ref = dict(_heads(s.prefill[layer]))
                for head, vec in _heads(per_head):
                    share = _share(vec, s.answer)
                    peak = float(vec.max() / vec.sum()) if float(vec.sum()) > 0 else float("nan")
                    for p in ps:
                        rows.append({"sample": s.id, "step": t, "layer": layer, "head": head,
                                     "p": p, "ppci": ppci(ref[head], vec, p),
                                     "answer_share": share, "peak_share": peak})
    return pd.DataFrame(rows)
