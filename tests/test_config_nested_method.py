"""Specifications of the nested method section (issue 33): ``method.rat`` and ``method.awp`` are the
keyword arguments of RAT and AWP, their defaults read from the classes, and every config written in
the flat form of earlier releases (files, run directories, ``--set``) still means what it meant."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import run_rat
from tiny import QUICK_EVAL, tiny_run

from ratkit.bench import METHODS, bench_method
from ratkit.checkpoints import read_checkpoint, save_checkpoint
from ratkit.config import (FLAT_METHOD_KEYS, ConfigError, MethodConfig, attack_precision, config_from_dict,
                           config_to_dict, load_config,
                           method_label, upgrade_flat_method, validate, wrapper_arguments)
from ratkit.methods import AT, AWP, RAT, TRADES, compose_method
from ratkit.train import build_method, load_run_config, same_run, train

DATA = Path(__file__).resolve().parent / "data"

# config.yaml files as the last release wrote them: a run of the core study (RAT-TRADES, exact-head),
# and one with every RAT and AWP setting away from its default
FLAT_FILES = {
    "config-flat-rat-exact-trades.yaml": {"name": "trades", "beta": 3.0, "rat": {"taylor": "exact-head"}, "awp": None},
    "config-flat-awp-rat-at.yaml": {"name": "at", "beta": 3.0,
                                    "rat": {"alpha": 0.3, "sigma": 1e-3, "order": [2], "clean_terms": "always",
                                            "noise_layers": "all"},
                                    "awp": {"gamma": 0.01, "warmup": 2}},
}


# --------------------------------------------------------------------------- the classes are the one source


def test_the_wrappers_arguments_and_defaults_are_read_from_the_classes():
    rat = {f.name: f.default for f in dataclasses.fields(RAT) if f.name != "base"}
    assert {k: default for k, (_, default) in wrapper_arguments(RAT).items()} == {**rat, "order": list(RAT.order)}
    assert {k: default for k, (_, default) in wrapper_arguments(AWP).items()} == {"gamma": None, "warmup": 0}
    # the config holds no second copy: no field of MethodConfig is an argument of a wrapper
    fields = {f.name for f in dataclasses.fields(MethodConfig)}
    assert fields == {"name", "beta", "rat", "awp"} and MethodConfig().beta == TRADES.beta
    # an empty mapping is the class's defaults, recorded in full
    cfg = config_from_dict({"method": {"rat": {}, "awp": {}}})
    attack = TRADES.training_attack(0.1, 10, 0.025, "Linf", attack_precision(cfg))  # auto: this machine's choice
    assert build_method(cfg) == AWP(RAT(TRADES(attack=attack)))
    assert cfg.method.rat == {**rat, "order": [1, 2]} and cfg.method.awp == {"gamma": None, "warmup": 0}


# --------------------------------------------------------------------------- (1) files the last release wrote


@pytest.mark.parametrize("name", sorted(FLAT_FILES))
def test_a_config_yaml_the_last_release_wrote_builds_the_method_of_the_nested_form(name):
    raw = yaml.safe_load((DATA / name).read_text())
    assert raw["method"]["rat"] is True and "alpha" in raw["method"]  # the fixture is in the flat form
    old = load_config(DATA / name)
    new = config_from_dict({**raw, "method": FLAT_FILES[name]})
    assert old == new and same_run(old, new) and same_run(new, old)
    assert method_label(old) == {"config-flat-rat-exact-trades.yaml": "rat-exact-trades",
                                 "config-flat-awp-rat-at.yaml": "awp-rat-at"}[name]
    method = build_method(old)
    assert type(method) is type(build_method(new)) and method == build_method(new)
    if name == "config-flat-rat-exact-trades.yaml":  # what the last release built from it
        assert method == RAT(TRADES(attack=TRADES.training_attack(0.1, 5, 0.04, "Linf", "bfloat16"), beta=3.0),
                             taylor="exact-head")
    else:
        assert method == AWP(RAT(AT(attack=AT.training_attack(0.1, 5, 0.04, "Linf", "bfloat16")), alpha=0.3,
                                 sigma=1e-3, order=(2,), clean_terms="always", noise_layers="all"),
                             gamma=0.01, warmup=2)
    # written back, it is in the nested form, and reads back equal
    written = config_to_dict(old)["method"]
    assert set(written) == {"name", "beta", "rat", "awp"} and isinstance(written["rat"], dict)
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(old)))) == old


def test_a_wrapper_that_was_off_converts_to_null_and_its_flat_settings_are_dropped():
    flat = {"method": {"rat": False, "alpha": 0.5, "sigma": 0.1, "awp": False, "awp_gamma": 0.02, "awp_warmup": 10}}
    assert upgrade_flat_method(flat) == {"method": {"rat": None, "awp": None}}
    assert upgrade_flat_method({"method": {"awp_gamma": 0.02}}) == {"method": {}}  # AWP was off by default
    assert upgrade_flat_method({"method": {"rat": True, "alpha": 0.1}}) == {"method": {"rat": {"alpha": 0.1}}}
    assert set(FLAT_METHOD_KEYS) == {"alpha", "sigma", "order", "pairing", "clean_terms", "noise_layers", "taylor",
                                     "taylor_sigma", "awp_gamma", "awp_warmup"}


def test_files_mixing_the_forms_through_base_mean_what_each_layer_says(tmp_path):
    # an old file over a new preset: `awp: true` keeps the preset's AWP arguments, flat keys go into the mapping
    (tmp_path / "a.yaml").write_text("base: cifar10-awp-trades-wrn34\nmethod: {awp: true, rat: true, alpha: 0.1}\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert cfg.method.awp == {"gamma": 5e-3, "warmup": 10} and cfg.method.rat["alpha"] == 0.1
    # flat RAT settings over a base with RAT off leave it off, as they did
    (tmp_path / "b.yaml").write_text("base: cifar10-trades-wrn34\nmethod: {alpha: 0.1}\n")
    assert load_config(tmp_path / "b.yaml").method.rat is None
    # a new file over an old one: the later layer wins, key by key
    (tmp_path / "old.yaml").write_text("method: {rat: true, alpha: 0.1, sigma: 0.001}\n")
    (tmp_path / "c.yaml").write_text("base: old.yaml\nmethod: {rat: {alpha: 0.3}}\n")
    rat = load_config(tmp_path / "c.yaml").method.rat
    assert (rat["alpha"], rat["sigma"]) == (0.3, 1e-3)


# --------------------------------------------------------------------------- (2) an old run directory


def _flat_method(method: dict) -> dict:
    """A nested method section as the last release wrote it (every flat key, in its order)."""
    rat = method["rat"] or {k: d for k, (_, d) in wrapper_arguments(RAT).items()}
    awp = method["awp"] or {k: d for k, (_, d) in wrapper_arguments(AWP).items()}
    return {"name": method["name"], "beta": method["beta"], "rat": method["rat"] is not None,
            **{k: rat[k] for k in ("alpha", "sigma", "order", "pairing", "clean_terms", "noise_layers", "taylor",
                                   "taylor_sigma")},
            "awp": method["awp"] is not None, "awp_gamma": awp["gamma"], "awp_warmup": awp["warmup"]}


def _as_the_last_release_wrote_it(run: Path) -> None:
    """Rewrite a run directory's config.yaml and its checkpoints' recorded config in the flat form."""
    d = yaml.safe_load((run / "config.yaml").read_text())
    d["method"] = _flat_method(d["method"])
    (run / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    for name in ("best", "last"):
        tensors, meta = read_checkpoint(run / name)
        meta["config"]["method"] = _flat_method(meta["config"]["method"])
        save_checkpoint(run / name, tensors, meta)


TINY = tiny_run("data.train_subset=64", *QUICK_EVAL, "method.awp.warmup=1")


def _accuracies(result) -> list[str]:
    """rat eval's table without its seconds column."""
    assert result.returncode == 0, result.stderr
    return [re.sub(r"\s+[0-9.]+$", "", line) for line in result.stdout.splitlines() if "%" in line]


