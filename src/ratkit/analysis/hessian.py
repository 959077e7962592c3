"""Curvature of the loss: top Hessian eigenvalues and the Hutchinson trace estimate.

What is measured: the Hessian ``H`` of the mean cross-entropy over the given examples with
respect to the trainable parameters (or only those with dim > 1, ``params="weights"``), model
in eval mode. Two scalars summarise its sharpness:

* the top eigenvalues, by power iteration with deflation. "Top" means largest *magnitude*
  (what power iteration converges to, and what PyHessian and the flatness papers report);
  the sign is kept. At a trained minimum the dominant eigenvalues are the largest positive
  ones, so the two readings agree there. Each eigenvalue stops when the Rayleigh quotient
  changes by less than ``tol`` (relative) between iterations, or after ``max_iter``; the
  result says which happened. Two eigenvalues of equal magnitude and opposite sign stall
  power iteration (it is reported as not converged).
* the trace, by Hutchinson's estimator ``mean(z^T H z)`` over Rademacher probes ``z``,
  reported with its standard error and number of probes.

``loss="adversarial"`` measures the same on adversarial examples crafted once at the current
weights (the one PGD engine, default PGD-10 Linf) and then held fixed: the curvature of
the loss on those inputs, not of the max over the eps-ball.

Hessian-vector products use ``torch.func``: ``jvp`` over ``grad`` of a ``functional_call``
(forward-over-reverse), on detached copies of the parameters, summed over batches and divided
by the number of examples. The live parameters are never written and never receive ``.grad``.
Start vectors and probes come from a CPU generator seeded by ``seed``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from ..attacks import PGDConfig
from ..modes import model_mode
from .common import adversarial_examples, check_batch_size, prepare_examples, resolve_attack

LOSSES = ("clean", "adversarial")
PARAMS = ("all", "weights")

Vector = tuple[Tensor, ...]
HVP = Callable[[Vector], Vector]


@dataclass
class HessianSettings:
    """How the spectrum was measured (enough to repeat it)."""

    loss: str
    n: int
    params: str
    num_params: int
    top_k: int
    max_iter: int
    tol: float
    probes: int
    seed: int
    batch_size: int
    attack: dict | None = None


@dataclass
class HessianResult:
    """Top eigenvalues (largest magnitude first) and the Hutchinson trace (None without probes)."""

    eigenvalues: list[float]
    iterations: list[int]
    converged: list[bool]
    trace: float | None
    trace_stderr: float | None
    trace_probes: int
    settings: HessianSettings
    label: str = ""
    seconds: float = 0.0
    hvp_calls: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _dot(a: Vector, b: Vector) -> Tensor:
    return sum((ai * bi).sum() for ai, bi in zip(a, b))


def _normalized(v: Vector) -> tuple[Vector, float]:
    norm = math.sqrt(_dot(v, v).item())
    if norm == 0.0:
        return v, 0.0
    return tuple(t / norm for t in v), norm


def _orthogonalized(v: Vector, basis: Sequence[Vector]) -> Vector:
    """Remove the components along the (orthonormal) ``basis``: deflation of found eigenvectors."""
    for b in basis:
        c = _dot(v, b)
        v = tuple(vi - c * bi for vi, bi in zip(v, b))
    return v


def _randn_like(like: Vector, generator: torch.Generator) -> Vector:
    return tuple(torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t) for t in like)


def _rademacher_like(like: Vector, generator: torch.Generator) -> Vector:
    return tuple((2 * torch.randint(0, 2, t.shape, generator=generator) - 1).to(t) for t in like)


def hessian_params(model: nn.Module, params: str = "all") -> list[str]:
    """Names of the parameters the Hessian is taken over: trainable ones, optionally only dim > 1."""
    if params not in PARAMS:
        raise ValueError(f"params: {params!r} is not one of {PARAMS}")
    return [n for n, p in model.named_parameters() if p.requires_grad and (params == "all" or p.dim() > 1)]


def hessian_vector_product(
    model: nn.Module, x: Tensor, y: Tensor, names: Sequence[str], batch_size: int = 256
) -> tuple[HVP, Vector]:
    """``(v -> H v, current parameter values)`` for the mean cross-entropy over all of (x, y).

    The model is run as it is (the caller sets eval mode); parameters not in ``names`` and the
    buffers are held at their current values.
    """
    check_batch_size(batch_size)
    base = {n: p.detach() for n, p in model.named_parameters()}
    missing = [n for n in names if n not in base]
    if missing or not names:
        raise ValueError(f"no parameters to differentiate (unknown: {missing})")
    held = {n: t for n, t in base.items() if n not in set(names)}
    primals = tuple(base[n] for n in names)

    def loss_sum(theta: Vector, xb: Tensor, yb: Tensor) -> Tensor:
        logits = functional_call(model, {**held, **dict(zip(names, theta))}, (xb,))
        return F.cross_entropy(logits, yb, reduction="sum")

    grad_sum = grad(loss_sum)

    def hvp(v: Vector) -> Vector:
        total = [torch.zeros_like(p) for p in primals]
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            _, hv = jvp(lambda theta: grad_sum(theta, xb, yb), (primals,), (tuple(v),))
            for t, h in zip(total, hv):
                t.add_(h.detach())
        return tuple(t / len(x) for t in total)

    return hvp, primals


def top_eigenvalues(
    hvp: HVP,
    like: Vector,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    on_found: Callable[[], None] | None = None,
) -> tuple[list[float], list[int], list[bool], list[Vector]]:
    """Power iteration with deflation: the ``k`` largest-magnitude eigenvalues of the operator ``hvp``.

    Returns (eigenvalues, iterations used, converged flags, unit eigenvectors).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values: list[float] = []
    iterations: list[int] = []
    converged: list[bool] = []
    vectors: list[Vector] = []
    for _ in range(k):
        v, _ = _normalized(_orthogonalized(_randn_like(like, generator), vectors))
        value: float | None = None
        done = False
        it = 0
        for it in range(1, max_iter + 1):
            hv = _orthogonalized(hvp(v), vectors)
            new = _dot(hv, v).item()
            v_next, norm = _normalized(hv)
            if norm == 0.0:  # v is in the null space of the deflated operator
                value, done = 0.0, True
                break
            v = v_next
            if value is not None and abs(new - value) <= tol * max(abs(new), abs(value)):
                value, done = new, True
                break
            value = new
        values.append(float(value if value is not None else 0.0))
        iterations.append(it)
        converged.append(done)
        vectors.append(v)
        if on_found is not None:
            on_found()
    return values, iterations, converged, vectors


