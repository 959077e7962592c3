"""The ``rat landscape`` and ``rat hessian`` jobs: checkpoint(s) in, JSON and PNG files out.

The CLI only parses flags and calls :func:`run_landscape` / :func:`run_hessian`; everything a
user could also want from Python (same examples, same eps, same file names) lives here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING, Sequence, TypedDict

import torch

from .common import load_checkpoint_examples
from .hessian import LOSSES, HessianResult, hessian_spectrum
from .landscape import LandscapeResult, check_landscape_settings, loss_landscape

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack only from Python 3.11

HESSIAN_LOSSES = (*LOSSES, "both")  # the losses of one spectrum, or "both": each of them in turn


class AnalysisInputs(TypedDict, total=False):
    """The keywords both jobs take (each optional; :data:`ANALYSIS_DEFAULTS` fills the rest).

    ``seed``: seeds the random directions / probes; ``batch_size``: examples per forward pass;
    ``dataset``: the test set to use (default: the checkpoint's); ``data_dir``: where its files are;
    ``device``: where to compute; ``quiet``: no progress output.
    """

    seed: int
    batch_size: int
    dataset: str | None
    data_dir: str | os.PathLike | None
    device: str | torch.device
    quiet: bool
    model_code: Any


ANALYSIS_DEFAULTS: AnalysisInputs = {
    "seed": 0, "batch_size": 256, "dataset": None, "data_dir": None, "device": "cpu", "quiet": False,
    "model_code": None,
}


def _with_defaults(job: str, inputs: AnalysisInputs) -> AnalysisInputs:
    """``inputs`` over :data:`ANALYSIS_DEFAULTS`; an unknown keyword is a TypeError, as in a plain signature."""
    unknown = sorted(set(inputs) - set(ANALYSIS_DEFAULTS))
    if unknown:
        raise TypeError(f"{job}() got unexpected keyword argument(s): {', '.join(unknown)}")
    return {**ANALYSIS_DEFAULTS, **inputs}


def _load(checkpoint: str | os.PathLike, n: int, opts: AnalysisInputs):
    return load_checkpoint_examples(checkpoint, n, dataset=opts["dataset"], data_dir=opts["data_dir"],
                                    device=opts["device"], model_code=opts["model_code"])


@dataclass
class JobOutput:
    """What a job measured and which files it wrote."""

    results: list = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def checkpoint_label(path: str | os.PathLike) -> str:
    """A short name for plots and file names: ``run-dir/best`` for ``run-dir/best.safetensors``."""
    p = Path(path)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def run_landscape(
    checkpoints: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    dim: int = 1,
    adversarial: str = "none",
    n: int = 256,
    points: int = 21,
    span: float = 1.0,
    **inputs: Unpack[AnalysisInputs],
) -> JobOutput:
    """Landscapes of one or more checkpoints on the first ``n`` test images of their (common) dataset.

    Writes ``landscape.json`` (all results) and ``landscape_1d.png`` (all curves overlaid) or one
    ``landscape_2d_<k>_<label>.png`` contour per checkpoint. eps is the dataset's Linf eps.
    ``inputs``: seed, batch_size, dataset, data_dir, device, quiet (see :class:`AnalysisInputs`).

    Example: ``run_landscape(["runs/at/best.safetensors"], out="plots", dim=1, seed=1, device="cuda")``
    """
    from .plots import plot_landscape_1d, plot_landscape_2d

    opts = _with_defaults("run_landscape", inputs)
    if not checkpoints:
        raise ValueError("no checkpoints given")
    check_landscape_settings(dim, points, span, adversarial, batch_size=opts["batch_size"])
    loaded = [_load(c, n, opts) for c in checkpoints]
    datasets = sorted({item.dataset for item in loaded})
    if len(datasets) > 1:
        raise ValueError(f"checkpoints come from different datasets ({', '.join(datasets)}); "
                         "compare landscapes on one dataset")
    out_dir = Path(out)
    job = JobOutput()
    for item in loaded:
        job.results.append(loss_landscape(
            item.model, item.x, item.y, dim=dim, points=points, span=span, adversarial=adversarial,
            eps=item.eps, seed=opts["seed"], batch_size=opts["batch_size"], label=checkpoint_label(item.path),
            quiet=opts["quiet"]))
    payload = {"dataset": datasets[0], "landscapes": [r.to_json() for r in job.results]}
    job.files.append(_write_json(out_dir / "landscape.json", payload))
    if dim == 1:
        job.files.append(plot_landscape_1d(job.results, out_dir / "landscape_1d.png"))
    else:
        for k, result in enumerate(job.results):
            job.files.append(plot_landscape_2d(result, out_dir / f"landscape_2d_{k}_{_slug(result.label)}.png"))
    return job


def run_hessian(
    checkpoint: str | os.PathLike,
    *,
    out: str | os.PathLike,
    n: int = 256,
    top_k: int = 1,
    probes: int = 100,
    loss: str = "both",
    max_iter: int = 100,
    tol: float = 1e-4,
    params: str = "all",
    **inputs: Unpack[AnalysisInputs],
) -> JobOutput:
    """Hessian spectrum of one checkpoint on the first ``n`` test images; writes ``hessian.json``.

    ``loss="both"`` measures the clean and then the adversarial loss (PGD-10 at the dataset's eps).
    ``inputs``: seed, batch_size, dataset, data_dir, device, quiet (see :class:`AnalysisInputs`).

    Example: ``run_hessian("runs/at/best.safetensors", out="hessian", top_k=3, loss="clean", device="cuda")``
    """
    opts = _with_defaults("run_hessian", inputs)
    if loss not in HESSIAN_LOSSES:
        raise ValueError(f"loss: {loss!r} is not one of {HESSIAN_LOSSES}")
    loaded = _load(checkpoint, n, opts)
    label = checkpoint_label(loaded.path)
    job = JobOutput()
    for kind in (LOSSES if loss == "both" else (loss,)):
        job.results.append(hessian_spectrum(
            loaded.model, loaded.x, loaded.y, loss=kind, eps=loaded.eps, top_k=top_k, max_iter=max_iter, tol=tol,
            probes=probes, params=params, batch_size=opts["batch_size"], seed=opts["seed"], label=label,
            quiet=opts["quiet"]))
    payload = {"dataset": loaded.dataset, "eps": loaded.eps, "hessian": [r.to_json() for r in job.results]}
    job.files.append(_write_json(Path(out) / "hessian.json", payload))
    return job


def format_landscapes(results: Sequence[LandscapeResult]) -> str:
    """One line per landscape: loss at the trained weights and the rise to the worst grid point."""
    lines = [f"{'checkpoint':<32}{'inputs':<22}{'loss at 0':>11}{'max rise':>11}{'acc at 0':>10}"]
    for r in results:
        kinds = [("clean", r.clean_loss, r.clean_accuracy)]
        if r.adversarial_loss is not None:
            kinds.append((f"adversarial ({r.settings.adversarial})", r.adversarial_loss, r.adversarial_accuracy))
        origin = (r.settings.points // 2,) * r.settings.dim
        for kind, grid, acc in kinds:
            loss, accuracy = torch.tensor(grid), torch.tensor(acc)
            centre, rise = loss[origin].item(), (loss.max() - loss[origin]).item()
            lines.append(f"{r.label:<32}{kind:<22}{centre:>11.4f}{rise:>11.4f}{100 * accuracy[origin].item():>9.2f}%")
    return "\n".join(lines)


def format_hessian(results: Sequence[HessianResult]) -> str:
    """One line per loss: top eigenvalues (largest magnitude first) and the trace with its standard error."""
    lines = []
    for r in results:
        eig = ", ".join(f"{v:.4g}{'' if ok else ' (not converged)'}" for v, ok in zip(r.eigenvalues, r.converged))
        trace = (f"{r.trace:.4g} +- {r.trace_stderr:.2g} ({r.trace_probes} probes)" if r.trace is not None else "-")
        lines.append(f"{r.label} [{r.settings.loss}, n={r.settings.n}, {r.settings.num_params} params]: "
                     f"top eigenvalues {eig or '-'}; trace {trace}")
    return "\n".join(lines)


def analysis_command(run, describe, checkpoints, args, model_code, **settings) -> None:
    """What ``rat landscape`` and ``rat hessian`` share after their flags: ``run`` (:func:`run_landscape` or
    :func:`run_hessian`) on the flags' common settings, its results (``describe``) and files printed."""
    from ..device import resolve_device_flag
    from ..exits import UserError

    if args.n < 1:
        raise UserError(f"--n: must be a positive number of images, got {args.n}")
    common = dict(out=args.out, n=args.n, seed=args.seed, batch_size=args.batch_size, dataset=args.dataset,
                  data_dir=args.data_dir, device=str(resolve_device_flag(args.device)), quiet=args.quiet,
                  model_code=model_code)
    try:
        job = run(checkpoints, **settings, **common)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(describe(job.results))
    print("wrote " + ", ".join(str(f) for f in job.files))