def test_an_old_run_directory_resumes_evaluates_and_exports(tmp_path):
    cfg = load_config("fmnist-cpu", TINY)
    run = train(cfg, tmp_path / "run", quiet=True)
    evaluate = ("eval", str(run), "--attacks", "clean,pgd20", "--n", "32", "--no-resume", "--quiet")
    before = _accuracies(run_rat(*evaluate))
    _as_the_last_release_wrote_it(run)
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["awp_warmup"] == 1
    _, meta = read_checkpoint(run / "best")
    assert meta["config"]["method"]["rat"] is True and config_from_dict(meta["config"]) == load_run_config(run)

    assert same_run(load_run_config(run), cfg)  # a study finds its run, and resumes it
    # rat eval reads the run's recorded config and gives the same numbers
    assert _accuracies(run_rat(*evaluate)) == before and len(before) == 3
    # rat train --resume goes on: the only change recorded is the one asked for
    resumed = run_rat("train", "--resume", str(run), "--epochs", "2", "--no-eval", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    _, meta = read_checkpoint(run / "last")
    assert meta["progress"]["epoch"] == 2
    history = yaml.safe_load((run / "config-history.yaml").read_text())
    assert [set(h["changes"]) for h in history] == [{"train.epochs"}]
    assert same_run(load_run_config(run), load_config("fmnist-cpu", [*TINY, "train.epochs=2"]))
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["awp"] == {"gamma": None, "warmup": 1}
    exported = run_rat("export", str(run / "best"), "--out", str(tmp_path / "model.pt"))
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "model.json").read_text())["architecture"] == "smallcnn"


