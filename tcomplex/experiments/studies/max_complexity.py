"""Chapter 4: the ceiling of a DNN's complexity (Section 4.2, "Maximum complexity", Figure 5).

The paper builds *task MLPs* (n ReLU layers and FC layers of width 1024, fixed
random weights, n = 0..31) on grey-scale CIFAR-10 images; the output of Task-n
is the task MLP's output.  *Target MLPs* with 6, 12, 18, 24 ReLU layers of width
1024 (stacked, or residual with a skip-connection on each FC layer) are trained
with an MSE loss to reproduce it.  Figure 5 plots the complexity of the trained
target MLPs against n.  Claims (Section 4.2):

* stacked (1): for tasks of low complexity, deep MLPs learn more complex
  transformations than shallow ones;
* stacked (2): as the task complexity grows, shallow MLPs' complexity is
  usually higher than deep ones';
* residual (1): deep residual MLPs always encode higher complexity than
  shallow ones;
* residual (2): complexity increases with task complexity at first;
* residual (3): beyond a limit it saturates and starts to decrease.

"Complexity" here is H(Sigma) of the whole target network (all its ReLU gates
concatenated, Eq. 2); a regression has no labels, so there is no I(X;Sigma;Y).
The final MSE, and R^2 = 1 - MSE / Var(target), say whether a target fits its task.

With n analysis images H(Sigma) <= log2 n.  At the paper's alpha = 0.01 the
estimate for a whole stacked network of thousands of gates often sits at that
ceiling (every image's gating pattern is far from every other's, relative to the
kernel width), where no ordering can be read.  So H is also
measured, from the same gating states of the same trained models, at larger
alphas (the paper's Appendix H / Figure 9 states that trends do not depend on
alpha); verdicts are computed at a stated alpha (:func:`choose_alpha`) and shown
for every alpha (:func:`verdicts_by_alpha`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tcomplex.experiments import data as data_mod
from tcomplex.experiments import models as models_mod
from tcomplex.experiments.report import (
    NOT_MEASURED,
    THRESHOLDS,
    Finding,
    Precondition,
    dip_then_rise,
    enough,
    excludes_zero,
    fitted,
    fmt_ci,
    headroom,
    judged,
    mean_ci,
    spearman_ci,
)
from tcomplex.experiments.studies.common import Context, load_trained_model
from tcomplex.experiments.measure import ALL, measure
from tcomplex.experiments.train import TrainConfig, analysis_set_for, build_model_for, prepare_data
from tcomplex.gating import record_gates

__all__ = [
    "CHAPTER",
    "ARCHITECTURES",
    "RESIDUAL_INITS",
    "configs",
    "architecture_of",
    "final_table",
    "task_variance",
    "init_output_scale",
    "alpha_table",
    "fit_table",
    "fit_summary",
    "read_table",
    "complexity_table",
    "n_groups",
    "depth_order",
    "curve_shapes",
    "choose_alpha",
    "findings",
    "verdicts_by_alpha",
    "ceiling_bits",
    "grid_text",
    "plot_vs_n",
]

CHAPTER = "04_maximum_complexity"
ARCHITECTURES = ("stacked", "residual")
#: where the measurements after training run (train() itself picks its device from the config)
_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
#: metrics of the final epoch kept per run
_FINAL_METRICS = ("H", "saturated_H", "rate_mean", "train_loss", "test_loss", "epoch_train_loss", "epoch_seconds")


#: initialisations of a residual target (:data:`tcomplex.experiments.models.TARGET_MLP_INITS`)
RESIDUAL_INITS = models_mod.TARGET_MLP_INITS


def _model_kwargs(depth: int, architecture: str, residual_init: str = "kaiming_normal") -> dict[str, object]:
    if architecture == "stacked":
        return {"n_relu": int(depth)}
    if architecture == "residual":
        kw: dict[str, object] = {"n_relu": int(depth), "residual": True}
        if residual_init != "kaiming_normal":  # the default stays out of the config (and of the run id)
            kw["init"] = residual_init
        return kw
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def architecture_of(model_kwargs: str | dict[str, object]) -> tuple[str, int]:
    """(architecture, depth) of a target MLP from its ``model_kwargs`` (dict or the JSON of a row)."""
    kw = json.loads(model_kwargs) if isinstance(model_kwargs, str) else model_kwargs
    return ("residual" if kw.get("residual") else "stacked"), int(kw["n_relu"])


def configs(
    *,
    dataset: str,
    task_ns: Sequence[int],
    depths: Sequence[int],
    architectures: Sequence[str],
    seeds: Sequence[int],
    epochs: int,
    train_subset: int | None,
    eval_size: int | None,
    analysis_size: int,
    optimizer: str,
    lr_stacked: float,
    lr_residual: float,
    batch_size: int,
    task_seed: int = 0,
    residual_init: str = "kaiming_normal",
    epochs_residual: int | None = None,
) -> list[TrainConfig]:
    """Training runs of Figure 5: every target MLP on every Task-n.

    A run regresses the output of the task MLP with ``task_n`` ReLU layers
    (``task="regress"``, MSE) with a ``target_mlp`` of ``depth`` ReLU layers,
    stacked or residual.  Complexity is tracked at the last epoch only, for the
    whole network (``per_layer=False``), on ``analysis_size`` random training
    images (Appendix I: 2000).  Train and test MSE are measured on ``eval_size``
    images of each split (None: 10000 train images and the whole test split).
    No weight decay: the paper names no regulariser for this regression.
    ``lr_stacked`` / ``lr_residual``: learning rate per architecture (the
    paper gives none).  A residual block ``ReLU(x + W x)`` with kaiming-normal
    W (``residual_init="kaiming_normal"``) multiplies the mean square of its
    activations by a constant factor above one, so a deep residual target starts
    with outputs orders of magnitude larger than the task's
    (:func:`init_output_scale`) and needs a larger step size to bring them down,
    one with which a deep stacked target loses many of its active gates
    (hence the two rates).  ``residual_init="scaled_residual"`` scales every
    skip block's ``W`` by ``1 / sqrt(blocks)`` at initialisation instead
    (:class:`~tcomplex.experiments.models.TargetMLP`), so that a residual target of
    any depth starts at the task's output scale; stacked targets ignore it.
    ``epochs_residual``: epochs of the residual targets (None: ``epochs``, as for
    the stacked ones).
    """
    if residual_init not in RESIDUAL_INITS:
        raise ValueError(f"residual_init must be one of {RESIDUAL_INITS}, got {residual_init!r}")
    if epochs_residual is not None and int(epochs_residual) < 1:
        raise ValueError(f"epochs_residual must be >= 1 or None, got {epochs_residual}")
    out = []
    for arch in architectures:
        n_epochs = int(epochs_residual) if arch == "residual" and epochs_residual is not None else int(epochs)
        for depth in depths:
            for n in task_ns:
                for s in seeds:
                    out.append(TrainConfig(
                        model="target_mlp", dataset=dataset, task="regress", task_n=int(n), task_seed=task_seed,
                        model_kwargs=_model_kwargs(depth, arch, residual_init), epochs=n_epochs, seed=int(s),
                        batch_size=batch_size, optimizer=optimizer,
                        lr=lr_stacked if arch == "stacked" else lr_residual, weight_decay=0.0,
                        train_subset=train_subset, test_subset=eval_size,
                        eval_train_size=eval_size if eval_size is not None else 10000,
                        analysis_size=analysis_size, track_epochs=[n_epochs], per_layer=False, rates=True,
                        label=f"{arch} target MLP, {depth} ReLU layers, Task-{n}",
                    ))
    return out


def final_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run at its last tracked epoch: arch, depth, task_n, seed and the final metrics.

    ``H`` is H(Sigma) of the whole network at the run's alpha (0.01 for gates
    after FC layers), ``saturated_H`` whether it sits at log2(analysis_size).
    """
    sel = rows[(rows.layer == ALL) & rows.metric.isin(_FINAL_METRICS)]
    sel = sel[sel.epoch == sel.groupby("run_id").epoch.transform("max")]
    wide = sel.pivot_table(index=["run_id", "model_kwargs", "task_n", "seed", "analysis_size", "epoch"],
                           columns="metric", values="value").reset_index()
    wide.columns.name = None
    arch_depth = wide.model_kwargs.map(architecture_of)
    wide.insert(1, "arch", arch_depth.str[0])
    wide.insert(2, "depth", arch_depth.str[1].astype(int))
    wide["saturated_H"] = wide["saturated_H"].astype(bool)
    wide["task_n"] = wide["task_n"].astype(int)
    return wide.drop(columns="model_kwargs").sort_values(["arch", "depth", "task_n", "seed"]).reset_index(drop=True)


