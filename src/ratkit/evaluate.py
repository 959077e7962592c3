"""The fixed evaluation protocol (METHOD.md) and its report.

Clean; FGSM; PGD-20 (random start, step eps/4, cross-entropy); CW-30 (PGD-30 on the CW
margin, random start, step eps/4); standard AutoAttack. Always the deterministic model, in
eval mode, in float32. "Robust accuracy" is the per-example worst case: an example counts
only if it is classified correctly clean and under every attack run.

One deliberate strengthening: our PGD-20 and CW-30 keep, per example, the strongest iterate
(``keep="best"``) instead of the last one, so an example that any iterate misclassifies
counts as broken. This can only lower the reported accuracy, never raise it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from . import distributed
from .attacks import PGDConfig, advance_generator, autoattack_correct, fgsm_config, pgd
from .modes import model_mode

ATTACKS = ("clean", "fgsm", "pgd20", "cw30", "aa")
ATTACK_TITLES = {
    "clean": "clean",
    "fgsm": "FGSM",
    "pgd20": "PGD-20 (CE)",
    "cw30": "CW-30 (margin)",
    "aa": "AutoAttack (standard)",
}


def protocol_attack(name: str, eps: float, norm: str) -> PGDConfig:
    """The PGD-engine settings of the protocol's gradient attacks."""
    if name == "fgsm":
        return fgsm_config(eps, norm)
    if name == "pgd20":
        return PGDConfig(eps=eps, step_size=eps / 4, steps=20, norm=norm, loss="ce", keep="best")
    if name == "cw30":
        return PGDConfig(eps=eps, step_size=eps / 4, steps=30, norm=norm, loss="cw", keep="best")
    raise ValueError(f"{name!r} is not a PGD-engine attack of the protocol")


def parse_attacks(text: str) -> tuple[str, ...]:
    """Parse 'clean,pgd20,aa' into protocol order; unknown names raise ValueError."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise ValueError(f"unknown attack(s) {unknown or text!r}; choose from {','.join(ATTACKS)}")
    return tuple(n for n in ATTACKS if n in names)


@dataclass
class AttackResult:
    accuracy: float
    n: int
    seconds: float
    correct: str  # per-example outcome, '1' = still correct, in test-set order


@dataclass
class EvalReport:
    dataset: str
    split: str
    norm: str
    eps: float
    n_total: int
    attacks: dict[str, AttackResult] = field(default_factory=dict)
    robust_accuracy: float = float("nan")
    robust_n: int = 0
    checkpoint: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _correct_under(model: nn.Module, x: Tensor, y: Tensor, name: str, eps: float, norm: str,
                   batch_size: int, generator: torch.Generator, progress, skip=None) -> Tensor:
    out = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    cfg = protocol_attack(name, eps, norm) if name != "clean" else None
    for k, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if skip is not None and skip(k):  # another rank's batch: stay in step with its random draws
            if cfg is not None:
                advance_generator(xb, cfg, generator)
            continue
        if cfg is not None:
            xb = pgd(model, xb, yb, cfg, generator=generator)
        with torch.no_grad():
            out[start:start + len(xb)] = model(xb).argmax(1) == yb
        if progress is not None:
            progress.update(len(xb))
    return out


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    dataset: str,
    eps: float,
    norm: str = "Linf",
    attacks: tuple[str, ...] = ATTACKS,
    batch_size: int = 256,
    aa_n: int | None = None,
    n_total: int | None = None,
    split: str = "test",
    seed: int = 0,
    quiet: bool = False,
) -> EvalReport:
    """Run the protocol on (x, y). ``aa_n`` limits AutoAttack to the first aa_n examples
    (its cost is about a second per image on a 2-core CPU); the worst case is then reported
    on those examples, where every attack ran.

    Under torchrun the batches are dealt out to the ranks (batch k to rank k mod N), each
    attacked exactly as one process would attack it, and the per-example results are summed
    over the ranks, so every rank returns the single-process report."""
    from .progress import progress

    rank = distributed.current()
    skip = (lambda k: k % rank.world_size != rank.rank) if rank.distributed else None
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    y = y.to(device)
    report = EvalReport(dataset=dataset, split=split, norm=norm, eps=eps,
                        n_total=n_total if n_total is not None else len(x))
    outcomes: dict[str, Tensor] = {}
    with model_mode(model, False), torch.autocast(device.type, enabled=False):
        for name in attacks:
            n = len(x) if name != "aa" or aa_n is None else min(aa_n, len(x))
            generator = torch.Generator(device=device).manual_seed(seed)
            started = time.perf_counter()
            with progress(n, ATTACK_TITLES[name], "img", quiet=quiet, main=rank.is_main) as bar:
                if name == "aa":
                    if not quiet and rank.is_main:
                        print(f"AutoAttack (standard) on {n} images: roughly 1 s per image for a small "
                              "robust CNN on a 2-core CPU.", file=sys.stderr)
                    correct = autoattack_correct(model, x[:n], y[:n], eps=eps, norm=norm,
                                                 batch_size=batch_size, seed=seed, progress=bar, skip=skip)
                else:
                    correct = _correct_under(model, x[:n], y[:n], name, eps, norm, batch_size, generator, bar,
                                             skip)
            correct = distributed.all_reduce_sum(correct.int()).bool()  # each example was done by one rank
            outcomes[name] = correct
            report.attacks[name] = AttackResult(
                accuracy=correct.float().mean().item(), n=n, seconds=time.perf_counter() - started,
                correct="".join("1" if c else "0" for c in correct.tolist()))
    if outcomes:
        robust_n = min(len(c) for c in outcomes.values())
        worst = torch.stack([c[:robust_n] for c in outcomes.values()]).all(dim=0)
        report.robust_accuracy = worst.float().mean().item()
        report.robust_n = robust_n
    return report


def evaluate_test_set(model: nn.Module, dataset: str, *, data_dir=None, n: int | None = None,
                      **protocol) -> EvalReport:
    """Load ``dataset``'s test split and run :func:`evaluate` on its first ``n`` images (all if None);
    the report records the full test-set size so the table can say "first n"."""
    from .data import load_dataset

    test = load_dataset(dataset, "test", data_dir=data_dir)
    n_total = len(test)
    if n is not None:
        test = test.first(n)
    return evaluate(model, test.x, test.y, dataset=dataset, n_total=n_total, **protocol)


def format_report(report: EvalReport) -> str:
    """A table a reader can trust: what was attacked, on how many images, at which eps."""
    lines = [
        f"Evaluation on {report.dataset} {report.split} set, {report.norm} eps={report.eps:.4g}"
        + (f"  [{report.checkpoint}]" if report.checkpoint else ""),
        f"{'attack':<24}{'accuracy':>10}{'images':>16}{'seconds':>10}",
    ]
    for name, r in report.attacks.items():
        scope = f"{r.n}" if r.n == report.n_total else f"first {r.n}"
        lines.append(f"{ATTACK_TITLES[name]:<24}{100 * r.accuracy:>9.2f}%{scope:>16}{r.seconds:>10.1f}")
    scope = f"{report.robust_n}" if report.robust_n == report.n_total else f"first {report.robust_n}"
    lines.append(f"{'robust (worst case)':<24}{100 * report.robust_accuracy:>9.2f}%{scope:>16}")
    lines.append(f"(worst case = correct under every attack above; test set has {report.n_total} images)")
    return "\n".join(lines)
