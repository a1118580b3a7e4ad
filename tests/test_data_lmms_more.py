"""ChartQA, InfoVQA and VQAv2 adapters on tiny parquet copies written in each real schema."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from avl_lab import data
from avl_lab.data import DatasetNotAvailableError
from avl_lab.data.schema import SHORT_ANSWER_SUFFIX, row_features
from avl_lab.metrics import sample_score
from tests.test_data_lmms import _docvqa, _img

S, INT, L = Value("string"), Value("int64"), List(Value("string"))
ROOT = Path(__file__).resolve().parent.parent
CHARTQA_SUFFIX = "\nAnswer the question with a single word."  # lmms-eval chartqa.yaml


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVL_LAB_CACHE", str(tmp_path / "avl-cache"))


def _chartqa(n):
    """lmms-lab/ChartQA: ``type question answer image`` (features of upload_chartqa.py)."""
    feats = Features({"type": S, "question": S, "answer": S, "image": Image()})
    answers = ["12.5", "45%", "Yes", "0", "Canada"]
    rows = {
        "type": ["human_test"] * (n // 2) + ["augmented_test"] * (n - n // 2),
        "question": [f"What is the value of bar {i}?" for i in range(n)],
        "answer": [answers[i % len(answers)] for i in range(n)],
        "image": [_img(i) for i in range(n)],
    }
    return Dataset.from_dict(rows, features=feats)


def _infovqa(n):
    """lmms-lab/DocVQA config InfographicVQA (the hub card's features)."""
    feats = Features(
        {
            "questionId": S,
            "question": S,
            "answers": L,
            "answer_type": L,
            "image": Image(),
            "image_url": S,
            "operation/reasoning": L,
            "ocr": S,
            "data_split": S,
        }
    )
    rows = {
        "questionId": [str(65718 + i) for i in range(n)],
        "question": [f"which social platform has heavy female audience {i}?" for i in range(n)],
        "answers": [[f"pinterest {i}", f"Pinterest #{i}"] for i in range(n)],
        "answer_type": [["single span"]] * n,
        "image": [_img(i) for i in range(n)],
        "image_url": ["https://example.invalid/x.jpg"] * n,
        "operation/reasoning": [["comparison"]] * n,
        "ocr": ["{}"] * n,
        "data_split": ["val"] * n,
    }
    return Dataset.from_dict(rows, features=feats)


def _vqav2(n):
    """lmms-lab/VQAv2: ``answers`` is a list of {answer, answer_confidence, answer_id}."""
    record = {"answer": S, "answer_confidence": S, "answer_id": INT}
    feats = Features(
        {
            "question_type": S,
            "multiple_choice_answer": S,
            "answers": List(record),
            "image_id": INT,
            "answer_type": S,
            "question_id": INT,
            "question": S,
            "image": Image(),
        }
    )
    words = ["yes"] * 6 + ["no"] * 3 + ["maybe"]
    rows = {
        "question_type": ["is the"] * n,
        "multiple_choice_answer": ["yes"] * n,
        "answers": [
            [
                {"answer": w, "answer_confidence": "yes", "answer_id": j + 1}
                for j, w in enumerate(words)
            ]
            for _ in range(n)
        ],
        "image_id": list(range(262148, 262148 + n)),
        "answer_type": ["yes/no"] * n,
        "question_id": [262148000 + i for i in range(n)],
        "question": [f"is the man {i} wearing a hat?" for i in range(n)],
        "image": [_img(i) for i in range(n)],
    }
    return Dataset.from_dict(rows, features=feats)


def _write(ds, root: Path, rel: str, n_first: int = 2) -> None:
    """Two parquet shards ``rel.format(0)``, ``rel.format(1)`` in the hub repo's layout."""
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ds.select(range(n_first)).to_parquet(str(root / rel.format(0)))
    ds.select(range(n_first, len(ds))).to_parquet(str(root / rel.format(1)))


def _pixels(image) -> list:
    img = image if isinstance(image, PILImage.Image) else PILImage.open(io.BytesIO(image["bytes"]))
    return list(img.getdata())


def _same_images(out, src) -> None:
    raw = src.cast_column("image", Image(decode=False))["image"]
    assert [_pixels(r["image"]) for r in out] == [_pixels(s) for s in raw]


def test_chartqa_rows(tmp_path):
    src = _chartqa(5)
    _write(src, tmp_path, "data/test-0000{}-of-00002.parquet")
    out = data.load("chartqa", "test", path=tmp_path)
    assert out.features == row_features() and len(out) == 5
    assert out["id"] == [f"chartqa-{i:04d}" for i in range(5)]
    assert out["question"] == src["question"]
    assert (
        out["prompt"][0] == "What is the value of bar 0?\nAnswer the question with a single word."
    )
    assert out["prompt"] == [q + CHARTQA_SUFFIX for q in src["question"]]
    assert out["answers"] == [[a] for a in src["answer"]]
    assert set(out["metric"]) == {"relaxed_accuracy"} == {data.metric_for("chartqa")}
    assert [json.loads(m)["type"] for m in out["meta"]] == src["type"]
    _same_images(out, src)
    # the row's metric scores lmms-eval's way: 12 is within 5% of 12.5, '0.45' equals '45%'
    assert sample_score(out[0]["metric"], "12", out[0]["answers"]) == 1.0
    assert sample_score(out[1]["metric"], "0.45", out[1]["answers"]) == 1.0
    assert sample_score(out[2]["metric"], "yes", out[2]["answers"]) == 1.0
    head = data.load("chartqa", "eval", limit=3, path=tmp_path)  # crosses the shard boundary
    assert head["id"] == out["id"][:3]


def test_infovqa_rows_beside_docvqa_in_one_repo(tmp_path):
    """Both configs of lmms-lab/DocVQA in one copy: each benchmark reads only its own folder."""
    src = _infovqa(4)
    _write(src, tmp_path, "InfographicVQA/validation-0000{}-of-00002.parquet")
    _infovqa(2).to_parquet(str(tmp_path / "InfographicVQA" / "test-00000-of-00001.parquet"))
    doc = _docvqa(3)
    _write(doc, tmp_path, "DocVQA/validation-0000{}-of-00002.parquet")
    out = data.load("infovqa", "validation", path=tmp_path)
    assert out.features == row_features() and len(out) == 4
    assert out["id"] == src["questionId"]
    assert out["answers"] == src["answers"]
    assert out["prompt"] == [q + SHORT_ANSWER_SUFFIX for q in src["question"]]
    assert out["prompt"][0].startswith("which social platform")  # not capitalised
    assert set(out["metric"]) == {"anls"} == {data.metric_for("infovqa")}
    meta = json.loads(out["meta"][0])
    assert meta == {"answer_type": ["single span"], "operation/reasoning": ["comparison"]}
    _same_images(out, src)
    assert sample_score("anls", "Pinterest 0", out[0]["answers"]) == 1.0
    assert data.load("docvqa", "validation", path=tmp_path)["id"] == doc["questionId"]


def test_infovqa_never_reads_the_docvqa_config(tmp_path, monkeypatch):
    """A copy of lmms-lab/DocVQA with only ``DocVQA/`` has no InfoVQA (same columns!)."""
    repo = tmp_path / "lmms-lab--DocVQA"
    _write(_docvqa(3), repo, "DocVQA/validation-0000{}-of-00002.parquet")
    monkeypatch.setenv("AVL_LAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotAvailableError, match="InfographicVQA/validation-\\*.parquet"):
        data.load("infovqa", "validation", hub_cache=tmp_path / "hub")
    assert len(data.load("docvqa", "validation", hub_cache=tmp_path / "hub")) == 3
    src = _infovqa(3)
    _write(src, repo, "InfographicVQA/validation-0000{}-of-00002.parquet", n_first=1)
    out = data.load("infovqa", "validation", hub_cache=tmp_path / "hub")
    assert out["id"] == src["questionId"]


def test_vqav2_rows(tmp_path):
    src = _vqav2(4)
    _write(src, tmp_path, "data/validation-0000{}-of-00002.parquet")
    _vqav2(2).to_parquet(str(tmp_path / "data" / "testdev-00000-of-00001.parquet"))  # decoy
    out = data.load("vqav2", "validation", path=tmp_path)
    assert out.features == row_features() and len(out) == 4
    assert out["id"] == [str(q) for q in src["question_id"]]
    assert out["answers"] == [["yes"] * 6 + ["no"] * 3 + ["maybe"]] * 4  # the `answer` fields
    assert out["prompt"] == [q + SHORT_ANSWER_SUFFIX for q in src["question"]]
    assert out["prompt"][0] == "is the man 0 wearing a hat?" + SHORT_ANSWER_SUFFIX
    assert set(out["metric"]) == {"vqa_accuracy"} == {data.metric_for("vqav2")}
    meta = json.loads(out["meta"][1])
    assert meta == {
        "question_type": "is the",
        "answer_type": "yes/no",
        "multiple_choice_answer": "yes",
        "image_id": 262149,
    }
    _same_images(out, src)
    answers = out[0]["answers"]
    assert sample_score("vqa_accuracy", "Yes", answers) == 1.0  # 5 or 6 other "yes" -> 1
    # "no": leaving out one of the 3 "no" leaves 2 (2/3), leaving out any other leaves 3 (1)
    assert sample_score("vqa_accuracy", "no", answers) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert sample_score("vqa_accuracy", "maybe", answers) == pytest.approx(9 * (1 / 3) / 10)


def test_vqav2_save_to_disk(tmp_path, monkeypatch):
    src = _vqav2(3)
    DatasetDict({"validation": src, "test": _vqav2(1)}).save_to_disk(str(tmp_path / "vqav2"))
    monkeypatch.setenv("AVL_LAB_DATA_DIR", str(tmp_path))
    out = data.load("vqav2", "eval", limit=2, hub_cache=tmp_path / "hub")
    assert out["id"] == [str(q) for q in src["question_id"][:2]]
    assert out["answers"][0][-1] == "maybe"


@pytest.mark.parametrize(
    ("name", "split", "parts"),
    [
        ("chartqa", "test", ["lmms-lab/ChartQA", "'test'", "type, question, answer, image"]),
        (
            "infovqa",
            "validation",
            ["lmms-lab/DocVQA", "config InfographicVQA", "InfographicVQA/validation-*.parquet"],
        ),
        ("vqav2", "validation", ["lmms-lab/VQAv2", "question_id, question, answers, image"]),
    ],
)
def test_absent_copy_is_a_clear_error(name, split, parts, tmp_path, monkeypatch):
    monkeypatch.setenv("AVL_LAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotAvailableError) as err:
        data.load(name, split, hub_cache=tmp_path / "hub")
    msg = str(err.value)
    for part in [*parts, str(tmp_path / name), "AVL_LAB_DATA_DIR", "path=", "hf download"]:
        assert part in msg, part
    with pytest.raises(DatasetNotAvailableError, match="missing"):
        data.load(name, split, path=tmp_path / "nowhere")


def test_wrong_schema_names_missing_columns(tmp_path):
    (tmp_path / "data").mkdir()
    _chartqa(2).remove_columns(["type"]).to_parquet(str(tmp_path / "data" / "test-0.parquet"))
    with pytest.raises(ValueError, match="lacks column.*'type'"):
        data.load("chartqa", "test", path=tmp_path)


def test_cli_evaluates_chartqa_copy(tmp_path):
    _write(_chartqa(4), tmp_path / "copy", "data/test-0000{}-of-00002.parquet")
    out = tmp_path / "out"
    args = [
        "model=tiny-random-llava",
        "data=chartqa",
        f"data.path={tmp_path / 'copy'}",
        "data.limit=2",
        "generation.max_new_tokens=3",
        "progress=false",
        f"out_dir={out}",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "avl_lab.evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "relaxed_accuracy" and summary["n"] == 2
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["references"] for r in lines] == [["12.5"], ["45%"]]
    assert all(r["prompt"].endswith("Answer the question with a single word.") for r in lines)
    for r in lines:
        assert r["score"] == sample_score("relaxed_accuracy", r["prediction"], r["references"])
    assert summary["score"] == pytest.approx(sum(r["score"] for r in lines) / 2)
