"""Relaxed accuracy (ChartQA, lmms-eval's ``relaxed_correctness``) against hand-computed cases."""

import pytest

from avl_lab.metrics import (
    METRIC_NAMES,
    RelaxedAccuracy,
    build_metric,
    relaxed_accuracy,
    sample_score,
)
from avl_lab.metrics.relaxed_accuracy import relaxed_correctness

CASES = [
    # (prediction, answers, expected, why)
    ("12", ["12.5"], 1.0, "|12 - 12.5| / 12.5 = 4% <= 5%"),
    ("11", ["12.5"], 0.0, "|11 - 12.5| / 12.5 = 12%"),
    ("13.1", ["12.5"], 1.0, "0.6 / 12.5 = 4.8%"),
    ("13.2", ["12.5"], 0.0, "0.7 / 12.5 = 5.6%"),
    ("105", ["100"], 1.0, "exactly 5% is kept (5 / 100 == 0.05)"),
    ("94.9", ["100"], 0.0, "5.1% below"),
    ("1.05", ["1"], 0.0, "float: 0.05000000000000004 > 0.05, as in lmms-eval"),
    ("-10", ["-10.4"], 1.0, "negative target: 0.4 / |-10.4| = 3.8%"),
    ("10", ["-10"], 0.0, "sign matters: 20 / 10"),
    ("45%", ["0.45"], 1.0, "prediction '45%' reads as 0.45"),
    ("0.45", ["45%"], 1.0, "target '45%' reads as 0.45"),
    ("45", ["45%"], 0.0, "45 vs 0.45, and '45' != '45%'"),
    ("45%", ["45%"], 1.0, "both percentages"),
    ("44%", ["45"], 0.0, "0.44 vs 45"),
    ("45 %", ["0.45"], 1.0, "float('45 ') accepts the space before '%'"),
    ("45% ", ["0.45"], 0.0, "a trailing space hides the '%': not a number, strings differ"),
    (" 12 ", ["12"], 1.0, "float() ignores surrounding whitespace"),
    ("1e3", ["1000"], 1.0, "float() reads exponents"),
    ("1,000", ["1000"], 0.0, "float() rejects the comma; strings differ"),
    ("0", ["0"], 1.0, "target 0: string match"),
    ("0.0", ["0"], 0.0, "target 0 is falsy: no tolerance, '0.0' != '0'"),
    ("0.01", ["0"], 0.0, "target 0: no relative tolerance"),
    ("0%", ["0"], 0.0, "target 0: '0%' != '0'"),
    ("Yes", ["yes"], 1.0, "strings: lower-cased"),
    ("NO", ["No"], 1.0, "strings: lower-cased both sides"),
    ("yes ", ["yes"], 0.0, "strings: not stripped (lmms-eval strips nowhere here)"),
    ("Canada", ["canada"], 1.0, "label answer"),
    ("Canad", ["Canada"], 0.0, "no fuzzy string match"),
    ("12", ["twelve"], 0.0, "numeric prediction, non-numeric target: string match"),
    ("twelve", ["12"], 0.0, "non-numeric prediction, numeric target: string match"),
    ("", ["12"], 0.0, "empty prediction"),
    ("nan", ["nan"], 0.0, "'nan' target is a (truthy) number; nan <= 0.05 is False"),
    ("inf", ["5"], 0.0, "infinite prediction"),
    ("12", ["30", "12.4"], 1.0, "max over references"),
    ("abc", ["x", "ABC"], 1.0, "max over references (strings)"),
]


@pytest.mark.parametrize(("pred", "answers", "expected", "why"), CASES, ids=[c[3] for c in CASES])
def test_relaxed_accuracy_hand_values(pred, answers, expected, why):
    assert relaxed_accuracy(pred, answers) == expected, why
    assert sample_score("relaxed_accuracy", pred, answers) == expected


def test_relaxed_correctness_single_target_and_tolerance():
    assert relaxed_correctness("12", "12.5") is True
    assert relaxed_correctness("11", "12.5") is False
    assert relaxed_correctness("11", "12.5", max_relative_change=0.15) is True
    assert relaxed_accuracy("11", ["12.5"], max_relative_change=0.12) == 1.0  # 1.5 / 12.5 = 0.12
    assert relaxed_accuracy("12", ["12.5"], max_relative_change=0.0) == 0.0
    assert relaxed_accuracy("12.5", ["12.5"], max_relative_change=0.0) == 1.0


@pytest.mark.parametrize("bad", [[], "12", [None], [12]])
def test_rejects_bad_answers(bad):
    with pytest.raises(ValueError, match="answers|answer"):
        relaxed_accuracy("12", bad)


def test_rejects_bad_prediction_and_tolerance():
    with pytest.raises(ValueError, match="prediction"):
        relaxed_accuracy(None, ["12"])
    with pytest.raises(ValueError, match="max_relative_change"):
        relaxed_accuracy("12", ["12"], max_relative_change=-0.1)
    with pytest.raises(ValueError, match="max_relative_change"):
        RelaxedAccuracy(max_relative_change=float("nan"))


def test_streaming_equals_mean_and_is_registered():
    assert "relaxed_accuracy" in METRIC_NAMES
    metric = build_metric("relaxed_accuracy")
    assert isinstance(metric, RelaxedAccuracy)
    assert metric.higher_is_better
    metric.update([c[0] for c in CASES[:10]], [c[1] for c in CASES[:10]])
    for pred, answers, *_ in CASES[10:]:
        metric.update(pred, answers)
    expected = sum(c[2] for c in CASES) / len(CASES)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)
    wide = RelaxedAccuracy(max_relative_change=0.15)
    wide.update("11", ["12.5"])
    assert float(wide.compute()) == 1.0
