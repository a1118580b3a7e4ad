"""``StepProgress``: one tqdm bar over optimiser steps for ``python -m avl_lab train``.

Lightning's own bar counts batches per epoch, and the training stream is endless (its total is
``inf``), so the bar here counts ``trainer.global_step`` up to ``max_steps`` instead, starting
where a resumed run left off, with the loss as its postfix. As the evaluation and sweep bars,
it is drawn whether or not stderr is a terminal (``progress=false`` hides it); off a terminal
it redraws at most once every ``log_interval_s`` so that a log file is not flooded.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from tqdm import tqdm

__all__ = ["StepProgress"]


class StepProgress(L.Callback):
    """A tqdm bar over optimiser steps (``global_step / max_steps``) with the current loss."""

    def __init__(self, tty_interval_s: float = 0.5, log_interval_s: float = 30.0) -> None:
        self.interval = tty_interval_s if sys.stderr.isatty() else log_interval_s
        self.bar: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, desc="train",
                        unit="step", dynamic_ncols=True, mininterval=self.interval,
                        file=sys.stderr)  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        self.bar.update(trainer.global_step - self.bar.n)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
