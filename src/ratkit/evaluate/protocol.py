"""The fixed evaluation protocol (METHOD.md) and its report; the papers' protocol beside it.

Ours ("ours", the default): clean; FGSM; PGD-20 (random start, step eps/4, cross-entropy);
CW-30 (PGD-30 on the CW margin, random start, step eps/4); standard AutoAttack. Always the
deterministic model, in eval mode, in float32. "Robust accuracy" is the per-example worst case:
an example counts only if it is classified correctly clean and under every attack run.

One deliberate strengthening: our PGD-20 and CW-30 keep, per example, the strongest iterate
(``keep="best"``) instead of the last one, so an example that any iterate misclassifies
counts as broken. This can only lower the reported accuracy, never raise it.

The papers' ("paper", as the TRADES / RAT evaluation scripts do, so numbers sit next to a
paper's table): eps 0.031 where ours is 8/255 (else the dataset's eps), PGD-20 with step 0.003
(eps/10 for other eps), uniform random start, last iterate; CW-20 on the margin capped at
kappa = 50, same steps, last iterate; standard AutoAttack at the same eps. docs/method.md
compares the two. The protocols' tables (names, titles, settings) live in
:mod:`ratkit.attacks.protocols`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .. import distributed
from ..attacks import PGDConfig, advance_generator, autoattack_correct, pgd
# the tables moved to ratkit.attacks.protocols; their names stay importable from here
from ..attacks.protocols import (ATTACK_TITLES, ATTACKS, DEFAULT_ATTACKS, PAPER_CW_KAPPA, PAPER_EPS,  # noqa: F401
                                 PROTOCOL_ATTACKS, PROTOCOLS, ProtocolAttack, _ours_pgd, paper_eps, paper_step,
                                 parse_attacks)
from ..files import atomic_write_bytes, write_json_atomic
from .chunks import AttackChunks, ChunkStore, fingerprint
from ..modes import model_mode


def check_protocol_norm(protocol: str, norm: str) -> None:
    """The papers' protocol is written for Linf (their scripts' eps and steps): any other norm is refused."""
    if protocol == "paper" and norm != "Linf":
        raise ValueError("the papers' protocol is Linf only")


def protocol_attack(name: str, eps: float, norm: str, protocol: str = "ours") -> PGDConfig:
    """The PGD-engine settings of a protocol's gradient attacks (its table's ``config``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    attack = PROTOCOL_ATTACKS[protocol].get(name)
    if attack is None or attack.kind != "pgd":
        raise ValueError(f"{name!r} is not a PGD-engine attack of the {protocol!r} protocol")
    check_protocol_norm(protocol, norm)
    return attack.config(eps, norm)


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
    protocol: str = "ours"
    # per example, not in the JSON (the CSV and --save-adv carry them)
    labels: list[int] = field(default_factory=list, repr=False)
    clean_predictions: list[int] = field(default_factory=list, repr=False)
    adversarial: dict | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("labels", "clean_predictions", "adversarial"):
            out.pop(key)
        return out


def _predictions_under(model: nn.Module, x: Tensor, y: Tensor, cfg: PGDConfig | None, batch_size: int,
                       generator: torch.Generator, progress, skip=None, keep: Tensor | None = None,
                       chunks: AttackChunks | None = None) -> Tensor:
    """Predicted classes on x (cfg None) or on its adversarial examples; ``keep`` (a tensor
    like x) receives the examples attacked. ``chunks`` keeps each batch's result on disk and
    restores the batches an interrupted run finished (with the generator state after them)."""
    out = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    for k, start in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if skip is not None and skip(k):  # another rank's batch: stay in step with its random draws
            if cfg is not None:
                advance_generator(xb, cfg, generator)
            continue
        stored = chunks.load(k, x.device, inputs=keep is not None) if chunks is not None else None
        if stored is not None:
            out[start:start + len(xb)] = stored["predicted"]
            restore_generator(generator, stored["generator"])
            xb = stored.get("x_adv", xb)
        else:
            if cfg is not None:
                xb = pgd(model, xb, yb, cfg, generator=generator)
            with torch.no_grad():
                out[start:start + len(xb)] = model(xb).argmax(1)
            if chunks is not None:
                chunks.save(k, {"predicted": out[start:start + len(xb)], "generator": generator.get_state(),
                                **({"x_adv": xb} if keep is not None else {})})
        if keep is not None:
            keep[start:start + len(xb)] = xb
        if progress is not None:
            progress.update(len(xb))
    return out


