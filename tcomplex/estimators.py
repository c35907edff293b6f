"""Estimators of transformation complexity (Section 3, Section 4.1, Appendix F).

Pure functions of gating states: a 2-D array ``[n, d]`` (torch tensor or numpy
array, bool or float in [0, 1]), optional labels, alpha and a bandwidth rule.
No hooks, no models, no I/O.  Results are in bits unless ``base`` says otherwise.

Kernel-density (KDE) estimates (Eq. 2, 3, 4, 28) place a Gaussian of variance
sigma0^2 on every sample.  Two rules for sigma0^2 exist:

* ``bandwidth="dims"`` (default): sigma0^2 = alpha * d, d = number of gates.  This
  is what the authors' public code does, and what produced their plots.
* ``bandwidth="variance"``: sigma0^2 = alpha * E||sigma - mu||^2, as the paper's
  text writes below Eq. 2.  For typical ReLU layers the variance is much smaller
  than d, the kernels barely overlap and the estimate saturates at log2 n.

With n samples an entropy estimate is at most log2 n and I(X; Sigma; Y) at most
log2(#classes); a value within 1% of that ceiling says more about n than about
the network, so it is flagged (:class:`Estimate` ``.saturated``) and warned
about (:class:`SaturationWarning`).

Numerics: squared distances of binary states come from one GEMM per block
(||a||^2 + ||b||^2 - 2 a.b in one ``addmm``; exact integers for 0/1 states in
float32 up to d = 2^24; soft states are clamped at 0).  Each block is reduced by a
float32 log-sum-exp (relative error ~1e-8, tested against float64 references), and
the blocks of a row are combined in float64, so memory stays bounded (two float32
buffers of ``block x d`` and one ``block x block`` matrix, never n x n x d).  On the
self-distance matrix only the upper block triangle is multiplied; each off-diagonal
block serves its rows and, transposed, its columns.  Time is within ~1.2x of one bare
float32 GEMM of the states (``benchmarks/bench_estimators.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Estimate",
    "SaturationWarning",
    "kde_bandwidth",
    "kde_entropy",
    "kde_entropy_and_interaction",
    "kde_entropy_from_distances",
    "squared_distances",
    "kde_mutual_information",
    "kde_interaction_information",
    "kde_total_correlation",
    "marginal_entropy_sum",
    "plugin_entropy",
    "plugin_total_correlation",
    "layerwise_entropies",
    "activation_rates",
]

Bandwidth = Literal["dims", "variance"]

#: Memory for one float32 block of states; blocks of rows are sized to it.
BLOCK_BYTES = 256 * 2**20
#: At most this many rows per block: on the self-distance matrix only the upper block
#: triangle is multiplied, so n = 2000 in 4 blocks does 10/16 of one n x n GEMM's work
#: (measured fastest at n = 2000 among 250..2000-row blocks, d = 1472 and 16384).
BLOCK_ROWS = 512
SATURATION_TOLERANCE = 0.01


class SaturationWarning(UserWarning):
    """An estimate reached its ceiling (log2 n, or log2 of the number of classes)."""


class Estimate(float):
    """A float (the estimate) that also carries how it was obtained.

    Attributes
    ----------
    saturated: True when the value is within 1% of ``ceiling``.
    ceiling: the largest value the estimator can return for this input
        (None where no such bound applies, e.g. TC).
    sigma2: the kernel variance sigma0^2 used (None for plug-in estimates).
    """

    saturated: bool
    ceiling: float | None
    sigma2: float | None

    def __new__(
        cls, value: float, *, ceiling: float | None, sigma2: float | None = None, what: str = "estimate"
    ):
        obj = super().__new__(cls, value)
        obj.ceiling = None if ceiling is None else float(ceiling)
        obj.sigma2 = None if sigma2 is None else float(sigma2)
        obj.saturated = bool(
            ceiling is not None and ceiling > 0 and value >= (1 - SATURATION_TOLERANCE) * ceiling
        )
        if obj.saturated:
            warnings.warn(
                f"{what} = {value:.4g} is within {SATURATION_TOLERANCE:.0%} of its ceiling "
                f"{ceiling:.4g}: the estimator saturated (more samples or a larger alpha/bandwidth "
                "are needed before it says anything about the network)",
                SaturationWarning,
                stacklevel=3,
            )
        return obj

    def __reduce__(self):
        return (_rebuild_estimate, (float(self), self.ceiling, self.sigma2, self.saturated))

    def __repr__(self) -> str:
        flag = ", saturated" if self.saturated else ""
        return f"Estimate({float(self)!r}{flag})"


def _rebuild_estimate(value: float, ceiling: float | None, sigma2: float | None, saturated: bool) -> Estimate:
    obj = float.__new__(Estimate, value)
    obj.ceiling, obj.sigma2, obj.saturated = ceiling, sigma2, saturated
    return obj


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------
def _as_states(states: Any, what: str = "states") -> Tensor:
    if isinstance(states, np.ndarray):
        states = torch.from_numpy(states)
    if not isinstance(states, Tensor):
        raise TypeError(f"{what} must be a torch tensor or numpy array, got {type(states).__name__}")
    if states.dim() != 2:
        raise ValueError(
            f"{what} must be 2-D [n_samples, n_gates], got shape {tuple(states.shape)}; "
            "flatten each sample's gates first (e.g. x.flatten(1))"
        )
    n, d = states.shape
    if n == 0:
        raise ValueError(f"{what} is empty: no sample to estimate from")
    if n == 1:
        raise ValueError(f"{what} holds a single sample: entropy estimates need at least 2")
    if d == 0:
        raise ValueError(f"{what} has no gates (shape {tuple(states.shape)})")
    if states.dtype == torch.bool:
        return states
    if states.is_complex():
        raise ValueError(f"{what} must be real, got {states.dtype}")
    if states.is_floating_point():
        if torch.isnan(states).any():
            raise ValueError(f"{what} contains NaN: gating states must be in [0, 1]")
    lo, hi = float(states.min()), float(states.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{what} has values in [{lo:g}, {hi:g}], outside [0, 1]: pass gating states "
            "(e.g. pre_activation > 0), not activations"
        )
    return states


def _as_labels(labels: Any, n: int) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    labels = labels.reshape(-1) if labels.dim() == 2 and 1 in labels.shape else labels
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [n], got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"labels hold {labels.shape[0]} entries but states hold {n} samples")
    if labels.is_floating_point() and (labels != labels.round()).any():
        raise ValueError("labels must be integer class indices")
    return labels.long()


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    return float(alpha)


def _log_base(base: float) -> float:
    if base <= 0 or base == 1:
        raise ValueError(f"base must be positive and != 1, got {base}")
    return math.log(base)


# ---------------------------------------------------------------------------
# kernel machinery
# ---------------------------------------------------------------------------
def kde_bandwidth(states: Any, *, alpha: float, bandwidth: Bandwidth = "dims") -> float:
    """sigma0^2 of Eq. 2: ``alpha * d`` ("dims") or ``alpha * E||sigma - mu||^2`` ("variance")."""
    s = _as_states(states)
    alpha = _check_alpha(alpha)
    return _sigma2(s, alpha, bandwidth)


def _sigma2(s: Tensor, alpha: float, bandwidth: str) -> float:
    if bandwidth == "dims":
        return alpha * s.shape[1]
    if bandwidth == "variance":
        x = s.to(torch.float64)
        var = float(((x - x.mean(0)) ** 2).sum(1).mean())
        if var <= 0:
            raise ValueError(
                "the states have zero variance (every sample has the same gates), so the "
                "'variance' bandwidth alpha*Var is 0; use bandwidth='dims' (H is then 0)"
            )
        return alpha * var
    raise ValueError(f"bandwidth must be 'dims' or 'variance', got {bandwidth!r}")


def _block_rows(n: int, d: int, block: int | None) -> int:
    if block is not None:
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        return block
    return max(64, min(n, BLOCK_ROWS, BLOCK_BYTES // (4 * d)))


class _RowLSE:
    """Streaming row-wise log-sum-exp in float64, fed with per-block row log-sum-exps."""

    def __init__(self, n: int, device: torch.device):
        self.m = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.s = torch.zeros(n, dtype=torch.float64, device=device)

    def add(self, rows: slice, block_lse: Tensor) -> None:
        v = block_lse.to(torch.float64)
        m_old = self.m[rows]
        m_new = torch.maximum(m_old, v)
        self.s[rows] = self.s[rows] * torch.exp(m_old - m_new) + torch.exp(v - m_new)
        self.m[rows] = m_new

    def result(self) -> Tensor:
        return self.m + torch.log(self.s)


class _Blocks:
    """Row blocks of a states matrix as float32, with squared norms, in reused buffers.

    Two buffers suffice: the outer block and the inner one.  The inner block that
    was converted last can be handed over as the next outer block (the caller walks
    the inner blocks backwards so that this happens).
    """

    def __init__(self, x: Tensor, c: int):
        self.x, self.c, self.binary = x, c, x.dtype == torch.bool
        self._buf: list[Tensor | None] = [None, None]  # allocated on first use
        self._last: tuple[int, int] | None = None  # (start, buffer index) of the last conversion

    def get(self, i: int, slot: int) -> tuple[Tensor, Tensor]:
        rows = self.x[i : i + self.c]
        if self._last is not None and self._last[0] == i:
            # reuse the block converted last, swapping buffers when it sits in the other slot
            if self._last[1] != slot:
                self._buf[0], self._buf[1] = self._buf[1], self._buf[0]
                self._last = (i, slot)
            f = self._buf[slot][: rows.shape[0]]
        else:
            if self._buf[slot] is None:
                shape = (min(self.c, self.x.shape[0]), self.x.shape[1])
                self._buf[slot] = torch.empty(shape, dtype=torch.float32, device=self.x.device)
            f = self._buf[slot][: rows.shape[0]]
            f.copy_(rows)
            self._last = (i, slot)
        # squared norms; for 0/1 states ||a||^2 is the number of open gates, an exact float32 integer
        sq = f.sum(1) if self.binary else f.pow(2).sum(1)
        return f, sq


def _block_sq_dists(ai: Tensor, nai: Tensor, aj: Tensor, naj: Tensor, exact: bool) -> Tensor:
    """||a_i - a_j||^2 for two row blocks, via one GEMM (float32).

    For 0/1 states with fewer than 2**24 gates every term of ||a||^2 + ||b||^2 - 2 a.b is an
    integer that float32 holds exactly, so the distances are exact; soft states are clamped at 0.
    """
    d2 = torch.addmm(nai[:, None] + naj[None, :], ai, aj.T, beta=1.0, alpha=-2.0)
    return d2 if exact else d2.clamp_min_(0.0)


def _upper_block_sq_dists(s: Tensor, c: int) -> Iterator[tuple[slice, slice, Tensor]]:
    """``(rows_i, rows_j, d2)`` for the blocks on and above the diagonal of the self-distance
    matrix of ``s`` in row blocks of ``c`` (``rows_j is rows_i`` on the diagonal).

    The inner blocks are walked backwards, so that the block converted last is the next
    outer block (:class:`_Blocks` hands it over without converting it again).
    """
    n, d = s.shape
    blocks = _Blocks(s, c)
    exact = blocks.binary and d < 2**24
    starts = list(range(0, n, c))
    for bi, i in enumerate(starts):
        ai, nai = blocks.get(i, 0)
        ri = slice(i, i + ai.shape[0])
        yield ri, ri, _block_sq_dists(ai, nai, ai, nai, exact)
        for j in reversed(starts[bi + 1 :]):
            aj, naj = blocks.get(j, 1)
            yield ri, slice(j, j + aj.shape[0]), _block_sq_dists(ai, nai, aj, naj, exact)


def _log_kernel_sums(a: Tensor, b: Tensor | None, sigma2: float, block: int | None = None) -> Tensor:
    """log sum_k exp(-||a_j - b_k||^2 / (2 sigma2)) for every row j of ``a``.

    ``b=None`` means ``b = a`` and uses the symmetry of the distance matrix: only the
    upper block triangle is computed, each off-diagonal block feeds its rows and its
    columns.  Blocks are reduced by a float32 log-sum-exp; the blocks of one row are
    combined in float64.
    """
    n, d = a.shape
    c = _block_rows(n, d, block)
    inv = -0.5 / sigma2
    lse = _RowLSE(n, a.device)
    if b is None:
        for ri, rj, d2 in _upper_block_sq_dists(a, c):
            logits = d2.mul_(inv)
            lse.add(ri, torch.logsumexp(logits, 1))
            if rj is not ri:
                lse.add(rj, torch.logsumexp(logits, 0))
        return lse.result()
    if b.shape[1] != d:
        raise ValueError(f"states have {d} gates but the reference set has {b.shape[1]}")
    ablocks, bblocks = _Blocks(a, c), _Blocks(b, c)
    exact = ablocks.binary and bblocks.binary and d < 2**24
    for i in range(0, n, c):
        ai, nai = ablocks.get(i, 0)
        ri = slice(i, i + ai.shape[0])
        for j in range(0, b.shape[0], c):
            bj, nbj = bblocks.get(j, 1)
            lse.add(ri, torch.logsumexp(_block_sq_dists(ai, nai, bj, nbj, exact).mul_(inv), 1))
    return lse.result()


def _kde_entropy_nats(s: Tensor, sigma2: float, block: int | None) -> float:
    # Eq. 2: H <= -1/n sum_j log(1/n sum_k K_jk) = log n - mean_j log sum_k K_jk
    n = s.shape[0]
    return math.log(n) - float(_log_kernel_sums(s, None, sigma2, block).mean())


def squared_distances(states: Any, *, block: int | None = None) -> Tensor:
    """The ``[n, n]`` float32 matrix of ||sigma_j - sigma_k||^2 (the exponent of Eq. 2's kernel).

    Exact integers for 0/1 states (fewer than 2**24 gates).  Distances of concatenated
    layers are the sums of the layers' distances, so one matrix per layer also gives the
    whole network's: see :func:`kde_entropy_from_distances`.  Uses n^2 * 4 bytes.
    """
    s = _as_states(states)
    n, d = s.shape
    out = torch.empty(n, n, dtype=torch.float32, device=s.device)
    for ri, rj, d2 in _upper_block_sq_dists(s, _block_rows(n, d, block)):
        out[ri, rj] = d2
        if rj is not ri:
            out[rj, ri] = d2.T
    return out


def _kernel_row_sums(d2: Tensor, sigma2: float, onehot: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Row sums of K = exp(-d2 / (2 sigma2)) (float64), and K @ onehot (per-class row sums).

    A self-distance matrix has a zero diagonal, so every row's largest kernel value is
    exactly 1: no max-subtraction is needed and underflow of far pairs cannot empty a row.
    """
    k = torch.mul(d2, -0.5 / sigma2).exp_()
    if onehot is None:
        return k.sum(1).to(torch.float64), None
    per_class = (k @ onehot).to(torch.float64)
    return per_class.sum(1), per_class


def kde_entropy_from_distances(
    sq_distances: Tensor,
    *,
    sigma2: float,
    labels: Any = None,
    base: float = 2.0,
) -> tuple[Estimate, Estimate | None]:
    """``(H(Sigma), I(X; Sigma; Y))`` by Eq. 2 and Eq. 4 from a squared-distance matrix.

    ``sq_distances``: ``[n, n]`` from :func:`squared_distances` (or a sum of them over
    layers); ``sigma2``: the kernel width sigma0^2 (:func:`kde_bandwidth` of the states).
    The conditional entropies of Eq. 4 sum each row of the kernel matrix over the
    columns of its own class (one small product with the class one-hots), so no
    distance is computed twice.  The diagonal must be the zero self-distance.  Without ``labels`` the second value is None.  Same values as
    :func:`kde_entropy_and_interaction` up to float32 rounding.
    """
    if not isinstance(sq_distances, Tensor) or sq_distances.dim() != 2 or sq_distances.shape[0] != sq_distances.shape[1]:
        shape = tuple(sq_distances.shape) if isinstance(sq_distances, Tensor) else type(sq_distances).__name__
        raise ValueError(f"sq_distances must be a square [n, n] tensor, got {shape}")
    n = sq_distances.shape[0]
    if n < 2:
        raise ValueError(f"sq_distances covers {n} sample(s): entropy estimates need at least 2")
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    d2 = sq_distances.to(torch.float32)
    if labels is None:
        rows, _ = _kernel_row_sums(d2, sigma2, None)
        return _entropy_estimate(math.log(n) - float(rows.log().mean()), n, sigma2, base, "H"), None
    y = _as_labels(labels, n).to(d2.device)
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    onehot = torch.nn.functional.one_hot(inverse, len(classes)).to(torch.float32)
    rows, per_class = _kernel_row_sums(d2, sigma2, onehot)
    h = math.log(n) - float(rows.log().mean())
    # H(Sigma | Y = m): the rows of class m summed over the columns of class m only
    own = per_class.gather(1, inverse[:, None]).squeeze(1).log()
    h_cond = 0.0
    for m, n_m in enumerate(counts.tolist()):
        if n_m > 1:
            h_cond += (n_m / n) * (math.log(n_m) - float(own[inverse == m].mean()))
    return _entropy_estimate(h, n, sigma2, base, "H"), _interaction_estimate(h, h_cond, len(classes), sigma2, base)


def _entropy_estimate(nats: float, n: int, sigma2: float, base: float, what: str) -> Estimate:
    """An Eq. 2 bound in ``base`` units, clipped at 0, with its ceiling log n."""
    lb = _log_base(base)
    return Estimate(max(nats / lb, 0.0), ceiling=math.log(n) / lb, sigma2=sigma2, what=what)


def _interaction_estimate(h: float, h_cond: float, n_classes: int, sigma2: float, base: float) -> Estimate:
    """Eq. 4 in ``base`` units from H(Sigma) and sum_m p_m H(Sigma | Y = m) in nats; ceiling log M."""
    lb = _log_base(base)
    return Estimate((h - h_cond) / lb, ceiling=math.log(n_classes) / lb, sigma2=sigma2, what="I(X;Sigma;Y)")


# ---------------------------------------------------------------------------
# KDE estimators
# ---------------------------------------------------------------------------
def kde_entropy(
    states: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
) -> Estimate:
    """H(Sigma_l) by its KDE upper bound, Eq. 2.

    H <= -1/n sum_j log( 1/n sum_k exp(-||sigma_j - sigma_k||^2 / (2 sigma0^2)) ).

    Parameters
    ----------
    states: ``[n, d]`` gating states (bool, or floats in [0, 1]).
    alpha: kernel width factor (Section 4.4: 0.01 after FC layers, 0.04 after conv).
    bandwidth: ``"dims"`` (default; sigma0^2 = alpha * d, the authors' public code
        and plots) or ``"variance"`` (sigma0^2 = alpha * Var(Sigma_l), the paper's
        text below Eq. 2; it saturates at log2 n for typical ReLU layers).
    base: 2 for bits (default), ``math.e`` for nats.
    block: rows per block of the distance computation (default: by memory).

    Returns
    -------
    Estimate: a float in [0, log_base n], flagged when saturated.
    """
    s = _as_states(states)
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    return _entropy_estimate(_kde_entropy_nats(s, sigma2, block), s.shape[0], sigma2, base, "H")


def kde_mutual_information(
    states_without_sampling: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
) -> Estimate:
    """I(X; Sigma_l) by Eq. 3: the KDE entropy of states recorded with sampling removed.

    Pass the states recorded with the model's random sampling switched off
    (dropout as identity, a VAE's mean instead of its sample): see
    :func:`tcomplex.record_gates_with_and_without_sampling`.  For a deterministic
    network this equals :func:`kde_entropy` of its states (H(Sigma|X) = 0).
    """
    s = _as_states(states_without_sampling, "states_without_sampling")
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    return _entropy_estimate(_kde_entropy_nats(s, sigma2, block), s.shape[0], sigma2, base, "I(X;Sigma)")


def kde_interaction_information(
    states: Any,
    labels: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
) -> Estimate:
    """I(X; Sigma_l; Y) by Eq. 4, for a deterministic network (I(Sigma; Y | X) = 0).

    I(X; Sigma; Y) = H(Sigma) - sum_m p_m H(Sigma | Y = m), each term by the KDE
    bound of Eq. 2 with one sigma0^2 computed from all samples.  The class prior
    is p_m = n_m / n (the paper's "n_m / M" is a typo).  Bounded by log2 M.
    """
    return kde_entropy_and_interaction(states, labels, alpha=alpha, bandwidth=bandwidth, base=base, block=block)[1]


def kde_entropy_and_interaction(
    states: Any,
    labels: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
) -> tuple[Estimate, Estimate]:
    """``(H(Sigma_l), I(X; Sigma_l; Y))`` of Eq. 2 and Eq. 4 in one pass.

    Equal to ``(kde_entropy(...), kde_interaction_information(...))`` with the same
    arguments, but H(Sigma) -- the costliest term of Eq. 4 -- is computed once.
    """
    s = _as_states(states)
    y = _as_labels(labels, s.shape[0]).to(s.device)
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    n = s.shape[0]
    classes, counts = torch.unique(y, return_counts=True)
    h = _kde_entropy_nats(s, sigma2, block)
    h_cond = 0.0
    for c, n_m in zip(classes.tolist(), counts.tolist()):
        if n_m > 1:
            h_cond += (n_m / n) * _kde_entropy_nats(s[y == c], sigma2, block)
    return _entropy_estimate(h, n, sigma2, base, "H"), _interaction_estimate(h, h_cond, len(classes), sigma2, base)


def activation_rates(states: Any) -> Tensor:
    """Per-gate activation rate alpha_l^i = mean over samples (float64 [d])."""
    s = _as_states(states)
    if s.dtype == torch.bool:  # float32 counts are exact below 2**24 samples
        return s.to(torch.float32).sum(0).to(torch.float64) / s.shape[0]
    return s.to(torch.float64).mean(0)


def kde_total_correlation(
    states: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    generator: torch.Generator | None = None,
    base: float = 2.0,
    block: int | None = None,
) -> Estimate:
    """TC(Sigma_l) by the KDE bound of Eq. 28 (Appendix F).

    TC <= 1/n sum_j log( sum_k K(sigma_j, sigma_k) / sum_k K(sigma_j, hat sigma_k) ),
    where hat sigma_k are n synthesized states whose gates are independent
    Bernoulli draws with the observed activation rates (so p(hat sigma) is the
    product of the marginals).  ``generator`` seeds the draw (default: seed 0,
    so the estimate is deterministic).  sigma0^2 comes from the observed states.
    """
    s = _as_states(states)
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    if generator is None:
        generator = torch.Generator(device=s.device).manual_seed(0)
    rates = s.to(torch.float32).mean(0)
    synth = torch.rand(s.shape, generator=generator, device=s.device) < rates
    own = _log_kernel_sums(s, None, sigma2, block)
    cross = _log_kernel_sums(s, synth, sigma2, block)
    value = float((own - cross).mean()) / _log_base(base)
    return Estimate(value, ceiling=None, sigma2=sigma2, what="TC")


# ---------------------------------------------------------------------------
# exact (plug-in) quantities of the empirical distribution
# ---------------------------------------------------------------------------
def _binary(states: Any) -> Tensor:
    s = _as_states(states)
    if s.dtype != torch.bool:
        if not torch.all((s == 0) | (s == 1)):
            raise ValueError("plug-in estimates need binary states (0/1); got fractional values")
        s = s.bool()
    return s


def _binary_entropy(p: Tensor) -> Tensor:
    q = 1 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q))


