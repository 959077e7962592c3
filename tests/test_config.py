"""Specifications of ratkit.config: presets, inheritance, overrides, validation, round trips."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratkit.config import (
    Config,
    ConfigError,
    MethodConfig,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    method_label,
    preset_description,
    preset_dir,
    resolved_attack,
    save_config,
    validate,
)
from helpers import SRC

WRN_PRESETS = [
    f"{ds}-{m}-wrn34"
    for ds in ("cifar10", "cifar100")
    for m in ("trades", "rat-trades", "awp-trades", "awp-rat-trades")
]


def raises_config_error(field: str, fn, *args, **kwargs) -> str:
    """Assert fn raises a one-line ConfigError starting with the dotted field name."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg.startswith(field), msg
    assert "\n" not in msg
    return msg


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- presets


def test_the_presets_table_is_each_presets_own_description(monkeypatch):
    # configs/README.md's table can never drift from the presets: a row per preset, its text the
    # first sentence of the preset's leading comment (what `rat presets` prints)
    monkeypatch.delenv("RAT_CONFIG_DIR", raising=False)
    readme = (preset_dir() / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", readme, flags=re.MULTILINE))
    assert sorted(rows) == list_presets()
    for name in list_presets():
        assert rows[name] == preset_description(name), name


def test_every_preset_loads_and_validates():
    names = list_presets()
    assert "fmnist-cpu" in names and set(WRN_PRESETS) <= set(names)
    for name in names:
        cfg = load_config(name)
        validate(cfg)
        assert load_config(f"{name}.yaml") == cfg
        assert load_config(preset_dir() / f"{name}.yaml") == cfg


def test_default_is_the_fmnist_cpu_preset():
    cfg = load_config()
    assert cfg == load_config("fmnist-cpu")
    assert cfg.data.dataset == "fashion-mnist" and cfg.data.val_size == 5000
    assert cfg.model.name == "smallcnn" and cfg.model.kwargs == {"channels": [32, 64], "hidden": 200}
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule, cfg.train.epochs) == ("adam", 0.001, "cosine", 4)
    assert (cfg.attack.steps, cfg.attack.step_size, cfg.method.beta, cfg.data.augment) == (5, 0.04, 3.0, False)
    assert (cfg.eval.n, cfg.eval.aa_n) == (1000, 500)
    assert method_label(cfg) == "rat-trades"


@pytest.mark.parametrize("name", WRN_PRESETS)
def test_cifar_wrn_presets_have_the_papers_recipe(name):
    cfg = load_config(name)
    assert cfg.data.dataset == name.split("-")[0]
    assert cfg.data.val_size == 1000
    assert cfg.model.name == "wrn-34-10"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (cfg.optim.schedule, cfg.optim.milestones, cfg.optim.lr_decay) == ("multistep", [100, 150], 0.1)
    assert (cfg.train.epochs, cfg.train.batch_size) == (200, 128)
    assert (cfg.attack.eps, cfg.attack.step_size, cfg.attack.steps, cfg.attack.norm) == (None, None, 10, "Linf")
    assert resolved_attack(cfg) == pytest.approx((8 / 255, 2 / 255))
    assert (cfg.method.name, cfg.method.beta) == ("trades", 6.0)
    rat, awp = cfg.method.rat, cfg.method.awp
    assert (rat is not None) == ("rat" in name) and (awp is not None) == ("awp" in name)
    assert rat is None or (rat["alpha"], rat["sigma"], rat["order"]) == (0.2, 1e-4, [1, 2])
    assert awp is None or (awp["gamma"], awp["warmup"]) == (5e-3, 10)
    assert method_label(cfg) == name.split("-", 1)[1].removesuffix("-wrn34")
    assert (cfg.eval.n, cfg.eval.aa_n) == (None, None)


def test_preactresnet_preset_uses_rice_schedule():
    cfg = load_config("cifar10-rat-trades-preactresnet18")
    assert cfg.model.name == "preactresnet18"
    assert (cfg.train.epochs, cfg.optim.milestones) == (110, [100, 105])
    assert cfg.method.rat is not None and cfg.optim.lr == 0.1 and cfg.method.beta == 6.0


def test_preset_dir_env_override(tmp_path, monkeypatch):
    write(tmp_path / "mine.yaml", "train: {epochs: 7}\n")
    monkeypatch.setenv("RAT_CONFIG_DIR", str(tmp_path))
    assert preset_dir() == tmp_path
    assert list_presets() == ["mine"]
    assert load_config("mine").train.epochs == 7


