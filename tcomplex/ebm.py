"""The complexity loss: an energy-based model of gating states (Section 4.3, Appendix J).

L = L_task + lambda * L_complexity,  L_complexity = sum_l H(Sigma_l)        (Eq. 8, 9)

p(sigma_l) is approximated by an energy-based model (Eq. 10, 30)

    p_theta(sigma_l) = exp(f(sigma_l; theta)) q(sigma_l) / Z(theta),

with q a product of Bernoulli priors whose activation rates are tracked by a
moving average (Eq. 31, 41), and f a small network.  Gates are made
differentiable by relaxing ReLU(x) to x * sigmoid(beta x) (the Swish function,
Eq. 40), so sigma = sigmoid(beta x).  Per training batch (Section 4.3):

1. fit theta by maximum likelihood, with negative samples from Langevin
   dynamics started at the batch's (detached) gates (Eq. 35-37);
2. hold theta fixed and add lambda * mean_j sum_l E_theta(sigma_lj) to the task
   loss, with Z treated as a constant (Eq. 38, 39).

Defaults where the paper is silent come from the authors' public code:
beta = 100, the last four gating layers, moving average 0.9 / 0.1 of the
rates, the energy net's output scaled by d / 1000.

How theta_f is fitted (:data:`FITS`, :class:`FitSettings`):

* ``authors`` -- their code: SGD lr 1e-4 (momentum 0.9, weight decay 5e-4),
  every gradient value clipped at 1e-5, one step per batch, 5 Langevin steps of
  dtau = 0.001 started at the batch's gates.  Measured: the energy nets barely
  move, so the penalty is in effect sum_i -log q(sigma^i), about C_l (Eq. 6).
* ``learned`` (the default) -- Adam lr 3e-3 without clipping or weight decay,
  one step per batch, negatives = binary states drawn from the prior q moved by
  one reflected Langevin step of dtau = 0.01 (noise std 0.1), data and negatives
  through f in one batch, an energy regulariser alpha * mean(f(data)^2 +
  f(negatives)^2) with alpha = max(0.8 d^(-3/4), 0.005) that keeps f bounded,
  and the MLP energy net (128-128) on every layer, also the wide ones.
* ``prior`` -- no energy net: E = -log q (the ablation "penalise C_l").

Chosen from measurements (benchmarks/bench_ebm_fit.py; other agents shared the
two cores).  Enumerable layers, d = 16 gates, log Z summed exactly over the 2^16
states, 3 seeds, 300 batches of 128; "closed" = the share of the gap between the
prior's sum_i H(sigma^i) and the exact plug-in entropy that -E[log p_theta]
closes; bits:

=============  ========  =====  ================  =================
data           plug-in   prior  authors (closed)  learned (closed)
=============  ========  =====  ================  =================
two blocks     2.00      16.00  16.01 (0.00)      2.89 (0.93-0.94)
8 prototypes   7.06      14.55  14.56 (0.00)      8.95 (0.72-0.77)
Ising chain    8.23      15.86  15.87 (0.00)      9.96 (0.77)
MNIST layer*   9.28      11.13  11.13 (0.00)      10.95 (0.08-0.12)
=============  ========  =====  ================  =================

(*) 16 gates of mlp_mnist's second layer after 2 epochs: their states are close
to independent, so there is little to close (held-out: prior 11.01, learned
10.95 bits; held-out pseudo-likelihood -0.477 vs -0.458 nats per gate).
Real layers too wide to enumerate (``--wide``, 3 seeds; held-out pseudo-likelihood
per gate, nats, 64 gates, 1000 test images; the gain over the prior): resmlp10's
last four layers (784 gates, prior -0.41..-0.45): authors -0.0003..+0.0000,
learned +0.008..+0.030; resnet20's last four (3136 gates, prior -0.56..-0.58):
authors -0.010..-0.011 (its barely trained 1x1 ConvNet is worse than the prior),
learned -0.000..+0.014.  In single scratch runs on resnet20's final_relu, the
learned fit with the ConvNet energy net gained -0.001, and -0.137 when data and
negatives went through its batch norm separately.
Candidates that failed: Adam with chains started at the data (CD-k, dtau 0.01,
5 or 20 steps) or at the prior without the regulariser diverge (f grows without
bound on states the chains never reach: -E log p_theta of 50-8000 bits); SGD or
Adam at lr 1e-3 with the authors' chains stay at the prior; at d = 16 alpha = 0.1
beat 0.03 (diverges) and 0.3 (closes 0.3); at d = 784 alpha = 0.005 (gain
+0.031) beat 0.1 (+0.004), 0.01 (+0.016), 0.002 (+0.000) and 0.001 (-0.147);
1 Langevin step of 0.01 closed a little more than 5 and costs less.  The chains
are short: the fit is close to contrasting the data with samples of q, refined
by one gradient step.  On real layers the learned model beats the prior by a few
per cent of the pseudo-likelihood only: it learns, but is far from exact there.

Cost (bench_complexity_loss.py --quick, 1 thread, loaded machine): a training
step with the learned fit is 1.51x (resmlp10) and 1.31x (resnet20) a plain
step; with the authors' fit 2.05x and 1.93x.

Langevin on relaxed states in [0, 1] (:func:`langevin`) reflects at 0 and 1;
the step size and noise in use are reported by
:attr:`ComplexityPenalty.langevin_settings` and :meth:`ComplexityPenalty.diagnostics`.
Where the states are enumerable (d <= 20) :func:`exact_fit` gives the exact
check; on any layer :func:`pseudo_log_likelihood` scores held-out states
without Z, for the energy model and for the prior
(:func:`prior_pseudo_log_likelihood`).

Use in any training loop (the ``with`` block puts the ReLUs back, also on errors)::

    with ComplexityPenalty.for_model(model, x_example, lam=1e-3) as penalty:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)     # the forward captures soft gates
            penalty.step_energy_model()             # 1. fit the EBM to this batch
            loss = loss + penalty.loss()            # 2. lambda * L_complexity
            opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tcomplex.estimators import marginal_entropy_sum, plugin_entropy
from tcomplex.gating import record_gates, resolve_layers

__all__ = [
    "SwishGate",
    "relax_relus",
    "restore_relus",
    "BernoulliPrior",
    "EnergyNet",
    "langevin",
    "LayerEBM",
    "FitSettings",
    "FITS",
    "DEFAULT_FIT",
    "resolve_fit",
    "EnergyFitter",
    "fit_energy_model",
    "binary_states",
    "exact_log_partition",
    "exact_fit",
    "pseudo_log_likelihood",
    "prior_pseudo_log_likelihood",
    "ComplexityPenalty",
]

DEFAULT_BETA = 100.0
DEFAULT_LANGEVIN_STEPS = 5
DEFAULT_LANGEVIN_STEP_SIZE = 1e-3
DEFAULT_EBM_LR = 1e-4
DEFAULT_CLIP = 1e-5
WIDE_LAYER = 1024  # above this many gates f is the six-layer 1x1 ConvNet, else an MLP
CONV_WIDTHS = (32, 64, 128, 256, 512, 512)  # the authors' six 1x1 convolutions
MLP_WIDTHS = (128, 128)


class SwishGate(nn.ReLU):
    """ReLU relaxed to ``x * sigmoid(beta * x)`` (Eq. 40).

    It subclasses ``nn.ReLU`` so gate recording still sees a ReLU (hard gate
    ``x > 0``).  While ``capture`` is on, the soft gates sigmoid(beta x) of every
    call are kept, with their graph, in ``gates`` (cleared by the owner).
    """

    def __init__(self, beta: float = DEFAULT_BETA):
        super().__init__(inplace=False)
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = float(beta)
        self.capture = False
        self.gates: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.beta * x)
        if self.capture:
            self.gates.append(gate)
        return x * gate

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def relax_relus(model: nn.Module, modules: Sequence[str], beta: float = DEFAULT_BETA) -> dict[str, nn.Module]:
    """Replace the named ``nn.ReLU`` modules by :class:`SwishGate` in place.

    Returns the replaced modules (name -> original) for :func:`restore_relus`.
    """
    originals: dict[str, nn.Module] = {}
    for name in modules:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no module named {name!r}") from None
        if isinstance(m, SwishGate):
            continue
        if type(m) is not nn.ReLU:
            raise ValueError(f"module {name!r} is a {type(m).__name__}, not an nn.ReLU: only ReLUs are relaxed")
        originals[name] = _set_submodule(model, name, SwishGate(beta))
    return originals


def restore_relus(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Undo :func:`relax_relus`."""
    for name, module in originals.items():
        _set_submodule(model, name, module)