def marginal_entropy_sum(states: Any, *, base: float = 2.0) -> float:
    """C_l of Eq. 6: sum_i H(Bernoulli(alpha_l^i)), with alpha_l^i the observed activation rates.

    C_l = -E[log prod_i p(sigma_l^i)] = sum_i H(sigma_l^i) under the empirical
    distribution; H(Sigma_l) + TC(Sigma_l) = C_l holds exactly for plug-in estimates.
    """
    p = activation_rates(states)
    return float(_binary_entropy(p).sum()) / _log_base(base)


def _pattern_counts(s: Tensor) -> tuple[np.ndarray, np.ndarray]:
    packed = np.packbits(s.cpu().numpy(), axis=1)
    patterns, counts = np.unique(packed, axis=0, return_counts=True)
    return patterns, counts


def plugin_entropy(states: Any, *, base: float = 2.0) -> Estimate:
    """Exact entropy of the empirical distribution of gating patterns (binary states).

    -sum_x p_hat(x) log p_hat(x) over the distinct rows; at most log n.  Unbiased
    only when n is much larger than the number of patterns; use it on small d.
    """
    s = _binary(states)
    _, counts = _pattern_counts(s)
    p = counts / counts.sum()
    h = float(-(p * np.log(p)).sum()) / _log_base(base)
    return Estimate(h, ceiling=math.log(s.shape[0]) / _log_base(base), what="plug-in H")


