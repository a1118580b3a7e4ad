"""EvalAI answer normalisation, as used by VQA / TextVQA accuracy in lmms-eval.

A reimplementation of the behaviour of lmms-eval's ``EvalAIAnswerProcessor`` (itself taken
from the official VQA evaluation), step by step:

1. lower-case; delete ``,`` and ``?``; ``'s`` becomes `` 's``; newlines/tabs become spaces;
   strip.
2. punctuation: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` -- if it occurs
   next to a space anywhere in the (step-1) text it is deleted, otherwise it is replaced by
   a space. (The reference also deletes when the text has a digit-comma-digit run, which
   step 1 makes impossible.)
3. periods not followed by a digit are deleted -- at most 32 of them, because the reference
   passes ``re.UNICODE`` (= 32) as the ``count`` argument of ``re.sub``.
4. per whitespace-separated word: number words ``none, zero .. ten`` become digits,
   articles ``a an the`` are dropped, and contractions written without their apostrophes
   are restored (``dont`` -> ``don't``); words are joined by single spaces.

Quirks of the reference are kept on purpose (for score parity): ``somebody'd`` becomes
``somebodyd``, and the reference's upper-case keys (``Im``, ``Ive``, ``Id've``) can never
match after lower-casing, so ``im`` stays ``im``.
"""

from __future__ import annotations

import re

# Canonical contractions; the lookup table maps every spelling with exactly one apostrophe
# removed to the canonical form (this reproduces the reference table entry for entry).
# fmt: off
_CANONICAL_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't",
    "don't", "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd",
    "how'll", "how's", "isn't", "it'd", "it'd've", "it'll", "ma'am", "mightn't", "mightn't've",
    "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "'ow's'at",
    "shan't", "she'd've", "should've", "shouldn't", "shouldn't've", "somebody'd've",
    "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's",
    "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've",
    "there're", "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas",
    "wasn't", "we'd've", "we've", "weren't", "what'll", "what're", "what's", "what've", "when's",
    "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who's", "who've", "why'll",
    "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll",
    "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)
# fmt: on


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for canon in _CANONICAL_CONTRACTIONS:
        for pos, ch in enumerate(canon):
            if ch == "'":
                table[canon[:pos] + canon[pos + 1 :]] = canon
    table["somebody'd"] = "somebodyd"  # reference quirk
    return table


CONTRACTIONS: dict[str, str] = _contraction_table()
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")  # fmt: skip
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32  # re.UNICODE passed as `count` in the reference


def _word_tokenize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip()


def _strip_punctuation(text: str) -> str:
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _digits_articles_contractions(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way EvalAI / lmms-eval's TextVQA scorer does.

    Parameters
    ----------
    text : str
        A prediction or a reference answer.

    Returns
    -------
    str
        The normalised answer; two answers match when their normalised forms are equal.

    Examples
    --------
    >>> normalize_answer("The Two Dogs!")
    '2 dogs'
    """
    text = _word_tokenize(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    return _digits_articles_contractions(text)
