"""Specifications of the ``rat`` command line: results on success, one line and exit 2 on user errors."""

import json

import pytest
import torch

from helpers import run_rat as _rat

from ratkit.checkpoint import save_model
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
