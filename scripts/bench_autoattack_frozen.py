"""AutoAttack with the model's parameters frozen against not: the same images and verdicts, and
the time of each, alternated twice in one run (the measurement behind ``autoattack_correct``'s
freezing; FAB-T's ``backward()`` otherwise computes the weights' gradients).

    OMP_NUM_THREADS=1 python scripts/bench_autoattack_frozen.py runs/study-regime/rat-at-seed0/best.safetensors --n 40

Measured on that checkpoint (the same four calls, run before this script was written down), the
first 40 Fashion-MNIST test images, one thread, alone on the project's 2-core CPU: plain 118.5 s
and 114.8 s, frozen 110.8 s and 107.3 s (0.935x), outputs bitwise equal.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from pyautoattack import AutoAttack

from ratkit.checkpoints import load_model
from ratkit.data import load_dataset
from ratkit.modes import parameters_frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    model, _ = load_model(args.checkpoint)
    model.eval()
    test = load_dataset(args.dataset, "test").first(args.n)
    outputs = {}
    for frozen in (False, True, False, True):
        attack = AutoAttack(model, eps=args.eps, norm="Linf", version="standard", seed=0, device="cpu")
        start = time.perf_counter()
        if frozen:
            with parameters_frozen(model):
                x_adv, y_adv = attack.run_standard_evaluation(test.x, test.y, batch_size=250)
        else:
            x_adv, y_adv = attack.run_standard_evaluation(test.x, test.y, batch_size=250)
        seconds = time.perf_counter() - start
        outputs[frozen] = (x_adv, y_adv)
        print(f"{'frozen' if frozen else 'plain '} {seconds:6.1f} s  robust {(y_adv == test.y).sum().item()}/{args.n}",
              flush=True)
    same = all(torch.equal(a, b) for a, b in zip(outputs[False], outputs[True]))
    print("images and verdicts bitwise equal:", same)


if __name__ == "__main__":
    main()
