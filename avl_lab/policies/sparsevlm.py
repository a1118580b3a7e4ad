"""SparseVLM: text "raters" relevant to the image rank the image tokens after layers 2, 6, 15.

Paper: https://arxiv.org/abs/2410.04417; code: Gumpest/SparseVLMs @26a5f48 (v1.5, the default
of ``main``), ``llava/model/language_model/modelling_sparse_llama.py`` (raters l.198-204,
stages l.221-322), ``score.py`` (tables l.9-21, ``attn_postprocess_topk`` l.23-46). Followed:

- Raters, chosen once from the text model's input embeddings: V = the image tokens' embeddings,
  T = every token after the image; ``r = softmax(V Tᵀ, over T).mean(over V)``; the raters are
  the tokens with ``r > mean(r)`` (l.198-204).
- After each stage layer (0-based 2, 6, 15), that layer's attention (RoPE at the current
  positions), averaged over heads and over the raters' rows, ranks the current image tokens;
  stage s keeps ``min(table[s], V_cur - 1)`` of them in order (``score.py`` l.23-46), the
  tables being those of the 192 / 128 / 96 / 64-token settings for 576 image tokens (192:
  300, 200, 110); text and the system prompt are never dropped; the stage layer and the
  earlier ones keep every row they computed.
- Positions: renumbered 0..n-1 (l.302), decode positions continue each layer's compact
  numbering (l.651-655): ``positions=renumber``.

Differences: the **non-recycling variant** — the reference also merges the 30% most relevant
dropped tokens into ``int(m/10)+1`` cluster means placed after the kept image tokens
(``utils.cluster_and_merge``, DPC-kNN); that is the reference's own ``else`` branch (l.308-320),
its v2.0 mode and LightCompress's ``merge_flag: False``. Its tables were calibrated with
merging, so the settings keep a few tokens fewer (192 → 188 equal tokens per layer on LLaVA-1.5).
Counts for other image sizes scale the tables by N/576 (rounded down); the attention is
computed in fp32 (the reference: fp16); batch > 1 with left padding; ``positions=keep`` keeps
original positions (as v2.0 and LightCompress do; the only choice on Qwen's M-RoPE and
Gemma 3). LightCompress (``sparsevlm.py``) agrees on raters, tables and the top-k rule, but
keeps original positions, gives each merged token its cluster centre's position, and decodes
at the original numbering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from avl_lab.engine.layout import Modality
from avl_lab.policies.base import Context, Policy, Rows, count_of, is_image, top_rows
from avl_lab.policies.decode_tiering import WithTiering
from avl_lab.policies.registry import register
from avl_lab.policies.staged import Staged, check_positions, check_shares, check_stages

#: The reference's per-stage image-token counts for 576 image tokens (``score.py`` l.11-14, v1.5).
TABLES = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
REFERENCE_N = 576


def after_image(valid: Tensor, image: Tensor) -> Tensor:
    """``[B, P]`` the valid tokens after each row's last image token (none without an image)."""
    seen_from_right = image.flip(1).long().cumsum(1).flip(1) > 0  # at or before the last image
    return valid & ~seen_from_right & image.any(1, keepdim=True)


def text_raters(embeds: Tensor, valid: Tensor, image: Tensor) -> Tensor:
    """``[B, P]`` SparseVLM's raters among the tokens after the image, from the input
    embeddings ``embeds`` ``[B, P, D]`` (``image``, ``valid``: ``[B, P]`` prompt masks)."""
    text = after_image(valid, image)
    n = int(text.sum(1).max())
    if n == 0:
        return text
    order = torch.sort((~text).to(torch.int8), dim=1, stable=True).indices[:, :n]  # [B, n]
    on = torch.arange(n, device=text.device)[None, :] < text.sum(1, keepdim=True)  # [B, n]
    t = embeds.float().gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))  # [B, n, D]
    logits = torch.einsum("bpd,bnd->bpn", embeds.float(), t).masked_fill(~on[:, None], float("-inf"))
    per_image = torch.softmax(logits, -1).masked_fill(~image[..., None], 0.0)  # [B, P, n]
    r = per_image.sum(1) / image.sum(1, keepdim=True).clamp(min=1)  # [B, n]
    mean = (r * on).sum(1, keepdim=True) / on.sum(1, keepdim=True).clamp(min=1)
    picked = on & (r > mean)
    B, P = text.shape
    raters = torch.zeros(B, P + 1, dtype=torch.bool, device=text.device)
    return raters.scatter(1, order.masked_fill(~picked, P), True)[:, :P]


@dataclass
class SparseVLMStages(Staged):
    """The method: after each layer of ``stages``, keep ``keep[s]``% of the image tokens (at most
    all but one of those left), ranked by the raters' attention."""

    @property
    def prune_layers(self) -> tuple[int, ...]:
        return tuple(self.stages)

    def prune_tokens(self, layer: Rows, ctx: Context) -> Tensor:
        if ctx.inputs_embeds is None or ctx.prompt_mod is None:
            raise RuntimeError("sparsevlm needs the text model's input embeddings (prefill)")
        image_cols = ctx.prompt_mod == int(Modality.IMAGE)  # [B, P]: every image token, as
        valid_cols = ctx.prompt_mod != int(Modality.PAD)  # the reference picks raters once
        raters = text_raters(ctx.inputs_embeds, valid_cols, image_cols).gather(1, layer.tok)
        raters = raters & layer.valid  # [B, R]: rows of rater tokens (text is never pruned)
        probs = ctx.query_probs(raters)  # [B, m, R], zero on padding queries
        relevance = probs.sum(1) / raters.sum(1, keepdim=True).clamp(min=1)  # [B, R]
        img = is_image(layer)
        k = torch.minimum(count_of(self.share(ctx), ctx.n_image), (img.sum(1) - 1).clamp(min=0))
        return ~img | top_rows(relevance, img, k)


@register("sparsevlm", example={"stages": [0, 1, 2], "tokens": 192, "positions": "keep"})
@dataclass
class SparseVLM(WithTiering):
    """Parameters
    ----------
    stages : list of int
        The layers after which the image is cut (0-based; reference [2, 6, 15] for 32 layers).
    tokens : int
        The reference setting: 192, 128, 96 or 64 (its per-stage tables, scaled by N/576).
    keep : list of float, optional
        The stages' shares (% of the image tokens) instead of a setting's table.
    positions : str
        ``renumber`` (reference) or ``keep``.
    S, C, K, T
        A-VL's decode tiering after the prefill method (each off when omitted).
    """

    stages: list[int] = field(default_factory=lambda: [2, 6, 15])
    tokens: int = 192
    keep: list[float] | None = None
    positions: str = "renumber"

    def method(self) -> Policy:
        check_stages(self.stages)
        if self.keep is None:
            if self.tokens not in TABLES:
                raise ValueError(f"`tokens` must be one of {sorted(TABLES)}, got {self.tokens!r}")
            table = TABLES[self.tokens]
            if len(self.stages) != len(table):
                raise ValueError(f"`stages` must name {len(table)} layers for a `tokens` setting, "
                                 f"got {self.stages!r} (or give `keep`, one share per stage)")
            shares = [100.0 * c / REFERENCE_N for c in table]
        else:
            shares = self.keep
            check_shares(shares, self.stages)
        check_positions(self.positions)
        return SparseVLMStages(tuple(self.stages), tuple(float(x) for x in shares), self.positions)
