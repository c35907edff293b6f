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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
    REPRODUCED,
    THRESHOLDS,
    Finding,
    Precondition,
    enough,
    excludes_zero,
    headroom,
    judge,
    judged,
    learned,
    pearson_ci,
    run_accuracies,
)
from tcomplex.experiments.studies.common import Context, load_trained_model
from tcomplex.experiments.train import TrainConfig, analysis_set_for, recipe
from tcomplex.gating import record_gates

__all__ = [
    "CHAPTER",
    "configs",
    "measure_model",
    "measure_runs",
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
#: Version of the per-run measurement cache; bump when :func:`measure_model` changes.
_CACHE_VERSION = 1
#: Columns of the per-model measurement table.
MEASURE_COLUMNS = [
    "model", "seed", "run_id", "l", "layer", "d", "alpha", "n", "H", "TC", "C", "H_plus_TC",
    "rate_mean", "rate_sd", "H_saturated", "H_plugin", "TC_plugin", "H_plugin_saturated",
]


# ---------------------------------------------------------------------------
# the training grid
# ---------------------------------------------------------------------------
def configs(models: Sequence[str], seeds: Sequence[int], *, dataset: str, epochs: int,
            train_subset: int | None, track_per_class: int, eval_size: int | None) -> list[TrainConfig]:
    """Training runs: every model x seed ("different initialized parameters", Section 4.1).

    The training loop only tracks the whole network at the last epoch (test
    accuracy, and H(Sigma) on ``track_per_class`` images per class, kept small
    because ResNet-20's whole Sigma holds ~144k gates); the layers of Figure 2
    are measured afterwards by :func:`measure_runs`.  ``eval_size`` limits the
    train/test images used for the accuracy (None: full test set, 10000 train
    images).
    """
    extra: dict[str, Any] = {}
    if eval_size is not None:
        extra = {"test_subset": eval_size, "eval_train_size": eval_size}
    return [
        TrainConfig(**{**recipe(m), **dict(
            model=m, dataset=dataset, epochs=epochs, seed=s, train_subset=train_subset,
            analysis_per_class=track_per_class, track_epochs=[epochs], per_layer=False,
            rates=False, tc=False, **extra)})
        for m in models for s in seeds
    ]


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


def _table_name(cfg: TrainConfig, key: dict[str, Any]) -> str:
    if cfg.normalization != "dataset":  # images normalised as the run's: another cache entry
        key = {**key, "normalization": cfg.normalization}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{CHAPTER}_layers_{digest}"


def measure_runs(groups: Sequence[tuple[TrainConfig, Sequence[int]]], ctx: Context, *,
                 analysis_per_class: int, analysis_seed: int = 0, bandwidth: str = "dims") -> pd.DataFrame:
    """Measure the chosen layers of every trained run on one fixed analysis set.

    ``groups`` pairs each finished run's config with its layer positions.  The
    images are :func:`analysis_set_for` the run with ``analysis_per_class``
    images per class and ``full_split=True`` (Appendix I: images sampled from the
    training set): the same images for every model of a dataset, whatever its
    seed or training subset (a subset of a few hundred images may hold fewer
    than ``analysis_per_class`` of a class), normalised as the run's inputs.
    Results are cached in each run's folder (:meth:`RunDir.cached_table`), keyed
    by the layers and the analysis set, so re-running a notebook does not
    recompute them.
    """
    frames = []
    for cfg, layers in groups:
        key = {"v": _CACHE_VERSION, "layers": list(layers), "per_class": analysis_per_class,
               "seed": analysis_seed, "bandwidth": bandwidth, "kinds": list(cfg.kinds)}

        def compute(cfg: TrainConfig = cfg, layers: Sequence[int] = layers) -> pd.DataFrame:
            x, _ = _analysis_images(cfg, ctx, analysis_per_class, analysis_seed)
            frame = pd.DataFrame(measure_model(load_trained_model(cfg, ctx), x, layers, kinds=cfg.kinds,
                                               bandwidth=bandwidth))
            frame.insert(0, "run_id", cfg.run_id)
            frame.insert(0, "seed", cfg.seed)
            frame.insert(0, "model", cfg.model)
            return frame[MEASURE_COLUMNS]

        frames.append(ctx.run(cfg).cached_table(_table_name(cfg, key), compute))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MEASURE_COLUMNS)