def task_variance(cfgs: Sequence[TrainConfig], ctx: Context) -> pd.DataFrame:
    """Var(target) per Task-n on the test images where the test MSE is measured.

    The mean over output units of the variance over images of the task MLP's
    output: the MSE of the best constant prediction, so R^2 = 1 - MSE / Var.
    One row per (task_n, task_seed, test images).
    """
    out, seen = [], set()
    for cfg in cfgs:
        key = (cfg.dataset, cfg.task_n, cfg.task_seed, cfg.test_subset)
        if key in seen:
            continue
        seen.add(key)
        d = prepare_data(cfg, ctx.data_root)
        info = data_mod.DATASETS[cfg.dataset]
        task = models_mod.build_model("task_mlp", in_channels=info.shape[0], input_size=info.shape[-1],
                                      n_relu=cfg.task_n, seed=cfg.task_seed).to(_DEVICE)
        with torch.no_grad():
            t = torch.cat([task(x.to(_DEVICE)).cpu() for x in d.test_x.split(1000)])
        out.append({"task_n": cfg.task_n, "task_seed": cfg.task_seed, "test_images": len(t),
                    "var_target": float(t.var(0, unbiased=False).mean()),
                    "mean_sq_target": float(t.pow(2).mean())})
    return pd.DataFrame(out).sort_values("task_n").reset_index(drop=True)