# --------------------------------------------------------------------------- (3) --set with the old keys


@pytest.mark.parametrize("old, new", [
    (["method.alpha=0.1"], ["method.rat.alpha=0.1"]),
    (["method.sigma=1e-3", "method.order=[2]"], ["method.rat={sigma: 1e-3, order: [2]}"]),
    (["method.taylor=exact-head"], ["method.rat.taylor=exact-head"]),
    (["method.taylor=trh", "method.taylor_sigma=0.01"], ["method.rat.taylor=trh", "method.rat.taylor_sigma=0.01"]),
    (["method.pairing=reference", "method.clean_terms=never", "method.noise_layers=all"],
     ["method.rat.pairing=reference", "method.rat.clean_terms=never", "method.rat.noise_layers=all"]),
    (["method.rat=false", "method.alpha=0.5"], ["method.rat=null"]),
    (["method.alpha=0.1", "method.rat=false", "method.rat=true"], ["method.rat.alpha=0.1"]),
    (["method.awp=true", "method.awp_gamma=0.01", "method.awp_warmup=3"], ["method.awp={gamma: 0.01, warmup: 3}"]),
    (["method.awp_gamma=0.01"], []),  # AWP off: the setting had no effect
    ([("method.rat", True), ("method.awp", True), "method.awp_gamma=0.01"], ["method.awp.gamma=0.01"]),  # --rat --awp
    ([("method.rat", False)], ["method.rat=null"]),  # --no-rat
])
def test_set_with_the_old_keys_means_what_the_new_keys_say(old, new):
    assert load_config("fmnist-cpu", old) == load_config("fmnist-cpu", new)


@pytest.mark.parametrize("overrides, alpha", [
    (["method.alpha=0.5", "method.rat.alpha=0.7"], 0.7),
    (["method.rat.alpha=0.7", "method.alpha=0.5"], 0.5),
    (["method.alpha=0.5", "method.rat={alpha: 0.7}"], 0.7),
    (["method.alpha=0.5", "method.rat={sigma: 0.01}"], RAT.alpha),  # a mapping replaces every argument
    (["method.alpha=0.5", "method.rat.sigma=0.01"], 0.5),  # another setting: both stay
])
def test_of_a_flat_and_a_nested_set_for_one_setting_the_later_wins(overrides, alpha, capsys):
    assert load_config("fmnist-cpu", overrides).method.rat["alpha"] == alpha
    assert capsys.readouterr().err == ""  # RAT is on: nothing to warn about


