"""CIDEr-D, corpus level, equal to pycocoevalcap's ``Cider`` (the one lmms-eval reports).

For tokenised captions (space-separated), n-grams of order 1..4 are weighted by
tf-idf, where the document frequency of an n-gram is the number of *images* whose
references contain it and ``idf = log(#images) - log(max(1, df))``. Per image and order,
each reference contributes the clipped cosine ``Σ min(h, r)·r / (|h|·|r|)`` times the
Gaussian length penalty ``exp(-δ² / 2σ²)`` (σ = 6; δ = difference of the numbers of
bigrams, as in pycocoevalcap); the image score is ``10 ×`` the mean over orders of the
mean over references, and the corpus score is the mean over images (×1 scale;
lmms-eval multiplies by 100 only when printing).

Raw captions are tokenised first (:mod:`avl_lab.metrics.ptb`: PTB under Java as in
lmms-eval, else a Python approximation); :class:`CiderResult` records which.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from avl_lab.metrics._base import as_batch, check_answers, check_prediction
from avl_lab.metrics.ptb import tokenize_captions
from avl_lab.metrics.registry import register_metric

__all__ = ["CIDEr", "CiderResult", "cider", "cider_d", "cider_score"]

Ngram = tuple[str, ...]


@dataclass(frozen=True)
class CiderResult:
    """Outcome of :func:`cider_score`.

    Attributes
    ----------
    score : float
        Corpus CIDEr-D (×1 scale).
    per_image : dict
        Id -> that image's CIDEr-D.
    tokenizer : str
        ``"ptb"``, ``"python"`` or ``"none"`` (input already tokenised).
    """

    score: float
    per_image: dict
    tokenizer: str


def _counts(sentence: str, n: int) -> Counter[Ngram]:
    words = sentence.split()
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D on already tokenised captions.

    Parameters
    ----------
    candidates : sequence of str, length I
        One tokenised candidate per image.
    references : sequence of sequences of str, length I
        The tokenised references of each image (at least one each).
    n : int
        Largest n-gram order.
    sigma : float
        Width of the Gaussian length penalty.

    Returns
    -------
    (float, list of float)
        Corpus score and the per-image scores.
    """
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("cider: the corpus is empty")
    cand = [_counts(c, n) for c in candidates]
    refs = [[_counts(r, n) for r in rs] for rs in references]
    df: Counter[Ngram] = Counter()
    for rs in refs:
        if not rs:
            raise ValueError("cider: every image needs at least one reference")
        df.update(set().union(*rs))
    log_images = math.log(float(len(refs)))

    def vectorise(cnts: Counter[Ngram]) -> tuple[list[dict[Ngram, float]], list[float], int]:
        vec: list[dict[Ngram, float]] = [{} for _ in range(n)]
        sq = [0.0] * n
        bigrams = 0
        for gram, tf in cnts.items():
            k = len(gram) - 1
            w = float(tf) * (log_images - math.log(max(1.0, df.get(gram, 0.0))))
            vec[k][gram] = w
            sq[k] += w * w
            if k == 1:
                bigrams += tf
        return vec, [math.sqrt(s) for s in sq], bigrams

    scores = []
    for c, rs in zip(cand, refs):
        vh, nh, lh = vectorise(c)
        total = [0.0] * n
        for r in rs:
            vr, nr, lr = vectorise(r)
            penalty = math.exp(-(float(lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * (sum(total) / n) / len(rs))
    return sum(scores) / len(scores), scores


def cider_score(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenizer: str = "auto",
) -> CiderResult:
    """Corpus CIDEr-D of raw captions, with the tokenizer used.

    Parameters
    ----------
    predictions : mapping
        Image id -> generated caption.
    references : mapping
        Image id -> reference captions; must have exactly the keys of ``predictions``.
    tokenizer : {"auto", "ptb", "python", "none"}
        ``"none"`` takes the captions as already tokenised.
    """
    if set(predictions) != set(references):
        missing = set(predictions) ^ set(references)
        raise ValueError(
            f"cider: predictions and references differ in ids, e.g. {sorted(map(str, missing))[:5]}"
        )
    ids = list(predictions)
    preds = {i: [check_prediction(predictions[i], "cider")] for i in ids}
    refs = {i: check_answers(references[i], "cider") for i in ids}
    if tokenizer == "none":
        used = "none"
    else:
        preds, used = tokenize_captions(preds, tokenizer)
        refs, _ = tokenize_captions(refs, used)
    score, per = cider_d([preds[i][0] for i in ids], [refs[i] for i in ids])
    return CiderResult(score=score, per_image=dict(zip(ids, per)), tokenizer=used)


def cider(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenizer: str = "auto",
) -> float:
    """Corpus CIDEr-D (×1 scale) of raw captions; see :func:`cider_score`."""
    return cider_score(predictions, references, tokenizer=tokenizer).score


def _encode(obj: object) -> torch.Tensor:
    return torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)


@register_metric("cider")
class CIDEr(Metric):
    """Streaming corpus CIDEr-D.

    Strings cannot be tensor states, so each sample ``[prediction, references]`` is stored
    as its UTF-8 JSON bytes (a ``uint8`` tensor) plus its length, both concatenated across
    processes on sync; ``compute()`` decodes the whole corpus and scores it at once (the
    idf needs every image). After ``compute()``, :attr:`tokenizer_used` says which
    tokenizer ran.

    Parameters
    ----------
    tokenizer : {"auto", "ptb", "python", "none"}
        See :func:`cider_score`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, tokenizer: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        if tokenizer not in ("auto", "ptb", "python", "none"):
            raise ValueError(f"CIDEr: `tokenizer` must be auto|ptb|python|none, got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.tokenizer_used: str | None = None
        self.add_state("data", [], dist_reduce_fx="cat")
        self.add_state("lengths", [], dist_reduce_fx="cat")

    def update(
        self, predictions: str | Sequence[str], answers: Sequence[str] | Sequence[Sequence[str]]
    ) -> None:
        """Add one sample (``str``, ``list[str]``) or a batch."""
        preds, refs = as_batch(predictions, answers)
        for p, r in zip(preds, refs):
            enc = _encode([check_prediction(p, "CIDEr"), check_answers(r, "CIDEr")])
            self.data.append(enc)
            self.lengths.append(torch.tensor([enc.numel()], dtype=torch.long))

    def compute(self) -> torch.Tensor:
        """Corpus CIDEr-D over every sample seen (by every process after sync)."""
        # list states become one concatenated tensor after a distributed sync
        lengths = dim_zero_cat(self.lengths).cpu().tolist() if len(self.lengths) else []
        if not lengths:
            return torch.tensor(float("nan"), dtype=torch.float64)
        data = dim_zero_cat(self.data).cpu()
        chunks = torch.split(data, lengths)
        samples = [json.loads(c.numpy().tobytes().decode("utf-8")) for c in chunks]
        res = cider_score(
            {i: s[0] for i, s in enumerate(samples)},
            {i: s[1] for i, s in enumerate(samples)},
            tokenizer=self.tokenizer,
        )
        self.tokenizer_used = res.tokenizer
        return torch.tensor(res.score, dtype=torch.float64)