def init_output_scale(cfgs: Sequence[TrainConfig], ctx: Context) -> pd.DataFrame:
    """Root-mean-square output of every target MLP at initialisation, on its analysis images.

    The model is built exactly as :func:`train` builds it (global seed, then the
    registry), before any step.  Compare with the task's RMS output
    (``sqrt(mean_sq_target)`` of :func:`task_variance`): a residual target with
    kaiming-normal weights starts orders of magnitude above it.  Columns ``init``
    (the run's initialisation) and ``rms_output_at_init``; for a residual target
    built with another init, ``rms_output_kaiming_normal`` is the same network
    drawn with the default kaiming-normal weights, for comparison.
    """
    out, seen = [], set()
    for cfg in cfgs:
        arch, depth = architecture_of(cfg.model_kwargs)
        init = str(cfg.model_kwargs.get("init", "kaiming_normal"))
        key = (arch, depth, cfg.seed, init)
        if key in seen:
            continue
        seen.add(key)
        ax, _ = analysis_set_for(cfg, ctx.data_root)
        row: dict[str, object] = {"arch": arch, "depth": depth, "seed": cfg.seed, "init": init}
        variants = [("rms_output_at_init", cfg)]
        if init != "kaiming_normal":
            kaiming = {k: v for k, v in cfg.model_kwargs.items() if k != "init"}
            variants.append(("rms_output_kaiming_normal", dataclasses.replace(cfg, model_kwargs=kaiming)))
        for column, c in variants:
            torch.manual_seed(c.seed)
            model = build_model_for(c).eval()
            with torch.no_grad():
                y = torch.cat([model(x) for x in ax.split(500)])
            row[column] = float(y.pow(2).mean().sqrt())
        out.append(row)
    return pd.DataFrame(out).sort_values(["arch", "depth", "seed"]).reset_index(drop=True)


def _alpha_rows(cfg: TrainConfig, ctx: Context, alphas: Sequence[float]) -> pd.DataFrame:
    model = load_trained_model(cfg, ctx).to(_DEVICE)
    x, _ = analysis_set_for(cfg, ctx.data_root)  # the analysis set train() measured on
    rec = record_gates(model, x.to(_DEVICE), kinds=cfg.kinds)
    sweep = pd.DataFrame(measure(rec, None, alphas=alphas, bandwidth=cfg.bandwidth, per_layer=False))
    return pd.DataFrame({"alpha": sweep.alpha.astype(float), "H": sweep.value.astype(float),
                         "ceiling": sweep.ceiling.astype(float), "saturated": sweep.saturated.astype(bool)})


def alpha_table(cfgs: Sequence[TrainConfig], ctx: Context, alphas: Sequence[float]) -> pd.DataFrame:
    """H(Sigma) of each trained target MLP at every alpha of ``alphas`` (Appendix H, Figure 9).

    The gating states of the final model on the run's own analysis set, one KDE
    estimate (Eq. 2, sigma0^2 = alpha * d) per alpha.  Cached in each run's folder
    (``04_maximum_complexity_alphas.csv``, :meth:`RunDir.cached_rows`; a cache of an
    older version under ``<runs>/_04_maximum_complexity/`` is taken over), so only
    missing alphas are computed.
    """
    frames = []
    for cfg in cfgs:
        cached = ctx.run(cfg).cached_rows(
            f"{CHAPTER}_alphas", "alpha", alphas, lambda missing, cfg=cfg: _alpha_rows(cfg, ctx, missing),
            columns=["H", "ceiling", "saturated"], legacy=ctx.runs / f"_{CHAPTER}" / f"{cfg.run_id}.csv")
        sel = cached.copy()
        arch, depth = architecture_of(cfg.model_kwargs)
        sel.insert(0, "run_id", cfg.run_id)
        sel.insert(1, "arch", arch)
        sel.insert(2, "depth", depth)
        sel.insert(3, "task_n", int(cfg.task_n))
        sel.insert(4, "seed", cfg.seed)
        frames.append(sel)
    table = pd.concat(frames, ignore_index=True)
    table = table.astype({"alpha": float, "H": float, "ceiling": float, "saturated": bool})
    return table.sort_values(["alpha", "arch", "depth", "task_n", "seed"]).reset_index(drop=True)


