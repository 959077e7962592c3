"""RAT, Randomized Adversarial Training (Jin et al., CVPR 2023), as a wrapper of any base method.

Weights are treated as w + u, u ~ N(0, sigma^2 I). The practical algorithm (METHOD.md):

1. craft x_adv with the base method's attack on a *functional* noisy copy of the weights
   (Gaussian noise on the conv weights; the live parameters are never touched);
2. from the clean and adversarial head gradients G = dCE/dW (W the last linear layer), take
   per-class sums s = G 1_d, first-order statistic t1 = |s|, second-order t2 = s * s;
3. turn gaps between them into per-class soft-target tables T (``soft_target_table``);
4. loss = base loss with its classification term scaled by (1 - alpha)
          + alpha   * 1/2 [KL(T(t1_nat - t1_adv)[y] || p(x_adv)) + KL(T(t1_adv - t1_nat)[y] || p(x))]
          + alpha/2 * 1/2 [KL(T(t2_nat - t2_adv)[y] || p(x_adv)) + KL(T(t2_adv - t2_nat)[y] || p(x))].

For cross-entropy, G = (p - onehot(y))^T h / B, so s = (p - onehot(y))^T (h 1_d) / B comes from
logits and features the loss already computed: no extra forward or backward pass.

Deliberate deviations from the authors' script (each documented in docs/method.md):
``pairing="fixed"`` (default) pairs the second-order clean-minus-adversarial table with the
adversarial output; ``pairing="reference"`` reproduces the script, which uses the
adversarial-minus-clean table for both outputs. keep = 2 / C for any C >= 2; all-tie gaps
spread uniformly instead of dividing by zero; the head comes from the model's interface.

``taylor="exact-head"`` replaces the soft targets by the Taylor terms themselves for the last
layer, in closed form (``head_taylor_statistics``; docs/method.md, "Exact last-layer terms"):
first order ||G_adv - G_nat||_F, second order the positive part of tr H_adv - tr H_nat, each
relative to the size of the two losses' own terms (default) or scaled by an absolute
``taylor_sigma`` (sigma and sigma^2 / 2).

``taylor="trh"`` is a control for exact-head: the top-layer TrH regulariser of Wang et al. (arXiv
2211.12624), the trace of the Hessian of the *base objective* (TRADES: CE(p, y) + beta KL(p || q);
PGD-AT: CE(q, y); MART's) with respect to the head's weight and bias, in closed form
(``trades_head_trace``, ``ce_head_trace``, ``mart_head_trace``; ``trh_terms``), with a fixed coefficient
``trh_coef`` as in the paper or exact-head's normaliser. ``taylor="adv-trace"`` is the control of earlier
releases (their ``taylor="trh"``): the adversarial cross-entropy's weight trace alone, whatever the base
(``adv_trace_terms``; docs/method.md, "TrH controls").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import kl_to_target
from ..distributed import active, average, unwrap
from ..models import noise_target_names
from ..models.registry import NOISE_TARGETS
from ..weights import gaussian_noisy_params
from .at import AT
from .base import BaseMethod, InvalidSetting, LossOutput, Method, Outputs, float32_terms, forward_outputs
from .mart import BOOST_MARGIN, LOG_EPS, MART, WEIGHT_MARGIN, runner_up
from .trades import TRADES

PAIRINGS = ("fixed", "reference")
TAYLOR_MODES = ("analytic", "autograd", "exact-head", "trh", "adv-trace")
# the modes with last-layer terms in closed form instead of soft targets
HEAD_MODES = ("exact-head", "trh", "adv-trace")
# the modes that are one trace term alone (no first-order term to keep)
TRACE_MODES = ("trh", "adv-trace")
SOFT_TARGET_MODES = ("analytic", "autograd")
CLEAN_TERMS = ("auto", "always", "never")


def head_gradient_sums(logits: Tensor, feats: Tensor, y: Tensor) -> Tensor:
    """s = (dCE/dW) 1_d per class, analytically: (softmax(logits) - onehot(y))^T (h 1_d) / B."""
    residual = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return residual.T @ feats.sum(dim=1) / len(y)


def head_gradient_sums_autograd(head: nn.Linear, feats: Tensor, y: Tensor) -> Tensor:
    """The same statistic by differentiating CE(head(h), y) with respect to W (an independent check)."""
    with torch.enable_grad():
        loss = F.cross_entropy(head(feats), y)
        (grad,) = torch.autograd.grad(loss, head.weight)
    return grad.sum(dim=1)


def head_taylor_statistics(logits: Tensor, feats: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The batch-mean cross-entropy's gradient G (C x d) and Hessian trace with respect to W, in closed form.

    G = (p - onehot(y))^T h / B; one example's Hessian is (diag(p) - p p^T) kron h h^T, whose trace
    is (sum_k p_k (1 - p_k)) ||h||^2, averaged over the batch. Both stay differentiable through p
    and h (the logits and features the loss already has): no extra forward or backward pass."""
    p = torch.softmax(logits, dim=1)
    grad = (p - F.one_hot(y, logits.shape[1]).to(logits.dtype)).T @ feats / len(y)
    trace = ((p * (1 - p)).sum(dim=1) * (feats * feats).sum(dim=1)).mean()
    return grad, trace


