"""ANLS (lmms-eval semantics) against hand-computed values."""

import pytest

from avl_lab.metrics import ANLS, anls

CASES = [
    # (prediction, answers, expected, why)
    ("hello", ["hello"], 1.0, "exact"),
    ("Hello", ["hello"], 1.0, "case-insensitive"),
    ("  hello   world ", ["hello world"], 1.0, "whitespace collapsed"),
    ("helo", ["hello"], 1 - 1 / 5, "one deletion over 5 chars"),
    ("hxllo", ["hello"], 1 - 1 / 5, "one substitution"),
    ("abc", ["xyz"], 0.0, "nothing in common"),
    ("ab", ["abcd"], 0.5, "exactly at the threshold is kept"),
    ("a", ["abc"], 0.0, "1 - 2/3 < 0.5 -> 0"),
    ("", ["abc"], 0.0, "empty prediction"),
    ("", [""], 1.0, "both empty"),
    ("abc", [""], 0.0, "empty reference"),
    ("   ", [""], 1.0, "whitespace-only prediction normalises to empty"),
    ("helo", ["world", "hello"], 0.8, "best of several answers"),
    ("  paris  ", ["pariss"], 1 - 1 / 9, "denominator uses the raw (unstripped) length"),
    ("hello!", ["hello"], 1 - 1 / 6, "punctuation is not removed"),
    ("$1,234.50", ["$1,234.50"], 1.0, "amount"),
    ("1234.50", ["$1,234.50"], 1 - 2 / 9, "two deletions over 9 chars"),
    ("abcdefghij", ["abcdefghxx"], 0.8, "two substitutions over 10"),
    ("INV-48213", ["inv-48213"], 1.0, "id, case"),
    ("12/03/2021", ["12/03/2020"], 0.9, "date, one digit"),
]


@pytest.mark.parametrize(("pred", "answers", "expected", "why"), CASES, ids=[c[3] for c in CASES])
def test_anls_hand_values(pred, answers, expected, why):
    assert anls(pred, answers) == pytest.approx(expected, abs=1e-12), why


def test_anls_threshold_parameter():
    assert anls("helo", ["hello"], threshold=0.9) == 0.0
    assert anls("helo", ["hello"], threshold=0.8) == pytest.approx(0.8)
    assert anls("abc", ["xyz"], threshold=0.0) == 0.0


@pytest.mark.parametrize("bad", [[], "hello", [None]])
def test_anls_rejects_bad_answers(bad):
    with pytest.raises(ValueError, match="answers|answer"):
        anls("hello", bad)


def test_anls_rejects_non_string_prediction():
    with pytest.raises(ValueError, match="prediction"):
        anls(None, ["x"])


def test_anls_streaming_equals_mean_of_plain_function():
    metric = ANLS()
    metric.update([c[0] for c in CASES[:10]], [c[1] for c in CASES[:10]])
    for pred, answers, *_ in CASES[10:]:
        metric.update(pred, answers)
    expected = sum(c[2] for c in CASES) / len(CASES)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().isnan()
