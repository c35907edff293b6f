"""Chapter 2: complexity and disentanglement (Section 4.1, Eq. 5-7, Eq. 28, Figure 2).

The paper proves (Eq. 6, Appendix D.3)

    H(Sigma_l) + TC(Sigma_l) = C_l,   C_l = -E[log prod_i p(sigma_l^i)] = sum_i H(Bernoulli(alpha_l^i)),

so that over networks whose l-th gating layer has similar activation rates
(hence similar C_l) the complexity H(Sigma_l) and the entanglement TC(Sigma_l)
are negatively correlated.  Figure 2 shows this over 21 LeNet-5 and 21 MLP-beta
models trained on MNIST from different initialisations (l = 3, 4) and over 21
ResNet-20 models (l = 3), with H by the KDE bound of Eq. 2 and TC by the KDE
bound of Eq. 28.

This module builds the training grid, measures every trained model's chosen
gating layers on one fixed analysis set (identical images for every model),
and turns the measurements into correlations with confidence intervals and
computed verdicts.

Two facts about the estimators shape the reading of the results:

* KDE: with K_jk = exp(-||sigma_j - sigma_k||^2 / (2 sigma0^2)), Eq. 2 gives
  H = log n - mean_j log sum_k K(sigma_j, sigma_k) and Eq. 28 gives
  TC = mean_j [log sum_k K(sigma_j, sigma_k) - log sum_k K(sigma_j, hat sigma_k)].
  The own-kernel term cancels in the sum, so H + TC is exactly
  C_hat = -mean_j log (1/n) sum_k K(sigma_j, hat sigma_k), a kernel cross-entropy
  of the observed states under the synthesized independent ones: the KDE
  analogue of C_l, not C_l itself.  We report how close C_hat comes to C_l.
* Plug-in: for the empirical distribution H + TC = C_l holds exactly, but with
  n analysis images H <= log2 n; 84- and 120-wide layers give (nearly) every
  image its own gating pattern, so the plug-in H sits at log2 n for every model
  and cannot vary; we detect and report that.
* Eq. 28's numerator sum_k K(sigma_j, sigma_k) contains the own-sample term
  K(sigma_j, sigma_j) = 1, the synthesized sum has no counterpart; with narrow
  kernels TC then tracks C_hat - log n.  The leave-one-out variant
  (:func:`tcomplex.estimators.kde_total_correlation` with ``leave_one_out=True``)
  drops it; every correlation is reported under both variants.

Sensitivity (issue 13): every model's layers are measured on a grid of kernel
widths (alpha = factor x the paper's alpha, both bandwidth conventions of
:func:`tcomplex.estimators.kde_bandwidth`) and at two training lengths (a short
one, kept as a snapshot of the same run, and the converged one), from one pair
of distance matrices per model and layer; :func:`sensitivity_table` turns the
grid into r with intervals and verdicts per setting, and :func:`chapter_findings`
gives the verdicts at the operating alpha (:func:`operating_factors`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tcomplex import estimators as est
from tcomplex.experiments.measure import measure_complexity
from tcomplex.experiments.report import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    THRESHOLDS,
    Finding,
    Precondition,
    enough,
    excludes_zero,
    fisher_ci,
    headroom,
    judge,
    judged,
    learned,
    pearson_ci,
    run_accuracies,
)
from tcomplex.experiments.runs import RunFileError, atomic_write_bytes
from tcomplex.experiments.studies.common import Context, load_trained_model
from tcomplex.experiments.train import (
    TrainConfig,
    TrainState,
    analysis_set_for,
    build_model_for,
    check_data,
    recipe_config,
    train,
)
from tcomplex.gating import record_gates

__all__ = [
    "CHAPTER",
    "VARIANTS",
    "CONVERGED",
    "SHORT",
    "configs",
    "train_runs",
    "snapshot_path",
    "load_model_at",
    "measure_model",
    "measure_grid",
    "measure_runs",
    "at_setting",
    "pooled",
    "pooled_within_r",
    "run_accuracies_at",
    "sensitivity_table",
    "operating_factors",
    "operating_tables",
    "chapter_findings",
    "survival",
    "sensitivity_pivot",
    "plot_sensitivity",
    "tc_draw_noise",
    "tc_noise_table",
    "partial_r",
    "correlation_table",
    "group_verdict",
    "group_preconditions",
    "findings",
    "accuracy_table",
    "reading",
    "summary_lines",
    "plot_scatter",
    "plot_spread",
    "plot_khat_vs_c",
]

CHAPTER = "02_disentanglement"
#: Version of the per-run measurement cache; bump when :func:`measure_grid` changes.
_CACHE_VERSION = 2
#: the two variants of Eq. 28 and the column of the per-model tables that holds each
VARIANTS: dict[str, str] = {"standard": "TC", "leave_one_out": "TC_loo"}
#: the training lengths of the grid: the converged run's final epoch, and the snapshot after ``short_epochs``
CONVERGED, SHORT = "converged", "short"
#: Columns of the per-model measurement table.
MEASURE_COLUMNS = [
    "model", "seed", "run_id", "l", "layer", "d", "alpha", "n", "H", "TC", "C", "H_plus_TC",
    "rate_mean", "rate_sd", "H_saturated", "H_plugin", "TC_plugin", "H_plugin_saturated",
]


# ---------------------------------------------------------------------------
# the training grid
# ---------------------------------------------------------------------------
def configs(models: Sequence[str], seeds: Sequence[int], *, dataset: str, epochs: int,
            train_subset: int | None, track_per_class: int, eval_size: int | None,
            short_epochs: int | None = None) -> list[TrainConfig]:
    """Training runs: every model x seed ("different initialized parameters", Section 4.1).

    The training loop only tracks the whole network at the last epoch (test
    accuracy, and H(Sigma) on ``track_per_class`` images per class, kept small
    because ResNet-20's whole Sigma holds ~144k gates), and also at
    ``short_epochs`` when it is given and smaller than ``epochs`` (the short
    training length of the sensitivity study: :func:`train_runs` keeps the model
    of that epoch); the layers of Figure 2 are measured afterwards by
    :func:`measure_runs`.  ``eval_size`` limits the train/test images used for
    the accuracy (None: full test set, 10000 train images).
    """
    extra: dict[str, Any] = {}
    if eval_size is not None:
        extra = {"test_subset": eval_size, "eval_train_size": eval_size}
    if short_epochs is not None and short_epochs < 1:
        raise ValueError(f"short_epochs must be >= 1 (or None for no short training length), got {short_epochs}")
    track = sorted({short_epochs, epochs}) if short_epochs is not None and short_epochs < epochs else [epochs]
    return [
        recipe_config(m, dataset=dataset, epochs=epochs, seed=s, train_subset=train_subset,
                      analysis_per_class=track_per_class, track_epochs=track, per_layer=False,
                      rates=False, tc=False, **extra)
        for m in models for s in seeds
    ]


def _short(cfg: TrainConfig, short_epochs: int | None) -> int | None:
    """The short training length of ``cfg``'s run, or None when it has none (not shorter than the run)."""
    return short_epochs if short_epochs is not None and 1 <= short_epochs < cfg.epochs else None


def snapshot_path(cfg: TrainConfig, ctx: Context, epoch: int) -> Path:
    """Where :func:`train_runs` keeps the model of ``cfg``'s run after ``epoch`` epochs."""
    return ctx.run(cfg).path / f"model_epoch_{epoch:05d}.pt"


def train_runs(cfgs: Sequence[TrainConfig], ctx: Context, *, short_epochs: int | None = None,
               desc: str = "chapter 2") -> pd.DataFrame:
    """Train (or load, when finished) every run; all their training rows in one frame.

    As :func:`~tcomplex.experiments.studies.common.train_many`, plus: a run longer than
    ``short_epochs`` keeps its model after ``short_epochs`` epochs (:func:`snapshot_path`,
    written by an ``on_epoch_end`` callback before that epoch's checkpoint, so an
    interrupted run never resumes past a missing snapshot).  Randomness is a function of
    (seed, epoch), so this model is the one a run of ``short_epochs`` epochs ends with: the
    training-length comparison costs no second run.  A finished run without its snapshot
    (trained without it) is a :class:`RunFileError` that names the folder to delete.
    """
    for cfg in cfgs:
        run = ctx.run(cfg)
        short = _short(cfg, short_epochs)
        if run.is_finished():
            if short is not None and not snapshot_path(cfg, ctx, short).is_file():
                raise RunFileError(
                    f"run {cfg.run_id} is finished but has no model snapshot after epoch {short} "
                    f"({snapshot_path(cfg, ctx, short).name}; it was trained without one): delete {run.path} "
                    "to train it again with the snapshot")
        else:
            check_data(cfg, ctx.data_root)
    frames = []
    show = sys.stderr.isatty()
    for cfg in cfgs:
        short = _short(cfg, short_epochs)

        def keep(st: TrainState, cfg: TrainConfig = cfg, short: int | None = short) -> None:
            if st.epoch == short:
                buf = io.BytesIO()
                torch.save({k: v.detach().cpu().contiguous() for k, v in st.model.state_dict().items()}, buf)
                atomic_write_bytes(snapshot_path(cfg, ctx, short), buf.getvalue())

        res = train(cfg, ctx.runs, data_root=ctx.data_root, progress=show, callbacks={"on_epoch_end": keep})
        frames.append(res.rows)
        if show:
            print(f"{desc}: {cfg.run_id} done", file=sys.stderr)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_model_at(cfg: TrainConfig, ctx: Context, epoch: int) -> torch.nn.Module:
    """The model of ``cfg``'s run after ``epoch`` epochs (eval mode, CPU): the final one, or the
    snapshot :func:`train_runs` kept."""
    if epoch == cfg.epochs:
        return load_trained_model(cfg, ctx)
    path = snapshot_path(cfg, ctx, epoch)
    if not path.is_file():
        raise FileNotFoundError(f"run {cfg.run_id} has no model after epoch {epoch} ({path}); train it with "
                                f"train_runs(..., short_epochs={epoch})")
    model = build_model_for(cfg)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


# ---------------------------------------------------------------------------
# measuring one trained model
# ---------------------------------------------------------------------------
def measure_model(model: torch.nn.Module, x: torch.Tensor, layers: Sequence[int], *,
                  kinds: Sequence[str] = ("relu",), bandwidth: str = "dims",
                  plugin: bool = True) -> list[dict[str, Any]]:
    """H (Eq. 2), TC (Eq. 28), C_l (Eq. 6), rates and plug-in H/TC of the chosen gating layers.

    ``layers`` are 1-based positions among the gating layers of ``kinds`` (the
    paper's l).  alpha is 0.01 after an FC layer and 0.04 after a convolution
    (Section 4.4).  TC's synthesized independent states are drawn with seed 0.
    (The notebook uses :func:`measure_grid`, which gives these values and more
    from one pair of distance matrices per layer.)
    """
    rows = measure_complexity(model, x, None, kinds=kinds, layers=list(layers), bandwidth=bandwidth,
                              whole_network=False, per_layer=True, tc=True, rates=False, rate_stats=True,
                              plugin=plugin, mutual_information=False)
    values: dict[str, dict[str, float]] = {}
    for r in rows:
        values.setdefault(r["layer"], {})[r["metric"]] = r["value"]
    out = []
    for l, (name, v) in zip(layers, values.items()):
        out.append({
            "l": int(l), "layer": name, "d": int(v["width"]), "alpha": v["alpha"], "n": int(len(x)),
            "H": v["H"], "TC": v["TC"], "C": v["C"], "H_plus_TC": v["H"] + v["TC"],
            "rate_mean": v["rate_mean"], "rate_sd": v["rate_sd"], "H_saturated": bool(v["saturated_H"]),
            "H_plugin": v.get("H_plugin", math.nan), "TC_plugin": v.get("TC_plugin", math.nan),
            "H_plugin_saturated": bool(v.get("saturated_H_plugin", False)),
        })
    return out


#: columns of :func:`measure_grid` (one row per layer x bandwidth x alpha factor)
GRID_COLUMNS = [
    "l", "layer", "d", "n", "bandwidth", "alpha_factor", "alpha", "sigma2", "H", "H_saturated", "TC", "TC_loo",
    "C", "H_plus_TC", "rate_mean", "rate_sd", "H_plugin", "TC_plugin", "H_plugin_saturated",
]


def measure_grid(model: torch.nn.Module, x: torch.Tensor, layers: Sequence[int], *,
                 kinds: Sequence[str] = ("relu",), alpha_factors: Sequence[float] = (1.0,),
                 bandwidths: Sequence[str] = ("dims",), plugin: bool = True,
                 tc_seed: int = 0) -> list[dict[str, Any]]:
    """H (Eq. 2), TC (Eq. 28, standard and leave-one-out), C_l (Eq. 6) of the chosen layers on a grid of kernels.

    ``layers``: 1-based positions among the gating layers of ``kinds`` (the paper's l).
    For each layer the squared distances of the n recorded states to each other and to
    n synthesized independent states (:func:`tcomplex.estimators.independent_states`,
    drawn with ``tc_seed``) are computed once; every kernel width is then evaluated from
    them: alpha = factor x the paper's alpha (0.01 after FC, 0.04 after a convolution,
    Section 4.4) for each factor in ``alpha_factors``, and sigma0^2 by each rule in
    ``bandwidths`` (``"dims"``: alpha d, the authors' code; ``"variance"``: alpha Var,
    the paper's text).  C_l, the activation rates and the plug-in H and TC do not depend
    on the kernel and are repeated on every row of the layer.  At factor 1 and ``"dims"``
    the values are those of :func:`measure_model` (to float32 rounding).
    """
    if not alpha_factors or any(not (math.isfinite(f) and f > 0) for f in alpha_factors):
        raise ValueError(f"alpha_factors must be positive numbers (1 = the paper's alpha), got {list(alpha_factors)}")
    bad = [b for b in bandwidths if b not in ("dims", "variance")]
    if not bandwidths or bad:
        raise ValueError(f"bandwidths must be 'dims' and/or 'variance', got {list(bandwidths)}")
    layers = [int(l) for l in layers]
    rec = record_gates(model, x, kinds=kinds, layers=layers)
    if len(rec.names) != len(layers):
        raise ValueError(f"asked for gating layers {layers} of kinds {list(kinds)}, recorded {rec.names}")
    out = []
    for l, name in zip(sorted(layers), rec.names):
        s = rec.packed([name])
        n, d = s.shape
        a0 = float(rec.info[name].default_alpha)
        rates = est.activation_rates(s)
        fixed: dict[str, Any] = {
            "l": l, "layer": name, "d": int(d), "n": int(n), "C": est.marginal_entropy_sum(s),
            "rate_mean": float(rates.mean()), "rate_sd": float(rates.std()),
            "H_plugin": math.nan, "TC_plugin": math.nan, "H_plugin_saturated": False,
        }
        if plugin:
            hp = est.plugin_entropy(s, warn=False)
            fixed.update(H_plugin=float(hp), TC_plugin=est.plugin_total_correlation(s),
                         H_plugin_saturated=bool(hp.saturated))
        own = est.squared_distances(s)
        synth = est.independent_states(s, generator=torch.Generator().manual_seed(tc_seed))
        cross = est.squared_distances(s, synth)
        for bw in bandwidths:
            per_alpha = est.kde_bandwidth(s, alpha=1.0, bandwidth=bw)  # sigma0^2 = alpha x (d or Var)
            alphas = [a0 * float(f) for f in alpha_factors]
            sigma2s = [a * per_alpha for a in alphas]
            for f, a, sigma2, (h, t, t_loo) in zip(alpha_factors, alphas, sigma2s,
                                                   est.kde_sweep_from_distances(own, cross, sigma2s)):
                out.append({**fixed, "bandwidth": bw, "alpha_factor": float(f), "alpha": a, "sigma2": sigma2,
                            "H": float(h), "H_saturated": bool(h.saturated), "TC": float(t), "TC_loo": float(t_loo),
                            "H_plus_TC": float(h) + float(t)})
    return [{k: r[k] for k in GRID_COLUMNS} for r in out]


def _table_name(cfg: TrainConfig, key: dict[str, Any]) -> str:
    if cfg.normalization != "dataset":  # images normalised as the run's: another cache entry
        key = {**key, "normalization": cfg.normalization}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{CHAPTER}_layers_{digest}"


def measure_runs(groups: Sequence[tuple[TrainConfig, Sequence[int]]], ctx: Context, *,
                 analysis_per_class: int, analysis_seed: int = 0, alpha_factors: Sequence[float] = (1.0,),
                 bandwidths: Sequence[str] = ("dims",), short_epochs: int | None = None) -> pd.DataFrame:
    """:func:`measure_grid` of the chosen layers of every trained run, on one fixed analysis set.

    ``groups`` pairs each finished run's config with its layer positions.  Each run is
    measured at its final epoch (``length`` = :data:`CONVERGED`) and, when
    ``short_epochs`` is shorter than the run, on its snapshot after ``short_epochs``
    epochs (:data:`SHORT`; :func:`train_runs`).  The images are :func:`analysis_set_for`
    the run with ``analysis_per_class`` images per class and ``full_split=True``
    (Appendix I: images sampled from the training set): the same images for every model
    of a dataset, whatever its seed or training subset, normalised as the run's inputs.
    Results are cached in each run's folder (:meth:`RunDir.cached_table`), keyed by the
    epoch, layers, grid and analysis set, so re-executing a notebook retrains and
    remeasures nothing.  Columns: model, seed, run_id, length, epochs, then
    :data:`GRID_COLUMNS`.
    """
    frames = []
    for cfg, layers in groups:
        short = _short(cfg, short_epochs)
        for length, epoch in ([(SHORT, short)] if short is not None else []) + [(CONVERGED, cfg.epochs)]:
            key = {"v": _CACHE_VERSION, "layers": list(layers), "per_class": analysis_per_class,
                   "seed": analysis_seed, "kinds": list(cfg.kinds), "epoch": int(epoch),
                   "alpha_factors": [float(f) for f in alpha_factors], "bandwidths": list(bandwidths)}

            def compute(cfg: TrainConfig = cfg, layers: Sequence[int] = layers, epoch: int = epoch,
                        length: str = length) -> pd.DataFrame:
                x, _ = _analysis_images(cfg, ctx, analysis_per_class, analysis_seed)
                frame = pd.DataFrame(measure_grid(load_model_at(cfg, ctx, epoch), x, layers, kinds=cfg.kinds,
                                                  alpha_factors=alpha_factors, bandwidths=bandwidths))
                for col, value in (("epochs", int(epoch)), ("length", length), ("run_id", cfg.run_id),
                                   ("seed", cfg.seed), ("model", cfg.model)):
                    frame.insert(0, col, value)
                return frame

            frames.append(ctx.run(cfg).cached_table(_table_name(cfg, key), compute))
    cols = ["model", "seed", "run_id", "length", "epochs", *GRID_COLUMNS]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def at_setting(grid: pd.DataFrame, *, length: str = CONVERGED, alpha_factor: float = 1.0,
               bandwidth: str = "dims") -> pd.DataFrame:
    """The per-model table of one setting of the grid (:func:`measure_runs`): one row per model and layer.

    Its columns include those of :func:`correlation_table`'s input (``TC`` the standard
    Eq. 28, ``TC_loo`` the leave-one-out variant).  A setting the grid does not hold is a
    ValueError that lists the ones it does.
    """
    sel = grid[(grid.length == length) & np.isclose(grid.alpha_factor.astype(float), alpha_factor)
               & (grid.bandwidth == bandwidth)]
    if sel.empty:
        have = sorted({(str(a), float(b), str(c)) for a, b, c in zip(grid.length, grid.alpha_factor, grid.bandwidth)})
        raise ValueError(f"the grid has no rows for length={length!r}, alpha_factor={alpha_factor}, "
                         f"bandwidth={bandwidth!r}; it holds (length, alpha_factor, bandwidth) = {have}")
    return sel.reset_index(drop=True)


def _analysis_images(cfg: TrainConfig, ctx: Context, per_class: int, seed: int) -> tuple[torch.Tensor, Any]:
    """:func:`analysis_set_for` the run with ``per_class`` images per class of the full training split,
    drawn with ``seed``: the same images for every model of a dataset (see :func:`measure_runs`)."""
    return analysis_set_for(dataclasses.replace(cfg, analysis_seed=seed), ctx.data_root, per_class=per_class,
                            full_split=True)


def tc_draw_noise(cfg: TrainConfig, ctx: Context, l: int, *, analysis_per_class: int, draws: int,
                  analysis_seed: int = 0, bandwidth: str = "dims", alpha_factor: float = 1.0) -> dict[str, float]:
    """Spread of the Eq. 28 estimate (both variants) over ``draws`` draws of the synthesized states, one model.

    Eq. 28 compares the observed states with n synthesized independent ones; a
    different draw gives a different TC.  Comparing this spread with the spread
    of TC across models tells whether the model-to-model differences are real.
    alpha = ``alpha_factor`` x the paper's alpha; the final model of the run.
    """
    x, _ = _analysis_images(cfg, ctx, analysis_per_class, analysis_seed)
    model = load_trained_model(cfg, ctx)
    rec = record_gates(model, x, kinds=cfg.kinds, layers=[l])
    s = rec.packed([rec.names[0]])
    a = rec.info[rec.names[0]].default_alpha * alpha_factor
    sigma2 = est.kde_bandwidth(s, alpha=a, bandwidth=bandwidth)
    own = est.squared_distances(s)
    values: dict[str, list[float]] = {"TC": [], "TC_loo": []}
    for k in range(draws):
        cross = est.squared_distances(s, est.independent_states(s, generator=torch.Generator().manual_seed(k)))
        values["TC"].append(float(est.kde_total_correlation_from_distances(own, cross, sigma2=sigma2)))
        values["TC_loo"].append(float(est.kde_total_correlation_from_distances(own, cross, sigma2=sigma2,
                                                                               leave_one_out=True)))
    out: dict[str, Any] = {"model": cfg.model, "l": l, "alpha_factor": alpha_factor, "alpha": a, "draws": draws}
    for col, v in values.items():
        out[f"{col}_mean"] = float(np.mean(v))
        out[f"{col}_draw_sd"] = float(np.std(v, ddof=1)) if draws > 1 else math.nan
    return out


def tc_noise_table(groups: Sequence[tuple[TrainConfig, Sequence[int]]], ctx: Context, grid: pd.DataFrame, *,
                   analysis_per_class: int, draws: int,
                   factors: dict[tuple[str, int], float] | None = None) -> pd.DataFrame:
    """:func:`tc_draw_noise` for the first run of each architecture and each of its layers, at the
    alpha factor of ``factors[(model, l)]`` (default 1: the paper's alpha; e.g. :func:`operating_factors`),
    beside the spread of each variant's TC across the converged models at that alpha (from ``grid``,
    :func:`measure_runs`)."""
    factors = factors or {}
    seen: set[str] = set()
    out = []
    for cfg, layers in groups:
        if cfg.model in seen:
            continue
        seen.add(cfg.model)
        for l in layers:
            f = float(factors.get((cfg.model, int(l)), 1.0))
            row = tc_draw_noise(cfg, ctx, l, analysis_per_class=analysis_per_class, draws=draws, alpha_factor=f)
            m = at_setting(grid, alpha_factor=f)
            m = m[(m.model == cfg.model) & (m.l == l)]
            row["TC_sd_across_models"] = _sd(m.TC.to_numpy(float))
            row["TC_loo_sd_across_models"] = _sd(m.TC_loo.to_numpy(float))
            out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------
# correlations and verdicts
# ---------------------------------------------------------------------------
def group_verdict(r: float, low: float, high: float, n_saturated: int) -> str:
    """The statistical reading of one (architecture, layer), Figure 2 (the ``verdict`` column of
    :func:`correlation_table`; :func:`findings` adds the networks' accuracies and the seed count).

    Reproduced: r(H, TC) < 0 with a 95% CI that excludes 0.  Not reproduced: r > 0 with a
    CI that excludes 0.  Inconclusive: the CI contains 0 or is undefined (too few models, H
    constant), or some H estimates are flagged saturated (a saturated estimate cannot show a trend).
    """
    if n_saturated or not (np.isfinite(r) and np.isfinite(low) and np.isfinite(high)) or low <= 0 <= high:
        return INCONCLUSIVE
    return REPRODUCED if high < 0 else NOT_REPRODUCED


def _safe_r(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """:func:`pearson_ci`, or NaNs with fewer than 4 models or an (up to rounding) constant input."""
    if len(x) < 4 or np.ptp(x) < 1e-9 or np.ptp(y) < 1e-9:
        return math.nan, math.nan, math.nan, math.nan
    return pearson_ci(x, y)


def partial_r(h: np.ndarray, tc: np.ndarray, c: np.ndarray) -> float:
    """Partial correlation r(H, TC | C_l): Pearson r of the residuals of H and TC regressed on C_l.

    Eq. 6's argument is about models of equal C_l; this removes the linear part
    of the C_l differences between models.  NaN with fewer than 5 models or
    constant inputs.
    """
    if len(h) < 5 or np.std(c) == 0:
        return math.nan
    design = np.column_stack([np.ones_like(c), c])
    res_h = h - design @ np.linalg.lstsq(design, h, rcond=None)[0]
    res_t = tc - design @ np.linalg.lstsq(design, tc, rcond=None)[0]
    if np.std(res_h) < 1e-12 or np.std(res_t) < 1e-12:
        return math.nan
    return float(np.corrcoef(res_h, res_t)[0, 1])


def pooled_within_r(x: np.ndarray, y: np.ndarray, groups: Sequence[Any]) -> tuple[float, float, float]:
    """Pooled within-group Pearson r and its 95% Fisher-z interval: r of x and y after subtracting
    each group's means (here: each architecture's), so differences between the groups' means do not
    count.  The interval uses N - g - 2 degrees of freedom (N points in g groups; g = 1 is the
    ordinary 1 / sqrt(N - 3)).  NaNs with N - g < 3 or a constant input."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    g = pd.Series(list(groups))
    if len(x) != len(y) or len(x) != len(g):
        raise ValueError(f"x, y and groups must have one entry per point, got {len(x)}, {len(y)}, {len(g)}")
    k = int(g.nunique())
    xc = x - pd.Series(x).groupby(g).transform("mean").to_numpy()
    yc = y - pd.Series(y).groupby(g).transform("mean").to_numpy()
    if len(x) - k < 3 or np.ptp(xc) < 1e-9 or np.ptp(yc) < 1e-9:
        return math.nan, math.nan, math.nan
    r = float(np.corrcoef(xc, yc)[0, 1])
    low, high = fisher_ci(r, len(x) - k + 1)  # fisher_ci uses n - 3: N - k - 2
    return r, low, high


def _sd(v: np.ndarray) -> float:
    """Sample standard deviation (NaN for fewer than 2 values)."""
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (NaN when x is constant or has fewer than 2 values)."""
    if len(x) < 2 or np.ptp(x) < 1e-12:
        return math.nan
    return float(np.cov(x, y)[0, 1] / np.var(x, ddof=1))


def pooled(measures: pd.DataFrame) -> pd.DataFrame:
    """Rows of architectures pooled per layer: the paper's "42 models" (21 LeNet-5 and 21 MLP-β at l = 3, 4).

    For each l, the architectures whose layer l has the same width d (LeNet-5 and MLP-β:
    120 and 84 gates at l = 3, 4) are pooled into one group named ``"a+b"``; the
    ``arch`` column keeps each row's architecture (for :func:`pooled_within_r`).  A layer
    that no two architectures share gives no rows.
    """
    out = []
    for (l, d), g in measures.groupby(["l", "d"], sort=False):
        archs = list(dict.fromkeys(g.model))
        if len(archs) < 2:
            continue
        out.append(g.assign(arch=g.model, model="+".join(archs)))
    return pd.concat(out, ignore_index=True) if out else measures.iloc[0:0].assign(arch=[])


def correlation_table(measures: pd.DataFrame, variant: str = "standard") -> pd.DataFrame:
    """One row per (model, l): Pearson r(H, TC) [95% CI] across models and the quantities behind it.

    ``variant``: ``"standard"`` (TC by Eq. 28, column ``TC``) or ``"leave_one_out"``
    (column ``TC_loo``, :func:`tcomplex.estimators.kde_total_correlation`).  Columns:
    ``variant``, ``n_models``, ``d``, ``r``, ``r_low``, ``r_high``, ``p``, the pooled
    within-architecture ``r_within`` [``r_within_low``, ``r_within_high``]
    (:func:`pooled_within_r`; equal to r for one architecture, it differs for the
    :func:`pooled` groups, whose ``arch`` column names each row's architecture), the partial
    correlation ``r_given_C`` (:func:`partial_r`, a supplementary check), the fitted line
    TC = slope * H + intercept, mean and sd over models of H, TC and C_l, the
    ratio ``sd_C / sd_H`` (small: C_l is nearly constant compared with H, the
    premise of Eq. 6's argument), the sd of the KDE H + TC (``Chat_sd``; standard Eq. 28)
    and its least-squares slope on H (``Chat_slope_on_H``; since TC_KDE = C_hat - H_KDE
    exactly, the standard r(H, TC) < 0 if and only if this slope is below 1), the mean rate,
    the KDE identity check ``mean (H + TC) - C`` and ``r(H + TC, C)``, the number of saturated H
    estimates, the plug-in counterpart (saturations and r when defined), the alpha factor and
    alpha when the input has them, and the computed statistical verdict (:func:`group_verdict`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    tc_col = VARIANTS[variant]
    if tc_col not in measures.columns:
        raise ValueError(f"variant {variant!r} needs the column {tc_col!r} (measure_runs / measure_grid give it)")
    out = []
    for (model, l), g in measures.groupby(["model", "l"], sort=False):
        h, tc, c = g.H.to_numpy(float), g[tc_col].to_numpy(float), g.C.to_numpy(float)
        r, lo, hi, p = _safe_r(h, tc)
        arch = g.arch if "arch" in g.columns else g.model
        rw, rw_lo, rw_hi = pooled_within_r(h, tc, arch.tolist()) if len(g) >= 4 else (math.nan,) * 3
        slope, intercept = (np.polyfit(h, tc, 1) if len(h) >= 2 and np.std(h) > 0 else (math.nan, math.nan))
        rk = _safe_r(g.H_plus_TC.to_numpy(float), c)[0]
        r_partial = partial_r(h, tc, c)
        hp, tp = g.H_plugin.to_numpy(float), g.TC_plugin.to_numpy(float)
        plug_sat = int(g.H_plugin_saturated.astype(bool).sum())
        r_plug = _safe_r(hp, tp)[0] if np.all(np.isfinite(hp)) else math.nan
        n_sat = int(g.H_saturated.astype(bool).sum())
        sd_h, sd_c = _sd(h), _sd(c)
        row = {
            "model": model, "l": int(l), "layer": g.layer.iloc[0], "d": int(g.d.iloc[0]), "variant": variant,
            "n_models": len(g), "n_archs": int(arch.nunique()), "n_images": int(g.n.iloc[0]),
            "r": r, "r_low": lo, "r_high": hi, "p": p, "r_within": rw, "r_within_low": rw_lo,
            "r_within_high": rw_hi, "r_given_C": r_partial,
            "slope": float(slope), "intercept": float(intercept),
            "H_mean": float(h.mean()), "H_sd": sd_h, "TC_mean": float(tc.mean()), "TC_sd": _sd(tc),
            "C_mean": float(c.mean()), "C_sd": sd_c, "C_cv": sd_c / float(c.mean()) if c.mean() > 0 else math.nan,
            "sdC_over_sdH": sd_c / sd_h if np.isfinite(sd_h) and sd_h > 0 else math.nan,
            "Chat_sd": _sd(g.H_plus_TC.to_numpy(float)),
            "Chat_slope_on_H": _slope(h, g.H_plus_TC.to_numpy(float)),
            "rate_mean": float(g.rate_mean.mean()),
            "khat_minus_C": float((g.H_plus_TC - g.C).mean()), "r_khat_C": rk,
            "H_saturated": n_sat,
            "H_plugin_mean": float(np.nanmean(hp)) if np.any(np.isfinite(hp)) else math.nan,
            "TC_plugin_mean": float(np.nanmean(tp)) if np.any(np.isfinite(tp)) else math.nan,
            "H_plugin_saturated": plug_sat, "r_plugin": r_plug,
            "log2_n": math.log2(int(g.n.iloc[0])),
            "H_max": float(h.max()),
            "verdict": group_verdict(r, lo, hi, n_sat),
        }
        for col in ("alpha_factor", "alpha", "bandwidth", "length", "epochs"):
            if col in g.columns:
                v = g[col].iloc[0]
                row[col] = v if g[col].nunique() == 1 else "/".join(str(u) for u in dict.fromkeys(g[col]))
        out.append(row)
    return pd.DataFrame(out)


def _fmt_r(row: pd.Series) -> str:
    if not np.isfinite(row.r):
        return "r undefined"
    if not np.isfinite(row.r_low):
        return f"r = {row.r:.2f} (n = {row.n_models}, no CI)"
    return f"r = {row.r:.2f} [{row.r_low:.2f}, {row.r_high:.2f}]"


def _archs(model: str) -> list[str]:
    """The architectures of a group: one, or several for a :func:`pooled` group ("a+b")."""
    return str(model).split("+")


def group_preconditions(row: Any, accuracies: pd.DataFrame | None) -> list[Precondition]:
    """What the verdict of one (architecture, layer) needs (Figure 2):

    * the architecture's models learned (``accuracies``: :func:`~tcomplex.experiments.report.run_accuracies`
      of the training rows; None: not measured, the precondition fails); a :func:`pooled`
      group ("a+b") needs each of its architectures to have learned;
    * at least ``THRESHOLDS["min_seeds_correlation"]`` models for the correlation;
    * the KDE H of every model at least ``THRESHOLDS["headroom_bits"]`` below log2 n (the plug-in
      H, which counts distinct patterns, is shown with it);
    * the 95% Fisher-z interval of r excludes 0 (the claim is a sign).
    """
    pre = []
    for model in _archs(row.model):
        if accuracies is None:
            pre.append(Precondition(f"{model} learned", "test accuracy >= threshold", "not measured", False,
                                    "learned"))
            continue
        acc = accuracies[accuracies.model == model]
        dataset = str(acc.dataset.iloc[0]) if len(acc) else ""
        pre.append(learned(f"{model} on {dataset}" if dataset else model, acc.test_acc.tolist(), model, dataset))
    distinct = (f"plug-in H at log2 n (all distinct) in {int(row.H_plugin_saturated)}/{int(row.n_models)} models"
                if np.isfinite(row.H_plugin_mean) else None)
    h_max = float(row.H_max) if "H_max" in row and np.isfinite(row.H_max) else float(row.H_mean)
    pre += [enough("models (seeds)", int(row.n_models), int(THRESHOLDS["min_seeds_correlation"])),
            headroom(f"H(Σ_{row.l}) (KDE)", [h_max], float(row.log2_n), distinct=distinct),
            excludes_zero("r(H, TC)", float(row.r_low), float(row.r_high))]
    return pre


def _key(prefix: str, model: str, l: int) -> str:
    return f"{prefix}_{str(model).replace('+', '_')}_l{l}"


def findings(table: pd.DataFrame, setting: str, rows: pd.DataFrame | None = None, *,
             prefix: str = "fig2", what: str = "") -> list[Finding]:
    """One finding per (architecture, layer) and one overall.

    Per group: reproduced when r(H, TC) < 0, not reproduced when r >= 0, both only when
    :func:`group_preconditions` hold (``rows``: the training rows, for the test accuracies),
    else inconclusive.  Overall (the claim has parts, the groups): reproduced when every
    conclusive group is, partly when some are (``parts`` names them), not reproduced when none
    is; it needs at least two conclusive groups ("verified on different layers and architectures").
    :func:`pooled` groups ("a+b", the same models again) get their own finding but are not
    parts of the overall one.  ``prefix`` starts every key (``fig2_<model>_l<l>``,
    ``fig2_overall``); ``what`` (e.g. "TC by the leave-one-out Eq. 28") is added to the claim.
    A table with ``alpha_factor`` / ``alpha`` columns (:func:`operating_tables`) states them.
    """
    accuracies = run_accuracies(rows) if rows is not None else None
    found = []
    conclusive: list[tuple[str, bool]] = []
    how = f" ({what})" if what else ""
    for _, row in table.iterrows():
        plug = (f"plug-in H at log2 n = {row.log2_n:.2f} in {row.H_plugin_saturated}/{row.n_models} models"
                if row.H_plugin_saturated else
                (f"plug-in r(H, TC) = {row.r_plugin:.2f}" if np.isfinite(row.r_plugin) else "plug-in r undefined"))
        sat = f"; {row.H_saturated} KDE H estimates saturated" if row.H_saturated else ""
        part = f"; r(H, TC | C_l) = {row.r_given_C:.2f}" if np.isfinite(row.r_given_C) else ""
        is_pool = "+" in str(row.model)
        within = (f"; within-architecture r = {row.r_within:.2f} [{row.r_within_low:.2f}, {row.r_within_high:.2f}]"
                  if is_pool and "r_within" in row and np.isfinite(row.r_within) else "")
        alpha = ""
        if "alpha_factor" in row and np.isfinite(float(row.alpha_factor)):
            alpha = (f"α = {float(row.alpha):.3g} ({float(row.alpha_factor):g}× the paper's"
                     f"{', the paper’s own' if float(row.alpha_factor) == 1 else ''}); ")
        pre = group_preconditions(row, accuracies)
        v = judge(bool(row.r < 0), pre)  # an undefined r fails its interval precondition
        if v != INCONCLUSIVE and not is_pool:
            conclusive.append((f"{row.model} l={row.l}", v == REPRODUCED))
        who = f"{' and '.join(_archs(row.model))} models pooled" if is_pool else f"{row.model} models"
        found.append(Finding(
            _key(prefix, row.model, row.l), CHAPTER,
            f"Figure 2 / Eq. 6: over {who} with similar activation rates, H(Σ_{row.l}) and "
            f"TC(Σ_{row.l}) are negatively correlated{how}.",
            f"{alpha}{_fmt_r(row)} over {row.n_models} models (d = {row.d}, n = {row.n_images} images){within}; "
            f"C_l = {row.C_mean:.1f} ± {row.C_sd:.2f} bits (sd_C / sd_H = {row.sdC_over_sdH:.2f}); "
            f"KDE H + TC − C = {row.khat_minus_C:.1f} bits, slope of KDE H + TC on H = {row.Chat_slope_on_H:.2f} "
            f"(standard r < 0 iff < 1){part}; {plug}{sat}.",
            v, setting, preconditions=pre,
        ))
    arch_rows = [r for r in table.itertuples() if "+" not in str(r.model)]
    groups = [f"{r.model} l={r.l}" for r in arch_rows]
    inconclusive = [g for g in groups if g not in {c for c, _ in conclusive}]
    pre_all = [enough("conclusive (architecture, layer) groups", len(conclusive), 2)]
    v_all, parts = judged(True, pre_all, conclusive) if conclusive else (judge(False, pre_all), "")
    counts = ", ".join(f"{sum(f.verdict == k for f, r in zip(found, table.itertuples()) if '+' not in str(r.model))} {k}"
                       for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    rs = [r.r for r in arch_rows]
    found.append(Finding(
        f"{prefix}_overall", CHAPTER,
        "Section 4.1: the complexity H(Σ_l) and the entanglement TC(Σ_l) are strongly negatively "
        f"correlated across models with similar activation rates (verified on different layers and architectures){how}.",
        f"{len(groups)} (architecture, layer) groups: {counts}"
        + (f" (inconclusive: {', '.join(inconclusive)})" if inconclusive else "")
        + (f"; r from {np.nanmin(rs):.2f} to {np.nanmax(rs):.2f}." if len(rs) and np.any(np.isfinite(rs)) else "."),
        v_all, setting, preconditions=pre_all, parts=parts,
    ))
    return found


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Train/test accuracy per architecture and tracked epoch (mean and sd over seeds, the lowest test
    accuracy), from the training rows; epoch 0 (untrained) is left out."""
    sel = rows[(rows.layer == "__all__") & rows.metric.isin(["train_acc", "test_acc"]) & (rows.epoch > 0)]
    wide = sel.pivot_table(index=["model", "seed", "epoch"], columns="metric", values="value").reset_index()
    return wide.groupby(["model", "epoch"]).agg(
        models=("seed", "count"), train_acc=("train_acc", "mean"), test_acc=("test_acc", "mean"),
        test_acc_sd=("test_acc", "std"), test_acc_min=("test_acc", "min")).reset_index()


def run_accuracies_at(rows: pd.DataFrame, grid: pd.DataFrame, length: str) -> pd.DataFrame:
    """:func:`~tcomplex.experiments.report.run_accuracies` of the models of one training length of the
    grid (:func:`measure_runs`): each run's test accuracy at the epoch its ``length`` model was taken."""
    pairs = grid.loc[grid.length == length, ["run_id", "epochs"]].drop_duplicates()
    out = []
    for run_id, epoch in zip(pairs.run_id, pairs.epochs):
        out.append(rows[(rows.run_id == run_id) & (rows.epoch == int(epoch))])
    if not out:
        raise ValueError(f"the grid has no models of length {length!r}")
    return run_accuracies(pd.concat(out, ignore_index=True))


# ---------------------------------------------------------------------------
# sensitivity: alpha, bandwidth convention, training length, Eq. 28 variant
# ---------------------------------------------------------------------------
#: columns of :func:`sensitivity_table`
SENSITIVITY_COLUMNS = [
    "model", "l", "d", "length", "epochs", "bandwidth", "alpha_factor", "alpha", "variant", "n_models", "r",
    "r_low", "r_high", "r_within", "H_mean", "H_sd", "H_max", "log2_n", "headroom", "TC_mean", "TC_sd",
    "test_acc_min", "verdict", "failed",
]


def sensitivity_table(grid: pd.DataFrame, rows: pd.DataFrame | None) -> pd.DataFrame:
    """r(H, TC) with its interval and verdict for every setting of the grid and both Eq. 28 variants.

    ``grid``: :func:`measure_runs`; ``rows``: the training rows (test accuracies; None: the
    learned precondition fails as "not measured").  One row per (group, length,
    bandwidth, alpha factor, variant), groups being each (architecture, layer) and the
    :func:`pooled` ones.  ``verdict`` is :func:`judge` of r < 0 under
    :func:`group_preconditions` (accuracies at that length's epoch, :func:`run_accuracies_at`),
    ``failed`` names the preconditions that failed; ``headroom`` = log2 n - max H.  Nothing is
    retrained or remeasured: every number comes from the grid.
    """
    out = []
    settings = grid[["length", "bandwidth", "alpha_factor"]].drop_duplicates()
    acc_by_length = {}
    for length in dict.fromkeys(grid.length):
        acc_by_length[length] = run_accuracies_at(rows, grid, length) if rows is not None else None
    for length, bw, f in settings.itertuples(index=False):
        m = at_setting(grid, length=length, alpha_factor=float(f), bandwidth=bw)
        both = pd.concat([m, pooled(m)], ignore_index=True)
        acc = acc_by_length[length]
        for variant in VARIANTS:
            table = correlation_table(both, variant)
            for _, row in table.iterrows():
                pre = group_preconditions(row, acc)
                sel = acc[acc.model.isin(_archs(row.model))] if acc is not None else None
                out.append({
                    "model": row.model, "l": row.l, "d": row.d, "length": length, "epochs": row.epochs,
                    "bandwidth": bw, "alpha_factor": float(f), "alpha": row.alpha, "variant": variant,
                    "n_models": row.n_models, "r": row.r, "r_low": row.r_low, "r_high": row.r_high,
                    "r_within": row.r_within, "H_mean": row.H_mean, "H_sd": row.H_sd, "H_max": row.H_max,
                    "log2_n": row.log2_n, "headroom": row.log2_n - row.H_max, "TC_mean": row.TC_mean,
                    "TC_sd": row.TC_sd,
                    "test_acc_min": float(sel.test_acc.min()) if sel is not None and len(sel) else math.nan,
                    "verdict": judge(bool(row.r < 0), pre),
                    "failed": "; ".join(p.name for p in pre if not p.held),
                })
    return pd.DataFrame(out, columns=SENSITIVITY_COLUMNS)


def operating_factors(sens: pd.DataFrame, *, length: str = CONVERGED, bandwidth: str = "dims") -> dict[tuple[str, int], float]:
    """The alpha factor at which each group's verdict is read: the paper's alpha (factor 1) when every
    model's KDE H has ``THRESHOLDS["headroom_bits"]`` of headroom there, else the smallest factor
    above 1 in the grid at which it has; factor 1 when none has (the verdict is then inconclusive
    for lack of headroom).  Chosen from H alone (never from r), at ``length`` and ``bandwidth``."""
    sel = sens[(sens.length == length) & (sens.bandwidth == bandwidth) & (sens.variant == "standard")]
    out: dict[tuple[str, int], float] = {}
    for (model, l), g in sel.groupby(["model", "l"], sort=False):
        g = g[g.alpha_factor >= 1].sort_values("alpha_factor")
        ok = g[g.headroom >= THRESHOLDS["headroom_bits"]]
        out[(str(model), int(l))] = float(ok.alpha_factor.iloc[0]) if len(ok) else 1.0
    return out


def operating_tables(grid: pd.DataFrame, factors: dict[tuple[str, int], float], *, length: str = CONVERGED,
                     bandwidth: str = "dims") -> dict[str, pd.DataFrame]:
    """Per Eq. 28 variant, the :func:`correlation_table` of every group (architectures and :func:`pooled`)
    at its own alpha factor (``factors``, e.g. :func:`operating_factors`)."""
    tables: dict[str, list[pd.DataFrame]] = {v: [] for v in VARIANTS}
    for f in sorted(set(factors.values())):
        m = at_setting(grid, length=length, alpha_factor=f, bandwidth=bandwidth)
        both = pd.concat([m, pooled(m)], ignore_index=True)
        keep = [k for k, v in factors.items() if v == f]
        for variant in VARIANTS:
            t = correlation_table(both, variant)
            tables[variant].append(t[[(str(a), int(b)) in keep for a, b in zip(t.model, t.l)]])
    order = {k: i for i, k in enumerate(factors)}
    out = {}
    for variant, parts in tables.items():
        t = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        if len(t):
            t = t.assign(_o=[order[(str(a), int(b))] for a, b in zip(t.model, t.l)]).sort_values("_o")
            t = t.drop(columns="_o").reset_index(drop=True)
        out[variant] = t
    return out


#: how each variant is named in findings and in the book
VARIANT_TEXT = {"standard": "TC by Eq. 28 as written", "leave_one_out": "TC by the leave-one-out Eq. 28"}


def chapter_findings(grid: pd.DataFrame, rows: pd.DataFrame | None, setting: str,
                     factors: dict[tuple[str, int], float]) -> list[Finding]:
    """The chapter's findings: :func:`findings` of both Eq. 28 variants at the operating alpha
    (``factors``), converged models, ``"dims"`` bandwidth: keys ``fig2_*`` (standard, as before) and
    ``fig2_loo_*`` (leave-one-out)."""
    tables = operating_tables(grid, factors)
    return (findings(tables["standard"], setting, rows, prefix="fig2")
            + findings(tables["leave_one_out"], setting, rows, prefix="fig2_loo", what=VARIANT_TEXT["leave_one_out"]))


def survival(sens: pd.DataFrame, found: Sequence[Finding]) -> str:
    """Markdown, computed: under which Eq. 28 variant the paper's claim survives, and how robust that is.

    For each variant: the overall verdict at the operating alpha (from ``found``, keys
    ``fig2_overall`` / ``fig2_loo_overall``), and over every setting of the grid (alpha factor x
    bandwidth, converged models, architecture groups) how many conclusive settings give r < 0 and
    r > 0, and how many are inconclusive with the most frequent failed precondition; then the
    same at the short training length.
    """
    overall = {f.key: f for f in found}
    lines = []
    verdicts = {}
    for variant, key in (("standard", "fig2_overall"), ("leave_one_out", "fig2_loo_overall")):
        f = overall.get(key)
        verdicts[variant] = f.verdict if f is not None else "not measured"
        parts = []
        for length in (CONVERGED, SHORT):
            sel = sens[(sens.variant == variant) & (sens.length == length) & ~sens.model.str.contains("+", regex=False)]
            if sel.empty:
                continue
            rep, nrep = int((sel.verdict == REPRODUCED).sum()), int((sel.verdict == NOT_REPRODUCED).sum())
            inc = sel[sel.verdict == INCONCLUSIVE]
            why = ""
            if len(inc):
                reasons = pd.Series([x.split("; ")[0] for x in inc.failed if x]).value_counts()
                why = f" (most often failed: {reasons.index[0]}, {int(reasons.iloc[0])}×)" if len(reasons) else ""
            parts.append(f"{length} models, {len(sel)} (group, α, bandwidth) settings: r < 0 conclusively in {rep}, "
                         f"r > 0 conclusively in {nrep}, inconclusive in {len(inc)}{why}")
        text = f"; over the grid: {'; '.join(parts)}" if parts else ""
        extra = f" ({f.parts})" if f is not None and f.parts else ""
        lines.append(f"* **{VARIANT_TEXT[variant]}**: overall verdict at the operating α *{verdicts[variant]}*"
                     f"{extra}{text}.")
    good = [v for v, x in verdicts.items() if x in (REPRODUCED, PARTLY)]
    if good:
        tail = ("The paper's claim survives under " + " and ".join(VARIANT_TEXT[v] for v in good)
                + ("" if len(good) == 2 else f", not under {VARIANT_TEXT[[v for v in verdicts if v not in good][0]]}")
                + " (verdicts at the operating α; partly = some groups).")
    elif all(x == INCONCLUSIVE for x in verdicts.values()):
        tail = "The evidence settles the claim under neither variant (both overall verdicts are inconclusive)."
    else:
        tail = "The paper's claim survives under neither variant of Eq. 28."
    return "\n".join(lines + ["", tail])


def sensitivity_pivot(sens: pd.DataFrame, column: str, *, length: str = CONVERGED, bandwidth: str | None = "dims",
                      alpha_factor: float | None = None) -> pd.DataFrame:
    """A wide view of :func:`sensitivity_table`: one row per (group, variant), one column per value of
    ``column`` (``"alpha_factor"``, ``"bandwidth"`` or ``"length"``), cells "r [low, high] V" with V the
    verdict's initial (R reproduced, N not reproduced, I inconclusive).  The other settings are fixed by
    ``length``, ``bandwidth`` and ``alpha_factor`` (None: not fixed, for the one being varied)."""
    sel = sens
    if column != "length":
        sel = sel[sel.length == length]
    if bandwidth is not None and column != "bandwidth":
        sel = sel[sel.bandwidth == bandwidth]
    if alpha_factor is not None and column != "alpha_factor":
        sel = sel[np.isclose(sel.alpha_factor, alpha_factor)]
    initial = {REPRODUCED: "R", NOT_REPRODUCED: "N", INCONCLUSIVE: "I"}

    def cell(r: pd.Series) -> str:
        if not np.isfinite(r.r):
            return "undefined I"
        ci = f" [{r.r_low:.2f}, {r.r_high:.2f}]" if np.isfinite(r.r_low) else ""
        return f"{r.r:.2f}{ci} {initial.get(r.verdict, '?')}"

    sel = sel.assign(cell=[cell(r) for _, r in sel.iterrows()])
    wide = sel.pivot_table(index=["model", "l", "variant"], columns=column, values="cell", aggfunc="first", sort=False)
    wide.columns = [f"{column}={c:g}" if isinstance(c, float) else f"{column}={c}" for c in wide.columns]
    return wide.reset_index()


def reading(table: pd.DataFrame) -> str:
    """Markdown sentences, computed from the table, on why r has the sign it has.

    TC_KDE = C_hat - H_KDE exactly (module docstring), so r(H, TC) < 0 if and
    only if the slope of C_hat on H across models is below 1: "similar C" in the
    sense Eq. 6's argument needs.  Each sentence gives the spreads of C_l and
    C_hat relative to H, that slope, and the sign of r.
    """
    lines = []
    for _, row in table.iterrows():
        if not (np.isfinite(row.H_sd) and row.H_sd > 0):
            lines.append(f"* **{row.model}, l = {row.l}**: H does not vary across models; r is undefined "
                         f"→ *{row.verdict}*.")
            continue
        premise = "holds" if row.Chat_slope_on_H < 1 else "fails"
        sign = "undefined" if not np.isfinite(row.r) else ("negative" if row.r < 0 else "non-negative")
        lines.append(
            f"* **{row.model}, l = {row.l}**: across models sd(C_l) = {row.C_sd:.2f} bits is "
            f"{row.sdC_over_sdH:.1f}× sd(H) = {row.H_sd:.2f} bits; the KDE H + TC varies "
            f"{row.Chat_sd / row.H_sd:.1f}× as much as H and rises with H at slope {row.Chat_slope_on_H:.2f} "
            f"(r(H, TC) < 0 needs a slope below 1: the premise {premise}); r(H, TC) is {sign} "
            f"({_fmt_r(row)}) → *{row.verdict}*.")
    return "\n".join(lines)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """Deterministic, rounded lines (for the notebook's printed output)."""
    return [f"{row.model} l={row.l}: r={row.r:.2f} [{row.r_low:.2f}, {row.r_high:.2f}], "
            f"C={row.C_mean:.2f}±{row.C_sd:.2f}, H={row.H_mean:.2f}±{row.H_sd:.2f}, -> {row.verdict}"
            for _, row in table.iterrows()]


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------
def plot_scatter(axes: Sequence[Any], measures: pd.DataFrame, table: pd.DataFrame) -> None:
    """Figure 2: H(Sigma_l) against TC(Sigma_l), one panel per (architecture, layer).

    Each point is one trained model; the line is the least-squares fit and the
    legend gives r with its 95% CI.
    """
    for ax, (_, row) in zip(axes, table.iterrows()):
        g = measures[(measures.model == row.model) & (measures.l == row.l)]
        ax.scatter(g.H, g.TC, s=22, alpha=0.8, label="one model")
        if np.isfinite(row.slope):
            xs = np.linspace(g.H.min(), g.H.max(), 20)
            ci = f" [{row.r_low:.2f}, {row.r_high:.2f}]" if np.isfinite(row.r_low) else ""
            ax.plot(xs, row.slope * xs + row.intercept, color="C3", lw=1.5,
                    label=f"fit, r = {row.r:.2f}{ci}")
        ax.set_title(f"{row.model}, l = {row.l} (d = {row.d})")
        ax.set_xlabel(f"H(Σ_{row.l}) [bits]")
        ax.set_ylabel(f"TC(Σ_{row.l}) [bits]")
        ax.legend(fontsize=8, loc="best")


def plot_spread(axes: Sequence[Any], measures: pd.DataFrame) -> None:
    """Deviation of each model's C_l, KDE H + TC, H and TC from the group mean, one panel per group.

    Eq. 6's argument needs C_l (for the KDE estimates: H + TC) to vary little
    across models compared with H; each panel shows the four spreads in bits.
    """
    quantities = [("C", "C_l"), ("H_plus_TC", "H+TC"), ("H", "H"), ("TC", "TC")]
    for ax, ((model, l), g) in zip(axes, measures.groupby(["model", "l"], sort=False)):
        for k, (col, label) in enumerate(quantities):
            v = (g[col] - g[col].mean()).to_numpy()
            jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1)
            ax.scatter(k + jitter, v, s=12, color=f"C{k}", alpha=0.8)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(range(len(quantities)), [q[1] for q in quantities])
        ax.set_title(f"{model}, l = {l}")
        ax.set_ylabel("value − group mean [bits]")


