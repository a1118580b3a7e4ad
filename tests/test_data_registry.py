"""Registry: names, metrics, splits, and clear errors for bad input."""

import pytest

from avl_lab import data
from avl_lab.data.schema import METRICS

EXPECTED = {
    "synth-docvqa": "anls",
    "synth-textvqa": "vqa_accuracy",
    "synth-ocr": "ocrbench",
    "synth-caption": "cider",
    "easy-vqa": "accuracy",
    "docvqa": "anls",
    "textvqa": "vqa_accuracy",
    "ocrbench": "ocrbench",
    "nocaps": "cider",
    "flickr30k": "cider",
    "chartqa": "relaxed_accuracy",
    "infovqa": "anls",
    "vqav2": "vqa_accuracy",
    "synth-docvqa-2x2": "anls",
}


def test_names_and_metrics():
    assert data.names() == list(EXPECTED)
    for name, metric in EXPECTED.items():
        assert data.metric_for(name) == metric
        assert metric in METRICS


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match="unknown dataset 'docvqa2'") as err:
        data.load("docvqa2", "validation")
    for name in EXPECTED:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="synth-caption"):
        data.metric_for("nope")


def test_unknown_split_lists_splits():
    with pytest.raises(ValueError, match="no split 'dev'.*eval.*train"):
        data.load("synth-ocr", "dev")
    with pytest.raises(ValueError, match="no split 'train'.*validation"):
        data.load("docvqa", "train")


@pytest.mark.parametrize("limit", [-1, 2.5, "3", True])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="`limit`"):
        data.load("synth-ocr", "eval", limit=limit, cache=False)


def test_bad_synthetic_options_name_the_field():
    with pytest.raises(ValueError, match="unknown option.*colour"):
        data.load("synth-ocr", "eval", limit=1, cache=False, colour="red")
    with pytest.raises(ValueError, match="`min_fields`"):
        data.load("synth-docvqa", "eval", limit=1, cache=False, min_fields=9, max_fields=3)
    with pytest.raises(ValueError, match="`image_size`"):
        data.load("synth-caption", "eval", limit=1, cache=False, image_size=32)
    with pytest.raises(ValueError, match="`seed`"):
        data.load("synth-textvqa", "eval", limit=1, cache=False, seed=-3)


def test_split_aliases():
    a = data.load("synth-ocr", "test", limit=2, cache=False)
    b = data.load("synth-ocr", "eval", limit=2, cache=False)
    assert a["id"] == b["id"]
    assert data.get("docvqa").canonical_split("eval") == "validation"
