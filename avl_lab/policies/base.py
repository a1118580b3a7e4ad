"""The policy API: hook points where a KV-cache policy decides what to keep and what to compute.

A policy is a ``@dataclass`` whose tunables are typed fields validated in ``__post_init__``.
It overrides only the hooks it needs; every hook may return ``None`` for "no opinion".
Masks are ``[B, R]`` booleans over the rows of one layer's cache (see
:class:`Rows`, the engine's view of them).

Hooks, in the order the engine calls them:

- :meth:`Policy.setup` once per ``generate`` call, before prefill (register row state),
- :meth:`Policy.prune_input` once, before layer 0, when :attr:`Policy.prunes_input`: which image
  tokens the language model sees at all (and, optionally, new embeddings for some of them:
  merged tokens), from the projected image embeddings and, with :attr:`Policy.needs_vision`,
  the vision tower's attention (:class:`~avl_lab.engine.vision.VisionFeatures`),
- :meth:`Policy.prune_before` before each layer of :attr:`Policy.prune_before_layers` in
  prefill (in the layer's pre-hook): which tokens that layer and the later ones see,
- :meth:`Policy.prune_tokens` after each layer of :attr:`Policy.prune_layers` in prefill: which
  prompt tokens stay in the hidden states of later layers (prefill pruning, one stage per
  layer; stages shrink the token set in turn),
- :meth:`Policy.prefill_keep` after each layer's prefill attention: which rows to keep,
- per decode step: :meth:`Policy.is_update_step`, then for each layer
  :meth:`Policy.decode_active` (rows to compute over) and, after attention,
  :meth:`Policy.decode_keep` (rows to keep: a mask, or :class:`DropRows`, the few rows to
  evict by number).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from avl_lab.engine.layout import Modality


class Rows(Protocol):
    """What a policy sees of one layer's cache rows (the engine's ``AVLLayer`` is one).

    Every tensor is ``[B, R]`` over the rows held, aligned with each other, or ``[B, Hkv, R]``
    once the KV heads hold different rows (:attr:`per_head`).
    """

    layer_idx: int

    @property
    def valid(self) -> Tensor:
        """bool: the row holds real data (False on padding and filler)."""

    @property
    def mod(self) -> Tensor:
        """int8 :class:`~avl_lab.engine.layout.Modality` codes."""

    @property
    def pos(self) -> Tensor:
        """int64 logical (RoPE) positions."""

    @property
    def tok(self) -> Tensor:
        """int64 column in the padded sequence (prompt, then generated tokens)."""

    def state(self, name: str) -> Tensor:
        """Policy state ``name`` (registered with :meth:`CacheState.register_state`)."""

    def set_state(self, name: str, value: Tensor) -> None:
        """Replace policy state ``name``."""

    @property
    def per_head(self) -> bool:
        """Whether each KV head holds its own rows (then every tensor is ``[B, Hkv, R]``)."""

    def split_heads(self) -> None:
        """Give every KV head its own rows from now on (bookkeeping ``[B, Hkv, R]``)."""

    @property
    def num_rows(self) -> int:
        """Rows held ``R`` (valid and filler); in decode the newest token's row is ``R - 1``."""

    def index(self, name: str) -> dict[str, Tensor] | None:
        """Row index ``name``: ``{"rows": [B, (Hkv,) w] row numbers (-1 = none), values...}``."""

    def set_index(self, name: str, rows: Tensor, **values: Tensor) -> None:
        """Hold row numbers that stay pointed at the same rows as the layer compacts (an
        evicted row's entry turns -1), with ``values`` aligned with the entries."""


class CacheState(Protocol):
    """What :meth:`Policy.setup` sees of the cache."""

    def register_state(self, name: str, default: float | int | bool, dtype: torch.dtype) -> None:
        """Declare a per-row state; new rows get ``default``."""


