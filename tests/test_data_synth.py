"""Synthetic tasks: determinism, caching, disjoint splits, schema and content."""

import hashlib
import json
import re

import pytest
from datasets import Image

from avl_lab import data
from avl_lab.data.schema import SHORT_ANSWER_SUFFIX, row_features

SYNTH = ["synth-docvqa", "synth-textvqa", "synth-ocr", "synth-caption"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVL_LAB_CACHE", str(tmp_path / "cache"))


def _raw(ds):
    """Rows with image bytes (undecoded)."""
    return ds.cast_column("image", Image(decode=False)).to_list()


def _sha(row):
    return hashlib.sha256(row["image"]["bytes"]).hexdigest()


def _tokens(text):  # digits count one by one, as in most LLM tokenizers
    return re.findall(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", text)


@pytest.mark.parametrize("name", SYNTH)
def test_same_seed_gives_identical_bytes_and_cache_round_trips(name, tmp_path):
    fresh1 = _raw(data.load(name, "eval", limit=6, cache=False))
    fresh2 = _raw(data.load(name, "eval", limit=6, cache=False))
    assert fresh1 == fresh2
    cached = data.load(name, "eval", limit=6)  # writes the Arrow cache
    assert list((tmp_path / "cache" / "data" / name).glob("v*/eval-6/state.json"))
    assert _raw(cached) == fresh1
    assert _raw(data.load(name, "eval", limit=6)) == fresh1  # read back
    # a prefix is served from the larger cached set and equals a fresh small generation
    assert _raw(data.load(name, "eval", limit=3)) == fresh1[:3]
    other_seed = _raw(data.load(name, "eval", limit=6, cache=False, seed=1))
    assert {_sha(r) for r in other_seed}.isdisjoint({_sha(r) for r in fresh1})


@pytest.mark.parametrize("name", SYNTH)
def test_train_and_eval_are_disjoint(name):
    train = _raw(data.load(name, "train", limit=20, cache=False))
    ev = _raw(data.load(name, "eval", limit=20, cache=False))
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in ev})
    assert {_sha(r) for r in train}.isdisjoint({_sha(r) for r in ev})
    assert len({_sha(r) for r in train}) == 20


@pytest.mark.parametrize("name", SYNTH)
def test_schema_and_image_size(name):
    ds = data.load(name, "eval", limit=8, cache=False)
    assert ds.features == row_features()
    assert len(set(ds["id"])) == 8
    for row in ds:
        img = row["image"]
        assert img.mode == "RGB" and img.size[0] == img.size[1] >= 160
        assert (img.size[0] // 10) ** 2 >= 256  # >= 256 image tokens at patch 10
        assert row["metric"] == data.metric_for(name)
        assert row["answers"] and all(len(_tokens(a)) >= 2 for a in row["answers"][:1])
        assert isinstance(json.loads(row["meta"]), dict)


def test_docvqa_content():
    ds = data.load("synth-docvqa", "eval", limit=30, cache=False)
    counts = set()
    for row in ds:
        meta = json.loads(row["meta"])
        counts.add(meta["n_fields"])
        assert 6 <= meta["n_fields"] <= 8
        assert re.fullmatch(r"What is the [\w ]+\?", row["question"])
        assert row["prompt"] == row["question"] + SHORT_ANSWER_SUFFIX
        assert row["answers"] == [meta["fields"][meta["field"]]]
        assert row["image"].size == (160, 160)
    assert len(counts) == 3
    small = data.load(
        "synth-docvqa", "eval", limit=5, cache=False, min_fields=2, max_fields=3, image_size=224
    )
    assert all(2 <= json.loads(m)["n_fields"] <= 3 for m in small["meta"])


def test_textvqa_content():
    for row in data.load("synth-textvqa", "eval", limit=20, cache=False):
        meta = json.loads(row["meta"])
        colour = re.fullmatch(r"What is written on the (\w+) sign\?", row["question"]).group(1)
        target = [s for s in meta["signs"] if s["colour"] == colour]
        assert len(target) == 1 and 2 <= len(meta["signs"]) <= 3
        assert len(row["answers"]) == 10
        assert row["answers"].count(target[0]["text"].lower()) >= 8
        assert data.metric_for("synth-textvqa") == "vqa_accuracy"


def test_ocr_and_caption_content():
    for row in data.load("synth-ocr", "eval", limit=10, cache=False):
        assert row["question"] == row["prompt"] == "What is written in the image?"
        assert len(row["answers"]) == 1
    for row in data.load("synth-caption", "eval", limit=10, cache=False):
        objs = json.loads(row["meta"])["objects"]
        assert 2 <= len(objs) <= 5
        assert row["prompt"] == "Provide a one-sentence caption for the provided image."
        assert len(set(row["answers"])) == 5
        for o in objs:
            assert f"{o['colour']} {o['shape']}" in row["answers"][2]


@pytest.mark.parametrize("name", SYNTH)
def test_sample_row_equals_loaded_row(name):
    ds = data.load(name, "train", limit=3, cache=False)
    loaded = ds[2]
    row = data.sample_row(name, "train", 2)
    assert {k: v for k, v in row.items() if k != "image"} == {
        k: v for k, v in loaded.items() if k != "image"
    }
    assert row["image"].tobytes() == loaded["image"].tobytes()
    with pytest.raises(ValueError, match="`index`"):
        data.sample_row(name, "train", -1)


def test_synthetic_path_option():
    assert len(data.load("synth-ocr", "eval", limit=1, cache=False, path=None)) == 1
    with pytest.raises(ValueError, match="`path` must be None"):
        data.load("synth-ocr", "eval", limit=1, cache=False, path="/somewhere")
    with pytest.raises(ValueError, match="`path` must be None"):
        data.load("easy-vqa", "test", limit=1, path="/somewhere")


def test_grid_meta_records_every_drawn_character_at_its_template_cell():
    from avl_lab.data.grid import GRID
    from avl_lab.data.synth_docvqa import FIELDS, VALUE_COL, field_row
    from avl_lab.data.synth_ocr import TEXT_CELL
    from avl_lab.data.synth_textvqa import TEXT_COL, sign_row

    for row in data.load("synth-docvqa", "eval", limit=10, cache=False):
        meta = json.loads(row["meta"])
        grid = meta["grid"]
        assert len(grid) == GRID and all(len(r) == GRID for r in grid)
        index = next(i for i, f in enumerate(FIELDS) if f.label == meta["field"])
        line = grid[field_row(index)]
        assert line[VALUE_COL:].rstrip() == row["answers"][0]
        assert line[:VALUE_COL].rstrip() == meta["field"]
        assert sum(r.strip() != "" for r in grid) == meta["n_fields"] + 1  # + the title
    for row in data.load("synth-ocr", "eval", limit=10, cache=False):
        col, r = TEXT_CELL
        grid = json.loads(row["meta"])["grid"]
        assert grid[r][col:].rstrip() == row["answers"][0]
        assert "".join(grid).strip() == row["answers"][0]  # nothing else drawn
    for row in data.load("synth-textvqa", "eval", limit=10, cache=False):
        meta = json.loads(row["meta"])
        for sign in meta["signs"]:
            line = meta["grid"][sign_row(sign["colour"])]
            assert line[TEXT_COL:].rstrip() == sign["text"]
