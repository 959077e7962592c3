"""The ``rat`` command: a thin layer over the library. Nothing below imports it.

User errors (bad data, bad checkpoint, bad config) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix from the message alone; printed without a traceback."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA was requested but torch.cuda.is_available() is False")
    return device


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attacks", default="clean,fgsm,pgd20,cw30,aa",
                   help="comma-separated subset of clean,fgsm,pgd20,cw30,aa (default: all)")
    p.add_argument("--n", type=int, default=None, help="evaluate the first N test images (default: all)")
    p.add_argument("--aa-n", type=int, default=None,
                   help="run AutoAttack on the first N of those only (default: all of them)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--norm", choices=("Linf", "L2"), default="Linf")
    p.add_argument("--eps", type=float, default=None,
                   help="override the protocol's eps (default: by dataset: Linf 8/255 CIFAR/SVHN, 0.1 "
                        "(Fashion-)MNIST; L2 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_eval(model, meta: dict, args, device: torch.device, label: str):
    """Load the test split the checkpoint was trained for and run the protocol on it."""
    from .data import dataset_info, load_dataset
    from .evaluate import evaluate, format_report, parse_attacks

    try:
        attacks = parse_attacks(args.attacks)
    except ValueError as exc:
        raise UserError(f"--attacks: {exc}") from None
    for flag in ("n", "aa_n"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UserError(f"--{flag.replace('_', '-')}: must be a positive number of images, got {value}")
    dataset = args.dataset or meta.get("dataset") or "fashion-mnist"
    info = dataset_info(dataset)
    test = load_dataset(dataset, "test", data_dir=args.data_dir)
    n_total = len(test)
    if args.n is not None:
        test = test.first(args.n)
    eps = args.eps if args.eps is not None else (info.linf_eps if args.norm == "Linf" else info.l2_eps)
    report = evaluate(model.to(device), test.x, test.y, dataset=dataset, eps=eps, norm=args.norm,
                      attacks=attacks, batch_size=args.batch_size, aa_n=args.aa_n, n_total=n_total,
                      seed=args.seed, quiet=args.quiet)
    report.checkpoint = label
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report


def cmd_eval(args) -> int:
    from .checkpoint import load_model
    from .data import dataset_info
    from .models import build_model, model_spec

    device = resolve_device(args.device)
    if args.untrained:
        dataset = args.dataset or "fashion-mnist"
        info = dataset_info(dataset)
        torch.manual_seed(args.seed)
        kwargs = dict(num_classes=info.num_classes, in_channels=info.image_shape[0],
                      mean=info.mean, std=info.std)
        try:
            model = build_model(args.untrained, **kwargs)
        except ValueError as exc:
            raise UserError(f"--untrained: {exc}") from None
        meta = {"dataset": dataset, "model": model_spec(args.untrained, **kwargs)}
        label = f"untrained {args.untrained}, seed {args.seed}"
    else:
        if args.checkpoint is None:
            raise UserError("rat eval: give a CHECKPOINT (run directory or .safetensors file) or --untrained MODEL")
        model, meta = load_model(args.checkpoint, device)
        label = str(args.checkpoint)
    run_eval(model, meta, args, device, label)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rat", description="Randomized Adversarial Training toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate a checkpoint with the fixed protocol")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="run directory (uses best.safetensors), .safetensors file or its .json sidecar")
    p.add_argument("--untrained", metavar="MODEL", default=None,
                   help="evaluate a freshly initialised MODEL instead of a checkpoint (a sanity baseline)")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    p.add_argument("--data-dir", default=None, help="dataset directory (else $RAT_DATA_DIR, else the Debian path)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, DataError, CheckpointError) as exc:
        print(f"rat {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"rat {args.command}: interrupted", file=sys.stderr)
        return 130
