"""Issue 19: ``reinit_decoder`` (fresh decoder, the rest from ``init_from``), ``tasks`` and the
premise variant ``synth-docvqa-2x2`` (one character over 2 x 2 image tokens)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avl_lab import data
from avl_lab.experiments.analysis.answer_cells import answer_tokens, blank_tokens
from avl_lab.models.avl_tiny import build_avl_tiny
from avl_lab.train import TrainConfig, load_train_config
from avl_lab.train.data import TrainStream
from avl_lab.train.run import DECODER_PREFIXES, _init_from
from tests.helpers import small_avl_tiny_config


def test_reinit_decoder_keeps_all_but_the_decoder(tmp_path):
    cfg = small_avl_tiny_config()
    trained, proc = build_avl_tiny(cfg, seed=1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # far from any initialisation
    trained.save_pretrained(tmp_path)
    fresh, _ = build_avl_tiny(cfg, seed=0)
    reference = {k: v.clone() for k, v in fresh.state_dict().items()}
    _init_from(fresh, tmp_path, reinit_decoder=True)
    saved, now = trained.state_dict(), fresh.state_dict()
    decoder = [k for k in now if k.startswith(DECODER_PREFIXES)]
    assert any(".layers." in k for k in decoder) and any(".norm." in k for k in decoder)
    for k, v in now.items():
        expected = reference[k] if k.startswith(DECODER_PREFIXES) else saved[k]
        torch.testing.assert_close(v, expected, msg=k)
    kept = [k for k in now if "vision_tower" in k or "projector" in k or "embed_tokens" in k]
    assert kept and all(torch.equal(now[k], saved[k]) for k in kept)
    plain, _ = build_avl_tiny(cfg, seed=0)
    _init_from(plain, tmp_path)  # without the flag: every weight from the saved model
    assert all(torch.equal(v, saved[k]) for k, v in plain.state_dict().items())


def test_config_reinit_and_tasks():
    with pytest.raises(ValueError, match="`reinit_decoder=true` needs `init_from`"):
        TrainConfig(reinit_decoder=True)
    with pytest.raises(ValueError, match="`task_weights`"):
        TrainConfig(tasks=["synth-docvqa-2x2"])
    with pytest.raises(ValueError, match="`tasks`"):
        TrainConfig(tasks=["docvqa"], task_weights=[1.0])
    shipped = TrainConfig(init_from="avl-tiny-guided", reinit_decoder=True).init_path()
    assert shipped.parts[-2:] == ("assets", "avl-tiny-guided")
    assert TrainConfig(init_from="some/dir").init_path() == Path("some/dir")
    cfg = load_train_config(["tasks=[synth-docvqa-2x2]", "task_weights=[1]"])
    stream = TrainStream(cfg)
    rows = [stream.sample(i) for i in range(4)]
    assert all(r["prompt"].count("What is the") == 1 and len(r["grid"]) == 16 for r in rows)
    assert all(any(r["target"] in line[::2] for line in r["grid"]) for r in rows)


def test_2x2_glyphs_cover_four_tokens_each():
    full = chars = 0
    for i in range(8):
        row = data.sample_row("synth-docvqa-2x2", "eval", i)
        meta, answer = json.loads(row["meta"]), row["answers"][0]
        assert meta["span"] == 2 and 2 <= len(answer) <= 4
        grid = meta["grid"]
        col, r = meta["cell"]
        # the answer sits in 2 x 2 blocks of the per-patch grid
        for k, ch in enumerate(answer):
            block = {grid[r + dr][col + 2 * k + dc] for dr in (0, 1) for dc in (0, 1)}
            assert block == {ch}
        idx = answer_tokens(meta, answer, 256)
        assert idx is not None and len(idx) == 4 * len(answer.replace(" ", ""))
        assert not blank_tokens(meta, 256)[idx].any()
        # the glyph really spans its four patches: ink in at least 3 of them ("L" leaves its
        # top-right patch blank), in all 4 for almost every character
        img = np.asarray(row["image"].convert("L"), dtype=np.float32)
        background = np.median(img)
        for k in range(len(answer)):
            blocks = [(r + dr) * 16 + col + 2 * k + dc for dr in (0, 1) for dc in (0, 1)]
            inked = 0
            for p in blocks:
                y, x = divmod(p, 16)
                patch = img[10 * y : 10 * y + 10, 10 * x : 10 * x + 10]
                inked += int((np.abs(patch - background) > 80).sum() >= 3)
            assert inked >= 3, (i, answer, k)
            full += inked == 4
            chars += 1
    assert full >= 0.9 * chars
    # the original task is unchanged: one token per character
    row = data.sample_row("synth-docvqa", "eval", 0)
    meta = json.loads(row["meta"])
    assert len(answer_tokens(meta, row["answers"][0], 256)) == len(
        row["answers"][0].replace(" ", "")
    )