def ce_head_trace(logits: Tensor, feats: Tensor, bias: bool) -> Tensor:
    """The trace of the batch-mean CE(softmax(z), y)'s Hessian with respect to the head (z = W h + b): the
    batch mean of (1 - |p|^2) (|h|^2 + 1 if the head has a bias, else |h|^2). No label enters: the
    logits' Hessian of CE is diag(p) - p p^T whatever y; the bias is a weight on a constant feature 1."""
    p = torch.softmax(logits, dim=1)
    return ((1 - (p * p).sum(dim=1)) * ((feats * feats).sum(dim=1) + float(bias))).mean()


def head_trace(tr_a: Tensor, tr_b: Tensor, tr_c: Tensor, feats_clean: Tensor, feats_adv: Tensor, bias: bool) -> Tensor:
    """The batch mean of tr A |h|^2 + tr B |h'|^2 + 2 tr C h.h' (each Gram + 1 with a bias, a weight on a
    constant feature 1): the trace of A kron h h^T + B kron h' h'^T + C kron h h'^T + C^T kron h' h^T, one
    example's Hessian with respect to the head of a loss of z = W h + b and z' = W h' + b whose logits'
    Hessian blocks (zz, z'z', zz') have the traces tr A, tr B, tr C (per example)."""
    one = float(bias)
    return (tr_a * ((feats_clean * feats_clean).sum(dim=1) + one) + tr_b * ((feats_adv * feats_adv).sum(dim=1) + one)
            + 2 * tr_c * ((feats_clean * feats_adv).sum(dim=1) + one)).mean()


def trades_head_trace(logits_clean: Tensor, feats_clean: Tensor, logits_adv: Tensor, feats_adv: Tensor,
                      beta: float, bias: bool) -> Tensor:
    """The trace of the Hessian of TRADES' objective, mean CE(p, y) + beta KL(p || q), with respect to the
    head (z = W h + b at x, z' = W h' + b at x_adv, p = softmax(z), q = softmax(z')), in closed form.

    With A, B, C the logits' Hessian blocks (zz, z'z', zz') of one example's loss, the trace is
    tr A |h|^2 + tr B |h'|^2 + 2 tr C h.h' (``head_trace``). CE: A = diag(p) - p p^T. KL, with
    d = log p - log q: B = diag(q) - q q^T, C = -(diag(p) - p p^T), and
    tr A = 1 - |p|^2 - 2 sum_k p_k^2 (d_k - KL). Per example:
    (1 - |p|^2)|h|^2 + beta [(1 - |p|^2 - 2 sum_k p_k^2 (d_k - KL))|h|^2 + (1 - |q|^2)|h'|^2 - 2 (1 - |p|^2) h.h'],
    averaged over the batch; at p = q the KL part is beta (1 - |p|^2) |h - h'|^2 (docs/method.md)."""
    p, q = torch.softmax(logits_clean, dim=1), torch.softmax(logits_adv, dim=1)
    d = torch.log_softmax(logits_clean, dim=1) - torch.log_softmax(logits_adv, dim=1)
    kl = (p * d).sum(dim=1, keepdim=True)
    spread_p, spread_q = 1 - (p * p).sum(dim=1), 1 - (q * q).sum(dim=1)
    kl_clean = spread_p - 2 * (p * p * (d - kl)).sum(dim=1)
    return head_trace(spread_p + beta * kl_clean, beta * spread_q, -beta * spread_p, feats_clean, feats_adv, bias)


