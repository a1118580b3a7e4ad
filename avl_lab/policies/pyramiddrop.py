"""PyramidDrop: the image is cut in stages, before layers 8, 16 and 24, to 50%, 25% and 12.5%.

Paper: https://arxiv.org/abs/2410.17247; code: Cooperx521/PyramidDrop @6444f30,
``llava/model/modeling_llama_pdrop.py`` (``pdrop_forward`` l.1106-1289, ``pdrop_rank_drop``
l.1291-1468) and ``llava/eval/model_vqa_loader.py`` l.84-96 (``--layer_list '[8,16,24]'
--image_token_ratio_list [0.5,0.25,0.125]``, 1.0 prepended). Followed:

- Before each stage layer L (0-based loop index) the sequence entering L is scored with a
  preview of L's own attention: its ``input_layernorm``, ``q_proj``/``k_proj`` and RoPE at the
  current positions (l.1320-1342); the query is the last prompt token (l.1389-1392), softmax in
  fp32 over every key (l.1395-1401), averaged over all heads; the image columns are ranked.
- Stage s keeps ``int(N · ratio_s)`` image tokens, always counted from the original N
  (l.1306-1307; λ = 0.5 gives 576 → 288 → 144 → 72), in their original order (l.1405-1412);
  text and the system prompt are never dropped; layers before L keep every row they computed.
- Positions: renumbered 0..n-1 after each stage (l.1431, l.1446), and decode positions of each
  stage's layers move down by the tokens it dropped (l.1259-1268): ``positions=renumber``.

Differences: the preview goes through the stock attention module (so q/k norms and GQA are
those of the family; the reference has no ``repeat_kv``, ours averages each KV head's group);
batch > 1 with left padding (each row keeps its own count, counted from its own N);
``positions=keep`` keeps each token's original position instead (the only choice on Qwen's
M-RoPE and Gemma 3, see :mod:`avl_lab.engine.stages`); the stages and ratios are fields
(``lam`` gives ratios λ, λ², λ³; ``keep`` any list). LightCompress (``pyramiddrop.py``) agrees
except that it never moves decode positions (a 288/432/504 gap against the compact prefill
positions), which ``positions=renumber`` does not copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from avl_lab.policies.base import Context, Policy, Rows, count_of
from avl_lab.policies.decode_tiering import WithTiering
from avl_lab.policies.prefill_prune import keep_top_images
from avl_lab.policies.registry import register
from avl_lab.policies.staged import Staged, check_positions, check_shares, check_stages


@dataclass
class PyramidDropStages(Staged):
    """The method: before each layer of ``stages``, keep ``keep[s]``% of the image tokens."""

    needs_preview = True

    @property
    def prune_before_layers(self) -> tuple[int, ...]:
        return tuple(self.stages)

    def prune_before(self, layer: Rows, ctx: Context) -> Tensor:
        return keep_top_images(layer, ctx, count_of(self.share(ctx), ctx.n_image))


@register("pyramiddrop", example={"stages": [1, 2, 3], "lam": 0.5, "positions": "keep"})
@dataclass
class PyramidDrop(WithTiering):
    """Parameters
    ----------
    stages : list of int
        The layers before which the image is cut (0-based; reference [8, 16, 24] for 32 layers).
    lam : float
        λ: stage s keeps 100·λ^(s+1)% of the image tokens (reference 0.5).
    keep : list of float, optional
        The stages' shares (% of the image tokens) instead of λ's.
    positions : str
        ``renumber`` (reference) or ``keep``.
    S, C, K, T
        A-VL's decode tiering after the prefill method (each off when omitted).
    """

    stages: list[int] = field(default_factory=lambda: [8, 16, 24])
    lam: float = 0.5
    keep: list[float] | None = None
    positions: str = "renumber"

    def method(self) -> Policy:
        check_stages(self.stages, first=1)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 < self.lam <= 1:
            raise ValueError(f"`lam` must be in (0, 1], got {self.lam!r}")
        shares = self.keep if self.keep is not None else [
            100.0 * self.lam ** (s + 1) for s in range(len(self.stages))]
        check_shares(shares, self.stages)
        check_positions(self.positions)
        return PyramidDropStages(tuple(self.stages), tuple(float(x) for x in shares), self.positions)
