"""The state of one ``generate`` call under a policy: layout, step, prefill pruning, stats."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from avl_lab.engine.cache import AVLCache
from avl_lab.engine.layout import Layout, Modality
from avl_lab.engine.stages import PruneState, TokenRows, make_stage
from avl_lab.engine.stats import CacheStats, StatsRecorder
from avl_lab.policies.base import Context, Policy


@dataclass
class Timing:
    """Wall time of one ``generate`` call: prefill (to the first decode step) and decode."""

    start: float = 0.0
    first_decode: float | None = None
    end: float = 0.0
    decode_steps: int = 0

    @property
    def prefill_s(self) -> float:
        return (self.first_decode if self.first_decode is not None else self.end) - self.start

    @property
    def decode_s(self) -> float:
        return 0.0 if self.first_decode is None else self.end - self.first_decode


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class Trace:
    """Which token columns each layer used, for the masked reference runner in tests."""

    prefill: dict[int, Tensor] = field(default_factory=dict)  # layer -> [B, m] columns, -1 filler
    inputs_embeds: Tensor | None = None  # [B, P, D] when a pre-LLM policy wrote embeddings
    decode: list[dict[int, Tensor]] = field(default_factory=list)  # step-1 -> layer -> [B, n]


class Run:
    """Everything one ``generate`` call needs; reached from the attention modules."""

    def __init__(
        self,
        policy: Policy,
        layout: Layout,
        num_layers: int,
        max_new_tokens: int,
        record: bool = False,
        seed: int = 0,
    ) -> None:
        self.policy = policy
        self.base_layout = layout
        self.layout = layout
        self.num_layers = num_layers
        self.max_new_tokens = max_new_tokens
        self.cache = AVLCache(num_layers, self)
        self.step = 0  # 0 = prefill, then 1, 2, ...
        self.update = False
        self.prunes: list[PruneState] = []  # the stages of prefill pruning, in layer order
        self.extras: dict = {}  # per-forward extras a family captures for prefill pruning
        self.inputs_embeds: Tensor | None = None  # prefill: the text model's input embeddings
        self.last_keys: Tensor | None = None  # prefill: the keys of the last layer run
        self.preview: dict | None = None  # set while a layer's attention is previewed
        self.want_probs = False  # this decode step needs the attention probabilities
        self.token_probs = False  # ... and their average over all heads (ctx.probs)
        self.keep_now = False  # ... and calls the policy's decode_keep (Policy.keeps_at)
        self.windows: dict[int, int] = {}  # sliding layers' windows, as their attention says
        self.full_now: Tensor | None = None  # this decode step's full_rows()
        self.prunes_input = policy.prunes_input  # a cut before layer 0 (pre-LLM methods)
        self.before_layers = frozenset(policy.prune_before_layers) | (
            {0} if self.prunes_input else set())  # read by every pre-hook
        self.vision = None  # the session's VisionTap, when the policy reads the vision tower
        self.image_info = None  # what the tap needs to place patches (LLaVA-NeXT's image_sizes)
        self.renumber = policy.prune_positions == "renumber"  # decode pre-hooks move positions
        self.decode_stats = StatsRecorder(num_layers)
        self.prefill_stats = StatsRecorder(num_layers)
        self.trace = Trace() if record else None
        self.seed = seed
        self.generator: torch.Generator | None = None
        self._counts(layout)
        self.timing = Timing()

    def begin(self) -> None:
        self.timing.start = _now(self.base_layout.pos.device)

    def finish(self) -> None:
        self.cache.compact(force=True)  # every evicted row leaves memory by the end of the call
        self.timing.end = _now(self.base_layout.pos.device)
        self.timing.decode_steps = self.step

    # --- the step clock: called by the text model's pre-hook, once per forward ---------------
    def begin_forward(self, batch: int, q_len: int) -> None:
        """Start one forward of the text model: prefill (step 0) or decode step ``t``.

        Prefill expands the layout to the (beam-expanded) ``batch`` and calls
        ``policy.setup``. A decode forward advances the step, sets the update flag
        (``policy.is_update_step``) and, on the first one, ends the prefill timer — all
        before any decoder layer runs.
        """
        if self.cache.seen == 0:
            self._start(batch)
            return
        if q_len != 1:
            raise NotImplementedError("avl_lab decodes one token per step (got a multi-token step)")
        if self.step == 0:
            self.timing.first_decode = _now(self.layout.pos.device)
        self.cache.compact()  # the previous steps' evictions, all layers at once
        self.step += 1
        self.update = self.policy.is_update_step(self.step)
        # What every layer of this step needs, decided once per step:
        self.want_probs = self.policy.probs_at(self.update)
        self.token_probs = self.want_probs and self.policy.token_probs_at(self.update)
        self.keep_now = self.policy.keeps_at(self.update)
        self.full_now = self.full_rows()
        if self.trace is not None:
            self.trace.decode.append({})

    # --- called by the cache -------------------------------------------------------------------
    def rows_to_come(self) -> int:
        """Decode rows a layer will still append in this call (one per remaining decode step)."""
        return max(0, self.max_new_tokens - 1 - self.step)

    @property
    def tokens_seen(self) -> int:
        return self.layout.length + self.step

    def new_rows(self, layer_idx: int, batch: int) -> dict[str, Tensor]:
        """Bookkeeping of the rows layer ``layer_idx`` is about to store (the whole prompt in
        prefill, one row per sample in a decode step)."""
        if self.step == 0:
            return self._prompt_rows(layer_idx)
        lay = self.layout
        dev = lay.pos.device
        return {
            "valid": torch.ones(batch, 1, dtype=torch.bool, device=dev),
            "pos": (self.n_prompt + self.step - 1)[:, None],
            "tok": torch.full((batch, 1), lay.length + self.step - 1, device=dev),
            "mod": torch.full((batch, 1), int(Modality.GENERATED), dtype=torch.int8, device=dev),
        }

    def _start(self, batch: int) -> None:
        """First prefill call: expand the layout to the (beam-expanded) batch, set up the policy."""
        base = self.base_layout.batch_size
        if batch % base:
            raise ValueError(f"batch {batch} is not a multiple of the prompt batch {base}")
        self.layout = self.base_layout.repeat_interleave(batch // base)
        self._counts(self.layout)
        self.generator = torch.Generator(device=self.layout.pos.device).manual_seed(self.seed)
        self.policy.setup(self.cache, self.context(0))

    def _counts(self, layout: Layout) -> None:
        """Per-row prompt counts, computed once: hooks read them every layer of every step."""
        self.n_image, self.n_prompt = layout.n_image, layout.n_prompt
        self.n_text = self.n_prompt - self.n_image

    def _prompt_rows(self, layer_idx: int) -> dict[str, Tensor]:
        lay = self.layout
        tok = torch.arange(lay.length, device=lay.pos.device).expand(lay.batch_size, -1)
        rows = {"valid": lay.valid, "pos": lay.pos, "tok": tok, "mod": lay.modality}
        stage = self.stage(layer_idx)
        if stage is not None:
            rows = {k: t.gather(1, stage.index) for k, t in rows.items()}
            rows["valid"] = rows["valid"] & stage.valid
            rows["mod"] = rows["mod"].masked_fill(~rows["valid"], int(Modality.PAD))
        return rows

    # --- prefill pruning stages ----------------------------------------------------------------
    def stage(self, layer_idx: int) -> PruneState | None:
        """The stage in effect at decoder layer ``layer_idx`` (None: every prompt token)."""
        return next((s for s in reversed(self.prunes) if s.first <= layer_idx), None)

    def add_stage(self, keep_rows: Tensor, tok: Tensor, first: int) -> PruneState:
        """A new stage keeping the rows ``keep_rows`` ``[B, R]`` (prompt columns ``tok``) from
        layer ``first`` on."""
        stage = make_stage(self.layout, self.stage(first - 1), keep_rows, tok, first,
                           self.policy.prune_positions)
        self.prunes.append(stage)
        return stage

    def token_rows(self, layer_idx: int) -> TokenRows:
        """The rows layer ``layer_idx`` is about to hold in prefill, for ``prune_before``."""
        return TokenRows(layer_idx=layer_idx, **self._prompt_rows(layer_idx))

    # --- called by the attention function ------------------------------------------------------
    def context(self, layer_idx: int) -> Context:
        return Context(
            layer_idx=layer_idx,
            num_layers=self.num_layers,
            step=self.step,
            update=self.update,
            n_image=self.n_image,
            n_prompt=self.n_prompt,
            n_text=self.n_text,
            max_new_tokens=self.max_new_tokens,
            generator=self.generator,
            inputs_embeds=self.inputs_embeds if self.step == 0 else None,
            prompt_mod=self.layout.modality if self.step == 0 else None,
        )

    def full_rows(self) -> Tensor:
        """``[B]`` rows the Full policy would hold at the current step."""
        return self.n_prompt + self.step

    def stats(self, steps: Tensor | None = None) -> CacheStats:
        """Cache accounting over the decode steps, per row only those before its end of sequence
        (``steps`` ``[B]``, see ``stats.steps_until_eos``); the post-prefill state without any."""
        n = self.base_layout.batch_size
        return self.decode_stats.finalize(n, steps, after_prefill=self.prefill_stats)
