"""Data parallelism with torchrun (2 gloo ranks on CPU) equals one process on the global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_run

from ratkit.attacks import PGDConfig, advance_generator, pgd
from ratkit.checkpoints import read_checkpoint
from ratkit.models import build_model

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
WORKER = str(HERE / "distributed_worker.py")


def _run(*args, ranks: int = 1, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
                if ranks > 1 else [sys.executable])
    result = subprocess.run([*launcher, WORKER, *map(str, args)], capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("method", ["rat-trades", "awp-rat-trades", "rat-exact-trades"])
def test_two_ranks_with_half_batches_take_the_single_process_step(tmp_path, method):
    _run("step", method, tmp_path / "one.pt")
    _run("step", method, tmp_path / "two.pt", ranks=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-5, msg=name)
    torch.manual_seed(0)
    initial = build_model("smallcnn", num_classes=10, in_channels=1, channels=[4, 8], hidden=16,
                          input_size=[28, 28]).state_dict()
    assert max((one[k] - initial[k]).abs().max().item() for k in one) > 1e-3  # the step did move the weights


def test_sharded_evaluation_gives_exactly_the_single_process_per_example_results(tmp_path):
    _run("eval", tmp_path / "one.json")
    _run("eval", tmp_path / "two.json", ranks=2)
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert set(one["attacks"]) == {"clean", "fgsm", "pgd20", "cw30", "aa"}
    for name, result in one["attacks"].items():
        assert two["attacks"][name]["correct"] == result["correct"], name
        assert two["attacks"][name]["n"] == result["n"]
    assert two["robust_accuracy"] == one["robust_accuracy"] and two["robust_n"] == one["robust_n"] == 16
    assert "0" in one["attacks"]["pgd20"]["correct"] and "1" in one["attacks"]["clean"]["correct"]


@pytest.mark.parametrize("cfg", [PGDConfig(0.1, 0.025, 3), PGDConfig(0.1, 0.025, 3, random_start="normal"),
                                 PGDConfig(0.5, 0.1, 2, norm="L2", restarts=2), PGDConfig(0.1, 0.1, 1,
                                                                                          random_start="none")])
def test_advance_generator_consumes_exactly_what_pgd_draws(cfg):
    model = build_model("smallcnn", num_classes=10, in_channels=1, channels=[2, 4], hidden=8, input_size=[28, 28])
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    attacked, skipped = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    pgd(model, x, y, cfg, generator=attacked)
    advance_generator(x, cfg, skipped)
    assert torch.equal(attacked.get_state(), skipped.get_state())


TINY = tiny_run("data.train_subset=256", "train.epochs=2", "attack.steps=2", "train.val_n=64", "optim.lr=0.002")


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_a_run_interrupted_with_one_world_size_resumes_with_another(tmp_path, first, then):
    run = tmp_path / "run"
    _run("train", json.dumps(TINY), run, 10, 0, ranks=first)  # stops in epoch 2 (8 steps per epoch)
    _, meta = read_checkpoint(run / "last")
    assert meta["progress"]["global_step"] == 10 and meta["progress"]["epoch"] == 1
    _run("train", "[]", run, 0, 1, ranks=then)
    _, meta = read_checkpoint(run / "last")
    assert meta["progress"]["epoch"] == 2 and meta["progress"]["global_step"] == 16
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] > 0


def test_torchrun_rat_train_trains_on_two_ranks_and_rank_0_writes_the_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    overrides = [a for o in TINY for a in ("--set", o)] + ["--set", "eval.attacks=clean,pgd20", "--set", "eval.n=64",
                                                           "--set", "eval.aa_n=null"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "ratkit", "train", "--out", str(tmp_path / "run"), "--quiet", *overrides],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training finished") == 1 and result.stdout.count("PGD-20") == 1
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["attacks"]["clean"]["n"] == 64
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_torchrun_rat_eval_prints_one_report_equal_to_the_single_process_one(tmp_path):
    from ratkit.checkpoints import save_model
    from ratkit.models import model_spec

    kwargs = dict(num_classes=10, in_channels=1, channels=[4, 8], hidden=16, input_size=[28, 28])
    torch.manual_seed(0)
    save_model(tmp_path / "m", build_model("smallcnn", **kwargs), model_spec("smallcnn", **kwargs),
               {"dataset": "synthetic"})
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    args = ["-m", "ratkit", "eval", str(tmp_path / "m.safetensors"), "--attacks", "clean,pgd20", "--images", "40",
            "--batch-size", "8", "--quiet"]
    one = subprocess.run([sys.executable, *args, "--json", str(tmp_path / "one.json")], capture_output=True,
                         text=True, env=env, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                          "--json", str(tmp_path / "two.json")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("Evaluation on") == 1  # one report, from rank 0
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert b["attacks"]["pgd20"]["correct"] == a["attacks"]["pgd20"]["correct"]


def _tiny_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for c, name in enumerate(("a", "b", "c")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(60 + 70 * c + rng.integers(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("stream", [False, True])
def test_a_folder_dataset_trains_on_two_ranks_and_resumes_on_one_as_one_process_trains(tmp_path, stream):
    """Each rank reads its share (streamed: decodes only its rows of every global batch); a run
    stopped on 2 ranks resumes on 1 and ends where a single process ends."""
    folder = _tiny_folder(tmp_path / "imgs")
    overrides = ["data.dataset=folder", f"data.data_dir={folder}", "data.eps=0.03", f"data.stream={str(stream).lower()}",
                 "data.workers=0", "data.val_size=8", "train.val_n=8", "train.batch_size=8", "train.epochs=2", "data.image_size=[28, 28]",
                 "model.kwargs={channels: [4, 8], hidden: 16}", "attack.steps=2", "attack.step_size=null",
                 "optim.schedule=constant", "data.augment=true"]
    _run("train", json.dumps(overrides), tmp_path / "one", 0, 0, ranks=1)
    _run("train", json.dumps(overrides), tmp_path / "two", 7, 0, ranks=2)  # stops in epoch 2 (5 steps per epoch)
    _, meta = read_checkpoint(tmp_path / "two" / "last")
    assert meta["progress"]["global_step"] == 7
    _run("train", "[]", tmp_path / "two", 0, 1, ranks=1)
    a, _ = read_checkpoint(tmp_path / "one" / "last")
    b, meta = read_checkpoint(tmp_path / "two" / "last")
    assert meta["progress"]["epoch"] == 2
    for k in a:
        if k.startswith("model/"):
            assert torch.allclose(a[k], b[k], atol=1e-5), k
