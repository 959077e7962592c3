"""Issue 35 §6: a study's runs as submitit jobs (`rat study --executor local|slurm`). A job whose
run is preempted requeues itself and resumes; the study gathers and aggregates as with local
processes. submitit's local executor runs real subprocesses, the same code path as SLURM up to
the scheduler; the SLURM job script is checked with a stand-in sbatch. One process at a time
works on a run (its lock), and a study started again waits on its live jobs instead of
submitting them twice (stand-in sacct)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import SRC
from tiny import tiny_run

submitit = pytest.importorskip("submitit")

from ratkit.study import StudyError, load_grid  # noqa: E402
from ratkit.requeue import RequeueingJob  # noqa: E402
from ratkit.study.cluster import (ExecutorSpec, make_executor, parse_sbatch, parse_time,  # noqa: E402
                                  read_jobs, run_study_jobs)
from ratkit.study.lock import EXIT_IN_USE, RunInUse, hold_run, holder, wait_for_runs  # noqa: E402

TINY = tiny_run("train.epochs=3", "optim.lr=0.002")


def _grid_file(tmp_path: Path) -> Path:
    """Two runs of one configuration: the preempted one must end as the other, uninterrupted."""
    spec = {"name": "tiny", "preset": "fmnist-cpu", "overrides": TINY, "seeds": [0],
            "runs": {"a": ["method.rat=false"], "b": ["method.rat=false"]}, "pairs": [],
            "eval": {"attacks": "clean,pgd20", "n": 32, "aa_n": None}, "hessian": None}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _wait(what: str, found, proc: subprocess.Popen, output: Path, timeout: float = 120):
    deadline = time.time() + timeout
    while not (value := found()):
        assert proc.poll() is None, f"rat study ended before {what}:\n{output.read_text()}"
        assert time.time() < deadline, f"no {what} after {timeout} s:\n{output.read_text()}"
        time.sleep(0.05)
    return value


def test_a_preempted_job_requeues_itself_and_its_run_resumes_to_the_uninterrupted_result(tmp_path):
    grid, runs, results, output = _grid_file(tmp_path), tmp_path / "runs", tmp_path / "results", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    with open(output, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ratkit", "study", "--grid", str(grid), "--out", str(runs),
                                 "--results", str(results), "--executor", "local"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        job = _wait("job for a-seed0", lambda: re.search(r"a-seed0: submitted as job (\d+)", output.read_text()),
                    proc, output).group(1)
        metrics = runs / "a-seed0" / "metrics.jsonl"
        _wait("first epoch of a-seed0", lambda: metrics.exists() and metrics.read_text().strip(), proc, output)
        # the scheduler's notice to the job; submitit's local controller passes SIGTERM on to the job,
        # and the job to its `rat study` run
        os.kill(int(job), signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    log_a, log_b = (runs / "a-seed0.log").read_text(), (runs / "b-seed0.log").read_text()
    assert "rat study: preempted" in log_a and "== a-seed0: exit 75, preempted: requeued to resume" in log_a
    assert log_a.count("a-seed0: job ") == 2 and "a-seed0: resuming" in log_a  # a second attempt, resumed
    assert log_b.count("b-seed0: job ") == 1 and "exit 75" not in log_b
    submitit_log = (runs / "submitit" / f"{job}_0_log.out").read_text()
    assert f"Requeued job {job}" in submitit_log and submitit_log.count("Starting with") == 2  # submitit's requeue
    assert not (runs / "a-seed0" / "preempted").exists()  # the resume cleared it
    a, b = (json.loads((results / f"{k}-seed0.json").read_text()) for k in ("a", "b"))
    assert a["epochs"] == b["epochs"] == 3
    assert [h["val_pgd20"] for h in a["history"]] == [h["val_pgd20"] for h in b["history"]]
    assert {k: v["accuracy"] for k, v in a["accuracy"].items()} == {k: v["accuracy"] for k, v in b["accuracy"].items()}
    from safetensors.torch import load_file

    last_a, last_b = load_file(runs / "a-seed0" / "last.safetensors"), load_file(runs / "b-seed0" / "last.safetensors")
    assert last_a.keys() == last_b.keys() and all(last_a[k].equal(last_b[k]) for k in last_a)  # bit-identical (CPU)
    assert set(json.loads((results / "results.json").read_text())["configs"]) == {"a", "b"}
    assert "| a | 1 |" in (results / "results.md").read_text()


def _stand_in_slurm(tmp_path: Path, monkeypatch, sacct: str = "JobID|State|NodeList\n") -> Path:
    """``srun`` (submitit checks that it exists), an ``sbatch`` that keeps the script it is given
    (and counts its calls in ``sbatch-calls``) and an ``sacct`` that answers ``sacct``."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (tmp_path / "sacct.txt").write_text(sacct)
    for name, body in (("srun", "exit 1\n"),
                       ("sbatch", f'cp "$1" {script}\necho x >> {tmp_path / "sbatch-calls"}\n'
                                  f'echo "Submitted batch job 4242"\n'),
                       ("sacct", f'cat {tmp_path / "sacct.txt"}\n')):
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return script


