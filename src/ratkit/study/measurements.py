"""What a study measures on a trained run beyond the protocol on its best checkpoint, as a registry.

Each measurement knows the checkpoint of the run directory it is taken on, whether a grid asks
for it, and how to compute the record entries it adds. A record that lacks one the grid asks for
(added to the grid later) gets just that one added, from the run directory, without retraining.

* ``last``: the grid's protocol on the last epoch's weights (``record["last"]``, and
  ``record["best_minus_last"]``: positive where the best checkpoint is the more accurate one);
* ``hessian``, ``landscape``, ``outputs``: flatness and output scale of the best checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Config
from .grid import StudyError, StudyGrid, run_config, run_key
from .records import ACCURACY_KEYS, report_accuracy


@dataclass
class MeasuredRun:
    """What a measurement is given: the grid, the run's record so far, its directory, config and device."""

    grid: StudyGrid
    record: dict
    run_dir: Path
    cfg: Config
    device: str
    quiet: bool

    @property
    def seed(self) -> int:
        return self.record["seed"]

    @property
    def model_code(self):
        """The model code the grid names (``model.name=module:callable``) may be imported: the grid
        file is the user's own, as for the training and the evaluation of the run."""
        from ..models import policy_or_default

        return policy_or_default(None, self.cfg.model.name)


def _last(run: MeasuredRun) -> dict:
    """The grid's protocol, as for best, on the last epoch's weights."""
    from ..train import evaluate_run

    report = evaluate_run(run.run_dir, run.grid.eval.apply(run.cfg), quiet=run.quiet, checkpoint="last")
    last, best = report_accuracy(report), run.record["accuracy"]
    # positive: the best checkpoint is the more accurate one (robust overfitting, for robust keys)
    return {"last": {"epoch": report["last_epoch"], "accuracy": last},
            "best_minus_last": {k: best[k]["accuracy"] - last[k]["accuracy"]
                                for k in ACCURACY_KEYS if k in best and k in last}}


def _hessian(run: MeasuredRun) -> dict:
    from ..analysis import run_hessian

    spec = run.grid.hessian
    job = run_hessian(run.run_dir, out=run.run_dir, n=spec.n, top_k=spec.top_k, probes=spec.probes,
                      loss="adversarial", max_iter=spec.max_iter, seed=run.seed, device=run.device, quiet=run.quiet,
                      model_code=run.model_code)
    r = job.results[0]
    return {"hessian": {"loss": "adversarial", "n": r.settings.n, "top_eigenvalue": r.eigenvalues[0],
                        "converged": r.converged[0], "trace": r.trace, "trace_stderr": r.trace_stderr,
                        "probes": r.trace_probes}}


def _landscape(run: MeasuredRun) -> dict:
    from ..analysis import run_landscape

    spec = run.grid.landscape
    # the direction is drawn with the run's seed: a pair (same seed) is cut along the same raw
    # draw, and the mean over seeds averages over directions
    job = run_landscape([run.run_dir], out=run.run_dir / "landscape", dim=1, n=spec.n, points=spec.points,
                        span=spec.span, adversarial=spec.adversarial, seed=run.seed, device=run.device,
                        quiet=run.quiet, model_code=run.model_code)
    r = job.results[0]
    return {"landscape": {"adversarial": r.settings.adversarial, "n": r.settings.n, "seed": r.settings.seed,
                          "coordinates": r.coordinates, "clean_loss": r.clean_loss,
                          "clean_accuracy": r.clean_accuracy, "adversarial_loss": r.adversarial_loss,
                          "adversarial_accuracy": r.adversarial_accuracy, "seconds": r.seconds}}


def _outputs(run: MeasuredRun) -> dict:
    from ..analysis import load_checkpoint_examples, output_statistics

    ex = load_checkpoint_examples(run.run_dir, run.grid.outputs.n, device=run.device, model_code=run.model_code)
    stats = output_statistics(ex.model, ex.x, ex.y, eps=ex.eps, seed=run.seed)
    return {"outputs": {s.inputs: s.to_json() for s in stats}}


@dataclass(frozen=True)
class Measurement:
    """One measurement: the checkpoint it is taken on, whether a grid asks for it, and how to take it."""

    checkpoint: str  # "best" or "last" (of the run directory)
    asked: Callable[[StudyGrid], bool]
    measure: Callable[[MeasuredRun], dict]  # the entries it adds to the record


# in the order they are taken (and stored in a record)
MEASUREMENTS: dict[str, Measurement] = {
    "last": Measurement("last", lambda grid: "last" in grid.checkpoints, _last),
    "hessian": Measurement("best", lambda grid: grid.hessian is not None, _hessian),
    "landscape": Measurement("best", lambda grid: grid.landscape is not None, _landscape),
    "outputs": Measurement("best", lambda grid: grid.outputs is not None, _outputs),
}


def measurement_checkpoint(kind: str) -> str:
    """The checkpoint of the run directory a measurement is taken on: ``best`` or ``last``."""
    return MEASUREMENTS[kind].checkpoint


def missing_measurements(grid: StudyGrid, record: dict) -> list[str]:
    """The measurements the grid asks for that ``record`` does not hold yet."""
    return [kind for kind, m in MEASUREMENTS.items() if m.asked(grid) and kind not in record]


def unavailable_measurements(kinds: list[str], run_dir: Path) -> list[str]:
    """Those of ``kinds`` whose checkpoint ``run_dir`` does not hold (so they cannot be added)."""
    return [k for k in kinds if not (run_dir / f"{measurement_checkpoint(k)}.safetensors").exists()]


def add_measurement(grid: StudyGrid, record: dict, kind: str, run_dir: Path, *, quiet: bool = True,
                    log: Callable[[str], None] = print) -> None:
    """Measure ``kind`` (a key of MEASUREMENTS) on its checkpoint into ``record``.

    >>> for kind in missing_measurements(grid, record):
    ...     add_measurement(grid, record, kind, run_dir)
    """
    from ..device import resolve_device

    if kind not in MEASUREMENTS:
        raise StudyError(f"unknown measurement {kind!r}; expected one of {tuple(MEASUREMENTS)}")
    cfg = run_config(grid, record["config"], record["seed"])
    log(f"{run_key(record['config'], record['seed'])}: {kind}")
    run = MeasuredRun(grid, record, run_dir, cfg, str(resolve_device(cfg.train.device)), quiet)
    record.update(MEASUREMENTS[kind].measure(run))