@dataclass
class Context:
    """What a hook knows about the current layer and step.

    Attributes
    ----------
    layer_idx, num_layers : int
        The decoder layer and the model's layer count.
    step : int
        0 in prefill, t = 1, 2, ... for decode steps.
    update : bool
        Whether this decode step is an update step (some part's :meth:`Policy.is_update_step`).
    n_image, n_prompt, n_text : Tensor
        ``[B]`` image tokens before any pruning, valid prompt tokens, and non-image prompt
        tokens, per cache row.
    max_new_tokens : int
        The generation budget of this call.
    scores : Tensor or None
        Prefill: ``[B, R]`` attention of the last prompt token over the layer's rows,
        averaged over heads (paper Eq. 1); 0 on invalid rows.
    colsum : Tensor or None
        Prefill, when :attr:`Policy.needs_colsum`: ``[B, R]`` attention received by each row,
        summed over all prompt queries and averaged over heads (H2O's accumulated score).
    probs : Tensor or None
        Decode, after attention: ``[B, R]`` head-averaged attention of this step's query over
        the layer's rows (0 on rows that did not take part). With rows per KV head
        (``[B, Hkv, R]`` bookkeeping) it is ``[B, Hkv, R]``, each head's row of a token carrying
        that token's average over all heads.
    head_scores : Tensor or None
        Prefill: ``[B, Hkv, R]`` the last prompt token's attention per KV head (averaged over
        the query heads of each KV head's group).
    head_colsum : Tensor or None
        Prefill, when :attr:`Policy.needs_colsum`: ``[B, Hkv, R]`` the column sums per KV head
        (``colsum`` is their mean over heads).
    head_probs : Tensor or None
        Decode, when :attr:`Policy.needs_head_probs` or the rows are per KV head:
        ``[B, Hkv, R]`` this step's attention per KV head.
    key_norms, value_norms : Tensor or None
        Prefill, when :attr:`Policy.needs_kv_norms`: ``[B, Hkv, R]`` the L2 norm of each row's
        key (RoPE applied, as cached) and value, per KV head.
    token_probs : Tensor or None
        Decode, with rows per KV head, where ``probs`` is set: ``[B, T]`` the average over all
        heads per token column (``T`` the tokens seen; what ``probs`` carries at each head's
        row of a token), for a policy that ranks tokens rather than each head's rows.
    query_probs : callable or None
        Prefill: ``query_probs(rows)`` with ``rows`` a ``[B, R]`` bool mask returns ``[B, m, R]``,
        the head-averaged attention of the queries at those rows (in row order; m = the
        largest count, all-zero padding after a row's own count); ``query_probs(rows,
        per_head=True)`` returns it per KV head, ``[B, Hkv, m, R]``. Computed on demand, fp32.
    inputs_embeds : Tensor or None
        Prefill: ``[B, P, D]`` the text model's input embeddings (projected image features
        and word embeddings), in prompt order (padded columns included).
    prompt_mod : Tensor or None
        Prefill: ``[B, P]`` int8 :class:`~avl_lab.engine.layout.Modality` of every prompt column
        (before any pruning; a row's ``tok`` indexes it).
    hidden : Tensor or None
        In :meth:`Policy.prune_before`: ``[B, R, D]`` the hidden states entering the layer,
        aligned with its rows.
    final_norm : callable or None
        In :meth:`Policy.prune_before`: the text model's final norm (DART's similarity space).
    prev_keys : Tensor or None
        In :meth:`Policy.prune_before`: ``[B, Hkv, R, Dh]`` the previous layer's keys (RoPE
        applied), aligned with the rows.
    vision : VisionFeatures or None
        In :meth:`Policy.prune_input`, when :attr:`Policy.needs_vision`: what the vision tower
        computed for this prompt's images (CLS attention, keys, features, the projector, and
        where each patch sits in the prompt).

    In :meth:`Policy.prune_before`, ``scores`` / ``head_scores`` / ``query_probs`` are those of
    a preview of the layer's own attention over its incoming tokens (its norm, q/k projections
    and RoPE), when the policy sets :attr:`Policy.needs_preview`.
    """

    layer_idx: int
    num_layers: int
    step: int
    update: bool
    n_image: Tensor
    n_prompt: Tensor
    n_text: Tensor
    max_new_tokens: int
    generator: torch.Generator | None = None
    scores: Tensor | None = None
    colsum: Tensor | None = None
    probs: Tensor | None = None
    head_scores: Tensor | None = None
    head_colsum: Tensor | None = None
    head_probs: Tensor | None = None
    token_probs: Tensor | None = None
    key_norms: Tensor | None = None
    value_norms: Tensor | None = None
    query_probs: Callable[[Tensor], Tensor] | None = None
    inputs_embeds: Tensor | None = None
    prompt_mod: Tensor | None = None
    hidden: Tensor | None = None
    final_norm: Callable[[Tensor], Tensor] | None = None
    prev_keys: Tensor | None = None
    vision: Any = None


