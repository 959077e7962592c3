"""The trainer: the epoch loop (:class:`Trainer`) and :func:`train`, which starts or resumes a run.

The loop hands over at step and epoch boundaries to its observers, the other modules of
:mod:`ratkit.train`: the run log (console, metrics.jsonl, TensorBoard, curves.png), the ``last``
and ``best`` checkpoints, and the stop conditions (time budget, non-finite loss, Ctrl-C,
preemption). Before the trainer is built, :mod:`.start` builds, checks and plans the run from its
config; :mod:`.rundir` makes the run directory, and checks and records what a resume changes.

Every run directory holds ``config.yaml``, ``metrics.jsonl``, ``best.*`` (by validation
robust accuracy, never the test set), ``last.*`` (everything needed to resume), ``eval.json``
and ``curves.png``. On CPU, a run and the same run interrupted and resumed end bit-identical:
the data order of an epoch is a pure function of (seed, epoch), and the states of the random
generators, the optimizer and the step counters are saved with ``last``.

The step is the method's (``Method.step``, shared with ``rat bench``), in ``train.precision``
(:class:`~ratkit.methods.StepPrecision`: autocast and, for float16, a gradient scaler). The
training and validation data are moved to the run's device once and batched and augmented
there, so no host-to-device copy or loader sits in the step; on CUDA, cuDNN autotunes its
convolutions for the whole of training (evaluation turns that off again).

For clusters: SIGTERM and SIGUSR1 stop the run at a step boundary with ``last`` saved
(:class:`TrainingPreempted`, a ``preempted`` file in the run directory); ``train.checkpoint_every_s``
saves ``last`` mid-epoch; a resume may change the fields of :data:`~.rundir.RESUME_CHANGEABLE`
(recorded in ``config-history.yaml``); ``train.init_from`` starts a new run from a checkpoint's weights.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..attacks import BatchShard
from ..compile import compile_for_evaluation, compile_model, is_compiled, print_line
from ..checkpoints import load_model
from ..config import Config, ConfigError, config_to_dict, data_source, evaluation_eps, method_label
from ..data import augment, iterate_batches, split_train_val
from ..data.streaming import StreamedData, iterate_streamed_batches
from ..data.source import data_fingerprint, default_val_size, load_split, source_info
from ..device import resolve_device
from ..evaluate import evaluate, evaluate_test_set, format_report, parse_attacks, write_report_files
from ..methods import Method, NonFiniteLossError, StepPrecision
from ..preemption import Preempted
from ..models.user import ModelCodePolicy, policy_or_default

# the trainer's observers and state, its run directory, and its start
from .checkpoints import BestCheckpoint, LastCheckpoint
from .collapse import constant_output, robust_collapse
from .run_log import RunLog
from .rundir import PREEMPTED_FILE, check_recorded_data, record_or_check_data, record_resume, validation_eps
from .start import (RunStart, build_method, build_model_from_config, build_optimizer, built_start, checked_start,
                    start_process)
from .state import EpochSums, Progress
from .stopping import StepBoundaryInterrupt, StopConditions, TrainingInterrupted, TrainingPreempted


# ----------------------------------------------------------------------------- the schedule and the data order


def learning_rate(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step: a pure function, so resuming needs only the step.

    Raising ``train.epochs`` on a resume: multistep milestones and warmup are absolute epochs, so
    the schedule goes on smoothly (past the last milestone, at the last rate); cosine and
    onecycle are functions of the total, so they are recomputed over the new total and the rate
    jumps up at the resume point (cosine from its value at epoch e of E to that at e of E')."""
    o = cfg.optim
    epoch = step / steps_per_epoch
    total = training_epochs(cfg, steps_per_epoch)
    if o.schedule == "constant":
        lr = o.lr
    elif o.schedule == "multistep":
        # milestones count epochs from 1, as the authors' scripts do (range(1, epochs + 1), decay
        # once epoch >= m): the m-th epoch, 0-based index m - 1, already runs at the decayed rate
        lr = o.lr * o.lr_decay ** sum(epoch >= m - 1 for m in o.milestones)
    elif o.schedule == "cosine":
        lr = 0.5 * o.lr * (1 + math.cos(math.pi * min(epoch / total, 1.0)))
    else:  # onecycle: linear up to lr at 40% of training, linear down to 0 at the end
        peak = 0.4 * total
        lr = o.lr * (epoch / peak if epoch < peak else max(0.0, (total - epoch) / (total - peak)))
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        lr *= (step + 1) / (o.warmup_epochs * steps_per_epoch)
    return lr


