"""The sizes behind exact-head's relative normalisers, over the first epochs of the regime grid's
rat-exact-trades (issue 32) or rat-exact-at: per training step the batch's tr H_adv + tr H_nat and
||G_adv||_F + ||G_nat||_F, and the sigma at which each absolute term equals its relative one,
sigma_2 = sqrt(2 / (tr H_adv + tr H_nat)) and sigma_1 = 1 / (||G_adv|| + ||G_nat||).

Also TrH's fixed coefficient (issue 43, ``method.rat.trh_coef``): per step exact-head's second-order term
as it enters the loss, alpha / 2 [tr H_adv - tr H_nat]_+ / (tr H_adv + tr H_nat), and the trace of the
base objective's head Hessian (weight and bias; TRADES: CE + beta KL, PGD-AT: the adversarial CE), and
trh_coef = mean term / mean trace over the steps measured: the coefficient at which TrH's average penalty
equals exact-head's second-order term's along the exact-head run's trajectory.

    OMP_NUM_THREADS=1 python scripts/head_taylor_scales.py --epochs 2
    OMP_NUM_THREADS=1 python scripts/head_taylor_scales.py --epochs 2 --run rat-exact-at

A measurement, not a study run: it trains one short run in a temporary directory (validation
only at the end, on 100 images) and prints a table per epoch (medians over the epoch's steps).
``--steps N`` stops after N training steps (the epochs' tables then cover the steps run).
Two epochs took 10 minutes on this project's 2-core CPU while three study runs shared it.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from ratkit.config import load_config
from ratkit.methods import rat as rat_module
from ratkit.study import load_grid
from ratkit.train import train

STUDIES = Path(rat_module.__file__).resolve().parents[1] / "configs" / "studies"


class Enough(Exception):
    """Raised from the loss after --steps steps: the measurement has what it needs."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", default="rat-exact-trades", choices=["rat-exact-trades", "rat-exact-at"])
    parser.add_argument("--steps", type=int, default=None, help="stop after this many training steps")
    args = parser.parse_args()
    grid = load_grid(STUDIES / "regime.yaml")
    cfg = load_config(grid.preset, [*grid.overrides, *grid.runs[args.run], f"train.seed={args.seed}",
                                    f"train.epochs={args.epochs}", f"train.val_every={args.epochs}",
                                    "train.val_n=100"])
    rows: list[tuple[float, ...]] = []
    original = rat_module.RAT.exact_head_terms

    def recorded(self, out):
        if args.steps is not None and len(rows) >= args.steps:
            raise Enough
        terms = original(self, out)
        with torch.no_grad():
            g_nat, tr_nat = rat_module.head_taylor_statistics(out.logits_clean, out.feats_clean, out.y)
            g_adv, tr_adv = rat_module.head_taylor_statistics(out.logits_adv, out.feats_adv, out.y)
            norm = torch.linalg.matrix_norm
            base_trace = self.base_head_trace(out, bias=True)  # the SmallCNN's head has a bias
            rows.append((tr_adv.item(), tr_nat.item(), norm(g_adv).item(), norm(g_nat).item(),
                         terms["taylor2"].item(), base_trace.item()))
        return terms

    rat_module.RAT.exact_head_terms = recorded
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(cfg, Path(tmp) / "run", quiet=True)
        except Enough:
            pass
    # the trainer drops a last partial batch
    steps = cfg.data.train_subset // cfg.train.batch_size if cfg.data.train_subset else len(rows) // args.epochs
    print(f"{args.run}, seed {args.seed}: {len(rows)} steps")
    print("| epoch | tr H_adv | tr H_nat | ||G_adv|| | ||G_nat|| | sigma_2 | sigma_1 | taylor2 mean | tr H_base mean |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in range(args.epochs):
        part = rows[e * steps:(e + 1) * steps]
        if not part:
            break
        med = [statistics.median(r[i] for r in part) for i in range(4)]
        s2 = statistics.median((2 / (r[0] + r[1])) ** 0.5 for r in part)
        s1 = statistics.median(1 / (r[2] + r[3]) for r in part)
        means = [statistics.mean(r[i] for r in part) for i in (4, 5)]
        print(f"| {e + 1} | {med[0]:.3g} | {med[1]:.3g} | {med[2]:.3g} | {med[3]:.3g} | {s2:.3g} | {s1:.3g} "
              f"| {means[0]:.3g} | {means[1]:.3g} |")
    positive = sum(r[4] > 0 for r in rows)
    print(f"exact-head's second-order term is > 0 in {positive} of {len(rows)} steps")
    print(f"trh_coef = mean taylor2 / mean tr H_base = {statistics.mean(r[4] for r in rows) / statistics.mean(r[5] for r in rows):.4g}")


if __name__ == "__main__":
    main()
