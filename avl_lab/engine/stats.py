"""Cache accounting: stored and used rows as fractions of what the Full policy would hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from avl_lab.policies.base import count_rows


@dataclass
class CacheStats:
    """Cache accounting of one ``generate`` call (README "Cache accounting"; docs/ARCHITECTURE.md).

    For layer l and decode step t: full = prompt tokens + t, stored = valid rows held,
    used = rows that took part in the step's attention. Fractions are means over l and over
    the steps a row took part in: a row stops counting once it has emitted its end-of-sequence
    token, so the numbers of a sample do not depend on the rows it was batched with.

    Attributes
    ----------
    stored, used : float
        Means over samples of the per-sample fractions.
    per_sample_stored, per_sample_used : list[float]
        One value per input sample (beams / returned sequences of a sample averaged).
    per_layer_stored, per_layer_used : list[float]
        Means over samples (of their steps), per layer.
    steps : int
        Decode steps run (0: only the state after prefill was measured).
    """

    stored: float = 1.0
    used: float = 1.0
    per_sample_stored: list[float] = field(default_factory=list)
    per_sample_used: list[float] = field(default_factory=list)
    per_layer_stored: list[float] = field(default_factory=list)
    per_layer_used: list[float] = field(default_factory=list)
    steps: int = 0


class StatsRecorder:
    """Keeps stored/full and used/full per (layer, step, batch row) on the device, no syncs."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.stored: list[list[Tensor]] = [[] for _ in range(num_layers)]  # layer -> steps of [B]
        self.used: list[list[Tensor]] = [[] for _ in range(num_layers)]
        self.full: list[list[Tensor]] = [[] for _ in range(num_layers)]
        self._rows: list[tuple[int, Tensor, Tensor, Tensor]] = []  # a step's masks, see record_rows

    @property
    def counts(self) -> list[int]:
        """Steps recorded per layer."""
        self.flush()
        return [len(s) for s in self.stored]

    def record(self, layer_idx: int, stored: Tensor, used: Tensor, full: Tensor) -> None:
        """Add one step of layer ``layer_idx``: ``stored``/``used``/``full`` are ``[B]`` counts
        (``stored``/``used`` ``[B, Hkv]`` with rows per KV head: their mean over heads counts);
        kept as they are: the ratios are formed once, in :meth:`ratios`."""
        self.stored[layer_idx].append(stored)
        self.used[layer_idx].append(used)
        self.full[layer_idx].append(full)

    def record_rows(self, layer_idx: int, stored: Tensor, used: Tensor, full: Tensor) -> None:
        """:meth:`record` of row masks ``[B, (Hkv,) R]`` (``used`` may be ``stored`` itself),
        counted at the step's end (:meth:`flush`): the layers of one shape in one count, not
        one or two per layer."""
        self._rows.append((layer_idx, stored, used, full))

    def flush(self) -> None:
        """Count the masks :meth:`record_rows` queued (at the end of every decode step, so a
        step's masks are held for one step only)."""
        pending, self._rows = self._rows, []
        groups: dict[tuple, list[tuple[int, Tensor, Tensor, Tensor]]] = {}
        for item in pending:
            groups.setdefault((tuple(item[1].shape), item[2] is item[1]), []).append(item)
        for (_, same), items in groups.items():
            stored = count_rows(torch.stack([item[1] for item in items])).unbind(0)
            used = stored if same else count_rows(torch.stack([item[2] for item in items])).unbind(0)
            for (layer_idx, _, _, full), s, u in zip(items, stored, used, strict=True):
                self.record(layer_idx, s, u, full)

    def ratios(self) -> tuple[Tensor, Tensor]:
        """``([L, T, B] stored/full, [L, T, B] used/full)``."""
        self.flush()
        def stack(xs: list[list[Tensor]]) -> Tensor:  # per-head counts: the mean over heads
            return torch.stack([_steps(x) for x in xs])

        full = stack(self.full)
        return stack(self.stored) / full, stack(self.used) / full

    def finalize(
        self, num_samples: int, steps: Tensor | None = None, after_prefill: StatsRecorder | None = None
    ) -> CacheStats:
        """Average over the steps each row took part in, then over layers, the rows of each
        sample, and samples.

        Parameters
        ----------
        num_samples : int
            Input samples; the batch rows are ``num_samples`` groups of beams / sequences.
        steps : Tensor, optional
            ``[B]`` decode steps each row took part in (until its end-of-sequence token);
            None: every recorded step.
        after_prefill : StatsRecorder, optional
            The post-prefill state, used for rows that took part in no decode step.
        """
        if not self.counts[0]:
            return CacheStats() if after_prefill is None else after_prefill.finalize(num_samples)
        stored, used = self.ratios()  # [L, T, B]
        T, B = stored.shape[1:]
        if steps is None:
            steps = torch.full((B,), T, device=stored.device)
        steps = steps.to(stored.device).clamp(max=T)
        mask = (torch.arange(T, device=stored.device)[:, None] < steps[None, :]).to(stored.dtype)
        n = mask.sum(0).clamp(min=1)
        s_layer, u_layer = (stored * mask).sum(1) / n, (used * mask).sum(1) / n  # [L, B]
        if after_prefill is not None and bool((steps == 0).any()):
            p_s, p_u = (x[:, 0] for x in after_prefill.ratios())  # [L, B] after prefill
            s_layer = torch.where(steps == 0, p_s, s_layer)
            u_layer = torch.where(steps == 0, p_u, u_layer)
        groups = B // num_samples  # beams / returned sequences per sample
        s_rows = s_layer.view(self.num_layers, num_samples, groups).mean(dim=(0, 2))
        u_rows = u_layer.view(self.num_layers, num_samples, groups).mean(dim=(0, 2))
        return CacheStats(
            stored=float(s_rows.mean()),
            used=float(u_rows.mean()),
            per_sample_stored=s_rows.tolist(),
            per_sample_used=u_rows.tolist(),
            per_layer_stored=s_layer.mean(1).tolist(),
            per_layer_used=u_layer.mean(1).tolist(),
            steps=T,
        )


