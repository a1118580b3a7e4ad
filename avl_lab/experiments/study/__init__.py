"""Optuna studies over A-VL's parameters: schema, search space, driver, Pareto report."""

from avl_lab.experiments.study.config import StudyConfig, load_study, study_names
from avl_lab.experiments.study.driver import run
from avl_lab.experiments.study.report import write_report

__all__ = ["StudyConfig", "load_study", "run", "study_names", "write_report"]
