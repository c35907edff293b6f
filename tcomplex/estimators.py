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

Numerics: on the CPU, squared distances of binary (bool or packed) states are Hamming
distances computed exactly on packed bits by XOR + popcount (:mod:`tcomplex.bits`, a
numba kernel; bool states are packed first, 8 gates per byte).  Elsewhere (a GPU, or
soft states in [0, 1]) they come from one GEMM per block
(||a||^2 + ||b||^2 - 2 a.b in one ``addmm``; exact integers for 0/1 states in
float32 up to d = 2^24; soft states are clamped at 0).  For H and I(X; Sigma; Y) each
block's kernel values are computed once (float32 exp) and summed per row, column and
class into float64 totals: a self-distance matrix has a zero diagonal, so every row's
total is >= 1 and needs no max-subtraction (agreement with float64 references ~1e-8
relative).  TC's cross term (no zero diagonal) uses a float32 log-sum-exp per block
combined in float64.  Memory stays bounded (two float32
buffers of ``block x d`` and one ``block x block`` matrix, never n x n x d).  On the
self-distance matrix only the upper block triangle is multiplied; each off-diagonal
block serves its rows and, transposed, its columns.  Both routes give the same float32
distance blocks (exact integers for 0/1 states below 2**24 gates) in the same order, so
the estimates do not depend on the route.  ``backend="gemm"`` forces the float route,
``backend="packed"`` the bit route (CPU only); see ``benchmarks/bench_estimators.py``.

Warnings: a saturated estimate is flagged (``.saturated``) and the public function that
produced it raises :class:`SaturationWarning`, unless called with ``warn=False``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from tcomplex.bits import PackedStates, hamming_block, kernel_block_sums

__all__ = [
    "block_rows",
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
    "kde_total_correlation_from_distances",
    "kde_sweep_from_distances",
    "independent_states",
    "marginal_entropy_sum",
    "plugin_entropy",
    "plugin_total_correlation",
    "layerwise_entropies",
    "activation_rates",
    "PackedStates",
]

Bandwidth = Literal["dims", "variance"]
#: route of the squared distances: "auto" (packed bits for binary states on the CPU, float
#: GEMM otherwise), "packed" (bits; CPU, binary states) or "gemm" (float32 GEMM)
Backend = Literal["auto", "packed", "gemm"]

#: Memory for one float32 block of states; blocks of rows are sized to it.
BLOCK_BYTES = 256 * 2**20
#: At most this many rows per block: on the self-distance matrix only the upper block
#: triangle is multiplied, so n = 2000 in 4 blocks does 10/16 of one n x n GEMM's work
#: (measured fastest at n = 2000 among 250..2000-row blocks, d = 1472 and 16384).
BLOCK_ROWS = 512
#: An estimate within this many bits of its ceiling log2 n (H, I(X;Sigma), Eq. 2-3) is saturated:
#: the kernel mass a state receives from all other states is then below 2^0.5 - 1 = 41% of its own,
#: so the estimate mostly counts distinct patterns and cannot show a change.  The verdicts of the
#: book use the same margin (tcomplex.experiments.report.THRESHOLDS["headroom_bits"]).
HEADROOM_BITS = 0.5
#: I(X;Sigma;Y) (Eq. 4) is at most log2(#classes); its margin is this fraction of that ceiling,
#: the relative margin of HEADROOM_BITS under log2 2000 (the paper's 2000 analysis images).
HEADROOM_FRACTION_CLASSES = HEADROOM_BITS / math.log2(2000)


class SaturationWarning(UserWarning):
    """An estimate reached its ceiling (log2 n, or log2 of the number of classes)."""


class Estimate(float):
    """A float (the estimate) that also carries how it was obtained.

    A value object: creating one never warns (the public estimator functions do).

    Attributes
    ----------
    saturated: True when the value is within ``margin`` of ``ceiling`` (default: :data:`HEADROOM_BITS`
        for an entropy, :data:`HEADROOM_FRACTION_CLASSES` x ceiling for I(X;Sigma;Y)).
    negative: True when the value is below 0 (only bounds that are a difference of
        two estimates can be, e.g. TC by Eq. 28: see :func:`kde_total_correlation`).
    ceiling: the largest value the estimator can return for this input
        (None where no such bound applies, e.g. TC).
    sigma2: the kernel variance sigma0^2 used (None for plug-in estimates).
    what: the quantity ("H", "I(X;Sigma;Y)", "TC", ...).
    """

    saturated: bool
    negative: bool
    ceiling: float | None
    sigma2: float | None
    what: str
    margin: float | None

    def __new__(
        cls, value: float, *, ceiling: float | None, sigma2: float | None = None, what: str = "estimate",
        margin: float | None = None,
    ):
        obj = super().__new__(cls, value)
        obj.ceiling = None if ceiling is None else float(ceiling)
        obj.sigma2 = None if sigma2 is None else float(sigma2)
        obj.what = what
        obj.margin = None if ceiling is None else float(HEADROOM_BITS if margin is None else margin)
        obj.saturated = bool(ceiling is not None and ceiling > 0 and ceiling - value < obj.margin)
        obj.negative = bool(value < 0)
        return obj

    def __reduce__(self):
        return (_rebuild_estimate, (float(self), self.ceiling, self.sigma2, self.saturated, self.what, self.negative,
                                    self.margin))

    def __repr__(self) -> str:
        flag = (", saturated" if self.saturated else "") + (", negative" if self.negative else "")
        return f"Estimate({float(self)!r}{flag})"


def _rebuild_estimate(
    value: float, ceiling: float | None, sigma2: float | None, saturated: bool, what: str = "estimate",
    negative: bool | None = None, margin: float | None = None,
) -> Estimate:
    obj = float.__new__(Estimate, value)
    obj.ceiling, obj.sigma2, obj.saturated, obj.what, obj.margin = ceiling, sigma2, saturated, what, margin
    obj.negative = bool(value < 0) if negative is None else negative
    return obj


