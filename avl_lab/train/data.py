"""Endless, seeded training stream over the synthetic train splits and easy-vqa train.

Sample ``i`` of the stream is a pure function of ``(seed, i)``: its task is drawn from
``task_weights`` with ``random.Random(f"avl-tiny|{seed}|{i}")`` and its row is
``sample_row(task, "train", i)`` (easy-vqa: question ``j`` of its train split). A resumed
run starts the stream at ``global_step * batch_size``, so resuming gives the very batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from avl_lab import data
from avl_lab.data.grid import GRID
from avl_lab.data.schema import short_answer_prompt
from avl_lab.evaluation.prompting import chat_prompt
from avl_lab.train.config import TrainConfig
from avl_lab.train.easy_questions import SLOT_WORD, generate, shows
from avl_lab.train.scene import Scene, scene_of

__all__ = [
    "TrainDataModule",
    "TrainStream",
    "answer_target",
    "collate",
    "glyph_labels",
    "scene_targets",
    "slot_targets",
    "training_row",
]

_EASY_CURRICULUM = {
    "synth-docvqa": {"min_fields": 2, "max_fields": 4},
    "synth-ocr": {"min_tokens": 1, "max_tokens": 2},
}


@lru_cache(maxsize=1)
def _easy_vqa_train() -> tuple[list[str], list[str], list[int], dict]:
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_train_questions()
    return questions, answers, [int(i) for i in image_ids], easy_vqa.get_train_image_paths()


@lru_cache(maxsize=4096)
def _easy_image(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


@lru_cache(maxsize=4096)
def _easy_scene(path: str) -> Scene | None:
    return scene_of(_easy_image(path), grid=GRID)


def training_row(task: str, index: int, easy: bool = False) -> dict[str, Any]:
    """Row ``index`` of ``task``'s train split (``easy``: the curriculum's simpler visuals)."""
    if task == "easy-vqa":
        questions, answers, ids, paths = _easy_vqa_train()
        j = index % len(questions)
        path = paths[ids[j]]
        return {"image": _easy_image(path), "prompt": short_answer_prompt(questions[j]),
                "answers": [answers[j]], "meta": "{}", "task": task,
                "scene": _easy_scene(path)}  # fmt: skip
    row = data.sample_row(task, "train", index, **(_EASY_CURRICULUM.get(task, {}) if easy else {}))
    return {**row, "task": task}


def answer_target(task: str, row: dict[str, Any]) -> str:
    """The string the model learns to generate for ``row``.

    The first reference, except synth-textvqa, whose target is the sign's text as printed
    (upper case; the metric is case-insensitive).
    """
    if task == "synth-textvqa":
        meta = json.loads(row["meta"])
        return next(s["text"] for s in meta["signs"] if s["colour"] == meta["colour"])
    return row["answers"][0]


class TrainStream(IterableDataset):
    """Endless ``(image, prompt, target)`` samples from global index ``start`` on."""

    def __init__(self, cfg: TrainConfig, start: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.start = start

    def sample(self, i: int) -> dict[str, Any]:
        rng = random.Random(f"avl-tiny|{self.cfg.seed}|{i}")
        task = rng.choices(self.cfg.tasks, weights=self.cfg.task_weights)[0]
        easy = i < self.cfg.curriculum_steps * self.cfg.batch_size
        row = training_row(task, i, easy=easy)
        target = answer_target(task, row)
        if row.get("scene") and rng.random() < self.cfg.easy_vqa_generated:
            question, target = generate(row["scene"], rng)
            row = {**row, "prompt": short_answer_prompt(question)}
        meta = json.loads(row["meta"])
        grid = meta.get("grid")
        return {"image": row["image"], "prompt": row["prompt"], "target": target,
                "grid": grid, "cell": meta.get("cell") if grid else None,
                "scene": row.get("scene")}  # fmt: skip

    def __iter__(self):
        i = self.start
        while True:
            yield self.sample(i)
            i += 1


def glyph_labels(tokenizer: Any, grids: list[list[str] | None]) -> torch.Tensor:
    """``[B, cells]`` token ids of each grid cell's character, row-major like the image
    tokens (blank cells: the space token); all -100 for a sample without a grid."""
    cells = max((sum(len(r) for r in g) for g in grids if g), default=GRID * GRID)
    out = torch.full((len(grids), cells), -100, dtype=torch.long)
    for b, grid in enumerate(grids):
        if grid:
            text = "".join(grid)
            ids = {ch: _char_id(tokenizer, ch) for ch in set(text)}  # one lookup per character
            out[b] = torch.tensor([ids[ch] for ch in text])
    return out


def _char_id(tokenizer: Any, ch: str) -> int:
    ids = tokenizer(ch, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"grid character {ch!r} is not one token of the tokenizer: {ids}")
    return ids[0]


def collate(processor: Any, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels``, ``pixel_values`` and the
    per-cell ``glyph_labels`` (see :func:`glyph_labels`).

    The prompt is tokenised alone (exactly as at inference) and the target `` <answer></s>``
    appended, its leading space always a token of its own (so every answer's first token is
    the same and its content is decided one position later, whatever BPE would merge: `` c``
    of " circle" otherwise); labels are -100 everywhere but on the target tokens.
    """
    tok = processor.tokenizer
    prompts = [chat_prompt(processor, b["prompt"]) for b in batch]
    enc = processor(images=[b["image"] for b in batch], text=prompts, padding=False)
    space = _char_id(tok, " ")
    seqs, labels, reads = [], [], []
    for ids, b in zip(enc["input_ids"], batch):
        answer = [space] + tok(b["target"], add_special_tokens=False)["input_ids"]
        target = answer + [tok.eos_token_id]
        seqs.append(list(ids) + target)
        labels.append([-100] * len(ids) + target)
        reads.append(_read_positions(tok.image_token_id, list(ids), answer, b))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
    label_t = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (s, lab) in enumerate(zip(seqs, labels)):
        input_ids[r, : len(s)] = torch.tensor(s)
        label_t[r, : len(s)] = torch.tensor(lab)
        mask[r, : len(s)] = 1
    pixel_values = torch.from_numpy(np.stack([np.asarray(p) for p in enc["pixel_values"]]))
    glyphs = glyph_labels(tok, [b.get("grid") for b in batch])
    read_t = torch.full((len(batch), width), -100, dtype=torch.long)
    for r, pairs in enumerate(reads):
        for q, k in pairs:
            read_t[r, q] = k
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t,
            "pixel_values": pixel_values, "glyph_labels": glyphs, "read_targets": read_t,
            **scene_targets(tok.image_token_id, input_ids, label_t, batch),
            **slot_targets(tok, prompts, enc["input_ids"], batch, width)}  # fmt: skip


