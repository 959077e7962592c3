"""Reading a configuration: presets (:func:`preset_dir`), YAML files and their ``base:`` chains,
``--set`` overrides (:func:`apply_override`), and the method keys of earlier releases, converted to
the nested form as each file is read (:func:`upgrade_flat_method`); then :func:`config_from_dict`
types and validates the result. :func:`save_config` writes what :func:`load_config` reads back."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from .schema import (SECTIONS, WRAPPER_KEYS, Config, ConfigError, MethodConfig, _coerce, _field_types, _unknown,
                     _wrapper_settings, config_to_dict, wrappers)
from .validate import validate

DEFAULT_PRESET = "fmnist-cpu"
CONFIG_DIR_ENV = "RAT_CONFIG_DIR"


# --------------------------------------------------------------------------- presets


def preset_dir() -> Path:
    """The presets directory: $RAT_CONFIG_DIR, else the ``configs`` folder shipped inside the
    package (package data), so an installed wheel finds its presets from any directory."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from importlib.resources import files

    return Path(str(files("ratkit") / "configs"))


def preset_description(name: str) -> str:
    """The first sentence of a preset's leading comment block (what `rat presets` shows)."""
    lines = []
    for line in (preset_dir() / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"(?<! al)(?<!e\.g)\.(\s|$)", text)  # "et al." and "e.g." end no sentence
    return text[:end.start() + 1] if end else text


def list_presets() -> list[str]:
    """Preset names (file stems of ``*.yaml`` in :func:`preset_dir`), sorted."""
    directory = preset_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml") if p.is_file())


def presets_listing() -> str:
    """``rat presets``: each preset's name and what it is, and where they and the study grids are."""
    names = list_presets()
    if not names:
        raise ConfigError(f"no presets in {preset_dir()}")
    width = max(map(len, names))
    lines = [f"{name:<{width}}  {preset_description(name)}" for name in names]
    return "\n".join([*lines, f"(in {preset_dir()}; study grids in {preset_dir() / 'studies'})"])