def _warned(est: Estimate, warn: bool, stacklevel: int = 3) -> Estimate:
    """Raise :class:`SaturationWarning` for a saturated estimate (from the public function)."""
    if warn and est.saturated:
        warnings.warn(
            f"{est.what} = {float(est):.4g} is within {est.margin:.3g} of its ceiling "
            f"{est.ceiling:.4g}: the estimator saturated (more samples or a larger alpha/bandwidth "
            "are needed before it says anything about the network); pass warn=False to silence",
            SaturationWarning,
            stacklevel=stacklevel,
        )
    return est


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------
def _as_states(states: Any, what: str = "states") -> Tensor | PackedStates:
    if isinstance(states, PackedStates):
        n, d = states.shape
        if n < 2:
            raise ValueError(f"{what} holds {n} sample(s): entropy estimates need at least 2")
        return states
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


_LABELS_HELP = "labels must be integer class ids, 1-D, one per sample (length n)"


def _as_labels(labels: Any, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        arr = np.asarray(labels) if not isinstance(labels, np.ndarray) else labels
        if arr.dtype.kind not in "biuf":
            raise ValueError(
                f"{_LABELS_HELP}; got {arr.dtype} values such as {arr.reshape(-1)[:3].tolist()!r} "
                "(map names to ids first, e.g. np.unique(labels, return_inverse=True)[1])"
            )
        labels = torch.from_numpy(np.ascontiguousarray(arr))
    if labels.is_complex():
        raise ValueError(f"{_LABELS_HELP}; got {labels.dtype}")
    labels = labels.reshape(-1) if labels.dim() == 2 and 1 in labels.shape else labels
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [n], got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"labels hold {labels.shape[0]} entries but states hold {n} samples")
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all() and (labels == labels.round()).all()):
        raise ValueError(f"{_LABELS_HELP}; got non-integer or non-finite floats")
    return labels.long()


