"""Specifications of ``attack.precision: auto`` (bfloat16 where the device computes it natively,
float32 elsewhere), its record in the run, the warning for an emulated bfloat16, the MPS choice
and the machine record; RAT_CPU_BF16 stands in for the CPU's capability."""

import pytest
import torch
import yaml

import ratkit.device as device_module
from ratkit.config import attack_precision, load_config, with_resolved_precision
from ratkit.device import environment, native_bfloat16, resolve_device, resolve_precision
from ratkit.train import build_method, resume_config, train

TINY = ["data.dataset=synthetic", "data.val_size=64", "data.train_subset=128", "train.epochs=1",
        "model.kwargs.channels=[4,8]", "model.kwargs.hidden=16", "attack.steps=2", "train.batch_size=32",
        "train.val_n=32", "eval.attacks=clean", "eval.n=32", "eval.aa_n=null", "train.device=cpu"]


@pytest.mark.parametrize("flag,expected", [("0", "float32"), ("1", "bfloat16")])
def test_auto_follows_the_cpus_bfloat16_capability(monkeypatch, flag, expected):
    monkeypatch.setenv("RAT_CPU_BF16", flag)
    assert native_bfloat16("cpu")[0] is (flag == "1")
    precision, why = resolve_precision("auto", "cpu")
    assert precision == expected and f"auto -> {expected}" in why and "RAT_CPU_BF16" in why


def test_without_the_override_the_detection_uses_avx512_bf16_or_amx_not_mkldnn(monkeypatch):
    monkeypatch.delenv("RAT_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for amx, avx512 in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v, raising=False)
        assert native_bfloat16("cpu")[0] is (amx or avx512)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)  # a torch without the private checks
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: (_ for _ in ()).throw(RuntimeError()),
                        raising=False)
    assert native_bfloat16("cpu")[0] is False


def test_the_presets_default_is_auto_and_the_paper_presets_keep_float32():
    assert load_config("fmnist-cpu").attack.precision == "auto"
    assert load_config(None, ["data.dataset=synthetic"]).attack.precision == "auto"
    for preset in ("cifar10-trades-wrn34", "cifar100-awp-rat-trades-wrn34", "cifar10-rat-trades-preactresnet18"):
        assert load_config(preset).attack.precision == "float32"


@pytest.mark.parametrize("flag,expected", [("0", "float32"), ("1", "bfloat16")])
def test_a_run_with_auto_trains_in_the_resolved_precision_says_so_and_records_it(tmp_path, monkeypatch, capsys,
                                                                                 flag, expected):
    monkeypatch.setenv("RAT_CPU_BF16", flag)
    cfg = load_config("fmnist-cpu", TINY)
    assert build_method(cfg).base.attack.precision == expected  # what the step is built with
    run = train(cfg, tmp_path / "r")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"training attack precision: auto -> {expected}: " + native_bfloat16("cpu")[1]
    assert yaml.safe_load((run / "config.yaml").read_text())["attack"]["precision"] == expected


def test_a_resume_keeps_the_precision_the_run_started_with_on_another_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAT_CPU_BF16", "1")
    run = train(load_config("fmnist-cpu", TINY), tmp_path / "r", quiet=True)
    monkeypatch.setenv("RAT_CPU_BF16", "0")  # resumed on a machine without native bfloat16
    cfg = resume_config(run, ["train.epochs=2"])
    assert cfg.attack.precision == "bfloat16"
    train(cfg, run, resume=True)
    err = capsys.readouterr().err
    assert "warning: training attack precision: bfloat16 as configured" in err and "slower" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["attack"]["precision"] == "bfloat16"


def test_an_explicit_bfloat16_without_native_support_runs_with_one_warning_line(monkeypatch):
    monkeypatch.setenv("RAT_CPU_BF16", "0")
    cfg, line = with_resolved_precision(load_config("fmnist-cpu", [*TINY, "attack.precision=bfloat16"]), "cpu")
    assert cfg.attack.precision == "bfloat16" and line.startswith("warning:") and "\n" not in line
    assert "5-9x slower" in line
    monkeypatch.setenv("RAT_CPU_BF16", "1")
    assert not with_resolved_precision(cfg, "cpu")[1].startswith("warning")
    assert attack_precision(load_config("fmnist-cpu", ["attack.precision=float32"])) == "float32"


def test_auto_device_takes_mps_after_cuda_before_the_cpu_with_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "mps_available", lambda: True)
    assert resolve_device("auto").type == "mps" and resolve_device("mps").type == "mps"
    assert resolve_precision("auto", "mps")[0] == "float32"
    monkeypatch.setattr(device_module, "mps_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="MPS was requested"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_the_machine_record_has_the_vector_capability_and_native_bfloat16(monkeypatch):
    monkeypatch.setenv("RAT_CPU_BF16", "0")
    env = environment("cpu")
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["bf16_native"] is False


def test_every_shipped_study_grid_names_its_attack_precision_and_plans_no_budget():
    """The committed runs were made with a bfloat16 attack and no plan: a grid reruns them as they were."""
    from ratkit.config import preset_dir
    from ratkit.study.grid import load_grid, run_config

    grids = sorted((preset_dir() / "studies").glob("*.yaml"))
    assert grids
    for path in grids:
        grid = load_grid(path)
        for name in grid.runs:
            cfg = run_config(grid, name, 0)
            assert cfg.attack.precision != "auto" and cfg.train.budget_s is None, (path.name, name)


def test_a_study_on_a_machine_that_emulates_bfloat16_says_the_expected_slowdown_once(monkeypatch):
    from ratkit.config import preset_dir
    from ratkit.study.grid import emulated_bfloat16_notice, load_grid

    grid = load_grid(preset_dir() / "studies" / "core.yaml")
    monkeypatch.setenv("RAT_CPU_BF16", "0")
    notice = emulated_bfloat16_notice(grid)
    assert notice is not None and "bfloat16" in notice and "slower" in notice and "\n" not in notice
    monkeypatch.setenv("RAT_CPU_BF16", "1")
    assert emulated_bfloat16_notice(grid) is None
