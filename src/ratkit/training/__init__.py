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
