"""VisionTiering's ranking signals, recorded per KV head through the engine (no policy applied).

:class:`SignalProbe` keeps the full cache and, after each layer's prefill attention, records
every signal of :data:`~avl_lab.policies.vision_tiering.SIGNALS` exactly as VisionTiering
computes it (:meth:`~avl_lab.policies.vision_tiering.VisionTiering.prefill_score`, per KV head):
the numbers a ``vision_tiering signal=...`` policy ranks the layer's image rows by. Their mean
over the KV heads is what the head-averaged policy (the paper's Eq. 1, ``per_head=false``)
ranks by. :func:`collect_signals` runs a dataset's prompts with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from avl_lab import data, models
from avl_lab.engine.layout import Modality
from avl_lab.engine.session import attach
from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.prompting import prompt_and_generate
from avl_lab.experiments.analysis.answer_cells import answer_tokens, blank_tokens
from avl_lab.policies.base import Context, Policy
from avl_lab.policies.vision_tiering import SIGNALS, VisionTiering

__all__ = ["SignalProbe", "SignalRanks", "collect_signals"]


@dataclass
class SignalRanks:
    """One sample's ranking signals over its image tokens.

    signals : ``{signal: [L, Hkv, N_img]}`` per layer and KV head, in prompt order (higher ranks
        first; ``key_norm`` is the negated norm).
    answer : ``[k]`` image-token indices holding the answer, or None (unknown for the task).
    blank : ``[N_img]`` bool, tokens showing only blank grid cells, or None.
    """

    id: str
    signals: dict[str, Tensor]
    answer: Tensor | None
    blank: Tensor | None


@dataclass
class SignalProbe(Policy):
    """Full cache; ``prefill[layer]`` = (``{signal: [B, Hkv, R]}``, ``[B, R]`` modality codes)."""

    window: int = 8
    prefill: dict = field(default_factory=dict, repr=False)
    needs_colsum = True
    needs_kv_norms = True

    def setup(self, cache, ctx: Context) -> None:
        self.prefill = {}
        self._rankers = {s: VisionTiering(S=100, per_head=True, signal=s, window=self.window)
                         for s in SIGNALS}

    def prefill_keep(self, layer, ctx: Context):
        scores = {s: r.prefill_score(layer, ctx).float().cpu() for s, r in self._rankers.items()}
        self.prefill[layer.layer_idx] = (scores, layer.mod.cpu())
        return None

    def sample(self, b: int) -> dict[str, Tensor]:
        """``{signal: [L, Hkv, N_img]}`` of batch row ``b``."""
        layers = sorted(self.prefill)
        out = {}
        for s in SIGNALS:
            per_layer = []
            for layer in layers:
                scores, mod = self.prefill[layer]
                per_layer.append(scores[s][b][:, mod[b] == int(Modality.IMAGE)])
            out[s] = torch.stack(per_layer)
        return out


def collect_signals(cfg: EvalConfig, window: int = 8) -> list[SignalRanks]:
    """Every signal of ``cfg.data``'s prompts (``limit`` rows) under ``cfg.model`` (prefill only)."""
    model, processor = models.load(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.model.seed)
    kwargs = {"path": cfg.data.path} if cfg.data.path else {}
    ds = data.load(cfg.data.name, cfg.data.split, limit=cfg.data.limit, **kwargs)
    probe = SignalProbe(window=window)
    out: list[SignalRanks] = []
    for start in tqdm(range(0, len(ds), cfg.batch_size), desc="signals", unit="batch"):
        rows = [ds[i] for i in range(start, min(len(ds), start + cfg.batch_size))]
        with attach(model, probe) as session:
            prompt_and_generate(processor, [r["image"].convert("RGB") for r in rows],
                                [r["prompt"] for r in rows], session.generate, max_new_tokens=1)
        for b, row in enumerate(rows):
            signals = probe.sample(b)
            n_img = signals[SIGNALS[0]].shape[-1]
            out.append(SignalRanks(id=row["id"], signals=signals,
                                   answer=answer_tokens(row["meta"], row["answers"][0], n_img),
                                   blank=blank_tokens(row["meta"], n_img)))
    return out