@dataclass
class DropRows:
    """What :meth:`Policy.decode_keep` may return instead of a keep mask: the rows to evict, by
    number, ``[B, n]`` (or ``[B, Hkv, n]`` per KV head) int64, ``-1`` = none. A policy that
    evicts a few rows of a long layer per step (TextH2O) says which without building a mask as
    wide as the layer."""

    rows: Tensor

    def keep(self, valid: Tensor) -> Tensor:
        """``valid`` with the dropped rows cleared."""
        return clear_rows(valid, self.rows)

    @staticmethod
    def join(drops: list[DropRows]) -> DropRows:
        """One drop list of several (shared lists repeated per head beside per-head ones)."""
        if len(drops) == 1:
            return drops[0]
        h = max((d.rows.shape[1] for d in drops if d.rows.dim() == 3), default=0)
        rows = [d.rows[:, None].expand(-1, h, -1) if h and d.rows.dim() == 2 else d.rows
                for d in drops]
        return DropRows(torch.cat(rows, dim=-1))


def token_mean(per_head: Tensor, layer: Rows, tokens: int) -> Tensor:
    """``[B, tokens]`` a per-(row, KV head) value ``[B, Hkv, R]`` of a layer with rows per KV head,
    averaged over all heads per token column (0 where a head lacks the token: it counts as 0)."""
    valid, H = layer.valid, per_head.shape[1]
    tok = layer.tok.masked_fill(~valid, tokens).flatten(1)  # [B, Hkv * R], a dump column
    out = per_head.new_zeros(valid.shape[0], tokens + 1)
    return (out.scatter_add_(1, tok, per_head.flatten(1)) / H)[:, :tokens]


#: Masks of at least this many elements are counted by :func:`count_rows` as bytes.
BYTE_SUM = 1 << 16


def count_rows(mask: Tensor) -> Tensor:
    """``mask`` ``[B, (Hkv,) R]`` bool: the rows set per row (and KV head). A byte sum (int32)
    from :data:`BYTE_SUM` elements on: a bool ``sum`` first copies the mask to int64 (twice the
    time at a long decode step's widths); below, one op instead of two."""
    if mask.numel() < BYTE_SUM:
        return mask.sum(-1)
    return mask.view(torch.uint8).sum(-1, dtype=torch.int32)


def any_head(mask: Tensor) -> Tensor:
    """``mask`` ``[..., Hkv, R]`` bool (``[B, Hkv, R]``, or layers stacked ``[L, B, Hkv, R]``):
    ``[..., R]`` the rows some KV head holds (from :data:`BYTE_SUM` elements on a byte max over
    the heads: ~10x a bool ``any`` over a strided dim; below, one op instead of three)."""
    if mask.numel() < BYTE_SUM:
        return mask.any(-2)
    return mask.view(torch.uint8).amax(-2).view(torch.bool)


