"""Our metrics equal lmms-eval's own code, per sample, on tricky predictions: case, punctuation,
whitespace, numbers, percentages, articles, near-misses (ANLS's threshold), full-width forms.

The references are lmms-eval 0.7.3's functions, imported from the installed package:
``lmms_eval.api.metrics.anls`` (DocVQA, InfoVQA), ``tasks/textvqa/utils.textvqa_process_results``
(TextVQA, VQAv2's rule), ``tasks/ocrbench/utils.ocrbench_process_results`` and
``tasks/chartqa/utils.relaxed_correctness`` (through ``chartqa_process_results``).
"""

from __future__ import annotations

import copy

import pytest
from lmms_eval.api.metrics import anls as lmms_anls
from lmms_eval.tasks.chartqa.utils import chartqa_process_results
from lmms_eval.tasks.ocrbench.utils import ocrbench_process_results
from lmms_eval.tasks.textvqa.utils import textvqa_process_results

from avl_lab.harness.scoring import lmms_score
from avl_lab.metrics import anls, ocrbench_score, relaxed_accuracy, vqa_accuracy

ANLS_CASES = [
    ("$743.47", ["$743.47"]), ("$74344", ["$743.47"]), ("$743.4", ["$743.47"]),
    ("743.47", ["$743.47"]), ("  Total:  $743.47 ", ["total: $743.47"]), ("JOHN SMITH", ["John Smith"]),
    ("john  smith", ["John Smith"]), ("J. Smith", ["John Smith", "J Smith"]), ("", ["abc"]),
    ("abc", [""]), ("", [""]), ("Smith", ["John Smith"]), ("ab", ["abcd"]), ("abcd", ["ab"]),
    ("a b", ["ab"]), ("INV-JYN40", ["inv-jyn40"]), ("INV-JYN4O", ["INV-JYN40"]),
    ("12/05/2019", ["12-05-2019", "5 Dec 2019"]), ("The answer is 42.", ["42"]),
    ("Ü-Straße", ["ü-strasse"]),
    ("  $743.4  ", ["$743.47"]), ("john   smyth", ["John Smith"]),  # raw lengths as denominators ("\tnew\nline ", ["new line"]), ("1,000", ["1000", "1,000.00"]),
]

VQA_CASES = [
    ("yes", ["yes"] * 10), ("Yes.", ["yes"] * 7 + ["no"] * 3), ("two", ["2"] * 4 + ["two"] * 6),
    ("2", ["two"] * 10), ("a dog", ["dog"] * 3 + ["the dog"] * 7), ("The Dog!", ["dog"] * 10),
    ("dont", ["don't"] * 10), ("coca-cola", ["coca cola"] * 5 + ["coca-cola"] * 5),
    ("STOP", ["stop"] * 2 + ["halt"] * 8), ("stop", ["stop"] * 1 + ["halt"] * 9),
    ("stop", ["stop"] * 3 + ["halt"] * 7), ("10:30", ["10:30"] * 10), ("3.5", ["3.5", "35"] * 5),
    ("ten", ["10"] * 10), ("none", ["0"] * 10), ("square summit", ["square summit"] * 2),
    ("x", ["x"]), ("", ["yes"] * 10), ("red, white", ["red white"] * 10), ("1,000", ["1000"] * 10),
]

OCR_CASES = [
    ("BEAR 8061 HARBOR", ["BEAR 8061 HARBOR"], ""), ("bear 8061 harbor.", ["BEAR 8061 HARBOR"], ""),
    ("The text is: BEAR 8061", ["bear 8061 harbor"], ""), ("  hello\nworld ", ["hello world"], ""),
    ("ＨＥＬＬＯ", ["hello"], ""), ("hello", ["ＨＥＬＬＯ"], ""), ("8O61", ["8061"], ""),
    ("x^{2} + 1", ["x^{2}+1"], "HME100k"), ("X^{2}+1", ["x^{2}+1"], "HME100k"),
    ("\\frac {a} {b}", ["\\frac{a}{b}", "a/b"], "HME100k"), ("", ["a"], ""), ("abc", ["b", "z"], ""),
]

CHART_CASES = [
    ("105", "100"), ("106", "100"), ("95", "100"), ("94.9", "100"), ("1.05", "1"), ("45%", "0.45"),
    ("0.45", "45%"), ("47%", "45%"), ("0", "0"), ("0.0", "0"), ("1", "0"), ("Yes", "yes"),
    (" 12", "12"), ("12 ", "12"), ("1,000", "1000"), ("nan", "nan"), ("inf", "inf"), ("-5", "5"),
    ("1e3", "1000"), ("Blue", "blue "), ("2019", "2018"), ("", "0"), ("%", "%"), ("12%", "12"),
]


@pytest.mark.parametrize(("pred", "answers"), ANLS_CASES)
def test_anls_equals_lmms_eval(pred, answers):
    want = lmms_anls(references=list(answers), predictions=[pred])["anls"]
    assert anls(pred, answers) == want
    assert lmms_score("anls", pred, answers) == want


@pytest.mark.parametrize(("pred", "answers"), VQA_CASES)
def test_vqa_accuracy_equals_lmms_eval(pred, answers):
    doc = {"answers": list(answers), "question_id": 1}
    want = textvqa_process_results(copy.deepcopy(doc), [pred])["exact_match"]
    assert vqa_accuracy(pred, answers) == pytest.approx(want, abs=1e-12)
    assert lmms_score("vqa_accuracy", pred, answers) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(("pred", "answers", "subset"), OCR_CASES)
def test_ocrbench_equals_lmms_eval(pred, answers, subset):
    doc = {"answer": list(answers), "dataset": subset, "question_type": "Regular Text Recognition"}
    want = ocrbench_process_results(doc, [pred])["ocrbench_accuracy"]["score"]
    assert ocrbench_score(pred, answers, subset or None) == want
    meta = f'{{"dataset": "{subset}"}}' if subset else None
    assert lmms_score("ocrbench", pred, answers, meta) == want


@pytest.mark.parametrize(("pred", "target"), CHART_CASES)
def test_relaxed_accuracy_equals_lmms_eval(pred, target):
    doc = {"type": "human_test", "answer": target}
    want = chartqa_process_results(doc, [pred])["relaxed_overall"]
    assert relaxed_accuracy(pred, [target]) == want
    assert lmms_score("relaxed_accuracy", pred, [target]) == want


def test_cases_are_tricky():
    """The tables reach both outcomes and the in-between values, so a wrong rule shows."""
    anls_values = {lmms_anls(references=a, predictions=[p])["anls"] for p, a in ANLS_CASES}
    assert {0.0, 1.0} < anls_values and any(0.5 <= v < 1 for v in anls_values)
    vqa_values = {textvqa_process_results({"answers": list(a), "question_id": 0}, [p])["exact_match"]
                  for p, a in VQA_CASES}
    assert {0.0, 1.0} < vqa_values and len(vqa_values) >= 4
    chart = [chartqa_process_results({"type": "x", "answer": t}, [p])["relaxed_overall"]
             for p, t in CHART_CASES]
    assert 0 < sum(chart) < len(chart)