def plugin_total_correlation(states: Any, *, base: float = 2.0) -> float:
    """Exact TC (Eq. 5) of the empirical distribution: KL(p_hat(sigma) || prod_i p_hat(sigma^i)).

    Computed from its definition over the distinct patterns,
    sum_x p_hat(x) [log p_hat(x) - sum_i log p_hat_i(x_i)], not as C - H.
    """
    s = _binary(states)
    d = s.shape[1]
    patterns, counts = _pattern_counts(s)
    p = counts / counts.sum()
    rates = activation_rates(s).cpu().numpy()
    bits = np.unpackbits(patterns, axis=1, count=d).astype(bool)
    with np.errstate(divide="ignore"):
        log_on, log_off = np.log(rates), np.log1p(-rates)
    # a pattern only uses log p_i(x_i) of values it takes, which have p_i > 0
    log_marg = np.where(bits, log_on, log_off).sum(1)
    tc = float((p * (np.log(p) - log_marg)).sum())
    return max(tc, 0.0) / _log_base(base)


# ---------------------------------------------------------------------------
# layerwise entropies (Proposition 2, Figure 1)
# ---------------------------------------------------------------------------
def layerwise_entropies(
    recording: Any,
    *,
    estimator: Literal["kde", "plugin"] = "kde",
    alpha: float | None = None,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
) -> list[Estimate]:
    """H(Sigma_l, ..., Sigma_L) for l = 1..L (Proposition 2, Figure 1).

    ``recording`` is a :class:`tcomplex.Recording` (anything with ``suffix(l)``,
    ``default_alpha(names)``, ``names`` and ``len``).  With ``estimator="plugin"``
    the values are exact for the empirical distribution and non-increasing in l;
    the KDE bound's sigma0^2 grows with the number of gates d, so it need not be.
    ``alpha=None`` uses the recording's default for each suffix (0.04 if it holds
    a gate after a convolution, else 0.01).
    """
    L = len(recording)
    if L == 0:
        raise ValueError("the recording has no gating layer")
    out: list[Estimate] = []
    for l in range(1, L + 1):
        s = recording.suffix(l)
        if estimator == "plugin":
            out.append(plugin_entropy(s, base=base))
        elif estimator == "kde":
            a = alpha if alpha is not None else recording.default_alpha(recording.names[l - 1 :])
            out.append(kde_entropy(s, alpha=a, bandwidth=bandwidth, base=base))
        else:
            raise ValueError(f"estimator must be 'kde' or 'plugin', got {estimator!r}")
    return out