def test_a_slurm_job_asks_for_the_partition_time_gpus_cpus_and_further_sbatch_parameters(tmp_path, monkeypatch):
    script = _stand_in_slurm(tmp_path, monkeypatch)
    spec = ExecutorSpec("slurm", partition="gpu", time_min=parse_time("3:00:00"), gpus_per_job=1, cpus_per_job=8,
                        sbatch=parse_sbatch(["account=myproj", "qos=high"]))
    job = make_executor(spec, tmp_path / "submitit", "rat-regime").submit(
        RequeueingJob("trades-seed0", ["true"], tmp_path / "trades-seed0.log"))
    assert job.job_id == "4242"
    lines = set(script.read_text().splitlines())
    assert {"#SBATCH --partition=gpu", "#SBATCH --time=180", "#SBATCH --gpus-per-node=1",
            "#SBATCH --cpus-per-task=8", "#SBATCH --account=myproj", "#SBATCH --qos=high",
            "#SBATCH --job-name=rat-regime", "#SBATCH --requeue"} <= lines
    assert "#SBATCH --signal=USR2@90" in lines  # submitit's time-limit notice, which the job passes on as SIGUSR1


def test_a_run_with_nothing_left_to_do_gets_no_job(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    (tmp_path / "results").mkdir()
    for key in ("a-seed0", "b-seed0"):
        (tmp_path / "results" / f"{key}.json").write_text(json.dumps({"config": key[0], "seed": 0}))
    messages = []
    run_study_jobs(tmp_path / "tiny.yaml", grid, tmp_path / "runs", tmp_path / "results", ExecutorSpec("local"),
                   log=messages.append, aggregate_after=False)
    assert messages == ["a-seed0: complete, skipped", "b-seed0: complete, skipped"]
    assert not (tmp_path / "runs" / "submitit").exists()


def test_executor_flags_are_checked_at_the_edge_with_one_line(capsys):
    from ratkit.cli import _main

    assert parse_time("180") == 180 and parse_time("2:30:01") == 151 and parse_time("1-00:00:00") == 1440
    assert parse_sbatch(["account=myproj", "exclusive"]) == {"account": "myproj", "exclusive": True}
    for bad in ("-5", "1:30", "ten"):
        with pytest.raises(StudyError, match="--time"):
            parse_time(bad)
    with pytest.raises(StudyError, match="--time: required"):
        ExecutorSpec("slurm", partition="gpu")
    with pytest.raises(StudyError, match="only with --executor slurm"):
        ExecutorSpec("local", partition="gpu")
    for args, message in ((["--partition", "gpu"], "--partition: only with --executor local or slurm"),
                          (["--executor", "slurm"], "--time: required with --executor slurm"),
                          (["--executor", "slurm", "--time", "90", "--gpus-per-job", "-1"], "--gpus-per-job: must")):
        assert _main(["study", "--grid", "core", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_a_job_starts_its_command_without_torch():
    loaded = subprocess.run([sys.executable, "-c", "import sys, ratkit.requeue; print('torch' in sys.modules)"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, check=True)
    assert loaded.stdout.strip() == "False"


HOLD = """import sys, time
from pathlib import Path
from ratkit.study.lock import hold_run
with hold_run(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _first_process(runs: Path, key: str) -> subprocess.Popen:
    """A process that holds ``key``'s run lock until it is killed, as a ``rat study`` on the run would."""
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(runs), key], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": SRC})
    assert first.stdout.readline().strip() == "held"
    return first


def test_a_second_process_leaves_a_run_in_use_alone_and_the_lock_is_free_once_the_first_is_killed(tmp_path):
    grid, runs, results = _grid_file(tmp_path), tmp_path / "runs", tmp_path / "results"
    first = _first_process(runs, "a-seed0")
    try:
        # the command each executor runs for one run, started a second time
        second = subprocess.run([sys.executable, "-m", "ratkit", "study", "--grid", str(grid), "--only", "a",
                                 "--seeds", "0", "--out", str(runs), "--results", str(results), "--no-aggregate"],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
        assert second.returncode == EXIT_IN_USE, second.stdout + second.stderr
        said = [line for line in second.stdout.splitlines() if "a-seed0" in line]
        assert len(said) == 1 and re.search(rf"a-seed0: in use by another process \(pid {first.pid} on host "
                                            rf"{re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\d "
                                            rf"\d\d:\d\d:\d\d\); skipped$", said[0]), second.stdout
        assert not (runs / "a-seed0").exists() and not results.exists()  # the run untouched
        with pytest.raises(RunInUse, match=f"pid {first.pid}"):
            with hold_run(runs, "a-seed0", patience_s=0):
                pass
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up: the operating system drops the lock
        first.wait()
    assert f"pid {first.pid}" in (runs / "a-seed0.lock").read_text()  # the dead holder's line stays ...
    assert holder(runs, "a-seed0") is None  # ... and does not hold the run
    with hold_run(runs, "a-seed0", patience_s=0):
        assert f"pid {os.getpid()}" in (runs / "a-seed0.lock").read_text()
    assert (runs / "a-seed0.lock").read_text() == ""  # released: free


def test_a_study_gives_no_job_to_a_run_in_use_and_waits_for_it_before_it_aggregates(tmp_path):
    grid, runs = load_grid(_grid_file(tmp_path)), tmp_path / "runs"
    first = _first_process(runs, "a-seed0")
    try:
        who = holder(runs, "a-seed0")
        assert who.startswith(f"pid {first.pid} on host {socket.gethostname()}, since ")
        messages = []
        with pytest.raises(RunInUse) as refused:  # not aggregating: it says so, and does not wait
            run_study_jobs(tmp_path / "tiny.yaml", grid, runs, tmp_path / "results", ExecutorSpec("local"),
                           only=["a"], log=messages.append, aggregate_after=False)
        assert refused.value.keys == ["a-seed0"]
        assert messages == [f"a-seed0: in use by another process ({who}); no job, waiting for it"]
        assert not (runs / "submitit").exists() and not (runs / "jobs.json").exists()
        threading.Timer(1.0, first.kill).start()  # the first process ends while the study waits
        messages.clear()
        wait_for_runs(runs, ["a-seed0"], log=messages.append, poll_s=0.05)
        assert messages == [f"a-seed0: waiting for the process that has it ({who})"]
        assert holder(runs, "a-seed0") is None
    finally:
        first.kill()
        first.wait()


def test_a_job_that_finds_its_run_in_use_ends_without_failing_and_without_a_requeue(tmp_path):
    log = tmp_path / "a-seed0.log"
    job = RequeueingJob("a-seed0", [sys.executable, "-c", f"import sys; sys.exit({EXIT_IN_USE})"], log)
    assert job() == EXIT_IN_USE  # returned, not raised; a requeue would exit (and need a job environment)
    assert log.read_text().splitlines()[-1] == f"== a-seed0: exit {EXIT_IN_USE}"


def test_a_study_started_again_waits_on_its_live_slurm_job_instead_of_submitting_it_again(tmp_path, monkeypatch):
    # a-seed0's job from the first `rat study` still runs; b-seed0's was cancelled
    _stand_in_slurm(tmp_path, monkeypatch, sacct="JobID|State|NodeList\n4241|RUNNING|node1\n"
                                                 "4241.batch|RUNNING|node1\n4240|CANCELLED by 1000|node2\n")
    grid, runs, folder = load_grid(_grid_file(tmp_path)), tmp_path / "runs", tmp_path / "runs" / "submitit"
    folder.mkdir(parents=True)
    recorded = {key: {"executor": "slurm", "job_id": job_id, "folder": str(folder), "submitted": "2025-01-01 00:00:00"}
                for key, job_id in (("a-seed0", "4241"), ("b-seed0", "4240"))}
    (runs / "jobs.json").write_text(json.dumps(recorded))
    for job_id in ("4241", "4242"):  # each job's result, as submitit leaves it when the job ends
        (folder / f"{job_id}_0_result.pkl").write_bytes(pickle.dumps(("success", 0)))
    messages = []
    run_study_jobs(tmp_path / "tiny.yaml", grid, runs, tmp_path / "results", ExecutorSpec("slurm", time_min=10),
                   log=messages.append, aggregate_after=False, poll_s=0.01)
    assert "a-seed0: job 4241 from before is RUNNING; waiting on it, not submitting again" in messages
    assert any(m.startswith("b-seed0: submitted as job 4242") for m in messages)
    assert "a-seed0: done" in messages and "b-seed0: done" in messages
    assert (tmp_path / "sbatch-calls").read_text() == "x\n"  # one sbatch: b-seed0's
    jobs = read_jobs(runs)
    assert jobs["a-seed0"] == recorded["a-seed0"] and jobs["b-seed0"]["job_id"] == "4242"


class _CountingExecutor:
    """A stand-in for submitit's executor that only counts what it is given."""

    def __init__(self):
        self.submitted = []

    def submit(self, job):
        self.submitted.append(job)
        raise AssertionError("a job was submitted")


def test_a_corrupt_jobs_file_is_refused_in_one_line_before_any_job_is_submitted(tmp_path, monkeypatch, capsys):
    from ratkit.cli import _main
    from ratkit.study import cluster

    executor = _CountingExecutor()
    monkeypatch.setattr(cluster, "make_executor", lambda *args: executor)
    runs = tmp_path / "runs"
    runs.mkdir()
    grid = _grid_file(tmp_path)
    for corrupt in ('{"a-seed0": {"executor": "loc', "[1, 2]"):  # cut off mid-write; valid JSON, not a mapping
        (runs / "jobs.json").write_text(corrupt)
        with pytest.raises(StudyError, match=re.escape(f"{runs / 'jobs.json'}: unreadable")):
            run_study_jobs(grid, load_grid(grid), runs, tmp_path / "results", ExecutorSpec("local"),
                           log=lambda m: None, aggregate_after=False)
        assert _main(["study", "--grid", str(grid), "--out", str(runs), "--results", str(tmp_path / "results"),
                      "--executor", "local", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(runs / "jobs.json") in err
    assert executor.submitted == [] and not list(runs.glob("*.log"))


@pytest.mark.parametrize("kind", ["local", "slurm"])
def test_either_executor_without_submitit_says_how_to_install_it_in_one_line(tmp_path, monkeypatch, capsys, kind):
    from ratkit.cli import _main

    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    grid = _grid_file(tmp_path)
    assert _main(["study", "--grid", str(grid), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r"),
                  "--executor", kind, *(["--time", "10"] if kind == "slurm" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rat study: error: --executor {kind} needs submitit: pip install 'ratkit[cluster]'"


def test_a_job_preempted_on_every_attempt_stops_requeueing_after_six_and_says_so(tmp_path, monkeypatch):
    import ratkit.requeue as requeue

    requeued = []

    def requeue_this_job():  # as the real one: back in the queue, and this attempt ends
        requeued.append(os.environ.get("SLURM_RESTART_COUNT"))
        raise SystemExit(requeue.EXIT_PREEMPTED)

    monkeypatch.setattr(requeue, "_requeue_this_job", requeue_this_job)
    log = tmp_path / "a-seed0.log"
    job = RequeueingJob("a-seed0", [sys.executable, "-c", "import sys; sys.exit(75)"], log)
    for restarts in (None, "1", "4"):  # SLURM counts the requeues of a job; none before the first
        if restarts is None:
            monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        else:
            monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        with pytest.raises(SystemExit):
            job()
    assert requeued == [None, "1", "4"]
    assert log.read_text().splitlines()[-1] == ("== a-seed0: exit 75, preempted: requeued to resume "
                                                "(attempt 5 of at most 6)")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "5")  # the sixth attempt is the last
    with pytest.raises(RuntimeError, match=r"exited 75 on attempt 6 of at most 6, not requeued; see .*a-seed0\.log"):
        job()
    assert len(requeued) == 3 and requeue.MAX_ATTEMPTS == 6  # as submitit's local controller
    assert log.read_text().splitlines()[-1] == ("== a-seed0: exit 75, preempted on attempt 6 of at most 6: "
                                                "not requeued; run it again")


@pytest.fixture
def no_flock(monkeypatch):
    """A filesystem without flock, as Lustre mounted without the flock option: the call fails."""
    import errno

    import ratkit.study.lock as lock

    def flock(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    return lock


def test_without_flock_an_exclusive_lock_file_keeps_a_second_holder_out(tmp_path, no_flock):
    runs, messages = tmp_path / "runs", []
    excl = runs / "a-seed0.lock.excl"
    with hold_run(runs, "a-seed0", log=messages.append, patience_s=0):
        assert messages == [f"a-seed0: no flock on {runs / 'a-seed0.lock'} (ENOLCK: the filesystem lacks it); "
                            f"holding a-seed0.lock.excl instead"]
        assert excl.read_text().startswith(f"pid {os.getpid()} on host {socket.gethostname()}, since ")
        with pytest.raises(RunInUse, match=rf"a-seed0: in use by another process \(pid {os.getpid()} on host"):
            with hold_run(runs, "a-seed0", log=lambda m: None, patience_s=0.2):
                raise AssertionError("a second holder got in")
        assert holder(runs, "a-seed0").startswith(f"pid {os.getpid()} on host")
    assert not excl.exists() and holder(runs, "a-seed0") is None  # let go: free
    with hold_run(runs, "a-seed0", log=lambda m: None, patience_s=0):  # and taken again
        assert excl.exists()


def test_without_flock_a_dead_holders_lock_file_is_taken_over_and_a_live_one_beats(tmp_path, no_flock, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    excl = runs / "a-seed0.lock.excl"
    excl.write_text("pid 4711 on host node17, since 2025-06-01 12:00:00\n")  # a holder killed by kill -9
    os.utime(excl, (time.time() - no_flock.STALE_S - 5,) * 2)  # its last heartbeat
    assert holder(runs, "a-seed0") is None
    monkeypatch.setattr(no_flock, "HEARTBEAT_S", 0.05)
    with hold_run(runs, "a-seed0", log=lambda m: None, patience_s=0):
        assert f"pid {os.getpid()}" in excl.read_text()
        os.utime(excl, (time.time() - no_flock.STALE_S - 5,) * 2)
        deadline = time.time() + 10
        while time.time() - excl.stat().st_mtime > no_flock.STALE_S:  # the heartbeat touches it again
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.02)
        with pytest.raises(RunInUse):
            with hold_run(runs, "a-seed0", log=lambda m: None, patience_s=0):
                pass
    assert not excl.exists() and sorted(p.name for p in runs.iterdir()) == ["a-seed0.lock"]