def mart_head_trace(logits_clean: Tensor, feats_clean: Tensor, logits_adv: Tensor, feats_adv: Tensor, y: Tensor,
                    beta: float, bias: bool) -> Tensor:
    """The trace of the Hessian of MART's objective (``MART.terms``, its constants included) with respect to
    the head, in closed form: BCE(q) + beta mean[(c_w - p_y) KL_eps(p || q)], with the runner-up class r
    held fixed (an argmax: no derivative), BCE = CE(q, y) - log(c_b - q_r) and KL_eps's log q taken as
    log(q + eps). Per example tr A |h|^2 + tr B |h'|^2 + 2 tr C h.h' (``head_trace``), with the product
    rule for the weight w = c_w - p_y of the KL (docs/method.md, "TrH controls")."""
    p, q = torch.softmax(logits_clean, dim=1), torch.softmax(logits_adv, dim=1)
    spread_p, spread_q, qq = 1 - (p * p).sum(dim=1), 1 - (q * q).sum(dim=1), (q * q).sum(dim=1, keepdim=True)
    # tr of the logits' Hessian of a softmax component q_k, and |grad q_k|^2 (|e_k - q|^2 = 1 - 2 q_k + |q|^2)
    dist_q = 1 - 2 * q + qq
    hess_q, grad_q2 = q * (dist_q - spread_q[:, None]), q * q * dist_q
    r = runner_up(q, y)[:, None]
    gap = BOOST_MARGIN + LOG_EPS - q.gather(1, r).squeeze(1)
    boost = hess_q.gather(1, r).squeeze(1) / gap + grad_q2.gather(1, r).squeeze(1) / (gap * gap)
    # KL_eps(p || q) = sum p log p - sum p log(q + eps): its blocks A (zz), B (z'z'), C (zz')
    qe = q + LOG_EPS
    d = torch.log_softmax(logits_clean, dim=1) - torch.log(qe)
    kl = (p * d).sum(dim=1, keepdim=True)
    grad_kl_clean = p * (d - kl)
    tr_a = spread_p - 2 * (p * grad_kl_clean).sum(dim=1)
    tr_b = -(p * (hess_q / qe - grad_q2 / (qe * qe))).sum(dim=1)
    rho = p * q / qe
    tr_c = -(rho * (1 - p - q + (p * q).sum(dim=1, keepdim=True))).sum(dim=1)
    grad_kl_adv = q * rho.sum(dim=1, keepdim=True) - rho
    # the weight w = c_w - p_y: grad w = -p_y (e_y - p), tr of its Hessian -p_y (|e_y - p|^2 - (1 - |p|^2))
    p_y = p.gather(1, y[:, None]).squeeze(1)
    weight = WEIGHT_MARGIN - p_y
    hess_w = -p_y * (1 - 2 * p_y + (p * p).sum(dim=1) - spread_p)

    def grad_w_dot(v: Tensor) -> Tensor:
        return -p_y * (v.gather(1, y[:, None]).squeeze(1) - (p * v).sum(dim=1))

    zz = weight * tr_a + 2 * grad_w_dot(grad_kl_clean) + kl.squeeze(1) * hess_w
    cross = weight * tr_c + grad_w_dot(grad_kl_adv)
    return head_trace(beta * zz, spread_q + boost + beta * weight * tr_b, beta * cross, feats_clean, feats_adv, bias)


def global_batch_value(t: Tensor) -> Tensor:
    """A batch mean of the whole global batch under data parallelism, differentiable through this
    rank's shard: DistributedDataParallel's averaging of the gradients then gives the gradient of the
    global value exactly (each rank's shard mean enters the global mean with weight 1 / world size).
    The identity in a single process."""
    if not active():
        return t
    return t + (average(t.detach()) - t.detach())


