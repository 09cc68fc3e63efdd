"""Evaluation: named threat models (suite), the runner with per-image verdicts, restore for
inference, the gradient-masking checks, reports and figures."""

from menet_jax.evaluation import report, sanity, suite
from menet_jax.evaluation.restore import Restored, load, read_config
from menet_jax.evaluation.runner import (Row, RowStore, context, evaluate, gradient_check,
                                         run_attack, worst_case)

__all__ = ["Restored", "Row", "RowStore", "context", "evaluate", "gradient_check", "load",
           "read_config", "report", "run_attack", "sanity", "suite", "worst_case"]