def restore_generator(generator: torch.Generator, state: Tensor) -> None:
    """Restore a chunk's generator state, or warn when it comes from a generator of another kind.

    Chunks written before the evaluation's generator was always on the CPU hold a CUDA generator's
    state, which a CPU generator cannot take: their verdicts are still valid, but the batches
    computed after them draw other random starts than an uninterrupted run would."""
    try:
        generator.set_state(state)
    except RuntimeError:
        warnings.warn("an evaluation chunk holds the state of another device's random generator; its "
                      "verdicts are reused, but the batches after it draw other random starts than an "
                      "uninterrupted run", stacklevel=2)


@contextmanager
def strict_float32():
    """Float32 that is float32 on GPUs too: TF32 off for matmuls and cuDNN convolutions (PyTorch
    enables it for cuDNN by default), and cuDNN's autotuning off (training turns it on; the
    algorithms it picks may differ from run to run), the previous settings restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.backends.cudnn.benchmark = benchmark


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    dataset: str,
    eps: float,
    norm: str = "Linf",
    attacks: tuple[str, ...] | None = None,
    batch_size: int = 256,
    aa_n: int | None = None,
    n_total: int | None = None,
    split: str = "test",
    seed: int = 0,
    quiet: bool = False,
    protocol: str = "ours",
    keep_adversarial: bool = False,
    state_dir: str | os.PathLike | None = None,
) -> EvalReport:
    """Run the protocol on (x, y). ``aa_n`` limits AutoAttack to the first aa_n examples
    (its cost is about a second per image on a 2-core CPU); the worst case is then reported
    on those examples, where every attack ran. ``keep_adversarial`` keeps, per example, the
    input of the worst case (:func:`worst_case_examples`) in ``report.adversarial``.
    ``state_dir`` keeps every attack's per-batch results on disk until the report is complete, so a
    rerun of an interrupted evaluation resumes there, to identical numbers (:mod:`ratkit.evaluate.chunks`).

    Under torchrun the batches are dealt out to the ranks (batch k to rank k mod N), each
    attacked exactly as one process would attack it, and the per-example results are summed
    over the ranks, so every rank returns the single-process report.

    Example: ``format_report(evaluate(model, x, y, dataset="fashion-mnist", eps=0.1, attacks=("clean", "pgd20")))``
    """
    attacks = DEFAULT_ATTACKS[protocol] if attacks is None else attacks
    rank = distributed.current()
    skip = (lambda k: k % rank.world_size != rank.rank) if rank.distributed else None
    device = next(model.parameters()).device
    if x.dtype == torch.uint8:  # images held as bytes (your own files): [0, 255] -> [0, 1], as training sees them
        from ..data.tensordata import uint8_to_float

        x = uint8_to_float(x)
    x = x.to(device=device, dtype=torch.float32)
    y = y.to(device)
    report = EvalReport(dataset=dataset, split=split, norm=norm, eps=eps,
                        n_total=n_total if n_total is not None else len(x), protocol=protocol,
                        labels=y.tolist())
    outcomes: dict[str, Tensor] = {}
    inputs: dict[str, Tensor] = {}
    store = None
    if state_dir is not None:
        key = fingerprint(model, x, y, eps=eps, norm=norm, protocol=protocol, seed=seed, batch_size=batch_size,
                          aa_n=aa_n)
        store = ChunkStore.open(state_dir, key, writer=rank.is_main)
        distributed.any_rank(False, device)  # the other ranks wait until rank 0 has prepared the directory
    with model_mode(model, False), torch.autocast(device.type, enabled=False), strict_float32():
        for name in attacks:
            kind = PROTOCOL_ATTACKS[protocol][name].kind
            n = len(x) if kind != "autoattack" or aa_n is None else min(aa_n, len(x))
            keep = torch.zeros_like(x[:n]) if keep_adversarial else None
            started = time.perf_counter()
            correct = _attack_outcome(name, model, x[:n], y[:n], report, eps=eps, norm=norm, protocol=protocol,
                                      batch_size=batch_size, seed=seed, quiet=quiet, skip=skip, keep=keep,
                                      chunks=store.attack(name) if store is not None else None)
            outcomes[name] = correct
            if keep is not None:
                inputs[name] = distributed.all_reduce_sum(keep)
            report.attacks[name] = AttackResult(
                accuracy=correct.float().mean().item(), n=n, seconds=time.perf_counter() - started,
                correct="".join("1" if c else "0" for c in correct.tolist()))
    if outcomes:
        robust_n = min(len(c) for c in outcomes.values())
        worst = torch.stack([c[:robust_n] for c in outcomes.values()]).all(dim=0)
        report.robust_accuracy = worst.float().mean().item()
        report.robust_n = robust_n
        if keep_adversarial:
            report.adversarial = worst_case_examples(outcomes, inputs)
    if store is not None:
        distributed.any_rank(False, device)  # a meeting point: every rank has written its chunks
        if rank.is_main:
            store.remove()  # the report is complete
    return report


def _attack_outcome(name: str, model: nn.Module, x: Tensor, y: Tensor, report: EvalReport, *, eps: float,
                    norm: str, protocol: str, batch_size: int, seed: int, quiet: bool, skip, keep, chunks) -> Tensor:
    """One attack of the protocol on (x, y): per example, whether the model stays right, gathered
    over the ranks (each example is attacked by one). The clean pass also fills the report's
    clean predictions."""
    from ..progress import progress

    rank = distributed.current()
    # on the CPU whatever the model's device: the same random starts on a GPU as on the CPU, and
    # an interrupted evaluation can be resumed on another device (a chunk keeps this state)
    generator = torch.Generator().manual_seed(seed)
    with progress(len(x), PROTOCOL_ATTACKS[protocol][name].title, "img", quiet=quiet, main=rank.is_main) as bar:
        kind = PROTOCOL_ATTACKS[protocol][name].kind
        if kind == "autoattack":
            if not quiet and rank.is_main:
                print(f"AutoAttack (standard) on {len(x)} images: roughly 1 s per image for a small "
                      "robust CNN on a 2-core CPU.", file=sys.stderr)
            correct = autoattack_correct(model, x, y, eps=eps, norm=norm, batch_size=batch_size, seed=seed,
                                         progress=bar, skip=skip, keep=keep, chunks=chunks)
        else:
            cfg = None if kind == "clean" else protocol_attack(name, eps, norm, protocol)
            predicted = _predictions_under(model, x, y, cfg, batch_size, generator, bar, skip, keep, chunks)
            if kind == "clean":
                predicted = distributed.all_reduce_sum(predicted + 1) - 1  # -1 where another rank's
                report.clean_predictions = predicted.tolist()
            correct = predicted == y
    return distributed.all_reduce_sum(correct.int()).bool()


def worst_case_examples(outcomes: dict[str, Tensor], inputs: dict[str, Tensor], n: int | None = None) -> dict:
    """Per evaluated example (the first ``n``; default every one, AutoAttack's subset or not): the
    input of the first attack, in protocol order, that breaks it (the clean image if it is
    misclassified clean); for an example no attack breaks, the input of the last attack that ran
    on it. ``attack`` indexes ``attacks``; ``correct`` says whether it survived every attack that
    ran on it (beyond AutoAttack's first ``aa_n`` images, AutoAttack did not)."""
    names = list(outcomes)
    n = max(len(c) for c in outcomes.values()) if n is None else n
    device = next(iter(outcomes.values())).device
    covered = torch.stack([torch.arange(n, device=device) < len(outcomes[k]) for k in names])  # (attacks, n)

    def padded(t: Tensor, fill) -> Tensor:
        t = t[:n]
        if len(t) == n:
            return t
        return torch.cat([t, torch.full((n - len(t), *t.shape[1:]), fill, dtype=t.dtype, device=t.device)])

    wrong = torch.stack([~padded(outcomes[k], True) for k in names]) & covered
    order = torch.arange(1, len(names) + 1, device=device)[:, None]
    last_covering = (covered.long() * order).argmax(0)
    first_wrong = torch.where(wrong.any(0), wrong.int().argmax(0), last_covering)
    stacked = torch.stack([padded(inputs[k], 0.0) for k in names])  # (attacks, n, C, H, W)
    chosen = stacked[first_wrong, torch.arange(n, device=stacked.device)]
    return {"x_adv": chosen.cpu(), "attack": first_wrong.cpu(), "correct": (~wrong.any(0)).cpu(),
            "attacks": names}


def evaluate_test_set(model: nn.Module, dataset, *, data_dir=None, n: int | None = None,
                      **protocol) -> EvalReport:
    """Load ``dataset``'s test split (a built-in's name, or a :class:`ratkit.data.source.DataSource`
    for any data) and run :func:`evaluate` on its first ``n`` images (all if None); the report
    records the full test-set size so the table can say "first n".

    Example: ``print(format_report(evaluate_test_set(model, "fashion-mnist", n=1000, eps=0.1, aa_n=500)))``"""
    from ..data.source import DataSource, load_split

    src = dataset if isinstance(dataset, DataSource) else DataSource(dataset, data_dir=data_dir)
    test = load_split(src, "test", stream=False)
    n_total = len(test)
    if n is not None:
        test = test.first(n)
    test = test.as_float() if hasattr(test, "as_float") else test
    return evaluate(model, test.x, test.y, dataset=src.dataset, n_total=n_total, **protocol)


def summary_block(report: EvalReport) -> dict:
    """A RobustBench-style summary (accuracies in percent) for ``rat eval --json``."""
    def pct(name):
        return round(100 * report.attacks[name].accuracy, 2) if name in report.attacks else None

    return {"dataset": report.dataset, "threat_model": report.norm, "eps": report.eps, "protocol": report.protocol,
            "clean_acc": pct("clean"), "autoattack_acc": pct("aa"),
            "n_ex": report.attacks["aa"].n if "aa" in report.attacks else report.robust_n}


def write_per_example_csv(report: EvalReport, path) -> None:
    """One row per evaluated image: index, label, clean prediction, 1/0 under each attack, worst case."""
    import csv

    names = list(report.attacks)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "clean_prediction", *[f"correct_{k}" for k in names], "robust"])
        for i, label in enumerate(report.labels):
            flags = [report.attacks[k].correct[i] if i < len(report.attacks[k].correct) else "" for k in names]
            robust = "" if i >= report.robust_n else ("1" if all(c == "1" for c in flags) else "0")
            prediction = report.clean_predictions[i] if i < len(report.clean_predictions) else ""
            writer.writerow([i, label, prediction, *flags, robust])