def test_the_later_set_wins_through_the_command_line_too(capsys):
    from ratkit.cli import build_parser
    from ratkit.train.command import train_overrides

    args = build_parser().parse_args(["train", "--set", "method.alpha=0.5", "--set", "method.rat.alpha=0.7"])
    assert load_config(None, train_overrides(args)).method.rat["alpha"] == 0.7


def test_one_file_setting_a_flat_and_a_nested_key_for_one_setting_is_refused_in_one_line(tmp_path):
    (tmp_path / "both.yaml").write_text("base: fmnist-cpu\nmethod: {rat: {alpha: 0.3}, alpha: 0.1}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "both.yaml")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and str(tmp_path / "both.yaml") in message
    assert message.startswith("method.alpha and method.rat.alpha: ")
    (tmp_path / "awp.yaml").write_text("method: {awp: {gamma: 0.01}, awp_gamma: 0.02}\n")
    with pytest.raises(ConfigError, match="method.awp_gamma and method.awp.gamma"):
        load_config(tmp_path / "awp.yaml")
    # other settings, or a flat key over a base's nested one (the later layer), are as before
    (tmp_path / "apart.yaml").write_text("method: {rat: {sigma: 0.01}, alpha: 0.1}\n")
    assert load_config(tmp_path / "apart.yaml").method.rat["alpha"] == 0.1
    (tmp_path / "layer.yaml").write_text("base: both-free.yaml\nmethod: {alpha: 0.2}\n")
    (tmp_path / "both-free.yaml").write_text("method: {rat: {alpha: 0.3}}\n")
    assert load_config(tmp_path / "layer.yaml").method.rat["alpha"] == 0.2


def test_a_flat_set_for_a_wrapper_that_is_off_warns(capsys):
    assert load_config("cifar10-trades-wrn34", ["method.alpha=0.5"]).method.rat is None
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: method.alpha: has no effect, RAT is off") and len(err.splitlines()) == 1
    load_config("fmnist-cpu", ["method.alpha=0.5", "method.awp_gamma=0.02"])  # AWP off in this preset
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: method.awp_gamma: has no effect, AWP is off") and len(err.splitlines()) == 1
    load_config("cifar10-trades-wrn34", ["method.rat.alpha=0.5"])  # the nested key switches RAT on: silent
    assert capsys.readouterr().err == ""


def test_the_rat_and_awp_switches_keep_the_arguments_given_before_them(tmp_path):
    (tmp_path / "mine.yaml").write_text("method: {rat: {alpha: 0.3}, awp: {warmup: 5}}\n")
    cfg = load_config(tmp_path / "mine.yaml", [("method.rat", True), "method.awp=true"])
    assert cfg.method.rat["alpha"] == 0.3 and cfg.method.awp["warmup"] == 5
    assert load_config("cifar10-trades-wrn34", [("method.awp", True)]).method.awp == {"gamma": None, "warmup": 0}
    # a mapping replaces, as --set does for model.kwargs; a key under a wrapper that is off switches it on
    assert load_config(tmp_path / "mine.yaml", ["method.rat={}"]).method.rat["alpha"] == RAT.alpha
    assert load_config("cifar10-trades-wrn34", ["method.awp.gamma=0.02"]).method.awp == {"gamma": 0.02, "warmup": 0}


def test_the_cli_flags_and_set_reach_the_nested_keys(tmp_path):
    result = run_rat("train", "--dataset", "synthetic", "--method", "at", "--rat", "--awp", "--epochs", "1",
                     "--train-subset", "32", "--batch-size", "32", "--set", "data.val_size=32",
                     "--set", "train.val_n=16", "--set", "model.kwargs.channels=[2,4]", "--set", "model.kwargs.hidden=8",
                     "--set", "attack.steps=1", "--set", "method.alpha=0.4", "--set", "method.awp.warmup=2",
                     "--no-eval", "--quiet", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    method = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["method"]
    assert method["rat"]["alpha"] == 0.4 and method["awp"] == {"gamma": None, "warmup": 2} and method["name"] == "at"


# --------------------------------------------------------------------------- (4), (5) errors name the key


@pytest.mark.parametrize("override, message", [
    ("method.rat.alhpa=0.1", "method.rat.alhpa: unknown field; known: "
                             + ", ".join(f.name for f in dataclasses.fields(RAT) if f.name != "base")),
    ("method.awp.gama=0.1", "method.awp.gama: unknown field; known: gamma, warmup"),
    ("method.rat={alpha: 0.1, beta: 6}", "method.rat.beta: unknown field; known: alpha, "),
    ("method.rat=maybe", "method.rat: expected null (off) or a mapping of RAT's arguments (alpha, sigma, "),
    ("method.alhpa=0.1", "method.alhpa: unknown field; known: name, beta, rat, awp"),
])
def test_unknown_keys_get_one_line_naming_the_valid_ones(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("fmnist-cpu", [override])
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("key, value, rule", [
    ("rat.alpha", 2.0, "must be in [0, 1], got 2.0"),
    ("rat.alpha", -0.1, "must be in [0, 1]"),
    ("rat.sigma", -1e-4, "must be >= 0"),
    ("rat.order", [], "must be a non-empty subset"),
    ("rat.order", [1, 1], "must be a non-empty subset"),
    ("rat.order", [3], "must be a non-empty subset"),
    ("rat.pairing", "random", "must be one of"),
    ("rat.noise_layers", "bn", "must be one of"),
    ("rat.taylor", "numeric", "must be one of"),
    ("rat.clean_terms", "sometimes", "must be one of"),
    ("rat.taylor_sigma", 0.0, "must be > 0 or None"),
    ("rat.order", "12", "expected list of int"),
    ("rat.alpha", "lots", "expected float"),
    ("awp.gamma", -1.0, "must be >= 0, got -1.0"),
    ("awp.warmup", -2, "must be >= 0"),
    ("awp.warmup", 1.5, "expected int"),
])
def test_a_bad_argument_is_named_method_rat_key_or_method_awp_key(key, value, rule):
    wrapper, arg = key.split(".")
    old = {"awp.gamma": "awp_gamma", "awp.warmup": "awp_warmup"}.get(key, arg)
    for method in ({wrapper: {arg: value}}, {wrapper: True, old: value}):  # the nested form, the flat one
        with pytest.raises(ConfigError) as info:
            config_from_dict({"method": method})
        assert str(info.value).startswith(f"method.{key}: {rule}"), (method, str(info.value))
    edited = dataclasses.replace(config_from_dict({}), method=MethodConfig(**{wrapper: {arg: value}}))
    with pytest.raises(ConfigError, match="^" + re.escape(f"method.{key}: ")):  # a Config edited in code, too
        validate(edited)


# --------------------------------------------------------------------------- (6) rat bench


def _bench_method_before(name: str, eps: float, attack_steps: int, precision: str = "float32"):
    """What ``bench_method`` built before issue 33 (its labels parsed by string surgery)."""
    base_name = name.replace("awp-", "").replace("rat-", "").replace("exact-", "")
    rat = {"alpha": 0.2, "sigma": 1e-4, "taylor": "exact-head" if "-exact-" in name else "analytic"}
    awp = {"gamma": 5e-3}
    return compose_method(base_name, eps, steps=attack_steps, step_size=eps / 4, precision=precision, beta=6.0,
                          rat=rat if "rat-" in name else None, awp=awp if name.startswith("awp-") else None)


@pytest.mark.parametrize("name", list(METHODS))
def test_the_bench_builds_the_methods_it_built_before_and_its_labels_are_the_configs(name):
    for precision in ("float32", "bfloat16"):
        ours, before = bench_method(name, 0.1, 3, precision), _bench_method_before(name, 0.1, 3, precision)
        assert type(ours) is type(before) and ours == before
    base, rat, awp = METHODS[name]
    cfg = load_config("fmnist-cpu", [f"method.name={base}", ("method.rat", rat), ("method.awp", awp)])
    assert method_label(cfg) == name
