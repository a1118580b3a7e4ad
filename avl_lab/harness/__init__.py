"""avl_lab inside lmms-eval, the field's evaluation harness.

* the model ``avl_lab`` (entry point ``lmms_eval.models``, :mod:`avl_lab.harness.manifest`):
  ``lmms-eval --model avl_lab --model_args pretrained=avl-tiny,policy=avl,S=45,C=30,K=3 ...``
  (:mod:`avl_lab.harness.model`; its ``--model_args``: :mod:`avl_lab.harness.model_args`);
* task YAMLs for the embedded synthetic tasks, with their rows as parquet files, in
  :data:`TASKS_DIR` (``--include_path "$(python -m avl_lab.harness)"``), scored by lmms-eval's
  own metric code (:mod:`avl_lab.harness.scoring`); :mod:`avl_lab.harness.export` rewrites the
  parquet files.

Needs the ``lmms`` extra (``pip install 'avl_lab[lmms]'``); nothing here imports lmms-eval
until lmms-eval loads the model or a task.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TASKS", "TASKS_DIR"]

#: The folder to pass to lmms-eval's ``--include_path``.
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
#: lmms-eval task name -> (avl_lab task, rows shipped: the first N of its ``eval`` split).
TASKS = {
    "avl_synth_docvqa": ("synth-docvqa", 64),
    "avl_synth_textvqa": ("synth-textvqa", 64),
    "avl_synth_ocr": ("synth-ocr", 64),
}
