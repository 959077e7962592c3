"""Where the time of one training step goes: torch.profiler over a few steps of one configuration.

    python benchmarks/profile_step.py rat-trades                  # the library, as `rat train` runs it
    python benchmarks/profile_step.py rat-trades --nchw --precision float32   # before the optimisations
    python benchmarks/profile_step.py naive-rat-trades            # the reference-style baseline

Prints the operators by self CPU time (or CUDA time on a GPU) and the share of the step spent
in the attack, in the loss forward and in the backward pass. docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ratkit.bench.steps import CONFIGS, BenchSettings, _runner, _synthetic_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--nchw", action="store_true", help="keep the default NCHW layout (no channels_last)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    settings = replace(BenchSettings(), model=args.model, batch_size=args.batch_size, attack_steps=args.attack_steps,
                       attack_precision=args.precision, channels_last=not args.nchw, device=args.device)
    device = torch.device(args.device)
    runner = _runner(args.config, settings, device, _synthetic_batches(settings, device))
    for _ in range(2):
        runner.run()

    # Label the phases of the library's methods (the naive steps are one opaque function).
    from ratkit.methods import base, rat

    original_pgd, original_forward = base.pgd, base.forward_outputs

    def labelled_pgd(*a, **k):
        with record_function("phase: attack"):
            return original_pgd(*a, **k)

    def labelled_forward(*a, **k):
        with record_function("phase: loss forward"):
            return original_forward(*a, **k)

    base.pgd, base.forward_outputs, rat.forward_outputs = labelled_pgd, labelled_forward, labelled_forward
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            runner.run()
    wall = (time.perf_counter() - started) / args.steps
    base.pgd, base.forward_outputs, rat.forward_outputs = original_pgd, original_forward, original_forward

    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    style = ("reference style: float32, NCHW" if args.config.startswith("naive") else
             f"attack {args.precision}, {'NCHW' if args.nchw else 'channels_last'}")
    print(f"{args.config}: {wall:.3f} s per step (profiled), batch {args.batch_size}, {args.attack_steps} attack "
          f"steps, {style}")
    total = sum(e.self_cpu_time_total for e in averages)
    for e in averages:
        if e.key.startswith("phase: "):
            print(f"  {e.key[7:]:<14} {100 * e.cpu_time_total / total:5.1f}% of the step's CPU time")
    print(averages.table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
