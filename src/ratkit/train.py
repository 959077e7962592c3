"""The trainer: epoch loop, validation-based checkpoint selection, exact resume, logging.

Every run directory holds ``config.yaml``, ``metrics.jsonl``, ``best.*`` (by validation
robust accuracy, never the test set), ``last.*`` (everything needed to resume), ``eval.json``
and ``curves.png``. On CPU, a run and the same run interrupted and resumed end bit-identical:
the data order of an epoch is a pure function of (seed, epoch), and the states of the random
generators, the optimizer and the step counters are saved with ``last``.

For clusters: SIGTERM and SIGUSR1 stop the run at a step boundary with ``last`` saved
(:class:`TrainingPreempted`, a ``preempted`` file in the run directory); ``train.checkpoint_every_s``
saves ``last`` mid-epoch; a resume may change the fields of :data:`RESUME_CHANGEABLE` (recorded in
``config-history.yaml``); ``train.init_from`` starts a new run from a checkpoint's weights.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .attacks import BatchShard
from .checkpoint import CheckpointError, _atomic_write_bytes, checkpoint_path, load_model, read_checkpoint, save_model
from .config import (Config, ConfigError, apply_override, config_from_dict, config_to_dict, method_label,
                     method_settings, resolved_attack, save_config)
from .data import augment, dataset_info, iterate_batches, load_dataset, split_train_val
from .evaluate import evaluate, evaluate_test_set, format_report, parse_attacks
from .methods import Method, NonFiniteLossError, compose_method
from .models import build_from_spec, model_kwargs_for, model_spec


class TrainingStopped(Exception):
    """Training stopped early (non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the progress so far is saved in ``run_dir/last``."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class TrainingPreempted(TrainingInterrupted):
    """SIGTERM or SIGUSR1 (a scheduler's notice) during training: ``last`` is saved at a step
    boundary and the run is resumable; ``rat train`` exits 75 so a job script can requeue it."""

    def __init__(self, run_dir: Path, signal_name: str):
        super().__init__(run_dir)
        self.signal_name = signal_name


# ----------------------------------------------------------------------------- building


def build_method(cfg: Config) -> Method:
    """Base method from the config, wrapped in RAT and/or AWP as asked: AWP(RAT(base)).

    Example: ``build_method(load_config("fmnist-cpu"))`` is RAT(TRADES) with the preset's settings."""
    return compose_method(**method_settings(cfg))


def model_spec_from_config(cfg: Config, info) -> dict:
    """The spec of the model a run builds: the config's name and kwargs on the dataset's shape."""
    return model_spec(cfg.model.name, **model_kwargs_for(cfg.model.name, info, **cfg.model.kwargs))


def build_model_from_config(cfg: Config, info) -> tuple[nn.Module, dict]:
    spec = model_spec_from_config(cfg, info)
    return build_from_spec(spec), spec


def initial_weights(cfg: Config) -> dict[str, Tensor]:
    """The model weights of ``train.init_from`` (CPU tensors), after checking that they were
    trained for the model this run builds: same name and kwargs (classes, channels,
    normalisation included), else the weights would mean something else or not load at all."""
    path = checkpoint_path(cfg.train.init_from)
    try:
        tensors, meta = read_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    theirs, ours = meta.get("model") or {}, model_spec_from_config(cfg, dataset_info(cfg.data.dataset))
    if theirs.get("name") != ours["name"]:
        raise ConfigError(f"train.init_from: {path} holds a {theirs.get('name')!r} model, this run builds "
                          f"{ours['name']!r}; the model (name and kwargs) must be the same")
    a, b = theirs.get("kwargs") or {}, ours["kwargs"]
    differ = [f"{k} {a.get(k)!r} (this run: {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differ:
        raise ConfigError(f"train.init_from: {path} holds a {ours['name']} with " + ", ".join(differ)
                          + "; the model (name and kwargs) must be the same")
    return {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay)


def learning_rate(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step: a pure function, so resuming needs only the step.

    Raising ``train.epochs`` on a resume: multistep milestones and warmup are absolute epochs, so
    the schedule goes on smoothly (past the last milestone, at the last rate); cosine and
    onecycle are functions of the total, so they are recomputed over the new total and the rate
    jumps up at the resume point (cosine from its value at epoch e of E to that at e of E')."""
    o = cfg.optim
    epoch = step / steps_per_epoch
    total = cfg.train.epochs
    if o.schedule == "constant":
        lr = o.lr
    elif o.schedule == "multistep":
        lr = o.lr * o.lr_decay ** sum(epoch >= m for m in o.milestones)
    elif o.schedule == "cosine":
        lr = 0.5 * o.lr * (1 + math.cos(math.pi * min(epoch / total, 1.0)))
    else:  # onecycle: linear up to lr at 40% of training, linear down to 0 at the end
        peak = 0.4 * total
        lr = o.lr * (epoch / peak if epoch < peak else max(0.0, (total - epoch) / (total - peak)))
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        lr *= (step + 1) / (o.warmup_epochs * steps_per_epoch)
    return lr


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when available; asking for CUDA without it is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False")
    return device


def robust_collapse(history: list[dict], margin: float | None, epochs: int) -> str | None:
    """A warning when validation PGD-20 has stayed more than ``margin`` points below its best for
    the last ``epochs`` epochs (None otherwise): a model whose robustness collapses while its
    clean accuracy rises is usually masking gradients (docs/method.md, RAT on bases without a
    clean term), and the best checkpoint then comes from an early epoch.

    Example: ``robust_collapse(trainer.progress.history, margin=5.0, epochs=2)``.
    """
    rows = [r for r in history if "val_pgd20" in r]
    if margin is None or len(rows) <= epochs:
        return None
    best = max(rows, key=lambda r: r["val_pgd20"])
    recent = rows[-epochs:]
    if any(best is r for r in recent) or any(100 * (best["val_pgd20"] - r["val_pgd20"]) <= margin for r in recent):
        return None
    last = rows[-1]
    return (f"validation PGD-20 {100 * last['val_pgd20']:.2f}% at epoch {last['epoch']} has been more than "
            f"{margin:g} points below its best ({100 * best['val_pgd20']:.2f}% at epoch {best['epoch']}) "
            f"for {epochs} epochs: robust accuracy is collapsing")


def epoch_order_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# ----------------------------------------------------------------------------- state I/O


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class Progress:
    """Where training stands; saved with ``last`` so a resume continues exactly here."""

    epoch: int = 0            # the epoch in progress (or the next one, if step_in_epoch == 0)
    step_in_epoch: int = 0
    global_step: int = 0
    best_val_robust: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0  # seconds of training steps over the whole run, resumes included
    partial: dict | None = None  # running sums of the interrupted epoch
    history: list | None = None


# ----------------------------------------------------------------------------- the loop


class StepBoundaryInterrupt:
    """Turn Ctrl-C, SIGTERM and SIGUSR1 into a request honoured after the current training step,
    so the saved progress is always a consistent step boundary.

    Ctrl-C asks to stop (``request == CTRL_C``); a second Ctrl-C interrupts at once. SIGTERM,
    and SIGUSR1 that a scheduler can be told to send ahead of its time limit (SLURM
    ``--signal=USR1@120``), ask for a resumable stop (``PREEMPT``). Repeats of those are ignored:
    a scheduler may send the notice and then SIGTERM, and the step must still finish."""

    NONE, CTRL_C, PREEMPT = 0, 1, 2
    SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.request = self.NONE
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.request != self.NONE

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            self.request, self.signal_name = self.CTRL_C, "SIGINT"
        else:
            self.request, self.signal_name = self.PREEMPT, signal.Signals(signum).name

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):  # no SIGUSR1 on Windows
                    self._previous[name] = signal.signal(getattr(signal, name), self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for name, previous in self._previous.items():
            signal.signal(getattr(signal, name), previous)
        self._previous = {}


def default_run_dir(cfg: Config) -> Path:
    """runs/<dataset>-<method>-seed<seed>-<time>: a new directory for every run, never a clash."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.dataset}-{method_label(cfg)}-seed{cfg.train.seed}-{stamp}"


class Trainer:
    """Owns one run: data, model, method, optimizer, generators, run directory."""

    def __init__(self, cfg: Config, run_dir: Path, *, quiet: bool = False,
                 on_step: Callable[[Progress], None] | None = None):
        self.cfg, self.run_dir, self.quiet, self.on_step = cfg, Path(run_dir), quiet, on_step
        self.device = resolve_device(cfg.train.device)
        self.rank = distributed.init_from_environment(self.device.type)
        self.device = distributed.rank_device(self.device, self.rank)
        if cfg.train.batch_size % self.rank.world_size:
            raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not divide among "
                              f"{self.rank.world_size} ranks")
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        full = load_dataset(cfg.data.dataset, "train", data_dir=cfg.data.data_dir)
        self.train_data, self.val_data = split_train_val(full, cfg.data.val_size, seed)
        if cfg.data.train_subset is not None:
            self.train_data = self.train_data.first(cfg.data.train_subset)
        self.info = full.info
        self.model, self.spec = build_model_from_config(cfg, self.info)
        if self.rank.distributed and cfg.train.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA (DistributedDataParallel refuses it on CPU)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the model the method trains: DDP averages the gradients over the ranks' shards
        self.train_model = self.model
        if self.rank.distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.method = build_method(cfg)
        self.optimizer = build_optimizer(cfg, self.model)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.x = self.train_data.x.to(self.device)
        self.y = self.train_data.y.to(self.device)
        self.steps_per_epoch = max(1, len(self.train_data) // cfg.train.batch_size)
        self.progress = Progress(history=[])
        self.tb = _tensorboard_writer(self.run_dir) if self.rank.is_main else None
        self.interrupt: StepBoundaryInterrupt | None = None
        self.saved_at_s = 0.0  # progress.train_seconds when `last` was last written

    # -- checkpoints ---------------------------------------------------------------------

    def _meta(self) -> dict:
        return {"dataset": self.cfg.data.dataset, "config": config_to_dict(self.cfg),
                "method": method_label(self.cfg)}

    def save_last(self) -> None:
        tensors, optim_meta = _optimizer_to_tensors(self.optimizer)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/generator"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {**self._meta(), "progress": vars(self.progress), "optimizer": optim_meta}
        save_model(self.run_dir / "last", self.model, self.spec, meta, tensors)
        self.saved_at_s = self.progress.train_seconds

    def restore_last(self) -> None:
        tensors, meta = read_checkpoint(self.run_dir / "last", self.device)
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        self.model.load_state_dict(state)
        _optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng/torch"].cpu())
        self.generator.set_state(tensors["rng/generator"].cpu())
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"].cpu(), self.device)
        self.progress = Progress(**meta["progress"])
        self.saved_at_s = self.progress.train_seconds
        # metrics.jsonl may hold an epoch logged after the last checkpoint (kill -9): rewrite it
        if self.rank.is_main:
            self._write_metrics_file()

    def _write_metrics_file(self) -> None:
        with open(self.run_dir / "metrics.jsonl", "w") as f:
            for row in self.progress.history:
                f.write(json.dumps(row) + "\n")

    def honour_stop_request(self) -> None:
        """Stop every rank at this step boundary if any rank was asked to (the strongest request
        wins): Ctrl-C raises KeyboardInterrupt, SIGTERM/SIGUSR1 :class:`TrainingPreempted`."""
        local = self.interrupt.request if self.interrupt is not None else StepBoundaryInterrupt.NONE
        request = distributed.max_over_ranks(local, self.device)
        if request == StepBoundaryInterrupt.PREEMPT:
            name = self.interrupt.signal_name if local == request else "a signal on another rank"
            raise TrainingPreempted(self.run_dir, name)
        if request != StepBoundaryInterrupt.NONE:
            raise KeyboardInterrupt

    # -- one epoch -----------------------------------------------------------------------

    def _validate(self) -> dict:
        if len(self.val_data) == 0:
            return {}
        val = self.val_data if self.cfg.train.val_n is None else self.val_data.first(self.cfg.train.val_n)
        eps, _ = resolved_attack(self.cfg)
        report = evaluate(self.model, val.x, val.y, dataset=self.cfg.data.dataset, eps=eps,
                          norm=self.cfg.attack.norm, attacks=("clean", "pgd20"), batch_size=256,
                          split="val", seed=self.cfg.train.seed, quiet=True)
        return {"val_clean": report.attacks["clean"].accuracy, "val_pgd20": report.attacks["pgd20"].accuracy}

    def run_epoch(self, epoch: int) -> dict:
        from .progress import progress

        cfg, p = self.cfg, self.progress
        sums = p.partial or {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "terms": {}}
        order = epoch_order_generator(cfg.train.seed, epoch)
        batches = iterate_batches(self.train_data, cfg.train.batch_size, shuffle=True, generator=order,
                                  drop_last=True)
        lr = self.optimizer.param_groups[0]["lr"]
        bar = progress(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.train.epochs}", "step", quiet=self.quiet,
                       main=self.rank.is_main, initial=p.step_in_epoch)
        try:
            for i, (xb, yb) in enumerate(batches):
                if i < p.step_in_epoch:
                    continue  # resumed mid-epoch: this batch was already trained on
                started = time.perf_counter()
                xb, yb = xb.to(self.device), yb.to(self.device)
                if cfg.data.augment:
                    xb = augment(xb, self.info, generator=self.generator)
                if cfg.train.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                lr = learning_rate(cfg, p.global_step, self.steps_per_epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                # every rank has the global batch (same order, augmentation and random draws) and
                # trains on its slice of it
                part, shard = slice(None), None
                if self.rank.distributed:
                    part = distributed.shard(len(yb), self.rank)
                    shard = BatchShard(part.start, part.stop, len(yb))
                xs, ys = xb[part], yb[part]
                out = self.method.step(self.train_model, self.optimizer, xs, ys, generator=self.generator,
                                       epoch=epoch, shard=shard)
                elapsed = time.perf_counter() - started
                names = list(out.terms)
                local = torch.stack([t.double() for t in (
                    out.loss.detach() * len(ys), (out.outputs.logits_adv.argmax(1) == ys).sum(),
                    torch.tensor(float(len(ys)), device=ys.device), *[out.terms[k].detach() * len(ys) for k in names])])
                loss_sum, correct, seen, *term_sums = distributed.all_reduce_sum(local).tolist()
                sums["loss"] += loss_sum
                sums["correct"] += int(correct)
                sums["seen"] += int(seen)
                sums["seconds"] += elapsed
                for k, v in zip(names, term_sums):
                    sums["terms"][k] = sums["terms"].get(k, 0.0) + v
                p.step_in_epoch, p.global_step = i + 1, p.global_step + 1
                p.train_seconds += elapsed
                p.partial = sums
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                                adv_acc=f"{sums['correct'] / sums['seen']:.3f}",
                                img_s=f"{sums['seen'] / max(sums['seconds'], 1e-9):.0f}")
                if self.on_step is not None:
                    self.on_step(p)
                self.honour_stop_request()
                every = cfg.train.checkpoint_every_s
                if (every is not None and self.rank.is_main and p.step_in_epoch < self.steps_per_epoch
                        and p.train_seconds - self.saved_at_s >= every):
                    self.save_last()  # mid-epoch: a kill -9 loses at most `every` seconds of steps
        finally:
            bar.close()
        seen = max(sums["seen"], 1)
        return {"epoch": epoch + 1, "lr": lr, "train_loss": sums["loss"] / seen,
                "train_adv_acc": sums["correct"] / seen,
                **{f"train_{k}": v / seen for k, v in sums["terms"].items()},
                "train_seconds": sums["seconds"], "images_per_s": sums["seen"] / max(sums["seconds"], 1e-9)}

    # -- the whole run -------------------------------------------------------------------

    def fit(self) -> None:
        cfg, p = self.cfg, self.progress
        budget = cfg.train.time_budget_s
        while p.epoch < cfg.train.epochs:
            # the budget counts training steps over the whole run, resumes included; it is checked
            # between epochs, so a resumed partial epoch is finished as the uninterrupted run would
            over = budget is not None and p.step_in_epoch == 0 and p.train_seconds >= budget
            if distributed.any_rank(over, self.device):
                if self.rank.is_main:
                    print(f"time budget of {budget:.0f} s of training reached after epoch {p.epoch} "
                          f"({p.train_seconds:.0f} s); stopping", flush=True)
                break
            epoch = p.epoch
            try:
                row = self.run_epoch(epoch)
            except KeyboardInterrupt:
                if self.rank.is_main:
                    self.save_last()
                raise
            except NonFiniteLossError as exc:
                raise TrainingStopped(f"epoch {epoch + 1}, step {p.step_in_epoch + 1}: {exc}; "
                                      f"the last good checkpoint is {self.run_dir / 'last.safetensors'}") from None
            row.update(self._validate())
            p.epoch, p.step_in_epoch, p.partial = epoch + 1, 0, None
            robust = row.get("val_pgd20", -1.0)
            main = self.rank.is_main  # one writer: checkpoints, logs and prints come from rank 0
            if robust > p.best_val_robust or len(self.val_data) == 0:
                p.best_val_robust, p.best_epoch = robust, epoch + 1
                if main:
                    save_model(self.run_dir / "best", self.model, self.spec,
                               {**self._meta(), "epoch": epoch + 1,
                                "val": {k: v for k, v in row.items() if k.startswith("val_")}})
            row["best_epoch"] = p.best_epoch
            warning = robust_collapse([*p.history, row], cfg.train.collapse_margin, cfg.train.collapse_epochs)
            if warning is not None:
                row["warning"] = warning
            p.history.append(row)
            if main:
                self.save_last()
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, epoch + 1)
            if not self.quiet and main:
                val = (f", val clean {100 * row['val_clean']:.2f}%, val PGD-20 {100 * row['val_pgd20']:.2f}%"
                       if "val_clean" in row else "")
                print(f"epoch {epoch + 1}/{cfg.train.epochs}: loss {row['train_loss']:.4f}, "
                      f"train adv acc {100 * row['train_adv_acc']:.2f}%{val}, {row['train_seconds']:.0f} s "
                      f"({row['images_per_s']:.0f} img/s)", flush=True)
            if warning is not None and main:  # printed even when quiet: the user must see it
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            self.honour_stop_request()  # a signal during validation: stop here, `last` is saved
        if self.rank.is_main:
            plot_curves(p.history, self.run_dir / "curves.png")


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracies per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in [("train_adv_acc", "train (adversarial)"), ("val_clean", "val clean"), ("val_pgd20", "val PGD-20")]:
        if key in history[0]:
            ax2.plot(epochs, [100 * r[key] for r in history], marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry points


def prepare_run(cfg: Config, out: str | Path | None = None) -> Path:
    run_dir = Path(out or cfg.train.out or default_run_dir(cfg))
    if (run_dir / "last.safetensors").exists():
        raise CheckpointError(f"{run_dir}: already holds a run; use --resume {run_dir} or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text("")
    return run_dir


def load_run_config(run_dir: str | Path) -> Config:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml, not a run directory")
    return config_from_dict(yaml.safe_load(path.read_text()))


# What a resume may change: how long the run goes on, how often it saves, how it is validated,
# evaluated and where its data lie; never what a training step computes (model, method, data,
# seed, batch, optimizer, attack), since the saved state would then continue a different run.
RESUME_CHANGEABLE = ("train.epochs", "train.time_budget_s", "train.checkpoint_every_s", "train.val_n",
                     "train.collapse_margin", "train.collapse_epochs", "data.data_dir", "eval.*")
HISTORY_FILE = "config-history.yaml"
PREEMPTED_FILE = "preempted"


def config_changes(old: Config, new: Config) -> dict[str, tuple]:
    """``{"section.key": (old, new)}`` for every field that differs."""
    a, b = config_to_dict(old), config_to_dict(new)
    return {f"{sec}.{key}": (a[sec][key], b[sec][key]) for sec in a for key in a[sec] if a[sec][key] != b[sec][key]}


def check_resume_changes(changes: dict[str, tuple]) -> None:
    """ConfigError naming the first changed field a resume may not change."""
    for name, (old, new) in changes.items():
        if name not in RESUME_CHANGEABLE and f"{name.split('.')[0]}.*" not in RESUME_CHANGEABLE:
            raise ConfigError(f"{name}: cannot change when resuming (the run has {old!r}, asked {new!r}); "
                              f"a resume may change {', '.join(RESUME_CHANGEABLE)}. Start a new run instead "
                              f"(train.init_from=RUN_DIR starts it from this run's weights)")


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's config.yaml with ``section.key=value`` overrides of the fields a resume may
    change (:data:`RESUME_CHANGEABLE`); any other change is a ConfigError naming the field."""
    old = load_run_config(run_dir)
    d = config_to_dict(old)
    for override in overrides:
        apply_override(d, override)
    cfg = config_from_dict(d)
    check_resume_changes(config_changes(old, cfg))
    return cfg


def record_config_changes(run_dir: Path, cfg: Config, changes: dict[str, tuple]) -> None:
    """Write the changed config to config.yaml (what the run now is) and append the change to
    ``config-history.yaml`` (a list of ``{time, changes: {field: {from, to}}}``), so a reader can
    tell which epochs ran under which settings."""
    import yaml

    path = run_dir / HISTORY_FILE
    history = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    _atomic_write_bytes(path, yaml.safe_dump(history, sort_keys=False).encode())
    _atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False, quiet: bool = False,
          on_step: Callable[[Progress], None] | None = None) -> Path:
    """Train (or resume) a run; returns its directory. ``on_step`` is called after every step.

    A resume continues ``run_dir/last`` under ``cfg``, which may differ from the run's config in
    the fields of :data:`RESUME_CHANGEABLE` only (others are a ConfigError); the change is
    recorded. A new run with ``train.init_from`` starts from that checkpoint's weights.
    SIGTERM/SIGUSR1 raise :class:`TrainingPreempted` and Ctrl-C :class:`TrainingInterrupted`,
    with ``last`` saved at a step boundary.

    Under torchrun every rank calls this; rank 0 prepares the run directory and every rank
    then uses that one."""
    rank = distributed.init_from_environment(resolve_device(cfg.train.device).type)
    initial = None
    if resume:
        run_dir = Path(run_dir)
        changes = config_changes(load_run_config(run_dir), cfg)
        check_resume_changes(changes)
        if rank.is_main:
            if changes:
                record_config_changes(run_dir, cfg, changes)
                if not quiet:
                    print("resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()),
                          flush=True)
            (run_dir / PREEMPTED_FILE).unlink(missing_ok=True)
    else:
        if cfg.train.init_from is not None:
            initial = initial_weights(cfg)  # checked before the run directory is made
        run_dir = [prepare_run(cfg, run_dir) if rank.is_main else None]
        if rank.distributed:
            torch.distributed.broadcast_object_list(run_dir, src=0)
        run_dir = run_dir[0]
    run_dir = Path(run_dir)
    trainer = Trainer(cfg, run_dir, quiet=quiet, on_step=on_step)
    if resume:
        trainer.restore_last()
    elif initial is not None:
        trainer.model.load_state_dict(initial)  # every rank: the same weights; the optimizer stays fresh
    if not quiet:
        print(f"run directory: {run_dir}", flush=True)
    try:
        with StepBoundaryInterrupt() as trainer.interrupt:
            trainer.fit()
    except TrainingPreempted as exc:
        if rank.is_main:  # for a job script under torchrun, whose exit code is not the workers'
            (run_dir / PREEMPTED_FILE).write_text(f"{exc.signal_name} at global step {trainer.progress.global_step}; "
                                                  f"continue with: rat train --resume {run_dir}\n")
        raise
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(run_dir) from None
    return run_dir


def evaluate_run(run_dir: str | Path, cfg: Config, *, full: bool = False, quiet: bool = False,
                 checkpoint: str = "best") -> dict:
    """The protocol on the run's ``best`` checkpoint (or, with ``checkpoint="last"``, on the
    weights of the last epoch); writes ``eval.json`` (``eval-last.json``) and prints the table.

    The result holds the report and the checkpoint's epoch as ``best_epoch`` (``last_epoch``).
    Where robust overfitting sets in, best and last differ; the gap between them is the measure
    of it (Rice et al. 2020)."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    model, meta = load_model(run_dir / checkpoint, device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)  # AutoAttack ~1.45x faster on CPU, same results
    n, aa_n = (None, None) if full else (cfg.eval.n, cfg.eval.aa_n)
    eps, _ = resolved_attack(cfg)
    report = evaluate_test_set(model, cfg.data.dataset, data_dir=cfg.data.data_dir, n=n, eps=eps,
                               norm=cfg.attack.norm, attacks=parse_attacks(cfg.eval.attacks),
                               batch_size=cfg.eval.batch_size, aa_n=aa_n, seed=cfg.train.seed, quiet=quiet,
                               state_dir=run_dir / f"{checkpoint}.eval-state")  # a rerun resumes it
    # best records the epoch it was saved after; last carries the trainer's progress (epochs completed)
    epoch = meta.get("epoch") if checkpoint == "best" else meta.get("progress", {}).get("epoch")
    report.checkpoint = f"{run_dir / f'{checkpoint}.safetensors'} (epoch {epoch})"
    result = {**report.to_json(), f"{checkpoint}_epoch": epoch}
    if distributed.current().is_main:
        print(format_report(report), flush=True)
        name = "eval.json" if checkpoint == "best" else f"eval-{checkpoint}.json"
        (run_dir / name).write_text(json.dumps(result, indent=1) + "\n")
    return result
