"""The ``avl-tiny`` LightningModule: next-token loss on answer tokens, AdamW, warm-up + cosine."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from avl_lab.train.config import TrainConfig

__all__ = ["AvlTinyModule", "lr_factor"]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr, betas=(0.9, 0.98),
        )  # fmt: skip
        c = self.cfg
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, c.warmup_steps, c.max_steps, c.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
