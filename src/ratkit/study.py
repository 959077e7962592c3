"""`rat study`: a grid of training runs x seeds, evaluated with the full protocol, then aggregated.

A grid file (``configs/studies/*.yaml``) names a preset, the overrides every run shares (the
budget), one override list per configuration, the seeds, the pairs to compare (with RAT, base),
and the evaluation. Each (configuration, seed) is one run:

* its checkpoints live in ``OUT/<config>-seed<s>/`` (large files, never committed);
* when it is trained, evaluated and measured, a small ``RESULTS/<config>-seed<s>.json`` is
  written (every number, no per-example strings) and, with ``commit=True``, committed;
* a run whose result file exists is skipped; a run with a ``last`` checkpoint is resumed
  exactly (the trainer's resume); anything else starts fresh. So the study survives being
  stopped, and on a new machine it picks up from the committed result files;
* a result file that lacks a measurement the grid now asks for (``hessian``, ``landscape`` or ``outputs``
  added to the grid later) gets just that measurement added, from the run's best checkpoint,
  when the checkpoint is still there; nothing is retrained or re-evaluated. The same holds for
  ``checkpoints: [best, last]``: a record without ``last`` gets the evaluation of the run's
  ``last`` checkpoint added (the best checkpoint is not evaluated again).

Every run is evaluated on its ``best`` checkpoint (by validation PGD-20). Where robust
overfitting sets in (Rice et al. 2020), ``checkpoints: [best, last]`` also evaluates the weights
of the last epoch with the same protocol; the record then holds ``last`` and ``best_minus_last``.
The other checkpoint measurements (Hessian, landscape, outputs) stay on best.

Aggregation reads the result files only: mean and sample standard deviation over seeds per
configuration, and for every pair the paired difference (with RAT minus base, same seed) with
its mean, standard deviation and a two-sided paired t-test p-value.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import yaml

from .config import ConfigError, config_to_dict, load_config

ACCURACY_KEYS = ("clean", "fgsm", "pgd20", "cw30", "aa", "robust")


class StudyError(Exception):
    """A bad grid file or study setting; the message is one line."""


@dataclass
class StudyGrid:
    name: str
    preset: str = "fmnist-cpu"
    overrides: list[str] = field(default_factory=list)
    runs: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: dict = field(default_factory=lambda: {"attacks": "clean,fgsm,pgd20,cw30,aa", "n": None, "aa_n": 1000})
    hessian: dict | None = None  # e.g. {"n": 256, "top_k": 1, "probes": 50, "max_iter": 50}
    # 1-D landscape along a filter-normalised direction drawn with the run's seed, e.g.
    # {"n": 500, "points": 21, "span": 1.0, "adversarial": "regenerated"}
    landscape: dict | None = None
    # output scale (softmax confidence, logit norm) on the first n clean and PGD-10 test images, e.g. {"n": 1000}
    outputs: dict | None = None
    # the checkpoints evaluated with the protocol: best always; [best, last] also the last epoch's weights
    checkpoints: list[str] = field(default_factory=lambda: ["best"])


def load_grid(path: str | os.PathLike) -> StudyGrid:
    """Read and check a grid file; every configuration's config is validated up front."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such grid file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    known = set(StudyGrid.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    raw.setdefault("name", path.stem)
    raw["pairs"] = [tuple(p) for p in raw.get("pairs", [])]
    grid = StudyGrid(**raw)
    if not grid.runs:
        raise StudyError(f"{path}: no runs")
    if grid.checkpoints not in (["best"], ["best", "last"]):
        raise StudyError(f"{path}: checkpoints {grid.checkpoints!r}: expected [best] or [best, last]")
    for with_rat, base in grid.pairs:
        if with_rat not in grid.runs or base not in grid.runs:
            raise StudyError(f"{path}: pair ({with_rat}, {base}) names a configuration not in runs")
    for name in grid.runs:
        try:
            run_config(grid, name, grid.seeds[0] if grid.seeds else 0)
        except ConfigError as exc:
            raise StudyError(f"{path}: run {name!r}: {exc}") from None
    return grid


def run_config(grid: StudyGrid, name: str, seed: int):
    """The full config of one run: preset, shared budget, the configuration's overrides, the seed."""
    return load_config(grid.preset, [*grid.overrides, *grid.runs[name], f"train.seed={seed}"])


def run_key(name: str, seed: int) -> str:
    return f"{name}-seed{seed}"


# ----------------------------------------------------------------------------- one run


def _training_complete(run_dir: Path, epochs: int) -> bool:
    from .checkpoint import read_checkpoint

    if not (run_dir / "last.safetensors").exists():
        return False
    _, meta = read_checkpoint(run_dir / "last")
    return meta["progress"]["epoch"] >= epochs


