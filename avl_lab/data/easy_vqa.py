"""``easy-vqa``: the easy-VQA data set from the ``easy-vqa`` PyPI package; exact-match accuracy.

Real third-party data (64 x 64 PNG scenes of one coloured shape, questions such as "what
shape is in the image?" or "is there a blue shape?", one-word answers), bundled in the
package: 38,575 train and 9,673 test questions over 4,000 and 1,000 images. Images are
kept at their native 64 px; the model's processor resizes them.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from avl_lab.data.registry import register
from avl_lab.data.schema import dump_meta, row_features, short_answer_prompt

__all__ = ["load_easy_vqa"]


def _questions(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    try:
        import easy_vqa
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("easy-vqa needs the `easy-vqa` package: pip install easy-vqa") from err
    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    return texts, answers, image_ids, paths


@register(
    "easy-vqa",
    metric="accuracy",
    splits=("train", "test"),
    aliases={"eval": "test", "validation": "test", "val": "test"},
    kind="package",
    description="easy-VQA (PyPI `easy-vqa`): simple shapes, one-word answers",
)
def load_easy_vqa(split: str, limit: int | None, path: str | None = None) -> Dataset:
    """Rows of easy-VQA's ``train`` or ``test`` split, in question order.

    ``path`` is accepted for a uniform ``load`` signature and must be ``None`` (the data
    ships inside the package).
    """
    if path is not None:
        raise ValueError(
            f"easy-vqa is read from the easy-vqa package: `path` must be None, got {path!r}"
        )
    texts, answers, image_ids, paths = _questions(split)
    n = len(texts) if limit is None else min(limit, len(texts))
    image_bytes: dict[int, bytes] = {}
    rows: dict[str, list] = {c: [] for c in row_features()}
    for i in range(n):
        img_id = int(image_ids[i])
        if img_id not in image_bytes:
            image_bytes[img_id] = Path(paths[img_id]).read_bytes()
        question = texts[i]
        rows["id"].append(f"easy-vqa-{split}-{i:06d}")
        rows["image"].append({"bytes": image_bytes[img_id], "path": None})
        rows["question"].append(question)
        rows["prompt"].append(short_answer_prompt(question))
        rows["answers"].append([answers[i]])
        rows["metric"].append("accuracy")
        rows["meta"].append(dump_meta({"image_id": img_id}))
    return Dataset.from_dict(rows, features=row_features())
