"""Where a checkpoint is confident: clean inputs vs the training attack's points (issue 15's diagnosis).

For each checkpoint, on the first N test images (eval mode, float32): accuracy, mean softmax
probability of the label p_y and mean margin p_y - max_other, on
  clean inputs; the training attack of the Fashion-MNIST preset (5 steps of 0.04 from a uniform
  start in the eps-ball, last iterate); PGD-20 (steps eps/4, uniform start, last iterate); and a
  small attack that starts at x (eps/4, 10 steps of eps/16), which probes the margin around x.

    python scripts/rat_at_probe.py --json docs/results/rat-at-diagnosis/probe.json NAME=CHECKPOINT ...
"""

import argparse
import json

import torch

from ratkit.analysis.common import load_checkpoint_examples
from ratkit.attacks.pgd import PGDConfig, pgd


def statistics(model, x, y):
    with torch.no_grad():
        p = model(x).softmax(1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    other = p.scatter(1, y[:, None], -1.0).max(1).values
    return {"accuracy": (p.argmax(1) == y).float().mean().item(), "p_y": p_y.mean().item(),
            "margin": (p_y - other).mean().item()}


def probe(checkpoint: str, n: int, seed: int) -> dict:
    ex = load_checkpoint_examples(checkpoint, n)
    model, x, y, eps = ex.model, ex.x, ex.y, ex.eps
    g = torch.Generator().manual_seed(seed)
    attacks = {"train_attack": PGDConfig(eps=eps, step_size=0.04, steps=5, random_start="uniform"),
               "pgd20_last": PGDConfig(eps=eps, step_size=eps / 4, steps=20, random_start="uniform"),
               "small_from_x": PGDConfig(eps=eps / 4, step_size=eps / 16, steps=10, random_start="none")}
    out = {"checkpoint": checkpoint, "epoch": ex.meta.get("epoch"), "n": n, "clean": statistics(model, x, y)}
    for name, cfg in attacks.items():
        out[name] = statistics(model, pgd(model, x, y, cfg, generator=g), y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = {}
    for item in args.checkpoints:
        name, path = item.split("=", 1)
        rows[name] = r = probe(path, args.n, args.seed)
        print(f"{name:28s} " + " | ".join(f"{k} acc {100 * r[k]['accuracy']:.1f} p_y {r[k]['p_y']:.3f} "
                                          f"margin {r[k]['margin']:+.3f}"
                                          for k in ("clean", "train_attack", "pgd20_last", "small_from_x")), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
