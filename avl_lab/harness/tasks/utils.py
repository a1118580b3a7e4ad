"""lmms-eval task functions of the avl_lab tasks (``!function utils.<name>`` in the YAMLs);
the code lives in :mod:`avl_lab.harness.scoring`."""

from avl_lab.harness.scoring import doc_to_text, doc_to_visual, process_results

__all__ = ["doc_to_text", "doc_to_visual", "process_results"]
