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
beta = 100, Langevin step size 0.001 with 5 steps, SGD for the EBM with
lr 1e-4 (momentum 0.9, weight decay 5e-4, gradients clipped at 1e-5 per value),
the last four gating layers, moving average 0.9 / 0.1 of the rates, the energy
net's output scaled by d / 1000.

Use in any training loop::

    penalty = ComplexityPenalty.for_model(model, x_example, lam=1e-3)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)     # the forward captures soft gates
        penalty.step_energy_model()             # 1. fit the EBM to this batch
        loss = loss + penalty.loss()            # 2. lambda * L_complexity
        opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tcomplex.gating import record_gates, resolve_layers

__all__ = [
    "SwishGate",
    "relax_relus",
    "restore_relus",
    "BernoulliPrior",
    "EnergyNet",
    "langevin",
    "LayerEBM",
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


def langevin(
    energy: Any,
    start: Tensor,
    *,
    steps: int = DEFAULT_LANGEVIN_STEPS,
    step_size: float = DEFAULT_LANGEVIN_STEP_SIZE,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Langevin dynamics of Eq. 36, started at ``start`` (detached).

    sigma <- sigma - (dtau / 2) dE/dsigma + sqrt(dtau) eps, eps ~ N(0, I) drawn per
    sample and per gate.  ``energy(sigma)`` returns E per sample.
    """
    if steps < 0 or step_size <= 0:
        raise ValueError(f"need steps >= 0 and step_size > 0, got {steps}, {step_size}")
    x = start.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        with torch.no_grad():
            x = x - 0.5 * step_size * grad
            if noise:
                x = x + math.sqrt(step_size) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
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


class ComplexityPenalty:
    """lambda * L_complexity on chosen gating layers of a model (Eq. 8, 38).

    Build it with :meth:`for_model`, which relaxes the chosen ReLU layers in
    place.  Per batch: run the model's forward (it captures the soft gates),
    call :meth:`step_energy_model`, then add :meth:`loss` to the task loss.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Sequence[tuple[str, int]],
        widths: Sequence[int],
        *,
        lam: float | None = None,
        log10_lam: float | None = None,
        beta: float = DEFAULT_BETA,
        langevin_steps: int = DEFAULT_LANGEVIN_STEPS,
        langevin_step_size: float = DEFAULT_LANGEVIN_STEP_SIZE,
        ebm_lr: float = DEFAULT_EBM_LR,
        ebm_momentum: float = 0.9,
        ebm_weight_decay: float = 5e-4,
        clip_grad: float | None = DEFAULT_CLIP,
        rate_momentum: float = 0.1,
        energy_widths: Sequence[int] | None = None,
        seed: int = 0,
    ):
        self.lam = _lambda(lam, log10_lam)
        self.model = model
        self.targets = list(modules)  # (module name, call index)
        self.langevin_steps = langevin_steps
        self.langevin_step_size = langevin_step_size
        self.clip_grad = clip_grad
        device = next(iter(model.parameters())).device
        self.originals = relax_relus(model, sorted({m for m, _ in self.targets}), beta)
        self._swish = {m: model.get_submodule(m) for m, _ in self.targets}
        for s in self._swish.values():
            s.capture = True
        self._hook = model.register_forward_pre_hook(self._clear)
        self.ebms = nn.ModuleList(
            [LayerEBM(d, widths=energy_widths, momentum=rate_momentum) for d in widths]
        ).to(device)
        self.optimizer = torch.optim.SGD(
            self.ebms.parameters(), lr=ebm_lr, momentum=ebm_momentum, weight_decay=ebm_weight_decay
        )
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._last: dict[str, float] = {}

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
        penalty = cls(model, targets, widths, lam=lam, log10_lam=log10_lam, **kwargs)
        penalty.layer_names = chosen
        return penalty

    def _clear(self, module: nn.Module, args: Any) -> None:
        for s in self._swish.values():
            s.gates.clear()

    def _captured(self) -> list[Tensor]:
        out = []
        for (name, call), ebm in zip(self.targets, self.ebms):
            gates = self._swish[name].gates
            if len(gates) <= call:
                raise RuntimeError(
                    f"no soft gates captured for layer {name!r} (call {call}): run the model's forward "
                    "pass before step_energy_model() / loss()"
                )
            g = gates[call].flatten(1)
            if g.shape[1] != ebm.d:
                raise ValueError(
                    f"layer {name!r} now has {g.shape[1]} gates but its EBM was built for {ebm.d}: "
                    "the input size or the architecture changed; build a new ComplexityPenalty"
                )
            out.append(g)
        return out

    # -- per batch -------------------------------------------------------------------
    def step_energy_model(self) -> float:
        """Fit every layer's EBM to the gates of the last forward pass (Eq. 37); returns the MLE loss."""
        sigmas = [g.detach() for g in self._captured()]
        total = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for ebm, s in zip(self.ebms, sigmas):
            ebm.q.update(s)
            ebm.eval()
            neg = langevin(ebm.energy, s, steps=self.langevin_steps, step_size=self.langevin_step_size,
                           generator=self.generator)
            ebm.train()
            losses.append(ebm.mle_loss(s, neg))
        loss = torch.stack(losses).sum()
        loss.backward()
        if self.clip_grad is not None:
            nn.utils.clip_grad_value_(self.ebms.parameters(), self.clip_grad)
        self.optimizer.step()
        for e in self.ebms:
            e.eval()
        total = float(loss.detach())
        self._last["ebm_loss"] = total
        return total

    def loss(self) -> Tensor:
        """lambda * sum_l mean_j E_theta(sigma_lj) with theta fixed (Eq. 38); differentiable in the model."""
        sigmas = self._captured()
        per_layer = [ebm.energy(s).mean() for ebm, s in zip(self.ebms, sigmas)]
        total = torch.stack(per_layer).sum()
        self._last["complexity_loss"] = float(total.detach())
        return self.lam * total

    # -- bookkeeping -----------------------------------------------------------------
    def diagnostics(self) -> dict[str, float]:
        """Last EBM loss, last (unweighted) complexity loss and the tracked mean activation rate."""
        d = dict(self._last)
        d["prior_rate_mean"] = float(torch.stack([e.q.p.mean() for e in self.ebms]).mean())
        d["lambda"] = self.lam
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"ebms": self.ebms.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "targets": self.targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [tuple(t) for t in state["targets"]] != [tuple(t) for t in self.targets]:
            raise ValueError(f"checkpoint penalises {state['targets']}, this penalty {self.targets}")
        self.ebms.load_state_dict(state["ebms"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def remove(self) -> None:
        """Put the original ReLUs back and stop capturing."""
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