def clear_rows(mask: Tensor, rows: Tensor) -> Tensor:
    """``mask`` ``[B, (Hkv,) R]`` bool with the rows numbered ``rows`` ``[B, (Hkv,) n]`` set
    False (``-1`` entries change nothing); a scatter over the ``n`` entries."""
    if mask.dim() == 3 and rows.dim() == 2:
        rows = rows[:, None].expand(-1, mask.shape[1], -1)
    # min(mask, 0) at each numbered row, min(mask, 1) (unchanged) where the entry is -1
    flags = mask.view(torch.uint8).scatter_reduce(
        -1, rows.clamp(min=0), (rows < 0).to(torch.uint8), reduce="amin")
    return flags.view(torch.bool)


@dataclass
class InputCut:
    """What :meth:`Policy.prune_input` returns when it also writes embeddings.

    Attributes
    ----------
    keep : Tensor
        ``[B, P]`` bool, the prompt columns the language model sees.
    embeds : Tensor
        ``[B, P, D]`` new input embeddings, read where ``replace`` is True.
    replace : Tensor
        ``[B, P]`` bool, kept columns whose embedding is ``embeds`` (merged tokens, or a method's
        own order of the image tokens); the others keep the model's embedding.
    """

    keep: Tensor
    embeds: Tensor
    replace: Tensor


class Policy:
    """Base class of KV-cache policies; the default keeps and computes everything (Full)."""

    name: ClassVar[str] = ""
    needs_colsum: ClassVar[bool] = False
    needs_probs: ClassVar[bool] = False
    needs_head_probs: ClassVar[bool] = False
    needs_preview: ClassVar[bool] = False
    needs_prev_keys: ClassVar[bool] = False
    needs_vision: ClassVar[bool] = False
    needs_kv_norms: ClassVar[bool] = False

    @property
    def prune_layer(self) -> int | None:
        """The one layer after which :meth:`prune_tokens` runs (a single-stage policy's
        shorthand for :attr:`prune_layers`; None: never)."""
        return None

    @property
    def prune_layers(self) -> tuple[int, ...]:
        """The layers after which :meth:`prune_tokens` runs in prefill, each a stage."""
        return () if self.prune_layer is None else (self.prune_layer,)

    @property
    def prune_before_layers(self) -> tuple[int, ...]:
        """The layers (≥ 1) before which :meth:`prune_before` runs in prefill, each a stage."""
        return ()

    def probs_at(self, update: bool) -> bool:
        """Whether a decode step (an update step or not) needs ``ctx.probs`` / ``head_probs``;
        decided once per step. Default: :attr:`needs_probs` or :attr:`needs_head_probs`."""
        return self.needs_probs or self.needs_head_probs

    def token_probs_at(self, update: bool) -> bool:
        """Whether a decode step reads ``ctx.probs`` (the average over all heads, which rows per KV
        head make a per-token scatter to build); decided once per step."""
        return self.needs_probs and self.probs_at(update)

    def end_step(self, ctx: Context) -> dict[int, Tensor | DropRows | list[Tensor | DropRows]]:
        """After the last layer of a decode step (where :meth:`keeps_at`): evictions decided for
        all layers at once, ``{layer_idx: keep mask, DropRows or a list of them}``, applied as
        :meth:`decode_keep`'s (a list: each in turn). A policy that gathers what it needs per layer in
        :meth:`decode_keep` and decides here runs its per-step work once, not per layer."""
        return {}

    def keeps_at(self, update: bool) -> bool:
        """Whether a decode step (an update step or not) calls :meth:`decode_keep`; decided once
        per step, and where False the step keeps every row without asking each layer. Default:
        whenever the class has its own ``decode_keep``."""
        return type(self).decode_keep is not Policy.decode_keep

    @property
    def prunes_input(self) -> bool:
        """Whether :meth:`prune_input` runs (once, before layer 0, in prefill)."""
        return False

    @property
    def prune_positions(self) -> str:
        """``keep``: kept tokens keep their positions; ``renumber``: they are renumbered 0, 1, ...
        and decode positions continue each layer's compact numbering (1-D RoPE families)."""
        return "keep"

    @property
    def prune_drops_earlier(self) -> bool:
        """Whether prefill pruning also evicts the dropped tokens' rows from the layers before
        the stage (False: those layers keep every row they computed, as the official A-VL code
        and the token-pruning methods' code do)."""
        return False

    def setup(self, cache: CacheState, ctx: Context) -> None:
        """Register per-row state with ``cache.register_state``; called once per run."""

    def prune_tokens(self, layer: Rows, ctx: Context) -> Tensor | None:
        """``[B, R]`` prompt rows of a layer of :attr:`prune_layers` that stay in later layers."""
        return None

    def prune_before(self, layer: Rows, ctx: Context) -> Tensor | None:
        """``[B, R]`` the incoming tokens that a layer of :attr:`prune_before_layers` and the later
        layers see (``layer``: the rows it is about to hold; ``ctx.hidden``, ``ctx.prev_keys``,
        and with :attr:`needs_preview` the preview's ``scores``)."""
        return None

    def prune_input(self, layer: Rows, ctx: Context) -> Tensor | InputCut | None:
        """``[B, P]`` the prompt columns the language model sees (``layer``: every prompt
        column; ``ctx.inputs_embeds`` the projected image embeddings and word embeddings;
        ``ctx.vision`` with :attr:`needs_vision`), or an :class:`InputCut` that also writes
        embeddings. Runs before layer 0 when :attr:`prunes_input`."""
        return None

    def prefill_keep(self, layer: Rows, ctx: Context) -> Tensor | None:
        """``[B, R]`` rows to keep after this layer's prefill attention."""
        return None

    def is_update_step(self, step: int) -> bool:
        """Whether decode step ``step`` (1-based) is an update step."""
        return False

    def decode_active(self, layer: Rows, ctx: Context) -> Tensor | None:
        """``[B, R]`` rows that take part in this decode step's attention."""
        return None

    def decode_keep(self, layer: Rows, ctx: Context) -> Tensor | DropRows | None:
        """``[B, R]`` rows to keep after this decode step's attention (``ctx.probs`` set)."""
        return None


