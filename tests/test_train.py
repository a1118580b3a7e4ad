"""A tiny ``avl-tiny``-style training run: loss drops, checkpoints, resume, export + load."""

import csv
import json

import pytest
import torch

from avl_lab.models import load
from avl_lab.train import TrainConfig, load_train_config, train
from avl_lab.train.data import TrainStream, collate
from avl_lab.train.module import lr_factor
from tests.helpers import avl_tiny_processor, small_avl_tiny_config

TINY = [
    "model.image_size=40", "model.patch_size=10", "model.vision_hidden_size=32",
    "model.vision_layers=1", "model.vision_heads=2", "model.hidden_size=64",
    "model.intermediate_size=128", "model.num_hidden_layers=2", "model.num_attention_heads=4",
    "model.num_key_value_heads=2", "batch_size=4", "lr=3e-3", "warmup_steps=2",
    "eval_every_steps=0", "log_every_steps=1", "curriculum_steps=2", "num_threads=1",
    "glyph_loss_weight=0",  # 40 px images have 16 patches, not one per grid cell
    "slot_attention_layer=1",  # the model has 2 layers
]  # fmt: skip


def _losses(path, name="loss"):
    with open(path) as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["name"] == name}


def test_config_overrides_and_errors():
    cfg = load_train_config(["lr=0.002", "model.num_hidden_layers=3"])
    assert cfg.lr == 0.002 and cfg.model.num_hidden_layers == 3
    with pytest.raises(ValueError, match="`task_weights`"):
        TrainConfig(task_weights=[1.0])
    with pytest.raises(ValueError, match="`lr`"):
        load_train_config(["lr=2"])
    with pytest.raises(ValueError, match="`easy_vqa_generated`"):
        TrainConfig(easy_vqa_generated=1.5)
    with pytest.raises(ValueError, match="`scene_loss_weight`"):
        TrainConfig(scene_loss_weight=-1)
    with pytest.raises(ValueError, match="`slot_attention_head` must differ"):
        TrainConfig(slot_attention_layer=1, slot_attention_head=0, read_attention_layer=1)
    with pytest.raises(ValueError, match="`slot_attention_layer`"):
        load_train_config(["slot_attention_layer=9"])
    assert lr_factor(0, 10, 0.0, 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 10, 0.0, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_stream_is_seeded_and_labels_cover_only_the_answer():
    cfg = TrainConfig()
    a, b = TrainStream(cfg).sample(5), TrainStream(cfg, start=3).sample(5)
    assert a["prompt"] == b["prompt"] and a["target"] == b["target"]
    assert a["image"].tobytes() == b["image"].tobytes()
    proc = avl_tiny_processor()
    batch = collate(proc, [TrainStream(cfg).sample(i) for i in range(3)])
    for row, item in zip(batch["labels"], [TrainStream(cfg).sample(i) for i in range(3)]):
        target = row[row != -100]
        assert target[-1] == proc.tokenizer.eos_token_id
        assert proc.tokenizer.decode(target, skip_special_tokens=True).strip() == item["target"]
    assert (batch["input_ids"] == proc.tokenizer.image_token_id).sum(1).tolist() == [256] * 3


def test_tiny_run_loss_drops_checkpoints_resume_and_export(tmp_path):
    out, exp = tmp_path / "run", tmp_path / "export"
    args = [*TINY, f"out_dir={out}", f"export_dir={exp}"]
    s1 = train(load_train_config([*args, "max_steps=12", "export=false"]))
    assert s1["steps"] == 12 and (out / "checkpoints" / "last.ckpt").exists()
    losses = _losses(out / "metrics.csv")
    first, last = losses[min(losses)], sum(losses[s] for s in sorted(losses)[-3:]) / 3
    assert last < first - 0.5, losses
    s2 = train(load_train_config([*args, "max_steps=14"]))  # resumes at step 12
    assert s2["steps"] == 14 and sorted(_losses(out / "metrics.csv"))[-2:] == [13, 14]
    assert (out / "curve.png").stat().st_size > 1000
    assert json.loads((exp / "train_summary.json").read_text())["steps"] == 14
    model, proc = load(str(exp))
    enc = proc(images=[TrainStream(TrainConfig()).sample(0)["image"]], text=["USER: <image>\nHi ASSISTANT:"],
               return_tensors="pt")  # fmt: skip
    out_ids = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out_ids.shape[1] <= enc["input_ids"].shape[1] + 3
    assert model.generation_config.eos_token_id == proc.tokenizer.eos_token_id
    assert not torch.isnan(model(**enc).logits).any()
    again = train(load_train_config([*args, "export_only=true", f"export_dir={tmp_path / 'e2'}"]))
    assert again["steps"] == 14
    reloaded, _ = load(str(tmp_path / "e2"))
    torch.testing.assert_close(reloaded(**enc).logits, model(**enc).logits)
    # a checkpoint from before a training-only probe existed still exports; a foreign one not
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if "match_head" not in k}
    torch.save(state, ckpt)
    train(load_train_config([*args, "export_only=true", f"export_dir={tmp_path / 'e3'}"]))
    assert (tmp_path / "e3" / "model.safetensors").exists()
    state["state_dict"]["model.extra.weight"] = torch.zeros(1)
    torch.save(state, ckpt)
    with pytest.raises(RuntimeError, match="model.extra.weight"):
        train(load_train_config([*args, "export_only=true", f"export_dir={tmp_path / 'e4'}"]))