def fit_table(final: pd.DataFrame, variance: pd.DataFrame) -> pd.DataFrame:
    """:func:`final_table` with ``var_target`` and ``r2`` = 1 - test MSE / Var(target) per run."""
    fit = final.merge(variance[["task_n", "var_target"]], on="task_n", how="left")
    fit["r2"] = 1.0 - fit.test_loss / fit.var_target
    return fit


def fit_summary(fit: pd.DataFrame) -> pd.DataFrame:
    """Per architecture: runs, median test R^2, runs with R^2 > 0, mean activation rate of the gates."""
    g = fit.groupby("arch")
    return pd.DataFrame({"runs": g.size(), "median_r2": g.r2.median(),
                         "runs_r2_positive": g.r2.apply(lambda r: int((r > 0).sum())),
                         "mean_activation_rate": g.rate_mean.mean()}).reset_index()


def read_table(alphas: pd.DataFrame, final: pd.DataFrame, variance: pd.DataFrame,
               min_r2: float | None = None) -> pd.DataFrame:
    """Per run and alpha: H with the run's fit (``test_loss``, ``r2``, ``rate_mean``) and ``read``.

    ``read`` says whether the run's H is read (enters Figure 5 and the verdicts): every
    run when ``min_r2`` is None, else only runs whose held-out R^2 (1 - test MSE /
    Var(target)) reaches ``min_r2`` (the book passes ``THRESHOLDS["min_r2"]``): the H
    of a target that has not learned its task describes a failed fit, not the task.
    """
    fit = fit_table(final, variance)
    t = alphas.merge(fit[["run_id", "test_loss", "r2", "rate_mean"]], on="run_id", how="left")
    if t.r2.isna().any():
        missing = sorted(set(t.run_id[t.r2.isna()]))
        raise ValueError(f"runs without a final test MSE or task variance: {missing[:3]}; train them first")
    t["read"] = True if min_r2 is None else (t.r2 >= float(min_r2))
    return t


def complexity_table(alphas: pd.DataFrame, final: pd.DataFrame, variance: pd.DataFrame,
                     min_r2: float | None = None) -> pd.DataFrame:
    """Figure 5's data: per (alpha, arch, depth, task_n), H averaged over the seeds read, with fit quality.

    Columns: ``H`` (mean over the seeds whose H is read, :func:`read_table`; NaN when no
    seed of the point fitted its task), ``H_sd``, ``seeds`` (seeds read), ``seeds_run``
    (seeds trained), ``saturated`` (any seed read at the ceiling), ``ceiling`` (log2 n),
    ``test_mse``, ``r2`` (1 - test MSE / Var(target), mean over all seeds), ``r2_min``
    (the worst seed), ``r2_read`` (mean over the seeds read) and ``rate_mean`` (fraction
    of active gates, mean over all seeds).  ``min_r2`` None reads every run.
    """
    t = read_table(alphas, final, variance, min_r2)
    keys = ["alpha", "arch", "depth", "task_n"]
    g = t.groupby(keys)
    out = g.agg(seeds_run=("seed", "nunique"), ceiling=("ceiling", "max"), test_mse=("test_loss", "mean"),
                r2=("r2", "mean"), r2_min=("r2", "min"), rate_mean=("rate_mean", "mean")).reset_index()
    r = t[t.read].groupby(keys).agg(H=("H", "mean"), H_sd=("H", "std"), seeds=("seed", "nunique"),
                                    saturated=("saturated", "any"), r2_read=("r2", "mean")).reset_index()
    out = out.merge(r, on=keys, how="left")
    out["seeds"] = out.seeds.fillna(0).astype(int)
    out["saturated"] = out.saturated.astype("boolean").fillna(False).astype(bool)
    cols = ["alpha", "arch", "depth", "task_n", "H", "H_sd", "seeds", "seeds_run", "saturated", "ceiling",
            "test_mse", "r2", "r2_min", "r2_read", "rate_mean"]
    return out[cols]


