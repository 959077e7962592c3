"""``rat bench``'s work: the flags checked and turned into :class:`~.steps.BenchSettings`, the
timing run, its report printed and written. :mod:`ratkit.cli` parses the flags and hands them here."""

from __future__ import annotations

import json
import sys

from ..config import load_config
from ..device import resolve_device_flag, resolve_precision
from ..exits import UserError
from .steps import CONFIGS, BenchSettings, bench_model, format_bench, run_bench, width_kwargs


def bench_command(args) -> None:
    """``rat bench``: every configuration asked for timed on the device asked for."""
    configs = CONFIGS if args.configs is None else tuple(c.strip() for c in args.configs.split(",") if c.strip())
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        raise UserError(f"--configs: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(CONFIGS)}")
    for flag in ("batch_size", "steps", "rounds", "attack_steps"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, got {getattr(args, flag)}")
    model, model_kwargs = args.model, {}
    if args.width != 1.0:
        scaled = width_kwargs(args.model, {}, args.width)
        if scaled is None:
            raise UserError(f"--width: only smallcnn and wrn-D-W models can be scaled, not {args.model}")
        model, model_kwargs = scaled
    device = resolve_device_flag(args.device)
    precision = resolve_precision(args.attack_precision or load_config(None).attack.precision, device)[0]
    settings = BenchSettings(dataset=args.dataset, model=model, model_kwargs=model_kwargs,
                             batch_size=args.batch_size, attack_steps=args.attack_steps,
                             rounds=min(args.rounds, args.steps),  # --steps 10: 10 rounds of one step, not 60
                             steps_per_round=max(1, -(-args.steps // args.rounds)), configs=configs,
                             device=str(device), seed=args.seed, memory=not args.no_memory,
                             attack_precision=precision, step_precision=args.precision,
                             channels_last=not args.no_channels_last, compile=args.compile)
    progress = None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    try:
        bench_model(settings)
    except ValueError as exc:
        raise UserError(f"--model: {exc}") from None
    result = run_bench(settings, with_scaling=not args.no_scaling, progress=progress)
    print(format_bench(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
