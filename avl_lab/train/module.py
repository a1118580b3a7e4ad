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

__all__ = ["AvlTinyModule", "lr_factor"]


def lr_factor(step: int, warmup: int, progress: float, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``.

    ``progress`` in [0, 1] is the fraction of the training budget used.
    """
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class AvlTinyModule(L.LightningModule):
    """Wraps a ``LlavaForConditionalGeneration``; the loss is on the target tokens only."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.samples_seen = 0

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.samples_seen = (self.global_step + 1) * self.cfg.batch_size
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=self.cfg.batch_size)
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
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, betas=(0.9, 0.98),
        )  # fmt: skip
        return opt  # the learning rate is set before every step (on_train_batch_start)
