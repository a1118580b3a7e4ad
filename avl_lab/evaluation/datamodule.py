"""The evaluation data: a dataset split, minus samples already done, sharded over processes."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from datasets import Image
from torch.utils.data import DataLoader, Dataset

from avl_lab import data
from avl_lab.evaluation.config import DataConfig

log = logging.getLogger(__name__)


class _Rows(Dataset):
    def __init__(self, ds, indices: list[int]) -> None:
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.ds[self.indices[i]]


class EvalDataModule(L.LightningDataModule):
    """Rows of ``cfg`` not yet in ``done``; each process takes every ``world``-th row."""

    def __init__(self, cfg: DataConfig, batch_size: int, done: set[str]) -> None:
        super().__init__()
        self.cfg, self.batch_size, self.done = cfg, batch_size, done
        self.rows: _Rows | None = None
        self.metric = data.metric_for(cfg.name)
        self._ds = None

    def load(self):
        """The rows (read once), images left encoded: they are decoded safely, row by row."""
        if self._ds is None:
            kwargs = {"path": self.cfg.path} if self.cfg.path else {}
            ds = data.load(self.cfg.name, self.cfg.split, limit=self.cfg.limit, **kwargs)
            self._ds = ds.cast_column("image", Image(decode=False))
        return self._ds

    def setup(self, stage: str | None = None) -> None:
        ds = self.load()
        todo = [i for i, row_id in enumerate(ds["id"]) if row_id not in self.done]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.done:
            log.info("resuming: %d samples done, %d to go", len(self.done), len(todo))
        self.rows = _Rows(ds, todo[rank::world])

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=self.batch_size, shuffle=False,
                          collate_fn=list, num_workers=0)