def run_one(grid: StudyGrid, name: str, seed: int, out_dir: Path, *, quiet: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Train (or resume), evaluate and measure one run; returns its result record."""
    from .train import load_run_config, train

    cfg = run_config(grid, name, seed)
    run_dir = out_dir / run_key(name, seed)
    if (run_dir / "last.safetensors").exists():
        if load_run_config(run_dir) != cfg:
            raise StudyError(f"{run_dir}: holds a run with a different config; move it away or use another --out")
        if not _training_complete(run_dir, cfg.train.epochs):
            log(f"{run_key(name, seed)}: resuming")
            train(cfg, run_dir, resume=True, quiet=quiet)
    else:
        log(f"{run_key(name, seed)}: training")
        train(cfg, run_dir, quiet=quiet)
    return record_run(grid, name, seed, run_dir, quiet=quiet, log=log)


def eval_config(grid: StudyGrid, cfg):
    """``cfg`` with the grid's evaluation in place of the preset's (the training config is unchanged)."""
    return replace(cfg, eval=replace(cfg.eval, attacks=grid.eval.get("attacks", cfg.eval.attacks),
                                     n=grid.eval.get("n"), aa_n=grid.eval.get("aa_n")))


def _accuracy(report: dict) -> dict:
    """The accuracies of an ``evaluate_run`` report as a record stores them (no per-example data)."""
    accuracy = {k: {"accuracy": a["accuracy"], "n": a["n"], "seconds": a["seconds"]}
                for k, a in report["attacks"].items()}
    if report["robust_n"]:
        accuracy["robust"] = {"accuracy": report["robust_accuracy"], "n": report["robust_n"]}
    return accuracy


def record_run(grid: StudyGrid, name: str, seed: int, run_dir: Path, *, quiet: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Evaluate and measure one trained run (its ``best`` checkpoint and ``metrics.jsonl``): the result record.

    Needs only ``best.*`` and ``metrics.jsonl``, so a run trained elsewhere can be evaluated on
    another machine without its ``last`` checkpoint (the record says where the evaluation ran);
    a grid's ``last`` is then left out, and added later when the checkpoint is there."""
    from .bench import environment
    from .device import resolve_device
    from .train import evaluate_run

    cfg = run_config(grid, name, seed)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    started = time.perf_counter()
    log(f"{run_key(name, seed)}: evaluating")
    report = evaluate_run(run_dir, eval_config(grid, cfg), quiet=quiet)
    accuracy = _accuracy(report)
    record = {
        "config": name, "seed": seed, "grid": grid.name, "overrides": [*grid.overrides, *grid.runs[name]],
        "best_epoch": report["best_epoch"], "epochs": len(history),
        "train_seconds": sum(r.get("train_seconds", 0.0) for r in history),
        "seconds_per_epoch": statistics.mean(r["train_seconds"] for r in history) if history else None,
        "history": [{k: v for k, v in r.items() if k in ("epoch", "train_loss", "val_clean", "val_pgd20",
                                                          "train_seconds", "warning")} for r in history],
        "accuracy": accuracy, "eval_seconds": time.perf_counter() - started,
        # where the evaluation ran (training too, unless it was resumed elsewhere): seconds compare only on one machine
        "machine": environment(str(resolve_device(cfg.train.device))),
        "config_full": config_to_dict(cfg),
    }
    missing = missing_measurements(grid, record)
    absent = unavailable_measurements(missing, run_dir)
    if absent:
        log(f"{run_key(name, seed)}: {run_dir} has no last checkpoint; {', '.join(absent)} left out")
    for kind in missing:
        if kind not in absent:
            add_measurement(grid, record, kind, run_dir, quiet=quiet, log=log)
    return record


# "last": the protocol on the last epoch's weights (record["last"], record["best_minus_last"]);
# the others are measured on the best checkpoint
MEASUREMENTS = ("last", "hessian", "landscape", "outputs")


def measurement_checkpoint(kind: str) -> str:
    """The checkpoint of the run directory a measurement is taken on: ``best`` or ``last``."""
    return "last" if kind == "last" else "best"


def missing_measurements(grid: StudyGrid, record: dict) -> list[str]:
    """The measurements the grid asks for that ``record`` does not hold yet."""
    asked = {"last": "last" in grid.checkpoints, **{k: bool(getattr(grid, k)) for k in MEASUREMENTS if k != "last"}}
    return [kind for kind in MEASUREMENTS if asked[kind] and kind not in record]


def unavailable_measurements(kinds: list[str], run_dir: Path) -> list[str]:
    """Those of ``kinds`` whose checkpoint ``run_dir`` does not hold (so they cannot be added)."""
    return [k for k in kinds if not (run_dir / f"{measurement_checkpoint(k)}.safetensors").exists()]


def add_measurement(grid: StudyGrid, record: dict, kind: str, run_dir: Path, *, quiet: bool = True,
                    log: Callable[[str], None] = print) -> None:
    """Measure ``kind`` (one of MEASUREMENTS) on its checkpoint (``measurement_checkpoint``) into ``record``."""
    from .analysis import load_checkpoint_examples, output_statistics, run_hessian, run_landscape
    from .device import resolve_device
    from .train import evaluate_run

    cfg = run_config(grid, record["config"], record["seed"])
    device, seed = str(resolve_device(cfg.train.device)), record["seed"]
    log(f"{run_key(record['config'], seed)}: {kind}")
    if kind == "last":
        # the grid's protocol, as for best, on the last epoch's weights
        report = evaluate_run(run_dir, eval_config(grid, cfg), quiet=quiet, checkpoint="last")
        last = _accuracy(report)
        record["last"] = {"epoch": report["last_epoch"], "accuracy": last}
        # positive: the best checkpoint is the more accurate one (robust overfitting, for robust keys)
        record["best_minus_last"] = {k: record["accuracy"][k]["accuracy"] - last[k]["accuracy"]
                                     for k in ACCURACY_KEYS if k in record["accuracy"] and k in last}
    elif kind == "hessian":
        h = grid.hessian
        job = run_hessian(run_dir, out=run_dir, n=h.get("n", 256), top_k=h.get("top_k", 1),
                          probes=h.get("probes", 50), loss="adversarial", max_iter=h.get("max_iter", 50),
                          seed=seed, device=device, quiet=quiet)
        r = job.results[0]
        record["hessian"] = {"loss": "adversarial", "n": r.settings.n, "top_eigenvalue": r.eigenvalues[0],
                             "converged": r.converged[0], "trace": r.trace, "trace_stderr": r.trace_stderr,
                             "probes": r.trace_probes}
    elif kind == "landscape":
        spec = grid.landscape
        # the direction is drawn with the run's seed: a pair (same seed) is cut along the same raw
        # draw, and the mean over seeds averages over directions
        job = run_landscape([run_dir], out=run_dir / "landscape", dim=1, n=spec.get("n", 500),
                            points=spec.get("points", 21), span=spec.get("span", 1.0),
                            adversarial=spec.get("adversarial", "regenerated"), seed=seed, device=device,
                            quiet=quiet)
        r = job.results[0]
        record["landscape"] = {"adversarial": r.settings.adversarial, "n": r.settings.n, "seed": r.settings.seed,
                               "coordinates": r.coordinates, "clean_loss": r.clean_loss,
                               "clean_accuracy": r.clean_accuracy, "adversarial_loss": r.adversarial_loss,
                               "adversarial_accuracy": r.adversarial_accuracy, "seconds": r.seconds}
    elif kind == "outputs":
        ex = load_checkpoint_examples(run_dir, grid.outputs.get("n", 1000), device=device)
        record["outputs"] = {s.inputs: s.to_json() for s in output_statistics(ex.model, ex.x, ex.y, eps=ex.eps,
                                                                                 seed=seed)}
    else:
        raise StudyError(f"unknown measurement {kind!r}; expected one of {MEASUREMENTS}")


def _write_json_atomic(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def git_commit(paths: list[Path], message: str, *, attempts: int = 5) -> bool:
    """Commit ``paths`` (and nothing else); retried while another git process holds the lock."""
    for attempt in range(attempts):
        add = subprocess.run(["git", "add", "--", *map(str, paths)], capture_output=True, text=True)
        commit = subprocess.run(["git", "commit", "-q", "-m", message, "--", *map(str, paths)],
                                capture_output=True, text=True) if add.returncode == 0 else add
        if commit.returncode == 0:
            return True
        if "index.lock" not in commit.stderr:
            return False
        time.sleep(2 + 3 * attempt)
    return False


def selected_runs(grid: StudyGrid, only: list[str] | None) -> list[str]:
    """The configurations to run: all of the grid's, or those ``only`` names (each must be in the grid)."""
    names = list(grid.runs) if only is None else only
    missing = [n for n in names if n not in grid.runs]
    if missing:
        raise StudyError(f"--only: {missing} not in the grid's runs {list(grid.runs)}")
    return names


def run_study(grid: StudyGrid, out_dir: str | os.PathLike, results_dir: str | os.PathLike, *,
              seeds: list[int] | None = None, only: list[str] | None = None, commit: bool = False,
              quiet: bool = True, log: Callable[[str], None] = print, aggregate_after: bool = True,
              evaluate_only: bool = False) -> dict | None:
    """Every (configuration, seed) not yet complete, seed by seed; then the aggregate (unless not asked).

    ``evaluate_only``: train nothing; record the runs whose directory holds a trained ``best``
    checkpoint and ``metrics.jsonl`` (trained elsewhere, say, and copied without ``last``)."""
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    seeds = grid.seeds if seeds is None else seeds
    names = selected_runs(grid, only)
    for seed in seeds:  # seed-major: after the first seed every configuration has a result
        for name in names:
            key = run_key(name, seed)
            result = results_dir / f"{key}.json"
            if result.exists():
                record = json.loads(result.read_text())
                missing = missing_measurements(grid, record)
                if not missing:
                    log(f"{key}: complete, skipped")
                    continue
                absent = unavailable_measurements(missing, out_dir / key)
                if absent:
                    checkpoints = " or ".join(sorted({measurement_checkpoint(k) for k in absent}))
                    rest = "kept as is" if absent == missing else "added only the rest"
                    log(f"{key}: lacks {', '.join(absent)}, and {out_dir / key} has no {checkpoints} checkpoint; "
                        f"{rest}")
                missing = [k for k in missing if k not in absent]
                if not missing:
                    continue
                for kind in missing:
                    add_measurement(grid, record, kind, out_dir / key, quiet=quiet, log=log)
                message = f"study {grid.name}: {', '.join(missing)} of {key}"
            elif evaluate_only:
                if not (out_dir / key / "best.safetensors").exists():
                    log(f"{key}: no trained run in {out_dir / key}; skipped (evaluate only)")
                    continue
                record = record_run(grid, name, seed, out_dir / key, quiet=quiet, log=log)
                message = f"study {grid.name}: result of {key}"
            else:
                record = run_one(grid, name, seed, out_dir, quiet=quiet, log=log)
                message = f"study {grid.name}: result of {key}"
            _write_json_atomic(result, record)
            log(f"{key}: done, {result}")
            if commit and not git_commit([result], message):
                log(f"{key}: could not commit {result}")
    return write_aggregate(grid, results_dir) if aggregate_after else None


def run_study_parallel(grid_path: str | os.PathLike, grid: StudyGrid, out_dir: str | os.PathLike,
                       results_dir: str | os.PathLike, *, jobs: int, seeds: list[int] | None = None,
                       only: list[str] | None = None, commit: bool = False,
                       log: Callable[[str], None] = print, aggregate_after: bool = True,
                       evaluate_only: bool = False) -> dict | None:
    """``run_study`` with up to ``jobs`` runs at a time, each (configuration, seed) in its own
    ``rat study --only NAME --seeds S`` process (for a GPU, which a small model leaves mostly
    idle, or a machine with many cores); then the aggregate, once, from the result files.

    Every run is the same as in the sequential runner (resumable, skipped when done); only the
    order of finishing differs. Each process's log goes to ``OUT/<config>-seed<s>.log``.
    """
    import sys

    out_dir, results_dir = Path(out_dir), Path(results_dir)
    names = selected_runs(grid, only)
    queue = [(name, seed) for seed in (grid.seeds if seeds is None else seeds) for name in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    running: list[tuple[str, subprocess.Popen, object]] = []
    failed = []
    while queue or running:
        while queue and len(running) < jobs:
            name, seed = queue.pop(0)
            key = run_key(name, seed)
            cmd = [sys.executable, "-m", "ratkit", "study", "--grid", str(grid_path), "--only", name,
                   "--seeds", str(seed), "--out", str(out_dir), "--results", str(results_dir), "--no-aggregate"]
            if commit:
                cmd.append("--commit")
            if evaluate_only:
                cmd.append("--evaluate-only")
            logfile = open(out_dir / f"{key}.log", "w")
            log(f"{key}: started (log {out_dir / f'{key}.log'})")
            running.append((key, subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT), logfile))
        time.sleep(1.0)
        for item in [r for r in running if r[1].poll() is not None]:
            key, proc, logfile = item
            logfile.close()
            running.remove(item)
            if proc.returncode != 0:
                failed.append(key)
            log(f"{key}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}")
    if failed:
        log(f"failed runs (see their logs in {out_dir}): {', '.join(failed)}")
    return write_aggregate(grid, results_dir) if aggregate_after else None


# ----------------------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def paired_t_p_value(diffs: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test of mean(diffs) = 0 (None with fewer than 2 pairs)."""
    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if statistics.mean(diffs) != 0 else 1.0
    t = statistics.mean(diffs) / (sd / math.sqrt(len(diffs)))
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df=len(diffs) - 1))