def _analysis_images(cfg: TrainConfig, ctx: Context, per_class: int, seed: int) -> tuple[torch.Tensor, Any]:
    """:func:`analysis_set_for` the run with ``per_class`` images per class of the full training split,
    drawn with ``seed``: the same images for every model of a dataset (see :func:`measure_runs`)."""
    return analysis_set_for(dataclasses.replace(cfg, analysis_seed=seed), ctx.data_root, per_class=per_class,
                            full_split=True)


def tc_draw_noise(cfg: TrainConfig, ctx: Context, l: int, *, analysis_per_class: int, draws: int,
                  analysis_seed: int = 0, bandwidth: str = "dims") -> dict[str, float]:
    """Spread of the Eq. 28 estimate over ``draws`` draws of the synthesized states, one model.

    Eq. 28 compares the observed states with n synthesized independent ones; a
    different draw gives a different TC.  Comparing this spread with the spread
    of TC across models tells whether the model-to-model differences are real.
    """
    x, _ = _analysis_images(cfg, ctx, analysis_per_class, analysis_seed)
    model = load_trained_model(cfg, ctx)
    rec = record_gates(model, x, kinds=cfg.kinds, layers=[l])
    s = rec[rec.names[0]]
    a = rec.info[rec.names[0]].default_alpha
    values = [float(est.kde_total_correlation(s, alpha=a, bandwidth=bandwidth,
                                              generator=torch.Generator().manual_seed(k)))
              for k in range(draws)]
    return {"model": cfg.model, "l": l, "draws": draws, "TC_mean": float(np.mean(values)),
            "TC_draw_sd": float(np.std(values, ddof=1)) if draws > 1 else math.nan}


def tc_noise_table(groups: Sequence[tuple[TrainConfig, Sequence[int]]], ctx: Context, table: pd.DataFrame, *,
                   analysis_per_class: int, draws: int) -> pd.DataFrame:
    """:func:`tc_draw_noise` for the first run of each architecture and each of its layers,
    beside the spread of TC across models from :func:`correlation_table`."""
    seen: set[str] = set()
    out = []
    for cfg, layers in groups:
        if cfg.model in seen:
            continue
        seen.add(cfg.model)
        for l in layers:
            out.append(tc_draw_noise(cfg, ctx, l, analysis_per_class=analysis_per_class, draws=draws))
    frame = pd.DataFrame(out).merge(table[["model", "l", "TC_sd"]], on=["model", "l"])
    return frame.rename(columns={"TC_sd": "TC_sd_across_models"})


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