def _real_scalar(value: Any) -> float | None:
    """``value`` as a float if it is one real number (Python, numpy scalar, 0-d array/tensor)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value)
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            return None
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _check_alpha(alpha: Any) -> float:
    a = _real_scalar(alpha)
    if a is None or not math.isfinite(a) or a <= 0:
        raise ValueError(
            f"alpha must be a positive finite real number (a float, numpy scalar or 0-d tensor), got {alpha!r}"
        )
    return a


def _log_base(base: Any) -> float:
    b = _real_scalar(base)
    if b is None or not math.isfinite(b) or b <= 0 or b == 1:
        raise ValueError(f"base must be a finite positive number != 1 (2 for bits, math.e for nats), got {base!r}")
    return math.log(b)


# ---------------------------------------------------------------------------
# kernel machinery
# ---------------------------------------------------------------------------
def kde_bandwidth(states: Any, *, alpha: float, bandwidth: Bandwidth = "dims") -> float:
    """sigma0^2 of Eq. 2: ``alpha * d`` ("dims") or ``alpha * E||sigma - mu||^2`` ("variance")."""
    s = _as_states(states)
    alpha = _check_alpha(alpha)
    return _sigma2(s, alpha, bandwidth)


def _sigma2(s: Tensor | PackedStates, alpha: float, bandwidth: str) -> float:
    if bandwidth == "dims":
        return alpha * s.shape[1]
    if bandwidth == "variance":
        x = (s.unpack() if isinstance(s, PackedStates) else s).to(torch.float64)
        var = float(((x - x.mean(0)) ** 2).sum(1).mean())
        if var <= 0:
            raise ValueError(
                "the states have zero variance (every sample has the same gates), so the "
                "'variance' bandwidth alpha*Var is 0; use bandwidth='dims' (H is then 0)"
            )
        return alpha * var
    raise ValueError(f"bandwidth must be 'dims' or 'variance', got {bandwidth!r}")


def block_rows(n: int, d: int, block: int | None = None) -> int:
    """Rows per block of the blocked distance computations for ``n`` states of ``d`` gates
    (``block`` when given; else at most BLOCK_ROWS rows and BLOCK_BYTES of float32 per block)."""
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


def _route(s: Tensor | PackedStates, backend: str) -> Tensor | PackedStates:
    """The states in the form their distances are computed from (Eq. 2's exponent).

    ``"auto"``: packed bits for binary states on the CPU (exact XOR + popcount), the
    float32 GEMM elsewhere (a GPU, where tensor cores are the fast route, or soft states).
    """
    if backend not in ("auto", "packed", "gemm"):
        raise ValueError(f"backend must be 'auto', 'packed' or 'gemm', got {backend!r}")
    on_cpu = s.device.type == "cpu"
    binary = isinstance(s, PackedStates) or s.dtype == torch.bool
    if backend == "packed" and not (on_cpu and binary):
        raise ValueError(
            "backend='packed' needs binary (bool or packed) states on the CPU; "
            f"got {'bool' if binary else s.dtype} states on {s.device}: use backend='auto' or 'gemm'"
        )
    if backend == "gemm" or not (on_cpu and binary):
        return s.unpack() if isinstance(s, PackedStates) else s
    return s if isinstance(s, PackedStates) else PackedStates.from_bool(s)


def _packed_blocks(p: PackedStates, c: int, other: PackedStates | None = None) -> Iterator[tuple[slice, slice, Tensor]]:
    """Distance blocks of packed states, in the order and shapes of the GEMM route."""
    buf = torch.empty(c * c, dtype=torch.float32)

    def block(i: int, j: int, b: PackedStates | None) -> tuple[slice, slice, Tensor]:
        ri = slice(i, min(i + c, p.n))
        nb = (p.n if b is None else b.n)
        rj = ri if b is None and j == i else slice(j, min(j + c, nb))
        out = buf[: (ri.stop - ri.start) * (rj.stop - rj.start)].view(ri.stop - ri.start, rj.stop - rj.start)
        if b is None and rj is ri:
            hamming_block(p.rows(ri), out=out)
        else:
            hamming_block(p.rows(ri), (p if b is None else b).rows(rj), out=out)
        return ri, rj, out

    starts = list(range(0, p.n, c))
    if other is None:
        for bi, i in enumerate(starts):
            yield block(i, i, None)
            for j in reversed(starts[bi + 1 :]):
                yield block(i, j, None)
    else:
        for i in starts:
            for j in range(0, other.n, c):
                yield block(i, j, other)


def _upper_block_sq_dists(s: Tensor | PackedStates, c: int) -> Iterator[tuple[slice, slice, Tensor]]:
    """``(rows_i, rows_j, d2)`` for the blocks on and above the diagonal of the self-distance
    matrix of ``s`` in row blocks of ``c`` (``rows_j is rows_i`` on the diagonal).

    Packed states: each block from the XOR + popcount kernel.  Tensors: one GEMM per
    block; the inner blocks are walked backwards, so that the block converted last is the
    next outer block (:class:`_Blocks` hands it over without converting it again).  Both
    routes visit the blocks in the same order.  A yielded block is only valid until the next.
    """
    if isinstance(s, PackedStates):
        yield from _packed_blocks(s, c)
        return
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


def _cross_block_sq_dists(
    a: Tensor | PackedStates, b: Tensor | PackedStates, c: int
) -> Iterator[tuple[slice, slice, Tensor]]:
    """``(rows_a, rows_b, d2)`` blocks of the distances between two state sets."""
    if isinstance(a, PackedStates):
        yield from _packed_blocks(a, c, b)
        return
    d = a.shape[1]
    ablocks, bblocks = _Blocks(a, c), _Blocks(b, c)
    exact = ablocks.binary and bblocks.binary and d < 2**24
    for i in range(0, a.shape[0], c):
        ai, nai = ablocks.get(i, 0)
        ri = slice(i, i + ai.shape[0])
        for j in range(0, b.shape[0], c):
            bj, nbj = bblocks.get(j, 1)
            yield ri, slice(j, j + bj.shape[0]), _block_sq_dists(ai, nai, bj, nbj, exact)


def _cross_log_kernel_sums(a: Tensor | PackedStates, b: Tensor | PackedStates, sigma2: float, c: int) -> Tensor:
    """log sum_k exp(-||a_j - b_k||^2 / (2 sigma2)) for every row j of ``a`` (streamed)."""
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"states have {a.shape[1]} gates but the reference set has {b.shape[1]}")
    inv = -0.5 / sigma2
    lse = _RowLSE(a.shape[0], a.device)
    for ri, _, d2 in _cross_block_sq_dists(a, b, c):
        lse.add(ri, torch.logsumexp(d2.mul_(inv), 1))
    return lse.result()


def _eq2_eq4_nats(
    blocks: Iterable[tuple[slice, slice, Tensor]], n: int, sigma2: float, y: Tensor | None
) -> tuple[Tensor, float | None, int]:
    """The one implementation of Eq. 2 and Eq. 4 over upper-triangle self-distance blocks.

    Returns (log sum_k K_jk for every row j, sum_m p_m H(Sigma | Y = m) in nats or None,
    number of classes).  Each block's kernel values K = exp(-d2 / (2 sigma0^2)) are
    computed once in float32 and summed per row (and, off the diagonal, per column)
    into float64 totals; with labels the sums are per class (one small product with the
    class one-hots), so H(Sigma) and every H(Sigma | Y = m) (rows of class m over the
    columns of class m) come from the same kernel values and no distance is computed
    twice.  A self-distance matrix has a zero diagonal, so every row's total and its
    own-class sum are >= 1: far pairs may underflow to 0 without emptying a row, and no
    max-subtraction is needed.  Blocks are not modified.
    """
    inv = -0.5 / sigma2
    sums: Tensor | None = None
    onehot = inverse = counts = None
    n_classes = 0
    for ri, rj, d2 in blocks:
        if sums is None:
            if y is not None:
                y = y.to(d2.device)
                classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
                n_classes = len(classes)
                onehot = torch.nn.functional.one_hot(inverse, n_classes).to(torch.float32)
            sums = torch.zeros(n, dtype=torch.float64, device=d2.device)
            per_class = None if y is None else torch.zeros(n, n_classes, dtype=torch.float64, device=d2.device)
        if d2.device.type == "cpu":  # compiled: one exp per value, sums in float64, any thread count
            sym = rj is ri
            row_c = None if per_class is None else per_class[ri]
            col_c = None if per_class is None or sym else per_class[rj]
            row_t, col_t = sums[ri], sums[ri] if sym else sums[rj]
            kernel_block_sums(
                d2, inv, sym, None if inverse is None else inverse[ri], None if inverse is None else inverse[rj],
                row_t, row_c, col_t, col_c,
            )
            continue
        k = torch.mul(d2, inv).exp_()
        # the totals the same way with and without labels: H does not depend on them
        sums[ri] += k.sum(1, dtype=torch.float64)
        if rj is not ri:
            sums[rj] += k.sum(0, dtype=torch.float64)
        if onehot is not None:
            per_class[ri] += (k @ onehot[rj]).to(torch.float64)
            if rj is not ri:
                per_class[rj] += (k.T @ onehot[ri]).to(torch.float64)
    assert sums is not None
    rows = sums.log()
    if y is None:
        return rows, None, 0
    own = per_class.gather(1, inverse[:, None]).squeeze(1).log()
    h_cond = 0.0
    for m, n_m in enumerate(counts.tolist()):
        if n_m > 1:
            h_cond += (n_m / n) * (math.log(n_m) - float(own[inverse == m].mean()))
    return rows, h_cond, n_classes


def _kde_terms(
    s: Tensor | PackedStates, sigma2: float, block: int | None, backend: str, y: Tensor | None = None
) -> tuple[float, float | None, int]:
    """(H in nats by Eq. 2, sum_m p_m H(Sigma | Y = m) in nats or None, number of classes)."""
    n, d = s.shape
    src = _route(s, backend)
    rows, h_cond, n_classes = _eq2_eq4_nats(_upper_block_sq_dists(src, block_rows(n, d, block)), n, sigma2, y)
    # Eq. 2: H <= -1/n sum_j log(1/n sum_k K_jk) = log n - mean_j log sum_k K_jk
    return math.log(n) - float(rows.mean()), h_cond, n_classes


def squared_distances(
    states: Any, other: Any = None, *, block: int | None = None, backend: Backend = "auto"
) -> Tensor:
    """The ``[n, n]`` float32 matrix of ||sigma_j - sigma_k||^2 (the exponent of Eq. 2's kernel).

    Exact integers for 0/1 states (fewer than 2**24 gates): Hamming distances by XOR +
    popcount on the CPU (``states`` may be a :class:`PackedStates`, e.g. ``rec.packed()``),
    a float32 GEMM elsewhere.  Distances of concatenated layers are the sums of the
    layers' distances, so one matrix per layer also gives the whole network's: see
    :func:`kde_entropy_from_distances`.  Uses n^2 * 4 bytes.

    ``other``: a second set of ``[m, d]`` states (e.g. the synthesized independent states
    of Eq. 28, :func:`independent_states`); then the ``[n, m]`` matrix of
    ||sigma_j - other_k||^2 is returned (the exponent of Eq. 28's denominator), computed
    by the same route as the states' own distances (see
    :func:`kde_total_correlation_from_distances`).
    """
    s = _route(_as_states(states), backend)
    n, d = s.shape
    c = block_rows(n, d, block)
    if other is not None:
        o = _as_states(other, "other")
        if o.shape[1] != d:
            raise ValueError(f"states have {d} gates but other has {o.shape[1]}: both must be [*, {d}]")
        if isinstance(s, PackedStates):
            if not (isinstance(o, PackedStates) or o.dtype == torch.bool):
                raise ValueError("other must be binary (bool or packed) like the states when the distances are "
                                 "computed on packed bits; pass backend='gemm' for soft states")
            o = s.repack(o.unpack() if isinstance(o, PackedStates) else o)
        elif isinstance(o, PackedStates):
            o = o.unpack()
        out = torch.empty(n, o.shape[0], dtype=torch.float32, device=s.device)
        for ri, rj, d2 in _cross_block_sq_dists(s, o, c):
            out[ri, rj] = d2
        return out
    out = torch.empty(n, n, dtype=torch.float32, device=s.device)
    for ri, rj, d2 in _upper_block_sq_dists(s, c):
        out[ri, rj] = d2
        if rj is not ri:
            out[rj, ri] = d2.T
    return out


def _matrix_blocks(d2: Tensor, c: int) -> Iterator[tuple[slice, slice, Tensor]]:
    """Upper-triangle blocks (views) of a given distance matrix, as :func:`_upper_block_sq_dists` visits them."""
    n = d2.shape[0]
    starts = list(range(0, n, c))
    for bi, i in enumerate(starts):
        ri = slice(i, min(i + c, n))
        yield ri, ri, d2[ri, ri]
        for j in reversed(starts[bi + 1 :]):
            rj = slice(j, min(j + c, n))
            yield ri, rj, d2[ri, rj]


def kde_entropy_from_distances(
    sq_distances: Tensor,
    *,
    sigma2: float,
    labels: Any = None,
    base: float = 2.0,
    warn: bool = True,
) -> tuple[Estimate, Estimate | None]:
    """``(H(Sigma), I(X; Sigma; Y))`` by Eq. 2 and Eq. 4 from a squared-distance matrix.

    ``sq_distances``: ``[n, n]`` from :func:`squared_distances` (or a sum of them over
    layers); ``sigma2``: the kernel width sigma0^2 (:func:`kde_bandwidth` of the states).
    The same code as :func:`kde_entropy_and_interaction` (one implementation of Eq. 4),
    fed with the given matrix as one block instead of blocks computed from states, so
    the values agree with it to float rounding (exactly up to 512 samples).  The diagonal must be
    the zero self-distance.  Without ``labels`` the second value is None.  NaN or negative
    distances are a ValueError.  ``warn=False`` silences :class:`SaturationWarning`.
    """
    if not isinstance(sq_distances, Tensor) or sq_distances.dim() != 2 or sq_distances.shape[0] != sq_distances.shape[1]:
        shape = tuple(sq_distances.shape) if isinstance(sq_distances, Tensor) else type(sq_distances).__name__
        raise ValueError(f"sq_distances must be a square [n, n] tensor, got {shape}")
    n = sq_distances.shape[0]
    if n < 2:
        raise ValueError(f"sq_distances covers {n} sample(s): entropy estimates need at least 2")
    s2 = _real_scalar(sigma2)
    if s2 is None or not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be > 0 and finite (see kde_bandwidth), got {sigma2!r}")
    lb = _log_base(base)
    d2 = sq_distances.to(torch.float32)
    if bool(torch.isnan(d2).any()):
        raise ValueError("sq_distances contains NaN: pass squared distances of gating states (see squared_distances)")
    if float(d2.min()) < 0:
        raise ValueError(f"sq_distances has negative entries (min {float(d2.min()):g}): squared distances are >= 0")
    y = None if labels is None else _as_labels(labels, n)
    # the matrix is already in memory: one block (one exp and one product over it)
    rows, h_cond, n_classes = _eq2_eq4_nats(_matrix_blocks(d2, n), n, s2, y)
    h = math.log(n) - float(rows.mean())
    est_h = _warned(_entropy_estimate(h, n, s2, lb, "H"), warn)
    if y is None:
        return est_h, None
    return est_h, _warned(_interaction_estimate(h, h_cond, n_classes, s2, lb), warn)


def _entropy_estimate(nats: float, n: int, sigma2: float, lb: float, what: str) -> Estimate:
    """An Eq. 2 bound in units of log ``lb``, clipped at 0, with its ceiling log n."""
    return Estimate(max(nats / lb, 0.0), ceiling=math.log(n) / lb, sigma2=sigma2, what=what,
                    margin=HEADROOM_BITS * math.log(2) / lb)


def _interaction_estimate(h: float, h_cond: float, n_classes: int, sigma2: float, lb: float) -> Estimate:
    """Eq. 4 in units of log ``lb`` from H(Sigma) and sum_m p_m H(Sigma | Y = m) in nats; ceiling log M."""
    ceiling = math.log(n_classes) / lb
    return Estimate((h - h_cond) / lb, ceiling=ceiling, sigma2=sigma2, what="I(X;Sigma;Y)",
                    margin=HEADROOM_FRACTION_CLASSES * ceiling)


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
    backend: Backend = "auto",
    warn: bool = True,
) -> Estimate:
    """H(Sigma_l) by its KDE upper bound, Eq. 2.

    H <= -1/n sum_j log( 1/n sum_k exp(-||sigma_j - sigma_k||^2 / (2 sigma0^2)) ).

    Parameters
    ----------
    states: ``[n, d]`` gating states (bool, floats in [0, 1], or :class:`PackedStates`
        such as ``recording.packed()``).
    alpha: kernel width factor (Section 4.4: 0.01 after FC layers, 0.04 after conv);
        a positive real scalar (float, numpy scalar or 0-d tensor).
    bandwidth: ``"dims"`` (default; sigma0^2 = alpha * d, the authors' public code
        and plots) or ``"variance"`` (sigma0^2 = alpha * Var(Sigma_l), the paper's
        text below Eq. 2; it saturates at log2 n for typical ReLU layers).
    base: 2 for bits (default), ``math.e`` for nats.
    block: rows per block of the distance computation (default: by memory).
    backend: ``"auto"`` (bits on the CPU, float GEMM on a GPU), ``"packed"`` or ``"gemm"``.
    warn: raise :class:`SaturationWarning` when the estimate saturates (default True).

    Returns
    -------
    Estimate: a float in [0, log_base n], flagged when saturated.
    """
    s = _as_states(states)
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    lb = _log_base(base)
    h, _, _ = _kde_terms(s, sigma2, block, backend)
    return _warned(_entropy_estimate(h, s.shape[0], sigma2, lb, "H"), warn)


def kde_mutual_information(
    states_without_sampling: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
    backend: Backend = "auto",
    warn: bool = True,
) -> Estimate:
    """I(X; Sigma_l) by Eq. 3: the KDE entropy of states recorded with sampling removed.

    Pass the states recorded with the model's random sampling switched off
    (dropout as identity, a VAE's mean instead of its sample): see
    :func:`tcomplex.record_gates_with_and_without_sampling`.  For a deterministic
    network this equals :func:`kde_entropy` of its states (H(Sigma|X) = 0).
    """
    s = _as_states(states_without_sampling, "states_without_sampling")
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    lb = _log_base(base)
    h, _, _ = _kde_terms(s, sigma2, block, backend)
    return _warned(_entropy_estimate(h, s.shape[0], sigma2, lb, "I(X;Sigma)"), warn)


def kde_interaction_information(
    states: Any,
    labels: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
    backend: Backend = "auto",
    warn: bool = True,
) -> Estimate:
    """I(X; Sigma_l; Y) by Eq. 4, for a deterministic network (I(Sigma; Y | X) = 0).

    I(X; Sigma; Y) = H(Sigma) - sum_m p_m H(Sigma | Y = m), each term by the KDE
    bound of Eq. 2 with one sigma0^2 computed from all samples.  The class prior
    is p_m = n_m / n (the paper's "n_m / M" is a typo).  Bounded by log2 M.
    ``labels``: integer class ids, 1-D, one per sample.
    """
    _, ixsy = kde_entropy_and_interaction(
        states, labels, alpha=alpha, bandwidth=bandwidth, base=base, block=block, backend=backend, warn=False
    )
    return _warned(ixsy, warn)


def kde_entropy_and_interaction(
    states: Any,
    labels: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    base: float = 2.0,
    block: int | None = None,
    backend: Backend = "auto",
    warn: bool = True,
) -> tuple[Estimate, Estimate]:
    """``(H(Sigma_l), I(X; Sigma_l; Y))`` of Eq. 2 and Eq. 4 in one pass.

    Equal to ``(kde_entropy(...), kde_interaction_information(...))`` with the same
    arguments: one pass over the distance blocks gives H(Sigma) and, from the same
    kernel values summed per class, every H(Sigma | Y = m).
    """
    s = _as_states(states)
    y = _as_labels(labels, s.shape[0])
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    lb = _log_base(base)
    h, h_cond, n_classes = _kde_terms(s, sigma2, block, backend, y)
    return (
        _warned(_entropy_estimate(h, s.shape[0], sigma2, lb, "H"), warn),
        _warned(_interaction_estimate(h, h_cond, n_classes, sigma2, lb), warn),
    )


def activation_rates(states: Any) -> Tensor:
    """Per-gate activation rate alpha_l^i = mean over samples (float64 [d])."""
    s = _as_states(states)
    if isinstance(s, PackedStates):
        return s.column_counts() / s.shape[0]
    if s.dtype == torch.bool:  # float32 counts are exact below 2**24 samples
        return s.to(torch.float32).sum(0).to(torch.float64) / s.shape[0]
    return s.to(torch.float64).mean(0)


def independent_states(states: Any, *, generator: torch.Generator | None = None) -> Tensor:
    """The synthesized states hat sigma of Eq. 28 (Appendix F): bool ``[n, d]``.

    Row k's gates are independent Bernoulli draws with the observed activation rates
    alpha_l^i of ``states`` (so p(hat sigma) is the product of the marginals
    prod_i p(sigma_l^i) of Eq. 5).  ``generator`` seeds the draw (default: seed 0);
    :func:`kde_total_correlation` draws exactly these states with the same generator.
    """
    s = _as_states(states)
    if generator is None:
        generator = torch.Generator(device=s.device).manual_seed(0)
    n = s.shape[0]
    if isinstance(s, PackedStates):  # float32 rates: exact counts / n, as mean() computes them
        rates = s.column_counts().to(torch.float32) / n
    else:
        rates = s.to(torch.float32).mean(0)
    return torch.rand(s.shape, generator=generator, device=s.device) < rates


def _tc_estimate(own: Tensor, cross: Tensor, n: int, m: int, leave_one_out: bool, sigma2: float,
                 lb: float) -> Estimate:
    """Eq. 28 from the row log-kernel sums (nats) of the own and the synthesized states.

    Standard (``leave_one_out=False``): mean_j [own_j - cross_j] (+ log(m / n) when the
    synthesized set has m != n states).  Leave-one-out: own_j excludes k = j, and the
    sums are normalised to densities: mean_j [own_j - log(n - 1) - cross_j + log m].
    """
    value = float((own - cross).mean())
    if leave_one_out:
        value += math.log(m) - math.log(n - 1)
    elif m != n:
        value += math.log(m) - math.log(n)
    return Estimate(value / lb, ceiling=None, sigma2=sigma2, what="TC (leave-one-out)" if leave_one_out else "TC")


def kde_total_correlation(
    states: Any,
    *,
    alpha: float,
    bandwidth: Bandwidth = "dims",
    generator: torch.Generator | None = None,
    base: float = 2.0,
    block: int | None = None,
    backend: Backend = "auto",
    leave_one_out: bool = False,
) -> Estimate:
    """TC(Sigma_l) by the KDE bound of Eq. 28 (Appendix F).

    TC <= 1/n sum_j log( sum_k K(sigma_j, sigma_k) / sum_k K(sigma_j, hat sigma_k) ),
    where hat sigma_k are n synthesized states whose gates are independent
    Bernoulli draws with the observed activation rates (so p(hat sigma) is the
    product of the marginals; :func:`independent_states`).  ``generator`` seeds the
    draw (default: seed 0, so the estimate is deterministic).  sigma0^2 comes from the
    observed states.

    The value can be negative (e.g. -0.04 bits) although TC >= 0: Eq. 28 is the
    difference of two kernel estimates, log p_hat(sigma) - log q_hat(sigma), each with its
    own finite-sample error, and with nearly independent gates (true TC near 0) the
    synthesized states can lie closer to the observed ones than the observed ones to
    each other.  The raw value is returned (not clipped, so averages stay unbiased) and
    flagged: ``.negative`` is True; read it as "TC indistinguishable from 0 at this n".

    ``leave_one_out=True``: Eq. 28's numerator includes the own-sample term
    K(sigma_j, sigma_j) = 1, which the synthesized sum has no counterpart for; with
    narrow kernels (every state far from the others) the numerator is then ~1 for
    every j and TC ~ -1/n sum_j log sum_k K(sigma_j, hat sigma_k), a kernel
    cross-entropy that tracks the marginal entropy sum C_l (Eq. 6) rather than the
    dependence between gates.  The leave-one-out variant drops k = j from the
    numerator and compares two out-of-sample kernel density estimates at each
    observed state:

        TC_loo = 1/n sum_j [ log( 1/(n-1) sum_{k != j} K(sigma_j, sigma_k) )
                             - log( 1/n sum_k K(sigma_j, hat sigma_k) ) ],

    i.e. the mean log-ratio of the leave-one-out KDE of p(sigma) and the KDE of the
    product of the marginals, both evaluated at states outside their own sample.
    It is no longer an upper bound in the sense of Eq. 28; it is a plug-in estimate of
    TC = E[log p(sigma) / prod_i p(sigma^i)] (Eq. 27).  For binary states and a kernel
    narrow enough that only identical patterns count (K ~ [sigma_j = sigma_k]) it is
    mean_j log( (c(sigma_j) - 1) / (n - 1) ) - log q_hat(sigma_j), c = the pattern's
    count, which approaches the plug-in TC of :func:`plugin_total_correlation` when
    every pattern occurs many times; a pattern seen once has an empty leave-one-out
    sum at that limit (log 0), so the value is then dominated by nearest-neighbour
    distances and can be very negative: read it with the kernel width it was computed at.
    """
    s = _as_states(states)
    sigma2 = _sigma2(s, _check_alpha(alpha), bandwidth)
    lb = _log_base(base)
    n, d = s.shape
    synth = independent_states(s, generator=generator)
    src = _route(s, backend)
    if isinstance(src, PackedStates):
        synth_src: Tensor | PackedStates = src.repack(synth)
    else:
        synth_src = synth
    del synth
    c = block_rows(n, d, block)
    inv = -0.5 / sigma2
    own_lse = _RowLSE(n, s.device)
    for ri, rj, d2 in _upper_block_sq_dists(src, c):
        logits = d2.mul_(inv)
        if leave_one_out and rj is ri:
            logits.fill_diagonal_(-math.inf)  # drop K(sigma_j, sigma_j) = 1 from the numerator
        own_lse.add(ri, torch.logsumexp(logits, 1))
        if rj is not ri:
            own_lse.add(rj, torch.logsumexp(logits, 0))
    own = own_lse.result()
    cross = _cross_log_kernel_sums(src, synth_src, sigma2, c)
    return _tc_estimate(own, cross, n, n, leave_one_out, sigma2, lb)


def kde_total_correlation_from_distances(
    sq_distances: Tensor,
    cross_sq_distances: Tensor,
    *,
    sigma2: float,
    leave_one_out: bool = False,
    base: float = 2.0,
) -> Estimate:
    """TC(Sigma_l) by Eq. 28 (or its leave-one-out variant) from distance matrices.

    ``sq_distances``: the ``[n, n]`` squared distances of the observed states
    (:func:`squared_distances`, zero diagonal); ``cross_sq_distances``: the ``[n, m]``
    squared distances to m synthesized independent states
    (``squared_distances(states, independent_states(states))``); ``sigma2``: the kernel
    width sigma0^2 (:func:`kde_bandwidth` of the observed states).  The same quantity as
    :func:`kde_total_correlation` (with ``leave_one_out`` as documented there), computed
    from given matrices, so one pair of matrices serves many kernel widths; values agree
    with the streamed estimator to float32 rounding of the per-row log-sum-exp.  With
    m != n the two sums are normalised to densities (a log(m / n) term).
    """
    for name, mat in (("sq_distances", sq_distances), ("cross_sq_distances", cross_sq_distances)):
        if not isinstance(mat, Tensor) or mat.dim() != 2:
            shape = tuple(mat.shape) if isinstance(mat, Tensor) else type(mat).__name__
            raise ValueError(f"{name} must be a 2-D tensor, got {shape}")
    n = sq_distances.shape[0]
    if sq_distances.shape[1] != n:
        raise ValueError(f"sq_distances must be square [n, n], got {tuple(sq_distances.shape)}")
    if n < 2:
        raise ValueError(f"sq_distances covers {n} sample(s): TC needs at least 2")
    if cross_sq_distances.shape[0] != n or cross_sq_distances.shape[1] < 1:
        raise ValueError(f"cross_sq_distances must be [n = {n}, m >= 1] (observed x synthesized states), "
                         f"got {tuple(cross_sq_distances.shape)}")
    s2 = _real_scalar(sigma2)
    if s2 is None or not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be > 0 and finite (see kde_bandwidth), got {sigma2!r}")
    lb = _log_base(base)
    inv = -0.5 / s2
    own_logits = sq_distances.to(torch.float32).mul(inv)
    cross_logits = cross_sq_distances.to(torch.float32).mul(inv)
    for name, logits in (("sq_distances", own_logits), ("cross_sq_distances", cross_logits)):
        if bool(torch.isnan(logits).any()) or float(logits.max()) > 0:
            raise ValueError(f"{name} has NaN or negative entries: pass squared distances (see squared_distances)")
    if leave_one_out:
        own_logits.fill_diagonal_(-math.inf)
    own = torch.logsumexp(own_logits, 1).to(torch.float64)
    cross = torch.logsumexp(cross_logits, 1).to(torch.float64)
    return _tc_estimate(own, cross, n, cross_sq_distances.shape[1], leave_one_out, s2, lb)


def _row_value_counts(d2: Tensor, lo: int, width: int) -> Tensor:
    """float64 ``[n, width]`` counts of the integer values lo .. lo + width - 1 in each row of ``d2``."""
    n = d2.shape[0]
    idx = (d2.to(torch.int64) - lo) + torch.arange(n, device=d2.device)[:, None] * width
    return torch.bincount(idx.reshape(-1), minlength=n * width).reshape(n, width).to(torch.float64)


def kde_sweep_from_distances(
    sq_distances: Tensor,
    cross_sq_distances: Tensor,
    sigma2s: Iterable[float],
    *,
    base: float = 2.0,
) -> list[tuple[Estimate, Estimate, Estimate]]:
    """``(H, TC, TC_loo)`` by Eq. 2, Eq. 28 and its leave-one-out variant for many kernel widths.

    One pair of distance matrices (``sq_distances`` ``[n, n]`` of the observed states,
    ``cross_sq_distances`` ``[n, m]`` to synthesized independent states, as for
    :func:`kde_total_correlation_from_distances`) serves every ``sigma2`` in ``sigma2s``;
    the i-th tuple holds the three estimates at ``sigma2s[i]``, each equal to
    :func:`kde_entropy_from_distances` (H, with its saturation flag) and
    :func:`kde_total_correlation_from_distances` (``leave_one_out`` False / True) to
    float rounding (1e-6 relative; tested).  When both matrices hold integers (Hamming
    distances of binary states) spanning fewer than n / 2 values, each row's distances are
    counted once and every width costs n x (number of values) operations in float64
    instead of n x (n + m) exponentials: the case of narrow layers (d << n).  Otherwise
    each width is one float32 log-sum-exp per matrix (and one with the diagonal dropped).
    """
    for name, mat in (("sq_distances", sq_distances), ("cross_sq_distances", cross_sq_distances)):
        if not isinstance(mat, Tensor) or mat.dim() != 2:
            shape = tuple(mat.shape) if isinstance(mat, Tensor) else type(mat).__name__
            raise ValueError(f"{name} must be a 2-D tensor, got {shape}")
        if bool(torch.isnan(mat).any()) or float(mat.min()) < 0:
            raise ValueError(f"{name} has NaN or negative entries: pass squared distances (see squared_distances)")
    n = sq_distances.shape[0]
    if sq_distances.shape[1] != n or n < 2:
        raise ValueError(f"sq_distances must be square [n, n] with n >= 2, got {tuple(sq_distances.shape)}")
    if cross_sq_distances.shape[0] != n or cross_sq_distances.shape[1] < 1:
        raise ValueError(f"cross_sq_distances must be [n = {n}, m >= 1] (observed x synthesized states), "
                         f"got {tuple(cross_sq_distances.shape)}")
    widths = []
    for s2 in sigma2s:
        v = _real_scalar(s2)
        if v is None or not math.isfinite(v) or v <= 0:
            raise ValueError(f"every sigma2 must be > 0 and finite (see kde_bandwidth), got {s2!r}")
        widths.append(v)
    lb = _log_base(base)
    m = cross_sq_distances.shape[1]
    own32, cross32 = sq_distances.to(torch.float32), cross_sq_distances.to(torch.float32)
    integral = bool(torch.equal(own32, own32.round()) and torch.equal(cross32, cross32.round()))
    lo = int(min(float(own32.min()), float(cross32.min()))) if integral else 0
    span = int(max(float(own32.max()), float(cross32.max()))) - lo + 1 if integral else n
    out = []
    if integral and span < n / 2:
        own_c, cross_c = _row_value_counts(own32, lo, span), _row_value_counts(cross32, lo, span)
        diag = own32.diagonal().to(torch.int64) - lo
        loo_c = own_c.clone()
        loo_c[torch.arange(n), diag] -= 1  # drop K(sigma_j, sigma_j)
        values = torch.arange(lo, lo + span, dtype=torch.float64)
        log_own, log_loo, log_cross = own_c.log(), loo_c.log(), cross_c.log()  # log 0 = -inf: no such pair
        for s2 in widths:
            logits = values * (-0.5 / s2)
            own = torch.logsumexp(log_own + logits, 1)
            loo = torch.logsumexp(log_loo + logits, 1)
            cross = torch.logsumexp(log_cross + logits, 1)
            h = _entropy_estimate(math.log(n) - float(own.mean()), n, s2, lb, "H")
            out.append((h, _tc_estimate(own, cross, n, m, False, s2, lb), _tc_estimate(loo, cross, n, m, True, s2, lb)))
        return out
    for s2 in widths:
        inv = -0.5 / s2
        own_logits = own32.mul(inv)
        own = torch.logsumexp(own_logits, 1).to(torch.float64)
        own_logits.fill_diagonal_(-math.inf)
        loo = torch.logsumexp(own_logits, 1).to(torch.float64)
        del own_logits
        cross = torch.logsumexp(cross32.mul(inv), 1).to(torch.float64)
        h = _entropy_estimate(math.log(n) - float(own.mean()), n, s2, lb, "H")
        out.append((h, _tc_estimate(own, cross, n, m, False, s2, lb), _tc_estimate(loo, cross, n, m, True, s2, lb)))
    return out


# ---------------------------------------------------------------------------
# exact (plug-in) quantities of the empirical distribution
# ---------------------------------------------------------------------------
def _binary(states: Any) -> Tensor:
    s = _as_states(states)
    if isinstance(s, PackedStates):
        return s.unpack()
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


def plugin_entropy(states: Any, *, base: float = 2.0, warn: bool = True) -> Estimate:
    """Exact entropy of the empirical distribution of gating patterns (binary states).

    -sum_x p_hat(x) log p_hat(x) over the distinct rows; at most log n.  Unbiased
    only when n is much larger than the number of patterns; use it on small d.
    ``warn=False`` silences :class:`SaturationWarning`.
    """
    s = _binary(states)
    _, counts = _pattern_counts(s)
    p = counts / counts.sum()
    h = float(-(p * np.log(p)).sum()) / _log_base(base)
    lb = _log_base(base)
    return _warned(Estimate(h, ceiling=math.log(s.shape[0]) / lb, what="plug-in H", margin=HEADROOM_BITS * math.log(2) / lb),
                   warn)


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
    warn: bool = True,
) -> list[Estimate]:
    """H(Sigma_l, ..., Sigma_L) for l = 1..L (Proposition 2, Figure 1).

    ``recording`` is a :class:`tcomplex.Recording` (anything with ``suffix(l)``,
    ``default_alpha(names)``, ``names`` and ``len``).  With ``estimator="plugin"``
    the values are exact for the empirical distribution and non-increasing in l;
    the KDE bound's sigma0^2 grows with the number of gates d, so it need not be.
    ``alpha=None`` uses the recording's default for each suffix (0.04 if it holds
    a gate after a convolution, else 0.01).  A recording with ``packed(names)`` hands
    its suffixes to the KDE as bits (no bool copy).  ``warn=False`` silences
    :class:`SaturationWarning`.
    """
    if estimator not in ("kde", "plugin"):
        raise ValueError(f"estimator must be 'kde' or 'plugin', got {estimator!r}")
    L = len(recording)
    if L == 0:
        raise ValueError("the recording has no gating layer")
    out: list[Estimate] = []
    for l in range(1, L + 1):
        names = recording.names[l - 1 :]
        if estimator == "plugin":
            out.append(plugin_entropy(recording.suffix(l), base=base, warn=warn))
        else:
            s = recording.packed(names) if hasattr(recording, "packed") else recording.suffix(l)
            a = alpha if alpha is not None else recording.default_alpha(names)
            out.append(kde_entropy(s, alpha=a, bandwidth=bandwidth, base=base, warn=warn))
    return out