def _paired(diffs: list[float]) -> dict:
    """Per-seed differences with their mean, standard deviation and paired t-test p-value."""
    return {**_mean_std(diffs), "diffs": diffs, "p_value": paired_t_p_value(diffs)}


def read_results(results_dir: str | os.PathLike) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*-seed*.json"))]


FLATNESS_KEYS = ("hessian_top_eigenvalue", "hessian_trace", "adv_loss_rise", "adv_accuracy_drop", "logit_norm",
                 "top_probability")


def flatness_values(record: dict) -> dict[str, float]:
    """Scalar flatness measures of one run (those it has).

    ``adv_loss_rise`` / ``adv_accuracy_drop``: the adversarial loss rise / accuracy drop from the
    trained weights, averaged over all points of the 1-D landscape. The accuracy drop does not
    depend on the scale of the logits; the loss and the Hessian do, which is why the clean
    ``logit_norm`` and ``top_probability`` (mean softmax confidence) are reported beside them.
    """
    out = {}
    h = record.get("hessian") or {}
    for key in ("top_eigenvalue", "trace"):
        if h.get(key) is not None:
            out[f"hessian_{key}"] = h[key]
    land = record.get("landscape")
    if land and land.get("adversarial_loss") is not None:
        centre = len(land["coordinates"]) // 2
        loss, acc = land["adversarial_loss"], land["adversarial_accuracy"]
        out["adv_loss_rise"] = statistics.mean(v - loss[centre] for v in loss)
        out["adv_accuracy_drop"] = statistics.mean(acc[centre] - v for v in acc)
    clean = (record.get("outputs") or {}).get("clean")
    if clean:
        out["logit_norm"], out["top_probability"] = clean["logit_norm"], clean["top_probability"]
    return out


