"""Old import paths keep working after issue 33's moves: each old module name is the very module
object of its new home, so old imports, ``isinstance`` checks and monkeypatches all still agree."""

import importlib
import os
import subprocess
import sys

import pytest
from helpers import SRC

MOVED = {
    "ratkit.checkpoint": "ratkit.checkpoints.native",
    "ratkit.interop": "ratkit.checkpoints.foreign",
    "ratkit.eval_chunks": "ratkit.evaluate.chunks",
    "ratkit.device_check": "ratkit.bench.device_check",
    **{f"ratkit.training.{name}": f"ratkit.train.{name}"
       for name in ("checkpoints", "collapse", "fit", "run_log", "state", "stopping")},
}


@pytest.mark.parametrize("old, new", MOVED.items())
def test_an_old_module_path_is_its_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_paths_import_first_in_a_fresh_interpreter():
    """Imported before anything else (nothing of the new home loaded yet), as in a user's script."""
    code = "import importlib, sys\n" + "".join(
        f"old = importlib.import_module({old!r})\n"
        f"assert old is importlib.import_module({new!r}) is sys.modules[{old!r}], {old!r}\n"
        for old, new in MOVED.items())
    code += ("import ratkit.training\n"
             "assert ratkit.training.fit is sys.modules['ratkit.train.fit']\n"
             "assert ratkit.checkpoint is sys.modules['ratkit.checkpoints.native']\n")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_names_the_docs_give_still_import_from_their_old_paths():
    from ratkit.bench import time_configs
    from ratkit.bench.steps import time_configs as timed
    from ratkit.checkpoint import CheckpointError, load_model
    from ratkit.checkpoints import CheckpointError as error
    from ratkit.checkpoints import InteropError as interop_error
    from ratkit.checkpoints import export_checkpoint as export
    from ratkit.checkpoints import import_state_dict as imported
    from ratkit.checkpoints import load_model as loaded
    from ratkit.evaluate import AttackChunks
    from ratkit.eval_chunks import AttackChunks as chunks
    from ratkit.interop import InteropError, export_checkpoint, import_state_dict
    from ratkit.train import build_method, train
    from ratkit.train.loop import build_method as built, train as trained
    from ratkit.training.fit import fit

    import ratkit

    assert time_configs is timed and CheckpointError is error and load_model is loaded
    assert InteropError is interop_error and export_checkpoint is export and import_state_dict is imported
    assert AttackChunks is chunks and build_method is built and train is trained
    assert fit is importlib.import_module("ratkit.train.fit").fit
    assert ratkit.fit.__doc__ and "ratkit.train.fit" in ratkit.fit.__doc__


def test_python_m_ratkit_device_check_still_runs_the_device_check():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "ratkit.device_check", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--correctness-only" in proc.stdout
