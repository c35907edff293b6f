"""Chapter 3: how the complexity changes during training (Section 4.2, Figures 3, 4, 6).

The paper's four findings, each tested on tracked training runs:

1. MLPs and LeNets (Fig. 3a/b): H(Sigma) and I(X;Sigma;Y) of the whole network
   first decrease, then increase (minimum near epoch 55 of 500 for MLP-MNIST);
   Fig. 3c: activation rates are random at epoch 0 and the "noisy activations"
   are removed by the minimum.  Test: :func:`tcomplex.experiments.report.dip_then_rise`
   per run and metric; for Fig. 3c the mean binary entropy of a gate's state
   (C / d, Eq. 6's C divided by the number of gates) at epoch 0 vs the minimum.
2. Other DNNs (VGG-16 on Pascal VOC): the complexity rises monotonically early
   and then saturates.  Test: :func:`~tcomplex.experiments.report.rise_then_saturate`
   with no step down larger than the tolerance, plus "levels off": less than
   :data:`LATE_RISE_SHARE` of the total rise happens in the second half of training.
3. Residual networks (Fig. 4: ResNet-20/32, the residual MLP): H(Sigma) and
   I(X;Sigma;Y) increase monotonically.  Test: the rise part of (2).
4. A VAE with a classifier (Fig. 6): for each gating layer of the classifier
   the gap H(Sigma_l) - I(X;Sigma_l) (Eq. 3: states recorded with the sampling
   switched off) decreases during training.  Test: the gap at the last tracked
   epoch is smaller than at the first by more than the tolerance.

A curve whose smallest value sits at the estimator's ceiling (log2 n for H,
flagged by the ``saturated_H`` rows; log2 #classes for I(X;Sigma;Y)) is flat
within 1% and can show neither a dip nor a rise: it counts as *not reproduced*,
with that reason.

Finally the MNIST MLP is compared with the authors' published curve
(:data:`AUTHORS_MLP_MNIST`), measured under their convention (sigma0^2 = alpha*d,
alpha = 0.01, n = 2000, bits).  A run line may end with the input normalisation
("dataset": MNIST's mean/std; "half": mean 0.5, std 0.5 as in the authors' code); the
comparison uses the MLP-MNIST runs of the setting closest to theirs (:func:`authors_setting_order`):
a run line may add training options (:data:`RUN_OPTIONS`), e.g. the learning-rate decay and the
horizontal flip of the authors' repository (:data:`AUTHORS_LOOP_OPTIONS`).

The dip study (:func:`dip_configs` ... :func:`dip_findings`) tracks the authors' MLP after the
optimiser steps 0, 1, 2, 4, ..., 512 (``TrainConfig.track_steps``) and after every epoch, over a sweep
of learning rates and at two alphas (the paper's and one with headroom below log2 n), and judges
finding 1 per (alpha, learning rate) with the same rule and preconditions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from tcomplex.estimators import HEADROOM_FRACTION_CLASSES
from tcomplex.experiments import data as data_mod
from tcomplex.experiments import models as models_mod
from tcomplex.experiments.report import (
    NOT_MEASURED,
    PARTLY,
    THRESHOLDS,
    Finding,
    Precondition,
    class_headroom,
    dip_then_rise,
    enough,
    fmt_ci,
    fmt_mean_sd,
    headroom,
    judge,
    judged,
    learned,
    mean_ci,
    rise_then_saturate,
)
from tcomplex.experiments.measure import measure_complexity
from tcomplex.experiments.train import TrainConfig, analysis_set_for, read_step_rows, recipe_config

__all__ = [
    "CHAPTER",
    "authors_finding",
    "init_note",
    "GROUPS",
    "AUTHORS_MLP_MNIST",
    "AUTHORS_MLP_MNIST_SOURCE",
    "AUTHORS_SETTING",
    "PAPER_RUNS",
    "RunSpec",
    "parse_runs",
    "configs",
    "with_groups",
    "paper_comparisons",
    "curves",
    "shape_table",
    "rate_table",
    "vae_gaps",
    "cost_table",
    "authors_table",
    "init_normalisation_table",
    "group_preconditions",
    "findings",
    "plot_group",
    "plot_rates",
    "plot_vae",
    "plot_authors",
    "DIP_STEPS",
    "log_steps",
    "dip_configs",
    "dip_curves",
    "dip_table",
    "dip_findings",
    "plot_dip",
    "step_rows",
    "dip_summary",
    "dip_note",
    "dip_setting",
    "authors_setting_diffs",
    "matched_note",
    "RUN_OPTIONS",
    "AUTHORS_LOOP_OPTIONS",
    "authors_setting_order",
    "setting_label",
]

CHAPTER = "03_training_dynamics"
ALL = "__all__"

#: run groups: which finding of Section 4.2 a run tests
GROUPS: dict[str, str] = {
    "plain": "finding 1 (Fig. 3): MLPs and LeNets without skip-connections, dip then rise",
    "vgg": "finding 2: VGG, rise then saturate",
    "residual": "finding 3 (Fig. 4): residual networks, monotone rise",
    "vae": "finding 4 (Fig. 6): VAE classifier, gap H(Σ_l) − I(X;Σ_l) shrinks",
}

#: Reference points of the authors' published curve for MLP-MNIST
#: (784-1024-256-128-64-10, no bias) on MNIST, as (epoch, H(Sigma), I(X;Sigma;Y)) in bits.
AUTHORS_MLP_MNIST: tuple[tuple[int, float, float], ...] = (
    (0, 10.85, 3.28),
    (55, 7.35, 1.5),
    (500, 10.65, 3.25),
)
#: Where :data:`AUTHORS_MLP_MNIST` comes from.
AUTHORS_MLP_MNIST_SOURCE = (
    "the authors' published plot for MLP-MNIST made with their public code "
    "(sjtu-xai-lab/transformation-complexity), values read off and quoted in the project's "
    "issue and design notes (DESIGN.md, 'Known facts about the estimators')"
)
#: The setting behind :data:`AUTHORS_MLP_MNIST` as far as their public code shows it (200 images per
#: class from the training set, sigma0^2 = alpha * d, full MNIST, SGD from lr 0.01).  Their repository
#: holds no script that trains the plotted MLP; its one training loop decays the learning rate
#: log-spaced from 0.01 to 1e-4 over the run (our ``schedule="log"``) and its MNIST loader applies a
#: random horizontal flip by default (our ``flip=True``): both are assumed here.
AUTHORS_SETTING: dict[str, Any] = {
    "model": "mlp_mnist", "dataset": "mnist", "bandwidth": "dims", "alpha": 0.01,
    "analysis_images": 2000, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
    "batch_size": 128, "epochs": 500, "train_subset": None, "schedule": "log", "flip": True,
}
#: The training options of the authors' repository loop and loader (a run line's options dict).
AUTHORS_LOOP_OPTIONS: dict[str, Any] = {"schedule": "log", "flip": True}
#: The authors' input normalisation of MNIST (their ``datasets/mnist.py``:
#: ``transforms.Normalize(mean=[.5], std=[.5])``); ours uses the dataset's own
#: mean and std (0.1307, 0.3081).
AUTHORS_INPUT_MEAN = 0.5
AUTHORS_INPUT_STD = 0.5
#: Agreement with a published point: within this many bits ...
AUTHORS_TOL_BITS = 0.5
#: ... and, for the minimum, an epoch within a factor of 2 of theirs.
AUTHORS_EPOCH_FACTOR = 2.0

#: Finding 2, "saturated later": less than this share of the total rise in the
#: second half of training.
LATE_RISE_SHARE = 0.25
#: Fig. 3c: the mean gate entropy C/d must drop by more than this (bits per gate)
#: from epoch 0 to the minimum of H.
GATE_ENTROPY_TOL = 0.01

#: The paper's runs as [group, model, dataset, epochs, train images (None = all)].
#: Epochs: 500 for MLP-MNIST (Fig. 3c); the paper states no other number.
PAPER_RUNS: list[list[Any]] = [
    ["plain", "mlp_mnist", "mnist", 500, None, "half"],
    ["plain", "lenet5", "mnist", 500, None],
    ["plain", "mlp_cifar10", "cifar10", 500, None],
    ["plain", "lenet5", "cifar10", 500, None],
    ["vgg", "vgg16", "voc2012_crops", 200, None],
    ["residual", "resnet20", "cifar10", 200, None],
    ["residual", "resnet32", "cifar10", 200, None],
    ["residual", "resmlp10", "cifar10", 200, None],
    ["vae", "vae_classifier", "mnist", 200, None],
    ["vae", "vae_classifier", "cifar10", 200, None],
]


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------
#: Training options a run line may set (its optional last element, a dict), on top of the model's recipe:
#: e.g. ``{"schedule": "log", "flip": True}``, the loop and MNIST loader of the authors' repository.
RUN_OPTIONS = ("schedule", "flip", "lr", "optimizer", "momentum", "weight_decay", "batch_size")


@dataclass(frozen=True)
class RunSpec:
    """One line of the notebook's ``runs`` parameter."""

    group: str
    model: str
    dataset: str
    epochs: int
    train_subset: int | None
    normalization: str = "dataset"
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, item: Sequence[Any]) -> RunSpec:
        """From ``[group, model, dataset, epochs, train_subset]``, an optional input normalisation
        (see :data:`tcomplex.experiments.data.NORMALIZATIONS`) and an optional dict of training
        options (:data:`RUN_OPTIONS`, e.g. ``{"schedule": "log", "flip": True}``)."""
        item = list(item)
        opts: dict[str, Any] = {}
        if len(item) in (6, 7) and isinstance(item[-1], dict):
            opts = dict(item.pop())
        if len(item) not in (5, 6):
            raise ValueError(
                f"a run is [group, model, dataset, epochs, train_subset], optionally + normalization and + a dict "
                f"of training options, got {item!r}"
            )
        unknown = sorted(set(opts) - set(RUN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown training options {unknown} in {item!r}; valid: {list(RUN_OPTIONS)}")
        group, model, dataset, epochs, subset = item[:5]
        norm = str(item[5]) if len(item) == 6 else "dataset"
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r} in {item!r}; groups: {sorted(GROUPS)}")
        if dataset not in data_mod.DATASETS:
            raise ValueError(f"unknown dataset {dataset!r} in {item!r}; datasets: {sorted(data_mod.DATASETS)}")
        if norm not in data_mod.NORMALIZATIONS:
            raise ValueError(f"unknown normalization {norm!r} in {item!r}; valid: {list(data_mod.NORMALIZATIONS)}")
        return cls(str(group), str(model), str(dataset), int(epochs), None if subset is None else int(subset), norm,
                   tuple(sorted(opts.items())))

    @property
    def setting(self) -> str:
        """The run line's departures from the recipe, in words ("" for none): input 0.5/0.5, options."""
        return setting_label(self.normalization, dict(self.options))


def setting_label(normalization: str, options: dict[str, Any]) -> str:
    """A curve's setting as text: ``"input 0.5/0.5"`` for the authors' normalisation, then
    the training options (``schedule=log, flip``); "" for the recipe's defaults."""
    bits = ["input 0.5/0.5"] if normalization == "half" else []
    for key, value in sorted(options.items()):
        bits.append(key if value is True else f"{key}={value}")
    return ", ".join(bits)


def parse_runs(runs: Sequence[Sequence[Any]]) -> list[RunSpec]:
    """The notebook's ``runs`` parameter as :class:`RunSpec` s (validated)."""
    return [RunSpec.parse(r) for r in runs]


def _model_kwargs(model: str) -> dict[str, Any]:
    """The residual MLP keeps PyTorch's default init: the authors' ``ResMLP`` never
    applies its kaiming init, and with kaiming init 9 blocks ReLU(x + Wx) blow up
    (the loss is NaN in the first epoch at lr 0.01)."""
    return {"init": "torch_default"} if model == "resmlp10" else {}


def configs(runs: Sequence[Sequence[Any]], seeds: Sequence[int], analysis_images: int, track_every: int,
            eval_images: int | None) -> list[TrainConfig]:
    """Training runs of the chapter, one per run line and seed.

    Epochs are tracked at 0, every ``track_every`` and at the Fibonacci numbers
    (``track_log``), so the early dip is resolved.  The analysis set has
    ``analysis_images // #classes`` images per class (Appendix I: 2000 images).
    Per-layer metrics are computed for the VAE only (Fig. 6 is per layer);
    ``eval_images`` limits the train/test images used for losses and accuracies
    (None: 10000 train images and the full test set).
    """
    out = []
    for spec in parse_runs(runs):
        classes = data_mod.DATASETS[spec.dataset].num_classes
        for seed in seeds:
            out.append(recipe_config(
                spec.model, **dict(spec.options),
                dataset=spec.dataset, task="vae" if spec.group == "vae" else "classify",
                epochs=spec.epochs, seed=int(seed), train_subset=spec.train_subset,
                test_subset=eval_images, eval_train_size=eval_images or 10000,
                model_kwargs=_model_kwargs(spec.model), track_every=track_every, track_log=True,
                normalization=spec.normalization,
                analysis_per_class=analysis_images // classes, per_layer=spec.group == "vae",
                label=spec.group,
            ))
    return out


def with_groups(rows: pd.DataFrame, configs_: Sequence[TrainConfig]) -> pd.DataFrame:
    """``rows`` with a ``group`` column taken from the configs that asked for the runs
    (a run's cached ``label`` may come from another chapter that trained the same config)."""
    groups = {c.run_id: c.label for c in configs_}
    out = rows[rows.run_id.isin(groups)].copy()
    out["group"] = out.run_id.map(groups)
    # rows cached before the field existed lack the column
    out["normalization"] = out.run_id.map({c.run_id: c.normalization for c in configs_})
    out["setting"] = out.run_id.map({c.run_id: _config_setting(c) for c in configs_})
    return out


def _config_setting(cfg: TrainConfig) -> str:
    base = recipe_config(cfg.model)
    opts = {k: getattr(cfg, k) for k in RUN_OPTIONS if getattr(cfg, k) != getattr(base, k)}
    return setting_label(cfg.normalization, opts)


def _describe(specs: Sequence[RunSpec], group: str) -> str:
    items = sorted({f"{s.model}/{s.dataset}" for s in specs if s.group == group})
    return ", ".join(items) if items else "none"


def paper_comparisons(runs: Sequence[Sequence[Any]], analysis_images: int) -> list[tuple[str, Any, Any]]:
    """(what, paper, ours) for :func:`tcomplex.experiments.studies.common.setting_note`."""
    ours, paper = parse_runs(runs), parse_runs(PAPER_RUNS)
    out: list[tuple[str, Any, Any]] = [
        (f"{g} runs (model/dataset)", _describe(paper, g), _describe(ours, g)) for g in GROUPS
    ]

    def epochs_of(specs: Sequence[RunSpec]) -> str:
        return ", ".join(sorted({str(s.epochs) for s in specs if s.model == "mlp_mnist"})) or "none"

    def subsets(specs: Sequence[RunSpec]) -> str:
        sizes = sorted({"all" if s.train_subset is None else str(s.train_subset) for s in specs})
        return ", ".join(sizes)

    def norms_of(specs: Sequence[RunSpec]) -> str:
        names = {"half": "mean 0.5, std 0.5 (authors' code)", "dataset": "MNIST mean/std"}
        return ", ".join(sorted({names[s.normalization] for s in specs if s.model == "mlp_mnist"})) or "none"

    out.append(("MLP-MNIST epochs", epochs_of(paper), epochs_of(ours)))
    out.append(("MLP-MNIST input normalisation", norms_of(paper), norms_of(ours)))
    out.append(("training images per run", subsets(paper), subsets(ours)))
    out.append(("analysis images", AUTHORS_SETTING["analysis_images"], analysis_images))
    return out


# ---------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------
_CURVE_METRICS = ("H", "I_XSY", "saturated_H", "C", "width", "test_acc", "train_acc", "epoch_seconds")
_KEYS = ["run_id", "group", "model", "dataset", "normalization", "setting", "seed", "n"]


def curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Whole-network curves, one row per run and tracked epoch.

    ``rows`` need a ``group`` column (:func:`with_groups`).  Columns: run_id,
    group, model, dataset, seed, n (analysis images), epoch, H, I_XSY,
    saturated_H, C, width, test_acc, train_acc, epoch_seconds,
    gate_entropy = C / width (mean binary entropy of a gate, bits),
    log2_n (ceiling of H) and log2_classes (ceiling of I(X;Sigma;Y)).
    """
    sel = rows[(rows.layer == ALL) & rows.metric.isin(_CURVE_METRICS)].copy()
    if "normalization" not in sel:
        sel["normalization"] = "dataset"
    if "setting" not in sel:  # rows made without :func:`with_groups`: the setting follows the normalisation
        sel["setting"] = sel.normalization.map(lambda n: setting_label(n, {}))
    sel["setting"] = sel.setting.fillna("")
    sel["n"] = sel.apply(lambda r: r.analysis_per_class * data_mod.DATASETS[r.dataset].num_classes, axis=1)
    wide = sel.pivot_table(index=_KEYS + ["epoch"], columns="metric", values="value").reset_index()
    wide.columns.name = None
    for m in _CURVE_METRICS:
        if m not in wide:
            wide[m] = np.nan
    wide["gate_entropy"] = wide.C / wide.width
    wide["log2_n"] = np.log2(wide.n)
    wide["log2_classes"] = wide.dataset.map(lambda d: math.log2(data_mod.DATASETS[d].num_classes))
    return wide.sort_values(_KEYS + ["epoch"]).reset_index(drop=True)


def _late_share(epochs: np.ndarray, values: np.ndarray) -> float:
    """Share of the total rise (last - first) made after half of the last epoch."""
    total = values[-1] - values[0]
    if total <= 0:
        return float("nan")
    mid = values[np.searchsorted(epochs, epochs[-1] / 2)]
    return float((values[-1] - mid) / total)


_SHAPE_COLUMNS = _KEYS + ["metric", "ceiling", "first", "min", "min_epoch", "last", "last_epoch", "drop", "rise",
                          "monotone", "late_share", "levels_off", "stuck", "shape", "holds", "why"]


def shape_table(curves_: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Shape of every H and I(X;Sigma;Y) curve of the plain, vgg and residual runs.

    One row per run and metric: first, min (and its epoch), last, the shape
    statistics of :func:`dip_then_rise` (plain) or :func:`rise_then_saturate`
    (vgg, residual), ``stuck`` (the minimum sits at the ceiling: saturated_H for
    H, within 1% of log2 #classes for I(X;Sigma;Y)), ``holds`` (the group's
    claim holds and the curve is not stuck) and ``why``.
    """
    out = []
    for keys, g in curves_[curves_.group.isin(["plain", "vgg", "residual"])].groupby(_KEYS):
        g = g.sort_values("epoch")
        e = g.epoch.to_numpy(float)
        entry_base = dict(zip(_KEYS, keys))
        for metric in ("H", "I_XSY"):
            v = g[metric].to_numpy(float)
            i_min = int(np.argmin(v))
            if metric == "H":
                stuck = bool(g.saturated_H.iloc[i_min] >= 0.5)
                ceiling = float(g.log2_n.iloc[0])
            else:
                ceiling = float(g.log2_classes.iloc[0])
                stuck = bool(ceiling - v[i_min] < HEADROOM_FRACTION_CLASSES * ceiling)
            entry: dict[str, Any] = {**entry_base, "metric": metric, "ceiling": ceiling,
                                     "first": v[0], "min": v[i_min], "min_epoch": int(e[i_min]),
                                     "last": v[-1], "last_epoch": int(e[-1]), "stuck": stuck}
            if entry_base["group"] == "plain":
                d = dip_then_rise(e, v, tol)
                entry.update(drop=d["drop"], rise=d["rise"])
                shape = bool(d["holds"])
                why = ("dips then rises" if shape else
                       "no dip" if not d["dips"] else "no rise after the dip")
            else:
                r = rise_then_saturate(e, v, tol)
                rises = bool(r["holds"] and r["monotone"] == 1.0)
                late = _late_share(e, v)
                levels = bool(rises and late < LATE_RISE_SHARE)
                entry.update(rise=r["rise"], drop=r["dip"], monotone=r["monotone"], late_share=late,
                             levels_off=levels)
                shape = rises and (levels or entry_base["group"] == "residual")
                if rises:
                    why = "rises monotonically" + ((", then levels off" if levels else ", still rising late")
                                                   if entry_base["group"] == "vgg" else "")
                else:
                    why = "no rise" if r["rise"] <= tol else "rises, but not monotonically"
            if stuck:
                why = f"stuck at the ceiling {ceiling:.2f} bits (cannot show a trend)"
            entry.update(shape=shape, holds=bool(shape and not stuck), why=why)
            out.append(entry)
    return pd.DataFrame(out, columns=_SHAPE_COLUMNS)


def rate_table(rows: pd.DataFrame, curves_: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3c: activation rates of the plain runs at epoch 0, at the minimum of H, at the end.

    Per run and these epochs: the mean gate entropy C/d (1 bit = a fair coin,
    0 = a gate that is always on or always off) and the share of gates active
    on fewer than 5% or more than 95% of the analysis images.  ``removed`` says
    whether C/d dropped by more than :data:`GATE_ENTROPY_TOL` from epoch 0 to a
    minimum of H after epoch 0; a run whose H curve is stuck at log2 n has no
    meaningful minimum (``H_stuck``) and does not count.
    """
    hist = rows[(rows.layer == ALL) & (rows.metric == "rate_hist")]
    out = []
    for keys, g in curves_[curves_.group == "plain"].groupby(_KEYS):
        g = g.sort_values("epoch")
        i_min = int(np.argmin(g.H.to_numpy()))
        e_min, e_last = int(g.epoch.iloc[i_min]), int(g.epoch.iloc[-1])
        stuck = bool(g.saturated_H.iloc[i_min] >= 0.5)
        entry: dict[str, Any] = dict(zip(_KEYS, keys))
        entry.update(min_epoch=e_min, last_epoch=e_last, H_stuck=stuck)
        for tag, ep in (("0", 0), ("min", e_min), ("last", e_last)):
            entry[f"gate_entropy_{tag}"] = float(g.loc[g.epoch == ep, "gate_entropy"].iloc[0])
            h = hist[(hist.run_id == keys[0]) & (hist.epoch == ep)].sort_values("bin").value.to_numpy(float)
            entry[f"decided_{tag}"] = float((h[0] + h[-1]) / h.sum()) if h.sum() > 0 else float("nan")
        entry["removed"] = bool(e_min > 0 and not stuck
                                and entry["gate_entropy_min"] < entry["gate_entropy_0"] - GATE_ENTROPY_TOL)
        out.append(entry)
    return pd.DataFrame(out)


def vae_gaps(rows: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Fig. 6: H(Sigma_l) - I(X;Sigma_l) of each classifier gating layer, first vs last tracked epoch.

    H is measured with the VAE's sampling on, I(X;Sigma_l) with it off (Eq. 3).
    ``decreased``: gap_last < gap_first - tol.  ``holds`` also needs H not
    saturated at the last epoch (a saturated H is a lower bound: the true gap
    could be larger).  ``spearman``: rank correlation of the gap with the epoch.
    """
    sel = rows[(rows.group == "vae") & rows.layer.astype(str).str.startswith("classifier.")
               & rows.metric.isin(["H", "I_XS", "saturated_H"])]
    if sel.empty:
        return pd.DataFrame()
    wide = sel.pivot_table(index=["run_id", "dataset", "seed", "layer", "epoch"], columns="metric",
                           values="value").reset_index()
    out = []
    for (run_id, dataset, seed, layer), g in wide.groupby(["run_id", "dataset", "seed", "layer"]):
        g = g.sort_values("epoch")
        gap = (g.H - g.I_XS).to_numpy(float)
        rho = float(stats.spearmanr(g.epoch, gap)[0]) if len(g) > 2 and np.std(gap) > 0 else float("nan")
        sat_last = bool(g.saturated_H.iloc[-1] >= 0.5)
        decreased = bool(gap[-1] < gap[0] - tol)
        out.append({
            "run_id": run_id, "dataset": dataset, "seed": seed, "layer": layer,
            "first_epoch": int(g.epoch.iloc[0]), "last_epoch": int(g.epoch.iloc[-1]),
            "H_first": float(g.H.iloc[0]), "I_XS_first": float(g.I_XS.iloc[0]), "gap_first": gap[0],
            "H_last": float(g.H.iloc[-1]), "I_XS_last": float(g.I_XS.iloc[-1]), "gap_last": gap[-1],
            "spearman": rho, "H_saturated_first": bool(g.saturated_H.iloc[0] >= 0.5),
            "H_saturated_last": sat_last, "decreased": decreased, "holds": decreased and not sat_last,
        })
    return pd.DataFrame(out)


def cost_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run: training images, epochs and the median seconds of a training epoch
    (``epoch_seconds`` rows; tracking and evaluation not included)."""
    out = []
    for _, g in rows.groupby("run_id", sort=False):
        first = g.iloc[0]
        sec = g[g.metric == "epoch_seconds"].value
        out.append({"group": first.group, "model": first.model, "dataset": first.dataset, "seed": first.seed,
                    "train_images": "all" if pd.isna(first.train_subset) else int(first.train_subset),
                    "epochs": int(first.epochs), "seconds_per_epoch": float(sec.median()) if len(sec) else np.nan})
    return pd.DataFrame(out)


def _mlp_mnist_runs(frame: pd.DataFrame) -> pd.DataFrame:
    sel = frame[(frame.group == "plain") & (frame.model == "mlp_mnist") & (frame.dataset == "mnist")]
    if "setting" not in sel:
        sel = sel.assign(setting=sel.normalization.map(lambda n: setting_label(n, {})))
    return sel.assign(setting=sel.setting.fillna(""))


def authors_setting_order(settings: Sequence[str]) -> list[str]:
    """MLP-MNIST settings, closest to the authors' first: their loop and loader with their input
    normalisation (:data:`AUTHORS_LOOP_OPTIONS`, "half"), their normalisation alone, the recipe, others."""
    prefer = [setting_label("half", AUTHORS_LOOP_OPTIONS), setting_label("half", {}), ""]
    present = sorted(set(settings))
    return [p for p in prefer if p in present] + [p for p in present if p not in prefer]


def _authors_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The MLP-MNIST runs (plain group) compared with the authors' curve: those of the setting
    closest to theirs (:func:`authors_setting_order`)."""
    sel = _mlp_mnist_runs(frame)
    if sel.empty:
        return sel
    return sel[sel.setting == authors_setting_order(sel.setting.tolist())[0]]


def _authors_curve(curves_: pd.DataFrame) -> pd.DataFrame:
    """Our MLP-MNIST curve on MNIST (:func:`_authors_runs`), mean over seeds, per epoch."""
    return _authors_runs(curves_).groupby("epoch")[["H", "I_XSY", "saturated_H"]].mean().reset_index()


def _setting_curve(curves_: pd.DataFrame, setting: str) -> pd.DataFrame:
    sel = _mlp_mnist_runs(curves_)
    return sel[sel.setting == setting].groupby("epoch")[["H", "I_XSY", "saturated_H"]].mean().reset_index()


def authors_table(curves_: pd.DataFrame) -> pd.DataFrame:
    """Our MLP-MNIST numbers beside the authors' published points (:data:`AUTHORS_MLP_MNIST`).

    Points: epoch 0, the minimum (theirs at epoch 55; ours at the epoch of our
    minimum, mean over seeds), epoch 55 and epoch 500 (ours only if tracked), and
    our last epoch (against their epoch 500).  ``agrees``: within
    :data:`AUTHORS_TOL_BITS` and, for the minimum, at an epoch within a factor
    :data:`AUTHORS_EPOCH_FACTOR` of 55.  Empty when no MLP-MNIST run exists.
    One block per MLP-MNIST setting (column ``setting``), closest to the authors' first
    (:func:`authors_setting_order`); ``compared`` marks the block the verdict reads.
    """
    sel = _mlp_mnist_runs(curves_)
    if sel.empty:
        return pd.DataFrame()
    order = authors_setting_order(sel.setting.tolist())
    return pd.concat([_authors_points(_setting_curve(curves_, st)).assign(setting=st, compared=st == order[0])
                      for st in order], ignore_index=True)


def _authors_points(ours: pd.DataFrame) -> pd.DataFrame:
    theirs = {e: {"H": h, "I_XSY": i} for e, h, i in AUTHORS_MLP_MNIST}
    e_min_theirs = min(theirs, key=lambda e: theirs[e]["H"])
    last_theirs = max(theirs)
    out = []
    for metric in ("H", "I_XSY"):
        i_min = int(ours[metric].to_numpy().argmin())
        e_min = int(ours.epoch.iloc[i_min])
        points = [("epoch 0", 0, 0), ("minimum", e_min_theirs, e_min), ("epoch 55", 55, 55),
                  ("epoch 500", 500, 500), ("our last epoch", last_theirs, int(ours.epoch.max()))]
        for point, their_e, our_e in points:
            row = ours[ours.epoch == our_e]
            value = float(row[metric].iloc[0]) if len(row) else float("nan")
            their_v = theirs[their_e][metric]
            diff = value - their_v
            agrees = bool(abs(diff) <= AUTHORS_TOL_BITS) if not math.isnan(value) else False
            if point == "minimum":
                agrees = agrees and e_min_theirs / AUTHORS_EPOCH_FACTOR <= our_e <= e_min_theirs * AUTHORS_EPOCH_FACTOR
            out.append({"metric": metric, "point": point, "their_epoch": their_e, "their_value": their_v,
                        "our_epoch": our_e, "our_value": value, "difference": diff,
                        "our_saturated_H": float(row.saturated_H.iloc[0]) if len(row) else float("nan"),
                        "agrees": agrees})
    return pd.DataFrame(out)


def init_normalisation_table(seeds: Sequence[int], analysis_images: int,
                             data_root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """H(Sigma) and I(X;Sigma;Y) of the *untrained* MLP-MNIST under two input normalisations.

    The same seeded initial weights as epoch 0 of the runs (``torch.manual_seed(seed)``
    before building, as :func:`tcomplex.experiments.train.train` does) are measured on
    ``analysis_images`` class-balanced images of the full training set (a run with a
    training subset draws its analysis set from that subset) normalised with MNIST's
    mean/std (ours) and with mean 0.5, std 0.5
    (:data:`AUTHORS_INPUT_MEAN`, :data:`AUTHORS_INPUT_STD`, the authors' code).  Explains
    a difference at epoch 0 that the other settings cannot (training with the authors'
    normalisation: a run line ending in ``"half"``).
    """
    info = data_mod.DATASETS["mnist"]
    # the analysis images of an MLP-MNIST run on the full training split (the images its epoch 0 measures)
    x, y = analysis_set_for(TrainConfig(model="mlp_mnist", dataset="mnist", analysis_seed=0,
                                        analysis_per_class=analysis_images // info.num_classes), data_root)
    raw = x * info.std[0] + info.mean[0]
    inputs = {f"mean {info.mean[0]}, std {info.std[0]} (ours)": x,
              f"mean {AUTHORS_INPUT_MEAN}, std {AUTHORS_INPUT_STD} (authors')":
                  (raw - AUTHORS_INPUT_MEAN) / AUTHORS_INPUT_STD}
    out = []
    for seed in seeds:
        torch.manual_seed(int(seed))
        model = models_mod.build_model("mlp_mnist", in_channels=1, input_size=28, num_classes=info.num_classes)
        for name, inp in inputs.items():
            got = {r["metric"]: r["value"] for r in measure_complexity(model, inp, y, per_layer=False, rates=False)
                   if r["layer"] == ALL}
            out.append({"seed": int(seed), "input": name, "n": len(y), "H": got["H"], "I_XSY": got["I_XSY"],
                        "saturated_H": bool(got["saturated_H"])})
    return pd.DataFrame(out)


def authors_setting_diffs(curves_: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """How our compared MLP-MNIST runs (:func:`_authors_runs`) differ from :data:`AUTHORS_SETTING`, in words."""
    return _authors_setting_diffs(curves_, rows)


#: (how a difference of :func:`authors_setting_diffs` starts, what of the authors' setting it is about)
_AUTHORS_ITEMS: tuple[tuple[str, str], ...] = (
    ("n = ", "n = 2000 analysis images (200 per class of the training set)"),
    ("training images", "all 60000 training images"),
    ("epochs (theirs", "500 epochs"),
    ("optimizer", "SGD"),
    ("lr 0", "lr 0.01"),
    ("momentum", "momentum 0.9"),
    ("batch_size", "batch 128"),
    ("bandwidth", "σ0² = α·d with α = 0.01, in bits"),
    ("lr schedule", "the repository loop's lr decay (log-spaced 0.01 to 1e-4)"),
    ("no horizontal flip", "the repository loader's random horizontal flip"),
    ("input normalised", "input normalised with mean 0.5, std 0.5"),
)


def matched_note(diffs: Sequence[str]) -> str:
    """Markdown: what of the authors' MLP-MNIST setting our compared runs matched, what they did
    not (``diffs`` from :func:`authors_setting_diffs`), and what cannot be matched at all."""
    if not diffs or diffs == ["no MLP-MNIST run"]:
        return "**Authors' setting:** no MLP-MNIST run to compare."
    def differs(prefix: str) -> bool:
        return any(d.startswith(prefix) or (prefix == "training images" and prefix in d)
                   or (prefix == "epochs (theirs" and prefix in d) for d in diffs)
    matched = [what for prefix, what in _AUTHORS_ITEMS if not differs(prefix)]
    return ("**What of the authors' setting was matched.** The architecture (784-1024-256-128-64-10 without "
            "biases), weight decay 5e-4 and the estimator" + (", " + ", ".join(matched) if matched else "") + ". "
            "**Not matched here:** " + "; ".join(diffs) + ". **Cannot be matched:** the script that trained "
            "their plotted MLP is not public, so its learning-rate schedule, flip, seed and the number of runs "
            "behind the curve are assumptions (the schedule and flip are those of the repository's one loop and "
            "MNIST loader; the lr decay is applied per epoch here); their curve gives three points, read off the "
            "published plot.")


def _authors_setting_diffs(curves_: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """How our MLP-MNIST runs differ from the authors' setting, in words."""
    sel = _authors_runs(rows)
    if sel.empty:
        return ["no MLP-MNIST run"]
    first = sel.iloc[0]
    diffs = []
    n = int(curves_[curves_.run_id == first.run_id].n.iloc[0])
    if n != AUTHORS_SETTING["analysis_images"]:
        diffs.append(f"n = {n} analysis images (theirs {AUTHORS_SETTING['analysis_images']})")
    if not pd.isna(first.train_subset):
        diffs.append(f"{int(first.train_subset)} training images (theirs 60000)")
    if int(first.epochs) < AUTHORS_SETTING["epochs"]:
        diffs.append(f"{int(first.epochs)} epochs (theirs {AUTHORS_SETTING['epochs']})")
    for key in ("optimizer", "lr", "momentum", "batch_size", "bandwidth"):
        if first[key] != AUTHORS_SETTING[key]:
            diffs.append(f"{key} {first[key]} (theirs {AUTHORS_SETTING[key]})")
    if first.get("schedule", "none") != AUTHORS_SETTING["schedule"]:
        diffs.append(f"lr schedule {first.get('schedule', 'none')} (their repository's loop: log-spaced 0.01 to 1e-4)")
    flip = first.get("flip", False)
    if not (isinstance(flip, (bool, np.bool_)) and flip) and str(flip) != "True":
        diffs.append("no horizontal flip (their MNIST loader: random horizontal flip)")
    if first.normalization != "half":
        info = data_mod.DATASETS["mnist"]
        diffs.append(f"input normalised with mean {info.mean[0]}, std {info.std[0]} "
                     f"(theirs {AUTHORS_INPUT_MEAN}, {AUTHORS_INPUT_STD})")
    return diffs


# ---------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------
def _curve_label(model: str, dataset: str, setting: str = "") -> str:
    """``model/dataset``, with the run line's setting in brackets when it has one."""
    return f"{model}/{dataset}" + (f" [{setting}]" if isinstance(setting, str) and setting else "")


def _with_setting(frame: pd.DataFrame) -> pd.DataFrame:
    return frame if "setting" in frame else frame.assign(setting="")


def _per_model(shapes: pd.DataFrame) -> str:
    parts = []
    for (model, dataset, setting), g in _with_setting(shapes).groupby(["model", "dataset", "setting"], sort=False):
        bits = []
        for metric, gm in g.groupby("metric"):
            label = "H" if metric == "H" else "I(X;Σ;Y)"
            stuck = int(gm.stuck.sum())
            bits.append(f"{label} {int(gm.holds.sum())}/{len(gm)}" + (f" ({stuck} stuck at ceiling)" if stuck else ""))
        mins = g[g.metric == "H"]
        detail = ""
        if g.group.iloc[0] == "plain":
            detail = (f"; H min at epoch(s) {sorted(mins.min_epoch.astype(int).tolist())}, drop "
                      f"{fmt_mean_sd(mins['drop'])} bits, rise {fmt_mean_sd(mins['rise'])} bits")
        elif len(mins):
            detail = f"; H rise {fmt_mean_sd(mins['rise'])} bits"
        parts.append(f"{_curve_label(model, dataset, setting)}: " + ", ".join(bits) + detail)
    return "; ".join(parts)


def _final_acc(curves_: pd.DataFrame, model: str, dataset: str) -> list[float]:
    """Final test accuracy of every run of (model, dataset) in the curves (last tracked epoch)."""
    g = curves_[(curves_.model == model) & (curves_.dataset == dataset)]
    if g.empty or "test_acc" not in g:
        return []
    last = g[g.epoch == g.groupby("run_id").epoch.transform("max")]
    return last.test_acc.tolist()


def group_preconditions(curves_: pd.DataFrame, group: str, metrics: Sequence[str] = ("H", "I_XSY")
                        ) -> list[Precondition]:
    """What a verdict on the curves of one run group needs, per (model, dataset) of the group:
    the networks learned (final test accuracy), at least ``THRESHOLDS["min_seeds_curve"]`` seeds
    per curve, and every curve of ``metrics`` with headroom below its ceiling at every epoch
    (H: log2 n minus ``headroom_bits``; I(X;Σ;Y): log2 #classes minus ``headroom_fraction_classes``
    of it): a curve within the margin of its ceiling cannot show a dip or a rise."""
    pre: list[Precondition] = []
    sel = curves_[curves_.group == group] if "group" in curves_ else curves_.iloc[0:0]
    if sel.empty:
        return [learned(f"{group} networks", [], "", "")]
    for (model, dataset, setting), g in _with_setting(sel).groupby(["model", "dataset", "setting"], sort=False):
        label = f"{model} on {dataset}" + (f" [{setting}]" if setting else "")
        pre.append(learned(label, _final_acc(g, str(model), str(dataset)), str(model), str(dataset)))
        pre.append(enough(f"seeds ({label})", int(g.seed.nunique()), int(THRESHOLDS["min_seeds_curve"])))
        for metric in metrics:
            if metric == "H":
                pre.append(headroom(f"H ({label})", g.H.tolist(), float(g.log2_n.max())))
            elif metric == "I_XSY":
                n_classes = int(round(2 ** float(g.log2_classes.iloc[0])))
                pre.append(class_headroom(f"I(X;Σ;Y) ({label})", g.I_XSY.tolist(), n_classes))
    return pre


def _curve_parts(shapes: pd.DataFrame, columns: Sequence[str]) -> tuple[list[tuple[str, bool]], Precondition, str]:
    """Per (model, dataset, metric) curve: held when most seeds' curves hold, and the deciding
    differences (``columns`` of the shape table: drop / rise) with a t interval over seeds.
    Returns (parts, the interval precondition: every deciding difference of a curve that holds has
    an interval above 0 (a curve that does not hold claims no sign), text)."""
    parts, decided, texts = [], [], []
    for (model, dataset, setting, metric), g in _with_setting(shapes).groupby(["model", "dataset", "setting", "metric"],
                                                                                sort=False):
        label = f"{_curve_label(model, dataset, setting)} {'H' if metric == 'H' else 'I(X;Σ;Y)'}"
        held = bool(g.holds.sum() > len(g) / 2)
        parts.append((label, held))
        cis = []
        for col in columns:
            m, lo, hi = mean_ci(g[col].astype(float).tolist())
            if held:  # the claimed sign (a drop, a rise) needs its interval where the curve is read as holding
                decided.append(bool(np.isfinite(lo) and lo > 0))
            cis.append(f"{col} {fmt_ci(m, lo, hi)}")
        texts.append(f"{label}: {', '.join(cis)}")
    pre = Precondition("deciding differences of the curves that hold: intervals above 0",
                       "95% t interval over seeds above 0", f"{sum(decided)}/{len(decided)} intervals",
                       all(decided), "interval")
    return parts, pre, "; ".join(texts)


def findings(shapes: pd.DataFrame, rates: pd.DataFrame, gaps: pd.DataFrame, authors: pd.DataFrame,
             curves_: pd.DataFrame, rows: pd.DataFrame, tol: float, setting: str,
             init_table: pd.DataFrame | None = None) -> list[Finding]:
    """The chapter's findings, verdicts computed from the tables above
    (``init_table``: :func:`init_normalisation_table`, quoted in the authors' finding).

    Each claim's parts are its curves (model, dataset, metric); a curve holds when most of its
    seeds do.  Dip-then-rise and rise-then-saturate hold when every curve does (partly: some);
    the residual claim says "most" networks: more than half of the curves.  Preconditions:
    :func:`group_preconditions` and intervals over seeds for the deciding differences.
    """
    found = []
    shapes = shapes.reindex(columns=_SHAPE_COLUMNS)
    crit = f"tolerance {tol:g} bits; a curve holds when most of its seeds do"

    def curve_claim(key: str, claim: str, group: str, columns: Sequence[str], most: bool, what: str) -> Finding:
        sel = shapes[shapes.group == group]
        if sel.empty:
            return Finding(key, CHAPTER, claim, f"no {group} runs", NOT_MEASURED, setting)
        parts, ci_pre, ci_text = _curve_parts(sel, columns)
        pre = [*group_preconditions(curves_, group), ci_pre]
        k = sum(h for _, h in parts)
        if most:
            v = judge(k > len(parts) / 2, pre, partly=k > 0)
            parts_text = (f"held: {', '.join(lab for lab, h in parts if h)}; not held: "
                          f"{', '.join(lab for lab, h in parts if not h) or 'none'}") if v == PARTLY else ""
        else:
            v, parts_text = judged(True, pre, parts)
        return Finding(key, CHAPTER, claim,
                       f"{k}/{len(parts)} curves {what} ({crit}): {_per_model(sel)}. Over seeds: {ci_text}.",
                       v, setting, preconditions=pre, parts=parts_text)

    found.append(curve_claim(
        "dip_then_rise",
        "Sec. 4.2 (1), Fig. 3a/b: for MLPs and LeNets, H(Σ) and I(X;Σ;Y) decreased first and increased later "
        "(minimum at epoch 55 of 500 for MLP-MNIST).", "plain", ("drop", "rise"), False, "dip then rise"))

    if len(rates):
        removed = int(rates.removed.sum())
        detail = "; ".join(
            f"{r.model}/{r.dataset} s{r.seed}: C/d {r.gate_entropy_0:.3f} (epoch 0) → {r.gate_entropy_min:.3f} "
            f"(epoch {r.min_epoch}) → {r.gate_entropy_last:.3f} (epoch {r.last_epoch})"
            for r in rates.itertuples())
        parts, decided, cis = [], [], []
        for (model, dataset, setting), g in _with_setting(rates).groupby(["model", "dataset", "setting"], sort=False):
            held = bool(g.removed.sum() > len(g) / 2)
            parts.append((_curve_label(model, dataset, setting), held))
            m, lo, hi = mean_ci((g.gate_entropy_0 - g.gate_entropy_min).tolist())
            if held:
                decided.append(bool(np.isfinite(lo) and lo > 0))
            cis.append(f"{_curve_label(model, dataset, setting)} fall of C/d {fmt_ci(m, lo, hi, 3)}")
        pre = [*group_preconditions(curves_, "plain", ("H",)),
               Precondition("fall of C/d where it is read: intervals above 0", "95% t interval over seeds above 0",
                            f"{sum(decided)}/{len(decided)} intervals", all(decided), "interval")]
        v, parts_text = judged(True, pre, parts)
        measured = (f"mean gate entropy C/d (bits per gate) fell by > {GATE_ENTROPY_TOL} from epoch 0 to a minimum "
                    f"of H after epoch 0 in {removed}/{len(rates)} runs: {detail}. Over seeds: {'; '.join(cis)}.")
        found.append(Finding(
            "noisy_activations", CHAPTER,
            "Sec. 4.2 (1), Fig. 3c: gating states are randomly activated at epoch 0; learning removes noisy "
            "activations up to the minimum of H(Σ).", measured, v, setting, preconditions=pre, parts=parts_text))
    else:
        found.append(Finding(
            "noisy_activations", CHAPTER,
            "Sec. 4.2 (1), Fig. 3c: gating states are randomly activated at epoch 0; learning removes noisy "
            "activations up to the minimum of H(Σ).", "no plain runs", NOT_MEASURED, setting))

    found.append(curve_claim(
        "rise_then_saturate",
        "Sec. 4.2 (2): for other DNNs (VGG-16 on Pascal VOC) the complexity increased monotonically early in "
        "training and saturated later.", "vgg", ("rise",), False,
        f"rise monotonically and level off (< {LATE_RISE_SHARE:.0%} of the rise in the second half)"))
    found.append(curve_claim(
        "residual_rise",
        "Sec. 4.2 (3), Fig. 4: in most residual networks H(Σ) and I(X;Σ;Y) increased monotonically during "
        "training.", "residual", ("rise",), True, "rise monotonically"))

    claim_vae = ("Sec. 4.2 (4), Fig. 6: in a VAE with a classifier, the difference between H(Σ_l) and I(X;Σ_l) "
                 "of each classifier gating layer gradually decreased during training.")
    if len(gaps):
        detail = "; ".join(
            f"{g.dataset} s{g.seed} {g.layer}: {g.gap_first:.2f} (epoch {g.first_epoch}) → {g.gap_last:.2f} "
            f"(epoch {g.last_epoch})" + (" [H saturated at the end]" if g.H_saturated_last else "")
            for g in gaps.itertuples())
        parts, decided, cis = [], [], []
        for layer, g in gaps.groupby("layer", sort=True):
            held = bool(g.holds.sum() > len(g) / 2)
            parts.append((str(layer), held))
            m, lo, hi = mean_ci((g.gap_first - g.gap_last).tolist())
            if held:
                decided.append(bool(np.isfinite(lo) and lo > 0))
            cis.append(f"{layer} shrink {fmt_ci(m, lo, hi)}")
        pre = []
        vae = curves_[curves_.group == "vae"] if "group" in curves_ else curves_.iloc[0:0]
        if vae.empty:  # no curves: the classifier's accuracy and the ceiling log2 n are not measured
            pre.append(learned("vae_classifier (classifier)", [], "vae_classifier", "mnist"))
            ceiling = math.nan
        else:
            for (model, dataset), g in vae.groupby(["model", "dataset"], sort=False):
                pre.append(learned(f"{model} on {dataset} (classifier)", _final_acc(vae, str(model), str(dataset)),
                                   str(model), str(dataset)))
            ceiling = float(vae.log2_n.max())
        pre += [enough("seeds", int(gaps.seed.nunique()), int(THRESHOLDS["min_seeds_curve"])),
                headroom("H(Σ_l) of the classifier layers", [*gaps.H_first, *gaps.H_last], ceiling),
                Precondition("shrink of the gap where it is read: intervals above 0",
                             "95% t interval over seeds above 0", f"{sum(decided)}/{len(decided)} layers",
                             all(decided), "interval")]
        v, parts_text = judged(True, pre, parts)
        measured = (f"gap H(Σ_l) − I(X;Σ_l) in bits shrank by > {tol:g} in {int(gaps.holds.sum())}/{len(gaps)} "
                    f"(run, layer) pairs: {detail}. Over seeds: {'; '.join(cis)}.")
        found.append(Finding("vae_gap", CHAPTER, claim_vae, measured, v, setting, preconditions=pre,
                             parts=parts_text))
    else:
        found.append(Finding("vae_gap", CHAPTER, claim_vae, "no VAE runs", NOT_MEASURED, setting))

    found.append(authors_finding(authors, curves_, rows, init_table))
    return found


def init_note(init_table: pd.DataFrame | None) -> str:
    """One sentence on H and I(X;Sigma;Y) at initialisation under both input normalisations."""
    if init_table is None or init_table.empty:
        return ""
    parts = [f"{name}: H {fmt_mean_sd(g.H)}, I(X;Σ;Y) {fmt_mean_sd(g.I_XSY)}"
             for name, g in init_table.groupby("input", sort=False)]
    n = int(init_table.n.iloc[0])
    return f" The untrained network (n = {n}) with input normalised by " + "; by ".join(parts) + "."


def authors_finding(authors: pd.DataFrame, curves_: pd.DataFrame, rows: pd.DataFrame,
                     init_table: pd.DataFrame | None = None) -> Finding:
    claim = ("Authors' published MLP-MNIST curve (σ0² = α·d, α = 0.01, n = 2000, bits): H(Σ) 10.85 → 7.35 "
             "(epoch 55) → 10.65 (epoch 500); I(X;Σ;Y) 3.28 → 1.5 → 3.25.")
    if authors.empty:
        return Finding("authors_curve", CHAPTER, claim, "no MLP-MNIST run", NOT_MEASURED)
    others = ""
    if "compared" in authors:
        rest = authors[~authors.compared.astype(bool)]
        others = "; ".join(
            f"[{st or 'recipe'}] H min {r.our_value:.2f} @ {int(r.our_epoch)}"
            for st, r in rest[(rest.metric == "H") & (rest.point == "minimum")].set_index("setting").iterrows())
        authors = authors[authors.compared.astype(bool)]
    diffs = _authors_setting_diffs(curves_, rows)
    get = authors.set_index(["metric", "point"])

    def show(metric: str, point: str) -> str:
        r = get.loc[(metric, point)]
        return "n/a" if math.isnan(r.our_value) else f"{r.our_value:.2f} @ {int(r.our_epoch)}"

    measured = (f"ours: H {show('H', 'epoch 0')} (theirs 10.85 @ 0), min {show('H', 'minimum')} (theirs 7.35 @ 55), "
                f"last {show('H', 'our last epoch')} (theirs 10.65 @ 500); I(X;Σ;Y) {show('I_XSY', 'epoch 0')}, min "
                f"{show('I_XSY', 'minimum')}, last {show('I_XSY', 'our last epoch')} (theirs 3.28, 1.5, 3.25)."
                + init_note(init_table) + (f" Other MLP-MNIST settings (not compared): {others}." if others else ""))
    n_diff = [d for d in diffs if d.startswith("n =")]
    if n_diff:
        return Finding("authors_curve", CHAPTER, claim,
                       measured + f" Not comparable: {n_diff[0]}, so the ceiling log2 n differs.", NOT_MEASURED,
                       "; ".join(diffs))
    # compare the points both curves have: epoch 0, the minimum (value and epoch), and epoch 500 if we reached it
    compared = authors[authors.point.isin(["epoch 0", "minimum"])
                       | ((authors.point == "epoch 500") & authors.our_value.notna())]
    n_ok = int(compared.agrees.sum())
    dip_ok = bool(get.loc[("H", "minimum"), "agrees"])
    stuck = bool(get.loc[("H", "minimum"), "our_saturated_H"] >= 0.5)
    measured += (f" {n_ok}/{len(compared)} compared points agree (within {AUTHORS_TOL_BITS} bits; the minimum also "
                 f"at an epoch within ×{AUTHORS_EPOCH_FACTOR:g} of 55); the dip of H "
                 + ("matches." if dip_ok else "does not match" + (" (our H stays at the log2 n ceiling)." if stuck else ".")))
    # the claim's parts are the compared points; the learned precondition is on our MLP-MNIST runs
    runs = _authors_runs(curves_)
    pre = [learned("mlp_mnist on mnist (authors' curve)", _final_acc(runs, "mlp_mnist", "mnist"), "mlp_mnist",
                   "mnist")]
    parts = [(f"{r.metric} {r.point}", bool(r.agrees)) for r in compared.itertuples()]
    # the dip is the curve's defining feature: without it the comparison fails whatever else agrees
    v, parts_text = judged(True, pre, parts) if dip_ok else (judge(False, pre), "")
    return Finding("authors_curve", CHAPTER, claim, measured, v, "; ".join(diffs), preconditions=pre,
                   parts=parts_text)


# ---------------------------------------------------------------------------
# the dip at sub-epoch resolution: learning rates x alphas
# ---------------------------------------------------------------------------
def log_steps(last: int) -> list[int]:
    """Optimiser steps 0, 1, 2, 4, ..., up to ``last`` (powers of 2): log-spaced sub-epoch tracking."""
    if last < 0:
        raise ValueError(f"last step must be >= 0, got {last}")
    out, k = [0], 1
    while k <= last:
        out.append(k)
        k *= 2
    return out


#: Optimiser steps tracked by the dip study (issue 13): 0, 1, 2, 4, ..., 512.
DIP_STEPS: list[int] = log_steps(512)


def dip_configs(model: str, dataset: str, normalization: str, epochs: int, train_subset: int | None,
                lrs: Sequence[float], alphas: Sequence[float], seeds: Sequence[int], steps: Sequence[int],
                analysis_images: int, eval_images: int | None) -> list[TrainConfig]:
    """Runs of the dip study: one per learning rate x alpha x seed, on ``model``'s recipe.

    Every epoch is tracked (``track_every=1``) and, with ``track_steps``, the listed optimiser
    steps (Section 4.2's dip looked for within the first epoch as well as per epoch).  The alpha
    (Eq. 2, sigma0^2 = alpha * d) only changes the measurement, not the training: runs that
    differ only in alpha train identically (their measurement uses a forked RNG).
    """
    if not lrs or not alphas or not seeds:
        raise ValueError(f"the dip study needs learning rates, alphas and seeds; got lrs={list(lrs)}, "
                         f"alphas={list(alphas)}, seeds={list(seeds)}")
    classes = data_mod.DATASETS[dataset].num_classes if dataset in data_mod.DATASETS else 0
    if not classes:
        raise ValueError(f"unknown dataset {dataset!r}; datasets: {sorted(data_mod.DATASETS)}")
    out = []
    for alpha in alphas:
        for lr in lrs:
            for seed in seeds:
                out.append(recipe_config(
                    model, lr=float(lr), dataset=dataset, epochs=int(epochs),
                    seed=int(seed), train_subset=train_subset, test_subset=eval_images,
                    eval_train_size=eval_images or 10000, normalization=normalization, alpha=float(alpha),
                    track_every=1, track_log=False, track_steps=[int(s) for s in steps], per_layer=False,
                    rates=False, analysis_per_class=analysis_images // classes, label="dip"))
    return out


_DIP_METRICS = ("H", "I_XSY", "saturated_H", "test_acc", "train_loss")


def _wide(frame: pd.DataFrame, index: str) -> pd.DataFrame:
    sel = frame[(frame.layer == ALL) & frame.metric.isin(_DIP_METRICS)]
    out = sel.pivot_table(index=["run_id", index], columns="metric", values="value").reset_index()
    out.columns.name = None
    return out


def dip_curves(epoch_rows: pd.DataFrame, step_rows: pd.DataFrame, configs_: Sequence[TrainConfig]) -> pd.DataFrame:
    """One curve per dip run on an optimiser-step axis: the ``track_steps`` rows and the epoch
    rows (epoch e at step e x steps per epoch; epoch 0 is step 0, measured once).

    Columns: run_id, lr, alpha, seed, step, epoch (step / steps per epoch), source ("step" or
    "epoch"), H, I_XSY, saturated_H, test_acc, train_loss, log2_n, log2_classes.
    """
    if step_rows.empty:
        raise ValueError("the dip runs have no step rows: they must be trained with track_steps")
    info = {c.run_id: c for c in configs_}
    steps = _wide(step_rows[step_rows.run_id.isin(info)], "step")
    frac = step_rows[step_rows.step > 0].groupby("run_id").apply(
        lambda g: int(round(float(g.step.iloc[0]) / float(g.epoch_fraction.iloc[0]))), include_groups=False)
    epochs = _wide(epoch_rows[epoch_rows.run_id.isin(info) & (epoch_rows.epoch > 0)], "epoch")
    epochs["step"] = epochs.epoch * epochs.run_id.map(frac)
    steps["source"], epochs["source"] = "step", "epoch"
    out = pd.concat([steps, epochs.drop(columns="epoch")], ignore_index=True)
    out = out.sort_values(["run_id", "step", "source"], ascending=[True, True, False])
    out = out.drop_duplicates(["run_id", "step"]).reset_index(drop=True)  # a step on an epoch's end: once
    out["step"] = out.step.astype(int)
    out["epoch"] = out.step / out.run_id.map(frac)
    for key in ("lr", "alpha", "seed"):
        out[key] = out.run_id.map({r: getattr(c, key) for r, c in info.items()})
    out["log2_n"] = out.run_id.map(
        {r: math.log2(c.analysis_per_class * data_mod.DATASETS[c.dataset].num_classes) for r, c in info.items()})
    out["log2_classes"] = out.run_id.map({r: math.log2(data_mod.DATASETS[c.dataset].num_classes)
                                          for r, c in info.items()})
    cols = ["run_id", "lr", "alpha", "seed", "step", "epoch", "source", *_DIP_METRICS, "log2_n", "log2_classes"]
    return out.reindex(columns=cols).sort_values(["alpha", "lr", "seed", "step"]).reset_index(drop=True)


def dip_table(curves_: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Per dip run and metric (H, I(X;Σ;Y)): :func:`~tcomplex.experiments.report.dip_then_rise` on
    the step axis, where the minimum lies (step and epoch), the headroom of the curve's top below
    its ceiling and the final test accuracy.  ``dips``: the drop from step 0 exceeds ``tol``;
    ``holds``: it dips, then rises by more than ``tol``."""
    out = []
    for (run_id, alpha, lr, seed), g in curves_.groupby(["run_id", "alpha", "lr", "seed"], sort=False):
        g = g.sort_values("step")
        for metric in ("H", "I_XSY"):
            d = dip_then_rise(g.step.to_numpy(float), g[metric].to_numpy(float), tol)
            ceiling = float(g.log2_n.iloc[0] if metric == "H" else g.log2_classes.iloc[0])
            i_min = int(np.argmin(g[metric].to_numpy(float)))
            out.append({"run_id": run_id, "alpha": alpha, "lr": lr, "seed": seed, "metric": metric,
                        "first": d["first"], "min": d["min"], "min_step": int(d["min_epoch"]),
                        "min_epoch": float(g.epoch.iloc[i_min]), "last": d["last"], "drop": d["drop"],
                        "rise": d["rise"], "dips": d["dips"], "holds": d["holds"], "ceiling": ceiling,
                        "headroom": ceiling - float(g[metric].max()),
                        "final_test_acc": float(g.test_acc.iloc[-1]), "last_step": int(g.step.iloc[-1])})
    return pd.DataFrame(out)


def dip_findings(table: pd.DataFrame, curves_: pd.DataFrame, model: str, dataset: str, setting: str
                 ) -> list[Finding]:
    """One finding per (alpha, learning rate) of the dip study: Section 4.2 (1) at sub-epoch resolution.

    Parts: H and I(X;Σ;Y), each held when most seeds dip then rise.  Preconditions (as for the
    epoch curves, :func:`group_preconditions`): the networks learned (final test accuracy), at least
    ``THRESHOLDS["min_seeds_curve"]`` seeds, headroom of H below log2 n and of I(X;Σ;Y) below
    log2 #classes at every tracked step, and 95% t intervals over seeds of the drop and the rise of
    the curves that hold, above 0.  A learning rate at which the network does not learn in the run
    is inconclusive (whatever its curve does), with its accuracy.
    """
    found = []
    for (alpha, lr), g in table.groupby(["alpha", "lr"], sort=True):
        cur = curves_[(curves_.alpha == alpha) & (curves_.lr == lr)]
        label = f"{model} on {dataset}, α = {alpha:g}, lr = {lr:g}"
        pre = [learned(label, g[g.metric == "H"].final_test_acc.tolist(), model, dataset),
               enough(f"seeds ({label})", int(g.seed.nunique()), int(THRESHOLDS["min_seeds_curve"])),
               headroom(f"H ({label})", cur.H.tolist(), float(cur.log2_n.max())),
               class_headroom(f"I(X;Σ;Y) ({label})", cur.I_XSY.tolist(),
                              int(round(2 ** float(cur.log2_classes.iloc[0]))))]
        parts, decided, texts = [], [], []
        for metric, gm in g.groupby("metric", sort=True):
            name = "H" if metric == "H" else "I(X;Σ;Y)"
            held = bool(gm.holds.sum() > len(gm) / 2)
            parts.append((name, held))
            cis = []
            for col in ("drop", "rise"):
                m, lo, hi = mean_ci(gm[col].tolist())
                if held:
                    decided.append(bool(np.isfinite(lo) and lo > 0))
                cis.append(f"{col} {fmt_ci(m, lo, hi)}")
            texts.append(f"{name}: {int(gm.holds.sum())}/{len(gm)} seeds dip then rise, {int(gm.dips.sum())} dip; "
                         f"minimum at step(s) {sorted(gm.min_step.astype(int).tolist())} (epoch "
                         f"{', '.join(f'{e:.2f}' for e in sorted(gm.min_epoch))}); {', '.join(cis)}")
        pre.append(Precondition("deciding differences of the curves that hold: intervals above 0",
                                "95% t interval over seeds above 0", f"{sum(decided)}/{len(decided)} intervals",
                                all(decided), "interval"))
        v, parts_text = judged(True, pre, parts)
        steps = sorted(cur[cur.source == "step"].step.unique().astype(int).tolist())
        measured = (f"tracked at optimiser steps {steps} and every epoch to step {int(cur.step.max())} "
                    f"(tolerance as the chapter's): " + "; ".join(texts) + ".")
        found.append(Finding(
            f"dip_steps_alpha{alpha:g}_lr{lr:g}", CHAPTER,
            f"Sec. 4.2 (1), Fig. 3a at sub-epoch resolution ({model}, α = {alpha:g}, lr = {lr:g}): H(Σ) and "
            "I(X;Σ;Y) decreased first and increased later.", measured, v, setting, preconditions=pre,
            parts=parts_text))
    return found


def step_rows(configs_: Sequence[TrainConfig], root: str | os.PathLike[str]) -> pd.DataFrame:
    """The ``track_steps`` rows of the (trained) runs of ``configs_`` under ``root``, in one frame."""
    frames = [read_step_rows(root, c) for c in configs_]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def dip_summary(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`dip_table` per (alpha, lr, metric): seeds, how many dip / dip then rise, the median
    step and epoch of the minimum, the mean drop and rise, the least headroom and the mean final accuracy."""
    rows = []
    for (alpha, lr, metric), g in table.groupby(["alpha", "lr", "metric"], sort=True):
        rows.append({"alpha": alpha, "lr": lr, "metric": metric, "seeds": len(g), "dip": int(g.dips.sum()),
                     "dip_then_rise": int(g.holds.sum()), "min_step": float(g.min_step.median()),
                     "min_epoch": float(g.min_epoch.median()), "drop": float(g["drop"].mean()),
                     "rise": float(g.rise.mean()), "headroom": float(g.headroom.min()),
                     "final_test_acc": float(g.final_test_acc.mean())})
    return pd.DataFrame(rows)


def dip_note(table: pd.DataFrame, tol: float) -> str:
    """Markdown: per alpha, whether and when H dipped at each learning rate (medians over seeds)."""
    if table.empty:
        return "No dip runs."
    out = []
    summary = dip_summary(table)
    for alpha, g in summary[summary.metric == "H"].groupby("alpha", sort=True):
        bits = []
        for r in g.itertuples():
            when = (f"minimum at step {r.min_step:.0f} (epoch {r.min_epoch:.2f}), drop {r.drop:.2f}, rise "
                    f"{r.rise:.2f} bits" if r.dip else "no drop larger than tol")
            bits.append(f"lr {r.lr:g}: H dipped by more than {tol:g} bits in {r.dip}/{r.seeds} seeds and rose "
                        f"again in {r.dip_then_rise}; {when}; final test accuracy {r.final_test_acc:.3f}; "
                        f"least headroom {r.headroom:.2f} bits")
        out.append(f"* **α = {alpha:g}:** " + "; ".join(bits) + ".")
    return "**Whether and when H dips** (medians over seeds):\n\n" + "\n".join(out)


def dip_setting(configs_: Sequence[TrainConfig]) -> str:
    """The dip study's setting beside the paper's (500 epochs of all images, lr 0.01), in words."""
    if not configs_:
        return ""
    c = configs_[0]
    n = c.analysis_per_class * data_mod.DATASETS[c.dataset].num_classes
    images = "all" if c.train_subset is None else str(c.train_subset)
    return (f"{c.epochs} epochs of {images} training images (paper 500 of all), tracked at optimiser steps "
            f"{c.track_steps} and every epoch; n = {n} analysis images (paper 2000); "
            f"{'input 0.5/0.5' if c.normalization == 'half' else 'input MNIST mean/std'}")


def plot_dip(axes: Any, curves_: pd.DataFrame) -> None:
    """H(Σ) (top row, one panel per alpha) and test accuracy (bottom row) against the optimiser
    step (symlog), one line per learning rate (mean ± sd over seeds); dashed: log2 n; dotted: the
    end of epoch 1."""
    alphas = sorted(curves_.alpha.unique())
    for j, alpha in enumerate(alphas):
        sel = curves_[curves_.alpha == alpha]
        for row, metric in enumerate(("H", "test_acc")):
            ax = axes[row][j]
            for lr, g in sel.groupby("lr", sort=True):
                st = g.groupby("step")[metric].agg(["mean", "std"]).reset_index()
                line = ax.plot(st.step, st["mean"], marker="o", ms=3, label=f"lr {lr:g}")[0]
                if g.seed.nunique() > 1:
                    ax.fill_between(st.step, st["mean"] - st["std"], st["mean"] + st["std"],
                                    color=line.get_color(), alpha=0.2, lw=0)
            if metric == "H":
                ax.axhline(float(sel.log2_n.iloc[0]), ls="--", lw=1, color="0.4")
                ax.set_title(f"H(Σ) [bits], α = {alpha:g}")
            else:
                ax.set_title(f"test accuracy, α = {alpha:g}")
            one = sel[sel.source == "epoch"]
            if len(one):
                first_epoch = one[np.isclose(one.epoch, 1.0)].step
                if len(first_epoch):
                    ax.axvline(float(first_epoch.iloc[0]), ls=":", lw=1, color="0.4")
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=-0.3)
            ax.set_xlabel("optimiser step")
        axes[0][j].legend(fontsize=8)


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------
def _symlog(ax: Any) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=-0.3)  # keep the epoch-0 markers whole


def plot_group(axes: Sequence[Any], curves_: pd.DataFrame, group: str) -> None:
    """H(Sigma), I(X;Sigma;Y) and test accuracy against epochs (symlog), one line per
    model/dataset (mean ± sd over seeds), with the ceilings dashed."""
    sel = curves_[curves_.group == group].copy()
    sel["name"] = [_curve_label(m, d, st) for m, d, st in zip(sel.model, sel.dataset, sel.setting)]
    for ax, metric, title, ceiling in zip(
            axes, ["H", "I_XSY", "test_acc"], ["H(Σ) [bits]", "I(X;Σ;Y) [bits]", "test accuracy"],
            ["log2_n", "log2_classes", None]):
        for name, g in sel.groupby("name", sort=False):
            s = g.groupby("epoch")[metric].agg(["mean", "std"]).reset_index()
            line = ax.plot(s.epoch, s["mean"], marker="o", ms=3, label=name)[0]
            if g.seed.nunique() > 1:
                ax.fill_between(s.epoch, s["mean"] - s["std"], s["mean"] + s["std"], color=line.get_color(),
                                alpha=0.2, lw=0)
            if ceiling is not None:
                ax.axhline(float(g[ceiling].iloc[0]), ls="--", lw=1, color=line.get_color(), alpha=0.6)
        _symlog(ax)
        ax.set_xlabel("epoch")
        ax.set_title(title)
    axes[0].legend(fontsize=8)


def plot_rates(ax: Any, rows: pd.DataFrame, run_id: str, epochs: Sequence[int]) -> None:
    """Fig. 3c: share of gates per activation-rate bin of one run at the given epochs."""
    from tcomplex import plots

    plots.rate_histograms(ax, rows[rows.run_id == run_id], list(epochs))


def plot_vae(axes: Sequence[Any], rows: pd.DataFrame) -> None:
    """Fig. 6: H(Sigma_l) (sampling on) and I(X;Sigma_l) (sampling off) of the
    classifier's gating layers against epochs (symlog), one panel per dataset."""
    sel = rows[(rows.group == "vae") & rows.layer.astype(str).str.startswith("classifier.")
               & rows.metric.isin(["H", "I_XS"])]
    for ax, (dataset, g) in zip(axes, sel.groupby("dataset")):
        for (layer, metric), gm in g.groupby(["layer", "metric"]):
            s = gm.groupby("epoch").value.mean()
            ax.plot(s.index, s.values, marker="o", ms=3, ls="-" if metric == "H" else "--",
                    label=f"{'H(Σ_l)' if metric == 'H' else 'I(X;Σ_l)'} {layer}")
        n = int(g.analysis_per_class.iloc[0] * data_mod.DATASETS[dataset].num_classes)
        ax.axhline(math.log2(n), ls=":", lw=1, color="0.4")
        _symlog(ax)
        ax.set_title(f"VAE classifier on {dataset}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("bits")
        ax.legend(fontsize=8)


def plot_authors(axes: Sequence[Any], curves_: pd.DataFrame) -> None:
    """Our MLP-MNIST curves (one line per setting: mean ± sd over seeds) with the authors'
    published points as markers."""
    sel = _mlp_mnist_runs(curves_)
    for ax, (idx, metric, title) in zip(axes, [(1, "H", "H(Σ) [bits]"), (2, "I_XSY", "I(X;Σ;Y) [bits]")]):
        for setting in authors_setting_order(sel.setting.tolist()):
            g = sel[sel.setting == setting]
            st = g.groupby("epoch")[metric].agg(["mean", "std"]).reset_index()
            line = ax.plot(st.epoch, st["mean"], marker="o", ms=3,
                           label=f"ours [{setting or 'recipe'}], {g.seed.nunique()} seeds (n = {int(g.n.iloc[0])})")[0]
            if g.seed.nunique() > 1:
                ax.fill_between(st.epoch, st["mean"] - st["std"], st["mean"] + st["std"], color=line.get_color(),
                                alpha=0.2, lw=0)
        ax.plot([p[0] for p in AUTHORS_MLP_MNIST], [p[idx] for p in AUTHORS_MLP_MNIST], ls="none", marker="X",
                ms=11, color="crimson", label="authors (published, n = 2000)")
        _symlog(ax)
        ax.set_xlabel("epoch")
        ax.set_title(f"MLP-MNIST: {title}")
    axes[0].legend(fontsize=8)
