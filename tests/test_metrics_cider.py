"""CIDEr-D parity with pycocoevalcap's ``Cider`` (the scorer lmms-eval uses)."""

import random

import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from avl_lab.metrics import CIDEr, cider, cider_score, java_available, tokenize_captions
from avl_lab.metrics import ptb as ptb_mod
from avl_lab.metrics.ptb import python_tokenize

needs_java = pytest.mark.skipif(not java_available(), reason="PTB tokenizer needs Java")

_VOCAB = (
    "a an the small large red blue green yellow purple circle square triangle diamond at top "
    "left right bottom center and with of in on dog cat man woman two three sitting next to"
)
WORDS = _VOCAB.split()
PUNCT = ["", "", "", ".", ",", "!", "'s", " (big)", " -- ok"]


def _sentence(rng: random.Random, punct: bool) -> str:
    words = [
        rng.choice(WORDS) + (rng.choice(PUNCT) if punct else "") for _ in range(rng.randint(1, 12))
    ]
    s = " ".join(words)
    return s[0].upper() + s[1:] if punct else s


def _corpus(n_images: int, seed: int, punct: bool):
    rng = random.Random(seed)
    preds = {f"img{i}": _sentence(rng, punct) for i in range(n_images)}
    refs = {f"img{i}": [_sentence(rng, punct) for _ in range(5)] for i in range(n_images)}
    # some exact hits and a degenerate empty caption
    preds["img0"] = refs["img0"][2]
    preds["img1"] = ""
    return preds, refs


def _reference(preds, refs):
    score, per = Cider().compute_score(refs, {k: [v] for k, v in preds.items()})
    return score, dict(zip(refs, per))


@pytest.mark.parametrize("seed", [0, 1])
def test_cider_d_equals_pycocoevalcap_on_tokenised_input(seed):
    preds, refs = _corpus(60, seed, punct=False)
    ref_score, ref_per = _reference(preds, refs)
    res = cider_score(preds, refs, tokenizer="none")
    assert res.tokenizer == "none"
    assert res.score == pytest.approx(ref_score, abs=1e-6)
    assert ref_score > 0.05  # non-trivial corpus
    for k in preds:
        assert res.per_image[k] == pytest.approx(ref_per[k], abs=1e-6)


@needs_java
def test_cider_pipeline_equals_lmms_eval_pipeline():
    """Raw captions -> PTB tokenizer -> CIDEr, as lmms-eval's nocaps/flickr30k aggregation."""
    preds, refs = _corpus(55, 7, punct=True)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in preds.items()})
    ref_score, _ = Cider().compute_score(gts, res)
    out = cider_score(preds, refs)
    assert out.tokenizer == "ptb"
    assert out.score == pytest.approx(ref_score, abs=1e-6)
    assert cider(preds, refs, tokenizer="ptb") == pytest.approx(ref_score, abs=1e-6)


SENTENCES = [
    "A cat/dog on a mat.",
    "",
    "The U.S. flag.",
    "It's 50% off & free!",
    "cats' toys -- great...",
    "Mr. Smith's car [red] {blue}",
    "a  b\tc",
    "I can't; won't: gonna",
    '"Hello," she said.',
    "e.g. 3.5 1,234 $5 10:30 #1 @home",
    "A small red circle in the top-left corner.",
    "There are 3 shapes: a small red circle, a large blue square and a green triangle.",
    "Two dogs (a puppy) playing in the snow!",
]


@needs_java
def test_python_tokenizer_matches_ptb_on_common_captions():
    caps = {i: [s] for i, s in enumerate(SENTENCES)}
    ptb, used = tokenize_captions(caps, "ptb")
    assert used == "ptb"
    assert PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in caps.items()}) == ptb
    for i, s in enumerate(SENTENCES):
        assert python_tokenize(s) == ptb[i][0], s


def test_python_tokenizer_hand_cases():
    assert (
        python_tokenize("A man's dog, running (fast)!") == "a man 's dog running -lrb- fast -rrb-"
    )
    assert python_tokenize("I can't.") == "i ca n't"
    assert python_tokenize("Costs $1,234.50 -- now") == "costs $ 1,234.50 now"


def test_auto_falls_back_to_python_without_java(monkeypatch):
    monkeypatch.setattr(ptb_mod, "java_available", lambda: False)
    preds, refs = _corpus(50, 3, punct=True)
    out = cider_score(preds, refs)
    assert out.tokenizer == "python"
    toks_p = {k: [python_tokenize(v)] for k, v in preds.items()}
    toks_r = {k: [python_tokenize(c) for c in v] for k, v in refs.items()}
    ref_score, _ = Cider().compute_score(toks_r, toks_p)
    assert out.score == pytest.approx(ref_score, abs=1e-6)


def test_cider_input_errors():
    with pytest.raises(ValueError, match="ids"):
        cider({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="empty"):
        cider({"a": "x"}, {"a": []})
    with pytest.raises(ValueError, match="tokenizer"):
        cider({"a": "x"}, {"a": ["x"]}, tokenizer="spacy")


def test_cider_streaming_metric_equals_function():
    preds, refs = _corpus(50, 11, punct=False)
    keys = list(preds)
    metric = CIDEr(tokenizer="python")
    metric.update([preds[k] for k in keys[:20]], [refs[k] for k in keys[:20]])
    for k in keys[20:]:
        metric.update(preds[k], refs[k])
    expected = cider(preds, refs, tokenizer="python")
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)
    assert metric.tokenizer_used == "python"