def epoch_seconds(record: dict) -> float:
    """Training seconds per epoch of one run: the median over its epochs, so that one epoch slowed
    by other work on the machine (or a pause) does not move it; the mean if there is no history."""
    per_epoch = [r["train_seconds"] for r in record.get("history", []) if r.get("train_seconds")]
    return statistics.median(per_epoch) if per_epoch else record["seconds_per_epoch"]


def _mean_curves(rows: list[dict]) -> dict | None:
    """The landscapes of ``rows`` averaged point by point (they share coordinates), or None."""
    lands = [r["landscape"] for r in rows if r.get("landscape")]
    if not lands or any(land["coordinates"] != lands[0]["coordinates"] for land in lands):
        return None
    out = {"coordinates": lands[0]["coordinates"], "adversarial": lands[0]["adversarial"], "n": lands[0]["n"],
           "seeds": [r["seed"] for r in rows if r.get("landscape")]}
    for key in ("clean_loss", "clean_accuracy", "adversarial_loss", "adversarial_accuracy"):
        if all(land.get(key) is not None for land in lands):
            out[key] = [statistics.mean(column) for column in zip(*(land[key] for land in lands))]
    return out


def _accuracy_stats(accuracies: list[dict]) -> dict:
    """Per accuracy key, mean +- std over the runs that measured it, and the images it was measured on."""
    out = {}
    for key in ACCURACY_KEYS:
        have = [a[key] for a in accuracies if key in a]
        if have:
            out[key] = {**_mean_std([a["accuracy"] for a in have]), "images": have[0]["n"]}
    return out


