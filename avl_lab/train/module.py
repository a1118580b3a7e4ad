"""The ``avl-tiny`` LightningModule: next-token loss on answer tokens, AdamW, warm-up + cosine.

The cosine runs over the training budget: ``max_steps`` or ``max_minutes``, whichever
binds first.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from avl_lab.train.config import TrainConfig
from avl_lab.train.guided import ReadAttention
from avl_lab.train.scene import COLOURS, SHAPES

__all__ = ["GLYPH_SCALE", "SCENE_KEYS", "AvlTinyModule", "lr_factor"]

#: Batch keys of the easy-vqa scene supervision (see :func:`avl_lab.train.data.scene_targets`).
SCENE_KEYS = (
    "scene_labels", "scene_patches", "region_queries", "region_keys", "slot_keys", "slot_match"
)
#: Inverse temperature of the glyph loss's cosine scores.
GLYPH_SCALE = 16.0


#: The auxiliary losses added to the answer-token loss, in this order: name -> the
#: :class:`~avl_lab.train.config.TrainConfig` field that weights it (0 turns it off).
AUX_LOSSES: dict[str, str] = {
    "glyph_loss": "glyph_loss_weight",      # image tokens name their cell's character
    "read_loss": "read_attention_weight",   # the guided head attends to the answer's cell
    "region_loss": "read_attention_weight", # ... and to easy-vqa's shape
    "slot_loss": "slot_attention_weight",   # the slot head compares asked and seen (+ probe)
    "scene_loss": "scene_loss_weight",      # a probe reads colour and kind off the shape
}


def lr_factor(step: int, warmup: int, progress: float, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``.

    ``progress`` in [0, 1] is the fraction of the training budget used.
    """
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class AvlTinyModule(L.LightningModule):
    """Wraps a ``LlavaForConditionalGeneration``; the loss is on the target tokens only."""

    def __init__(
        self, model: torch.nn.Module, cfg: TrainConfig, blank_id: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.blank_id = blank_id  # the glyph label of blank cells (the space token)
        self.samples_seen = 0
        hidden = model.config.text_config.hidden_size
        # the scene loss's linear probe on the image tokens: colour logits, then shape logits
        self.scene_head = torch.nn.Linear(hidden, len(COLOURS) + len(SHAPES))
        # the slot loss's linear probe on the slot layer's output: does the image match?
        self.match_head = torch.nn.Linear(hidden, 1)

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """``loss`` (optimised) = answer-token loss + the weighted auxiliary losses (glyph,
        guided reading, region, slot, scene); each also returned detached (``answer_loss``,
        ``glyph_loss``, ...)."""
        batch = dict(batch)
        glyphs = batch.pop("glyph_labels", None)
        reads = batch.pop("read_targets", None)
        scene = {k: batch.pop(k) for k in SCENE_KEYS if k in batch}
        guided = reads is not None and self.cfg.read_attention_weight > 0 and (reads >= 0).any()
        regions = self.cfg.read_attention_weight > 0 and bool(
            scene and scene["region_queries"].any()
        )
        asked = None  # the answer positions of samples whose question names a colour/shape
        if scene and "slot_keys" in scene and self.cfg.slot_attention_weight > 0:
            asked = scene["region_queries"] & scene["slot_keys"].any(1, keepdim=True)
        captured: list[torch.Tensor] = []
        projector = self.model.model.multi_modal_projector
        layers, c = self.model.model.language_model.layers, self.cfg
        probe = ReadAttention(layers[c.read_attention_layer].self_attn, c.read_attention_head)
        slot_probe = ReadAttention(layers[c.slot_attention_layer].self_attn, c.slot_attention_head)
        slot_out: list[torch.Tensor] = []
        handles = [
            projector.register_forward_hook(lambda _m, _i, out: captured.append(out)),
            layers[c.slot_attention_layer].register_forward_hook(
                lambda _m, _i, out: slot_out.append(out[0] if isinstance(out, tuple) else out)
            ),
        ]
        try:
            with probe, slot_probe:
                result = self.model(**batch)
        finally:
            for handle in handles:
                handle.remove()
        loss = result.loss
        n = self.cfg.batch_size
        self.samples_seen = (self.global_step + 1) * n
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=n)
        out = {"loss": loss, "answer_loss": loss.detach()}
        aux: dict[str, torch.Tensor] = {}  # the active auxiliary losses, in AUX_LOSSES order
        if glyphs is not None and c.glyph_loss_weight > 0 and (glyphs >= 0).any():
            aux["glyph_loss"] = self.glyph_loss(captured[0], glyphs)
        if guided:
            aux["read_loss"] = probe.loss(reads)
        if regions:
            aux["region_loss"] = probe.region_loss(scene["region_queries"], scene["region_keys"])
        if asked is not None and asked.any():
            slot = slot_probe.region_loss(asked, scene["slot_keys"], scene["slot_match"])
            aux["slot_loss"] = slot + self.match_loss(slot_out[0], asked, scene["slot_match"])
        if scene and c.scene_loss_weight > 0 and scene["scene_patches"].any():
            aux["scene_loss"] = self.scene_loss(captured[0], scene["scene_labels"],
                                                scene["scene_patches"])
        for name, value in aux.items():
            self.log(f"train/{name}", value, on_step=True, batch_size=n)
            out["loss"] = out["loss"] + getattr(c, AUX_LOSSES[name]) * value
            out[name] = value.detach()
        return out

    def match_loss(
        self, hidden: torch.Tensor, queries: torch.Tensor, match: torch.Tensor
    ) -> torch.Tensor:
        """Binary cross-entropy of the probe naming, from the slot layer's output ``hidden``
        ``[B, T, H]`` (RMS-normalised) at each query position (``queries[b, q]``), whether the
        sample's image shows the asked colour or shape (``match`` ``[B]``): the slot head's
        finding must be legible to the next layer, not only in its attention."""
        b, q = torch.nonzero(queries, as_tuple=True)
        x = torch.nn.functional.normalize(hidden[b, q], dim=-1) * hidden.shape[-1] ** 0.5
        logits = self.match_head(x).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, match[b].float())

    def scene_loss(
        self, features: torch.Tensor, labels: torch.Tensor, patches: torch.Tensor
    ) -> torch.Tensor:
        """The probe's colour plus shape cross-entropy on each sample's shape region: the mean
        of its image tokens (``patches`` ``[B, N]``, each token RMS-normalised), what a head
        attending uniformly to the shape sees. ``labels`` ``[B, 2]``: colour, shape index."""
        if features.shape[:2] != patches.shape:
            raise ValueError(
                f"scene patches {tuple(patches.shape)} do not match the image tokens "
                f"{tuple(features.shape[:2])}: set scene_loss_weight=0 for this image size"
            )
        rows = patches.any(1)
        weights = patches[rows].float()
        tokens = torch.nn.functional.normalize(features[rows], dim=-1) * features.shape[-1] ** 0.5
        pooled = torch.einsum("bn,bnh->bh", weights / weights.sum(1, keepdim=True), tokens)
        logits = self.scene_head(pooled)  # [B', colours + shapes]
        k, ce = len(COLOURS), torch.nn.functional.cross_entropy
        return ce(logits[:, :k], labels[rows, 0]) + ce(logits[:, k:], labels[rows, 1])

    def glyph_loss(self, features: torch.Tensor, glyphs: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of image tokens ``[B, N, H]`` scored against the input embeddings
        ``[V, H]`` with the cell characters ``glyphs`` ``[B, N]`` (-100: no label): the mean
        over character cells plus ``glyph_blank_weight`` times the mean over blank cells
        (which are most of the grid and easy), or the plain mean without ``blank_id``.

        The scores are cosine similarities times :data:`GLYPH_SCALE`: bounded, so the loss
        cannot be lowered by inflating the features' norm (which would derail the LM)."""
        if features.shape[:2] != glyphs.shape:
            raise ValueError(
                f"glyph labels {tuple(glyphs.shape)} do not match the image tokens "
                f"{tuple(features.shape[:2])}: the grid needs one 10 px patch per cell "
                "(image_size 160, patch_size 10), or set glyph_loss_weight=0"
            )
        embed = torch.nn.functional.normalize(self.model.get_input_embeddings().weight, dim=-1)
        logits = GLYPH_SCALE * torch.nn.functional.normalize(features, dim=-1) @ embed.T
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), glyphs.flatten(), reduction="none"
        )
        labels = glyphs.flatten()
        if self.blank_id is None:
            return ce[labels >= 0].mean()
        chars, blanks = (labels >= 0) & (labels != self.blank_id), labels == self.blank_id
        loss = ce.new_zeros(())
        if chars.any():
            loss = loss + ce[chars].mean()
        if blanks.any():
            loss = loss + self.cfg.glyph_blank_weight * ce[blanks].mean()
        return loss

    def progress(self) -> float:
        """Training progress in [0, 1]: steps done or wall time used, whichever is further.

        With a wall-time budget (``max_minutes``) the cosine decay thus ends on time even
        when the machine is slower than planned.
        """
        done = self.global_step / self.cfg.max_steps
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and self.cfg.max_minutes:
            done = max(done, timer.time_elapsed("train") / (60 * self.cfg.max_minutes))
        return min(1.0, done)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        c = self.cfg
        factor = lr_factor(self.global_step, c.warmup_steps, self.progress(), c.min_lr_ratio)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = c.lr * factor

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, betas=(0.9, 0.98),
        )  # fmt: skip
        return opt  # the learning rate is set before every step (on_train_batch_start)
