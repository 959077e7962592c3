"""Run by tests/test_distributed.py, once alone and once under torchrun with 2 gloo ranks."""

import json
import sys

import torch

from ratkit import distributed
from ratkit.attacks import BatchShard
from ratkit.bench import bench_method
from ratkit.models import build_model

GLOBAL_BATCH = 16


def one_step(method_name: str, out: str) -> None:
    """One training step of ``method_name`` on a fixed global batch; rank 0 saves the weights."""
    rank = distributed.init_from_environment("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=10, in_channels=1, channels=[4, 8], hidden=16, input_size=[28, 28])
    g = torch.Generator().manual_seed(1)
    x = 0.1 + 0.8 * torch.rand(GLOBAL_BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
    train_model, part, shard = model, slice(None), None
    if rank.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
        part = distributed.shard(GLOBAL_BATCH, rank)
        shard = BatchShard(part.start, part.stop, GLOBAL_BATCH)
    method = bench_method(method_name, eps=0.1, attack_steps=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.step(train_model, optimizer, x[part], y[part], generator=torch.Generator().manual_seed(5), shard=shard)
    if rank.is_main:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)


def train_run(overrides_json: str, run_dir: str, stop_at: str, resume: str) -> None:
    """``rat train`` on synthetic data; stop_at > 0 interrupts at that global step."""
    from ratkit.config import load_config
    from ratkit.train import TrainingInterrupted, load_run_config, train

    torch.set_num_threads(1)
    stop = int(stop_at)

    def on_step(progress):
        if stop and progress.global_step == stop:
            raise KeyboardInterrupt

    cfg = load_run_config(run_dir) if resume == "1" else load_config("fmnist-cpu", json.loads(overrides_json))
    try:
        train(cfg, run_dir, resume=resume == "1", quiet=True, on_step=on_step)
    except TrainingInterrupted:
        pass


def evaluate_fixed_model(out: str) -> None:
    """The protocol on a fixed model and 40 synthetic images, batches of 8; rank 0 writes the report."""
    from ratkit.data import synthetic_data
    from ratkit.evaluate import evaluate

    rank = distributed.init_from_environment("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=10, in_channels=1, channels=[4, 8], hidden=16, input_size=[28, 28])
    data = synthetic_data(40, seed=3)
    report = evaluate(model, data.x, data.y, dataset="synthetic", eps=0.1, batch_size=8, aa_n=16, seed=0,
                      quiet=True)
    if rank.is_main:
        with open(out, "w") as f:
            json.dump(report.to_json(), f)


if __name__ == "__main__":
    {"step": one_step, "train": train_run, "eval": evaluate_fixed_model}[sys.argv[1]](*sys.argv[2:])
    distributed.exit_cleanly(0)