def save_adversarial(report: EvalReport, path) -> None:
    """The worst-case inputs of :func:`worst_case_examples` as safetensors, with labels, verdicts and
    which attack made each (names in the header's metadata).

    Load: ``from safetensors.torch import load_file; t = load_file(path)``: ``t["x_adv"]``
    (N, C, H, W) in [0, 1], ``t["y"]``, ``t["correct"]`` (1 = survives every attack), ``t["attack"]``."""
    import json

    from safetensors.torch import save

    adv = report.adversarial
    if adv is None:
        raise ValueError("the report holds no adversarial examples: evaluate with keep_adversarial=True")
    n = len(adv["x_adv"])
    tensors = {"x_adv": adv["x_adv"].contiguous(), "y": torch.tensor(report.labels[:n]),
               "correct": adv["correct"].to(torch.uint8), "attack": adv["attack"]}
    meta = {"attacks": json.dumps(adv["attacks"]), "eps": str(report.eps), "norm": report.norm,
            "protocol": report.protocol, "dataset": report.dataset, "checkpoint": report.checkpoint}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def write_report_files(report: EvalReport, json_path, extra: dict | None = None) -> dict:
    """Write the report as JSON (with the RobustBench-style ``summary`` block and ``extra``) and the
    per-example CSV beside it (same name, .csv): what ``rat eval --json`` and ``rat train``'s
    eval.json both write. Returns the JSON's content.

    Example: ``write_report_files(report, "runs/a/eval.json")`` also writes runs/a/eval.csv"""
    from pathlib import Path

    json_path = Path(json_path)
    payload = {**report.to_json(), "summary": summary_block(report), **(extra or {})}
    write_json_atomic(json_path, payload)
    write_per_example_csv(report, json_path.with_suffix(".csv"))
    return payload