def _last_entry(rows: list[dict]) -> dict | None:
    """The last checkpoint of a configuration's runs that have it: epochs, accuracies, best − last."""
    rows = [r for r in rows if "last" in r]
    if not rows:
        return None
    gaps = {}
    for key in ACCURACY_KEYS:
        values = [r["best_minus_last"][key] for r in rows if key in r["best_minus_last"]]
        if values:
            gaps[key] = _mean_std(values)
    return {"seeds": [r["seed"] for r in rows], "epochs": [r["last"]["epoch"] for r in rows],
            "best_epochs": [r["best_epoch"] for r in rows],
            "accuracy": _accuracy_stats([r["last"]["accuracy"] for r in rows]), "best_minus_last": gaps}


def _paired_keys(by: dict, with_rat: str, base: str, seeds: list[int], value) -> dict:
    """Per accuracy key, the paired difference (with RAT − base) over the seeds where both sides have it;
    ``value(record, key)`` is the number compared, or None where the record lacks it."""
    out = {}
    for key in ACCURACY_KEYS:
        values = [(value(by[(with_rat, s)], key), value(by[(base, s)], key)) for s in seeds]
        diffs = [r - b for r, b in values if r is not None and b is not None]
        if diffs:
            out[key] = _paired(diffs)
    return out


def _accuracy_of(record: dict, key: str) -> float | None:
    return record["accuracy"][key]["accuracy"] if key in record["accuracy"] else None


def _last_accuracy_of(record: dict, key: str) -> float | None:
    return record["last"]["accuracy"][key]["accuracy"] if key in record["last"]["accuracy"] else None


def _gap_of(record: dict, key: str) -> float | None:
    return record["best_minus_last"].get(key)


def aggregate(grid: StudyGrid, records: list[dict]) -> dict:
    """Per configuration mean +- std over seeds; per pair the paired difference over common seeds.

    Each accuracy is aggregated over the seeds that measured it. Records with ``last`` (grids
    with ``checkpoints: [best, last]``) add, per configuration and per pair, the same for the
    last checkpoint's accuracies and for best − last, under ``last``."""
    by = {(r["config"], r["seed"]): r for r in records if r.get("grid", grid.name) == grid.name}
    configs = {}
    for name in grid.runs:
        rows = [r for (c, _), r in sorted(by.items()) if c == name]
        if not rows:
            continue
        entry = {"seeds": [r["seed"] for r in rows], "seconds_per_epoch": _mean_std([epoch_seconds(r) for r in rows]),
                 **_accuracy_stats([r["accuracy"] for r in rows])}
        flat = [flatness_values(r) for r in rows]
        for key in FLATNESS_KEYS:
            values = [f[key] for f in flat if key in f]
            if values:
                entry[key] = _mean_std(values)
        curves = _mean_curves(rows)
        if curves:
            entry["landscape"] = curves
        last = _last_entry(rows)
        if last:
            entry["last"] = last
        configs[name] = entry
    pairs = []
    for with_rat, base in grid.pairs:
        seeds = sorted(s for (c, s) in by if c == with_rat and (base, s) in by)
        if not seeds:
            continue
        pair = {"with_rat": with_rat, "base": base, "seeds": seeds,
                **_paired_keys(by, with_rat, base, seeds, _accuracy_of)}
        flat = {c: [flatness_values(by[(c, s)]) for s in seeds] for c in (with_rat, base)}
        for key in FLATNESS_KEYS:
            if all(key in f for c in flat for f in flat[c]):
                pair[key] = _paired([r[key] - b[key] for r, b in zip(flat[with_rat], flat[base])])
        times = [epoch_seconds(by[(with_rat, s)]) / epoch_seconds(by[(base, s)]) for s in seeds]
        pair["time_ratio"] = _mean_std(times)
        last_seeds = [s for s in seeds if "last" in by[(with_rat, s)] and "last" in by[(base, s)]]
        if last_seeds:
            pair["last"] = {"seeds": last_seeds,
                            "accuracy": _paired_keys(by, with_rat, base, last_seeds, _last_accuracy_of),
                            "best_minus_last": _paired_keys(by, with_rat, base, last_seeds, _gap_of)}
        pairs.append(pair)
    grid_dict = asdict(grid)
    if grid.checkpoints == ["best"]:
        del grid_dict["checkpoints"]  # the default: results.json as it was before the option existed
    return {"grid": grid_dict, "configs": configs, "pairs": pairs,
            "runs": [{k: v for k, v in r.items() if k != "config_full"} for r in records]}


