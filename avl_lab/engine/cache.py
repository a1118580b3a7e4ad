"""A modality-aware KV cache for stock ``generate``: rows carry bookkeeping and can be evicted.

Each layer stores ``keys``/``values`` ``[B, Hkv, R, D]`` plus per-row tensors ``[B, R]``:

- ``valid``  (bool)  the row holds real data (False for padding and filler),
- ``pos``    (int64) logical (RoPE) position,
- ``tok``    (int64) column index in the padded token sequence (prompt, then generated),
- ``mod``    (int8)  :class:`~avl_lab.engine.layout.Modality`,
- policy state, e.g. ``core`` (VisionTiering's core rows), registered on the cache;
- row indices (:meth:`AVLLayer.set_index`): a policy's ``[B, (Hkv,) w]`` list of row numbers
  (with values aligned to its entries) that keeps pointing at the same rows when the layer
  compacts, so that a policy watching a few rows (TextH2O's text rows) works on those, not on
  every row of the layer, each step.

Rows of one batch may hold different numbers of valid rows: the shorter ones are padded with
invalid filler up to the longest. Eviction (:meth:`AVLLayer.evict`) compacts the storage, so
evicted rows really leave memory: at once in prefill; in decode the evicted rows turn invalid at
once (nothing reads them again) and leave memory at the start of a later step
(:meth:`AVLCache.compact`: one read-back of every layer's kept count per step, a layer compacted
once it can free 16 rows or 1/16 of its rows) and at the end of the call.

Rows per KV head: once a policy keeps different rows for different KV heads (a ``[B, Hkv, R]``
keep mask), the layer's bookkeeping becomes ``[B, Hkv, R]``: slot r of head h is that head's
r-th kept token, compacted per (b, h), padded with invalid filler to the head that keeps most.
Evicted (row, head) pairs leave memory up to that padding.

Storage (token-major for shared rows, head-major for rows packed per KV head):
:mod:`avl_lab.engine.storage`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from avl_lab.engine.storage import alloc, is_head_major, rows_view, take
from avl_lab.policies.base import any_head, clear_rows, count_rows

_META = ("valid", "pos", "tok", "mod")
#: Deferred evictions are compacted once a layer could free this many rows, or this share of
#: its rows (whichever is larger); see :meth:`AVLCache.compact`.
SLACK = 16
SLACK_SHARE = 1 / 16
#: Bookkeeping tensors smaller than this (elements) are concatenated each step, larger ones
#: written into a buffer with room to grow (see :meth:`AVLLayer._append`).
APPEND_COPY = 1 << 16


class RowSource(Protocol):
    """What the cache asks of the current ``generate`` call (the engine's ``Run``): the
    bookkeeping of the rows a layer is about to store, and how many are still to come."""

    step: int

    @property
    def tokens_seen(self) -> int: ...

    def rows_to_come(self) -> int: ...

    def new_rows(self, layer_idx: int, batch: int) -> dict[str, Tensor]: ...


class AVLLayer(DynamicLayer):
    """One decoder layer's cache rows and their bookkeeping."""

    is_croppable = False

    def __init__(self, layer_idx: int, cache: AVLCache) -> None:
        self._k: Tensor | None = None  # [B, capacity, Hkv, D] token-major storage
        self._v: Tensor | None = None
        self._n = 0  # rows in use; the rest is room for the rows still to come
        super().__init__()
        self.layer_idx = layer_idx
        self.cache = cache
        self.rows: dict[str, Tensor] = {}
        self.indices: dict[str, dict[str, Tensor]] = {}  # see set_index
        self._meta: dict[str, tuple[Tensor | None, Tensor]] = {}  # see _append

    # --- storage: token-major buffers with room to grow, head-major views --------------------
    @property
    def keys(self) -> Tensor | None:
        """``[B, Hkv, R, D]`` view of the rows in use."""
        return None if self._k is None else rows_view(self._k, 0, self._n)

    @keys.setter
    def keys(self, value: None) -> None:  # only transformers' reset/init assign (None)
        if value is not None:
            raise TypeError("AVLLayer storage is written through update() and evict()")
        self._k, self._n = None, 0
        self.indices = {}

    @property
    def values(self) -> Tensor | None:
        """``[B, Hkv, R, D]`` view of the rows in use."""
        return None if self._v is None else rows_view(self._v, 0, self._n)

    @values.setter
    def values(self, value: None) -> None:
        if value is not None:
            raise TypeError("AVLLayer storage is written through update() and evict()")
        self._v = None

    def _store(
        self, k_tok: Tensor, v_tok: Tensor, extra: int = 0, head_major: bool | None = None
    ) -> None:
        """Hold rows ``[B, n, Hkv, D]`` (any strides) in fresh buffers with room for the rows
        the run will still append (so a decode step writes one slot instead of copying),
        head-major if asked (``head_major`` None: as the layer holds them now)."""
        B, n, H, D = k_tok.shape
        cap = n + max(extra, self.cache.run.rows_to_come())
        hm = self._head_major() if head_major is None else head_major
        self._k, self._v = alloc(k_tok, B, cap, H, D, hm), alloc(v_tok, B, cap, H, D, hm)
        self._k[:, :n], self._v[:, :n] = k_tok, v_tok
        self._n = n

    def _head_major(self) -> bool:
        """Whether the storage is head-major (each head's slots one run)."""
        return self._k is not None and is_head_major(self._k)

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    # --- bookkeeping views -------------------------------------------------------------------
    @property
    def valid(self) -> Tensor:
        """``[B, R]`` bool: rows holding real data."""
        return self.rows["valid"]

    @property
    def mod(self) -> Tensor:
        """``[B, R]`` int8 modality codes."""
        return self.rows["mod"]

    @property
    def pos(self) -> Tensor:
        """``[B, R]`` logical positions."""
        return self.rows["pos"]

    @property
    def tok(self) -> Tensor:
        """``[B, R]`` column index in the padded sequence."""
        return self.rows["tok"]

    @property
    def per_head(self) -> bool:
        """Whether each KV head holds its own rows (bookkeeping ``[B, Hkv, R]``)."""
        valid = self.rows.get("valid")
        return valid is not None and valid.dim() == 3

    def split_heads(self) -> None:
        """Give every KV head its own rows: bookkeeping ``[B, R]`` → ``[B, Hkv, R]``."""
        if self.per_head:
            return
        H = self._k.shape[2]
        self.rows = {k: _per_head(t, H) for k, t in self.rows.items()}
        self.indices = {name: {k: _per_head(t, H) for k, t in ix.items()}
                        for name, ix in self.indices.items()}

    @property
    def num_rows(self) -> int:
        """Rows in use ``R`` (valid + filler)."""
        return 0 if self._k is None else self._n

    def state(self, name: str) -> Tensor:
        """``[B, R]`` policy state ``name`` (registered with :meth:`AVLCache.register_state`)."""
        return self.rows[name]

    def set_state(self, name: str, value: Tensor) -> None:
        """Replace policy state ``name`` with a ``[B, R]`` tensor (or ``[B, Hkv, R]`` when the
        rows are per KV head; a ``[B, R]`` value then applies to every head)."""
        if name in _META:
            raise ValueError(f"{name!r} is engine bookkeeping, not policy state")
        if self.per_head and value.dim() == 2:  # one value per token: the same for every head
            value = _per_head(value, self._k.shape[2])
        self.rows[name] = value

    def index(self, name: str) -> dict[str, Tensor] | None:
        """Row index ``name`` (see :meth:`set_index`), None until set."""
        return self.indices.get(name)

    def set_index(self, name: str, rows: Tensor, **values: Tensor) -> None:
        """Hold ``rows`` ``[B, w]`` (``[B, Hkv, w]`` with rows per KV head) int64 row numbers,
        ``-1`` = none, and ``values`` aligned with its entries (``[B, (Hkv,) w]`` or ``[B,
        (Hkv,)]``). The layer keeps the numbers pointing at the same rows: a compaction renumbers
        them (an evicted row's entry turns ``-1``), batch reorders and :meth:`split_heads` carry
        them along. ``index(name)["rows"]`` reads them back."""
        if rows.dim() == 3 and not self.per_head:
            self.split_heads()
        ix = {"rows": rows, **values}
        if self.per_head and rows.dim() == 2:  # one entry list for every head
            ix = {k: _per_head(t, self._k.shape[2]) for k, t in ix.items()}
        self.indices[name] = ix

    # --- transformers Cache layer API ----------------------------------------------------------
    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append rows ``[B, Hkv, q, D]``; their bookkeeping comes from the current run."""
        if not self.is_initialized or self.num_rows == 0:
            new_rows = self.cache.new_rows(self.layer_idx, key_states.shape[0])
            self.lazy_initialization(key_states, value_states)
            self._store(key_states.transpose(1, 2), value_states.transpose(1, 2), head_major=False)
            self.rows = dict(new_rows)  # its own dict: evictions replace entries
            self.indices = {}
            return key_states, value_states  # prefill attention reads the fresh head-major states
        q = key_states.shape[2]
        if self._n + q > self._k.shape[1]:  # more rows than planned: grow once
            self._store(self._k[:, : self._n], self._v[:, : self._n], extra=max(q, 16))
        rows_view(self._k, self._n, q).copy_(key_states)
        rows_view(self._v, self._n, q).copy_(value_states)
        self._n += q
        # the new token is a row of every head when the rows are per KV head
        new_rows = self.cache.new_rows(self.layer_idx, key_states.shape[0],
                                       self._k.shape[2] if self.per_head else 0)
        self.rows = {k: self._append(k, t, new_rows[k]) for k, t in self.rows.items()}
        return self.keys, self.values

    def _append(self, name: str, rows: Tensor, new: Tensor) -> Tensor:
        """``rows`` ``[B, (Hkv,) n]`` followed by ``new`` ``[B, (Hkv,) q]``. A tensor left as the
        last step returned it (positions, modalities: most bookkeeping) goes into a buffer with
        the K/V storage's room to grow, so later steps write one column instead of copying it;
        one a policy or an eviction replaces every step is concatenated (one op, its copy), and
        so is a small one (below :data:`APPEND_COPY` elements the copy costs less than the
        buffer's three ops: a slice, a write, a view)."""
        buf, last = self._meta.get(name, (None, None))
        n, q = rows.shape[-1], new.shape[-1]
        if rows is not last or rows.numel() < APPEND_COPY:  # replaced since the last step
            out = torch.cat([rows, new], dim=-1)
            self._meta[name] = (None, out)
            return out
        if buf is None or buf.shape[-1] < n + q:
            buf = rows.new_empty(*rows.shape[:-1], max(n + q, self._k.shape[1]))
            buf[..., :n] = rows
        buf[..., n : n + q] = new
        out = buf[..., : n + q]
        self._meta[name] = (buf, out)
        return out

    def get_seq_length(self) -> int:
        """The logical length (tokens seen), not the rows held: ``generate`` relies on it."""
        return self.cache.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.seen + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "avl_lab caches cannot be cropped (assisted/speculative decoding is not supported)"
        )

    def _map_batch(self, fn: Callable[[Tensor], Tensor]) -> None:
        if self.num_rows == 0:
            return
        self._store(fn(self._k[:, : self._n]), fn(self._v[:, : self._n]))
        self.rows = {k: fn(t) for k, t in self.rows.items()}
        self.indices = {name: {k: fn(t) for k, t in ix.items()} for name, ix in self.indices.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map_batch(lambda t: t[indices, ...])

    # --- the eviction primitive ----------------------------------------------------------------
    def evict(self, keep: Tensor, defer: bool = False) -> Tensor | None:
        """Keep only the rows where ``keep`` is True (and valid); free the rest.

        ``keep`` is ``[B, R]`` (all KV heads alike) or ``[B, Hkv, R]`` (per head: the layer
        then holds rows per head from here on, unless every head keeps the same rows). Kept rows
        stay in order; each batch row (and head) is padded with invalid filler up to the largest
        kept count, and the storage is reallocated at that size.

        ``defer`` (decode steps): the dropped rows only become invalid now — no attention, policy
        or count sees them again — and leave memory in :meth:`AVLCache.compact`, once per step for
        every layer, so that a step reads the kept counts from the device once, not per layer.
        (Rows per KV head are then taken as soon as a keep mask is per head.)

        Returns
        -------
        Tensor or None
            ``[B, m]`` (``[B, Hkv, m]`` per head) the old row index of each new row (None when
            nothing changed or the compaction is deferred), to re-align other per-row tensors
            with ``t.gather(-1, order)``.
        """
        if keep.dim() == 3 and not self.per_head:
            if not defer and bool((keep == keep[:, :1]).all()):  # every head keeps the same rows
                keep = keep[:, 0]
            else:
                self.split_heads()
        if self.per_head and keep.dim() == 2:
            keep = keep[:, None]
        keep = keep & self.valid
        if defer:
            self.rows["valid"] = keep
            self.cache.pending.add(self.layer_idx)
            return None
        counts = count_rows(keep)  # [B] or [B, Hkv]
        if not counts.numel():
            m = union = 0
        elif keep.dim() == 3 and not self._head_major():  # may stay aligned (see compact)
            m, union = torch.stack([counts.max(), count_rows(any_head(keep)).max()]).tolist()
        else:
            m, union = int(counts.max()), None
        if m == self.num_rows and bool(keep.all()):
            return None
        return self.compact(keep, counts, m, union)

    def drop(self, rows: Tensor) -> None:
        """Deferred eviction (as ``evict(..., defer=True)``) of the rows numbered ``rows``
        ``[B, (Hkv,) n]`` (``-1`` = none): a scatter over ``n`` entries, not a mask as wide as
        the layer."""
        if rows.dim() == 3 and not self.per_head:
            self.split_heads()
        self.rows["valid"] = clear_rows(self.valid, rows)
        self.cache.pending.add(self.layer_idx)

    def compact(self, keep: Tensor, counts: Tensor, m: int, union: int | None = None) -> Tensor:
        """Hold only the ``keep`` rows (``counts`` per row / head, at most ``m``), in order.

        With rows per KV head in token-major slots, ``union`` is the most slots any batch row
        keeps for some head (None for a layer packed per head, which stays packed).
        Where that exceeds ``m`` by little (:func:`aligned`: the heads differ in a few rows, as
        TextH2O's per-head text windows beside shared image rows), whole slots are kept or
        freed (*aligned*): a slot some head keeps stays for every head, token-major, and a row a
        head dropped stays there as that head's invalid hole, so slots that held one token for
        every head still do. A decode step then reads the
        active rows of all heads from the same slots, as fast as shared rows (measured 1.00×
        shared at LLaVA-1.5 32k rows, against 1.47× when each head's rows are packed on their
        own). Otherwise each head's rows are packed on their own, head-major."""
        if keep.dim() == 3 and union is not None and aligned(m, union):
            return self._compact_aligned(keep, union)
        # Stable sort puts kept rows first, in their original order.
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[..., :m]
        self._store(take(self._k, order), take(self._v, order), head_major=keep.dim() == 3)
        rows = {k: t.gather(-1, order) for k, t in self.rows.items()}
        rows["valid"] = torch.arange(m, device=counts.device) < counts[..., None]
        self.rows = rows
        if self.indices:
            self._renumber(keep, order)
        return order

    def _compact_aligned(self, keep: Tensor, union: int) -> Tensor:
        """:meth:`compact` of rows per KV head into ``union`` slots shared by the heads."""
        shared = torch.sort((~any_head(keep)).to(torch.int8), dim=-1, stable=True).indices[..., :union]
        self._store(take(self._k, shared), take(self._v, shared), head_major=False)
        order = shared[:, None].expand(-1, keep.shape[1], -1)  # [B, Hkv, union]
        rows = {k: t.gather(-1, order) for k, t in self.rows.items()}
        rows["valid"] = keep.gather(-1, order)  # a head's dropped rows: holes
        self.rows = rows
        if self.indices:
            self._renumber(keep, order)
        return order

    def _renumber(self, keep: Tensor, order: Tensor) -> None:
        """Point every row index at the rows' new slots after a compaction (``-1`` for the
        rows that left)."""
        new = torch.full_like(keep, -1, dtype=torch.long)
        new.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
        new.masked_fill_(~keep, -1)  # slots past a row's own count hold filler
        for ix in self.indices.values():
            rows = ix["rows"]
            ix["rows"] = torch.where(rows >= 0, new.gather(-1, rows.clamp(min=0)), -1)

    def kv_bytes(self) -> int:
        """Bytes physically allocated for this layer's keys and values (room to grow included)."""
        if self._k is None:
            return 0
        return self._k.numel() * self._k.element_size() * 2


def aligned(m: int, union: int) -> bool:
    """Whether rows per KV head, at most ``m`` per head and ``union`` kept by some head, are
    compacted into shared slots: the holes it leaves (at most ``union - m`` per head) stay
    within the slack a deferred eviction may leave allocated (:data:`SLACK` rows or
    :data:`SLACK_SHARE` of the slots)."""
    return union - m <= max(SLACK, int(union * SLACK_SHARE))


def _per_head(t: Tensor, H: int) -> Tensor:
    """A ``[B, ...]`` tensor as ``[B, H, ...]``, every head a copy."""
    return t[:, None].expand(t.shape[0], H, *t.shape[1:]).contiguous()


class AVLCache(Cache):
    """The cache ``avl_lab`` passes to ``model.generate``; one :class:`AVLLayer` per layer."""

    def __init__(self, num_layers: int, run: RowSource) -> None:
        self.run = run
        self.seen = 0  # logical tokens seen (padding included), what generate expects
        self.state_defaults: dict[str, tuple[float | int | bool, torch.dtype]] = {}
        self.pending: set[int] = set()  # layers with deferred evictions (see compact)
        self._step_rows: dict[tuple[int, int, int], dict[str, Tensor]] = {}  # see new_rows
        self._last: dict[int, Tensor] = {}  # see last_row
        super().__init__(layers=[AVLLayer(i, self) for i in range(num_layers)])

    def last_row(self, n: int) -> Tensor:
        """``[n]`` bool, True at the last row only (kept per row count: the layers of a step
        mostly share one)."""
        mask = self._last.get(n)
        if mask is None:
            dev = self.layers[0].device if self.layers[0].is_initialized else None
            mask = self._last[n] = torch.arange(n, device=dev) == n - 1
            if len(self._last) > 64:
                self._last = {n: mask}
        return mask

    def new_rows(self, layer_idx: int, batch: int, heads: int = 0) -> dict[str, Tensor]:
        """The bookkeeping (and policy state defaults) of the rows a layer is about to store
        (``[B, q]``, or ``[B, heads, q]`` for a layer with rows per KV head); a decode step's
        are the same for every layer, built once per step (and per layout)."""
        key = (self.run.tokens_seen, batch, heads)
        if key in self._step_rows:
            return self._step_rows[key]
        if heads:
            rows = {k: t[:, None].expand(t.shape[0], heads, t.shape[-1])
                    for k, t in self.new_rows(layer_idx, batch).items()}
        else:
            rows = self.run.new_rows(layer_idx, batch)
            for name, (value, dtype) in self.state_defaults.items():
                rows[name] = torch.full_like(rows["pos"], value, dtype=dtype)
        if self.run.step > 0:  # a decode step: shared by the layers
            self._step_rows = {k: v for k, v in self._step_rows.items() if k[0] == key[0]}
            self._step_rows[key] = rows
        return rows

    def compact(self, force: bool = False) -> None:
        """Free the rows that deferred evictions (:meth:`AVLLayer.evict`) left invalid, reading
        the layers' kept counts from the device once.

        A layer is compacted once it could free at least :data:`SLACK` rows or a
        :data:`SLACK_SHARE` of its rows (``force``: any), so that a policy that evicts a row or
        two per step (H2O) does not copy the whole layer every step to free them; until then the
        evicted rows are invalid (no attention, policy or count sees them) but still allocated.
        """
        if not self.pending:
            return
        # Layers of one shape are counted together (a step's evictions usually leave them
        # alike): a few ops per step, not five per layer. Read back: the most rows per head
        # and, for rows per KV head in aligned slots, the most slots some head holds.
        groups: dict[tuple, list[AVLLayer]] = {}
        for i in sorted(self.pending):
            layer = self.layers[i]
            may_align = layer.per_head and not layer._head_major()
            groups.setdefault((tuple(layer.valid.shape), may_align), []).append(layer)
        counts, reads = [], []
        for (_, may_align), group in groups.items():
            valid = torch.stack([layer.valid for layer in group])  # [L, B, (Hkv,) R]
            c = count_rows(valid)
            counts.append(c)
            reads.append(c.flatten(1).amax(1))
            if may_align:
                reads.append(count_rows(any_head(valid)).flatten(1).amax(1))
        sizes = iter(torch.cat(reads).tolist())  # the one host sync
        for ((_, may_align), group), c in zip(groups.items(), counts, strict=True):
            most = [int(next(sizes)) for _ in group]
            unions = [int(next(sizes)) for _ in group] if may_align else [None] * len(group)
            for j, (layer, m, u) in enumerate(zip(group, most, unions, strict=True)):
                slots = u if u is not None and aligned(m, u) else m
                free = layer.num_rows - slots
                if free and (force or free >= max(SLACK, int(layer.num_rows * SLACK_SHARE))):
                    layer.compact(layer.valid, c[j], m, u)
                    self.pending.discard(layer.layer_idx)
                elif not free:
                    self.pending.discard(layer.layer_idx)

    def register_state(self, name: str, default: float | int | bool, dtype: torch.dtype) -> None:
        """Declare a per-row policy state; new rows get ``default``."""
        if name in _META:
            raise ValueError(f"state name {name!r} is reserved for engine bookkeeping")
        self.state_defaults[name] = (default, dtype)
        for layer in self.layers:
            if layer.num_rows:
                layer.rows.setdefault(name, torch.full_like(layer.pos, default, dtype=dtype))

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        out = self.layers[layer_idx].update(key_states, value_states)
        if layer_idx == len(self.layers) - 1:
            self.seen = self.run.tokens_seen
        return out

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen + query_length, 0

    def kv_bytes(self) -> int:
        """Bytes physically held by all layers' keys and values."""
        return sum(layer.kv_bytes() for layer in self.layers)
