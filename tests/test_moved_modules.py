"""Old import paths keep working after issue 33's moves: each old module name is the very module
object of its new home, so old imports, ``isinstance`` checks and monkeypatches all still agree.
Each warns (DeprecationWarning) that it moved, naming its new home and the release that removes it."""

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SRC
from test_import_graph import PACKAGE, import_graph

MOVED = {
    "ratkit.checkpoint": "ratkit.checkpoints.native",
    "ratkit.interop": "ratkit.checkpoints.foreign",
    "ratkit.eval_chunks": "ratkit.evaluate.chunks",
    "ratkit.device_check": "ratkit.bench.device_check",
    "ratkit.data.user": "ratkit.data.source",
    **{f"ratkit.training.{name}": f"ratkit.train.{name}"
       for name in ("checkpoints", "collapse", "fit", "run_log", "state", "stopping")},
}
pytestmark = pytest.mark.filterwarnings("ignore:.* will be removed in ratkit 0.3:DeprecationWarning")


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


def test_each_old_path_warns_at_the_line_that_imports_it_naming_its_new_home():
    """In a fresh interpreter, where nothing is imported yet: one warning per old name."""
    old_homes = {"ratkit.checkpoint": "ratkit.checkpoints.native", "ratkit.interop": "ratkit.checkpoints.foreign",
                 "ratkit.eval_chunks": "ratkit.evaluate.chunks", "ratkit.device_check": "ratkit.bench.device_check",
                 "ratkit.data.user": "ratkit.data.source", "ratkit.training": "ratkit.train"}
    code = ("import json, warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            + "".join(f"    import {old}\n" for old in old_homes)
            + "    from ratkit.checkpoints.native import _atomic_write_bytes\n"
            "print(json.dumps([[w.category.__name__, str(w.message), w.filename] for w in caught]))\n")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    caught = json.loads(proc.stdout)
    expected = [*old_homes.items(),
                ("ratkit.checkpoints.native._atomic_write_bytes", "ratkit.files.atomic_write_bytes")]
    assert [message for _, message, _ in caught] == [
        f"{old} is deprecated and will be removed in ratkit 0.3; use {new}" for old, new in expected]
    assert all(category == "DeprecationWarning" and filename == "<string>" for category, _, filename in caught)


def test_the_old_private_name_of_atomic_write_bytes_is_the_one_writer():
    from ratkit import files
    from ratkit.checkpoints import native

    with pytest.warns(DeprecationWarning, match=r"ratkit 0\.3.*ratkit\.files\.atomic_write_bytes"):
        old = native._atomic_write_bytes
    assert old is files.atomic_write_bytes


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


@pytest.mark.parametrize("module", ["ratkit.device_check", "ratkit.bench.device_check"])
def test_python_m_runs_the_device_check_by_its_old_and_its_new_name(module):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--correctness-only" in proc.stdout


def test_nothing_in_src_or_tests_but_this_file_uses_an_old_name():
    old = {name for name in MOVED if not name.startswith("ratkit.training.")} | {"ratkit.training"}
    users = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
             if target in old and module not in old]
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            users += [f"{path.name} imports {n}" for n in names if n in old or n.startswith("ratkit.training.")]
    sources = [*PACKAGE.rglob("*.py"), *Path(__file__).parent.glob("*.py")]
    users += [f"{p.name} uses _atomic_write_bytes" for p in sources
              if re.search(r"\b_atomic_write_bytes\b", p.read_text()) and p.name not in ("native.py", Path(__file__).name)]
    assert not users, users