def _pct(entry: dict | None) -> str:
    if not entry:
        return "–"
    std = f" ± {100 * entry['std']:.2f}" if entry.get("std") is not None else ""
    return f"{100 * entry['mean']:.2f}{std}"


FLATNESS_NAMES = {"hessian_top_eigenvalue": "top eig. (adv.)", "hessian_trace": "trace (adv.)",
                  "adv_loss_rise": "adv. loss rise", "adv_accuracy_drop": "adv. acc. drop (pp)",
                  "logit_norm": "logit norm", "top_probability": "confidence (%)"}
PERCENT_KEYS = ("adv_accuracy_drop", "top_probability")


def _flat(key: str, value: float) -> str:
    return f"{100 * value:.2f}" if key in PERCENT_KEYS else f"{value:.3g}"


def _diff_cell(d: dict | None, scale: float = 100.0, fmt: str = "+.2f") -> str:
    if d is None:
        return "–"
    std = f" ± {scale * d['std']:.2f}" if d["std"] is not None else ""
    pv = f" (p {d['p_value']:.2f})" if d.get("p_value") is not None else ""  # none for a configuration's mean
    return f"{scale * d['mean']:{fmt}}{std}{pv}"


def _fewer(entry: dict | None, seeds: int) -> str:
    """A note on a cell measured on fewer seeds than its row has (an attack some seeds lack)."""
    return f" ({entry['n']} of {seeds} seeds)" if entry and entry["n"] != seeds else ""