def _sd(v: np.ndarray) -> float:
    """Sample standard deviation (NaN for fewer than 2 values)."""
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (NaN when x is constant or has fewer than 2 values)."""
    if len(x) < 2 or np.ptp(x) < 1e-12:
        return math.nan
    return float(np.cov(x, y)[0, 1] / np.var(x, ddof=1))


def correlation_table(measures: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, l): Pearson r(H, TC) [95% CI] across models and the quantities behind it.

    Columns: ``n_models``, ``d``, ``r``, ``r_low``, ``r_high``, ``p``, the partial
    correlation ``r_given_C`` (:func:`partial_r`, a supplementary check), the fitted line
    TC = slope * H + intercept, mean and sd over models of H, TC and C_l, the
    ratio ``sd_C / sd_H`` (small: C_l is nearly constant compared with H, the
    premise of Eq. 6's argument), the sd of the KDE H + TC (``Chat_sd``) and its
    least-squares slope on H (``Chat_slope_on_H``; since TC_KDE = C_hat - H_KDE
    exactly, r(H, TC) < 0 if and only if this slope is below 1), the mean rate, the KDE identity check
    ``mean (H + TC) - C`` and ``r(H + TC, C)``, the number of saturated H
    estimates, the plug-in counterpart (saturations and r when defined) and the
    computed verdict (:func:`group_verdict`).
    """
    out = []
    for (model, l), g in measures.groupby(["model", "l"], sort=False):
        h, tc, c = g.H.to_numpy(float), g.TC.to_numpy(float), g.C.to_numpy(float)
        r, lo, hi, p = _safe_r(h, tc)
        slope, intercept = (np.polyfit(h, tc, 1) if len(h) >= 2 and np.std(h) > 0 else (math.nan, math.nan))
        rk = _safe_r(g.H_plus_TC.to_numpy(float), c)[0]
        r_partial = partial_r(h, tc, c)
        hp, tp = g.H_plugin.to_numpy(float), g.TC_plugin.to_numpy(float)
        plug_sat = int(g.H_plugin_saturated.astype(bool).sum())
        r_plug = _safe_r(hp, tp)[0] if np.all(np.isfinite(hp)) else math.nan
        n_sat = int(g.H_saturated.astype(bool).sum())
        sd_h, sd_c = _sd(h), _sd(c)
        out.append({
            "model": model, "l": int(l), "layer": g.layer.iloc[0], "d": int(g.d.iloc[0]),
            "n_models": len(g), "n_images": int(g.n.iloc[0]),
            "r": r, "r_low": lo, "r_high": hi, "p": p, "r_given_C": r_partial,
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
        })
    return pd.DataFrame(out)


def _fmt_r(row: pd.Series) -> str:
    if not np.isfinite(row.r):
        return "r undefined"
    if not np.isfinite(row.r_low):
        return f"r = {row.r:.2f} (n = {row.n_models}, no CI)"
    return f"r = {row.r:.2f} [{row.r_low:.2f}, {row.r_high:.2f}]"


def group_preconditions(row: Any, accuracies: pd.DataFrame | None) -> list[Precondition]:
    """What the verdict of one (architecture, layer) needs (Figure 2):

    * the architecture's models learned (``accuracies``: :func:`~tcomplex.experiments.report.run_accuracies`
      of the training rows; None: not measured, the precondition fails);
    * at least ``THRESHOLDS["min_seeds_correlation"]`` models for the correlation;
    * the KDE H of every model at least ``THRESHOLDS["headroom_bits"]`` below log2 n (the plug-in
      H, which counts distinct patterns, is shown with it);
    * the 95% Fisher-z interval of r excludes 0 (the claim is a sign).
    """
    model = str(row.model)
    if accuracies is None:
        pre = [Precondition(f"{model} learned", "test accuracy >= threshold", "not measured", False, "learned")]
    else:
        acc = accuracies[accuracies.model == model]
        dataset = str(acc.dataset.iloc[0]) if len(acc) else ""
        pre = [learned(f"{model} on {dataset}" if dataset else model, acc.test_acc.tolist(), model, dataset)]
    distinct = (f"plug-in H at log2 n (all distinct) in {int(row.H_plugin_saturated)}/{int(row.n_models)} models"
                if np.isfinite(row.H_plugin_mean) else None)
    h_max = float(row.H_max) if "H_max" in row and np.isfinite(row.H_max) else float(row.H_mean)
    pre += [enough("models (seeds)", int(row.n_models), int(THRESHOLDS["min_seeds_correlation"])),
            headroom(f"H(Σ_{row.l}) (KDE)", [h_max], float(row.log2_n), distinct=distinct),
            excludes_zero("r(H, TC)", float(row.r_low), float(row.r_high))]
    return pre


