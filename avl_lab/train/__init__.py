"""Training of the embedded ``avl-tiny`` model with Lightning (``python -m avl_lab.train``)."""

from avl_lab.train.config import TASKS, TrainConfig, load_train_config
from avl_lab.train.run import export, train

__all__ = ["TASKS", "TrainConfig", "export", "load_train_config", "train"]
