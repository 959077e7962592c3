"""The trainer of ``rat train`` and :func:`ratkit.fit`.

- ``loop``: :func:`train` (start or resume a run), :class:`Trainer` (the epoch loop and its step),
  :func:`evaluate_run`;
- ``start``: a run's start: building its method, model and optimizer from its config, and the
  checks, plan and records before the trainer is built;
- ``rundir``: the run directory and resume: :func:`prepare_run`, :func:`resume_config` and what a
  resume may change (:data:`RESUME_CHANGEABLE`, recorded in ``config-history.yaml``), the data
  fingerprint;
- the parts the loop asks at its step and epoch boundaries:
  ``state``: :class:`Progress` (where a run stands) and :class:`EpochSums` (the running sums of
  the epoch in progress), both saved with ``last``;
  ``checkpoints``: :class:`LastCheckpoint` (resume) and :class:`BestCheckpoint` (selection on
  validation robust accuracy);
  ``stopping``: :class:`StopConditions` (time budget, non-finite loss, Ctrl-C and preemption
  signals) and the exceptions a stopped run raises;
  ``run_log``: :class:`RunLog` (console, metrics.jsonl, TensorBoard, curves.png);
  ``collapse``: :func:`robust_collapse` and :func:`constant_output`, the warnings that training is collapsing;
- ``fit``: :func:`ratkit.fit`, any ``nn.Module`` on any dataset through the same trainer.
"""

from .checkpoints import BestCheckpoint, LastCheckpoint
from .collapse import constant_output, robust_collapse
from .loop import (Trainer, cudnn_autotuned, epoch_order_generator, eps_line, evaluate_run, learning_rate, run_meta,
                   step_sums, train)
from .run_log import RunLog, plot_curves
from .rundir import (DATA_FINGERPRINT_FILE, HISTORY_FILE, PREEMPTED_FILE, RESUME_CHANGEABLE, check_resume_changes,
                     check_resume_epochs, config_changes, default_run_dir, load_run_config, new_run_dir, prepare_run,
                     record_config_changes, record_or_check_data, resume_config, resumed_run_dir, same_run,
                     validation_eps, with_data_statistics, with_validation_eps)
from .start import (build_method, build_model_from_config, build_optimizer, check_model_code, initial_weights,
                    model_spec_from_config)
from .state import EpochSums, Progress
from .stopping import (StepBoundaryInterrupt, StopConditions, TrainingInterrupted, TrainingPreempted,
                       TrainingStopped)
