"""How confident a model's outputs are: the scale that loss-based flatness measures depend on.

The cross-entropy's curvature in the weights shrinks with the scale of the logits, so a model
with softer outputs looks flatter by the Hessian and by the loss landscape without a different
decision function (docs/flatness.md). These numbers let a comparison of flatness say how much
the two models' output scales differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modes import model_mode
from .common import adversarial_examples, check_batch_size, prepare_examples, resolve_attack


@dataclass
class OutputStatistics:
    """Means over the examples, for one kind of input ("clean" or "adversarial")."""

    inputs: str
    n: int
    top_probability: float  # softmax probability of the predicted class
    true_probability: float  # softmax probability of the label
    logit_norm: float  # L2 norm of the logit vector
    loss: float  # cross-entropy

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _statistics(model: nn.Module, x: Tensor, y: Tensor, inputs: str, batch_size: int) -> OutputStatistics:
    sums = torch.zeros(4, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size]).float()
        yb = y[start:start + batch_size]
        prob = logits.softmax(dim=1)
        sums += torch.stack([prob.max(dim=1).values.sum(), prob.gather(1, yb[:, None]).sum(),
                             logits.norm(dim=1).sum(), F.cross_entropy(logits, yb, reduction="sum")]).double().cpu()
    top, true, norm, loss = (sums / len(x)).tolist()
    return OutputStatistics(inputs=inputs, n=len(x), top_probability=top, true_probability=true,
                            logit_norm=norm, loss=loss)


def output_statistics(model: nn.Module, x: Tensor, y: Tensor, *, eps: float | None = None, seed: int = 0,
                      batch_size: int = 256) -> list[OutputStatistics]:
    """Output statistics on (x, y), and on PGD-10 adversarial examples of them when ``eps`` is given.

    Eval mode; the model's train/eval flags are as before when this returns.
    """
    check_batch_size(batch_size)
    x, y = prepare_examples(model, x, y)
    with model_mode(model, False), torch.autocast(x.device.type, enabled=False):
        out = [_statistics(model, x, y, "clean", batch_size)]
        if eps is not None:
            x_adv = adversarial_examples(model, x, y, resolve_attack(None, eps), seed=seed, batch_size=batch_size)
            out.append(_statistics(model, x_adv, y, "adversarial", batch_size))
    return out
