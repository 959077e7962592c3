"""``rat study``'s work: the grid and seeds the flags name, the executor that runs it (local
processes, ``--jobs`` of them, or submitit's jobs), ``--commit``, and the aggregate printed.
:mod:`ratkit.cli` parses the flags and hands them here."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..exits import UserError
from .cluster import EXECUTOR_FLAGS, executor_spec, run_study_jobs
from .commits import commit_results
from .grid import StudyError, emulated_bfloat16_notice, grid_file, load_grid
from .lock import EXIT_IN_USE, RunInUse
from .report import write_aggregate
from .runner import run_study, run_study_parallel


def study_command(args) -> int:
    """``rat study``: 0, or 73 when ``--no-aggregate`` left runs to the process that has them."""
    grid_path = grid_file(args.grid)
    try:
        grid = load_grid(grid_path)
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
    except (StudyError, ValueError) as exc:
        raise UserError(f"--grid/--seeds: {exc}") from None
    results = Path(args.results or Path("docs") / "results" / grid.name)
    out = Path(args.out or Path("runs") / f"study-{grid.name}")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True))
    common = dict(seeds=seeds, log=log, aggregate_after=not args.no_aggregate, evaluate_only=args.evaluate_only)
    child_args = ["--commit"] if args.commit else []
    try:
        only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
        if args.jobs is not None and args.jobs < 1:
            raise StudyError(f"--jobs: must be >= 1, got {args.jobs}")
        spec = executor_spec(args.executor, **{f: getattr(args, f) for f in EXECUTOR_FLAGS})
        notice = None if args.aggregate_only else emulated_bfloat16_notice(grid, only)
        if notice is not None:
            print(f"warning: {notice}", file=sys.stderr, flush=True)
        if args.aggregate_only:
            result = write_aggregate(grid, results)
        elif spec is not None:
            result = run_study_jobs(grid_path, grid, out, results, spec, jobs=args.jobs, only=only,
                                    child_args=child_args, **common)
        elif (args.jobs or 1) > 1:
            result = run_study_parallel(grid_path, grid, out, results, jobs=args.jobs, only=only,
                                        child_args=child_args, **common)
        else:
            on_result = commit_results(log, grid, results, out) if args.commit else None
            result = run_study(grid, out, results, only=only, quiet=args.quiet, on_result=on_result, **common)
    except StudyError as exc:
        raise UserError(str(exc)) from None
    except RunInUse:  # --no-aggregate: runs left to the process that has them (logged); the executor waits
        return EXIT_IN_USE
    if args.no_aggregate:
        return 0
    print((results / "results.md").read_text(), end="")
    print(f"wrote {results / 'results.json'}, {results / 'results.md'}" + "".join(f", {f}" for f in result["files"]))
    return 0
