"""Per-head attention of the newest query, recorded from the stock model (no policy).

:class:`HeadProbe` registers an attention function that runs transformers' own SDPA and, beside
it, the softmax of the newest query of every head over every key (the last prompt token in
prefill, the step's token in decode). :func:`collect_heads` runs greedy generation on a dataset
with it and keeps, per sample, the image-token part in prompt order, with the answer's image
tokens where the task knows them (:mod:`avl_lab.experiments.analysis.answer_cells`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from avl_lab import data, models
from avl_lab.engine.families import family_of
from avl_lab.engine.stats import steps_until_eos
from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.prompting import prompt_and_generate
from avl_lab.experiments.analysis.answer_cells import answer_tokens, blank_tokens

PROBE_ATTN = "avl_lab_head_probe"


@dataclass
class HeadAttention:
    """One sample's per-head attention over its image tokens.

    prefill : ``[L, H, N_img]`` the last prompt token's attention per layer and query head.
    decode : ``[T, L, H, N_img]`` each decode step's (steps until the sample's end of sequence).
    answer : ``[k]`` image-token indices holding the answer, or None (unknown for the task).
    blank : ``[N_img]`` bool, tokens showing only blank grid cells, or None.
    """

    id: str
    prefill: Tensor
    decode: Tensor
    answer: Tensor | None
    blank: Tensor | None

    @property
    def steps(self) -> int:
        """Decode steps recorded."""
        return self.decode.shape[0]


def _newest_query_probs(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``[B, Hq, K]`` softmax of the newest query of each head (fp32)."""
    B, Hq, _, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    q = query[:, :, -1].float().view(B, Hkv, Hq // Hkv, D)
    s = torch.einsum("bhgd,bhkd->bhgk", q, key.float()) * scale  # [B, Hkv, G, K]
    if mask is not None:
        m = mask[:, 0, -1, :K]  # [B, K]
        see = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        s = s.masked_fill(~see[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0).reshape(B, Hq, K)


class HeadProbe:
    """Records ``steps[t][layer]`` = ``[B, Hq, K]`` newest-query attention (t = 0: prefill)."""

    def __init__(self) -> None:
        self.steps: list[dict[int, Tensor]] = []

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        scale = module.scaling if scaling is None else scaling
        if module.layer_idx == 0:
            self.steps.append({})
        self.steps[-1][module.layer_idx] = _newest_query_probs(query, key, attention_mask, scale).cpu()
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scale,
                                      dropout=dropout, **kw)  # fmt: skip

    @contextlib.contextmanager
    def attached(self, model) -> Iterator[HeadProbe]:
        """Install the probe on ``model``'s decoder for the ``with`` block (restored after)."""
        family_of(model)  # a supported family, or TypeError
        AttentionInterface.register(PROBE_ATTN, self.attention)
        AttentionMaskInterface.register(PROBE_ATTN, sdpa_mask)
        old = {"text_config": model.config.text_config._attn_implementation,
               "vision_config": model.config.vision_config._attn_implementation}  # fmt: skip
        self.steps = []
        try:
            model.set_attn_implementation({"text_config": PROBE_ATTN,
                                           "vision_config": old["vision_config"]})  # fmt: skip
            yield self
        finally:
            model.set_attn_implementation(old)


def collect_heads(cfg: EvalConfig) -> list[HeadAttention]:
    """Greedy generation of ``cfg.data`` (``limit`` rows) with ``cfg.model``, recording every
    head's attention of the newest query in prefill and each decode step."""
    model, processor = models.load(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.model.seed)
    kwargs = {"path": cfg.data.path} if cfg.data.path else {}
    ds = data.load(cfg.data.name, cfg.data.split, limit=cfg.data.limit, **kwargs)
    vision_ids = torch.tensor(family_of(model).vision_token_ids(model.config))
    probe = HeadProbe()
    out: list[HeadAttention] = []
    for start in tqdm(range(0, len(ds), cfg.batch_size), desc="head attention", unit="batch"):
        rows = [ds[i] for i in range(start, min(len(ds), start + cfg.batch_size))]
        with probe.attached(model):
            gen = prompt_and_generate(processor, [r["image"].convert("RGB") for r in rows],
                                      [r["prompt"] for r in rows], model.generate,
                                      max_new_tokens=cfg.generation.max_new_tokens)
        inputs, seqs = gen.inputs, gen.sequences
        P = inputs["input_ids"].shape[1]
        n_steps = len(probe.steps) - 1
        steps = steps_until_eos(seqs, P, n_steps, {}, model.generation_config)
        for b, row in enumerate(rows):
            cols = torch.nonzero(torch.isin(inputs["input_ids"][b], vision_ids)).flatten()  # [N_img]
            per_step = [torch.stack([step[layer][b][:, cols] for layer in sorted(step)])
                        for step in probe.steps]  # fmt: skip
            t_b = n_steps if steps is None else int(steps[b])
            decode = torch.stack(per_step[1 : 1 + t_b]) if t_b else per_step[0][None, :0]
            n_img = len(cols)
            out.append(HeadAttention(
                id=row["id"], prefill=per_step[0], decode=decode,
                answer=answer_tokens(row["meta"], row["answers"][0], n_img),
                blank=blank_tokens(row["meta"], n_img)))
    return out