def _preset_path(name: str) -> Path | None:
    directory = preset_dir()
    for candidate in (directory / name, directory / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _resolve_path(path: str | Path) -> Path:
    """A YAML file path, else a preset name (with or without .yaml)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    if len(p.parts) == 1:
        found = _preset_path(str(path))
        if found is not None:
            return found.resolve()
    presets = ", ".join(list_presets()) or f"(none in {preset_dir()})"
    raise ConfigError(f"{path}: no such config file or preset; available presets: {presets}")


# --------------------------------------------------------------------------- files and their base: chains


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report cut to "problem (line L, column C)"."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``; nested dicts merge, everything else (lists included) replaces."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_chain(path: Path, stack: tuple[Path, ...] = ()) -> dict:
    """A file's contents deep-merged over its ``base:`` chain (resolved relative to the file), in the
    nested form: each file is converted over the files below it (:func:`_over_base`)."""
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise ConfigError(f"base: cycle in config inheritance: {chain}")
    data = _read_yaml(path)
    _refuse_both_forms(data, path)
    base = data.pop("base", None)
    below = {} if base is None else _load_chain(_base_path(base, path), (*stack, path))
    return _over_base(below, data)


def _base_path(base: Any, path: Path) -> Path:
    """The file that ``base:`` in ``path`` names: next to it (with or without .yaml), else a preset."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"base: expected a file name, got {base!r} (in {path})")
    candidate = (path.parent / base).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    if (path.parent / f"{base}.yaml").is_file():
        return (path.parent / f"{base}.yaml").resolve()
    found = _preset_path(base) if len(Path(base).parts) == 1 else None
    if found is None:
        raise ConfigError(f"base: {base!r} not found next to {path} nor among the presets")
    return found.resolve()


# --------------------------------------------------------------------------- earlier releases' method keys


# The method keys of the flat MethodConfig of earlier releases: old key -> (wrapper, its argument).
# A file's are converted as it is read, over its base (_over_base); an override's once, when the config
# is built (config_from_dict), as a later --set may still switch its wrapper on.
FLAT_METHOD_KEYS = {"alpha": ("rat", "alpha"), "sigma": ("rat", "sigma"), "order": ("rat", "order"),
                    "pairing": ("rat", "pairing"), "clean_terms": ("rat", "clean_terms"),
                    "noise_layers": ("rat", "noise_layers"), "taylor": ("rat", "taylor"),
                    "taylor_sigma": ("rat", "taylor_sigma"), "awp_gamma": ("awp", "gamma"),
                    "awp_warmup": ("awp", "warmup")}


def _refuse_both_forms(d: dict, path: Path) -> None:
    """ConfigError when one file sets a wrapper's argument both ways, flat (``method.alpha``) and
    nested (``method.rat.alpha``): which one it means cannot be told."""
    method = d.get("method")
    if not isinstance(method, dict):
        return
    for old, (wrapper, arg) in FLAT_METHOD_KEYS.items():
        if old in method and isinstance(method.get(wrapper), dict) and arg in method[wrapper]:
            raise ConfigError(f"method.{old} and method.{wrapper}.{arg}: {path} sets both, the flat key of earlier "
                              f"releases and the nested one; keep method.{wrapper}.{arg}")


def _over_base(below: dict, data: dict) -> dict:
    """One file's raw mapping deep-merged over the files below it (``{}``: none), in the nested form.
    Converted at every level, so that a file's keys, flat or nested, override its base's: its switches
    first (``rat: true`` keeps the base's arguments), then its flat keys over the merged mapping."""
    return upgrade_flat_method(_deep_merge(below, _wrapper_switches(data)))


def _wrapper_switches(d: dict) -> dict:
    """``d`` with the wrappers' switches as the nested form has them: ``true`` an empty mapping (which
    merges over a base file's mapping, keeping its arguments), ``false`` null."""
    method = d.get("method")
    if not isinstance(method, dict) or not any(isinstance(method.get(key), bool) for key in WRAPPER_KEYS):
        return d
    switched = {key: ({} if value else None) if isinstance(value, bool) and key in WRAPPER_KEYS else value
                for key, value in method.items()}
    return {**d, "method": switched}


def upgrade_flat_method(d: dict) -> dict:
    """A raw config mapping with its method section in the nested form (a new dict; ``d`` is left as
    it is). The flat form of earlier releases means the same there: ``rat: true`` with ``alpha: 0.1``
    becomes ``rat: {alpha: 0.1}``, ``awp: true`` with ``awp_gamma: 0.01`` becomes ``awp: {gamma: 0.01}``;
    the flat arguments of a wrapper that is off (``rat: false``, ``awp`` unset) are dropped, as they had
    no effect. A flat key given beside the wrapper's mapping wins (it is the later ``--set``). As every
    mapping is then filled in with the class's defaults (:class:`MethodConfig`), a run directory an
    earlier release wrote is the same run (``train.same_run``) as its settings in the nested form.

    Example: ``upgrade_flat_method({"method": {"rat": True, "alpha": 0.1}})`` is
    ``{"method": {"rat": {"alpha": 0.1}}}``."""
    d = _wrapper_switches(d)
    method = d.get("method")
    if not isinstance(method, dict) or not set(method) & set(FLAT_METHOD_KEYS):
        return d
    method = {key: value for key, value in method.items() if key not in FLAT_METHOD_KEYS}
    defaults = MethodConfig()
    for key in WRAPPER_KEYS:
        given = {arg: d["method"][old] for old, (wrapper, arg) in FLAT_METHOD_KEYS.items()
                 if wrapper == key and old in d["method"]}
        current = method.get(key, getattr(defaults, key))
        if given and isinstance(current, dict):
            method[key] = {**current, **given}
    return {**d, "method": method}


def _forget_earlier_flat(method: dict, key: str, arg: str | None) -> None:
    """An override of ``method.<key>.<arg>`` (``arg`` None: the whole mapping) in the nested form: the
    flat keys given before it for the same setting say no more, as of a flat and a nested key the later
    wins (the flat ones are converted only when the config is built, :func:`config_from_dict`)."""
    for old, (wrapper, name) in FLAT_METHOD_KEYS.items():
        if wrapper == key and arg in (None, name):
            method.pop(old, None)


def _flat_keys(d: dict) -> list[str]:
    method = d.get("method")
    return [k for k in method if k in FLAT_METHOD_KEYS] if isinstance(method, dict) else []


def _warn_flat_without_effect(given: list[str], cfg: Config) -> None:
    """A warning line for each flat key an override gave whose wrapper is off in the end: it had no effect."""
    for old in given:
        wrapper, arg = FLAT_METHOD_KEYS[old]
        if getattr(cfg.method, wrapper) is None:
            print(f"warning: method.{old}: has no effect, {wrappers()[wrapper].__name__} is off (method.{wrapper}: "
                  f"null); method.{wrapper}.{arg}=... switches it on with that setting", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- overrides, and the whole reading


def apply_override(d: dict, override: str | tuple[str, Any]) -> dict:
    """Apply one ``section.key=value`` (value parsed as YAML: ``--set``) or one typed
    ``(section.key, value)`` pair (taken as it is: the command line's own flags, so that
    ``--out 2024-05-01`` or ``--out null`` name a directory, not a date or None) to a raw
    config dict in place.

    Deeper paths reach into dict fields: ``model.kwargs.hidden=100``, ``method.rat.alpha=0.1`` (which
    switches RAT on if it was off). The flat method keys of earlier releases (``method.alpha=0.1``,
    ``method.awp_gamma=0.01``) are accepted and converted by :func:`config_from_dict`; of a flat and a
    nested key for one setting the later wins (``method.alpha=0.5`` then ``method.rat.alpha=0.7``: 0.7).
    """
    typed = isinstance(override, tuple) and len(override) == 2 and isinstance(override[0], str)
    if not typed and (not isinstance(override, str) or "=" not in override):
        raise ConfigError(f"{override}: malformed override, expected section.key=value")
    key, _, text = override.partition("=") if not typed else (override[0], "=", None)
    key = key.strip()
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{key or override}: malformed override, expected section.key=value")
    sec, name = parts[0], parts[1]
    if sec not in SECTIONS:
        raise ConfigError(f"{key}: unknown section {sec!r}; known: {', '.join(SECTIONS)}")
    types_ = _field_types(sec)
    if name not in types_ and not (sec == "method" and len(parts) == 2 and name in FLAT_METHOD_KEYS):
        raise _unknown(f"{sec}.{name}", types_)
    try:
        value = override[1] if typed else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {_yaml_problem(exc)}") from None
    node = d.get(sec)
    if not isinstance(node, dict):
        node = d[sec] = {}
    already_on = sec == "method" and len(parts) == 2 and name in WRAPPER_KEYS and isinstance(node.get(name), dict)
    if already_on and value is True:
        return d  # --rat keeps the arguments given so far
    if sec == "method" and name in WRAPPER_KEYS and (len(parts) > 2 or isinstance(value, dict)):
        _forget_earlier_flat(node, name, parts[2] if len(parts) > 2 else None)
    for p in parts[1:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value
    return d


def config_from_dict(d: dict) -> Config:
    """Build a validated :class:`Config` from plain data; missing keys take the defaults. A method
    section in the flat form of earlier releases is converted (:func:`upgrade_flat_method`)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(d).__name__}")
    d = upgrade_flat_method(d)
    sections = {}
    for sec, body in d.items():
        if sec not in SECTIONS:
            raise ConfigError(f"{sec}: unknown section; known: {', '.join(SECTIONS)}")
        if body is None:  # an empty "eval:" in YAML
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{sec}: expected a mapping, got {body!r}")
        types_ = _field_types(sec)
        kwargs = {}
        for key, value in body.items():
            if key not in types_:
                raise _unknown(f"{sec}.{key}", types_)
            if sec == "method" and key in WRAPPER_KEYS:
                kwargs[key] = _wrapper_settings(key, value)
            else:
                kwargs[key] = _coerce(f"{sec}.{key}", value, types_[key])
        sections[sec] = SECTIONS[sec](**kwargs)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list | tuple = ()) -> Config:
    """Load a YAML file or preset (default ``fmnist-cpu``), apply overrides (see
    :func:`apply_override`), validate.

    Example: ``load_config("fmnist-cpu", ["train.epochs=8", ("train.out", "runs/2024-05-01")])``"""
    resolved = _resolve_path(DEFAULT_PRESET if path is None else path)
    d = _load_chain(resolved)
    if isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    for ov in overrides:
        apply_override(d, ov)
    given_flat = _flat_keys(d)  # the file's own were converted as it was read: these are overrides
    cfg = config_from_dict(d)
    _warn_flat_without_effect(given_flat, cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the config as YAML; :func:`load_config` reads it back to an equal Config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
