"""Typed run configuration: the dataclasses (``schema.py``), read from YAML presets and files and
overridden from the command line (``read.py``), checked once at the edge (``validate.py``), and the
values derived from them (``derived.py``). Importing it imports no torch: the names it checks come
from :mod:`ratkit.choices`, and the code behind them is imported where a value is checked or derived.

Loading order (:func:`load_config`): the ``base:`` chain of YAML files (deep-merged, the file itself
on top), then the ``section.key=value`` overrides, then type checking and coercion
(:func:`config_from_dict`), then :func:`validate`. The method section holds the wrappers as mappings
of their constructors' keyword arguments (``method.rat: {alpha: 0.1}`` is ``RAT(base, alpha=0.1)``,
``method.rat: null`` no RAT), whose defaults live in the classes only (:func:`wrapper_arguments`).
"""

from __future__ import annotations

from .derived import (attack_precision, data_source, evaluation_eps, method_label, method_settings, protocol_eps,
                      resolved_attack, with_resolved_precision)
from .read import (CONFIG_DIR_ENV, DEFAULT_PRESET, FLAT_METHOD_KEYS, apply_override, config_from_dict, list_presets,
                   load_config, preset_description, preset_dir, presets_listing, save_config, upgrade_flat_method)
from .schema import (SECTIONS, WRAPPER_KEYS, AttackConfig, Config, ConfigError, DataConfig, EvalConfig, MethodConfig,
                     ModelConfig, OptimConfig, TrainConfig, config_to_dict, wrapper_arguments, wrappers)
from .validate import OPTIMIZERS, SCHEDULES, validate


def __getattr__(name: str):
    # WRAPPERS ({"rat": RAT, "awp": AWP}) holds the method classes, which bring torch: made when first read
    if name == "WRAPPERS":
        return wrappers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AttackConfig",
    "CONFIG_DIR_ENV",
    "Config",
    "ConfigError",
    "DEFAULT_PRESET",
    "DataConfig",
    "EvalConfig",
    "FLAT_METHOD_KEYS",
    "MethodConfig",
    "ModelConfig",
    "OPTIMIZERS",
    "OptimConfig",
    "SCHEDULES",
    "SECTIONS",
    "TrainConfig",
    "WRAPPERS",
    "WRAPPER_KEYS",
    "apply_override",
    "attack_precision",
    "config_from_dict",
    "config_to_dict",
    "data_source",
    "evaluation_eps",
    "list_presets",
    "presets_listing",
    "load_config",
    "method_label",
    "method_settings",
    "preset_description",
    "preset_dir",
    "protocol_eps",
    "resolved_attack",
    "save_config",
    "upgrade_flat_method",
    "validate",
    "with_resolved_precision",
    "wrapper_arguments",
    "wrappers",
]