def steps_until_eos(
    out: Any, prompt_len: int, steps_run: int, kwargs: Mapping[str, Any], generation_config: Any
) -> Tensor | None:
    """``[B]`` decode steps each row of a ``generate`` output took part in.

    A row whose new tokens hold an end-of-sequence token at index k (0-based) was finished by
    step k (step t processes new token t-1); the batch may have run on, feeding it padding,
    which must not count. Returns None (every step counts) under beam search, whose output rows
    are not the cache rows, or when no end-of-sequence token is set.
    """
    gc = kwargs.get("generation_config") or generation_config
    beams = kwargs.get("num_beams", getattr(gc, "num_beams", 1)) or 1
    eos = kwargs.get("eos_token_id", getattr(gc, "eos_token_id", None))
    seqs = getattr(out, "sequences", out)
    if beams > 1 or eos is None or not isinstance(seqs, Tensor):
        return None
    new = seqs[:, prompt_len:]
    is_eos = torch.isin(new, torch.as_tensor(eos, device=new.device).reshape(-1))
    first = torch.where(is_eos.any(1), is_eos.to(torch.int8).argmax(1), steps_run)
    return first.clamp(max=steps_run)


def _steps(counts: list[Tensor]) -> Tensor:
    """``[T, B]`` float64 one layer's counts over the steps (``[B]``, or ``[B, Hkv]`` averaged over
    the heads): three ops for the layer where every step has the same shape, else per step."""
    if all(c.shape == counts[0].shape for c in counts):
        t = torch.stack(counts).to(torch.float64)
        return t if t.dim() == 2 else t.mean(-1)
    return torch.stack([c.to(torch.float64) if c.dim() == 1 else c.to(torch.float64).mean(-1)
                        for c in counts])
