"""Training methods: base methods (AT, TRADES, MART) and the wrappers RAT and AWP.

``AWP(RAT(TRADES()))`` reads as what it is.
"""

from .at import AT
from .awp import AWP
from .base import BaseMethod, LossOutput, Method, NonFiniteLossError, Outputs, forward_outputs, train_attack
from .mart import MART
from .rat import (RAT, head_gradient_sums, head_gradient_sums_autograd, head_taylor_statistics, kl_from_targets,
                  soft_target_table)
from .trades import TRADES, trades_attack

__all__ = [
    "AT", "TRADES", "MART", "RAT", "AWP", "Method", "BaseMethod", "LossOutput", "Outputs", "NonFiniteLossError",
    "forward_outputs", "train_attack", "trades_attack", "head_gradient_sums", "head_gradient_sums_autograd",
    "head_taylor_statistics", "soft_target_table", "kl_from_targets",
]
