"""ratkit as a normal package: a wheel installed in a fresh virtual environment works from any directory."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, timeout=300, env=None):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of the source, installed (no deps) into a new venv that borrows
    this environment's site-packages for torch & co. through a path entry (whose .pth files,
    the editable install among them, are not run), so the test stays fast and offline."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    symlinks=False)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(source)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("ratkit-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAT_CONFIG_DIR")}
    return venv, workdir, env


def test_the_wheel_is_what_runs_and_it_ships_the_presets(installed):
    venv, workdir, env = installed
    where = _run([str(venv / "bin" / "python"), "-c", "import ratkit; print(ratkit.__file__)"], cwd=workdir, env=env)
    assert where.startswith(str(venv)), where  # not the source tree, not the editable install
    out = _run([str(venv / "bin" / "rat"), "presets"], cwd=workdir, env=env)
    assert "fmnist-cpu" in out and "cifar10-rat-trades-wrn34" in out and str(venv) in out
    assert _run([str(venv / "bin" / "rat"), "--version"], cwd=workdir, env=env).startswith("ratkit ")


def test_the_installed_rat_trains_the_main_preset_from_another_directory(installed):
    venv, workdir, env = installed
    out = _run([str(venv / "bin" / "rat"), "train", "--dataset", "synthetic", "--train-subset", "128",
                "--epochs", "1", "--batch-size", "32", "--set", "data.val_size=64", "--set", "train.val_n=32",
                "--set", "model.kwargs.channels=[4,8]", "--set", "model.kwargs.hidden=16",
                "--set", "eval.attacks=clean,pgd20", "--set", "eval.n=32", "--set", "eval.aa_n=null",
                "--out", "run", "--quiet"], cwd=workdir, env=env)
    assert "PGD-20" in out
    assert (workdir / "run" / "best.safetensors").exists() and (workdir / "run" / "eval.json").exists()


def test_the_torch_floor_is_a_release_whose_weights_only_load_runs_no_code():
    """rat import reads a plain state dict with torch.load(weights_only=True); before torch 2.6 a
    crafted file could still run code through it (CVE-2025-32434)."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    floor = re.fullmatch(r"torch>=(\d+)\.(\d+)(?:\.\d+)?", torch.replace(" ", ""))
    assert floor is not None, torch
    assert (int(floor[1]), int(floor[2])) >= (2, 6)
    assert "`torch>=2.6`" in (ROOT / "README.md").read_text()
