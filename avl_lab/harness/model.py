"""The lmms-eval model ``avl_lab``: any avl_lab policy on lmms-eval's generation tasks.

``lmms-eval --model avl_lab --model_args pretrained=avl-tiny,policy=avl,S=45,C=30,K=3
--tasks avl_synth_docvqa --include_path "$(python -m avl_lab.harness)"``

Built on the lab's own pieces: :func:`avl_lab.models.load` (every supported family, the shipped
models), :func:`avl_lab.evaluation.prompting.encode` (the chat template around one image, a
left-padded batch), :func:`avl_lab.attach` (the policy inside the stock ``generate``). Each
sample's stored / used go into its ``token_counts`` in lmms-eval's sample log (every task),
into the avl_lab tasks' own metrics (:mod:`avl_lab.harness.scoring`), and their means over the
run into the results' ``throughput`` block (``avg_avl_stored``, ``avg_avl_used``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from PIL import Image
from tqdm import tqdm

from avl_lab.harness import ledger
from avl_lab.harness.model_args import parse_model_args
from avl_lab.torchvision_check import check_torchvision

log = logging.getLogger(__name__)

__all__ = ["AVLLab", "CacheTokenCounts", "generation_kwargs", "truncate"]

#: lmms-eval's Hugging Face models' budget when a task sets no ``max_new_tokens``.
DEFAULT_MAX_NEW_TOKENS = 1024


@dataclass
class CacheTokenCounts(TokenCounts):
    """lmms-eval's token counts of one sample plus its cache accounting (sample logs)."""

    stored: float | None = None
    used: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "stored": self.stored, "used": self.used}


