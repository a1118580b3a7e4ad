"""Run dataset samples through a model with the attention probe, in batches with left padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from avl_lab import data, models
from avl_lab.engine.layout import Modality
from avl_lab.engine.session import attach
from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.prompting import prompt_and_generate
from avl_lab.experiments.analysis.probe import AttentionProbe, image_vector

SHARES = {"system": Modality.SYSTEM, "image": Modality.IMAGE, "instruction": Modality.INSTRUCTION,
          "generated": Modality.GENERATED}


@dataclass
class SampleAttention:
    """One sample's recorded attention.

    prefill_image : ``[L, N_img]`` the last prompt token's attention over image tokens per layer.
    decode_image : ``[T, L, N_img]`` each decode step's attention over image tokens.
    shares : ``[T, L, 4]`` attention share of system / image / instruction / generated rows.
    """

    id: str
    prefill_image: torch.Tensor
    decode_image: torch.Tensor
    shares: torch.Tensor

    @property
    def steps(self) -> int:
        """Decode steps recorded."""
        return self.decode_image.shape[0]


def collect(cfg: EvalConfig) -> list[SampleAttention]:
    """Greedy generation of ``cfg.data`` (``limit`` rows) with ``cfg.model``, recording attention."""
    model, processor = models.load(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.model.seed)
    kwargs = {"path": cfg.data.path} if cfg.data.path else {}
    ds = data.load(cfg.data.name, cfg.data.split, limit=cfg.data.limit, **kwargs)
    probe = AttentionProbe()
    out: list[SampleAttention] = []
    for start in tqdm(range(0, len(ds), cfg.batch_size), desc="attention", unit="batch"):
        rows = [ds[i] for i in range(start, min(len(ds), start + cfg.batch_size))]
        with attach(model, probe) as session:
            prompt_and_generate(processor, [r["image"].convert("RGB") for r in rows],
                                [r["prompt"] for r in rows], session.generate,
                                max_new_tokens=cfg.generation.max_new_tokens)
        out += [_sample(probe, b, r["id"]) for b, r in enumerate(rows)]
    return out


def _sample(probe: AttentionProbe, b: int, row_id: str) -> SampleAttention:
    layers = sorted(probe.prefill)
    prefill = torch.stack([image_vector(*probe.prefill[layer], b) for layer in layers])
    decode, shares = [], []
    for step in probe.decode:
        decode.append(torch.stack([image_vector(*step[layer], b) for layer in layers]))
        shares.append(torch.stack([
            torch.stack([p[b][m[b] == int(code)].sum() for code in SHARES.values()])
            for p, m in (step[layer] for layer in layers)
        ]))
    n_img = prefill.shape[1]
    empty = torch.zeros(0, len(layers), n_img)
    return SampleAttention(
        id=row_id, prefill_image=prefill,
        decode_image=torch.stack(decode) if decode else empty,
        shares=torch.stack(shares) if shares else torch.zeros(0, len(layers), len(SHARES)),
    )
