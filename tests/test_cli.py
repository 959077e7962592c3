"""Specifications of the ``rat`` command line: results on success, one line and exit 2 on user errors."""

import json

import pytest
import torch

from helpers import run_rat as _rat

from ratkit.checkpoints import save_model
from ratkit.cli import main
from ratkit.models import build_model, model_spec


def test_eval_of_a_checkpoint_prints_the_table_and_writes_json(tmp_path, capsys):
    kw = dict(num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,), channels=(4, 8), hidden=16)
    torch.manual_seed(0)
    path = save_model(tmp_path / "run" / "best", build_model("smallcnn", **kw), model_spec("smallcnn", **kw),
                      {"dataset": "synthetic"})
    out_json = tmp_path / "report.json"
    code = main(["eval", str(path.parent), "--attacks", "clean,fgsm,pgd20", "--n", "40", "--quiet",
                 "--json", str(out_json), "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    assert "FGSM" in text and "robust (worst case)" in text and "first 40" in text
    report = json.loads(out_json.read_text())
    assert report["dataset"] == "synthetic" and report["attacks"]["pgd20"]["n"] == 40
    assert report["eps"] == pytest.approx(0.1)


def test_eval_of_an_untrained_model_needs_no_checkpoint(capsys):
    assert main(["eval", "--untrained", "smallcnn", "--dataset", "synthetic", "--n", "8",
                 "--attacks", "clean", "--quiet"]) == 0
    assert "untrained smallcnn" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["eval", "no/such/run"], "no such checkpoint"),
    (["eval", "--untrained", "smallcnn", "--dataset", "imagenet"], "imagenet"),
    (["eval", "--untrained", "smallcnn", "--dataset", "cifar10", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["eval", "--untrained", "smallcnn", "--dataset", "synthetic", "--attacks", "pgd21"], "pgd21"),
    (["eval", "--untrained", "no-such-net", "--dataset", "synthetic"], "no-such-net"),
])
def test_user_errors_are_one_line_on_stderr_with_exit_code_2(args, needle):
    result = _rat(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_tampered_checkpoint_exits_2_without_traceback(tmp_path):
    kw = dict(channels=(4, 8), hidden=16)
    path = save_model(tmp_path / "m", build_model("smallcnn", **kw), model_spec("smallcnn", **kw),
                      {"dataset": "synthetic"})
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x55
    path.write_bytes(bytes(raw))
    result = _rat("eval", str(path))
    assert result.returncode == 2 and "SHA-256" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("out", ["2024-05-01", "yes", "123", "null", "~"])
def test_train_out_names_the_directory_literally(tmp_path, monkeypatch, out):
    """Flags are typed values, never re-parsed as YAML: a date, yes, a number, null and ~ are names."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "synthetic", "--train-subset", "64", "--epochs", "1", "--batch-size", "32",
                 "--set", "data.val_size=32", "--set", "train.val_n=16", "--set", "model.kwargs.channels=[2,4]",
                 "--set", "model.kwargs.hidden=8", "--set", "attack.steps=1", "--no-eval", "--quiet",
                 "--out", out]) == 0
    assert (tmp_path / out / "last.safetensors").exists()
    import yaml

    assert yaml.safe_load((tmp_path / out / "config.yaml").read_text())["train"]["out"] == out


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
def test_untrained_smallcnn_is_built_for_the_datasets_image_size(dataset):
    from ratkit.data import dataset_info
    from ratkit.models import model_kwargs_for

    info = dataset_info(dataset)
    model = build_model("smallcnn", **model_kwargs_for("smallcnn", info))
    assert model(torch.rand(2, *info.image_shape)).shape == (2, info.num_classes)


def test_rat_eval_untrained_smallcnn_runs_on_cifar10(tmp_path, capsys):
    from test_data import write_cifar10

    write_cifar10(tmp_path)
    assert main(["eval", "--untrained", "smallcnn", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                 "--attacks", "clean,fgsm", "--quiet"]) == 0
    assert "FGSM" in capsys.readouterr().out


def test_importing_the_cli_imports_no_torch():
    """The CLI imports the library where it uses it, so that ``rat train`` installs its preemption
    handlers (:func:`ratkit.cli.main`) before anything heavy is imported."""
    import os
    import subprocess
    import sys

    from helpers import SRC

    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", "import sys, ratkit.cli; "
                           "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_commands_that_load_a_checkpoint_share_one_pair_of_model_code_flags():
    from ratkit.cli import build_parser, model_code_policy
    from ratkit.models import ModelCodePolicy

    parser = build_parser()
    for command in (["eval", "ck"], ["export", "ck", "--out", "m.pt"], ["landscape", "ck"], ["hessian", "ck"]):
        named = parser.parse_args([*command, "--model", "nets:Net"])
        trusted = parser.parse_args([*command, "--trust-model-code"])
        assert model_code_policy(named) == ModelCodePolicy(allowed="nets:Net"), command
        assert model_code_policy(trusted) == ModelCodePolicy(trust_all=True), command
        assert model_code_policy(parser.parse_args(command)) == ModelCodePolicy(), command


def test_presets_lists_each_preset_with_what_it_is_and_an_empty_directory_is_one_line(tmp_path, monkeypatch,
                                                                                       capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("fmnist-cpu ") for line in out.splitlines()) and "study grids in" in out
    monkeypatch.setenv("RAT_CONFIG_DIR", str(tmp_path))
    assert main(["presets"]) == 2
    assert capsys.readouterr().err.strip() == f"rat presets: error: no presets in {tmp_path}"
