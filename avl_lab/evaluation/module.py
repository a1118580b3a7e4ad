"""The evaluation LightningModule: batched generation under a policy, scored per sample."""

from __future__ import annotations

import time
import uuid
import warnings
from typing import Any

import lightning as L
import torch

from avl_lab.data import safe_image
from avl_lab.engine.session import attach
from avl_lab.evaluation.config import EvalConfig
from avl_lab.evaluation.prompting import encode, prompt_and_generate
from avl_lab.evaluation.records import RecordLog
from avl_lab.metrics import CacheAccounting, ScoreMean, build_metric, score_rows
from avl_lab.metrics.registry import SAMPLE_SCORERS

#: The skip reason of a row whose image does not decode (the only one before reasons were logged).
UNREADABLE = "unreadable image"
#: The skip reason of a row without reference answers.
NO_ANSWERS = "no reference answers"


def context_length(model) -> int | None:
    """The positions the language model was built for (``max_position_embeddings``), if known."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


class EvalModule(L.LightningModule):
    """``test_step`` generates answers for a batch of rows and appends one record per sample."""

    def __init__(self, model, processor, cfg: EvalConfig, metric: str, samples: RecordLog,
                 skipped: RecordLog) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.cfg = cfg
        self.metric_name = metric
        self.samples = samples
        self.skipped_log = skipped
        # per-sample metrics stream the records' own scores; CIDEr needs the corpus
        self.per_sample = metric in SAMPLE_SCORERS
        self.task_metric = ScoreMean() if self.per_sample else build_metric(metric)
        self.cache_metric = CacheAccounting()

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        rows, images = self._decode_images(batch)
        rows, images, inputs = self._fit_context(rows, images)
        if not rows:
            return
        gen = self.cfg.generation
        start = time.perf_counter()
        with attach(self.model, dict(self.cfg.policy), seed=self.cfg.seed) as session:
            out = prompt_and_generate(self.processor, images, [r["prompt"] for r in rows],
                                      session.generate, device=self.device, inputs=inputs,
                                      max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams)
        latency = time.perf_counter() - start
        new, preds = out.new, out.texts
        stats, timing = session.stats, session.last_run.timing
        pad = self.processor.tokenizer.pad_token_id
        batch_id = uuid.uuid4().hex[:12]
        scores = score_rows(self.metric_name, preds, rows)  # with each row's meta
        records = []
        for i, (row, pred) in enumerate(zip(rows, preds, strict=True)):
            records.append({
                "id": row["id"], "prompt": row["prompt"], "prediction": pred,
                "references": list(row["answers"]),
                "score": scores[i],
                "stored": stats.per_sample_stored[i], "used": stats.per_sample_used[i],
                "latency_s": latency, "prefill_s": timing.prefill_s, "decode_s": timing.decode_s,
                "new_tokens": int((new[i] != pad).sum()) if pad is not None else new.shape[1],
                "batch": batch_id, "batch_size": len(rows),
            })
        self.samples.append(records)
        if self.per_sample:
            self.task_metric.update(scores)
        else:
            self.task_metric.update(preds, [list(r["answers"]) for r in rows])
        self.cache_metric.update(torch.tensor(stats.per_sample_stored), torch.tensor(stats.per_sample_used))
        self.log("score", self.task_metric, prog_bar=True, batch_size=len(rows))

    def _fit_context(self, rows, images):
        """Encode the batch; a row whose prompt plus ``max_new_tokens`` exceeds the model's
        context (``max_position_embeddings``) is skipped (warned, logged in skipped.jsonl with
        the reason) and the rest re-encoded without it."""
        if not rows:
            return rows, images, None
        inputs = encode(self.processor, images, [r["prompt"] for r in rows])
        limit = context_length(self.model)
        new = self.cfg.generation.max_new_tokens
        lengths = inputs["attention_mask"].sum(1).tolist()
        over = [i for i, n in enumerate(lengths) if limit is not None and n + new > limit]
        if not over:
            return rows, images, inputs
        skipped = []
        for i in over:
            reason = (f"prompt of {lengths[i]} tokens + max_new_tokens {new} exceeds the model's "
                      f"context of {limit} positions")
            warnings.warn(f"row {rows[i]['id']}: {reason}; skipped", stacklevel=2)
            skipped.append({"id": rows[i]["id"], "reason": reason})
        self.skipped_log.append(skipped)
        keep = [i for i in range(len(rows)) if i not in over]
        rows, images = [rows[i] for i in keep], [images[i] for i in keep]
        return rows, images, (encode(self.processor, images, [r["prompt"] for r in rows]) if rows else None)

    def _decode_images(self, batch):
        """Decode each row's image; corrupt ones are skipped (warned) and logged in skipped.jsonl."""
        rows, images, skipped = [], [], []
        for row in batch:
            if not len(row["answers"]):  # nothing to score it against
                warnings.warn(f"row {row['id']}: {NO_ANSWERS}; skipped", stacklevel=2)
                skipped.append({"id": row["id"], "reason": NO_ANSWERS})
                continue
            image = safe_image(row["image"], row_id=row["id"])
            if image is None:
                skipped.append({"id": row["id"], "reason": UNREADABLE})
                continue
            rows.append(row)
            images.append(image.convert("RGB"))
        self.skipped_log.append(skipped)
        return rows, images
