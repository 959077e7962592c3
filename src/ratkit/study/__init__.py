"""`rat study`: a grid of training runs x seeds, evaluated with the full protocol, then aggregated.

* :mod:`.grid`: the grid file (``configs/studies/*.yaml``) as typed data;
* :mod:`.runner`: training, evaluating and recording each (configuration, seed), resumably, one
  at a time or each in its own process; every result file is handed to an ``on_result`` callback
  (the command line's ``--commit`` commits it through :mod:`.commits`, which only the command
  line imports: the library never runs git);
* :mod:`.cluster`: each run as a submitit job instead (``--executor slurm``, or ``local``), which
  requeues itself when preempted and resumes (submitit is imported only to submit);
* :mod:`.measurements`: what is measured beyond the protocol (the last checkpoint, Hessian,
  landscape, output scale), as a registry; a measurement added to a grid later is added to the
  existing result files from the run directories, without retraining;
* :mod:`.records`: the small per-run result files;
* :mod:`.aggregate`: mean ± std over seeds and paired RAT − base differences with t-tests;
* :mod:`.report` and :mod:`.plots`: results.md, results.json and the figures.

>>> from ratkit.study import load_grid, run_study
>>> grid = load_grid("configs/studies/core.yaml")
>>> result = run_study(grid, "runs/study-core", "docs/results/core")
"""

from ..files import write_json_atomic
from .aggregate import FLATNESS_KEYS, aggregate, epoch_seconds, flatness_values, paired_t_p_value
from .cluster import ExecutorSpec, run_study_jobs
from .grid import (
    DEFAULT_EVAL,
    EvalSpec,
    HessianSpec,
    LandscapeSpec,
    OutputsSpec,
    StudyError,
    StudyGrid,
    load_grid,
    run_config,
    run_key,
)
from .measurements import (
    MEASUREMENTS,
    MeasuredRun,
    Measurement,
    add_measurement,
    measurement_checkpoint,
    missing_measurements,
    unavailable_measurements,
)
from .plots import FIGURES, plot_accuracy, plot_differences, plot_landscapes, plot_study, plot_val_curves
from .records import ACCURACY_KEYS, read_results
from .report import format_markdown, write_aggregate
from .runner import OnResult, record_run, run_one, run_study, run_study_parallel, selected_runs

__all__ = [
    "ACCURACY_KEYS",
    "DEFAULT_EVAL",
    "FIGURES",
    "FLATNESS_KEYS",
    "MEASUREMENTS",
    "EvalSpec",
    "ExecutorSpec",
    "HessianSpec",
    "LandscapeSpec",
    "MeasuredRun",
    "Measurement",
    "OnResult",
    "OutputsSpec",
    "StudyError",
    "StudyGrid",
    "add_measurement",
    "aggregate",
    "epoch_seconds",
    "flatness_values",
    "format_markdown",
    "load_grid",
    "measurement_checkpoint",
    "missing_measurements",
    "paired_t_p_value",
    "plot_accuracy",
    "plot_differences",
    "plot_landscapes",
    "plot_study",
    "plot_val_curves",
    "read_results",
    "record_run",
    "run_config",
    "run_key",
    "run_one",
    "run_study",
    "run_study_jobs",
    "run_study_parallel",
    "selected_runs",
    "unavailable_measurements",
    "write_aggregate",
    "write_json_atomic",
]