def scene_targets(
    image_token_id: int, input_ids: torch.Tensor, labels: torch.Tensor, batch: list[dict]
) -> dict[str, torch.Tensor]:
    """Scene supervision of the easy-vqa samples (see :mod:`avl_lab.train.scene`).

    ``scene_labels`` ``[B, 2]``: colour and shape index (-100: no scene);
    ``scene_patches`` ``[B, cells]``: the image tokens the shape covers; ``region_queries``
    / ``region_keys`` ``[B, T]``: the positions whose logits predict the answer's tokens
    (the last prompt token up to the one before ``</s>``), and the shape's image-token
    positions, which the guided head should attend to from them.
    """
    n, width = input_ids.shape
    cells = GRID * GRID
    out = {"scene_labels": torch.full((n, 2), -100, dtype=torch.long),
           "scene_patches": torch.zeros((n, cells), dtype=torch.bool),
           "region_queries": torch.zeros((n, width), dtype=torch.bool),
           "region_keys": torch.zeros((n, width), dtype=torch.bool)}  # fmt: skip
    for b, item in enumerate(batch):
        scene = item.get("scene")
        image = (input_ids[b] == image_token_id).nonzero().flatten()
        if scene is None or len(image) != cells:  # not one image token per grid cell
            continue
        out["scene_labels"][b] = torch.tensor([scene.colour, scene.shape])
        patches = torch.tensor(scene.patches)
        out["scene_patches"][b, patches] = True
        out["region_keys"][b, image[patches]] = True
        answer = (labels[b] != -100).nonzero().flatten()  # the answer tokens, then </s>
        out["region_queries"][b, answer[:-1] - 1] = True  # their logits predict the answer
    return out


def slot_targets(
    tokenizer: Any, prompts: list[str], prompt_ids: list[list[int]], batch: list[dict], width: int
) -> dict[str, torch.Tensor]:
    """The slot loss's targets of the samples with a scene: ``slot_keys`` ``[B, width]``, the
    prompt tokens spelling the question's first colour or shape word ("is there a *red*
    shape?"), and ``slot_match`` ``[B]``, whether the image shows that colour or shape.

    The tokens are found through the tokenizer's character offsets of the prompt with its
    image placeholder expanded as the processor does; a sample whose ids differ from the
    processor's gets no keys.
    """
    keys = torch.zeros((len(batch), width), dtype=torch.bool)
    match = torch.zeros(len(batch), dtype=torch.bool)
    image = tokenizer.image_token
    for b, (text, ids, item) in enumerate(zip(prompts, prompt_ids, batch)):
        scene, word = item.get("scene"), SLOT_WORD.search(item["prompt"])
        if scene is None or word is None:
            continue
        n = sum(1 for t in ids if t == tokenizer.image_token_id)
        expanded = text.replace(image, image * n, 1)
        enc = tokenizer(expanded, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != list(ids):
            continue
        start = expanded.rindex(item["prompt"]) + word.start()
        end = start + len(word.group())
        for pos, (s, e) in enumerate(enc["offset_mapping"]):
            keys[b, pos] = s < end and start < e
        match[b] = shows(scene, word.group())
    return {"slot_keys": keys, "slot_match": match}


def _read_positions(
    image_token_id: int, prompt_ids: list[int], answer_ids: list[int], item: dict[str, Any]
) -> list[tuple[int, int]]:
    """``(query position, key position)`` pairs of the guided-reading loss for one sample.

    ``answer_ids`` tokenise `` c0 c1 ...`` (one token per character, the first a space);
    the logits at the position of answer token ``k`` predict character ``c_k``, drawn in
    cell ``(col + k, row)``, whose image token the guided head should read. Empty for a sample
    without a start cell, whose answer is not one token per character, or whose image is
    not one token per grid cell.
    """
    cell = item.get("cell")
    if not cell:
        return []
    chars = item["target"]
    if len(answer_ids) != len(chars) + 1:
        return []
    image = [i for i, t in enumerate(prompt_ids) if t == image_token_id]
    if len(image) != GRID * GRID:  # not one image token per cell (image_size != 160)
        return []
    col, row = cell
    first = len(prompt_ids)  # position of answer token 0 (the space)
    return [(first + k, image[row * GRID + col + k]) for k in range(len(chars))]


class TrainDataModule(L.LightningDataModule):
    """The seeded training stream; resumes where the last checkpoint's step left off."""

    def __init__(self, cfg: TrainConfig, processor: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.processor = processor

    def train_dataloader(self) -> DataLoader:
        step = self.trainer.global_step if self.trainer is not None else 0
        stream = TrainStream(self.cfg, start=step * self.cfg.batch_size)
        return DataLoader(
            stream,
            batch_size=self.cfg.batch_size,
            collate_fn=lambda b: collate(self.processor, b),
            num_workers=0,
        )