def findings(table: pd.DataFrame, setting: str, rows: pd.DataFrame | None = None) -> list[Finding]:
    """One finding per (architecture, layer) and one overall.

    Per group: reproduced when r(H, TC) < 0, not reproduced when r >= 0, both only when
    :func:`group_preconditions` hold (``rows``: the training rows, for the test accuracies),
    else inconclusive.  Overall (the claim has parts, the groups): reproduced when every
    conclusive group is, partly when some are (``parts`` names them), not reproduced when none
    is; it needs at least two conclusive groups ("verified on different layers and architectures").
    """
    accuracies = run_accuracies(rows) if rows is not None else None
    found = []
    conclusive: list[tuple[str, bool]] = []
    for _, row in table.iterrows():
        plug = (f"plug-in H at log2 n = {row.log2_n:.2f} in {row.H_plugin_saturated}/{row.n_models} models"
                if row.H_plugin_saturated else
                (f"plug-in r(H, TC) = {row.r_plugin:.2f}" if np.isfinite(row.r_plugin) else "plug-in r undefined"))
        sat = f"; {row.H_saturated} KDE H estimates saturated" if row.H_saturated else ""
        part = f"; r(H, TC | C_l) = {row.r_given_C:.2f}" if np.isfinite(row.r_given_C) else ""
        pre = group_preconditions(row, accuracies)
        v = judge(bool(row.r < 0), pre)  # an undefined r fails its interval precondition
        if v != INCONCLUSIVE:
            conclusive.append((f"{row.model} l={row.l}", v == REPRODUCED))
        found.append(Finding(
            f"fig2_{row.model}_l{row.l}", CHAPTER,
            f"Figure 2 / Eq. 6: over {row.model} models with similar activation rates, H(Σ_{row.l}) and "
            f"TC(Σ_{row.l}) are negatively correlated.",
            f"{_fmt_r(row)} over {row.n_models} models (d = {row.d}, n = {row.n_images} images); "
            f"C_l = {row.C_mean:.1f} ± {row.C_sd:.2f} bits (sd_C / sd_H = {row.sdC_over_sdH:.2f}); "
            f"KDE H + TC − C = {row.khat_minus_C:.1f} bits, slope of KDE H + TC on H = {row.Chat_slope_on_H:.2f} "
            f"(r < 0 iff < 1){part}; {plug}{sat}.",
            v, setting, preconditions=pre,
        ))
    groups = [f"{r.model} l={r.l}" for r in table.itertuples()]
    inconclusive = [g for g in groups if g not in {c for c, _ in conclusive}]
    pre_all = [enough("conclusive (architecture, layer) groups", len(conclusive), 2)]
    v_all, parts = judged(True, pre_all, conclusive) if conclusive else (judge(False, pre_all), "")
    counts = ", ".join(f"{sum(f.verdict == k for f in found)} {k}" for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    found.append(Finding(
        "fig2_overall", CHAPTER,
        "Section 4.1: the complexity H(Σ_l) and the entanglement TC(Σ_l) are strongly negatively "
        "correlated across models with similar activation rates (verified on different layers and architectures).",
        f"{len(groups)} (architecture, layer) groups: {counts}"
        + (f" (inconclusive: {', '.join(inconclusive)})" if inconclusive else "")
        + (f"; r from {table.r.min():.2f} to {table.r.max():.2f}." if len(table) else "."),
        v_all, setting, preconditions=pre_all, parts=parts,
    ))
    return found


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Final train/test accuracy per architecture (mean and sd over seeds), from the training rows."""
    last = rows[(rows.layer == "__all__") & rows.metric.isin(["train_acc", "test_acc"])]
    last = last[last.epoch == last.groupby("run_id").epoch.transform("max")]
    wide = last.pivot_table(index=["model", "seed"], columns="metric", values="value").reset_index()
    return wide.groupby("model").agg(models=("seed", "count"), train_acc=("train_acc", "mean"),
                                     test_acc=("test_acc", "mean"), test_acc_sd=("test_acc", "std")).reset_index()


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
    """Deterministic, rounded lines (for the notebook's checked output)."""
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
