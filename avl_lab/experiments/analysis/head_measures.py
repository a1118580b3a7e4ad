"""Per-head tables that explain a policy's choices: ``coverage`` and ``drift``.

- ``coverage``: for samples whose answer's image tokens are known, the share of them inside
  the top-S% image tokens by each ranking signal of VisionTiering (``signal``: the last prompt
  token's attention, the paper's; a window's, column sums, attention × value norm, key norm;
  :mod:`avl_lab.experiments.analysis.signals`), per layer and per KV head, and for the head
  average (``head="mean"``, what A-VL ranks by). ``random`` is the share a random S% set
  covers on average (S% itself, rounded down). ``blank_share`` is the share of the signal's
  mass on blank grid cells and ``answer_share`` the share on the answer's tokens (NaN for
  ``key_norm``, a negated norm). :func:`coverage_intervals` gives their means over samples
  with bootstrap intervals, and ``complete``, the share of samples whose answer tokens are
  all in the set (what an exact-match metric needs); :func:`complete_in_every_layer` the share
  whose answer tokens are all kept by every layer.
- ``drift``: p% PPCI between the last prompt token's image attention and each decode step's,
  per layer and per query head (and the head average), with ``answer_share`` at that step and
  ``peak_share``, the share of the head's image attention on its single most attended token.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from avl_lab.experiments.analysis.heads import HeadAttention
from avl_lab.experiments.analysis.signals import SignalRanks
from avl_lab.experiments.study import bootstrap
from avl_lab.metrics import ppci
from avl_lab.policies.base import count_of


def _heads(per_head: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``[H, N]`` → ``[("0", row), ..., ("mean", head average)]``."""
    return [(str(h), row) for h, row in enumerate(per_head)] + [("mean", per_head.mean(0))]


def _share(vec: torch.Tensor, where: torch.Tensor | None) -> float:
    if where is None or float(vec.min()) < 0:  # no such tokens, or not a mass (key_norm)
        return float("nan")
    total = float(vec.sum())
    return float(vec[where].sum()) / total if total > 0 else float("nan")


def coverage(samples: list[SignalRanks], shares=(30, 45)) -> pd.DataFrame:
    """Answer coverage of the prefill top-S% set, per sample, signal, layer, head and S."""
    rows = []
    for s in samples:
        if s.answer is None:
            continue
        for signal, per_layer in s.signals.items():
            n = per_layer.shape[-1]
            for layer, per_head in enumerate(per_layer):
                for head, vec in _heads(per_head):
                    order = torch.argsort(vec, descending=True, stable=True)
                    base = {"sample": s.id, "signal": signal, "layer": layer, "head": head,
                            "blank_share": _share(vec, s.blank),
                            "answer_share": _share(vec, s.answer)}
                    for S in shares:
                        k = int(count_of(S, torch.tensor([n])))
                        top = torch.zeros(n, dtype=torch.bool)
                        top[order[:k]] = True
                        rows.append({**base, "S": S, "random": k / n,
                                     "coverage": float(top[s.answer].float().mean())})
    return pd.DataFrame(rows)


def coverage_intervals(df: pd.DataFrame, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Mean ``coverage`` (and ``answer_share``) over samples per signal, layer, head and S, with
    a percentile bootstrap interval of the coverage (``lo``, ``hi``; the same draws of samples
    for every group, so two signals' intervals come from the same resampled sets), and
    ``complete``: the share of samples with coverage 1."""
    keys = ["signal", "layer", "head", "S"]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "n", "coverage", "lo", "hi", "complete", "random",
                                     "answer_share"])
    ids = sorted(set(df["sample"]))
    idx = bootstrap.draws(len(ids), resamples, seed)  # [B, n]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        vals = g.set_index("sample")["coverage"].reindex(ids).to_numpy(dtype=np.float64)
        lo, hi = bootstrap.interval(bootstrap.resample(vals[None], idx)[0], level)
        rows.append({**dict(zip(keys, key)), "n": len(ids), "coverage": float(vals.mean()),
                     "lo": float(lo), "hi": float(hi), "complete": float((vals == 1.0).mean()),
                     "random": float(g["random"].mean()),
                     "answer_share": float(g["answer_share"].mean())})
    return pd.DataFrame(rows)


def complete_in_every_layer(df: pd.DataFrame, head: str = "mean") -> pd.DataFrame:
    """Per signal and S: the share of samples whose answer tokens are all inside every layer's
    top-S% set by ``head`` (``"mean"``: the head average A-VL ranks by) — the samples a layer-wise
    selection by that signal leaves readable in full."""
    sub = df[df["head"].astype(str) == head]
    whole = sub.groupby(["signal", "S", "sample"], sort=False)["coverage"].min().eq(1.0)
    return whole.groupby(["signal", "S"], sort=False).mean().rename("complete").reset_index()


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
