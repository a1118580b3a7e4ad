"""Real-benchmark adapters, tested on small parquet files written in each real schema."""

import io
import json

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

import avl_lab.evaluation
from avl_lab import data
from avl_lab.data import DatasetNotAvailableError
from avl_lab.data.schema import CAPTION_PROMPT, SHORT_ANSWER_SUFFIX, row_features

S, INT, L = Value("string"), Value("int64"), List(Value("string"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVL_LAB_CACHE", str(tmp_path / "avl-cache"))


def _img(i: int) -> dict:
    buf = io.BytesIO()
    PILImage.new("RGB", (20 + i, 10), (i * 40 % 256, 100, 200)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _docvqa(n):
    feats = Features(
        {
            "questionId": S,
            "question": S,
            "question_types": L,
            "image": Image(),
            "docId": INT,
            "ucsf_document_id": S,
            "ucsf_document_page_no": S,
            "answers": L,
            "data_split": S,
        }
    )
    rows = {
        "questionId": [str(49153 + i) for i in range(n)],
        "question": [f"what is the date mentioned in letter {i}?" for i in range(n)],
        "question_types": [["handwritten", "form"]] * n,
        "image": [_img(i) for i in range(n)],
        "docId": list(range(14465, 14465 + n)),
        "ucsf_document_id": ["txpp0227"] * n,
        "ucsf_document_page_no": ["10"] * n,
        "answers": [[f"1/8/93 #{i}", f"January 8, 1993 #{i}"] for i in range(n)],
        "data_split": ["val"] * n,
    }
    return Dataset.from_dict(rows, features=feats)


def _textvqa(n):
    feats = Features(
        {
            "image_id": S,
            "question_id": INT,
            "question": S,
            "question_tokens": L,
            "image": Image(),
            "image_width": INT,
            "image_height": INT,
            "flickr_original_url": S,
            "flickr_300k_url": S,
            "answers": L,
            "image_classes": L,
            "set_name": S,
            "ocr_tokens": L,
        }
    )
    rows = {
        "image_id": [f"003a8ae2ef43b90{i}" for i in range(n)],
        "question_id": list(range(34602, 34602 + n)),
        "question": [f"what is the brand of this camera {i}?" for i in range(n)],
        "question_tokens": [["what", "is"]] * n,
        "image": [_img(i) for i in range(n)],
        "image_width": [1024] * n,
        "image_height": [664] * n,
        "flickr_original_url": ["u"] * n,
        "flickr_300k_url": ["u"] * n,
        "answers": [["nous les gosses"] * 7 + ["dakota"] * 3] * n,
        "image_classes": [["Camera"]] * n,
        "set_name": ["val"] * n,
        "ocr_tokens": [["nous"]] * n,
    }
    return Dataset.from_dict(rows, features=feats)


def _ocrbench(n):
    feats = Features(
        {"dataset": S, "question": S, "question_type": S, "answer": L, "image": Image()}
    )
    rows = {
        "dataset": ["IIIT5K", "HME100k"] * (n // 2) + ["IIIT5K"] * (n % 2),
        "question": [" what is written in the image? "] * n,
        "question_type": ["Regular Text Recognition"] * n,
        "answer": [[f"WORD{i}"] for i in range(n)],
        "image": [_img(i) for i in range(n)],
    }
    return Dataset.from_dict(rows, features=feats)


def _nocaps(n):
    feats = Features(
        {
            "image": Image(),
            "image_coco_url": S,
            "image_date_captured": S,
            "image_file_name": S,
            "image_height": INT,
            "image_width": INT,
            "image_id": INT,
            "image_license": INT,
            "image_open_images_id": S,
            "annotations_ids": List(INT),
            "annotations_captions": L,
        }
    )
    rows = {
        "image": [_img(i) for i in range(n)],
        "image_coco_url": ["u"] * n,
        "image_date_captured": ["d"] * n,
        "image_file_name": [f"{i}.jpg" for i in range(n)],
        "image_height": [10] * n,
        "image_width": [20] * n,
        "image_id": list(range(n)),
        "image_license": [0] * n,
        "image_open_images_id": ["x"] * n,
        "annotations_ids": [list(range(10))] * n,
        "annotations_captions": [[f"a dog {i} on grass", f"a brown dog {i}"] for i in range(n)],
    }
    return Dataset.from_dict(rows, features=feats)


def _flickr(n):
    feats = Features({"image": Image(), "caption": L, "sentids": L, "img_id": S, "filename": S})
    rows = {
        "image": [_img(i) for i in range(n)],
        "caption": [[f"two men {i} play", f"men {i} playing"] for i in range(n)],
        "sentids": [["0", "1"]] * n,
        "img_id": [str(100 + i) for i in range(n)],
        "filename": [f"{i}.jpg" for i in range(n)],
    }
    return Dataset.from_dict(rows, features=feats)


MAKERS = {
    "docvqa": (_docvqa, "DocVQA/validation-0000{}-of-00002.parquet"),
    "textvqa": (_textvqa, "data/validation-0000{}-of-00002.parquet"),
    "ocrbench": (_ocrbench, "data/test-0000{}-of-00002.parquet"),
    "nocaps": (_nocaps, "data/validation-0000{}-of-00002.parquet"),
    "flickr30k": (_flickr, "data/test-0000{}-of-00002.parquet"),
}
SPLIT = {
    "docvqa": "validation",
    "textvqa": "validation",
    "ocrbench": "test",
    "nocaps": "validation",
    "flickr30k": "test",
}


def _write_hub_layout(root, name, n=5):
    """Write ``n`` rows as two parquet shards in the hub repo's layout (plus a decoy split)."""
    make, pattern = MAKERS[name]
    ds = make(n)
    ds.select(range(3)).to_parquet(str(root / pattern.format(0)))
    ds.select(range(3, n)).to_parquet(str(root / pattern.format(1)))
    decoy = root / pattern.replace(SPLIT[name], "train").format(0)
    make(2).to_parquet(str(decoy))
    if name == "docvqa":  # another config of the same repo must be ignored
        make(2).to_parquet(str(root / "InfographicVQA" / "validation-00000-of-00001.parquet"))
    return ds


def _check_rows(name, out, src):
    assert out.features == row_features()
    assert len(out) == len(src)
    src_rows = src.cast_column("image", Image(decode=False)).to_list()
    for i, (row, s) in enumerate(zip(out, src_rows)):
        assert row["metric"] == data.metric_for(name)
        meta = json.loads(row["meta"])
        assert list(row["image"].getdata()) == list(
            PILImage.open(io.BytesIO(s["image"]["bytes"])).getdata()
        )
        if name == "docvqa":
            assert row["id"] == s["questionId"] and row["answers"] == s["answers"]
            assert (
                row["prompt"]
                == s["question"] + "\nAnswer the question using a single word or phrase."
            )
            assert meta["docId"] == s["docId"]
        elif name == "textvqa":
            assert row["id"] == str(s["question_id"]) and len(row["answers"]) == 10
            assert row["prompt"] == s["question"].capitalize() + SHORT_ANSWER_SUFFIX
            assert row["prompt"].startswith("What is the brand")
        elif name == "ocrbench":
            assert row["id"] == f"ocrbench-{i:04d}" and row["answers"] == s["answer"]
            assert row["prompt"] == row["question"] == "what is written in the image?"
            assert meta == {"dataset": s["dataset"], "question_type": s["question_type"]}
        elif name == "nocaps":
            assert row["id"] == str(s["image_id"]) and row["answers"] == s["annotations_captions"]
            assert row["prompt"] == CAPTION_PROMPT
        else:
            assert row["id"] == s["img_id"] and row["answers"] == s["caption"]
            assert row["prompt"] == row["question"] == CAPTION_PROMPT


@pytest.mark.parametrize("name", list(MAKERS))
def test_adapter_reads_hub_layout_from_path(name, tmp_path):
    for sub in ("data", "DocVQA", "InfographicVQA"):
        (tmp_path / sub).mkdir()
    src = _write_hub_layout(tmp_path, name)
    out = data.load(name, SPLIT[name], path=tmp_path)
    _check_rows(name, out, src)
    assert list((tmp_path / "avl-cache" / "parquet").iterdir())  # converted under our cache root
    head = data.load(name, "eval", limit=4, path=tmp_path)  # limit crosses the shard boundary
    assert head["id"] == out["id"][:4]


def test_data_dir_env_with_hub_id_layout(tmp_path, monkeypatch):
    root = tmp_path / "lmms-lab" / "flickr30k" / "data"
    root.mkdir(parents=True)
    src = _write_hub_layout(tmp_path / "lmms-lab" / "flickr30k", "flickr30k")
    monkeypatch.setenv("AVL_LAB_DATA_DIR", str(tmp_path))
    _check_rows("flickr30k", data.load("flickr30k", "test", hub_cache=tmp_path / "hub"), src)


def test_save_to_disk_layout(tmp_path, monkeypatch):
    src = _textvqa(4)
    DatasetDict({"validation": src, "train": _textvqa(2)}).save_to_disk(str(tmp_path / "textvqa"))
    monkeypatch.setenv("AVL_LAB_DATA_DIR", str(tmp_path))
    _check_rows("textvqa", data.load("textvqa", "validation", hub_cache=tmp_path / "hub"), src)
    assert len(data.load("textvqa", "validation", limit=2, hub_cache=tmp_path / "hub")) == 2


def test_absent_benchmark_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AVL_LAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotAvailableError) as err:
        data.load("docvqa", "validation", hub_cache=tmp_path / "hub")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for part in (
        "lmms-lab/DocVQA",
        "config DocVQA",
        "'validation'",
        "AVL_LAB_DATA_DIR",
        "path=",
        "DocVQA/validation-*.parquet",
        "questionId, question, answers, image",
        str(tmp_path / "docvqa"),
        "hf download",
    ):
        assert part in msg, part
    with pytest.raises(DatasetNotAvailableError, match="missing"):
        data.load("ocrbench", "test", path=tmp_path / "nowhere")


def test_wrong_schema_names_missing_columns(tmp_path):
    (tmp_path / "data").mkdir()
    _nocaps(3).remove_columns(["annotations_captions"]).to_parquet(
        str(tmp_path / "data" / "validation-0.parquet")
    )
    with pytest.raises(ValueError, match="annotations_captions"):
        data.load("nocaps", "validation", path=tmp_path)


def test_rows_without_answers_stay_and_limit_counts_answered_rows(tmp_path):
    ds = _docvqa(5)
    ds = ds.map(lambda r, i: {"answers": [] if i in (1, 2) else r["answers"]}, with_indices=True)
    (tmp_path / "DocVQA").mkdir()
    ds.to_parquet(str(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet"))
    out = data.load("docvqa", "validation", path=tmp_path)
    assert out["id"] == ["49153", "49154", "49155", "49156", "49157"]
    assert [bool(a) for a in out["answers"]] == [True, False, False, True, True]
    two = data.load("docvqa", "validation", path=tmp_path, limit=2)  # two rows with answers
    assert two["id"] == ["49153", "49154", "49155", "49156"]


def test_rows_without_answers_are_skipped_and_counted(tmp_path):
    ds = _docvqa(4).map(lambda r, i: {"answers": [] if i == 1 else r["answers"]}, with_indices=True)
    (tmp_path / "DocVQA").mkdir()
    ds.to_parquet(str(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet"))
    with pytest.warns(UserWarning, match="no reference answers"):
        summary = avl_lab.evaluation.evaluate(
            ["model=tiny-random-llava", "data=docvqa", f"data.path={tmp_path}", "data.limit=2",
             "generation.max_new_tokens=2", "progress=false", f"out_dir={tmp_path / 'out'}"])
    assert summary.n == 2 and summary.skipped == 1
    assert summary.skipped_reasons == {"no reference answers": 1}


def test_easy_vqa_package_data():
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_test_questions()
    ds = data.load("easy-vqa", "eval", limit=5)
    assert ds.features == row_features()
    assert ds["question"] == texts[:5]
    assert ds["answers"] == [[a] for a in answers[:5]]
    assert ds["prompt"][0] == texts[0] + SHORT_ANSWER_SUFFIX
    assert [json.loads(m)["image_id"] for m in ds["meta"]] == image_ids[:5]
    assert ds[0]["image"].size == (64, 64) and set(ds["metric"]) == {"accuracy"}
    assert len(data.load("easy-vqa", "train", limit=3)) == 3