def format_report(report: EvalReport) -> str:
    """A table a reader can trust: what was attacked, on how many images, at which eps.

    Example::

        print(format_report(evaluate(model, x, y, eps=0.1, dataset="fashion-mnist")))
    """
    protocol = "" if report.protocol == "ours" else ", the papers' protocol (last iterate, step eps/10, CW kappa 50)"
    lines = [
        f"Evaluation on {report.dataset} {report.split} set, {report.norm} eps={report.eps:.4g}{protocol}"
        + (f"  [{report.checkpoint}]" if report.checkpoint else ""),
        f"{'attack':<24}{'accuracy':>10}{'images':>16}{'seconds':>10}",
    ]
    for name, r in report.attacks.items():
        scope = f"{r.n}" if r.n == report.n_total else f"first {r.n}"
        title = PROTOCOL_ATTACKS.get(report.protocol, {}).get(name) or PROTOCOL_ATTACKS["ours"].get(name)
        lines.append(f"{title.title if title else name:<24}{100 * r.accuracy:>9.2f}%{scope:>16}{r.seconds:>10.1f}")
    scope = f"{report.robust_n}" if report.robust_n == report.n_total else f"first {report.robust_n}"
    lines.append(f"{'robust (worst case)':<24}{100 * report.robust_accuracy:>9.2f}%{scope:>16}")
    lines.append(f"(worst case = correct under every attack above; test set has {report.n_total} images)")
    return "\n".join(lines)
