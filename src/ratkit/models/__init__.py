"""Models for ratkit: every model normalises [0, 1] inputs itself and exposes `features` and `head`."""

from .base import CIFAR10_MEAN, CIFAR10_STD, RobustModel
from .preact_resnet import PreActBlock, PreActResNet18
from .registry import MODELS, build_from_spec, build_model, model_kwargs_for, model_spec, noise_target_names
from .resnet import ResNet18, ResNetBlock
from .small_cnn import SmallCNN
from .wideresnet import BasicBlock, NetworkBlock, WideResNet
from .user import (ModelCodePolicy, UntrustedModelCode, build_user_model, find_classifier_head, is_user_model,
                   policy_or_default)
from .wrap import WrappedModel, wrap

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MODELS",
    "ModelCodePolicy",
    "UntrustedModelCode",
    "build_user_model",
    "find_classifier_head",
    "is_user_model",
    "policy_or_default",
    "BasicBlock",
    "NetworkBlock",
    "PreActBlock",
    "PreActResNet18",
    "ResNet18",
    "ResNetBlock",
    "RobustModel",
    "SmallCNN",
    "WideResNet",
    "WrappedModel",
    "build_from_spec",
    "build_model",
    "model_kwargs_for",
    "model_spec",
    "noise_target_names",
    "wrap",
]
