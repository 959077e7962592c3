"""The trainer's parts around its loop (the loop itself, :class:`ratkit.train.Trainer`, asks
them at its step and epoch boundaries):

- ``state``: :class:`Progress` (where a run stands) and :class:`EpochSums` (the running sums of
  the epoch in progress), both saved with ``last``;
- ``checkpoints``: :class:`LastCheckpoint` (resume) and :class:`BestCheckpoint` (selection on
  validation robust accuracy);
- ``stopping``: :class:`StopConditions` (time budget, non-finite loss, Ctrl-C and preemption
  signals) and the exceptions a stopped run raises;
- ``run_log``: :class:`RunLog` (console, metrics.jsonl, TensorBoard, curves.png);
- ``collapse``: :func:`robust_collapse`, the warning that robust accuracy is collapsing.
"""

from .checkpoints import BestCheckpoint, LastCheckpoint
from .collapse import robust_collapse
from .loop import (DATA_FINGERPRINT_FILE, HISTORY_FILE, PREEMPTED_FILE, RESUME_CHANGEABLE, Trainer, build_method,
                   build_model_from_config, build_optimizer, check_model_code, check_resume_changes, check_resume_epochs,
                   config_changes, cudnn_autotuned, default_run_dir, epoch_order_generator, eps_line, evaluate_run,
                   initial_weights, learning_rate, load_run_config, model_spec_from_config, prepare_run,
                   record_config_changes, resume_config, run_meta, same_run, step_sums, train, validation_eps,
                   with_data_statistics, with_validation_eps)
from .run_log import RunLog, plot_curves
from .state import EpochSums, Progress
from .stopping import (StepBoundaryInterrupt, StopConditions, TrainingInterrupted, TrainingPreempted,
                       TrainingStopped)