def format_markdown(result: dict) -> str:
    """results.md: the per-configuration table, the paired RAT − base tables (accuracy, flatness);
    with the last checkpoint evaluated, its table and the best − last gap beside them."""
    configs, pairs = result["configs"], result["pairs"]
    keys = [k for k in ACCURACY_KEYS if any(k in c for c in configs.values())]
    flat_keys = [k for k in FLATNESS_KEYS if any(k in c for c in configs.values())]
    images = {k: next(c[k]["images"] for c in configs.values() if k in c) for k in keys}
    names = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw30": "CW-30", "aa": "AutoAttack",
             "robust": "worst case"}
    lasts = {name: c["last"] for name, c in configs.items() if "last" in c}
    which = " of the best checkpoint (by validation PGD-20)" if lasts else ""
    lines = [f"# Study `{result['grid']['name']}`: accuracy (%){which} as mean ± std over seeds", "",
             "| configuration | seeds | " + " | ".join(f"{names[k]} ({images[k]})" for k in keys)
             + " | s / epoch (median) | " + "".join(f"{FLATNESS_NAMES[k]} | " for k in flat_keys),
             "|---|---|" + "---|" * len(keys) + "---|" + "---|" * len(flat_keys)]
    for name, c in configs.items():
        lines.append(f"| {name} | {len(c['seeds'])} | "
                     + " | ".join(_pct(c.get(k)) + _fewer(c.get(k), len(c["seeds"])) for k in keys)
                     + f" | {c['seconds_per_epoch']['mean']:.0f} | "
                     + "".join((_flat(k, c[k]["mean"]) if k in c else "–") + " | " for k in flat_keys))
    if lasts:
        last_keys = [k for k in keys if any(k in last["accuracy"] for last in lasts.values())]
        gap_keys = [k for k in keys if any(k in last["best_minus_last"] for last in lasts.values())]
        lines += ["", "## Last epoch: the last checkpoint's accuracy (%), mean ± std over seeds", "",
                  "| configuration | seeds | epoch | " + " | ".join(names[k] for k in last_keys) + " |",
                  "|---|---|---|" + "---|" * len(last_keys)]
        for name, last in lasts.items():
            seeds = len(last["seeds"])
            lines.append(f"| {name} | {seeds} | {', '.join(map(str, sorted(set(last['epochs']))))} | " + " | ".join(
                _pct(last["accuracy"].get(k)) + _fewer(last["accuracy"].get(k), seeds) for k in last_keys) + " |")
        lines += ["", "## Best − last checkpoint (percentage points; positive robust columns: robust overfitting, "
                  "the best epoch by validation PGD-20 is more robust than the last)", "",
                  "| configuration | seeds | best epoch (per seed) | " + " | ".join(names[k] for k in gap_keys) + " |",
                  "|---|---|---|" + "---|" * len(gap_keys)]
        for name, last in lasts.items():
            seeds = len(last["seeds"])
            lines.append(f"| {name} | {seeds} | {', '.join(map(str, last['best_epochs']))} | " + " | ".join(
                _diff_cell(last["best_minus_last"].get(k)) + _fewer(last["best_minus_last"].get(k), seeds)
                for k in gap_keys) + " |")
    if pairs:
        lines += ["", "## RAT − base, paired over seeds (percentage points; p: two-sided paired t-test)", "",
                  "| pair | seeds | " + " | ".join(names[k] for k in keys) + " | time ratio (s / epoch) |",
                  "|---|---|" + "---|" * len(keys) + "---|"]
        for p in pairs:
            lines.append(f"| {p['with_rat']} − {p['base']} | {len(p['seeds'])} | "
                         + " | ".join(_diff_cell(p.get(k)) + _fewer(p.get(k), len(p["seeds"])) for k in keys)
                         + f" | {p['time_ratio']['mean']:.3f} |")
        last_pairs = [p for p in pairs if "last" in p]
        for part, title in (("accuracy", "at the last epoch"),
                            ("best_minus_last", "of best − last (negative: RAT overfits less)")):
            part_keys = [k for k in keys if any(k in p["last"][part] for p in last_pairs)]
            if not part_keys:
                continue
            lines += ["", f"## RAT − base {title}, paired over seeds (percentage points)", "",
                      "| pair | seeds | " + " | ".join(names[k] for k in part_keys) + " |",
                      "|---|---|" + "---|" * len(part_keys)]
            for p in last_pairs:
                seeds = len(p["last"]["seeds"])
                lines.append(f"| {p['with_rat']} − {p['base']} | {seeds} | " + " | ".join(
                    _diff_cell(p["last"][part].get(k)) + _fewer(p["last"][part].get(k), seeds)
                    for k in part_keys) + " |")
        pair_flat = [k for k in flat_keys if any(k in p for p in pairs)]
        if pair_flat:
            lines += ["", "## Flatness and output scale, RAT − base, paired over seeds (negative: RAT flatter, "
                      "or softer outputs)", "",
                      "| pair | seeds | " + " | ".join(FLATNESS_NAMES[k] for k in pair_flat) + " |",
                      "|---|---|" + "---|" * len(pair_flat)]
            for p in pairs:
                lines.append(f"| {p['with_rat']} − {p['base']} | {len(p['seeds'])} | " + " | ".join(
                    _diff_cell(p.get(k), 100.0 if k in PERCENT_KEYS else 1.0,
                               "+.2f" if k in PERCENT_KEYS else "+.3g") for k in pair_flat) + " |")
    machines = sorted({f"{m.get('cpu')} ({m.get('threads')} threads, torch {m.get('torch')})"
                       + (f", {m['gpu']}" if m.get("gpu") else "") for m in
                       (r.get("machine") for r in result["runs"]) if m})
    unknown = sum(1 for r in result["runs"] if not r.get("machine"))
    if machines or unknown:
        lines += ["", "Machines: " + "; ".join(machines) + (f"; not recorded for {unknown} run(s)" if unknown else "")]
    name = result["grid"]["name"]
    lines += ["", f"Made by `rat study --grid {name} --commit` (each run's result file, then this aggregate); "
              f"`rat study --grid {name} --aggregate-only` remakes this page, results.json and the plots "
              "from the committed result files."]
    return "\n".join(lines) + "\n"


def _val_styles(result: dict) -> dict[str, tuple[str, str]]:
    """(colour, line style) per configuration: one colour per pair, RAT solid and base dashed."""
    styles: dict[str, tuple[str, str]] = {}
    colour = 0
    for with_rat, base in result["grid"]["pairs"]:
        if with_rat in styles and base in styles:
            continue
        for name, style in ((with_rat, "-"), (base, "--")):
            styles.setdefault(name, (f"C{colour}", style))
        colour += 1
    for name in result["grid"]["runs"]:
        if name not in styles:
            styles[name] = (f"C{colour}", "-")
            colour += 1
    return styles


