"""The grid file (``configs/studies/*.yaml``): which runs a study trains and what it measures on them.

A grid names a preset, the overrides every run shares (the budget), one override list per
configuration, the seeds, the pairs to compare (with RAT, base), the evaluation and the
optional measurements (``hessian``, ``landscape``, ``outputs``). Each block is a typed spec
here, with its defaults in one place; a key the spec does not know is refused, naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..config import Config, ConfigError, load_config, preset_dir

from ..attacks.protocols import ATTACKS

DEFAULT_ATTACKS = ",".join(ATTACKS)


class StudyError(Exception):
    """A bad grid file or study setting; the message is one line."""


@dataclass
class EvalSpec:
    """The protocol every checkpoint of the grid is evaluated with.

    A block that leaves a key out gets the preset's attacks and every test image (``n``,
    ``aa_n`` None); a grid without an ``eval`` block gets :data:`DEFAULT_EVAL`."""

    attacks: str | None = None  # None: the preset's
    n: int | None = None  # test images for clean and the PGD/CW attacks; None: all
    aa_n: int | None = None  # the first images for AutoAttack and the worst case

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with this evaluation in place of the preset's (the training config is unchanged)."""
        attacks = cfg.eval.attacks if self.attacks is None else self.attacks
        return replace(cfg, eval=replace(cfg.eval, attacks=attacks, n=self.n, aa_n=self.aa_n))


DEFAULT_EVAL = EvalSpec(attacks=DEFAULT_ATTACKS, n=None, aa_n=1000)


@dataclass
class HessianSpec:
    """Top eigenvalue and Hutchinson trace of the adversarial loss (PGD-10) on the first ``n`` test
    images of the best checkpoint (:func:`ratkit.analysis.run_hessian` with these arguments)."""

    n: int = 256
    top_k: int = 1
    probes: int = 50
    max_iter: int = 50


@dataclass
class LandscapeSpec:
    """A 1-D landscape of the best checkpoint on the first ``n`` test images along a filter-normalised
    direction drawn with the run's seed (:func:`ratkit.analysis.run_landscape` with these arguments)."""

    n: int = 500
    points: int = 21
    span: float = 1.0
    adversarial: str = "regenerated"


@dataclass
class OutputsSpec:
    """Output scale (softmax confidence, logit norm) of the best checkpoint on the first ``n`` clean and
    PGD-10 test images (:func:`ratkit.analysis.output_statistics`)."""

    n: int = 1000


@dataclass
class StudyGrid:
    """A study: configurations x seeds, the pairs compared, the evaluation and the measurements.

    >>> grid = load_grid("configs/studies/core.yaml")
    >>> grid.hessian.probes, run_key("rat-trades", 2)
    (50, 'rat-trades-seed2')
    """

    name: str
    preset: str = "fmnist-cpu"
    overrides: list[str] = field(default_factory=list)
    runs: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval: EvalSpec = field(default_factory=lambda: replace(DEFAULT_EVAL))
    hessian: HessianSpec | None = None
    landscape: LandscapeSpec | None = None
    outputs: OutputsSpec | None = None
    # the checkpoints evaluated with the protocol: best always; [best, last] also the last epoch's weights
    checkpoints: list[str] = field(default_factory=lambda: ["best"])


# the blocks of a grid file that are typed specs
SPECS: dict[str, type] = {"eval": EvalSpec, "hessian": HessianSpec, "landscape": LandscapeSpec,
                          "outputs": OutputsSpec}


def _known_keys(path: Path, where: str, raw: dict, cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise StudyError(f"{path}: {where}unknown keys {sorted(unknown)}; expected some of {sorted(known)}")


def _spec(path: Path, key: str, raw):
    """The typed spec of one block. An empty measurement block asks for nothing (None); an empty
    ``eval`` block is the preset's attacks on every test image."""
    if not raw and key != "eval":
        return None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: {key}: expected a mapping of settings, got {raw!r}")
    _known_keys(path, f"{key}: ", raw, SPECS[key])
    return SPECS[key](**raw)


def _check_measurements(path: Path, grid: StudyGrid) -> None:
    """Refuse settings the measurements would refuse, before anything is trained."""
    from ..analysis.landscape import check_landscape_settings

    for key in ("hessian", "landscape", "outputs"):
        spec = getattr(grid, key)
        if spec is not None and not (isinstance(spec.n, int) and spec.n >= 1):
            raise StudyError(f"{path}: {key}.n: expected a positive number of images, got {spec.n!r}")
    if grid.landscape is not None:
        try:
            check_landscape_settings(1, grid.landscape.points, grid.landscape.span, grid.landscape.adversarial)
        except (ValueError, TypeError) as exc:
            raise StudyError(f"{path}: landscape: {exc}") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"{path}: no such grid file")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def grid_file(name: str) -> Path:
    """``rat study --grid``: a grid file's path, or the name of one in ``configs/studies/``."""
    path = Path(name)
    return preset_dir() / "studies" / f"{name}.yaml" if not path.exists() and not path.suffix else path


def load_grid(path: str | os.PathLike) -> StudyGrid:
    """Read and check a grid file; every configuration's config is validated up front.

    >>> load_grid("configs/studies/core.yaml").pairs[0]
    ('rat-trades', 'trades')
    """
    path = Path(path)
    raw = _read_yaml(path)
    _known_keys(path, "", raw, StudyGrid)
    raw.setdefault("name", path.stem)
    raw["pairs"] = [tuple(p) for p in raw.get("pairs", [])]
    raw.update({key: _spec(path, key, raw[key]) for key in SPECS if key in raw})
    grid = StudyGrid(**raw)
    if not grid.runs:
        raise StudyError(f"{path}: no runs")
    if grid.checkpoints not in (["best"], ["best", "last"]):
        raise StudyError(f"{path}: checkpoints {grid.checkpoints!r}: expected [best] or [best, last]")
    for with_rat, base in grid.pairs:
        if with_rat not in grid.runs or base not in grid.runs:
            raise StudyError(f"{path}: pair ({with_rat}, {base}) names a configuration not in runs")
    _check_measurements(path, grid)
    for name in grid.runs:
        try:
            run_config(grid, name, grid.seeds[0] if grid.seeds else 0)
        except ConfigError as exc:
            raise StudyError(f"{path}: run {name!r}: {exc}") from None
    return grid


def run_config(grid: StudyGrid, name: str, seed: int) -> Config:
    """The full config of one run: preset, shared budget, the configuration's overrides, the seed."""
    return load_config(grid.preset, [*grid.overrides, *grid.runs[name], f"train.seed={seed}"])


def emulated_bfloat16_notice(grid: StudyGrid, only: list[str] | None = None) -> str | None:
    """One line for the start of a study whose runs keep an explicit bfloat16 attack (the committed
    runs were made so) on a machine that only emulates bfloat16, else None."""
    from ..device import emulates_bfloat16, resolve_device, resolve_precision

    for name in (only or grid.runs):
        cfg = run_config(grid, name, grid.seeds[0] if grid.seeds else 0)
        try:
            device = resolve_device(cfg.train.device)
        except ValueError:
            continue
        if emulates_bfloat16(cfg.attack.precision, device):
            return (f"study {grid.name}: its runs keep attack.precision bfloat16, as its committed runs were made; "
                    + resolve_precision(cfg.attack.precision, device)[1])
    return None


def run_key(name: str, seed: int) -> str:
    """The name of a run's directory and result file: ``<config>-seed<s>``."""
    return f"{name}-seed{seed}"