def generation_kwargs(task_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A task's ``generation_kwargs`` as ``generate`` arguments, and its stop strings.

    Greedy (``do_sample=False``) unless the task samples (``temperature > 0`` or
    ``do_sample: true``); ``max_new_tokens`` defaults to lmms-eval's 1024.
    """
    kw = dict(task_kwargs)
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(kw.get("temperature") or 0.0)
    sample = bool(kw.get("do_sample")) or temperature > 0
    out: dict[str, Any] = {"do_sample": sample,
                           "max_new_tokens": int(kw.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                           "num_beams": int(kw.get("num_beams") or 1)}
    if sample:
        out["temperature"] = temperature or 1.0
        if kw.get("top_p") is not None:
            out["top_p"] = float(kw["top_p"])
    return out, [u for u in until if u]


def truncate(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first stop string (lmms-eval's ``until``), stripped."""
    for stop in until:
        text = text.split(stop)[0]
    return text.strip()


def _one_image(visuals: Any, task: str, doc_id: int) -> Image.Image:
    images = [v for v in (visuals or []) if v is not None]
    if len(images) != 1 or not isinstance(images[0], Image.Image):
        kinds = ", ".join(type(v).__name__ for v in images) or "none"
        raise NotImplementedError(
            f"avl_lab: task {task} document {doc_id} gives {len(images)} visual(s) ({kinds}); "
            "the avl_lab lmms-eval model takes one image per request")
    return images[0].convert("RGB")


class AVLLab(lmms):
    """An avl_lab model under a KV-cache policy, as an lmms-eval simple model.

    Parameters
    ----------
    pretrained, dtype, device, batch_size, seed, policy, **policy_fields
        See :class:`avl_lab.harness.model_args.HarnessArgs`; every other keyword is a field of
        the policy (``S=45``), validated as on avl_lab's command line.
    """

    is_simple = True

    def __init__(self, pretrained: str = "avl-tiny", batch_size: int | str = 1,
                 device: str | None = None, max_batch_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        check_torchvision()  # before transformers' image code imports a broken torchvision
        self.args = parse_model_args({"pretrained": pretrained, "batch_size": batch_size,
                                      "device": device, **kwargs})
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", 0))
        default = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(self.args.device or default)
        self.model, self.processor = self._load()
        ledger.clear()

    def _load(self):
        from avl_lab import models
        from avl_lab.engine.families import family_of
        from avl_lab.errors import InputFileError, UserError
        from avl_lab.evaluation.preflight import check_policy_fits

        a = self.args
        try:
            model, processor = models.load(a.pretrained, dtype=a.dtype, device=str(self._device),
                                           seed=a.seed)
        except (UserError, FileNotFoundError):  # already one clear message
            raise
        except (OSError, ValueError) as err:
            raise InputFileError(f"avl_lab --model_args: `pretrained` {a.pretrained}: the "
                                 f"checkpoint does not load ({err})") from None
        check_policy_fits(a.policy, len(family_of(model).decoder_layers(model)), a.pretrained,
                          model.config.model_type)
        log.info("avl_lab: %s under %s", a.pretrained, a.policy)
        return model, processor

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.args.batch_size

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        _refuse(requests, "ask for log-likelihoods (output_type loglikelihood / multiple_choice)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        _refuse(requests, "are multi-round (output_type generate_until_multi_round)")

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Generate every request under the policy, ``batch_size`` requests per ``generate``
        (requests of one task, split and generation settings together, in their order)."""
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, req in enumerate(requests):
            _, gen, _, _, task, split = req.args
            key = (task, split, json.dumps(gen, sort_keys=True, default=str))
            groups.setdefault(key, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        bs = self.batch_size
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="avl_lab generating")
        start, new_tokens, per_task = time.perf_counter(), 0, {}
        for idxs in groups.values():
            for b in range(0, len(idxs), bs):
                chunk = idxs[b:b + bs]
                for i, res in zip(chunk, self._generate([requests[i] for i in chunk]), strict=True):
                    results[i] = res
                    new_tokens += res.token_counts.output_tokens
                    per_task.setdefault(requests[i].args[4], []).append(res.token_counts)
                bar.update(len(chunk))
        bar.close()
        elapsed = time.perf_counter() - start
        self._log_run(elapsed, new_tokens, per_task)
        return results  # type: ignore[return-value]

    def _generate(self, reqs: list[Instance]) -> list[GenerationResult]:
        from avl_lab.engine.session import attach
        from avl_lab.evaluation.prompting import encode

        contexts, docs, images = [], [], []
        for req in reqs:
            context, _, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            # one image per prompt, placed by the chat template: an "<image>" some tasks write
            # into their text would be a second image token
            if "<image>" in context:
                context = context.replace("<image>", "").strip()
            contexts.append(context)
            docs.append(doc)
            images.append(_one_image(doc_to_visual(doc), task, doc_id))
        gen, until = generation_kwargs(reqs[0].args[1])
        inputs = encode(self.processor, images, contexts).to(self.device)
        with attach(self.model, dict(self.args.policy), seed=self.args.seed) as session, \
                torch.no_grad():
            sequences = session.generate(**inputs, **gen)
        stats = session.stats
        new = sequences[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        pad = self.processor.tokenizer.pad_token_id
        out = []
        for i, (doc, text) in enumerate(zip(docs, texts, strict=True)):
            counts = CacheTokenCounts(
                input_tokens=int(inputs["attention_mask"][i].sum()),
                output_tokens=int((new[i] != pad).sum()) if pad is not None else new.shape[1],
                stored=float(stats.per_sample_stored[i]), used=float(stats.per_sample_used[i]))
            if isinstance(doc, dict) and "id" in doc:
                ledger.record(str(doc["id"]), ledger.CacheRecord(
                    counts.stored, counts.used, str(self.args.policy["name"])))
            out.append(GenerationResult(text=truncate(text, until), token_counts=counts))
        return out

    def _log_run(self, elapsed: float, new_tokens: int,
                 per_task: dict[str, list[CacheTokenCounts]]) -> None:
        """Means of stored / used into the results' ``throughput`` block (``avg_avl_stored``,
        ``avg_avl_used``, and per task ``avg_avl_stored_<task>``)."""
        everything = [c for counts in per_task.values() for c in counts]
        if not everything:
            return
        extra: dict[str, float] = {
            "avl_stored": sum(c.stored for c in everything) / len(everything),
            "avl_used": sum(c.used for c in everything) / len(everything)}
        for task, counts in per_task.items():
            extra[f"avl_stored_{task}"] = sum(c.stored for c in counts) / len(counts)
            extra[f"avl_used_{task}"] = sum(c.used for c in counts) / len(counts)
        log_metrics(total_elapsed_time=elapsed, total_gen_tokens=new_tokens,
                    avg_speed=new_tokens / elapsed if elapsed > 0 else 0.0,
                    additional_metrics=extra)


def _refuse(requests: list[Instance], what: str) -> NoReturn:
    """One error naming the tasks and their output type: the model runs generate_until only."""
    tasks = sorted({str(r.task_name) for r in requests})
    raise NotImplementedError(f"avl_lab: task(s) {', '.join(tasks)} {what}; the avl_lab lmms-eval "
                              "model runs single-turn generation tasks (output_type "
                              "generate_until) only: choose a generate_until task or variant")
