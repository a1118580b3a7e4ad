"""OCRBench score (lmms-eval semantics) and exact-match accuracy against hand values."""

import pytest

from avl_lab.metrics import (
    METRIC_NAMES,
    Accuracy,
    OCRBenchScore,
    accuracy,
    build_metric,
    ocrbench_score,
    sample_score,
)

CASES = [
    ("Hello World", ["hello world"], None, 1.0, "case"),
    ("The answer is hello world.", ["Hello World"], None, 1.0, "substring"),
    ("hello", ["hello world"], None, 0.0, "reference longer than prediction"),
    ("  HELLO  ", ["hello"], None, 1.0, "strip"),
    ("", ["hello"], None, 0.0, "empty prediction"),
    ("anything", [""], None, 1.0, "empty reference is a substring of anything"),
    ("", [""], None, 1.0, "both empty"),
    ("line one\nline two", ["one line"], None, 1.0, "newline becomes a space"),
    ("foo", ["bar", "oo"], None, 1.0, "any reference"),
    ("hello, world", ["hello world"], None, 0.0, "no punctuation normalisation"),
    ("two", ["2"], None, 0.0, "no number-word normalisation"),
    ("ＨＥＬＬＯ", ["hello"], None, 1.0, "full-width ASCII folded"),
    ("a\u3000b", ["a b"], None, 1.0, "ideographic space folded"),
    ("x ^ { 2 }", ["x^{2}"], "HME100k", 1.0, "HME100k ignores spaces"),
    ("X^{2}", ["x^{2}"], "HME100k", 0.0, "HME100k is case-sensitive"),
    ("X^{2}", ["x^{2}"], None, 1.0, "other subsets are not"),
    ("a\nb", ["a b"], "HME100k", 1.0, "HME100k newline and spaces"),
    ("12/03/2021", ["12/03/2021"], "IIIT5K", 1.0, "date"),
    ("12/3/2021", ["12/03/2021"], None, 0.0, "date, digit missing"),
]


@pytest.mark.parametrize(
    ("pred", "answers", "subset", "expected", "why"), CASES, ids=[c[4] for c in CASES]
)
def test_ocrbench_hand_values(pred, answers, subset, expected, why):
    assert ocrbench_score(pred, answers, subset) == expected, why


def test_ocrbench_streaming_with_subsets():
    metric = OCRBenchScore()
    metric.update([c[0] for c in CASES], [c[1] for c in CASES], [c[2] for c in CASES])
    assert float(metric.compute()) == pytest.approx(sum(c[3] for c in CASES) / len(CASES))
    with pytest.raises(ValueError, match="dataset names"):
        metric.update(["a", "b"], [["a"], ["b"]], ["HME100k"])


@pytest.mark.parametrize(
    ("pred", "answers", "expected"),
    [
        ("circle", ["circle"], 1.0),
        (" Circle ", ["circle"], 1.0),
        ("circle.", ["circle"], 0.0),
        ("yes", ["no"], 0.0),
        ("", [""], 1.0),
        ("red", ["blue", "RED "], 1.0),
    ],
)
def test_accuracy_exact_match(pred, answers, expected):
    assert accuracy(pred, answers) == expected


def test_accuracy_streaming():
    metric = Accuracy()
    metric.update(["a", "b", "c", "d"], [["a"], ["x"], ["C"], ["d"]])
    assert float(metric.compute()) == 0.75


def test_registry_dispatch():
    assert sorted(METRIC_NAMES) == sorted(
        ["anls", "vqa_accuracy", "ocrbench", "cider", "accuracy", "relaxed_accuracy"]
    )
    assert sample_score("ocrbench", "X^{2}", ["x^{2}"], '{"dataset": "HME100k"}') == 0.0
    assert sample_score("ocrbench", "X^{2}", ["x^{2}"], {"dataset": "IIIT5K"}) == 1.0
    assert sample_score("anls", "helo", ["hello"]) == pytest.approx(0.8)
    assert sample_score("vqa_accuracy", "two", ["2"] * 10) == 1.0
    assert sample_score("accuracy", "Yes", ["yes"]) == 1.0
    assert sample_score("cider", "a dog", ["a dog"]) is None
    assert type(build_metric("vqa_accuracy")).__name__ == "VQAAccuracy"
    with pytest.raises(ValueError, match="unknown metric 'bleu'.*anls"):
        build_metric("bleu")
