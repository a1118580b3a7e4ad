"""Training callbacks: greedy-generation evaluation, the metrics CSV and the curve PNG."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

from avl_lab import data
from avl_lab.evaluation.plotting import pyplot, save
from avl_lab.evaluation.prompting import prompt_and_generate
from avl_lab.metrics.cider import cider
from avl_lab.metrics.registry import score_rows
from avl_lab.train.config import TASKS

__all__ = [
    "CurveLogger",
    "GenerationEval",
    "eval_rows",
    "generate_answers",
    "plot_curve",
    "score_task",
]

log = logging.getLogger(__name__)


def eval_rows(n: int, tasks: tuple[str, ...] | list[str] = TASKS) -> dict[str, list[dict[str, Any]]]:
    """The first ``n`` eval rows of every task in ``tasks`` (a fixed set)."""
    kw = {t: {"cache": False} for t in tasks if t.startswith("synth-")}
    return {t: list(data.load(t, "eval", limit=n, **kw.get(t, {}))) for t in tasks}


def generate_answers(
    model: Any, processor: Any, rows: list[dict[str, Any]], max_new_tokens: int, batch: int = 8
) -> list[str]:
    """Greedy answers (left padding, chat template), decoded and stripped."""
    was_training = model.training
    model.eval()
    processor.tokenizer.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        out += prompt_and_generate(processor, [r["image"] for r in chunk],
                                   [r["prompt"] for r in chunk], model.generate,
                                   max_new_tokens=max_new_tokens).texts
    model.train(was_training)
    return out


def score_task(rows: list[dict[str, Any]], preds: list[str]) -> float:
    """The task's metric over ``rows`` (corpus CIDEr for captions, else the mean)."""
    metric = rows[0]["metric"]
    if metric == "cider":
        return cider(dict(enumerate(preds)), {i: r["answers"] for i, r in enumerate(rows)})
    scores = score_rows(metric, preds, rows)
    return float(sum(scores) / len(scores))


class CurveLogger(L.Callback):
    """Appends ``step, samples, loss, lr, elapsed`` rows (and eval scores) to ``metrics.csv``."""

    def __init__(self, out_dir: Path, every: int) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.every = every
        self.start = time.monotonic()

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "samples", "kind", "name", "value"])
            if new:
                w.writeheader()
            w.writerows(
                {"step": row["step"], "samples": row["samples"], "kind": row["kind"],
                 "name": k, "value": v}
                for k, v in row["values"].items()
            )  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        outputs = outputs if isinstance(outputs, dict) else {"loss": outputs}
        values = {"loss": float(outputs.get("answer_loss", outputs["loss"]))}
        for key in ("glyph_loss", "read_loss", "region_loss", "slot_loss", "scene_loss"):
            if key in outputs:
                values[key] = float(outputs[key])
        values["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        values["elapsed_s"] = time.monotonic() - self.start
        self.write({"step": step, "samples": step * pl_module.cfg.batch_size, "kind": "train",
                    "values": values})  # fmt: skip


class GenerationEval(L.Callback):
    """Greedy generation on a fixed eval set every ``every`` steps; scores go to the CSV."""

    def __init__(self, logger: CurveLogger, n: int, every: int, max_new_tokens: int) -> None:
        self.logger = logger
        self.n = n
        self.every = every
        self.max_new_tokens = max_new_tokens
        self._rows: dict[str, list[dict[str, Any]]] | None = None

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        self._rows = self._rows or eval_rows(self.n, pl_module.cfg.tasks)
        processor = trainer.datamodule.processor
        scores = {}
        for task, rows in self._rows.items():
            preds = generate_answers(pl_module.model, processor, rows, self.max_new_tokens)
            scores[task] = score_task(rows, preds)
            log.info("step %d %s %.3f e.g. %r -> %r", trainer.global_step, task, scores[task],
                     rows[0]["answers"][0], preds[0])  # fmt: skip
        step = trainer.global_step
        self.logger.write({"step": step, "samples": step * pl_module.cfg.batch_size,
                           "kind": "eval", "values": scores})  # fmt: skip
        return scores

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self.run(trainer, pl_module)


def plot_curve(csv_path: Path, png_path: Path) -> None:
    """Loss and eval score vs samples seen, as a two-panel seaborn PNG."""
    import pandas as pd

    plt, sns = pyplot()
    df = pd.read_csv(csv_path)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    tr = df[(df.kind == "train") & (df.name == "loss")].sort_values("samples")
    tr = tr.assign(smoothed=tr.value.rolling(20, min_periods=1).mean())
    sns.lineplot(data=tr, x="samples", y="value", ax=a, alpha=0.3, label="loss")
    sns.lineplot(data=tr, x="samples", y="smoothed", ax=a, label="loss (smoothed)")
    a.set(yscale="log", xlabel="training samples", ylabel="answer-token loss", title="loss")
    ev = df[df.kind == "eval"]
    if len(ev):
        sns.lineplot(data=ev, x="samples", y="value", hue="name", marker="o", ax=b)
    b.set(xlabel="training samples", ylabel="score (CIDEr x1 for captions)",
          title="greedy eval (fixed eval samples)")  # fmt: skip
    save(fig, png_path, dpi=110)
