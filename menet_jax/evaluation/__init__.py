"""Evaluation: any classifier behind any defense against named threat models (suite), in one
call (`evaluate`) or through the runner (`runner.run`), with per-image verdicts, the sanity
checks against gradient masking, reports and figures. `restore` bridges to this project's
trained runs; nothing else here knows training."""

from menet_jax.evaluation import curves, report, sanity, suite
from menet_jax.evaluation.api import Result, evaluate
from menet_jax.evaluation.config import EvalConfig, Plan
from menet_jax.evaluation.restore import Restored, load, load_plugins, read_config
from menet_jax.evaluation.runner import (Row, RowStore, context, gradient_check, run, run_attack,
                                         worst_case)
from menet_jax.evaluation.target import Target

__all__ = ["EvalConfig", "Plan", "Restored", "Result", "Row", "RowStore", "Target", "context",
           "curves", "evaluate", "gradient_check", "load", "load_plugins", "read_config",
           "report", "run", "run_attack", "sanity", "suite", "worst_case"]
