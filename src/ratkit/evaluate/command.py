"""``rat eval``'s work: a checkpoint (or an untrained model) evaluated on the test split it was
trained for, with the protocol and the flags of the command line, resumably; its report printed
and written. :mod:`ratkit.cli` parses the flags and hands them here."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..exits import UserError


def eval_command(args, model_code) -> None:
    """``rat eval``: the model (from ``args.checkpoint``, importing only the code ``model_code``
    allows, or ``--untrained``) on the device asked for (under torchrun: this rank's, which
    evaluates its shard), evaluated by :func:`run_eval`."""
    from ..checkpoints import load_model
    from ..device import resolve_device_flag
    from ..distributed import init_from_environment, rank_device

    device = resolve_device_flag(args.device)
    device = rank_device(device, init_from_environment(device.type))  # under torchrun: evaluate a shard
    if args.untrained:
        model, meta, label = untrained_model(args.untrained, args.dataset, args.seed)
    elif args.checkpoint is None:
        raise UserError("rat eval: give a CHECKPOINT (run directory or .safetensors file) or --untrained MODEL")
    else:
        model, meta = load_model(args.checkpoint, device, model_code)
        label = str(args.checkpoint)
    if not args.no_channels_last:
        model.to(memory_format=torch.channels_last)  # faster attacks (AutoAttack ~1.45x on CPU), same results
    run_eval(model, meta, args, device, label, eval_state_dir(args))


def run_eval(model, meta: dict, args, device: torch.device, label: str, state_dir: Path | None = None):
    """Load the test split the checkpoint was trained for and run the protocol on it; ``state_dir``
    keeps per-batch results so that a rerun of an interrupted evaluation resumes."""
    from ..checkpoints import check_model_fits_data
    from ..compile import compile_for_evaluation
    from ..data.source import source_info
    from ..distributed import current
    from ..threat import RadiusError, checkpoint_eps
    from .protocol import (DEFAULT_ATTACKS, check_protocol_norm, evaluate_test_set, format_report, paper_eps,
                           parse_attacks, save_adversarial, write_report_files)

    try:
        attacks = parse_attacks(args.attacks or ",".join(DEFAULT_ATTACKS[args.protocol]), args.protocol)
    except ValueError as exc:
        raise UserError(f"--attacks: {exc}") from None
    try:
        check_protocol_norm(args.protocol, args.norm)
    except ValueError as exc:
        raise UserError(f"--protocol {args.protocol}: {exc}") from None
    for flag in ("n", "aa_n"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UserError(f"--{flag.replace('_', '-')}: must be a positive number of images, got {value}")
    src = checkpoint_data(meta, args)
    info = source_info(src)
    if not args.untrained:
        check_model_fits_data(meta, info, label, src.dataset, model)
        _trial_pass(model, meta, info, label)
    try:
        eps = checkpoint_eps(src, args.norm, args.eps, meta)
    except RadiusError as exc:
        raise UserError(str(exc)) from None
    if args.protocol == "paper" and args.eps is None:
        eps = paper_eps(eps)
    compile_for_evaluation(model.to(device), getattr(args, "compile", "auto"), info.image_shape, device,
                           batch_size=args.batch_size, quiet=args.quiet)
    report = evaluate_test_set(model.to(device), src, n=args.n, eps=eps,
                               norm=args.norm, attacks=attacks, batch_size=args.batch_size, aa_n=args.aa_n,
                               seed=args.seed, quiet=args.quiet, protocol=args.protocol,
                               keep_adversarial=args.save_adv is not None, state_dir=state_dir)
    report.checkpoint = label
    if not current().is_main:  # under torchrun every rank evaluated its share; rank 0 reports
        return report
    print(format_report(report))
    if args.json is not None:
        write_report_files(report, args.json)
    if args.save_adv is not None:
        args.save_adv.parent.mkdir(parents=True, exist_ok=True)
        save_adversarial(report, args.save_adv)
        print(f"wrote {args.save_adv} ({report.robust_n} worst-case examples)")
    return report


def _trial_pass(model, meta: dict, info, label: str) -> None:
    """The loaded model given one trial pass on the data's shape before the evaluation starts (and
    before its per-batch results are kept): a model that cannot run on these images is one line."""
    from ..preflight import ModelDoesNotFit, check_model

    try:
        check_model(model, info.image_shape, info.num_classes, name=(meta.get("model") or {}).get("name", "the model"),
                    training=False)
    except ModelDoesNotFit as exc:
        raise UserError(f"{label}: {exc}") from None


def checkpoint_data(meta: dict, args):
    """The data a checkpoint is evaluated on (:func:`ratkit.checkpoints.recorded_data`), with the
    command line's ``--dataset``/``--data-dir``/``--eps``."""
    from ..checkpoints import recorded_data

    return recorded_data(meta, dataset=getattr(args, "dataset", None), data_dir=getattr(args, "data_dir", None),
                         eps=getattr(args, "eps", None))


def eval_state_dir(args) -> Path | None:
    """Where ``rat eval`` keeps its per-batch results: --state-dir, else beside the checkpoint
    (``best.safetensors`` -> ``best.eval-state/``) when that directory is writable; none with
    --no-resume or for an untrained model."""
    from ..checkpoints import checkpoint_path

    if args.no_resume:
        return None
    if args.state_dir is not None:
        return args.state_dir
    if args.untrained or args.checkpoint is None:
        return None
    path = checkpoint_path(args.checkpoint)
    return path.with_suffix(".eval-state") if os.access(path.parent, os.W_OK) else None


def untrained_model(name: str, dataset: str | None, seed: int):
    """``rat eval --untrained MODEL``: the model freshly initialised from ``seed`` for ``dataset``
    (default Fashion-MNIST), its record and its label, a sanity baseline."""
    from ..data import dataset_info
    from ..models import build_model, model_kwargs_for, model_spec

    dataset = dataset or "fashion-mnist"
    info = dataset_info(dataset)
    torch.manual_seed(seed)
    try:
        kwargs = model_kwargs_for(name, info)
        model = build_model(name, **kwargs)
    except ValueError as exc:
        raise UserError(f"--untrained: {exc}") from None
    return model, {"dataset": dataset, "model": model_spec(name, **kwargs)}, f"untrained {name}, seed {seed}"
