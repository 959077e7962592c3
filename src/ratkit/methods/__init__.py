"""Training methods: base methods (AT, TRADES, MART) and the wrappers RAT and AWP.

``AWP(RAT(TRADES()))`` reads as what it is; ``BASE_METHODS`` names the base methods and
``compose_method`` builds any composition from settings (what the config and the benchmark use).
"""

from .at import AT
from .awp import AWP
from .base import (STEP_PRECISIONS, BaseMethod, InvalidSetting, LossOutput, Method, NonFiniteLossError, Outputs,
                   StepPrecision, forward_outputs, train_attack)
from .mart import MART
from .rat import RAT, head_gradient_sums, head_gradient_sums_autograd, head_taylor_statistics, soft_target_table
from .registry import BASE_METHODS, compose_method
from .trades import TRADES, trades_attack

__all__ = [
    "AT", "TRADES", "MART", "RAT", "AWP", "BASE_METHODS", "compose_method", "Method", "BaseMethod", "LossOutput",
    "Outputs", "NonFiniteLossError", "InvalidSetting", "StepPrecision", "STEP_PRECISIONS",
    "forward_outputs", "train_attack", "trades_attack", "head_gradient_sums", "head_gradient_sums_autograd",
    "head_taylor_statistics", "soft_target_table",
]