# ---------------------------------------------------------------------------
# verdict logic
# ---------------------------------------------------------------------------
def n_groups(task_ns: Sequence[int]) -> tuple[list[int], list[int]]:
    """The low- and high-complexity tasks: the smallest and the largest third of the n values (at least one each)."""
    ns = sorted(set(int(n) for n in task_ns))
    k = max(1, len(ns) // 3)
    return ns[:k], ns[-k:]


def depth_order(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (alpha, arch, task_n): Spearman rho between depth and H over the depths, with a 95% Fisher-z interval.

    Without ``runs``, rho is taken over the per-depth means of ``table``
    (:func:`complexity_table`); with ``runs`` (:func:`read_table`), over every
    (depth, seed) point read, so that 4 depths x 2 seeds give 8 points and the
    interval (standard error 1.03 / sqrt(points - 3), :func:`spearman_ci`) has a
    usable width.  Points without a read H are left out; ``depths`` counts the depths
    with one.  ``readable`` is False when an estimate of some depth sits at the
    ceiling (then no ordering can be read). ``rho`` is NaN when all H are equal.
    """
    out = []
    for (alpha, arch, n), g in table.groupby(["alpha", "arch", "task_n"]):
        g = g[g.H.notna()].sort_values("depth")
        if runs is not None:
            pts = runs[np.isclose(runs.alpha, alpha) & (runs.arch == arch) & (runs.task_n == n) & runs.read]
            x, y = pts.depth.to_numpy(float), pts.H.to_numpy(float)
        else:
            x, y = g.depth.to_numpy(float), g.H.to_numpy(float)
        rho, lo, hi = spearman_ci(x, y) if len(x) >= 2 else (math.nan, math.nan, math.nan)
        out.append({"alpha": alpha, "arch": arch, "task_n": int(n), "depths": len(g), "points": len(x),
                    "rho": rho, "rho_low": lo, "rho_high": hi,
                    "readable": not bool(g.saturated.any()),
                    "H_by_depth": ", ".join(f"{int(d)}: {h:.2f}" for d, h in zip(g.depth, g.H))})
    return pd.DataFrame(out)


def curve_shapes(table: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Per (alpha, arch, depth): the shape of H against task complexity n.

    ``rises_first``: the maximum is not at the smallest n and exceeds H there by
    more than ``tol`` bits (residual claim 2); ``rise_then_fall``: the maximum is
    at an interior n and H at the largest n is more than ``tol`` below it
    (residual claim 3; :func:`dip_then_rise` on -H).  ``readable`` is False when
    any point sits at the ceiling log2 n.
    """
    out = []
    for (alpha, arch, depth), g in table.groupby(["alpha", "arch", "depth"]):
        g = g[g.H.notna()].sort_values("task_n")
        if len(g) < 3:
            continue
        s = dip_then_rise(g.task_n.to_numpy(), -g.H.to_numpy(), tol=tol)
        out.append({"alpha": alpha, "arch": arch, "depth": int(depth), "n_at_max": int(s["min_epoch"]),
                    "H_first": -s["first"], "H_max": -s["min"], "H_last": -s["last"],
                    "rise": s["drop"], "fall": s["rise"], "rises_first": bool(s["dips"]),
                    "rise_then_fall": bool(s["holds"]), "readable": not bool(g.saturated.any())})
    cols = ["alpha", "arch", "depth", "n_at_max", "H_first", "H_max", "H_last", "rise", "fall", "rises_first",
            "rise_then_fall", "readable"]
    return pd.DataFrame(out, columns=cols)  # no curve with 3 read points: empty, with its columns


def choose_alpha(table: pd.DataFrame, alphas: Sequence[float], max_saturated: float) -> float | None:
    """The first alpha of ``alphas`` (the paper's 0.01 first) with at most ``max_saturated`` of its estimates saturated.

    None when every alpha saturates more often than that.
    """
    for a in alphas:
        sel = table[np.isclose(table.alpha, a)]
        sel = sel[sel.H.notna()]
        if len(sel) and float(sel.saturated.mean()) <= max_saturated:
            return float(a)
    return None


@dataclass(frozen=True)
class _Outcome:
    holds: bool | None  # None: nothing readable
    measured: str
    parts: tuple[tuple[str, bool], ...] = ()
    preconditions: tuple[Precondition, ...] = ()


def _welch(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> tuple[float, float]:
    """95% Welch interval of m1 - m2 from means, sds and seed counts (NaN with fewer than 2 seeds each)."""
    from scipy import stats

    if n1 < 2 or n2 < 2 or not (np.isfinite(s1) and np.isfinite(s2)):
        return math.nan, math.nan
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    se = math.sqrt(v1 + v2)
    if se == 0:
        return m1 - m2, m1 - m2
    df = (v1 + v2) ** 2 / ((v1 ** 2 / (n1 - 1) if v1 else 0) + (v2 ** 2 / (n2 - 1) if v2 else 0))
    half = float(stats.t.ppf(0.5 + THRESHOLDS["confidence"] / 2, df)) * se
    return m1 - m2 - half, m1 - m2 + half


def _ordering(order: pd.DataFrame, arch: str, ns: Sequence[int], sign: int, need_all: bool) -> _Outcome:
    """Outcome of a depth-ordering claim on the tasks ``ns``.

    ``sign`` +1: deeper is more complex (rho > 0); -1: shallower is (rho < 0).
    ``need_all``: the claim says "always" (its parts are the tasks: every n must agree),
    else the claim holds when the mean rho has the sign and more than half of the n agree.
    Preconditions: at least ``THRESHOLDS["min_points_rank"]`` depths (Spearman rho over two
    depths is always +-1), and an interval of the mean rho over the tasks that excludes 0
    (t interval over the tasks; the Fisher-z interval of rho with one task).
    """
    sel = order[(order.arch == arch) & order.task_n.isin(list(ns))].sort_values("task_n")
    if sel.empty or sel.depths.max() < 2:
        return _Outcome(None, f"{arch}: fewer than two depths on tasks {list(ns)}.")
    per_n = "; ".join(f"n={int(r.task_n)}: ρ={fmt_ci(r.rho, r.rho_low, r.rho_high)}"
                      + (f" over {int(r.points)} points" if "points" in sel else "")
                      + ("" if r.readable else " (saturated)")
                      for r in sel.itertuples())
    rhos = sel.rho.fillna(0.0).to_numpy(float)
    agree = (sign * rhos) > 0
    frac = float(agree.mean())
    if len(rhos) >= 2:
        mean_rho, lo, hi = mean_ci(rhos)
    else:
        r0 = sel.iloc[0]
        mean_rho, lo, hi = float(rhos[0]), float(r0.rho_low), float(r0.rho_high)
    pre = (enough("depths for a rank correlation", int(sel.depths.min()), int(THRESHOLDS["min_points_rank"])),
           excludes_zero("mean ρ(depth, H)", lo, hi))
    parts: tuple[tuple[str, bool], ...] = ()
    if need_all:
        holds = frac == 1.0
        parts = tuple((f"n={int(n)}", bool(a)) for n, a in zip(sel.task_n, agree))
    else:
        holds = sign * mean_rho > 0 and frac > 0.5
    text = (f"Spearman ρ(depth, H) over {int(sel.depths.max())} depths per task: {per_n}. "
            f"Sign as claimed on {int(agree.sum())}/{len(sel)} tasks, mean ρ = {fmt_ci(mean_rho, lo, hi)}.")
    return _Outcome(bool(holds), text, parts, pre)


def _shape(shapes: pd.DataFrame, table: pd.DataFrame, arch: str, column: str) -> _Outcome:
    """Outcome of a curve-shape claim; its parts are the depths (the shape must hold at each).

    Preconditions: at least ``THRESHOLDS["min_points_rank"]`` task complexities per curve, and,
    at every depth where the shape holds, the difference that decides it (H at the maximum minus
    H at the smallest n for ``rises_first``, minus H at the largest n for ``rise_then_fall``) with
    a 95% Welch interval over seeds above 0 (the claimed sign; a depth where the shape does not
    hold claims no sign).
    """
    sel = shapes[shapes.arch == arch].sort_values("depth")
    if sel.empty:
        return _Outcome(None, f"{arch}: no curve with at least three task complexities.")
    at = table[(table.arch == arch) & table.H.notna()]
    intervals = []
    for r in sel.itertuples():
        g = at[at.depth == r.depth].set_index("task_n").sort_index()
        top, other = g.loc[r.n_at_max], g.iloc[0] if column == "rises_first" else g.iloc[-1]
        intervals.append(_welch(float(top.H), float(top.H_sd), int(top.seeds),
                                float(other.H), float(other.H_sd), int(other.seeds)))
    per_depth = "; ".join(
        f"depth {int(r.depth)}: H {r.H_first:.2f} → max {r.H_max:.2f} at n={int(r.n_at_max)} → {r.H_last:.2f}"
        + (f" (deciding difference [{lo:.2f}, {hi:.2f}])" if np.isfinite(lo) else "")
        for r, (lo, hi) in zip(sel.itertuples(), intervals))
    parts = tuple((f"depth {int(r.depth)}", bool(getattr(r, column))) for r in sel.itertuples())
    # the claimed sign (a rise, a fall) needs its interval wherever the shape is read as holding
    decided = [bool(np.isfinite(lo) and lo > 0) for (lo, _), (_, held) in zip(intervals, parts) if held]
    n_points = int(at.groupby("depth").task_n.nunique().min())
    pre = (enough("task complexities per curve", n_points, int(THRESHOLDS["min_points_rank"])),
           Precondition("deciding difference where the shape holds: interval above 0",
                        "95% Welch CI over seeds above 0 at every depth where the shape holds",
                        f"{sum(decided)}/{len(decided)} depths", all(decided), "interval"))
    k = sum(h for _, h in parts)
    text = f"{per_depth}. Holds for {k}/{len(parts)} depths."
    return _Outcome(k == len(parts), text, parts, pre)


def findings(table: pd.DataFrame, alpha: float | None, tol: float, setting: str,
             runs: pd.DataFrame | None = None) -> list[Finding]:
    """The five claims of Section 4.2 ("maximum complexity") with computed verdicts at ``alpha``.

    Criteria (stated in the measured text): low/high tasks are the smallest and
    largest third of the n values (:func:`n_groups`).  Stacked (1): mean
    Spearman ρ(depth, H) over the low tasks > 0 with more than half of them
    positive; stacked (2): the same with ρ < 0 over the high tasks; residual (1):
    ρ > 0 at every task (its parts); residual (2)/(3): :func:`curve_shapes` with
    tolerance ``tol`` bits, at every depth (its parts).  Preconditions of each verdict
    (besides those of :func:`_ordering` / :func:`_shape`): the target fits of the
    architecture learned (held-out R² >= ``THRESHOLDS["min_r2"]``), every H has headroom
    below log2 n, and at least ``THRESHOLDS["min_seeds_point"]`` seeds per point.
    ``alpha`` None (every alpha saturated) gives "not measured" everywhere.

    When ``table`` comes from :func:`complexity_table` with ``min_r2`` (columns
    ``r2_read`` and ``seeds_run``), H is read only from fits that reached R² >= min_r2;
    the preconditions are then that those fits exist at every point (at least
    ``min_seeds_point`` fitted seeds per (depth, task)) and their R².  ``runs``
    (:func:`read_table`): the rank correlations over depths use every (depth, seed)
    point read, with Fisher-z intervals (:func:`depth_order`).
    """
    claims = [
        ("stacked_1", "Sec. 4.2 / Fig. 5 left, stacked (1): for tasks of low complexity, deep MLPs learn more "
                      "complex transformations than shallow MLPs."),
        ("stacked_2", "Sec. 4.2 / Fig. 5 left, stacked (2): as the task complexity increases, the complexity of "
                      "shallow MLPs is usually higher than that of deep MLPs."),
        ("residual_1", "Sec. 4.2 / Fig. 5 right, residual (1): deep residual MLPs always encode higher complexity "
                       "than shallow residual MLPs."),
        ("residual_2", "Sec. 4.2 / Fig. 5 right, residual (2): the complexity of residual MLPs increases with the "
                       "task complexity in the beginning."),
        ("residual_3", "Sec. 4.2 / Fig. 5 right, residual (3): beyond a certain task complexity, the complexity "
                       "saturates and starts to decrease."),
    ]
    if alpha is None:
        return [Finding(k, CHAPTER, c, "every α of the grid saturates H at log2 n on too many runs: nothing readable.",
                        NOT_MEASURED, setting) for k, c in claims]
    at = table[np.isclose(table.alpha, alpha)]
    low, high = n_groups(at.task_n.unique())
    order = depth_order(at, None if runs is None else runs[np.isclose(runs.alpha, alpha)])
    shapes = curve_shapes(at, tol)
    criteria = {
        "stacked_1": f"criterion: on the low tasks n ∈ {low}, mean ρ(depth, H) > 0 and ρ > 0 on more than half",
        "stacked_2": f"criterion: on the high tasks n ∈ {high}, mean ρ(depth, H) < 0 and ρ < 0 on more than half",
        "residual_1": "criterion: ρ(depth, H) > 0 on every task",
        "residual_2": f"criterion: per depth, max of H over n not at the smallest n and above H there by > {tol:g} bit",
        "residual_3": f"criterion: per depth, max of H over n at an interior n and H at the largest n below it by "
                      f"> {tol:g} bit",
    }
    outcomes = {
        "stacked_1": _ordering(order, "stacked", low, +1, need_all=False),
        "stacked_2": _ordering(order, "stacked", high, -1, need_all=False),
        "residual_1": _ordering(order, "residual", sorted(at.task_n.unique()), +1, need_all=True),
        "residual_2": _shape(shapes, at, "residual", "rises_first"),
        "residual_3": _shape(shapes, at, "residual", "rise_then_fall"),
    }
    common: dict[str, list[Precondition]] = {}
    gated = "r2_read" in at and "seeds_run" in at
    for arch, g in at.groupby("arch"):
        ceiling = float(g.ceiling.iloc[0])
        if gated:  # H is read only from fits with R^2 >= min_r2 (complexity_table)
            runs_total, runs_read = int(g.seeds_run.sum()), int(g.seeds.sum())
            common[str(arch)] = [
                fitted(f"{arch} target MLPs (fits whose H is read)", g.r2_read.tolist()),
                headroom(f"H of the {arch} targets", g.H.dropna().tolist(), ceiling),
                Precondition(f"enough fitted seeds per (depth, task) point",
                             f">= {int(THRESHOLDS['min_seeds_point'])} seeds with R² >= {THRESHOLDS['min_r2']:.2f}",
                             f"min {int(g.seeds.min())} ({runs_read} of {runs_total} fits read)",
                             bool(g.seeds.min() >= THRESHOLDS["min_seeds_point"]), "enough",
                             float(g.seeds.min()), float(THRESHOLDS["min_seeds_point"])),
            ]
        else:
            common[str(arch)] = [
                fitted(f"{arch} target MLPs", g.r2.tolist()),
                headroom(f"H of the {arch} targets", g.H.tolist(), ceiling),
                enough("seeds per (depth, task) point", int(g.seeds.min()), int(THRESHOLDS["min_seeds_point"])),
            ]
    fit = at.groupby("arch").r2.median()
    fits = ", ".join(f"{a} median R² {r:.2f}" for a, r in fit.items())
    out = []
    for k, c in claims:
        o = outcomes[k]
        pre = [*common.get(k.split("_")[0], []), *o.preconditions]
        v, parts = judged(o.holds, pre, o.parts)
        out.append(Finding(k, CHAPTER, c, f"[α = {alpha:g}; {fits}; {criteria[k]}] {o.measured}", v, setting,
                           preconditions=pre, parts=parts))
    return out


def verdicts_by_alpha(table: pd.DataFrame, tol: float, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The verdict of every claim at every alpha of the table (is the reading stable in alpha? Appendix H);
    ``runs`` as in :func:`findings`."""
    out = []
    for a in sorted(table.alpha.unique()):
        at = table[np.isclose(table.alpha, a)]
        sat = float(at[at.H.notna()].saturated.mean()) if at.H.notna().any() else math.nan
        row: dict[str, object] = {"alpha": a, "saturated_fraction": round(sat, 3)}
        for f in findings(table, float(a), tol, "", runs):
            row[f.key] = f.verdict
        out.append(row)
    return pd.DataFrame(out)


def grid_text(values: Sequence[int]) -> str:
    """``"0..31"`` for a run of consecutive integers (more than two), else the sorted list."""
    v = sorted(int(x) for x in values)
    if len(v) > 2 and v == list(range(v[0], v[-1] + 1)):
        return f"{v[0]}..{v[-1]}"
    return str(v)


def ceiling_bits(analysis_size: int) -> float:
    """log2 of the number of analysis images: the largest value H(Sigma) can take."""
    return math.log2(analysis_size)


def plot_vs_n(ax: Any, table: pd.DataFrame, arch: str, value: str = "H", *, ceiling: float | None = None) -> None:
    """Figure 5: ``value`` against task complexity n, one line per target depth.

    When ``value`` is H, points at the ceiling log2 n are marked with a cross;
    a band shows +/- one sd over seeds when there are several.  An H panel spans 0 to just above
    the ceiling; a panel with nothing to draw says why.
    """
    from matplotlib.ticker import MaxNLocator

    sel = table[table.arch == arch]
    for depth, g in sel.groupby("depth"):
        g = g.sort_values("task_n")
        line = ax.plot(g.task_n, g[value], marker="o", ms=3, label=f"{int(depth)} ReLU layers")[0]
        if value == "H" and (g.seeds > 1).any():
            sd = g.H_sd.fillna(0.0)
            ax.fill_between(g.task_n, g.H - sd, g.H + sd, color=line.get_color(), alpha=0.2, lw=0)
        sat = g[g.saturated] if value == "H" else g.iloc[:0]
        if len(sat):
            ax.plot(sat.task_n, sat[value], ls="none", marker="x", ms=8, mew=2, color=line.get_color())
    if ceiling is not None:
        ax.axhline(ceiling, ls="--", lw=1, color="0.4")
        if value == "H":  # the whole range up to the ceiling: a curve sitting at the ceiling shows as one
            ax.set_ylim(0, ceiling * 1.08)
    if sel[value].notna().sum() == 0:
        what = "no target's H is read (no fit reached the R² threshold)" if value == "H" else f"no {value} values"
        ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # n counts ReLU layers
    ax.set_xlabel("task complexity n (ReLU layers of the task MLP)")
    ax.set_ylabel(value)