def _plot_val_curves(result: dict, records: list[dict], ax) -> None:
    """Validation PGD-20 per epoch: per configuration the mean over its seeds (thick; a dot at its
    peak), each seed thin; base dashed beside RAT solid in the pair's colour; the learning-rate
    decays of a multistep schedule as dotted lines (robust overfitting sets in after the first)."""
    styles = _val_styles(result)
    for name in result["grid"]["runs"]:
        curves = [{row["epoch"]: row["val_pgd20"] for row in r.get("history", []) if "val_pgd20" in row}
                  for r in records if r["config"] == name]
        curves = [c for c in curves if c]
        if not curves:
            continue
        colour, style = styles[name]
        for c in curves:
            ax.plot(list(c), [100 * v for v in c.values()], style, color=colour, alpha=0.3, linewidth=0.8)
        epochs = sorted(set.intersection(*(set(c) for c in curves)))  # the epochs every seed reached
        mean = [100 * statistics.mean(c[e] for c in curves) for e in epochs]
        if epochs:
            ax.plot(epochs, mean, style, color=colour, linewidth=2.0,
                    label=f"{name} (mean of {len(curves)} seed{'s' if len(curves) > 1 else ''})")
            peak = max(range(len(mean)), key=mean.__getitem__)
            ax.plot([epochs[peak]], [mean[peak]], "o", color=colour, markersize=4)
    optim = next((r["config_full"]["optim"] for r in records if "optim" in r.get("config_full", {})), None)
    if optim and optim.get("schedule") == "multistep":
        last_epoch = max((row["epoch"] for r in records for row in r.get("history", [])), default=0)
        for m in optim.get("milestones", []):
            if m < last_epoch:
                ax.axvline(m, color="0.6", linestyle=":", linewidth=0.8)
    ax.set(xlabel="epoch", ylabel="validation PGD-20 (%)")
    ax.set_title("thick: mean over seeds (dot: its peak); thin: each seed", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_study(result: dict, records: list[dict], directory: Path) -> list[Path]:
    """accuracy.png (bars with error bars), val_curves.png (validation PGD-20 over epochs, mean over seeds),
    differences.png (RAT − base per seed and on average) and landscape.png (per pair, the base
    and RAT landscapes averaged over seeds, overlaid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    configs = result["configs"]
    keys = [k for k in ("clean", "pgd20", "cw30", "aa", "robust") if any(k in c for c in configs.values())]
    if configs and keys:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        width = 0.8 / len(configs)
        for i, (name, c) in enumerate(configs.items()):
            xs = [j + i * width for j in range(len(keys))]
            ax.bar(xs, [100 * c[k]["mean"] if k in c else 0 for k in keys], width,
                   yerr=[100 * (c[k]["std"] or 0) if k in c else 0 for k in keys], label=name, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys)
        ax.set_ylabel("accuracy (%)")
        lows = [100 * c[k]["mean"] for c in configs.values() for k in keys if k in c]
        ax.set_ylim(max(0, min(lows) - 8), min(100, max(lows) + 4))
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        files.append(directory / "accuracy.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    if any("val_pgd20" in row for r in records for row in r.get("history", [])):
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        _plot_val_curves(result, records, ax)
        fig.tight_layout()
        files.append(directory / "val_curves.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    pairs = [p for p in result["pairs"] if any(k in p for k in keys)]
    if pairs:
        # the answer to "does RAT help": per pair and measure, each seed's difference and their mean
        fig, ax = plt.subplots(figsize=(8, 3.2))
        width = 0.8 / len(pairs)
        for i, p in enumerate(pairs):
            for j, k in enumerate(keys):
                if k not in p:
                    continue
                x = j + (i - (len(pairs) - 1) / 2) * width
                ax.scatter([x] * len(p[k]["diffs"]), [100 * d for d in p[k]["diffs"]], color=f"C{i}", s=14,
                           alpha=0.6, label=f"{p['with_rat']} − {p['base']} (one seed)" if j == 0 else None)
                ax.plot([x - width / 3, x + width / 3], [100 * p[k]["mean"]] * 2, color=f"C{i}", linewidth=2.5)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xticks(range(len(keys)), keys)
        ax.set_ylabel("RAT − base (pp); bar: mean")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(directory / "differences.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    drawn = [(p["with_rat"], p["base"]) for p in result["pairs"]
             if "landscape" in configs.get(p["with_rat"], {}) and "landscape" in configs.get(p["base"], {})]
    if drawn:
        fig, axes = plt.subplots(2, len(drawn), figsize=(4.6 * len(drawn), 6.4), squeeze=False)
        for col, (with_rat, base) in enumerate(drawn):
            for name, colour in ((base, "C0"), (with_rat, "C3")):
                land = configs[name]["landscape"]
                for row, metric in enumerate(("loss", "accuracy")):
                    scale = 100 if metric == "accuracy" else 1
                    for kind, style in (("clean", "-"), ("adversarial", "--")):
                        values = land.get(f"{kind}_{metric}")
                        if values is not None:
                            axes[row][col].plot(land["coordinates"], [scale * v for v in values], style,
                                                color=colour, marker=".", markersize=3, label=f"{name}, {kind}")
            land = configs[base]["landscape"]
            seeds = len(land["seeds"])
            axes[0][col].set_title(f"{with_rat} vs {base}, mean of {seeds} seed{'s' if seeds > 1 else ''}", fontsize=9)
            axes[0][col].set_ylabel("mean cross-entropy")
            axes[1][col].set_ylabel("accuracy (%)")
            axes[1][col].set_xlabel("step along a filter-normalised direction\n"
                                    f"(adversarial: {land['adversarial']} PGD-10)", fontsize=8)
            for row in (0, 1):
                axes[row][col].axvline(0.0, color="0.7", linewidth=0.8)
                axes[row][col].grid(alpha=0.3)
            axes[0][col].legend(fontsize=6)
        fig.tight_layout()
        files.append(directory / "landscape.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    return files


def write_aggregate(grid: StudyGrid, results_dir: str | os.PathLike) -> dict:
    """results.json, results.md and the plots, next to the per-run result files."""
    results_dir = Path(results_dir)
    records = [r for r in read_results(results_dir) if r.get("grid", grid.name) == grid.name]
    result = aggregate(grid, records)
    _write_json_atomic(results_dir / "results.json", result)
    (results_dir / "results.md").write_text(format_markdown(result))
    result["files"] = [str(p) for p in plot_study(result, records, results_dir)]
    return result
