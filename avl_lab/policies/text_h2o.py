"""TextH2O (T): H2O-style eviction on the text rows only.

Default (``variant="quantile"``), as the official code's own text method
(``TextPruneHistoryKVCache``, modeling_llama.py l.278-372, driven at l.1702-1733):

- *text* is every token after the image (the instruction, then the generated tokens); the
  system rows before the image are never evicted;
- the window is ``max(round(T% * n), min_window)`` rows, ``n`` the *current* text length
  (text prompt tokens + tokens generated so far, l.1415 and l.1707-1709; ``round`` is Python's,
  half to even);
- when the text rows overflow it, the newest ``floor(window / 2)`` are kept and the rest of
  the window is filled with the rows of highest score (l.308-322);
- a row's score starts at the attention it pays itself; each later text query q adds, to every
  earlier text row j, ``a(q, j) - quantile_r(a(q, ·))``: its attention centred on the
  ``r = 1 - T/100`` quantile of that query's attention over the text rows (l.346-372; in
  prefill the quantile runs over the keys before q, in decode over all text rows including q,
  as the official code does).

Per KV head by default (``per_head=true``), as the official code: ``TextPruneHistoryKVCache``
and ``H2OKVCache_LayerWise`` keep one score row per head (``hh_score`` is ``[num_heads, n]``,
l.352 and l.220), compute each head's quantile from that head's attention
(``torch.quantile(..., dim=1)``, l.360 and l.370) and take ``keep_topk`` per head (l.314 and
l.170), so every head keeps its own text rows (the same count in every head). Here each KV head scores with its own
attention: in prefill the text queries' attention per KV head (``ctx.query_probs(...,
per_head=True)``; ``variant="max_length"``: ``ctx.head_colsum``), in decode ``ctx.head_probs``;
the layer then holds its rows per KV head and the evicted (row, head) pairs leave memory.
Where we differ: under GQA a KV head's attention is the mean over its group of query heads (the
official code ran LLaVA-1.5, where query heads = KV heads, so nothing to average); batch > 1
and left padding work (the official code reads batch row 0 only); each head's window is
counted on the current text length, as there. ``per_head=false`` keeps one set of rows for all
heads, scored from the head-averaged attention (avl_lab's earlier reading, kept for
comparison). Other variants:

- ``"h2o"``: the branch that the released lmms-eval CLI takes by default
  (``--text_use_h2o true``, ``__main__.py`` l.218-222; modeling_llama.py l.1621-1657): the same
  text and window, plain accumulated attention of the text queries (``H2OKVCache_LayerWise``),
  ``floor(0.7 * window)`` heavy hitters (``--text_h20_hh_rate_in_cache 0.7``) and the rest
  recent rows; the CLI also sets ``--text_init_cache 20`` (``min_window=20``);
- ``"max_length"``: avl_lab's earlier reading of the paper's text ("T% of the maximum text
  token length"): window ``floor(T% * (non-image prompt tokens + max_new_tokens))``, system
  rows evictable, accumulated attention of all prompt queries, newest half protected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avl_lab.engine.layout import Modality
from avl_lab.policies.base import (
    Context,
    DropRows,
    Policy,
    both,
    check_percent,
    count_of,
    is_text,
    newest_rows,
    rows_to_index,
    top_rows,
)
from avl_lab.policies.registry import register
from avl_lab.policies.step_ranking import pad_last

VARIANTS = ("quantile", "h2o", "max_length")
INDEX = "text_h2o"  # the layer's row index of the candidate rows (see AVLLayer.set_index)
_RECENT = {"quantile": 0.5, "h2o": 0.3, "max_length": 0.5}


def _align(k: Tensor, count: Tensor) -> Tensor:
    """A ``[B]`` count against counts ``[B, ...]`` (per KV head ``[B, Hkv]``, per layer of a step
    ``[B, L, (Hkv)]``): ``[B, 1, ...]``."""
    return k.view(-1, *[1] * (count.dim() - 1)) if k.dim() == 1 and count.dim() > 1 else k


def evict_lowest(acc: Tensor, candidates: Tensor, budget: Tensor, protect: Tensor) -> Tensor:
    """Keep mask that drops the lowest-``acc`` entries among ``candidates`` down to ``budget``,
    never dropping the ``protect`` newest candidates (``[B]`` counts, ``[B, n]`` masks, or
    ``[B, Hkv, n]`` per KV head; newest = last along the last dim)."""
    count = candidates.sum(-1)
    budget, protect = _align(budget, count), _align(protect, count)
    over = (count - budget).clamp(min=0)  # 0 where all fit: then nothing is dropped (no read-back)
    pool = candidates & ~newest_rows(candidates, protect)
    return ~top_rows(-acc, pool, over)


def _like(t: Tensor, rows: Tensor) -> Tensor:
    """A ``[B, R]`` tensor repeated per KV head against per-head entries ``[B, Hkv, n]``."""
    return t[:, None].expand(-1, rows.shape[1], -1) if t.dim() == 2 and rows.dim() == 3 else t


def masked_quantile(x: Tensor, valid: Tensor, q: float) -> Tensor:
    """``torch.quantile(x[valid], q)`` (linear interpolation) along the last dim, per row;
    0 where a row has no valid entry. ``x``, ``valid``: ``[..., n]`` → ``[...]``."""
    n = valid.sum(-1)
    srt = torch.sort(x.masked_fill(~valid, float("inf")), dim=-1).values
    pos = (n - 1).clamp(min=0).to(x.dtype) * q
    lo = pos.floor().long()
    hi = pos.ceil().long()
    a = srt.gather(-1, lo[..., None])[..., 0]
    b = srt.gather(-1, hi[..., None])[..., 0]
    out = a + (b - a) * (pos - lo.to(x.dtype))
    return out.masked_fill(n == 0, 0.0)


def text_rows(layer) -> Tensor:
    """``[B, R]`` valid rows after the image: instruction and generated tokens."""
    mod = layer.mod
    return ((mod == int(Modality.INSTRUCTION)) | (mod == int(Modality.GENERATED))) & layer.valid


@register("text_h2o", example={"T": 50})
@dataclass
class TextH2O(Policy):
    """Parameters
    ----------
    T : float
        Text window as % of the current text length (``variant="max_length"``: of the maximum).
    variant : str
        ``"quantile"`` (the official text method, default), ``"h2o"`` (the official CLI's
        default branch) or ``"max_length"`` (avl_lab's earlier reading); see the module doc.
    recent : float, optional
        Share of the window held by the newest rows (default: the variant's, 0.5 / 0.3 / 0.5).
    min_window : int
        Smallest window in rows (the official ``text_init_cache``: 1 in the module, 20 in the
        lmms-eval CLI).
    per_head : bool
        Score and keep per KV head (official, default) or one set of rows for all heads.
    """

    T: float = 50.0
    variant: str = "quantile"
    recent: float | None = None
    min_window: int = 1
    per_head: bool = True

    @property
    def needs_probs(self) -> bool:  # type: ignore[override]
        return not self.per_head

    @property
    def needs_head_probs(self) -> bool:  # type: ignore[override]
        return self.per_head

    def __post_init__(self) -> None:
        check_percent("T", self.T, allow_none=False)
        if self.variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}, got {self.variant!r}")
        if self.recent is not None and (isinstance(self.recent, bool) or not 0 <= self.recent <= 1):
            raise ValueError(f"`recent` must be a fraction in [0, 1], got {self.recent!r}")
        if isinstance(self.min_window, bool) or not isinstance(self.min_window, int) or self.min_window < 1:
            raise ValueError(f"`min_window` must be an integer ≥ 1, got {self.min_window!r}")
        if not isinstance(self.per_head, bool):
            raise ValueError(f"`per_head` must be true or false, got {self.per_head!r}")

    @property
    def needs_colsum(self) -> bool:  # type: ignore[override]
        return self.variant == "max_length"

    # --- which rows, how many ------------------------------------------------------------------
    def _candidates(self, layer) -> Tensor:
        return is_text(layer) if self.variant == "max_length" else text_rows(layer)

    def _window(self, n_system: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        """``([B] window, [B] protected newest rows)``, ``n_system`` the layer's system rows
        (``[B]``, or ``[B, Hkv]`` per KV head; never evicted, not text)."""
        share = _RECENT[self.variant] if self.recent is None else self.recent
        if self.variant == "max_length":
            window = count_of(self.T, ctx.n_text + ctx.max_new_tokens).clamp(min=self.min_window)
            return window, count_of(100 * share, window).clamp(min=1)
        n = (_align(ctx.n_text, n_system) - n_system + ctx.step).to(torch.float64)  # current text
        window = torch.round(n * self.T / 100.0).long().clamp(min=self.min_window)
        if self.variant == "h2o":  # hh = int(window * 0.7), recent = the rest (l.1639-1640)
            return window, window - count_of(100 * (1 - share), window)
        return window, count_of(100 * share, window)  # recent = int(window / 2) (l.308)

    # --- scores --------------------------------------------------------------------------------
    def _prefill_scores(self, layer, ctx: Context) -> Tensor:
        """``[B, R]`` (``[B, Hkv, R]`` per KV head) score of each row after the prompt."""
        if self.variant == "max_length":
            return (ctx.head_colsum if self.per_head else ctx.colsum).float()
        text = text_rows(layer)
        if text.dim() == 3:  # rows per KV head: in prefill every head still holds the same rows
            text = text[:, 0]
        idx = torch.sort((~text).to(torch.int8), dim=1, stable=True).indices  # text rows first
        m = int(text.sum(1).max())
        idx = idx[:, :m]  # [B, m] the text rows in order
        live = torch.arange(m, device=idx.device)[None, :] < text.sum(1)[:, None]  # [B, m]
        if self.per_head:  # [B, Hkv, m, R]: text query k over the layer's rows, per KV head
            probs = ctx.query_probs(text, per_head=True)
        else:
            probs = ctx.query_probs(text)[:, None]  # [B, 1, m, R], head-averaged
        H = probs.shape[1]
        a = probs.gather(3, idx[:, None, None, :].expand(-1, H, m, -1))  # [B, H, m, m]: k, j
        earlier = torch.ones(m, m, dtype=torch.bool, device=a.device).tril(-1)  # j < k
        pairs = (earlier[None] & live[:, :, None] & live[:, None, :])[:, None]  # [B, 1, k, j]
        if self.variant == "h2o":  # H2O: attention summed over the text queries (j <= k)
            score = (a * (pairs | torch.diag_embed(live)[:, None])).sum(2)
        else:
            quant = masked_quantile(a, pairs.expand_as(a), 1.0 - self.T / 100.0)  # [B, H, k]
            centred = (a - quant[..., None]) * pairs
            score = a.diagonal(dim1=2, dim2=3) * live[:, None] + centred.sum(2)  # [B, H, j]
        acc = torch.zeros(text.shape[0], H, text.shape[1], dtype=torch.float32, device=text.device)
        acc = acc.scatter(2, idx[:, None].expand(-1, H, -1), score.float() * live[:, None])
        return acc if self.per_head else acc[:, 0]

    def decode_scores(self, acc: Tensor, probs: Tensor, live: Tensor) -> Tensor:
        """The entries' scores after one decode step: ``acc``, ``probs`` (this step's attention
        at each entry), ``live`` (entries still held) ``[B, (Hkv,) n]``, the last entry the new
        token's row (its score starts at its own attention)."""
        probs = probs * live
        if self.variant != "quantile":
            return acc + probs
        quant = masked_quantile(probs, live, 1.0 - self.T / 100.0)  # over the text rows, q too
        current = torch.zeros_like(live)
        current[..., -1] = True
        return acc + torch.where(current, probs, probs - quant[..., None]) * live

    # --- hooks ---------------------------------------------------------------------------------
    def prefill_keep(self, layer, ctx: Context):
        if self.per_head:
            layer.split_heads()
        acc = self._prefill_scores(layer, ctx)
        candidates = self._candidates(layer)
        n_system = ((layer.mod == int(Modality.SYSTEM)) & layer.valid).sum(-1)
        keep = evict_lowest(acc, candidates, *self._window(n_system, ctx))
        # From here on the policy follows only its candidate rows, through a row index.
        rows = rows_to_index(both(candidates, keep))  # [B, (Hkv,) w] in row order
        acc = _like(acc, rows)
        layer.set_index(INDEX, rows, acc=acc.gather(-1, rows.clamp(min=0)).masked_fill(rows < 0, 0),
                        n_system=n_system)
        return keep

    def setup(self, cache, ctx: Context) -> None:
        self._step: list = []  # this decode step's layers, see decode_keep

    def decode_keep(self, layer, ctx: Context):
        """Gathers the layer's entries (its index plus the new token's row, the layer's last)
        and their attention this step; :meth:`end_step` scores and evicts them for every layer
        at once. Work that grows with the text, not with the layer's rows; the scoring (about
        60 small ops, ~0.7 ms on a CPU) runs once per step, not per layer."""
        ix = layer.index(INDEX)
        new = ix["rows"].new_full((*ix["rows"].shape[:-1], 1), layer.num_rows - 1)
        rows = torch.cat([ix["rows"], new], dim=-1)  # [B, (Hkv,) w + 1]
        at = rows.clamp(min=0)
        live = (rows >= 0) & layer.valid.gather(-1, at)  # another policy may have evicted some
        probs = ctx.head_probs if self.per_head else ctx.probs
        self._step.append((layer, rows, live, _like(probs, rows).gather(-1, at)))
        return None

    def end_step(self, ctx: Context) -> dict[int, DropRows]:
        """The step's layers stacked ``[B, L, (Hkv,) w + 1]`` (left-padded to the widest, so that
        the new token's entry stays last), scored and evicted at once; each layer's index and
        drop list are its slice."""
        pending, self._step = self._step, []
        if not pending:
            return {}
        width = max(p[1].shape[-1] for p in pending)

        def stack(ts: list[Tensor], fill) -> Tensor:
            return torch.stack([pad_last(t, width, fill, left=True) for t in ts], 1)

        rows = stack([p[1] for p in pending], -1)
        live = stack([p[2] for p in pending], False)
        probs = stack([p[3] for p in pending], 0.0)
        ixs = [p[0].index(INDEX) for p in pending]
        acc = stack([torch.cat([ix["acc"], ix["acc"].new_zeros((*ix["acc"].shape[:-1], 1))], -1)
                     for ix in ixs], 0.0)
        n_system = torch.stack([ix["n_system"] for ix in ixs], 1)
        acc = self.decode_scores(acc, probs, live)
        keep = evict_lowest(acc, live, *self._window(n_system, ctx))
        kept = rows.masked_fill(~keep | ~live, -1)
        dropped = rows.masked_fill(~(live & ~keep), -1)
        out = {}
        for i, (layer, r, _, _) in enumerate(pending):
            cut = width - r.shape[-1]
            layer.set_index(INDEX, kept[:, i, ..., cut:], acc=acc[:, i, ..., cut:],
                            n_system=ixs[i]["n_system"])
            out[layer.layer_idx] = DropRows(dropped[:, i, ..., cut:])
        return out
