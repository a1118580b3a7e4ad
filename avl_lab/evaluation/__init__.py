"""The evaluation runner: configs, Lightning module and data module, records and summary."""

from avl_lab.evaluation.cached import evaluate_policy
from avl_lab.evaluation.config import ConfigError, EvalConfig, load_config, result_key
from avl_lab.evaluation.runner import evaluate
from avl_lab.evaluation.summary import Summary

__all__ = [
    "ConfigError", "EvalConfig", "Summary", "evaluate", "evaluate_policy", "load_config",
    "result_key",
]
