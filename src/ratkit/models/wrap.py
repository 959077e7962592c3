"""Bring your own model: any classifier whose last layer is an ``nn.Linear``, as a RobustModel.

RAT needs the penultimate features and the logits of one forward pass, and the head itself
(its weight, and which weights are not the head when it adds noise). :func:`wrap` gets them
from a plain torch module without running it twice: while the module runs, a forward hook on
the head records what the head received (the features) and what it returned (the logits).
The hook exists only during that call and nothing is kept between calls, so the user's module
is unchanged outside the wrapper, and ``torch.func.functional_call`` (RAT's noisy-weight
attack), DistributedDataParallel and ``train()``/``eval()`` work as for the built-in models.
"""

from __future__ import annotations

from numbers import Real
from typing import Sequence

from torch import Tensor, nn

from .base import RobustModel

Stats = Sequence[float] | float | None


def _as_tuple(values: Sequence[float] | float) -> tuple[float, ...]:
    return (float(values),) if isinstance(values, Real) else tuple(float(v) for v in values)


def _linear_layers(net: nn.Module) -> str:
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return ", ".join(repr(n) for n in names) if names else "none"


def describe(value) -> str:
    """What a forward returned, for a message: ``a tensor of shape (8, 10)``, ``a tuple of 2 items``."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def find_head(net: nn.Module, path: str) -> nn.Linear:
    """The ``nn.Linear`` at dotted attribute path ``path`` ("fc", "classifier.2"); integer parts
    index into nn.Sequential / nn.ModuleList. A one-line ValueError names the linear layers there are."""
    if not isinstance(path, str):
        raise ValueError(f"wrap: head must be a dotted attribute path such as 'fc' or 'classifier.2', got {path!r}")
    try:
        head = net.get_submodule(path)
    except AttributeError:
        raise ValueError(f"wrap: {type(net).__name__} has no submodule {path!r}; "
                         f"its nn.Linear layers are {_linear_layers(net)}") from None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"wrap: head {path!r} is a {type(head).__name__}, not an nn.Linear; "
                         f"the nn.Linear layers of {type(net).__name__} are {_linear_layers(net)}")
    return head


class WrappedModel(RobustModel):
    """A user's classifier as a ratkit model: [0, 1] pixels -> normalise (optional) -> ``net``.

    ``net`` is the user's module itself, not a copy: training the wrapper trains it, and
    ``net.state_dict()`` keeps the user's own keys. ``head`` is the user's ``nn.Linear`` (the
    same object), looked up by path on every access and not registered a second time, so its
    parameters appear once, under their ``net.`` names, in ``named_parameters()`` and
    ``state_dict()``. ``features(x)`` is exactly the tensor the head received (after whatever
    the user's forward applies before it, e.g. dropout), so ``logits == head(features)``.

    Subclasses RobustModel because it is one: [0, 1] input, normalisation buffers,
    ``features``/``head``/``forward(x, with_features=True)``/``feature_dim``/``num_classes``.
    Only ``forward`` and ``body`` differ, because the head runs inside the user's module.
    """

    def __init__(self, net: nn.Module, head: str = "fc", mean: Stats = None, std: Stats = None) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"wrap: expected an nn.Module, got {type(net).__name__}")
        if (mean is None) != (std is None):
            raise ValueError("wrap: pass both mean and std (normalise inside the model), or neither")
        normalizes = mean is not None
        # without statistics the buffers hold the identity and normalize() is skipped, so inputs
        # of any shape (not only B x C x H x W) pass through unchanged
        super().__init__(_as_tuple(mean) if normalizes else (0.0,), _as_tuple(std) if normalizes else (1.0,))
        linear = find_head(net, head)
        self.normalizes = normalizes
        self.head_path = head
        self.net = net
        # the statistics live where the head lives, so wrapping a module already on the GPU works
        self.mean = self.mean.to(linear.weight.device)
        self.std = self.std.to(linear.weight.device)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.net.get_submodule(self.head_path)

    def normalize(self, x: Tensor) -> Tensor:
        return super().normalize(x) if self.normalizes else x

    def _run(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """One pass of the user's module: (the head's input, the module's output = the head's output)."""
        head = self.head
        seen: list[tuple[Tensor, Tensor]] = []

        def record(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            if module is head:  # nn.DataParallel replicas share one hook table: keep our replica's call
                seen.append((args[0] if args else kwargs["input"], output))

        handle = head.register_forward_hook(record, with_kwargs=True)
        try:
            out = self.net(z)
        finally:
            handle.remove()
        name = type(self.net).__name__
        if len(seen) != 1:
            raise ValueError(f"wrap: head {self.head_path!r} ran {len(seen)} times in one forward of {name}; "
                             "it must run exactly once, as the last layer")
        feats, logits = seen[0]
        if out is not logits:
            raise ValueError(f"wrap: the output of {name} ({describe(out)}) is not the output of its head "
                             f"{self.head_path!r} ({describe(logits)}; does its forward change the logits after the "
                             "head?); return the head's output as is")
        if feats.dim() != 2:
            raise ValueError(f"wrap: head {self.head_path!r} received shape {tuple(feats.shape)}; "
                             "a classifier head takes (batch, features)")
        return feats, logits

    def body(self, z: Tensor) -> Tensor:
        return self._run(z)[0]

    def forward(self, x: Tensor, with_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits of the user's module on normalised ``x``; with ``with_features`` also the head's
        input, from the same single pass."""
        feats, logits = self._run(self.normalize(x))
        return (feats, logits) if with_features else logits

    def extra_repr(self) -> str:
        return f"head={self.head_path!r}, normalizes={self.normalizes}"


def wrap(module: nn.Module, head: str = "fc", mean: Stats = None, std: Stats = None) -> WrappedModel:
    """Use your own ``nn.Module`` classifier with every ratkit method and evaluation.

    Arguments:
        module: a classifier taking images and returning logits straight from an ``nn.Linear``
            (not copied: training the wrapper trains ``module``).
        head: attribute path of that last layer, e.g. "fc", "linear", "classifier.2" (integer
            parts index into nn.Sequential / nn.ModuleList). Default "fc".
        mean, std: per-channel statistics (or one value each); when given, the wrapper maps
            [0, 1] pixels to ``(x - mean) / std`` before calling ``module``. Default: no
            normalisation, ``module`` gets the [0, 1] pixels.

    Shapes: x is (B, C, H, W) in [0, 1] (any shape when mean/std are None); logits (B, classes);
    features (B, head.in_features).

    Example::

        model = wrap(torchvision.models.resnet18(num_classes=10), head="fc",
                     mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
        RAT(TRADES()).step(model, optimizer, x, y)

    Raises ValueError here for a head path that does not exist or is not an ``nn.Linear``, and
    in forward (every call checks; it costs nothing) when the module's output is not its head's
    output, the head ran other than once, or its input is not (batch, features).
    """
    return WrappedModel(module, head=head, mean=mean, std=std)