def hutchinson_trace(
    hvp: HVP,
    like: Vector,
    probes: int,
    *,
    generator: torch.Generator | None = None,
    on_step: Callable[[], None] | None = None,
) -> tuple[float, float, list[float]]:
    """Hutchinson's estimate of tr(H) with Rademacher probes: (mean, standard error, samples).

    Each ``z^T H z`` is an unbiased estimate; the standard error is the sample standard
    deviation over sqrt(probes) (NaN with a single probe).
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    samples = []
    for _ in range(probes):
        z = _rademacher_like(like, generator)
        samples.append(_dot(hvp(z), z).item())
        if on_step is not None:
            on_step()
    mean = math.fsum(samples) / probes
    if probes == 1:
        return mean, float("nan"), samples
    var = math.fsum((s - mean) ** 2 for s in samples) / (probes - 1)
    return mean, math.sqrt(var / probes), samples


def hessian_spectrum(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "clean",
    eps: float | None = None,
    attack: PGDConfig | None = None,
    top_k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    probes: int = 100,
    params: str = "all",
    batch_size: int = 256,
    seed: int = 0,
    label: str = "",
    quiet: bool = False,
) -> HessianResult:
    """Top-k eigenvalues and Hutchinson trace of the Hessian of the clean or adversarial loss.

    ``loss="adversarial"`` crafts adversarial examples once (``attack``, else PGD-10 at
    ``eps``, seeded by ``seed``) and holds them fixed. ``top_k=0`` or ``probes=0`` skips that
    part. The model's parameters, buffers and train/eval flags are as before when this
    returns or raises.

    Example::

        hess = hessian_spectrum(ex.model, ex.x, ex.y, loss="adversarial", eps=ex.eps, top_k=3, probes=100)
    """
    from tqdm.auto import tqdm

    if loss not in LOSSES:
        raise ValueError(f"loss: {loss!r} is not one of {LOSSES}")
    if top_k < 0 or probes < 0 or max_iter < 1 or not tol >= 0:
        raise ValueError("need top_k >= 0, probes >= 0, max_iter >= 1 and tol >= 0")
    check_batch_size(batch_size)
    cfg = resolve_attack(attack, eps) if loss == "adversarial" else None
    x, y = prepare_examples(model, x, y)
    names = hessian_params(model, params)
    started = time.perf_counter()
    calls = 0
    disable = quiet or not sys.stderr.isatty()
    with model_mode(model, False), torch.autocast(x.device.type, enabled=False), \
            tqdm(total=top_k + probes, desc=f"Hessian {loss} {label}".strip(), unit="step",
                 disable=disable, leave=False) as bar:
        if cfg is not None:
            x = adversarial_examples(model, x, y, cfg, seed=seed, batch_size=batch_size)
        hvp, primals = hessian_vector_product(model, x, y, names, batch_size)

        def counted(v: Vector) -> Vector:
            nonlocal calls
            calls += 1
            bar.set_postfix(hvp=calls, refresh=False)
            return hvp(v)

        # Separate generators: the trace does not depend on how many eigenvalues were asked for.
        eig = top_eigenvalues(counted, primals, top_k, max_iter=max_iter, tol=tol,
                              generator=torch.Generator().manual_seed(seed), on_found=lambda: bar.update(1))
        trace = stderr = None
        if probes:
            trace, stderr, _ = hutchinson_trace(counted, primals, probes, generator=torch.Generator().manual_seed(seed),
                                                on_step=lambda: bar.update(1))
    settings = HessianSettings(loss=loss, n=len(x), params=params, num_params=sum(p.numel() for p in primals),
                               top_k=top_k, max_iter=max_iter, tol=tol, probes=probes, seed=seed,
                               batch_size=batch_size, attack=asdict(cfg) if cfg is not None else None)
    return HessianResult(eigenvalues=eig[0], iterations=eig[1], converged=eig[2], trace=trace,
                         trace_stderr=stderr, trace_probes=probes, settings=settings, label=label,
                         seconds=time.perf_counter() - started, hvp_calls=calls)
