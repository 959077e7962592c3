"""``rat study --commit``: each result file committed to git with the aggregate remade from all
result files, so that a committed aggregate always matches the committed results. Only the
command line imports it: the rest of the library never runs git."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Callable

from .grid import StudyGrid
from .lock import hold_run
from .report import write_aggregate

COMMIT_LOCK = ".commit"  # OUT/.commit.lock: the processes of one study take turns to commit


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


def commit_results(log: Callable[[str], None], grid: StudyGrid, results_dir: Path,
                   out_dir: Path) -> Callable[[list[Path], str], None]:
    """The runner's ``on_result`` under ``--commit``: commits the result file together with the
    aggregate remade from all result files. Parallel runs (``--jobs``, or several ``rat study``
    processes) take turns through ``OUT/.commit.lock`` (:func:`.lock.hold_run`, waiting as long
    as it takes)."""

    def commit(paths: list[Path], message: str) -> None:
        with hold_run(out_dir, COMMIT_LOCK, log=log, patience_s=math.inf):
            files = [results_dir / "results.json", results_dir / "results.md",
                     *map(Path, write_aggregate(grid, results_dir)["files"])]
            if not git_commit([*paths, *files], message):
                log(f"{paths[0].stem}: could not commit {', '.join(map(str, paths))}")

    return commit