# --- helpers shared by policies --------------------------------------------------------------


def is_image(layer: Rows) -> Tensor:
    """``[B, R]`` valid image rows."""
    return (layer.mod == int(Modality.IMAGE)) & layer.valid


def is_text(layer: Rows) -> Tensor:
    """``[B, R]`` valid non-image rows (system, instruction, generated)."""
    return (layer.mod != int(Modality.IMAGE)) & layer.valid


def count_of(percent: float, total: Tensor) -> Tensor:
    """``floor(percent% * total)`` per row, as int64 (``total`` ``[B]``).

    Rounds down, as the official code's ``int((1 - rate) * N)`` does (modeling_llama.py
    l.1758-1759 for S and C, l.1826 for P); computed as ``total * percent / 100`` so that exact multiples stay
    exact (the official float product can land one below them, e.g. rate 0.9 of N=2880).
    """
    return torch.floor(total.to(torch.float64) * percent / 100.0 + 1e-9).clamp(min=0).long()


def heads(t: Tensor, like: Tensor) -> Tensor:
    """``t`` aligned with ``like`` over the rows' head axis: a ``[B, R]`` tensor becomes
    ``[B, 1, R]`` when ``like`` is per KV head (``[B, Hkv, R]``); otherwise unchanged.

    Per-row masks and scores (``[B, R]``) and per-head ones (``[B, Hkv, R]``) mix only through
    this, so that ``[B, R]`` never broadcasts against ``[B, Hkv, R]`` as ``[1, B, R]``.
    """
    return t[:, None] if t.dim() == 2 and like.dim() == 3 else t