def training_epochs(cfg: Config, steps_per_epoch: int) -> float:
    """How many epochs the run trains, fractional when ``train.max_steps`` ends it mid-epoch: the
    length the learning-rate schedule is laid over (a budget's plan is never cut off mid-cosine)."""
    if cfg.train.max_steps is None:
        return float(cfg.train.epochs)
    return min(float(cfg.train.epochs), cfg.train.max_steps / steps_per_epoch)


def epoch_order_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# ----------------------------------------------------------------------------- the loop


def run_meta(cfg: Config, info=None) -> dict:
    """The metadata every checkpoint of a run carries besides its model: dataset, config, method,
    and the data's image shape and classes (``info``), which every later use of the weights checks."""
    meta = {"dataset": cfg.data.dataset, "config": config_to_dict(cfg), "method": method_label(cfg)}
    if info is not None:
        meta["data"] = {"image_shape": list(info.image_shape), "num_classes": info.num_classes,
                        "class_names": list(info.class_names)}
    return meta


def _rank_and_device(cfg: Config) -> tuple[distributed.Rank, torch.device]:
    """This process's rank (joining torchrun's process group) and its device; the batch must
    divide among the ranks."""
    device = resolve_device(cfg.train.device)
    rank = distributed.init_from_environment(device.type)
    if cfg.train.batch_size % rank.world_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not divide among {rank.world_size} ranks")
    return rank, distributed.rank_device(device, rank)


def _training_data(cfg: Config, device: torch.device, given=None):
    """The run's training and validation splits (the training split cut to ``data.train_subset``)
    and the dataset's info. In memory they are moved to ``device`` once: a step then indexes (and
    augments) its batch there, with no copy from the host. A streamed training split stays on the
    host and is decoded batch by batch; its validation split is held in memory. ``given``: the
    (train, validation or None) data of :func:`ratkit.fit`."""
    if given is not None:
        full, val_data = given
    else:
        full = load_split(data_source(cfg), "train")
    if given is None or val_data is None:
        val_size = cfg.data.val_size  # null in a run prepared without train() (prepare_run): the default
        val_size = default_val_size(cfg.data.dataset, len(full)) if val_size is None else val_size
        train_data, val_data = split_train_val(full, val_size, cfg.train.seed)
    else:
        train_data = full
    if cfg.data.train_subset is not None:
        train_data = train_data.first(cfg.data.train_subset)
    if isinstance(val_data, StreamedData):  # streamed: validation is small and read at every validated epoch
        val_data = val_data.load()
    val_data = val_data.as_float()  # converted once, not at every validation
    if len(train_data) < cfg.train.batch_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is more than the {len(train_data)} training "
                          "images (after the validation hold-out): no full batch, no step; lower it")
    if not isinstance(train_data, StreamedData):
        train_data = train_data.to(device)
    return train_data, val_data.to(device), full.info


