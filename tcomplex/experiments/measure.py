"""One measurement entry point: gating states -> tidy complexity rows.

Training (every tracked epoch), the chapters' studies and alpha sweeps all turn
a :class:`~tcomplex.gating.Recording` (and labels, alpha values, a bandwidth
rule) into rows through :func:`measure`; :func:`measure_complexity` records a
model first.  Only the public estimator functions of :mod:`tcomplex.estimators`
are called.

Rows are dicts with ``layer`` (a gating-layer name, :data:`ALL` for the
concatenated Sigma of the whole network, or ``"suffix:l"`` for
(Sigma_l..Sigma_L)), ``metric``, ``value`` and ``bin`` (histogram bin, else
None).  Metrics: ``H`` (Eq. 2), ``I_XSY`` (Eq. 4, when labels are given),
``I_XS`` (Eq. 3, states recorded without sampling), ``TC`` (Eq. 28), ``C``
(Eq. 6), ``H_plugin`` / ``TC_plugin`` (exact plug-in values), ``width``,
``alpha``, ``saturated_H``, ``rate_hist``, ``rate_mean`` and ``rate_sd``.

Fast path, chosen here: with per-layer metrics, the whole network and at most
:data:`DENSE_MAX_SAMPLES` samples, the whole network's squared distances are
the sum of the layers' (Eq. 2 needs only the Hamming distances), so one
distance matrix per layer serves the layer, the whole network and the class
terms of Eq. 4.  Otherwise each estimate streams its own distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tcomplex import estimators as est
from tcomplex.gating import Recording, record_gates

__all__ = ["ALL", "RATE_BINS", "DENSE_MAX_SAMPLES", "measure", "measure_complexity"]

#: layer label of the whole network's Sigma (all gating layers concatenated)
ALL = "__all__"
#: bins of the activation-rate histograms (Figure 3c)
RATE_BINS = 20
#: the fast path keeps n x n float32 distance matrices up to this many samples
DENSE_MAX_SAMPLES = 4096


def _row(layer: str, metric: str, value: float, bin_: int | None = None) -> dict[str, Any]:
    return {"layer": layer, "metric": metric, "value": float(value), "bin": bin_}


def _estimate_row(layer: str, metric: str, e: est.Estimate, alpha: float) -> dict[str, Any]:
    """A row of an alpha sweep: the estimate with its alpha, sigma0^2, ceiling and saturation flag."""
    return {"layer": layer, "metric": metric, "value": float(e), "bin": None, "alpha": float(alpha),
            "sigma2": e.sigma2, "ceiling": e.ceiling, "saturated": bool(e.saturated),
            "n": None, "width": None}


def _layer_rows(layer: str, states: Tensor, labels: Tensor | None, det: Tensor | None, a: float, *,
                bandwidth: str, tc: bool, rates: bool, rate_stats: bool, plugin: bool, entropy: bool,
                sq_dists: Tensor | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if entropy:
        if sq_dists is not None:  # H and the class terms of Eq. 4 from one distance matrix
            h, ixsy = est.kde_entropy_from_distances(
                sq_dists, sigma2=est.kde_bandwidth(states, alpha=a, bandwidth=bandwidth), labels=labels, warn=False)
        elif labels is not None:  # H(Sigma) is a term of Eq. 4: computed once for both
            h, ixsy = est.kde_entropy_and_interaction(states, labels, alpha=a, bandwidth=bandwidth, warn=False)
        else:
            h, ixsy = est.kde_entropy(states, alpha=a, bandwidth=bandwidth, warn=False), None
        out += [_row(layer, "H", h), _row(layer, "saturated_H", float(h.saturated))]
    out += [_row(layer, "alpha", a), _row(layer, "width", states.shape[1])]
    if entropy:
        if ixsy is not None:
            out.append(_row(layer, "I_XSY", ixsy))
        if det is not None:
            out.append(_row(layer, "I_XS", est.kde_mutual_information(det, alpha=a, bandwidth=bandwidth, warn=False)))
    out.append(_row(layer, "C", est.marginal_entropy_sum(states)))
    if tc:
        out.append(_row(layer, "TC", est.kde_total_correlation(states, alpha=a, bandwidth=bandwidth)))
    if plugin:
        hp = est.plugin_entropy(states, warn=False)
        out += [_row(layer, "H_plugin", hp), _row(layer, "saturated_H_plugin", float(hp.saturated)),
                _row(layer, "TC_plugin", est.plugin_total_correlation(states))]
    if rates:
        r = est.activation_rates(states).numpy()
        counts, _ = np.histogram(r, bins=RATE_BINS, range=(0.0, 1.0))
        out += [_row(layer, "rate_hist", c, b) for b, c in enumerate(counts)]
        out.append(_row(layer, "rate_mean", r.mean()))
    if rate_stats:
        rt = est.activation_rates(states)
        if not rates:
            out.append(_row(layer, "rate_mean", rt.mean()))
        out.append(_row(layer, "rate_sd", rt.std()))
    return out


def measure(
    recording: Recording | Tensor,
    labels: Tensor | None = None,
    *,
    alphas: Sequence[float | None] | None = None,
    alpha: float | None = None,
    bandwidth: str = "dims",
    without_sampling: Recording | None = None,
    per_layer: bool = True,
    whole_network: bool = True,
    suffix: bool = False,
    tc: bool = False,
    rates: bool = True,
    rate_stats: bool = False,
    plugin: bool = False,
) -> list[dict[str, Any]]:
    """Complexity metrics of a recording as tidy rows (see the module docstring).

    Parameters
    ----------
    recording: the gating states Sigma_l of the analysis set, per layer; or one
        bool tensor ``[n, d]`` (e.g. stored states), measured as the whole
        network's Sigma (then alpha has no default and must be given).
    labels: class labels of the samples; gives I(X;Sigma;Y) (Eq. 4) beside H (Eq. 2).
    alpha: kernel width factor of Eq. 2 for every estimate; None: each layer's
        default (0.01 after FC, 0.04 after conv; the whole network gets 0.04 as
        soon as one of its layers is convolutional, as in the authors' code).
    alphas: an alpha sweep (Appendix H): H (and I_XSY with labels) for every
        value, None meaning the default above.  Sweep rows carry ``alpha``,
        ``sigma2``, ``ceiling`` and ``saturated`` columns; the other metrics are
        not computed.
    bandwidth: ``"dims"`` (sigma0^2 = alpha * d) or ``"variance"`` (alpha * Var).
    without_sampling: states recorded with sampling switched off: gives I(X;Sigma) (Eq. 3).
    per_layer / whole_network: which Sigma to measure: each layer, the concatenation.
    suffix: H(Sigma_l..Sigma_L) by KDE and plug-in for every l (Proposition 2, Figure 1).
    tc: TC(Sigma_l) per layer (Eq. 28).
    rates: activation-rate histogram (Figure 3c) and mean rate per Sigma.
    rate_stats: mean and standard deviation of the activation rates per Sigma.
    plugin: exact plug-in H and TC per Sigma (Eq. 6 holds exactly for them).

    Saturation is reported in the rows (``saturated_H`` or the ``saturated``
    column), so the estimators' SaturationWarning is not shown here.
    """
    if alphas is not None and alpha is not None:
        raise ValueError("pass either alpha (one value) or alphas (a sweep), not both")
    if isinstance(recording, Tensor):
        if alpha is None and (alphas is None or any(a is None for a in alphas)):
            raise ValueError("states given as a tensor have no per-layer default alpha: pass alpha or alphas")
        per_layer, suffix = False, False
        recording = _Single(recording)
    names = recording.names
    if not names:
        raise ValueError("the recording has no gating layers: nothing to measure")
    if alphas is not None:
        return _sweep(recording, labels, list(alphas), bandwidth=bandwidth, per_layer=per_layer,
                      whole_network=whole_network)
    det = without_sampling
    dense = per_layer and whole_network and recording.n <= DENSE_MAX_SAMPLES
    total: Tensor | None = None
    layer_rows: list[dict[str, Any]] = []
    opts = dict(bandwidth=bandwidth, rates=rates, rate_stats=rate_stats, plugin=plugin, entropy=True)
    if per_layer:
        for name in names:
            a = alpha if alpha is not None else recording.info[name].default_alpha
            states = recording.packed([name])  # bits: distances by XOR + popcount on the CPU
            d2 = est.squared_distances(states) if dense else None
            layer_rows += _layer_rows(name, states, labels, det.packed([name]) if det is not None else None,
                                      a, tc=tc, sq_dists=d2, **opts)
            if d2 is not None:
                total = d2 if total is None else total.add_(d2)
    rows: list[dict[str, Any]] = []
    if whole_network:
        a_all = alpha if alpha is not None else recording.default_alpha()
        rows = _layer_rows(ALL, recording.packed(), labels, det.packed() if det is not None else None, a_all,
                           tc=False, sq_dists=total, **opts)
    rows += layer_rows
    if suffix:
        kde = est.layerwise_entropies(recording, alpha=alpha, bandwidth=bandwidth, warn=False)
        plug = est.layerwise_entropies(recording, estimator="plugin", warn=False)
        for l, (hk, hp) in enumerate(zip(kde, plug), start=1):
            rows.append(_row(f"suffix:{l}", "H", hk))
            rows.append(_row(f"suffix:{l}", "H_plugin", hp))
    return rows


class _Single:
    """One Sigma given as a tensor, seen as a recording with one layer (no default alpha)."""

    def __init__(self, states: Tensor):
        self.states = states
        self.names = [ALL]
        self.n = states.shape[0]

    def concat(self) -> Tensor:
        return self.states

    def packed(self) -> Tensor:  # the estimators pick their route from the tensor itself
        return self.states

    def default_alpha(self) -> float:  # never used: measure() requires alpha for a tensor
        raise ValueError("states given as a tensor have no default alpha")


def _sweep(recording: Recording | _Single, labels: Tensor | None, alphas: list[float | None], *, bandwidth: str,
           per_layer: bool, whole_network: bool) -> list[dict[str, Any]]:
    targets: list[tuple[str, Tensor, float | None]] = []
    if whole_network:
        targets.append((ALL, recording.packed(), None if isinstance(recording, _Single) else recording.default_alpha()))
    if per_layer:
        targets += [(name, recording.packed([name]), recording.info[name].default_alpha) for name in recording.names]
    out = []
    for layer, s, default in targets:
        for a in alphas:
            a = default if a is None else float(a)
            if labels is not None:
                h, ixsy = est.kde_entropy_and_interaction(s, labels, alpha=a, bandwidth=bandwidth, warn=False)
                new = [_estimate_row(layer, "H", h, a), _estimate_row(layer, "I_XSY", ixsy, a)]
            else:
                new = [_estimate_row(layer, "H", est.kde_entropy(s, alpha=a, bandwidth=bandwidth, warn=False), a)]
            for r in new:
                r["n"], r["width"] = int(s.shape[0]), int(s.shape[1])
            out += new
    return out


def measure_complexity(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    *,
    kinds: Sequence[str] = ("relu",),
    layers: Sequence[int | str] | None = None,
    mutual_information: bool | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Record ``model``'s gating states on ``x`` and :func:`measure` them (same rows and options).

    The model is put in eval mode for the recording (so dropout does not gate)
    and restored afterwards.  ``layers`` chooses gating layers (names, or 1-based
    / negative positions).  ``mutual_information`` (default: when the model has
    random sampling, e.g. a VAE) also records the states without sampling for
    I(X;Sigma) (Eq. 3).
    """
    was_training = model.training
    model.eval()
    try:
        has_sampling = any(hasattr(m, "tcomplex_sampling") for m in model.modules())
        if mutual_information is None:
            mutual_information = has_sampling
        rec = record_gates(model, x, kinds=kinds, layers=layers)
        rec_det = record_gates(model, x, kinds=kinds, layers=layers, sampling=False) if mutual_information else None
    finally:
        model.train(was_training)
    return measure(rec, y, without_sampling=rec_det, **options)