def plot_khat_vs_c(axes: Sequence[Any], measures: pd.DataFrame, table: pd.DataFrame) -> None:
    """KDE H + TC (= C_hat) against the exact C_l, one panel per (architecture, layer)."""
    for ax, (_, row) in zip(axes, table.iterrows()):
        g = measures[(measures.model == row.model) & (measures.l == row.l)]
        ax.scatter(g.C, g.H_plus_TC, s=22, alpha=0.8)
        ax.set_title(f"{row.model}, l = {row.l}")
        ax.set_xlabel("C_l = Σ_i H(α_l^i) [bits]")
        ax.set_ylabel("KDE H + TC [bits]")


def plot_sensitivity(axes: Sequence[Any], sens: pd.DataFrame) -> None:
    """r(H, TC) with its 95% CI against the alpha factor (log scale), one panel per group: a line per
    Eq. 28 variant (colour) and bandwidth convention (solid "dims", dotted "variance"), converged
    models filled, the short training length open; the paper's alpha (factor 1) is the grey line,
    r = 0 the black one."""
    styles = {"dims": "-", "variance": ":"}
    colours = {"standard": "C0", "leave_one_out": "C3"}
    groups = list(dict.fromkeys(zip(sens.model, sens.l)))
    for ax, (model, l) in zip(axes, groups):
        g = sens[(sens.model == model) & (sens.l == l)]
        for (variant, bw, length), h in g.groupby(["variant", "bandwidth", "length"], sort=False):
            h = h.sort_values("alpha_factor")
            ok = np.isfinite(h.r.to_numpy(float))
            if not ok.any():
                continue
            h = h[ok]
            lo = (h.r - h.r_low).to_numpy(float)
            hi = (h.r_high - h.r).to_numpy(float)
            shift = 1.04 if length == SHORT else 1.0
            ax.errorbar(h.alpha_factor * shift, h.r, yerr=[np.nan_to_num(lo), np.nan_to_num(hi)],
                        color=colours[variant], ls=styles.get(bw, "-"), marker="o", ms=4, lw=1.2, capsize=2,
                        mfc=colours[variant] if length == CONVERGED else "white",
                        alpha=1.0 if length == CONVERGED else 0.6,
                        label=f"{variant}, {bw}, {length}")
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(1, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"{model}, l = {l}", fontsize=9)
        ax.set_xlabel("α / paper's α")
        ax.set_ylabel("r(H, TC)")
    if len(groups):
        axes[0].legend(fontsize=6, loc="best")