@contextmanager
def cudnn_autotuned(device: torch.device):
    """On CUDA, cuDNN times its convolution algorithms for each new input shape and keeps the
    fastest (``cudnn.benchmark``): a run's training shapes are fixed, so that pays from the
    second step. Restored afterwards; evaluation, validation included, turns it off
    (``evaluate.strict_float32``). Nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _placed_model(cfg: Config, info, device: torch.device, rank: distributed.Rank, given: nn.Module | None = None,
                  model_code: ModelCodePolicy | None = None) -> tuple[nn.Module, dict, nn.Module]:
    """The run's model on ``device``, its spec, and the model the method trains: under torchrun
    DistributedDataParallel, which averages the gradients over the ranks' shards. ``given``: the
    model of :func:`ratkit.fit`, with its spec."""
    model, spec = given if given is not None else build_model_from_config(cfg, info, model_code)
    if rank.distributed and cfg.train.sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: SyncBatchNorm needs CUDA (DistributedDataParallel refuses it on CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if not rank.distributed:
        return model, spec, model
    return model, spec, DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def step_sums(out, ys: Tensor, seconds: float) -> EpochSums:
    """The sums of one step (``out``, the method's LossOutput on labels ``ys``) over the examples
    of every rank; ``seconds`` is how long the step took."""
    names = list(out.terms)
    local = torch.stack([t.double() for t in (
        out.loss.detach() * len(ys), (out.outputs.logits_adv.argmax(1) == ys).sum(),
        torch.tensor(float(len(ys)), device=ys.device), *[out.terms[k].detach() * len(ys) for k in names])])
    loss_sum, correct, seen, *term_sums = distributed.all_reduce_sum(local).tolist()
    return EpochSums(loss_sum, int(correct), int(seen), seconds, dict(zip(names, term_sums)))


class Trainer:
    """Owns one run: data, model, method, optimizer, generators, run directory. The loop trains;
    at step and epoch boundaries it hands over to ``log`` (:class:`RunLog`), ``last`` and
    ``best`` (:class:`LastCheckpoint`, :class:`BestCheckpoint`) and ``stops`` (:class:`StopConditions`).

    Example: ``Trainer(cfg, run_dir).fit()`` (:func:`train` adds resuming and signals).
    """

    def __init__(self, cfg: Config, run_dir: Path, *, quiet: bool = False,
                 on_step: Callable[[Progress], None] | None = None,
                 on_epoch_end: Callable[[dict], None] | None = None, model_code: ModelCodePolicy | None = None,
                 given_data=None, given_model: tuple[nn.Module, dict] | None = None, given_method: Method | None = None):
        self.cfg, self.run_dir, self.quiet, self.on_step = cfg, Path(run_dir), quiet, on_step
        self.on_epoch_end = on_epoch_end
        self.rank, self.device = _rank_and_device(cfg)
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.train_data, self.val_data, self.info = _training_data(cfg, self.device, given_data)
        self.model, self.spec, self.train_model = _placed_model(cfg, self.info, self.device, self.rank, given_model,
                                                                model_code)
        self.method = given_method if given_method is not None else build_method(cfg)
        self._compile(quiet)
        self.precision = StepPrecision(cfg.train.precision, self.device.type)
        self.optimizer = build_optimizer(cfg, self.model)
        self.generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.steps_per_epoch = max(1, len(self.train_data) // cfg.train.batch_size)
        self.progress = Progress(history=[])
        main, meta = self.rank.is_main, run_meta(cfg, self.info)  # one writer: checkpoints, logs and prints come from rank 0
        epochs = math.ceil(training_epochs(cfg, self.steps_per_epoch))  # train.max_steps may end it sooner
        self.log = RunLog(self.run_dir, epochs=epochs, quiet=quiet, main=main)
        self.last = LastCheckpoint(self.run_dir, self.model, self.spec, self.optimizer, self.generator, self.device,
                                   meta, main=main, every_s=cfg.train.checkpoint_every_s, precision=self.precision)
        self.best = BestCheckpoint(self.run_dir, self.model, self.spec, meta, validated=len(self.val_data) > 0,
                                   main=main)
        self.stops = StopConditions(self.run_dir, self.device, time_budget_s=cfg.train.time_budget_s)

    def _compile(self, quiet: bool) -> None:
        """``train.compile``: the model compiled in place (training step, attacks and validation), tried
        on one batch of the training shape; a failure runs eager with one warning line."""
        example = torch.rand(self.cfg.train.batch_size // self.rank.world_size, *self.info.image_shape,
                             device=self.device)
        if self.cfg.train.channels_last and example.dim() == 4:
            example = example.contiguous(memory_format=torch.channels_last)
        _, line = compile_model(self.model, self.cfg.train.compile, example)
        if self.rank.is_main and (self.cfg.train.compile != "auto" or is_compiled(self.model)):
            print_line(line, quiet)

    def steps_done(self) -> bool:
        """Whether ``train.max_steps`` optimizer steps have been taken."""
        return self.cfg.train.max_steps is not None and self.progress.global_step >= self.cfg.train.max_steps

    def restore_last(self) -> None:
        """Continue from ``run_dir/last``; metrics.jsonl is rewritten from the history saved there."""
        self.progress = self.last.restore()
        self.log.rewrite(self.progress.history)

    def data_fingerprints(self) -> dict:
        return {"train": data_fingerprint(self.train_data), "val": data_fingerprint(self.val_data)}

    def record_or_check_data(self, resume: bool) -> None:
        """:func:`~ratkit.train.rundir.record_or_check_data` on this run's training and validation data."""
        record_or_check_data(self.run_dir, self.data_fingerprints(), resume, self.rank.is_main)

    def _validation_due(self, epoch: int) -> bool:
        """Whether ``epoch`` (1-based) is validated: every ``train.val_every``-th and the last. An
        epoch without validation cannot become ``best`` and does not count towards a collapse warning."""
        t = self.cfg.train
        return epoch % t.val_every == 0 or epoch == t.epochs

    def _validate(self) -> dict:
        if len(self.val_data) == 0:
            return {}
        val = self.val_data if self.cfg.train.val_n is None else self.val_data.first(self.cfg.train.val_n)
        eps = validation_eps(self.cfg)
        report = evaluate(self.model, val.x, val.y, dataset=self.cfg.data.dataset, eps=eps,
                          norm=self.cfg.attack.norm, attacks=("clean", "pgd20"), batch_size=256,
                          split="val", seed=self.cfg.train.seed, quiet=True)
        return {"val_clean": report.attacks["clean"].accuracy, "val_pgd20": report.attacks["pgd20"].accuracy}

    # -- one epoch -----------------------------------------------------------------------

    def run_epoch(self, epoch: int) -> dict:
        """Train ``epoch`` (0-based; its rest, when resumed mid-epoch); the training part of its metrics row."""
        cfg, p = self.cfg, self.progress
        sums = p.partial or EpochSums()
        # resumed mid-epoch: the batches already trained on are skipped, the order drawn in full
        order = dict(shuffle=True, generator=epoch_order_generator(cfg.train.seed, epoch), drop_last=True,
                     start_batch=p.step_in_epoch)
        if isinstance(self.train_data, StreamedData):  # decoded by worker processes; under torchrun each
            rows = (lambda n: distributed.shard(n, self.rank)) if self.rank.distributed else None  # rank its share
            batches = iterate_streamed_batches(self.train_data, cfg.train.batch_size, num_workers=cfg.data.workers,
                                               rows=rows, **order)
        else:
            batches = iterate_batches(self.train_data, cfg.train.batch_size, **order)
        lr = self.optimizer.param_groups[0]["lr"]
        bar = self.log.epoch_bar(epoch, self.steps_per_epoch, initial=p.step_in_epoch)
        try:
            for i, (xb, yb) in enumerate(batches, start=p.step_in_epoch):
                if self.steps_done():  # train.max_steps: the run ends inside this epoch
                    break
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
                lr, step = self._train_step(xb, yb, epoch)
                sums.add(step)
                p.step_in_epoch, p.global_step = i + 1, p.global_step + 1
                p.train_seconds += step.seconds
                p.partial = sums
                bar.update(1)
                bar.set_postfix(**sums.postfix())
                if self.on_step is not None:
                    self.on_step(p)
                self.stops.honour_requests()
                self.last.save_if_due(p, self.steps_per_epoch)
        finally:
            bar.close()
        return sums.row(epoch + 1, lr)

    def _train_step(self, xb: Tensor, yb: Tensor, epoch: int) -> tuple[float, EpochSums]:
        """One optimizer step on a global batch; its learning rate and sums. Every rank has the
        global batch (same order, augmentation and random draws) and trains on its slice of it."""
        cfg, started = self.cfg, time.perf_counter()
        n = cfg.train.batch_size
        sharded = self.rank.distributed and isinstance(self.train_data, StreamedData)  # xb: this rank's rows only
        rows = distributed.shard(n, self.rank) if self.rank.distributed else slice(None)
        if cfg.data.augment:
            xb = augment(xb, self.info, generator=self.generator, part=(rows.start, rows.stop, n) if sharded else None)
        if cfg.train.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        lr = learning_rate(cfg, self.progress.global_step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        shard = BatchShard(rows.start, rows.stop, n) if self.rank.distributed else None
        xs, ys = (xb, yb) if sharded else (xb[rows], yb[rows])
        out = self.method.step(self.train_model, self.optimizer, xs, ys, generator=self.generator, epoch=epoch,
                               shard=shard, precision=self.precision)
        return lr, step_sums(out, ys, time.perf_counter() - started)

    # -- the whole run -------------------------------------------------------------------

    def fit(self) -> None:
        """Train until ``train.epochs`` or a stop condition; ``last`` is saved after every epoch."""
        p = self.progress
        with cudnn_autotuned(self.device):
            # a partial epoch that train.max_steps ends (stopped after its last step) is closed and validated
            while p.epoch < self.cfg.train.epochs and (not self.steps_done() or p.step_in_epoch > 0):
                if self.stops.budget_reached(p):
                    self.log.budget_reached(self.cfg.train.time_budget_s, p)
                    break
                epoch = p.epoch
                row = self._run_epoch_or_stop(epoch)
                # the epoch a run stops at is validated too, whatever stops it: every run has a best
                if self._validation_due(epoch + 1) or self.stops.budget_spent(p) or self.steps_done():
                    row.update(self._validate())
                self._end_epoch(epoch + 1, row)
                self.stops.honour_requests()  # a signal during validation: stop here, `last` is saved
            self._validate_final_epoch()
        self.log.finish(p.history)

    def _validate_final_epoch(self) -> None:
        """Validate the epoch the run ends at if it was not (``train.val_every``), whatever ended the run:
        a resume with nothing left to train, a time budget, fewer epochs asked; every run that trained
        then has a ``best``, chosen among validated epochs."""
        p = self.progress
        if not p.history or p.step_in_epoch > 0 or "val_pgd20" in p.history[-1] or len(self.val_data) == 0:
            return
        row = p.history[-1]
        row.update(self._validate())
        self.best.consider(p, p.epoch, row)
        self.last.save(p)
        self.log.rewrite(p.history)

    def _run_epoch_or_stop(self, epoch: int) -> dict:
        try:
            return self.run_epoch(epoch)
        except KeyboardInterrupt:  # Ctrl-C or a preemption signal, at a step boundary
            self.last.save(self.progress)
            raise
        except NonFiniteLossError as exc:
            raise self.stops.non_finite_loss(epoch, self.progress, exc) from None

    def _end_epoch(self, epoch: int, row: dict) -> None:
        """Record the validated ``epoch`` (1-based, its metrics ``row``): best, collapse warnings,
        history, ``last``, logs."""
        p, t = self.progress, self.cfg.train
        p.epoch, p.step_in_epoch, p.partial = epoch, 0, None
        self.best.consider(p, epoch, row)
        history = [*p.history, row]
        warning = (constant_output(history, self.info.num_classes, t.collapse_epochs)
                   or robust_collapse(history, t.collapse_margin, t.collapse_epochs))
        if warning is not None:
            row["warning"] = warning
        p.history.append(row)
        self.last.save(p)
        self.log.epoch_done(row)
        if self.on_epoch_end is not None:
            self.on_epoch_end(row)


# ----------------------------------------------------------------------------- entry points


def _fit_until_stopped(trainer: Trainer) -> None:
    """``trainer.fit()`` with Ctrl-C, SIGTERM and SIGUSR1 honoured at step boundaries."""
    try:
        with StepBoundaryInterrupt() as trainer.stops.interrupt:
            trainer.fit()
    except TrainingPreempted as exc:
        if trainer.rank.is_main:  # for a job script under torchrun, whose exit code is not the workers'
            (trainer.run_dir / PREEMPTED_FILE).write_text(
                f"{exc.signal_name} at global step {trainer.progress.global_step}; "
                f"continue with: rat train --resume {trainer.run_dir}\n")
        raise
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(trainer.run_dir) from None


def train(cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False, quiet: bool = False,
          on_step: Callable[[Progress], None] | None = None, on_epoch_end: Callable[[dict], None] | None = None,
          model_code: ModelCodePolicy | None = None, evaluation: str = "preset", started: float | None = None) -> Path:
    """Train (or resume) a run; returns its directory. ``on_step`` is called after every step with
    the run's :class:`~ratkit.train.state.Progress`; ``on_epoch_end`` after every epoch with its
    metrics row (the dict written to metrics.jsonl).

    A resume continues ``run_dir/last`` under ``cfg``, which may differ from the run's config in
    the fields of :data:`~.rundir.RESUME_CHANGEABLE` only (others are a ConfigError); the change is
    recorded. A new run with ``train.init_from`` starts from that checkpoint's weights.
    SIGTERM/SIGUSR1 raise :class:`TrainingPreempted` and Ctrl-C :class:`TrainingInterrupted`,
    with ``last`` saved at a step boundary. A run that fails to start leaves no run directory.

    ``model_code``: which user model code (``module:callable``) may be imported. A new run's config
    is the caller's own, so its model is allowed; a resumed run's config is a file, so its model
    code is imported only if ``model_code`` allows it (:func:`ratkit.models.policy_or_default`).

    ``train.budget_s``: a new run is planned first (:mod:`.budget`): ``evaluation`` says which final
    evaluation follows (``preset``: eval.n and eval.aa_n, ``full``, or ``none``), so that training and
    evaluation together fit, counted from ``started`` (a ``time.monotonic()``; None: from the plan);
    the plan is printed and recorded, and a resume follows it.

    Under torchrun every rank calls this; rank 0 prepares the run directory and every rank
    then uses that one.

    Example: ``train(load_config("fmnist-cpu", ["train.epochs=1"]), "runs/try")``"""
    cfg, rank = start_process(cfg, quiet)
    start = checked_start(cfg, run_dir, rank, resume=resume, quiet=quiet, model_code=model_code,
                          evaluation=evaluation, started=started)
    return _run(start, rank, quiet=quiet, on_step=on_step, on_epoch_end=on_epoch_end)


def train_built(cfg: Config, run_dir: str | Path | None, *, data: tuple, model: tuple[nn.Module, dict],
                method: Method | None = None, resume: bool = False, quiet: bool = False,
                on_step: Callable[[Progress], None] | None = None,
                on_epoch_end: Callable[[dict], None] | None = None) -> Path:
    """:func:`ratkit.fit`'s entry into the trainer: as :func:`train`, on what the caller built and
    ``cfg`` records: ``data`` (training, validation or None), ``model`` (the module and its spec)
    and ``method`` (None: the config's). The checks that build them from the config are the
    caller's, who built them (:func:`~.start.built_start`)."""
    cfg, rank = start_process(cfg, quiet)
    start = built_start(cfg, run_dir, rank, resume=resume)
    return _run(start, rank, quiet=quiet, on_step=on_step, on_epoch_end=on_epoch_end, given_data=data,
                given_model=model, given_method=method)


def _run(start: RunStart, rank: distributed.Rank, *, quiet: bool, on_step, on_epoch_end, **given) -> Path:
    """The trainer of a started run built and run: what :func:`train` and :func:`train_built` share.
    A resume's last checks (the data fingerprints, ``last``) come before it is recorded."""
    cfg, run_dir, resume = start.cfg, start.run_dir, start.resume
    restored = resume and (run_dir / "last.safetensors").exists()
    try:
        trainer = Trainer(cfg, run_dir, quiet=quiet, on_step=on_step, on_epoch_end=on_epoch_end,
                          model_code=start.model_code, **given)
        fingerprints = trainer.data_fingerprints()
        if resume:  # every check of a resume before anything in the run directory changes
            check_recorded_data(run_dir, fingerprints)
            if restored:
                trainer.restore_last()
            record_resume(cfg, run_dir, start.changes, rank, quiet)
        record_or_check_data(run_dir, fingerprints, resume, rank.is_main)
    except Preempted as exc:  # a notice during start-up: the run is kept, and --resume starts it
        exc.run_dir = run_dir
        raise
    except BaseException:
        if start.created and rank.is_main:  # a run that fails to start leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if resume and not restored and not quiet:  # preempted before its first checkpoint: from its recorded config
        print(f"{run_dir}: no last checkpoint yet; starting the run from its config.yaml", flush=True)
    elif start.initial is not None:
        trainer.model.load_state_dict(start.initial)  # every rank: the same weights; the optimizer stays fresh
    if not quiet:
        print(f"run directory: {run_dir}", flush=True)
        print(eps_line(cfg), flush=True)
    for line in start.start_lines if rank.is_main else []:  # a warning goes to stderr, quiet or not
        print_line(line, quiet)
    _fit_until_stopped(trainer)
    return run_dir


def eps_line(cfg: Config) -> str:
    """Which eps validation and the final evaluation use: :func:`ratkit.threat.eps_line`."""
    from ..threat import eps_line as line

    return line(cfg)


def evaluate_run(run_dir: str | Path, cfg: Config, *, full: bool = False, quiet: bool = False,
                 checkpoint: str = "best", model_code: ModelCodePolicy | None = None) -> dict:
    """The protocol on the run's ``best`` checkpoint (or, with ``checkpoint="last"``, on the
    weights of the last epoch); writes ``eval.json`` (``eval-last.json``) and prints the table.

    The result holds the report and the checkpoint's epoch as ``best_epoch`` (``last_epoch``).
    Where robust overfitting sets in, best and last differ; the gap between them is the measure
    of it (Rice et al. 2020)."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run_dir = Path(run_dir)
    device = resolve_device(cfg.train.device)
    model_code = policy_or_default(model_code, cfg.model.name)  # the run this process trained or was allowed to
    model, meta = load_model(run_dir / checkpoint, device, model_code)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)  # AutoAttack ~1.45x faster on CPU, same results
    # the image shape every checkpoint records (run_meta); a checkpoint from before it: read from the data
    shape = (meta.get("data") or {}).get("image_shape") or source_info(data_source(cfg)).image_shape
    compile_for_evaluation(model, cfg.eval.compile, shape, device, batch_size=cfg.eval.batch_size, quiet=quiet)
    n, aa_n = (None, None) if full else (cfg.eval.n, cfg.eval.aa_n)
    eps = evaluation_eps(cfg)
    report = evaluate_test_set(model, data_source(cfg), n=n, eps=eps,
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
        # the same files as rat eval --json: the summary block, and the per-example CSV beside it
        result = write_report_files(report, run_dir / name, {f"{checkpoint}_epoch": epoch})
    return result