def soft_target_table(gap: Tensor, keep: float | None = None) -> Tensor:
    """C x C table: row k keeps ``keep`` (default 2 / C) on class k and spreads 1 - keep over
    the other classes in proportion to v = gap - min(gap), renormalised without the diagonal.

    Where there is nothing to be proportional to (all gaps tie, or only the diagonal's class
    is above the minimum) the rest is spread uniformly: the authors' script divides by zero.
    """
    num_classes = gap.numel()
    if num_classes < 2:
        raise ValueError(f"soft targets need at least 2 classes, got {num_classes}")
    keep = 2.0 / num_classes if keep is None else keep
    v = (gap - gap.min()).detach()
    eye = torch.eye(num_classes, dtype=gap.dtype, device=gap.device)
    off = v.expand(num_classes, num_classes) * (1 - eye)
    row_sums = off.sum(dim=1, keepdim=True)
    uniform = (1 - eye) / (num_classes - 1)
    spread = torch.where(row_sums > 0, off / row_sums.clamp_min(torch.finfo(gap.dtype).tiny), uniform)
    return keep * eye + (1 - keep) * spread


@dataclass
class RAT(Method):
    """Randomized Adversarial Training around ``base`` (AT, TRADES or MART).

    ``taylor``: "analytic" (default) and "autograd" are the authors' soft-target terms (the head
    statistics by closed form or by autograd, the same numbers); "exact-head" the last layer's
    Taylor terms themselves (``exact_head_terms``); "trh" the TrH regulariser of the base objective,
    the trace of its head Hessian (``trh_terms``; TRADES, AT, MART), and "adv-trace" the adversarial
    cross-entropy's trace alone (``adv_trace_terms``, earlier releases' "trh"), both controls for exact-head.

    Example::

        method = RAT(TRADES(attack=trades_attack(8 / 255)), alpha=0.2, sigma=1e-4)
        method.step(model, optimizer, x, y)
    """

    base: BaseMethod = field(default=None)  # type: ignore[assignment]
    alpha: float = 0.2
    sigma: float = 1e-4
    order: tuple[int, ...] = (1, 2)
    pairing: str = "fixed"
    noise_layers: str = "conv"
    taylor: str = "analytic"
    # exact-head, trh and adv-trace only: None (default) = each Taylor term relative to the size of the two
    # losses' own terms of that order, so sigma cancels; a float = absolute noise scale on the head's
    # weights, terms sigma ||dG|| and sigma^2 / 2 [dtr H]_+ (trh: sigma^2 / 2 tr H_base, adv-trace:
    # sigma^2 / 2 tr H_adv) (docs/method.md, "Exact last-layer terms")
    taylor_sigma: float | None = None
    # trh only: TrH's fixed coefficient, the term is trh_coef * tr H_base (no alpha); None (default) = alpha / 2
    # and exact-head's normaliser or taylor_sigma (docs/method.md, "TrH controls": the regime grid's values)
    trh_coef: float | None = None
    # the soft-target terms on the clean output: "always" as the authors' formula, for every base;
    # "never"; "auto" (default) only when the base supervises the clean output with labels
    # (TRADES), since without a label term there they pull p(x) to the 2 / C soft target and
    # robust accuracy collapses (docs/method.md, "RAT on bases without a clean term")
    clean_terms: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.base, BaseMethod):
            raise TypeError(f"RAT wraps a base method (AT, TRADES, MART), got {type(self.base).__name__}")

        def refuse(setting: str, rule: str) -> InvalidSetting:
            return InvalidSetting("RAT", setting, rule)

        if not 0.0 <= self.alpha <= 1.0:
            raise refuse("alpha", f"must be in [0, 1], got {self.alpha}")
        if self.sigma < 0:
            raise refuse("sigma", f"must be >= 0, got {self.sigma}")
        self.order = tuple(self.order)
        if not self.order or not set(self.order) <= {1, 2} or len(set(self.order)) != len(self.order):
            raise refuse("order", f"must be a non-empty subset of (1, 2) without repeats, got {self.order}")
        if self.pairing not in PAIRINGS:
            raise refuse("pairing", f"must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.noise_layers not in NOISE_TARGETS:
            raise refuse("noise_layers", f"must be one of {NOISE_TARGETS}, got {self.noise_layers!r}")
        if self.taylor not in TAYLOR_MODES:
            raise refuse("taylor", f"must be one of {TAYLOR_MODES}, got {self.taylor!r}")
        if self.clean_terms not in CLEAN_TERMS:
            raise refuse("clean_terms", f"must be one of {CLEAN_TERMS}, got {self.clean_terms!r}")
        if self.taylor_sigma is not None and not self.taylor_sigma > 0:
            raise refuse("taylor_sigma", f"must be > 0 or None, got {self.taylor_sigma}")
        if self.taylor in HEAD_MODES:
            # settings of the soft targets have no meaning here: refuse them rather than ignore them
            if self.clean_terms != "auto":
                raise refuse("clean_terms", f"applies to the soft-target modes {SOFT_TARGET_MODES}; "
                                            f"taylor={self.taylor!r} has head terms, no targets on an output: "
                                            f"leave it 'auto', got {self.clean_terms!r}")
            if self.pairing != "fixed":
                raise refuse("pairing", f"applies to the soft-target modes {SOFT_TARGET_MODES}; "
                                        f"taylor={self.taylor!r} has no soft targets, got {self.pairing!r}")
            if self.taylor in TRACE_MODES and 2 not in self.order:
                raise refuse("order", f"taylor={self.taylor!r} is the second-order trace term alone: order must "
                                      f"include 2 ((2,) and (1, 2) both mean the trace term), got {self.order}")
        elif self.taylor_sigma is not None:
            raise refuse("taylor_sigma", f"applies only to taylor in {HEAD_MODES}, got {self.taylor_sigma} "
                                         f"with taylor={self.taylor!r}")
        if self.trh_coef is not None:
            if self.taylor != "trh":
                raise refuse("trh_coef", f"applies only to taylor='trh', got {self.trh_coef} with taylor={self.taylor!r}")
            if not 0 < self.trh_coef < float("inf"):
                raise refuse("trh_coef", f"must be a finite number > 0 or None, got {self.trh_coef}")
            if self.taylor_sigma is not None:
                raise refuse("trh_coef", f"and taylor_sigma both set the trace's weight: give one, got "
                                         f"trh_coef={self.trh_coef}, taylor_sigma={self.taylor_sigma}")
        if self.taylor == "trh" and not isinstance(self.base, (TRADES, AT, MART)):
            raise refuse("taylor", f"'trh' has the closed-form trace of TRADES', PGD-AT's and MART's objectives, not "
                                   f"{type(self.base).__name__}'s; 'adv-trace' is the adversarial cross-entropy's "
                                   f"trace alone, for any base")

    @property
    def uses_clean_terms(self) -> bool:
        """Whether the soft-target terms on the clean output are in the loss (never for the head modes,
        which have no soft targets)."""
        if self.taylor in HEAD_MODES:
            return False
        if self.clean_terms == "auto":
            return self.base.labels_clean
        return self.clean_terms == "always"

    def craft(self, model, x, y, *, generator=None, shard=None):
        """The base attack on a noisy functional copy of the weights (sigma = 0: the plain attack).

        The noise is drawn from the same generator on every rank, so all ranks (and a single
        process) attack the same noisy network."""
        params = None
        if self.sigma > 0:
            net = unwrap(model)
            params = gaussian_noisy_params(net, noise_target_names(net, self.noise_layers), self.sigma, generator)
        return self.base.craft(model, x, y, generator=generator, shard=shard, params=params)

    def statistics(self, model: nn.Module, out: Outputs) -> tuple[Tensor, Tensor]:
        """Per-class head-gradient sums s for the clean and the adversarial batch.

        Means over the batch: under data parallelism they are averaged over the ranks' equal
        shards, so every rank builds the soft targets of the whole global batch."""
        if self.taylor == "autograd":
            head = unwrap(model).head
            stats = (head_gradient_sums_autograd(head, out.feats_clean.detach(), out.y),
                     head_gradient_sums_autograd(head, out.feats_adv.detach(), out.y))
        else:
            stats = (head_gradient_sums(out.logits_clean.detach(), out.feats_clean.detach(), out.y),
                     head_gradient_sums(out.logits_adv.detach(), out.feats_adv.detach(), out.y))
        return average(stats[0]), average(stats[1])

    def taylor_terms(self, s_nat: Tensor, s_adv: Tensor, out: Outputs) -> dict[str, Tensor]:
        """The first- and second-order soft-target KL terms, weighted by alpha and alpha / 2; the
        clean-output halves only where ``uses_clean_terms`` (the adversarial halves keep their weight)."""
        y, terms, clean = out.y, {}, self.uses_clean_terms

        def pair(to_adv: Tensor, to_clean: Tensor) -> Tensor:
            term = kl_to_target(out.logits_adv, to_adv, "mean")
            return term + kl_to_target(out.logits_clean, to_clean, "mean") if clean else term

        if 1 in self.order:
            t1_nat, t1_adv = s_nat.abs(), s_adv.abs()
            terms["taylor1"] = self.alpha * 0.5 * pair(soft_target_table(t1_nat - t1_adv)[y],
                                                       soft_target_table(t1_adv - t1_nat)[y])
        if 2 in self.order:
            t2_nat, t2_adv = s_nat * s_nat, s_adv * s_adv
            adv_minus_nat = soft_target_table(t2_adv - t2_nat)[y]
            to_adv = soft_target_table(t2_nat - t2_adv)[y] if self.pairing == "fixed" else adv_minus_nat
            terms["taylor2"] = self.alpha / 2 * 0.5 * pair(to_adv, adv_minus_nat)
        return terms

    def exact_head_terms(self, out: Outputs) -> dict[str, Tensor]:
        """The last layer's Taylor terms of the adversarial-minus-clean loss gap, weighted alpha and alpha / 2.

        First order: ||G_adv - G_nat||_F, the spread of u . (grad L_adv - grad L_nat) per unit sigma.
        Second order: [tr H_adv - tr H_nat]_+, the positive part of the curvature gap (its negative
        part lowers the expected gap, but rewarding it would reward a sharper clean loss).
        With ``taylor_sigma`` None each is divided by the same quantity for the two losses
        (||G_adv|| + ||G_nat||, tr H_adv + tr H_nat; both terms then lie in [0, 1]), held constant
        in the step so that the step never sharpens the losses to shrink the ratio; otherwise they
        are scaled by sigma and sigma^2 / 2."""
        g_nat, tr_nat = map(global_batch_value, head_taylor_statistics(out.logits_clean, out.feats_clean, out.y))
        g_adv, tr_adv = map(global_batch_value, head_taylor_statistics(out.logits_adv, out.feats_adv, out.y))
        sigma, norm, terms = self.taylor_sigma, torch.linalg.matrix_norm, {}

        def relative(size: Tensor) -> Tensor:
            return 1 / size.detach().clamp_min(torch.finfo(size.dtype).tiny)

        if 1 in self.order:
            scale = relative(norm(g_adv) + norm(g_nat)) if sigma is None else sigma
            terms["taylor1"] = self.alpha * scale * norm(g_adv - g_nat)
        if 2 in self.order:
            scale = relative(tr_adv + tr_nat) if sigma is None else sigma * sigma / 2
            terms["taylor2"] = self.alpha / 2 * scale * F.relu(tr_adv - tr_nat)
        return terms

    def _trace_scale(self, out: Outputs) -> Tensor | float:
        """alpha / 2 times exact-head's second-order factor: sigma^2 / 2, or 1 / (tr H_adv + tr H_nat) of the
        cross-entropy's weight traces, held constant in the step (no graph through either pass)."""
        sigma = self.taylor_sigma
        if sigma is not None:
            return self.alpha / 2 * sigma * sigma / 2
        _, tr_nat = head_taylor_statistics(out.logits_clean.detach(), out.feats_clean.detach(), out.y)
        _, tr_adv = head_taylor_statistics(out.logits_adv.detach(), out.feats_adv.detach(), out.y)
        return self.alpha / 2 / (average(tr_adv) + average(tr_nat)).clamp_min(torch.finfo(tr_adv.dtype).tiny)

    def adv_trace_terms(self, out: Outputs) -> dict[str, Tensor]:
        """The control of earlier releases (their taylor="trh"): alpha / 2 times the adversarial
        cross-entropy's weight trace alone, {"adv_trace": ...}, whatever the base.

        Exact-head's second-order term with the clean trace left out: with ``taylor_sigma`` None,
        tr H_adv / (tr H_adv + tr H_nat), the very normaliser of exact-head's term (held constant in
        the step), so that the two modes' gradients differ only by the clean trace's; otherwise
        sigma^2 / 2 tr H_adv. ``order`` (2,) and (1, 2) both give this one term."""
        _, tr_adv = head_taylor_statistics(out.logits_adv, out.feats_adv, out.y)
        tr_adv = global_batch_value(tr_adv)
        return {"adv_trace": self._trace_scale(out) * tr_adv}

    def base_head_trace(self, out: Outputs, bias: bool) -> Tensor:
        """The trace of the base objective's Hessian with respect to the head (weight, and bias if
        ``bias``), in closed form: TRADES' CE(p, y) + beta KL(p || q), PGD-AT's CE(q, y), MART's."""
        if isinstance(self.base, TRADES):
            return trades_head_trace(out.logits_clean, out.feats_clean, out.logits_adv, out.feats_adv,
                                     self.base.beta, bias)
        if isinstance(self.base, MART):
            return mart_head_trace(out.logits_clean, out.feats_clean, out.logits_adv, out.feats_adv, out.y,
                                   self.base.beta, bias)
        return ce_head_trace(out.logits_adv, out.feats_adv, bias)

    def trh_terms(self, out: Outputs, bias: bool) -> dict[str, Tensor]:
        """TrH (Wang et al.) on the base objective: {"trh": coefficient * tr H_base}, H_base the Hessian of
        the base's own loss (TRADES: CE + beta KL, not scaled by RAT's 1 - alpha) with respect to the
        head's weight and, if ``bias`` (the head has one), its bias.

        The coefficient: ``trh_coef`` (TrH's fixed weight), else alpha / 2 times exact-head's second-order
        factor (``taylor_sigma``'s sigma^2 / 2, or 1 / (tr H_adv + tr H_nat) of the cross-entropy, held
        constant in the step)."""
        trace = global_batch_value(self.base_head_trace(out, bias))
        return {"trh": (self._trace_scale(out) if self.trh_coef is None else self.trh_coef) * trace}

    def loss(self, model, x, x_adv, y) -> LossOutput:
        # the clean pass needs a graph only if a term differentiates it (the base's, the clean-output
        # soft targets, or the exact-head gaps); RAT-AT's soft targets, trh and adv-trace on AT use it for
        # statistics alone
        clean_grad = self.base.needs_clean or self.uses_clean_terms or self.taylor == "exact-head"
        out = forward_outputs(model, x, x_adv, y, with_clean=True, clean_grad=clean_grad)
        # float32 outputs, autocast off: head statistics, soft-target tables and exact-head terms
        # are float32 under any step precision (StepPrecision)
        with float32_terms(y.device.type):
            terms = self.base.terms(out)
            primary = self.base.primary_term
            terms[primary] = (1 - self.alpha) * terms[primary]
            if self.taylor == "exact-head":
                terms.update(self.exact_head_terms(out))
            elif self.taylor == "trh":
                terms.update(self.trh_terms(out, bias=unwrap(model).head.bias is not None))
            elif self.taylor == "adv-trace":
                terms.update(self.adv_trace_terms(out))
            else:
                terms.update(self.taylor_terms(*self.statistics(model, out), out))
        return LossOutput(loss=sum(terms.values()), terms=terms, outputs=out)

    def objective(self, model, x, x_adv, y):
        """AWP around RAT perturbs the weights against the base method's loss, as the authors' script."""
        return self.base.objective(model, x, x_adv, y)