class BernoulliPrior(nn.Module):
    """q(sigma) = prod_i q(sigma_i), q(sigma_i = 1) = p_i (Eq. 31), relaxed as in Eq. 41.

    ``p`` tracks the activation rates (sigma >= 0.5) by a moving average
    p <- (1 - m) p + m p_batch (m = 0.1, the authors' code); the first batch sets p.
    """

    def __init__(self, d: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("p", torch.full((d,), 0.5))
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def update(self, sigma: Tensor) -> None:
        rate = (sigma >= 0.5).float().mean(0)
        if not bool(self.initialised):
            self.p.copy_(rate)
            self.initialised.fill_(True)
        else:
            self.p.mul_(1 - self.momentum).add_(self.momentum * rate)

    def log_prob(self, sigma: Tensor) -> Tensor:
        """log q(sigma) per sample, with q(sigma_i) = 1 - p + sigma_i (2p - 1) (Eq. 41)."""
        p = self.p
        return torch.log(1 - p + sigma * (2 * p - 1) + self.eps).sum(1)


class EnergyNet(nn.Module):
    """f(sigma; theta): sigma [B, d] -> scalar per sample.

    Wide layers (d > 1024): the bottom-up ConvNet of six 1x1 convolutions
    (32-64-128-256-512-512 channels, batch norm, ReLU) on sigma seen as a
    [B, d, 1, 1] map, then a linear read-out.  A 1x1 convolution of a 1x1 map
    is a linear layer and its batch norm a BatchNorm1d, so it is written with
    those (the same function, about 1.6x faster on the CPU).  Narrow layers: an
    MLP (128-128).
    The output is scaled by d / 1000 (the authors' code), so f grows with the
    number of gates like log q does.
    """

    def __init__(self, d: int, widths: Sequence[int] | None = None):
        super().__init__()
        self.d = d
        self.wide = d > WIDE_LAYER if widths is None else len(widths) > 2
        widths = tuple(widths) if widths is not None else (CONV_WIDTHS if self.wide else MLP_WIDTHS)
        layers: list[nn.Module] = []
        prev = d
        for w in widths:
            if self.wide:  # == Conv2d(prev, w, 1, bias=False) + BatchNorm2d(w) on a [B, prev, 1, 1] map
                layers += [nn.Linear(prev, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            else:
                layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, 1)
        self.scale = d / 1000.0
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, sigma: Tensor) -> Tensor:
        if sigma.dim() != 2 or sigma.shape[1] != self.d:
            raise ValueError(f"the energy net expects gates [B, {self.d}], got {tuple(sigma.shape)}")
        return self.head(self.body(sigma)).squeeze(1) * self.scale


def _reflect_unit(x: Tensor) -> Tensor:
    """Fold values into [0, 1] by reflection at 0 and 1 (x -> |x| mod 2, then 2 - x above 1)."""
    x = torch.remainder(x.abs(), 2.0)
    return torch.where(x > 1, 2.0 - x, x)


def langevin(
    energy: Any,
    start: Tensor,
    *,
    steps: int = DEFAULT_LANGEVIN_STEPS,
    step_size: float = DEFAULT_LANGEVIN_STEP_SIZE,
    noise: bool | float = True,
    bounds: Literal["reflect", "clamp", "none"] = "reflect",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Langevin dynamics of Eq. 36, started at ``start`` (detached).

    sigma <- sigma - (dtau / 2) dE/dsigma + c sqrt(dtau) eps, eps ~ N(0, I) drawn per
    sample and per gate, ``c = noise`` (``True`` = 1, Eq. 36; ``False`` = 0, pure
    gradient descent on E).  ``energy(sigma)`` returns E per sample.  Relaxed
    gates live in [0, 1] (Eq. 40, 41: q is only a probability there), so after
    every step the states are folded back: ``"reflect"`` (default; keeps the
    noise symmetric at the walls), ``"clamp"`` or ``"none"`` (unbounded).
    """
    if steps < 0 or step_size <= 0:
        raise ValueError(f"need steps >= 0 and step_size > 0, got {steps}, {step_size}")
    if bounds not in ("reflect", "clamp", "none"):
        raise ValueError(f"bounds must be 'reflect', 'clamp' or 'none', got {bounds!r}")
    scale = float(noise) if not isinstance(noise, bool) else (1.0 if noise else 0.0)
    if scale < 0:
        raise ValueError(f"the noise scale must be >= 0, got {scale}")
    x = start.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        with torch.no_grad():
            x = x - 0.5 * step_size * grad
            if scale > 0:
                x = x + scale * math.sqrt(step_size) * torch.randn(x.shape, generator=generator, device=x.device,
                                                                    dtype=x.dtype)
            if bounds == "reflect":
                x = _reflect_unit(x)
            elif bounds == "clamp":
                x = x.clamp(0.0, 1.0)
        x = x.detach()
    return x


class LayerEBM(nn.Module):
    """The EBM of one gating layer: E(sigma) = -f(sigma) - log q(sigma) (Eq. 32)."""

    def __init__(self, d: int, *, widths: Sequence[int] | None = None, momentum: float = 0.1):
        super().__init__()
        self.d = d
        self.f = EnergyNet(d, widths)
        self.q = BernoulliPrior(d, momentum)

    def energy(self, sigma: Tensor) -> Tensor:
        return -self.f(sigma) - self.q.log_prob(sigma)

    def log_likelihood_unnormalised(self, sigma: Tensor) -> Tensor:
        """f(sigma) + log q(sigma) = log p_theta(sigma) + log Z (Eq. 34)."""
        return -self.energy(sigma)

    def mle_loss(self, sigma: Tensor, negatives: Tensor) -> Tensor:
        """Eq. 37: mean f(negatives) - mean f(data); its gradient is Eq. 35's Monte Carlo estimate."""
        return self.f(negatives).mean() - self.f(sigma).mean()


# ---------------------------------------------------------------------------
# how the energy model is fitted
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FitSettings:
    """How theta_f is fitted per batch (Eq. 35-37).

    optimizer, lr, momentum (SGD momentum or Adam's beta1), weight_decay,
    clip_grad (clip every gradient value to +-clip_grad; None: no clipping),
    mle_steps (optimiser steps per training batch, each with fresh negatives),
    langevin_steps, langevin_step_size (dtau of Eq. 36), langevin_noise (the
    factor c of the noise c sqrt(dtau) eps; 1 is Eq. 36), bounds (see
    :func:`langevin`), negatives ("data": chains start at the batch's gates, as
    the authors; "prior": at binary states drawn from q, so the chains visit
    gating patterns that the data do not have), energy_reg (adds
    alpha * mean(f(data)^2 + f(negatives)^2) to the loss of a layer of d gates,
    alpha = max(energy_reg * d^(-3/4), energy_reg_min), keeping f bounded when
    the chains do not reach the model's modes; 0 in Eq. 37), joint_batch (data and negatives go through
    f in one batch, so that the batch norm of the wide layers' energy net
    normalises both with the same statistics; the authors' code: separately),
    energy_widths (the energy net's hidden widths for every layer, e.g. (128, 128)
    for an MLP also on wide layers; None: the six-layer 1x1 ConvNet above
    :data:`WIDE_LAYER` gates and the MLP below, as the authors), use_f (False:
    the energy is -log q alone, f is neither fitted nor used: the penalty becomes
    sum_i -log q(sigma^i), about C_l of Eq. 6, the ablation without an energy net).
    """

    name: str
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = DEFAULT_EBM_LR
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad: float | None = DEFAULT_CLIP
    mle_steps: int = 1
    langevin_steps: int = DEFAULT_LANGEVIN_STEPS
    langevin_step_size: float = DEFAULT_LANGEVIN_STEP_SIZE
    langevin_noise: float = 1.0
    bounds: Literal["reflect", "clamp", "none"] = "reflect"
    negatives: Literal["data", "prior"] = "data"
    energy_reg: float = 0.0
    energy_reg_min: float = 0.0
    joint_batch: bool = False
    energy_widths: tuple[int, ...] | None = None
    use_f: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.negatives not in ("data", "prior"):
            raise ValueError(f"negatives must be 'data' or 'prior', got {self.negatives!r}")
        if self.bounds not in ("reflect", "clamp", "none"):
            raise ValueError(f"bounds must be 'reflect', 'clamp' or 'none', got {self.bounds!r}")
        if not (self.lr > 0 and self.mle_steps >= 1 and self.langevin_steps >= 0 and self.langevin_step_size > 0
                and self.langevin_noise >= 0):
            raise ValueError(f"fit {self.name!r}: need lr > 0, mle_steps >= 1, langevin_steps >= 0, "
                             f"langevin_step_size > 0 and langevin_noise >= 0, got {self}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or None, got {self.clip_grad}")

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Langevin noise per step and gate, c sqrt(dtau)."""
        return self.langevin_noise * math.sqrt(self.langevin_step_size)

    def summary(self) -> dict[str, Any]:
        """The settings, with the Langevin noise standard deviation per step."""
        return {**dataclasses.asdict(self), "langevin_noise_std": self.noise_std}


#: The named fits.  ``authors``: the authors' public code (SGD lr 1e-4, momentum
#: 0.9, weight decay 5e-4, every gradient value clipped at 1e-5, one step per
#: batch, 5 Langevin steps of 0.001 started at the data).  ``learned``: chosen
#: from the measurements of benchmarks/bench_ebm_fit.py (see the module docstring):
#: Adam, prior-started negatives with one reflected Langevin step, the energy
#: regulariser, one joint batch, the MLP energy net on every layer.
#: ``prior``: no energy net, E = -log q (the ablation "penalise C_l").
FITS: dict[str, FitSettings] = {
    "authors": FitSettings("authors"),
    "learned": FitSettings("learned", optimizer="adam", lr=3e-3, momentum=0.9, weight_decay=0.0, clip_grad=None,
                           mle_steps=1, langevin_steps=1, langevin_step_size=1e-2, langevin_noise=1.0,
                           negatives="prior", energy_reg=0.8, energy_reg_min=0.005, joint_batch=True,
                           energy_widths=MLP_WIDTHS),
    "prior": FitSettings("prior", use_f=False),
}
DEFAULT_FIT = "learned"


def resolve_fit(fit: str | FitSettings, **overrides: Any) -> FitSettings:
    """A :class:`FitSettings` from a name of :data:`FITS` (or settings), with field overrides (None = keep)."""
    if isinstance(fit, FitSettings):
        base = fit
    elif fit in FITS:
        base = FITS[fit]
    else:
        raise ValueError(f"unknown energy-model fit {fit!r}; known: {sorted(FITS)} (or pass a FitSettings)")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(FitSettings)})
    if unknown:
        raise ValueError(f"unknown fit setting(s) {unknown}")
    if overrides:
        base = dataclasses.replace(base, **overrides)
    return base


class EnergyFitter:
    """Fits a list of layer EBMs by maximum likelihood with Langevin negatives (Eq. 35-37)."""

    def __init__(self, ebms: nn.ModuleList, settings: FitSettings, generator: torch.Generator):
        self.ebms = ebms
        self.settings = settings
        self.generator = generator
        params = list(ebms.parameters())
        if settings.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(settings.momentum, 0.999),
                                              weight_decay=settings.weight_decay)

    def _starts(self, ebm: LayerEBM, s: Tensor) -> Tensor:
        if self.settings.negatives == "data":
            return s
        u = torch.rand(s.shape, generator=self.generator, device=s.device, dtype=s.dtype)
        return (u < ebm.q.p).to(s.dtype)

    def step(self, sigmas: Sequence[Tensor], *, update_prior: bool = True) -> float:
        """Update the priors' rates on ``sigmas`` (one [B, d_l] batch per layer, detached) and
        take ``mle_steps`` optimiser steps of Eq. 37; returns the last MLE loss (summed over layers)."""
        st = self.settings
        if update_prior:
            for ebm, s in zip(self.ebms, sigmas):
                ebm.q.update(s)
        if not st.use_f:
            return 0.0
        loss = torch.zeros(())
        for _ in range(st.mle_steps):
            self.optimizer.zero_grad(set_to_none=True)
            losses = []
            for ebm, s in zip(self.ebms, sigmas):
                ebm.eval()
                neg = langevin(ebm.energy, self._starts(ebm, s), steps=st.langevin_steps,
                               step_size=st.langevin_step_size, noise=st.langevin_noise, bounds=st.bounds,
                               generator=self.generator)
                ebm.train()
                if st.energy_reg > 0 or st.joint_batch:
                    if st.joint_batch:
                        f_pos, f_neg = ebm.f(torch.cat([s, neg])).split([len(s), len(neg)])
                    else:
                        f_pos, f_neg = ebm.f(s), ebm.f(neg)
                    alpha = max(st.energy_reg * ebm.d ** -0.75, st.energy_reg_min)
                    losses.append(f_neg.mean() - f_pos.mean() + alpha * (f_pos.pow(2).mean() + f_neg.pow(2).mean()))
                else:
                    losses.append(ebm.mle_loss(s, neg))
            loss = torch.stack(losses).sum()
            loss.backward()
            if st.clip_grad is not None:
                nn.utils.clip_grad_value_(self.ebms.parameters(), st.clip_grad)
            self.optimizer.step()
        for e in self.ebms:
            e.eval()
        return float(loss.detach())


def fit_energy_model(
    ebm: LayerEBM,
    states: Tensor,
    fit: str | FitSettings = DEFAULT_FIT,
    *,
    iters: int = 300,
    batch_size: int = 128,
    seed: int = 0,
) -> LayerEBM:
    """Fit ``ebm`` to gating states [n, d] in [0, 1] as training would: ``iters`` batches of
    ``batch_size`` drawn with replacement, each one :meth:`EnergyFitter.step` (Eq. 35-37).

    ``ebm`` is built by the caller: ``LayerEBM(d, widths=resolve_fit(fit).energy_widths)``
    gives the energy net a :class:`ComplexityPenalty` with that fit would use."""
    if states.dim() != 2 or states.shape[1] != ebm.d:
        raise ValueError(f"states must be [n, {ebm.d}], got {tuple(states.shape)}")
    g = torch.Generator(device=states.device).manual_seed(seed)
    fitter = EnergyFitter(nn.ModuleList([ebm]), resolve_fit(fit), g)
    states = states.detach().float()
    for _ in range(iters):
        idx = torch.randint(0, len(states), (batch_size,), generator=g, device=states.device)
        fitter.step([states[idx]])
    return ebm


# ---------------------------------------------------------------------------
# how well it fits: exact on small layers, pseudo-likelihood on any
# ---------------------------------------------------------------------------
#: at most this many gates are enumerated (2^20 states)
MAX_ENUMERATED = 20


def binary_states(d: int) -> Tensor:
    """All 2^d binary gating states, [2^d, d] float (d <= 20)."""
    if not 1 <= d <= MAX_ENUMERATED:
        raise ValueError(f"enumerating 2^d states needs 1 <= d <= {MAX_ENUMERATED}, got d = {d}; use "
                         "pseudo_log_likelihood for wider layers")
    codes = torch.arange(2 ** d).unsqueeze(1)
    return ((codes >> torch.arange(d - 1, -1, -1)) & 1).float()


@torch.no_grad()
def exact_log_partition(ebm: LayerEBM, *, chunk: int = 8192) -> float:
    """log Z = log sum_sigma exp(f(sigma)) q(sigma) over the 2^d binary states (Eq. 30), in nats.

    The model is taken as a distribution over binary gating states, the states
    whose entropy Eq. 9 penalises; q uses the relaxed form of Eq. 41 (exact at 0/1).
    """
    was = ebm.training
    ebm.eval()
    try:
        states = binary_states(ebm.d)
        dev = next(iter(ebm.parameters())).device
        parts = [(-ebm.energy(states[i:i + chunk].to(dev))).double() for i in range(0, len(states), chunk)]
        return float(torch.logsumexp(torch.cat(parts), 0))
    finally:
        ebm.train(was)


@torch.no_grad()
def exact_fit(ebm: LayerEBM, states: Tensor, *, base: float = 2.0) -> dict[str, float]:
    """How well ``ebm`` fits binary ``states`` [n, d] (d <= 20), all in bits (``base``):

    * ``model``: -mean_j log p_theta(sigma_j) with the exact log Z (the EBM's
      estimate of H(Sigma), Eq. 38; a cross-entropy, so >= ``plugin``);
    * ``plugin``: the exact entropy of the empirical distribution of ``states``;
    * ``prior``: sum_i H(sigma^i) of the observed rates (C_l, Eq. 6: what
      penalising -log q amounts to);
    * ``closed``: (prior - model) / (prior - plugin), the share of the gap between
      the independent prior and the truth that the energy model closes (1 = all).
    """
    s = states.detach().float()
    if s.dim() != 2 or s.shape[1] != ebm.d:
        raise ValueError(f"states must be [n, {ebm.d}], got {tuple(s.shape)}")
    if not torch.all((s == 0) | (s == 1)):
        raise ValueError("exact_fit needs binary states (0/1): round soft gates first (sigma >= 0.5)")
    was = ebm.training
    ebm.eval()
    try:
        log_z = exact_log_partition(ebm)
        dev = next(iter(ebm.parameters())).device
        nll = float(ebm.energy(s.to(dev)).double().mean()) + log_z
    finally:
        ebm.train(was)
    model = nll / math.log(base)
    plug = float(plugin_entropy(s, base=base))
    prior = marginal_entropy_sum(s, base=base)
    gap = prior - plug
    return {"model": model, "plugin": plug, "prior": prior,
            "closed": (prior - model) / gap if gap > 1e-9 else float("nan"), "log_z": log_z}


@torch.no_grad()
def pseudo_log_likelihood(
    energy: Callable[[Tensor], Tensor],
    states: Tensor,
    *,
    gates: int | None = 256,
    seed: int = 0,
    chunk: int = 256,
) -> float:
    """Mean per-gate pseudo-log-likelihood of binary ``states`` [n, d], in nats (Besag 1975).

    PL = mean_j mean_i log p(sigma_j^i | sigma_j^{-i}), with
    p(sigma^i | sigma^{-i}) = 1 / (1 + exp(E(sigma) - E(sigma with gate i flipped))),
    so the constant log Z of Eq. 30 cancels: a proper score that compares an
    energy model (``energy = ebm.energy``, Eq. 32) with the prior alone
    (:func:`prior_pseudo_log_likelihood`) on held-out gating states of a layer
    too wide to enumerate.  Higher is better; 0 is a perfect prediction of every
    gate from the others, -log 2 a coin.  ``gates``: average over this many
    randomly chosen gates (seeded; ``None`` = all d, which costs d + 1 energy
    evaluations per state).
    """
    s = states.detach().float()
    if s.dim() != 2:
        raise ValueError(f"states must be [n, d], got {tuple(s.shape)}")
    if not torch.all((s == 0) | (s == 1)):
        raise ValueError("the pseudo-likelihood needs binary states (0/1): round soft gates first (sigma >= 0.5)")
    n, d = s.shape
    if gates is None or gates >= d:
        idx = torch.arange(d)
    else:
        if gates < 1:
            raise ValueError(f"gates must be >= 1 or None, got {gates}")
        idx = torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:gates]
    e0 = torch.cat([energy(s[i:i + chunk]) for i in range(0, n, chunk)]).double()
    total = torch.zeros((), dtype=torch.float64)
    for i in idx.tolist():
        flipped = s.clone()
        flipped[:, i] = 1 - flipped[:, i]
        e1 = torch.cat([energy(flipped[k:k + chunk]) for k in range(0, n, chunk)]).double()
        # log p(sigma^i | rest) = -E0 - logsumexp(-E0, -E1) = -softplus(E0 - E1)
        total += -torch.nn.functional.softplus(e0 - e1).sum()
    return float(total / (n * len(idx)))


def prior_pseudo_log_likelihood(prior: BernoulliPrior, states: Tensor, **kwargs: Any) -> float:
    """:func:`pseudo_log_likelihood` of the prior q alone (Eq. 31): the energy -log q(sigma)."""
    return pseudo_log_likelihood(lambda s: -prior.log_prob(s), states, **kwargs)


# ---------------------------------------------------------------------------
# the penalty
# ---------------------------------------------------------------------------
class ComplexityPenalty:
    """lambda * L_complexity on chosen gating layers of a model (Eq. 8, 38).

    A context manager, like :class:`tcomplex.GateRecorder`: the chosen ReLU
    layers are relaxed to Swish gates on construction, and leaving the ``with``
    block (also on an exception) puts the original ReLUs back and removes the hook::

        with ComplexityPenalty.for_model(model, x0, lam=1e-3) as penalty:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                penalty.step_energy_model()
                loss = loss + penalty.loss()
                ...

    Per batch: run the model's forward (it captures the soft gates), call
    :meth:`step_energy_model`, then add :meth:`loss` to the task loss.

    ``fit``: how the energy nets are fitted, a name of :data:`FITS` or a
    :class:`FitSettings`; the keyword overrides (``langevin_steps``, ``ebm_lr``,
    ...) replace single settings.  ``every``: add the penalty only at every k-th
    call of :meth:`loss` (the authors' code: 10; the energy model is fitted at
    every batch either way); ``per_position``: divide a convolutional layer's
    energy by its number of spatial positions H x W (the authors' code).
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Sequence[tuple[str, int]],
        widths: Sequence[int],
        *,
        lam: float | None = None,
        log10_lam: float | None = None,
        layer_names: Sequence[str] | None = None,
        fit: str | FitSettings = DEFAULT_FIT,
        beta: float = DEFAULT_BETA,
        langevin_steps: int | None = None,
        langevin_step_size: float | None = None,
        langevin_noise: float | None = None,
        ebm_optimizer: str | None = None,
        ebm_lr: float | None = None,
        ebm_momentum: float | None = None,
        ebm_weight_decay: float | None = None,
        clip_grad: float | None | Literal["keep"] = "keep",
        mle_steps: int | None = None,
        negatives: str | None = None,
        rate_momentum: float = 0.1,
        energy_widths: Sequence[int] | None = None,
        every: int = 1,
        per_position: bool = False,
        seed: int = 0,
    ):
        self.lam = _lambda(lam, log10_lam)
        if every < 1:
            raise ValueError(f"every must be >= 1 (penalise every k-th batch), got {every}")
        overrides: dict[str, Any] = dict(
            langevin_steps=langevin_steps, langevin_step_size=langevin_step_size, langevin_noise=langevin_noise,
            optimizer=ebm_optimizer, lr=ebm_lr, momentum=ebm_momentum, weight_decay=ebm_weight_decay,
            mle_steps=mle_steps, negatives=negatives)
        settings = resolve_fit(fit, **overrides)
        if clip_grad != "keep":
            settings = dataclasses.replace(settings, clip_grad=clip_grad)
        self.settings = settings
        self.model = model
        self.targets = list(modules)  # (module name, call index)
        if len(widths) != len(self.targets):
            raise ValueError(f"{len(self.targets)} layers but {len(widths)} widths")
        names = list(layer_names) if layer_names is not None else [
            m if c == 0 else f"{m}#{c}" for m, c in self.targets]
        if len(names) != len(self.targets):
            raise ValueError(f"{len(self.targets)} layers but {len(names)} layer names")
        self.layer_names: list[str] = names
        self.every = int(every)
        self.per_position = bool(per_position)
        self._calls = 0
        device = next(iter(model.parameters())).device
        if energy_widths is None and settings.energy_widths is not None:
            energy_widths = settings.energy_widths
        self.ebms = nn.ModuleList(
            [LayerEBM(d, widths=energy_widths, momentum=rate_momentum) for d in widths]
        ).to(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.fitter = EnergyFitter(self.ebms, settings, self.generator)
        self.optimizer = self.fitter.optimizer
        self._last: dict[str, float] = {}
        self._removed = False
        self.originals = relax_relus(model, sorted({m for m, _ in self.targets}), beta)
        try:
            self._swish = {m: model.get_submodule(m) for m, _ in self.targets}
            for s in self._swish.values():
                s.capture = True
            self._hook = model.register_forward_pre_hook(self._clear)
        except BaseException:
            restore_relus(model, self.originals)
            raise

    # -- construction --------------------------------------------------------------
    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        example: Tensor,
        *,
        layers: Sequence[str | int] = (-4, -3, -2, -1),
        lam: float | None = None,
        log10_lam: float | None = None,
        **kwargs: Any,
    ) -> ComplexityPenalty:
        """Penalise the given ReLU gating layers of ``model`` (names or positions,
        default the last four, as in the paper); ``example`` is a small input batch
        used to discover the gating layers and their widths."""
        _lambda(lam, log10_lam)
        was = model.training
        model.eval()
        try:
            probe = record_gates(model, example, kinds=("relu",))
        finally:
            model.train(was)
        try:
            chosen = resolve_layers(probe.names, layers)
        except ValueError as e:
            raise ValueError(f"complexity loss: {e} (only ReLU gating layers can be penalised)") from None
        targets = [(probe.info[n].module, probe.info[n].call) for n in chosen]
        widths = [probe.info[n].width for n in chosen]
        return cls(model, targets, widths, lam=lam, log10_lam=log10_lam, layer_names=chosen, **kwargs)

    def __enter__(self) -> ComplexityPenalty:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _clear(self, module: nn.Module, args: Any) -> None:
        for s in self._swish.values():
            s.gates.clear()

    def _captured(self) -> list[Tensor]:
        return [g.flatten(1) for g in self._captured_raw()]

    def _captured_raw(self) -> list[Tensor]:
        if self._removed:
            raise RuntimeError("this ComplexityPenalty was removed (its ReLUs are restored): build a new one")
        out = []
        for (name, call), ebm in zip(self.targets, self.ebms):
            gates = self._swish[name].gates
            if len(gates) <= call:
                raise RuntimeError(
                    f"no soft gates captured for layer {name!r} (call {call}): run the model's forward "
                    "pass before step_energy_model() / loss()"
                )
            g = gates[call]
            if g[0].numel() != ebm.d:
                raise ValueError(
                    f"layer {name!r} now has {g[0].numel()} gates but its EBM was built for {ebm.d}: "
                    "the input size or the architecture changed; build a new ComplexityPenalty"
                )
            out.append(g)
        return out

    # -- per batch -------------------------------------------------------------------
    def step_energy_model(self) -> float:
        """Fit every layer's EBM to the gates of the last forward pass (Eq. 37); returns the MLE loss."""
        sigmas = [g.detach() for g in self._captured()]
        total = self.fitter.step(sigmas)
        self._last["ebm_loss"] = total
        return total

    def loss(self) -> Tensor:
        """lambda * sum_l mean_j E_theta(sigma_lj) with theta fixed (Eq. 38); differentiable in the model.

        With ``every = k`` only every k-th call adds the penalty (the others return
        a zero that still carries the graph); with ``per_position`` a conv layer's
        energy is divided by its H x W positions.
        """
        raw = self._captured_raw()
        per_layer = []
        for k, g in enumerate(raw):
            e = self.layer_energy(k, g.flatten(1)).mean()
            if self.per_position and g.dim() > 2:
                e = e / math.prod(g.shape[2:])
            per_layer.append(e)
        total = torch.stack(per_layer).sum()
        self._last["complexity_loss"] = float(total.detach())
        on = self._calls % self.every == 0
        self._calls += 1
        return self.lam * total if on else 0.0 * total

    def layer_energy(self, k: int, sigma: Tensor) -> Tensor:
        """The energy the penalty uses for layer ``k``: E = -f - log q (Eq. 32), or -log q alone for
        a fit with ``use_f = False``."""
        ebm = self.ebms[k]
        return ebm.energy(sigma) if self.settings.use_f else -ebm.q.log_prob(sigma)

    # -- bookkeeping -----------------------------------------------------------------
    @property
    def langevin_settings(self) -> dict[str, Any]:
        """The Langevin sampler in use: steps, step size dtau, noise std c sqrt(dtau), bounds, chain starts."""
        st = self.settings
        return {"steps": st.langevin_steps, "step_size": st.langevin_step_size, "noise_std": st.noise_std,
                "bounds": st.bounds, "negatives": st.negatives}

    def diagnostics(self) -> dict[str, float]:
        """Last EBM loss, last (unweighted) complexity loss, the tracked mean activation rate and the
        Langevin step size and noise std in use."""
        d = dict(self._last)
        d["prior_rate_mean"] = float(torch.stack([e.q.p.mean() for e in self.ebms]).mean())
        d["lambda"] = self.lam
        d["langevin_step_size"] = self.settings.langevin_step_size
        d["langevin_noise_std"] = self.settings.noise_std
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"ebms": self.ebms.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "targets": self.targets, "calls": self._calls,
                "fit": self.settings.summary()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [tuple(t) for t in state["targets"]] != [tuple(t) for t in self.targets]:
            raise ValueError(f"checkpoint penalises {state['targets']}, this penalty {self.targets}")
        fit = state.get("fit")
        if fit is None and self.settings.name != "authors":
            raise ValueError("the checkpoint predates the named energy-model fits (it was trained with the "
                             f"'authors' settings), this penalty uses {self.settings.name!r}: pass fit='authors'")
        if fit is not None and fit["name"] != self.settings.name:
            raise ValueError(f"checkpoint was trained with the {fit['name']!r} energy-model fit, this penalty uses "
                             f"{self.settings.name!r}")
        self.ebms.load_state_dict(state["ebms"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._calls = int(state.get("calls", 0))

    def remove(self) -> None:
        """Put the original ReLUs back and stop capturing (idempotent)."""
        if self._removed:
            return
        self._removed = True
        self._hook.remove()
        for s in self._swish.values():
            s.capture = False
            s.gates.clear()
        restore_relus(self.model, self.originals)


def _lambda(lam: float | None, log10_lam: float | None) -> float:
    if (lam is None) == (log10_lam is None):
        raise ValueError("give exactly one of lam (lambda) and log10_lam (log10 lambda, as the authors' code)")
    value = lam if lam is not None else 10.0 ** float(log10_lam)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"lambda must be a finite number >= 0, got {value}")
    return float(value)
