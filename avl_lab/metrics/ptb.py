"""Caption tokenisation for CIDEr: the PTB tokenizer (Java) or a documented Python fallback.

lmms-eval tokenises captions with pycocoevalcap's ``PTBTokenizer``: Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` run under Java, then drops the punctuation tokens
in :data:`PUNCTUATION_TOKENS`. :func:`tokenize_captions` runs that same command on the jar
shipped inside the ``pycocoevalcap`` package (temp file in the system temp dir, Java's
stderr silenced) when ``java`` is on ``PATH``; otherwise -- or with ``method="python"`` --
it uses :func:`python_tokenize`, a regex approximation of PTB:

* lower-case; ``( ) [ ] { }`` become ``-lrb- -rrb- -lsb- -rsb- -lcb- -rcb-`` (kept, as the
  lower-cased PTB output is not in the punctuation list); double quotes are dropped;
* clitics split off: ``'s 're 've 'll 'd 'm n't`` (``can't`` -> ``ca n't``), ``gonna`` ->
  ``gon na``; ``$ # %`` split from numbers; ``--`` and ``...`` separated;
* trailing ``. , ; : ! ?`` split off, except the period of a dotted abbreviation
  (``u.s.``, ``e.g.``, ``a.``) or a common title (``mr.``, ``dr.`` ...);
  inner punctuation in numbers and hyphenated words (``1,234.50``, ``10:30``, ``top-left``,
  ``cat/dog``) is kept;
* punctuation tokens are removed as in pycocoevalcap.

On plain English captions the two agree token for token (tested when Java is present);
rare constructs (URLs, unusual Unicode) may differ. :func:`tokenize_captions` returns which
method was used so that run summaries can record it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "PUNCTUATION_TOKENS",
    "java_available",
    "ptb_jar",
    "python_tokenize",
    "tokenize_captions",
]

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

PUNCTUATION_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"]
)  # fmt: skip
_PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
_JAR_NAME = "stanford-corenlp-3.4.1.jar"
METHODS = ("auto", "ptb", "python")


def ptb_jar() -> Path | None:
    """Path of the CoreNLP jar (``AVL_LAB_PTB_JAR`` or pycocoevalcap's), or ``None``."""
    env = os.environ.get("AVL_LAB_PTB_JAR")
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    jar = Path(next(iter(spec.submodule_search_locations))) / "tokenizer" / _JAR_NAME
    return jar if jar.is_file() else None


def java_available() -> bool:
    """True when both ``java`` and the PTB jar can be found."""
    return shutil.which("java") is not None and ptb_jar() is not None


def _ptb_lines(lines: list[str]) -> list[str]:
    jar = ptb_jar()
    java = shutil.which("java")
    if jar is None or java is None:
        raise RuntimeError("the PTB tokenizer needs `java` on PATH and pycocoevalcap's jar")
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(lines).encode())
        name = fh.name
    try:
        cmd = [java, "-cp", str(jar), _PTB_CLASS, "-preserveLines", "-lowerCase", name]
        res = subprocess.run(cmd, capture_output=True, check=True)
    finally:
        os.unlink(name)
    out = res.stdout.decode().split("\n")
    if len(out) < len(lines):
        raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATION_TOKENS)
            for line in out[: len(lines)]]  # fmt: skip


_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ",
             "}": " -rcb- "}  # fmt: skip
_TITLES = frozenset(
    [
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "st.",
        "jr.",
        "sr.",
        "prof.",
        "mt.",
        "vs.",
        "etc.",
        "inc.",
        "ltd.",
        "co.",
        "no.",
    ]
)
_ABBREV = re.compile(r"^(?:[a-z]\.)+[a-z]?\.?$")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPECIAL = {"gonna": ["gon", "na"], "wanna": ["wan", "na"], "gotta": ["got", "ta"],
            "cannot": ["can", "not"]}  # fmt: skip
_LEAD = re.compile(r"^([$#'`]+|--)")
_TRAIL = re.compile(r"(\.\.\.|--|[.,;:!?%'`])$")


def _split_word(word: str) -> list[str]:
    head: list[str] = []
    tail: list[str] = []
    while word:
        m = _LEAD.match(word)
        if m is None or m.end() == len(word):
            break
        head.append(m.group(0))
        word = word[m.end() :]
    while word:
        if word in _TITLES or (_ABBREV.match(word) and "." in word):
            break
        m = _TRAIL.search(word)
        if m is None or m.start() == 0:
            break
        tail.insert(0, m.group(0))
        word = word[: m.start()]
    if word in _SPECIAL:
        core = list(_SPECIAL[word])
    else:
        m = _CLITIC.match(word)
        core = [m.group(1), m.group(2)] if m else [word]
    return head + [t for t in core if t] + tail


def python_tokenize(sentence: str) -> str:
    """Tokenise one caption without Java (see the module docstring for the rules).

    Returns the tokens joined by single spaces, punctuation tokens removed.
    """
    text = sentence.lower().replace('"', " ")
    for ch, rep in _BRACKETS.items():
        text = text.replace(ch, rep)
    tokens = [t for w in text.split() for t in _split_word(w)]
    return " ".join(t for t in tokens if t not in PUNCTUATION_TOKENS)


def tokenize_captions(
    captions: Mapping[K, Sequence[str]], method: str = "auto"
) -> tuple[dict[K, list[str]], str]:
    """Tokenise a ``{id: [caption, ...]}`` mapping.

    Parameters
    ----------
    captions : mapping
        Id -> list of raw caption strings.
    method : {"auto", "ptb", "python"}
        ``"auto"`` uses PTB when :func:`java_available`, else Python. If the Java run
        fails under ``"auto"``, a warning is logged and Python is used.

    Returns
    -------
    (dict, str)
        Id -> list of tokenised captions (space-joined), and the method used
        (``"ptb"`` or ``"python"``).
    """
    if method not in METHODS:
        raise ValueError(f"`tokenizer` must be one of {METHODS}, got {method!r}")
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [c.replace("\r", " ").replace("\n", " ") for caps in captions.values() for c in caps]
    used = "ptb" if method == "ptb" or (method == "auto" and java_available()) else "python"
    if used == "ptb":
        try:
            toks = _ptb_lines(lines)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
            if method == "ptb":
                raise
            log.warning("PTB tokenizer failed (%s); using the Python tokenizer", err)
            used = "python"
    if used == "python":
        toks = [python_tokenize(line) for line in lines]
    out: dict[K, list[str]] = {k: [] for k in captions}
    for k, t in zip(keys, toks):
        out[k].append(t)
    return out, used