def test_glyph_labels_name_each_cell_and_the_glyph_loss_drops(tmp_path):
    from avl_lab.data.grid import GRID

    cfg = TrainConfig()
    items = [TrainStream(cfg).sample(i) for i in range(12)]
    proc = avl_tiny_processor()
    batch = collate(proc, items)
    tok = proc.tokenizer
    assert batch["glyph_labels"].shape == (12, GRID * GRID)
    for labels, item in zip(batch["glyph_labels"], items):
        if item["grid"] is None:  # caption, easy-vqa: no labels
            assert (labels == -100).all()
            continue
        cells = tok.convert_ids_to_tokens(labels.tolist())
        text = "".join(" " if c == "\u0120" else c for c in cells)
        assert text == "".join(item["grid"])
    assert any(it["grid"] is None for it in items) and any(it["grid"] for it in items)
    # guided reading: the logits at query q predict the character whose cell's image token
    # is the target key (its glyph label is that very token)
    reads = batch["read_targets"]
    image_start = int((batch["input_ids"][0] == tok.image_token_id).nonzero()[0])
    checked = 0
    for b, item in enumerate(items):
        pairs = (reads[b] >= 0).nonzero().flatten().tolist()
        assert len(pairs) == (len(item["target"]) if item["grid"] else 0)
        for q in pairs:
            key = int(reads[b, q])
            assert batch["input_ids"][b, key] == tok.image_token_id
            assert batch["labels"][b, q + 1] == batch["glyph_labels"][b, key - image_start]
            checked += 1
    assert checked > 20

    small = [a for a in TINY if not a.startswith(("model.image_size", "glyph_loss_weight"))]
    out = tmp_path / "run"
    train(load_train_config([*small, "model.image_size=160", f"out_dir={out}", "max_steps=15",
                             "export=false", "glyph_loss_weight=1.0", "task_weights=[1,1,1,0,1]"]))
    glyph = _losses(out / "metrics.csv", "glyph_loss")
    assert len(glyph) >= 10
    first, last = glyph[min(glyph)], sum(glyph[s] for s in sorted(glyph)[-3:]) / 3
    assert last < first * 0.7, glyph
    for name in ("scene_loss", "region_loss"):  # easy-vqa steps: the probe, the guided head
        assert len(_losses(out / "metrics.csv", name)) >= 4, name
    with pytest.raises(ValueError, match="glyph_loss_weight=0"):
        train(load_train_config([*small, "model.image_size=40", f"out_dir={tmp_path / 'r2'}",
                                 "max_steps=2", "export=false", "task_weights=[1,1,1,0,0]"]))


def test_read_attention_loss_equals_the_heads_eager_attention():
    from avl_lab.models.avl_tiny import build_avl_tiny
    from avl_lab.train.guided import ReadAttention

    mcfg = small_avl_tiny_config()
    model, _ = build_avl_tiny(mcfg, seed=1)
    model.eval()
    ids = torch.randint(5, 300, (2, 30))
    targets = torch.full((2, 30), -100)
    targets[0, 20], targets[0, 25], targets[1, 29] = 3, 24, 0
    layer = model.model.language_model.layers[1].self_attn
    with torch.no_grad(), ReadAttention(layer, head=3) as probe:
        model.model.language_model(input_ids=ids)
        got = probe.loss(targets)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attn = model.model.language_model(input_ids=ids, output_attentions=True).attentions[1]
    want = -torch.log(torch.stack([attn[0, 3, 20, 3], attn[0, 3, 25, 24], attn[1, 3, 29, 0]]))
    torch.testing.assert_close(got, want.mean())
    assert not torch.isclose(got, -torch.log(attn[0, 2, 20, 3]))  # another head differs


def test_progress_bar_counts_steps_from_a_resume_and_hides(tmp_path, capfd):
    args = [*TINY, f"out_dir={tmp_path / 'run'}", "export=false"]
    train(load_train_config([*args, "max_steps=2"]))
    err = capfd.readouterr().err
    assert "train: 100%" in err and " 2/2 " in err and "loss=" in err, err
    train(load_train_config([*args, "max_steps=3"]))  # resumes at step 2: the bar starts there
    err = capfd.readouterr().err
    assert " 2/3 " in err and " 3/3 " in err and " 0/3 " not in err, err
    train(load_train_config([*args, "max_steps=4", "progress=false"]))
    assert "train:" not in capfd.readouterr().err
