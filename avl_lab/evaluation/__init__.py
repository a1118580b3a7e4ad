"""The evaluation runner: configs, Lightning module and data module, records and summary."""

from avl_lab.evaluation.config import ConfigError, EvalConfig, load_config, result_key
from avl_lab.evaluation.runner import evaluate
from avl_lab.evaluation.summary import Summary

__all__ = ["ConfigError", "EvalConfig", "Summary", "evaluate", "load_config", "result_key"]