def both(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a & b`` for row masks of either shape (None = no opinion)."""
    if a is None or b is None:
        return b if a is None else a
    return heads(a, b) & heads(b, a)


def top_rows(score: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """Mask of the ``k[b]`` highest-``score`` rows among ``candidates``, per row (and per KV
    head when ``candidates`` is ``[B, Hkv, R]``; ``score`` may be ``[B, R]`` then).

    Ties break towards the earlier row (stable), so results are deterministic.
    """
    score, candidates = heads(score, candidates), heads(candidates, score)
    score = score if score.is_floating_point() else score.double()  # ranks are dtype-exact
    masked = score.masked_fill(~candidates, -math.inf)
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices  # [..., R]
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return candidates & (rank < _per_row(k, candidates))


def rows_to_index(rows: Tensor) -> Tensor:
    """``[B, (Hkv,) R]`` bool → ``[B, (Hkv,) n]`` int64 row indices in order, ``-1``-padded,
    n = the largest count."""
    counts = rows.sum(-1)
    n = int(counts.max())
    order = torch.sort((~rows).to(torch.int8), dim=-1, stable=True).indices[..., :n]
    return order.masked_fill(torch.arange(n, device=rows.device) >= counts[..., None], -1)


def _per_row(k: Tensor | int, like: Tensor) -> Tensor:
    """``k`` (``[B]``, ``[B, Hkv]`` or a scalar) broadcastable against ``like`` ``[B, (Hkv,) R]``."""
    if not isinstance(k, Tensor) or not k.dim():  # a number broadcasts as it is
        return k
    return k.view(*k.shape, *([1] * (like.dim() - k.dim())))


def newest_rows(candidates: Tensor, k: Tensor | int) -> Tensor:
    """Mask of the ``k`` most recent (rightmost) ``candidates`` per row (per head)."""
    upto = candidates.cumsum(-1)  # candidates at or before each row
    return candidates & (upto > upto[..., -1:] - _per_row(k, candidates))


def check_percent(name: str, value: float | None, *, allow_none: bool = True) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 < value <= 100``."""
    if value is None:
        if allow_none:
            return
        raise ValueError(f"`{name}` is required (a percentage in (0, 100])")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ValueError(f"`{name}` must be a percentage in (0, 100], got {value!r}")


def oldest_rows(candidates: Tensor, k: Tensor | int) -> Tensor:
    """Mask of the ``k`` oldest (leftmost) ``candidates`` per row (per head)."""
    return candidates & (candidates.long().cumsum(-1) <= _per_row(k, candidates))


def check_budget(ratio: float | None, budget: int | None) -> None:
    """Validate a baseline's cache budget: a ``ratio`` in (0, 1] or a ``budget`` of rows ≥ 1."""
    if ratio is not None and budget is not None:
        raise ValueError("give either `ratio` or `budget`, not both")
    if ratio is not None and (isinstance(ratio, bool) or not 0 < ratio <= 1):
        raise ValueError(f"`ratio` must be a fraction in (0, 1], got {ratio!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"`budget` must be a positive number of rows, got {budget!r}")


def budget_rows(ratio: float | None, budget: int | None, n_rows: Tensor) -> Tensor:
    """``[B]`` rows a baseline may hold: ``floor(ratio * n_rows)`` (at least 1) or the fixed
    ``budget`` (counts from fractions round down, as the official code's ``int()``)."""
    if budget is not None:
        return torch.full_like(n_rows, budget)
    return torch.floor(n_rows.to(torch.float64) * ratio + 1e-9).long().clamp(min=1)


def hash_uniform(pos: Tensor, layer_idx: int, seed: int) -> Tensor:
    """Deterministic pseudo-random numbers in [0, 1) per (logical position, layer, seed).

    Depends only on a row's own position, so a row draws the same numbers alone or in a batch.
    """
    x = pos.long() * 0x9E3779B1 + layer_idx * 0x85EBCA77 + seed * 0xC2B2AE3D + 0x165667B1
    x = x & 0xFFFFFFFF
    for _ in range(3):  # xorshift-multiply mixing (32-bit, kept in int64)
        x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        x = ((x ^ (x >> 12)) * 0x297A2D39) & 0xFFFFFFFF
        x = x ^ (x >> 15)
    return x.to(torch.float64) / 2.0**32