def test_missing_file_names_path_and_lists_presets():
    msg = raises_config_error("no-such-preset", load_config, "no-such-preset")
    assert "fmnist-cpu" in msg


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  epochs: [1, 2\n")
    raises_config_error(str(path), load_config, path)


# --------------------------------------------------------------------------- base: inheritance


def test_base_inheritance_deep_merges(tmp_path):
    write(tmp_path / "a.yaml", "model: {name: smallcnn, kwargs: {hidden: 50, channels: [8, 16]}}\n"
                               "optim: {lr: 0.3, milestones: [1, 2, 3]}\n")
    write(tmp_path / "b.yaml", "base: a.yaml\nmodel: {kwargs: {hidden: 60}}\noptim: {milestones: [5]}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "c.yaml", "base: ../b.yaml\ntrain: {epochs: 4}\n")
    cfg = load_config(sub / "c.yaml")
    assert cfg.model.kwargs == {"hidden": 60, "channels": [8, 16]}  # dicts merge
    assert cfg.optim.lr == 0.3  # inherited from the grandparent
    assert cfg.optim.milestones == [5]  # lists replace
    assert cfg.train.epochs == 4


def test_base_may_name_a_preset(tmp_path):
    path = write(tmp_path / "x.yaml", "base: cifar10-rat-trades-wrn34\ntrain: {epochs: 1}\n")
    cfg = load_config(path)
    assert cfg.model.name == "wrn-34-10" and cfg.method.rat is not None and cfg.train.epochs == 1


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    msg = raises_config_error("base", load_config, tmp_path / "a.yaml")
    assert "cycle" in msg


# --------------------------------------------------------------------------- overrides


def test_overrides_parse_values_as_yaml():
    cfg = load_config("fmnist-cpu", [
        "optim.lr=0.05", "method.rat.order=[1]", "data.train_subset=null", "method.awp=true",
        "train.epochs=5", "method.rat.sigma=1e-3", "model.kwargs.hidden=100",
    ])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.method.rat["order"] == [1]
    assert cfg.data.train_subset is None
    assert cfg.method.awp == {"gamma": None, "warmup": 0}
    assert cfg.train.epochs == 5
    assert cfg.method.rat["sigma"] == 1e-3  # YAML 1.1 reads "1e-3" as a string; accepted for floats
    assert cfg.model.kwargs == {"channels": [32, 64], "hidden": 100}
    assert load_config("fmnist-cpu", ["data.train_subset=200"]).data.train_subset == 200


@pytest.mark.parametrize("override, field", [
    ("method.alhpa=0.1", "method.alhpa"),
    ("methd.alpha=0.1", "methd.alpha"),
])
def test_unknown_override_key_or_section(override, field):
    raises_config_error(field, load_config, "fmnist-cpu", [override])


@pytest.mark.parametrize("override, field", [("lr", "lr"), ("lr=0.1", "lr"), ("optim.=1", "optim.")])
def test_malformed_override(override, field):
    msg = raises_config_error(field, load_config, "fmnist-cpu", [override])
    assert "malformed" in msg


def test_unknown_key_in_dict_lists_known_fields():
    msg = raises_config_error("method.alhpa", config_from_dict, {"method": {"alhpa": 0.1}})
    assert "unknown field" in msg and "rat" in msg
    raises_config_error("methd", config_from_dict, {"methd": {}})


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("section, key, value", [
    ("method", "name", "pgd"),
    ("method", "beta", -1),
    ("optim", "schedule", "step"),
    ("optim", "lr", 0),
    ("optim", "momentum", 1.0),
    ("optim", "milestones", [150, 100]),
    ("optim", "lr_decay", 0),
    ("train", "epochs", 0),
    ("train", "batch_size", 0),
    ("train", "device", "gpu"),
    ("train", "val_n", 0),
    ("eval", "attacks", "clean,pgd100"),
    ("eval", "aa_n", 0),
    ("data", "dataset", "imagenet"),
    ("data", "val_size", -1),
    ("data", "train_subset", 0),
    ("model", "name", "resnet999"),
    ("attack", "norm", "L1"),
    ("attack", "steps", 0),
    ("attack", "eps", -0.1),
    # types
    ("train", "epochs", "ten"),
    ("train", "epochs", 2.5),
    ("train", "seed", True),
    ("method", "rat", "yes"),
    ("method", "awp", 1),
    ("optim", "lr", "fast"),
    ("optim", "lr", None),
    ("model", "kwargs", [1]),
    ("data", "dataset", 10),
])  # RAT's and AWP's arguments: tests/test_config_nested_method.py
def test_each_rule_raises_naming_the_field(section, key, value):
    raises_config_error(f"{section}.{key}", config_from_dict, {section: {key: value}})


@pytest.mark.parametrize("name", ["trades", "mart", "at"])
def test_a_negative_beta_is_the_method_field_whatever_the_base(name):
    # TRADES and MART refuse it themselves; AT has no beta, but switching method.name must not fail later
    msg = raises_config_error("method.beta", config_from_dict, {"method": {"name": name, "beta": -1}})
    assert msg == "method.beta: must be >= 0, got -1.0"  # the message it had before the methods checked it


def test_type_error_message_shows_expected_and_got():
    msg = raises_config_error("train.epochs", config_from_dict, {"train": {"epochs": "ten"}})
    assert msg == "train.epochs: expected int, got 'ten'"


def test_model_kwargs_conflicting_with_name_blame_kwargs():
    raises_config_error("model.kwargs", config_from_dict, {"model": {"name": "wrn-34-10", "kwargs": {"depth": 28}}})


def test_coercions_accepted():
    cfg = config_from_dict({"optim": {"lr": 1, "milestones": (3, 4)}, "method": {"order": (2,)},
                            "model": {"kwargs": {"channels": (8, 16)}}, "eval": None})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.milestones == [3, 4] and cfg.method.rat["order"] == [2]
    assert cfg.model.kwargs == {"channels": [8, 16]}
    assert cfg.eval == Config().eval


def test_validate_catches_edits_made_in_code():
    cfg = Config()
    validate(cfg)
    cfg.method = dataclasses.replace(cfg.method, rat={"alpha": 1.5})
    raises_config_error("method.rat.alpha", validate, cfg)
    cfg.method = MethodConfig(rat="yes")
    raises_config_error("method.rat", validate, cfg)


# --------------------------------------------------------------------------- round trips, derived values


@pytest.mark.parametrize("name", ["fmnist-cpu", "cifar10-awp-rat-trades-wrn34"])
def test_dict_and_yaml_round_trip(name, tmp_path):
    cfg = load_config(name, ["method.order=[2, 1]", "train.out=runs/x"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = save_config(cfg, tmp_path / "saved" / "config.yaml")
    assert load_config(path) == cfg


@settings(max_examples=30, deadline=None)
@given(
    alpha=st.floats(0, 1),
    sigma=st.floats(0, 1),
    order=st.sampled_from([[1], [2], [1, 2], [2, 1]]),
    epochs=st.integers(1, 10**6),
    subset=st.none() | st.integers(1, 10**6),
)
def test_round_trip_property(tmp_path_factory, alpha, sigma, order, epochs, subset):
    cfg = config_from_dict({"method": {"alpha": alpha, "sigma": sigma, "order": order},
                            "train": {"epochs": epochs}, "data": {"train_subset": subset}})
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = save_config(cfg, tmp_path_factory.mktemp("rt") / "c.yaml")
    assert load_config(path) == cfg


def test_resolved_attack_defaults_from_dataset():
    assert resolved_attack(load_config("fmnist-cpu", ["attack.step_size=null"])) == pytest.approx((0.1, 0.025))
    assert resolved_attack(config_from_dict({"data": {"dataset": "cifar10"}})) == pytest.approx((8 / 255, 2 / 255))
    explicit = config_from_dict({"attack": {"eps": 0.2, "step_size": 0.01}})
    assert resolved_attack(explicit) == (0.2, 0.01)
    assert resolved_attack(config_from_dict({"attack": {"eps": 0.2}})) == pytest.approx((0.2, 0.05))


def test_method_label():
    def label(**method):
        return method_label(config_from_dict({"method": method}))

    assert label(rat=False) == "trades"
    assert label(rat=True) == "rat-trades"
    assert label(rat=False, awp=True) == "awp-trades"
    assert label(rat=True, awp=True) == "awp-rat-trades"
    assert label(rat=True, name="at") == "rat-at"
    assert label(rat=False, name="mart") == "mart"


def test_reading_the_configuration_imports_no_torch():
    """`import ratkit.config` (and `ratkit.choices`, whose names it checks) stays light: a fresh
    interpreter, since this one has torch loaded. The method classes come only when first asked for."""
    code = ("import sys\n"
            "import ratkit.config\n"
            "from ratkit.config import EvalConfig, wrappers\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ratkit'))\n"
            "EvalConfig()\n"
            "assert 'torch' not in sys.modules\n"
            "from ratkit.config import WRAPPERS\n"
            "assert WRAPPERS is wrappers() and 'torch' in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
