"""Result files: one small JSON record per run (``RESULTS/<config>-seed<s>.json``), every number
and no per-example strings, so that they can be committed and aggregated on any machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..attacks.protocols import ATTACKS
from ..files import write_json_atomic  # noqa: F401  (moved to ratkit.files; this name keeps old imports working)

# the accuracies a record holds, in the order the tables show them ("robust": the worst case per image):
# our protocol's attacks (ratkit.attacks.protocols.PROTOCOL_ATTACKS), then the worst case
ACCURACY_KEYS = (*ATTACKS, "robust")


def report_accuracy(report: dict) -> dict:
    """The accuracies of an ``evaluate_run`` report as a record stores them (no per-example data)."""
    accuracy = {k: {"accuracy": a["accuracy"], "n": a["n"], "seconds": a["seconds"]}
                for k, a in report["attacks"].items()}
    if report["robust_n"]:
        accuracy["robust"] = {"accuracy": report["robust_accuracy"], "n": report["robust_n"]}
    return accuracy


def read_results(results_dir: str | os.PathLike) -> list[dict]:
    """Every run's record in ``results_dir``, by file name.

    >>> records = read_results("docs/results/core")
    """
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*-seed*.json"))]
