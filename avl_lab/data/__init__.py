"""Datasets for avl_lab: embedded synthetic tasks, easy-VQA and real benchmarks, one schema.

>>> from avl_lab import data
>>> ds = data.load("synth-docvqa", "eval", limit=16)   # a datasets.Dataset
>>> data.names()          # registered names
>>> data.metric_for("docvqa")
'anls'

Row schema (every dataset; see :mod:`avl_lab.data.schema`):

* ``id`` (str, unique within the split)
* ``image`` (``datasets.Image()``: a PIL image on access)
* ``question`` (str, the raw question; the caption instruction for caption tasks)
* ``prompt`` (str, the full instruction for the model -- lmms-eval's default prompt,
  e.g. DocVQA: ``question + "\\nAnswer the question using a single word or phrase."``;
  captions: ``"Provide a one-sentence caption for the provided image."``)
* ``answers`` (list[str], the references, at least one)
* ``metric`` (str: ``anls`` | ``vqa_accuracy`` | ``ocrbench`` | ``cider`` | ``accuracy`` |
  ``relaxed_accuracy``, the name understood by :func:`avl_lab.metrics.build_metric`)
* ``meta`` (str, a JSON object with task extras; OCRBench rows carry ``dataset`` and
  ``question_type``)

Registered names and splits:

=============  ================  ============  =====================================================
name           metric            splits        source
=============  ================  ============  =====================================================
synth-docvqa   anls              train, eval   grid-text forms/receipts (160 px)
synth-textvqa  vqa_accuracy      train, eval   grid-text signs in scenes (160 px)
synth-ocr      ocrbench          train, eval   grid-text images (160 px)
synth-caption  cider             train, eval   generated shape scenes (160 px), 5 captions
easy-vqa       accuracy          train, test   the ``easy-vqa`` PyPI package (64 px)
docvqa         anls              validation    local copy of lmms-lab/DocVQA (config DocVQA)
textvqa        vqa_accuracy      validation    local copy of lmms-lab/textvqa
ocrbench       ocrbench          test          local copy of echo840/OCRBench
nocaps         cider             validation    local copy of lmms-lab/NoCaps
flickr30k      cider             test          local copy of lmms-lab/flickr30k
chartqa        relaxed_accuracy  test          local copy of lmms-lab/ChartQA
infovqa        anls              validation    local copy of lmms-lab/DocVQA (config InfographicVQA)
vqav2          vqa_accuracy      validation    local copy of lmms-lab/VQAv2
synth-docvqa-2x2 anls            train, eval   forms whose glyphs span 2 x 2 patches (160 px)
=============  ================  ============  =====================================================

The text of the synthetic tasks is drawn on a 16 x 16 character grid (one monospace capital
per 10 px cell = one ViT patch at 160 px, see :mod:`avl_lab.data.grid`).

``eval`` also works for every dataset (and ``test``/``validation`` for the synthetic ones).
Synthetic tasks take their config fields as keyword arguments (``seed``, ``image_size``,
e.g. ``min_fields``/``max_fields`` for a curriculum) and ``cache=False``; real benchmarks
take ``path=``. :func:`sample_row` generates one synthetic row on the fly (same stream as
``load``) for endless training data. Corrupt images: read rows through
:func:`iter_valid_rows`, which skips undecodable images with a warning and counts them in
a :class:`SkippedRows` for the run summary (or decode single values with
:func:`safe_image`).
"""

# import order is registration order, i.e. the order of names()
from avl_lab.data import synth_docvqa, synth_textvqa, synth_ocr, synth_caption  # isort: skip
from avl_lab.data import easy_vqa, lmms  # isort: skip
from avl_lab.data import synth_docvqa_2x2  # isort: skip  (the premise variant, issue 19)
from avl_lab.data.cache_dir import cache_root
from avl_lab.data.images import CorruptImageWarning, SkippedRows, iter_valid_rows, safe_image
from avl_lab.data.lmms import DatasetNotAvailableError
from avl_lab.data.registry import TaskSpec, get, load, metric_for, names, register
from avl_lab.data.schema import COLUMNS, row_features
from avl_lab.data.synth import sample_row

__all__ = [
    "COLUMNS",
    "CorruptImageWarning",
    "DatasetNotAvailableError",
    "SkippedRows",
    "TaskSpec",
    "cache_root",
    "easy_vqa",
    "get",
    "iter_valid_rows",
    "lmms",
    "load",
    "metric_for",
    "names",
    "register",
    "row_features",
    "safe_image",
    "sample_row",
    "synth_caption",
    "synth_docvqa",
    "synth_docvqa_2x2",
    "synth_ocr",
    "synth_textvqa",
]
