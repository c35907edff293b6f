"""Chapter 5: learning a minimum-complexity DNN (Section 4.3, Figures 7 and 8, Appendices C and J).

The paper adds ``lambda * L_complexity`` (Eq. 8, 9), the summed entropy of the
gating states of the last four gating layers approximated by an energy-based
model (Eq. 10-12, Appendix J; :mod:`tcomplex.ebm`), to the task loss, trains the
residual MLP and ResNet-20/32 on CIFAR-10 and ResNet-18/34 on the first ten
Tiny ImageNet classes for several lambda, and reports that with growing lambda

* H(Sigma_l) of the penalised layers decreases (Figure 7);
* I(X;Sigma;Y) decreases (Figure 7);
* the gap test loss - training loss decreases (Figure 7);
* "in some cases" the test loss decreases too (Figure 8, Appendix C).

This module builds the lambda grid of runs (lambda = 0 is the baseline trained
with the task loss only), reduces the tracked rows of the last epoch to one row
per run, aggregates over seeds and computes the verdicts.  The criterion for a
decrease with lambda (stated in :func:`trend`): Spearman's rho(lambda, metric)
< 0 with p < 0.05 over all runs of the grid, and the mean at the largest lambda
below the mean at lambda = 0 by more than the seed spread.  Estimates stuck at their
ceiling (log2 n for H, log2 #classes for I(X;Sigma;Y)) are counted.

Ablation (issue 17): the penalty is trained in one of the :data:`VARIANTS`,
``learned`` (the energy model fitted so that it learns p(sigma_l), the default
of :mod:`tcomplex.ebm`), ``authors`` (the authors' optimiser settings, under
which the energy nets barely move) and ``prior`` (no energy net: the penalty is
sum_l sum_i -log q(sigma_l^i), about C_l of Eq. 6), on the same lambda grid and
seeds, with one shared lambda = 0 baseline.  :func:`ebm_table` records per run
the variant, how far the energy nets moved and the per-gate pseudo-likelihood of
held-out gating states under the penalty's energy and under the prior alone;
:func:`ablation_table` and :func:`ablation_findings` compare the variants.
Lambda scaling (:data:`LAMBDA_SCALINGS`): ``plain`` (the default; the penalty
at every batch, the energy summed over all gates) or ``authors`` (their code:
the penalty added at every 10th iteration, a conv layer's energy divided by its
H x W positions); a model may have its own scaling and λ grid (:func:`resolve_setups`).

Matched comparison (issue 13): a network that stops learning also has a small loss
gap, so with several tracked epochs per run (``track_points``, :func:`match_epochs`)
the gap is also read at the epoch whose training accuracy (or loss) is closest to a
target every λ reached (:func:`matched_table`), with intervals over seeds
(:func:`matched_summary`) and a verdict of its own (:func:`matched_findings`).
"""

from __future__ import annotations

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
    PARTLY,
    THRESHOLDS,
    Finding,
    Precondition,
    class_headroom,
    diff_ci,
    enough,
    excludes_zero,
    fmt_ci,
    headroom,
    judge,
    learned,
    mean_ci,
    verdict,
)
from tcomplex.experiments.studies.common import Context, load_trained_model
from tcomplex.experiments.train import SCHEDULES, TrainConfig, analysis_set_for, build_model_for, recipe_config
from tcomplex.gating import record_gates, resolve_layers

__all__ = [
    "CHAPTER",
    "AUTHORS_RESMLP_CIFAR10",
    "PENALISED_LAYERS",
    "METRICS",
    "PAPER_MODEL_DATASETS",
    "PAPER_LAMBDAS",
    "SETUP_KEYS",
    "describe_models",
    "describe_grid",
    "resolve_setups",
    "configs",
    "penalised_layers",
    "VARIANTS",
    "LAMBDA_SCALINGS",
    "variant_of",
    "lambda_scaling_of",
    "variant_runs",
    "ablation_table",
    "ablation_comparison",
    "ablation_findings",
    "ebm_diagnostics",
    "ebm_table",
    "run_table",
    "layer_table",
    "match_epochs",
    "MATCH_TOLERANCE",
    "epoch_table",
    "matched_table",
    "matched_summary",
    "matched_findings",
    "aggregate",
    "Trend",
    "trend",
    "test_loss_improvement",
    "effective_range",
    "authors_comparison",
    "findings",
    "plot_vs_lambda",
]

CHAPTER = "05_minimum_complexity"
ALL = "__all__"
#: "We added the complexity loss to the last four gating layers in each DNN" (Section 4.3).
PENALISED_LAYERS: tuple[int, ...] = (-4, -3, -2, -1)

#: Section 4.3: the residual MLP and ResNet-20/32 on CIFAR-10, ResNet-18/34 on the first ten Tiny ImageNet classes.
PAPER_MODEL_DATASETS: tuple[tuple[str, str], ...] = (
    ("resmlp10", "cifar10"), ("resnet20", "cifar10"), ("resnet32", "cifar10"),
    ("resnet18", "tiny_imagenet10"), ("resnet34", "tiny_imagenet10"),
)
#: lambda = 0 and the authors' grid log10 lambda = -5, -4.5, ..., -2 (their notebook)
PAPER_LAMBDAS: tuple[float, ...] = (0.0,) + tuple(10.0 ** (-5 + 0.5 * k) for k in range(7))

#: The residual MLP on CIFAR-10 in the authors' public notebook
#: (notebooks/penalize_transformation_complexity.ipynb of
#: github.com/sjtu-xai-lab/transformation-complexity; 201 epochs, lr 0.01, batch
#: 128, 5 Langevin steps of size 0.001): the values at the two ends of their
#: grid log10 lambda = -5 ... -2 (read from the notebook, so "about").
AUTHORS_RESMLP_CIFAR10: dict[str, tuple[float, float]] = {
    "log10_lambda": (-5.0, -2.0),
    "H": (10.9, 0.0),  # H(Sigma) [bits]
    "I_XSY": (3.3, 0.0),  # I(X;Sigma;Y) [bits]
    "loss_gap": (1.73, 0.78),  # test loss - training loss
}

#: the ablation's penalty variants: a name of tcomplex.ebm.FITS each
VARIANTS: tuple[str, ...] = ("learned", "authors", "prior")
#: lambda scalings: extra ComplexityPenalty options
LAMBDA_SCALINGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "authors": {"every": 10, "per_position": True},  # the authors' code
}
#: the variant name of lambda = 0 runs (shared by every variant)
BASELINE = "baseline"
#: held-out states and gates for the pseudo-likelihood of :func:`ebm_diagnostics`
PL_STATES = 500
PL_GATES = 64

#: per-run metrics of :func:`run_table`: column -> axis label
METRICS: dict[str, str] = {
    "H_pen": "H(Σ_l), mean of the penalised layers [bits]",
    "I_XSY": "I(X;Σ;Y), whole network [bits]",
    "loss_gap": "test loss − training loss",
    "test_loss": "test loss",
    "H_all": "H(Σ), whole network [bits]",
    "C_pen": "C_l = Σ_i H(σ_l^i), mean of the penalised layers [bits]",
    "TC_pen": "TC(Σ_l), mean of the penalised layers [bits]",
    "train_loss": "training loss",
    "test_acc": "test accuracy",
}
#: significance level of the Spearman test in :func:`trend`
ALPHA_TEST = 0.05
#: smallest change counted as a change, in the metric's units (guards one-seed grids)
TOLERANCE: dict[str, float] = {"H_pen": 0.05, "I_XSY": 0.05, "H_all": 0.05, "C_pen": 0.05, "TC_pen": 0.05,
                               "loss_gap": 0.01,
                               "test_loss": 0.01, "train_loss": 0.01, "test_acc": 0.005}


# ---------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------
#: what an entry of ``model_datasets`` may override, per model
SETUP_KEYS = ("seeds", "epochs", "lr", "schedule", "train_subset", "variants", "lambdas", "lambda_scaling",
              "track_points")


def resolve_setups(model_datasets: Sequence[Sequence[Any]], *, seeds: Sequence[int], epochs: int, lr: float,
                   train_subset: int | None, variants: Sequence[str] = ("learned",),
                   lambdas: Sequence[float] | None = None, lambda_scaling: str = "plain",
                   track_points: int = 1, schedule: str = "none") -> list[dict[str, Any]]:
    """The per-model settings: each entry is ``[model, dataset]`` or ``[model, dataset, {overrides}]``.

    Overrides (keys of :data:`SETUP_KEYS`) replace the chapter-wide ``seeds``,
    ``epochs``, ``lr``, ``schedule`` (the learning-rate schedule of
    :class:`~tcomplex.experiments.train.TrainConfig`), ``train_subset``, ``variants``, ``lambdas`` (the λ grid),
    ``lambda_scaling`` (a key of :data:`LAMBDA_SCALINGS`) and ``track_points``
    (:func:`match_epochs`) for that model, so that an expensive network can get
    fewer seeds or epochs than a cheap one within one budget, and a network whose
    penalty scale differs (a conv net under the authors' per-position scaling) its
    own λ grid.
    """
    out = []
    for entry in model_datasets:
        if len(entry) not in (2, 3):
            raise ValueError(f"model_datasets entries are [model, dataset] or [model, dataset, {{...}}], got {entry!r}")
        model, dataset = str(entry[0]), str(entry[1])
        extra = dict(entry[2]) if len(entry) == 3 else {}
        unknown = sorted(set(extra) - set(SETUP_KEYS))
        if unknown:
            raise ValueError(f"{model}: unknown override(s) {unknown}; allowed: {list(SETUP_KEYS)}")
        setup = {"model": model, "dataset": dataset, "seeds": list(seeds), "epochs": epochs, "lr": lr,
                 "schedule": schedule, "train_subset": train_subset, "variants": list(variants),
                 "lambdas": None if lambdas is None else [float(x) for x in lambdas],
                 "lambda_scaling": lambda_scaling, "track_points": int(track_points)}
        setup.update(extra)
        if setup["lambda_scaling"] not in LAMBDA_SCALINGS:
            raise ValueError(f"{model}: unknown lambda_scaling {setup['lambda_scaling']!r}; "
                             f"known: {sorted(LAMBDA_SCALINGS)}")
        if setup["schedule"] not in SCHEDULES:
            raise ValueError(f"{model}: unknown schedule {setup['schedule']!r}; known: {list(SCHEDULES)}")
        if int(setup["track_points"]) < 1:
            raise ValueError(f"{model}: track_points must be >= 1 (1: the last epoch only), "
                             f"got {setup['track_points']}")
        out.append(setup)
    return out


def describe_models(setups: Sequence[Any]) -> str:
    """``"resmlp10 on mnist, resnet20 on mnist"`` from setups (dicts) or (model, dataset) pairs."""
    pairs = [(st["model"], st["dataset"]) if isinstance(st, dict) else (st[0], st[1]) for st in setups]
    return ", ".join(f"{m} on {d}" for m, d in pairs)


def describe_grid(lambdas: Sequence[float]) -> str:
    """``"0 and 1e-05 … 0.01 (7 values)"``: the baseline and the range of the positive lambdas."""
    pos = sorted(float(x) for x in lambdas if x > 0)
    if not pos:
        return "0 only"
    head = "0 and " if 0 in lambdas else ""
    rng = f"{pos[0]:.3g}" if len(pos) == 1 else f"{pos[0]:.3g} … {pos[-1]:.3g}"
    return f"{head}{rng} ({len(pos)} value{'s' if len(pos) > 1 else ''})"


def match_epochs(epochs: int, points: int) -> list[int]:
    """``points`` tracked epochs evenly spread over a run of ``epochs``, the last one included.

    ``points = 1``: ``[epochs]`` (Figure 7 compares trained networks).  More points let
    :func:`matched_table` compare the loss gap at a matched training accuracy or loss.
    """
    if points < 1 or epochs < 1:
        raise ValueError(f"need epochs >= 1 and points >= 1, got epochs={epochs}, points={points}")
    return sorted({max(1, round(epochs * k / points)) for k in range(1, points + 1)})


def configs(model_datasets: Sequence[Sequence[Any]], lambdas: Sequence[float], seeds: Sequence[int], *,
            epochs: int, train_subset: int | None, test_subset: int | None, analysis_per_class: int,
            lr: float = 0.01, resmlp_init: str = "torch_default", variants: Sequence[str] = ("learned",),
            lambda_scaling: str = "plain", tc: bool = False, track_points: int = 1,
            schedule: str = "none") -> list[TrainConfig]:
    """One run per (model, dataset) x lambda x seed (x variant for lambda > 0); lambda = 0 is the
    task-loss-only baseline, shared by the variants.

    ``variants``: names of :data:`VARIANTS` (the energy-model fit of
    :mod:`tcomplex.ebm`, stored as ``complexity_options["fit"]``);
    ``lambda_scaling``: a key of :data:`LAMBDA_SCALINGS`; ``tc``: also track
    TC(Sigma_l) per layer (Eq. 28).

    ``model_datasets`` entries may override seeds, epochs, lr, schedule, train_subset, variants,
    the λ grid, the λ scaling and ``track_points`` (:func:`resolve_setups`).  The tracked
    epochs are :func:`match_epochs` ``(epochs, track_points)``: the last epoch only by
    default.  The residual MLP gets ``resmlp_init``: the authors'
    ``ResMLP`` never applies its kaiming init, so their runs used PyTorch's
    default Linear init (``"torch_default"``).
    """
    if lambda_scaling not in LAMBDA_SCALINGS:
        raise ValueError(f"unknown lambda_scaling {lambda_scaling!r}; known: {sorted(LAMBDA_SCALINGS)}")
    out = []
    for st in resolve_setups(model_datasets, seeds=seeds, epochs=epochs, lr=lr, train_subset=train_subset,
                             variants=variants, lambdas=lambdas, lambda_scaling=lambda_scaling,
                             track_points=track_points, schedule=schedule):
        unknown = sorted(set(st["variants"]) - set(VARIANTS))
        if unknown or not st["variants"]:
            raise ValueError(f"{st['model']}: unknown or no penalty variant(s) {unknown or st['variants']}; "
                             f"known: {list(VARIANTS)}")
        kwargs = {"init": resmlp_init} if st["model"] == "resmlp10" else {}
        tracked = match_epochs(int(st["epochs"]), int(st["track_points"]))
        for lam in st["lambdas"]:
            for variant in (st["variants"] if lam > 0 else (BASELINE,)):
                options = {} if lam == 0 else {"fit": variant, **LAMBDA_SCALINGS[st["lambda_scaling"]]}
                label = f"{CHAPTER} lambda={lam:g}" + ("" if lam == 0 else f" {variant}")
                for seed in st["seeds"]:
                    out.append(recipe_config(
                        st["model"], dataset=st["dataset"], epochs=st["epochs"], seed=seed, lr=st["lr"],
                        schedule=st["schedule"],
                        train_subset=st["train_subset"], test_subset=test_subset,
                        analysis_per_class=analysis_per_class, track_epochs=tracked, rates=False, tc=tc,
                        model_kwargs=kwargs, complexity_lambda=float(lam), complexity_layers=list(PENALISED_LAYERS),
                        complexity_options=options, label=label,
                    ))
    return out


def lambda_scaling_of(cfg: TrainConfig) -> str:
    """The key of :data:`LAMBDA_SCALINGS` a run's complexity options use (``plain`` for λ = 0; ``custom``
    for options that match none)."""
    opts = {k: v for k, v in cfg.complexity_options.items() if k != "fit"}
    for name, extra in LAMBDA_SCALINGS.items():
        if opts == extra:
            return name
    return "custom"


def variant_of(cfg: TrainConfig) -> str:
    """The penalty variant of a run: :data:`BASELINE` for lambda = 0, else its energy-model fit."""
    from tcomplex.ebm import DEFAULT_FIT

    if cfg.complexity_lambda <= 0:
        return BASELINE
    fit = cfg.complexity_options.get("fit", DEFAULT_FIT)
    return fit if isinstance(fit, str) else fit.name


def variant_runs(runs: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The lambda = 0 baselines and the lambda > 0 runs of one variant (what :func:`trend` expects)."""
    if "variant" not in runs:
        return runs
    return runs[(runs.lam == 0) | (runs.variant == variant)]


def penalised_layers(cfg: TrainConfig) -> list[str]:
    """Names of the gating layers the complexity loss of ``cfg`` penalises (as ``ComplexityPenalty.for_model``)."""
    info = data_mod.DATASETS[cfg.dataset]
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("in_channels", info.shape[0])
    kwargs.setdefault("input_size", info.shape[-1])
    model = models_mod.build_model(cfg.model, num_classes=info.num_classes, **kwargs).eval()
    probe = record_gates(model, torch.zeros(2, *info.shape), kinds=cfg.kinds)
    return resolve_layers(probe.names, cfg.complexity_layers)


def ebm_diagnostics(cfg: TrainConfig, ctx: Context) -> dict[str, Any]:
    """How far the energy nets moved during training, what the trained penalty consists of, and how well
    its energy fits held-out gating states.

    ``train`` seeds torch, builds the model and then the penalty, so rebuilding
    them with the same seed gives the initial energy nets; the trained ones come
    from the run's checkpoint.  On the hard gates of the trained model for
    ``analysis_per_class`` training images per class, with the trained energy
    nets, the energy E = -f - log q (Eq. 32) of the penalised layers splits into
    ``f`` (sum over layers of the mean f(sigma_l)) and ``neg_log_q`` (sum of the
    mean -log q(sigma_l)).  ``drift``: the largest ||theta_end - theta_0|| /
    ||theta_0|| over the energy nets' parameter tensors (0 for the ``prior``
    variant, whose energy nets are never fitted).  ``pl_model`` / ``pl_prior``:
    the per-gate pseudo-log-likelihood (nats; :func:`tcomplex.ebm.pseudo_log_likelihood`,
    mean over the penalised layers, :data:`PL_GATES` gates each) of the hard
    gates of the first :data:`PL_STATES` test images under the energy the penalty
    uses and under the prior q alone; ``pl_gain`` = pl_model - pl_prior (> 0:
    the energy model predicts held-out gates better than the prior);
    ``pl_model_k`` / ``pl_prior_k``: the same for the k-th penalised layer (k = 1..4
    in forward order).
    """
    from tcomplex.ebm import ComplexityPenalty, prior_pseudo_log_likelihood, pseudo_log_likelihood

    if cfg.complexity_lambda <= 0:
        raise ValueError(f"run {cfg.run_id} has no complexity loss (λ = 0)")
    info = data_mod.DATASETS[cfg.dataset]
    state = ctx.run(cfg).load_checkpoint("cpu")
    if state is None:
        raise FileNotFoundError(f"run {cfg.run_id} has no checkpoint in {ctx.run(cfg).path}: train it first")
    torch.manual_seed(cfg.seed)
    fresh = build_model_for(cfg)
    with ComplexityPenalty.for_model(fresh, torch.zeros(2, *info.shape), lam=cfg.complexity_lambda,
                                     layers=cfg.complexity_layers, **cfg.complexity_options) as penalty:
        initial = {k: v.detach().clone() for k, v in penalty.ebms.named_parameters()}
        penalty.load_state_dict(state["penalty"])
    trained = dict(penalty.ebms.named_parameters())
    drift = max(float((trained[k].detach() - v).norm() / v.norm()) for k, v in initial.items() if float(v.norm()) > 0)
    model = load_trained_model(cfg, ctx)
    x, _ = analysis_set_for(cfg, ctx.data_root)  # the images train() measured the run on
    rec = record_gates(model, x, kinds=cfg.kinds)
    xt, _ = data_mod.load_tensors(cfg.dataset, "test", data_root=ctx.data_root, normalization=cfg.normalization)
    held = record_gates(model, xt[:PL_STATES], kinds=cfg.kinds)
    f_sum = log_q_sum = 0.0
    pl_model, pl_prior = [], []
    with torch.no_grad():
        for k, (name, ebm) in enumerate(zip(penalty.layer_names, penalty.ebms)):
            sigma = rec[name].float()
            f_sum += float(ebm.f(sigma).mean())
            log_q_sum += float(-ebm.q.log_prob(sigma).mean())
            h = held[name].float()
            pl_model.append(pseudo_log_likelihood(lambda s, k=k: penalty.layer_energy(k, s), h, gates=PL_GATES,
                                                  seed=cfg.seed))
            pl_prior.append(prior_pseudo_log_likelihood(ebm.q, h, gates=PL_GATES, seed=cfg.seed))
    lv = penalty.langevin_settings
    per_layer = {}
    for pos, (a, b) in enumerate(zip(pl_model, pl_prior), start=1):
        per_layer[f"pl_model_{pos}"], per_layer[f"pl_prior_{pos}"] = a, b
    return {"variant": variant_of(cfg), "drift": drift, "f": f_sum, "neg_log_q": log_q_sum,
            "pl_model": float(np.mean(pl_model)), "pl_prior": float(np.mean(pl_prior)),
            "pl_gain": float(np.mean(pl_model) - np.mean(pl_prior)),
            "langevin_step_size": lv["step_size"], "langevin_noise_std": lv["noise_std"],
            "every": penalty.every, "per_position": penalty.per_position, **per_layer}


def ebm_table(cfgs: Sequence[TrainConfig], ctx: Context) -> pd.DataFrame:
    """:func:`ebm_diagnostics` of every run with λ > 0: model, lam, seed, variant, drift, f, neg_log_q,
    pl_model, pl_prior, pl_gain, Langevin step size and noise std, every, per_position, and per
    penalised layer k pl_model_k, pl_prior_k."""
    return pd.DataFrame([{"model": c.model, "lam": c.complexity_lambda, "seed": c.seed, **ebm_diagnostics(c, ctx)}
                         for c in cfgs if c.complexity_lambda > 0])


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------
def _final(rows: pd.DataFrame) -> pd.DataFrame:
    last = rows.groupby("run_id").epoch.transform("max")
    return rows[rows.epoch == last]


def run_table(rows: pd.DataFrame, cfgs: Sequence[TrainConfig]) -> pd.DataFrame:
    """One row per run at its last epoch: the metrics of Figures 7 and 8 and their ceilings.

    Columns: model, dataset, lam, seed, H_pen (mean H(Sigma_l) over the
    penalised layers), H_pen_saturated (how many of them sit at log2 n), H_all,
    H_all_saturated, I_XSY (whole network), I_XSY_saturated (within 0.01 bit of
    log2 #classes), train_loss, test_loss, loss_gap, train_acc, test_acc,
    complexity_loss (the unweighted energy of the last batch), log2_n, log2_classes, variant
    (:func:`variant_of`), lambda_scaling (:func:`lambda_scaling_of`), C_pen and TC_pen (means over the
    penalised layers; TC_pen NaN unless tracked).
    """
    final = _final(rows)
    out = []
    for cfg in cfgs:
        r = final[final.run_id == cfg.run_id]
        if r.empty:
            raise ValueError(f"no rows for run {cfg.run_id}: train it first")
        pen = penalised_layers(cfg)

        def value(metric: str, layer: str = ALL) -> float:
            v = r[(r.metric == metric) & (r.layer == layer)].value
            return float(v.iloc[0]) if len(v) else float("nan")

        info = data_mod.DATASETS[cfg.dataset]
        n = cfg.analysis_per_class * info.num_classes
        log2_c = math.log2(info.num_classes)
        ii = value("I_XSY")
        out.append({
            "model": cfg.model, "dataset": cfg.dataset, "lam": cfg.complexity_lambda, "seed": cfg.seed,
            "variant": variant_of(cfg),
            "H_pen": float(np.mean([value("H", layer) for layer in pen])),
            "C_pen": float(np.mean([value("C", layer) for layer in pen])),
            "TC_pen": float(np.mean([value("TC", layer) for layer in pen])),
            "H_pen_saturated": int(sum(value("saturated_H", layer) > 0 for layer in pen)),
            "H_all": value("H"), "H_all_saturated": int(value("saturated_H") > 0),
            "I_XSY": ii, "I_XSY_saturated": int(ii >= log2_c - 0.01),
            "train_loss": value("train_loss"), "test_loss": value("test_loss"), "loss_gap": value("loss_gap"),
            "train_acc": value("train_acc"), "test_acc": value("test_acc"),
            "complexity_loss": value("complexity_loss"),
            "log2_n": math.log2(n), "log2_classes": log2_c, "lambda_scaling": lambda_scaling_of(cfg),
            "run_id": cfg.run_id,
        })
    return pd.DataFrame(out)


def layer_table(rows: pd.DataFrame, cfgs: Sequence[TrainConfig]) -> pd.DataFrame:
    """H(Sigma_l) of each penalised layer per run (last epoch): model, lam, seed, variant, layer, position, H."""
    final = _final(rows)
    out = []
    for cfg in cfgs:
        r = final[(final.run_id == cfg.run_id) & (final.metric == "H")]
        for pos, layer in enumerate(penalised_layers(cfg), start=1):
            out.append({"model": cfg.model, "dataset": cfg.dataset, "lam": cfg.complexity_lambda, "seed": cfg.seed,
                        "variant": variant_of(cfg), "layer": layer, "position": pos,
                        "H": float(r[r.layer == layer].value.iloc[0])})
    return pd.DataFrame(out)


#: how close a run's tracked epoch must come to the common target of :func:`matched_table` for the matched
#: comparison to count: 0.02 of training accuracy (two points) or 0.05 nats of training loss
MATCH_TOLERANCE: dict[str, float] = {"train_acc": 0.02, "train_loss": 0.05}


def epoch_table(rows: pd.DataFrame, cfgs: Sequence[TrainConfig]) -> pd.DataFrame:
    """Every tracked epoch of every run: model, dataset, lam, variant, seed, epoch, train_acc,
    train_loss, test_loss, loss_gap, test_acc and run_id (the rows :func:`matched_table` picks from)."""
    sel = rows[(rows.layer == ALL) & rows.metric.isin(["train_acc", "train_loss", "test_loss", "loss_gap",
                                                        "test_acc"])]
    wide = sel.pivot_table(index=["run_id", "epoch"], columns="metric", values="value").reset_index()
    wide.columns.name = None
    meta = pd.DataFrame([{"run_id": c.run_id, "model": c.model, "dataset": c.dataset, "lam": c.complexity_lambda,
                          "variant": variant_of(c), "seed": c.seed} for c in cfgs]).drop_duplicates("run_id")
    missing = sorted(set(meta.run_id) - set(wide.run_id))
    if missing:
        raise ValueError(f"no tracked rows for runs {missing[:3]}: train them first")
    out = meta.merge(wide, on="run_id", how="left")
    cols = ["model", "dataset", "lam", "variant", "seed", "epoch", "train_acc", "train_loss", "test_loss",
            "loss_gap", "test_acc", "run_id"]
    return out[cols].sort_values(["model", "lam", "variant", "seed", "epoch"]).reset_index(drop=True)


def matched_table(epochs: pd.DataFrame, by: str = "train_acc", target: float | None = None) -> pd.DataFrame:
    """Figure 7's loss gap compared at a matched training accuracy (or training loss), one row per run.

    A network that stops learning (a large λ) also has a small test-minus-training loss
    gap, so comparing gaps at the last epoch confounds the penalty with under-fitting.
    Here every run contributes the tracked epoch (:func:`epoch_table`) whose ``by``
    (``"train_acc"`` or ``"train_loss"``) is closest to a common ``target`` per model
    (ties: the earlier epoch).  The default target is the best value *every* λ reached:
    for accuracy the smallest, over the λ (and variants), of the mean over seeds of each
    run's highest tracked training accuracy; for loss the largest of the mean lowest
    training losses.  Columns: model, dataset, lam, variant, seed, by, target,
    matched_epoch, matched_value, distance (|matched_value - target|), within (distance
    <= :data:`MATCH_TOLERANCE`), loss_gap (at the matched epoch), train_loss, test_loss,
    test_acc_final (the run's last tracked test accuracy) and run_id.
    """
    if by not in MATCH_TOLERANCE:
        raise ValueError(f"by must be one of {sorted(MATCH_TOLERANCE)}, got {by!r}")
    if epochs.empty:
        raise ValueError("no tracked epochs to match")
    higher = by == "train_acc"
    out = []
    for model, g in epochs.groupby("model", sort=False):
        per_run = g.groupby(["lam", "variant", "seed"])[by].agg("max" if higher else "min").reset_index()
        cell = per_run.groupby(["lam", "variant"])[by].mean()
        goal = float(cell.min() if higher else cell.max()) if target is None else float(target)
        for run_id, r in g.groupby("run_id", sort=False):
            r = r.sort_values("epoch")
            dist = (r[by] - goal).abs()
            best = r.loc[dist.idxmin()]
            last = r.iloc[-1]
            out.append({"model": model, "dataset": best.dataset, "lam": float(best.lam), "variant": best.variant,
                        "seed": int(best.seed), "by": by, "target": goal, "matched_epoch": int(best.epoch),
                        "matched_value": float(best[by]), "distance": float(dist.min()),
                        "within": bool(dist.min() <= MATCH_TOLERANCE[by]),
                        "loss_gap": float(best.loss_gap), "train_loss": float(best.train_loss),
                        "test_loss": float(best.test_loss), "test_acc_final": float(last.test_acc),
                        "run_id": run_id})
    return pd.DataFrame(out).sort_values(["model", "lam", "variant", "seed"]).reset_index(drop=True)


def matched_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Per model, variant and λ: the matched loss gap's mean over seeds with its 95% t interval
    (``low``, ``high``; NaN with one seed), the mean matched value and epoch, and the seeds within
    :data:`MATCH_TOLERANCE` of the target."""
    out = []
    for (model, variant, lam), g in matched.groupby(["model", "variant", "lam"]):
        m, lo, hi = mean_ci(g.loss_gap)
        out.append({"model": model, "variant": variant, "lam": lam, "seeds": len(g), "target": g.target.iloc[0],
                    "matched_value": float(g.matched_value.mean()), "matched_epoch": float(g.matched_epoch.mean()),
                    "within": int(g.within.sum()), "loss_gap": m, "low": lo, "high": hi})
    return pd.DataFrame(out)


def aggregate(runs: pd.DataFrame, metrics: Sequence[str] = tuple(METRICS)) -> pd.DataFrame:
    """Mean, sample sd (0 for one seed) and number of seeds per (model, dataset, lam[, variant]) and metric
    (long format)."""
    keys = ["model", "dataset", "lam"] + (["variant"] if "variant" in runs else [])
    metrics = [m for m in metrics if m in runs]
    long = runs.melt(id_vars=keys + ["seed"], value_vars=list(metrics), var_name="metric")
    agg = long.groupby(keys + ["metric"]).value.agg(["mean", "std", "count"]).reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    return agg.rename(columns={"count": "n"})


# ---------------------------------------------------------------------------
# verdict statistics
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Trend:
    """How one metric changes with lambda for one model (see :func:`trend`)."""

    model: str
    metric: str
    rho: float  # Spearman rho(lambda, metric) over all runs
    p: float
    base_mean: float  # lambda = 0
    base_sd: float
    top_lam: float  # the largest lambda
    top_mean: float
    top_sd: float
    spread: float  # max(base_sd, top_sd, tolerance)
    n_runs: int
    n_saturated: int  # runs whose estimate sits at its ceiling
    decreasing: bool  # rho < 0 with p < ALPHA_TEST
    below: bool  # top_mean < base_mean - spread

    @property
    def drop(self) -> float:
        return self.base_mean - self.top_mean

    @property
    def all_saturated(self) -> bool:
        return self.n_runs > 0 and self.n_saturated == self.n_runs

    @property
    def verdict(self) -> str:
        """REPRODUCED if both criteria hold, PARTLY if one does; NOT_MEASURED if every estimate is at its ceiling."""
        if self.all_saturated:
            return NOT_MEASURED
        return verdict(self.decreasing and self.below, partly=self.decreasing or self.below)

    def describe(self) -> str:
        sat = f"; {self.n_saturated}/{self.n_runs} runs at the estimator's ceiling" if self.n_saturated else ""
        pval = "" if self.p != self.p else f"p = {self.p:.2g}, "  # no p-value from two runs
        return (f"{self.model}: λ=0 {self.base_mean:.2f} ± {self.base_sd:.2f} → λ={self.top_lam:g} "
                f"{self.top_mean:.2f} ± {self.top_sd:.2f} (drop {self.drop:.2f}, spread {self.spread:.2f}); "
                f"Spearman ρ = {self.rho:.2f} ({pval}{self.n_runs} runs){sat}")


def _saturation_column(metric: str) -> str | None:
    return {"H_pen": "H_pen_saturated", "H_all": "H_all_saturated", "I_XSY": "I_XSY_saturated"}.get(metric)


def trend(runs: pd.DataFrame, model: str, metric: str, tol: float | None = None) -> Trend:
    """Does ``metric`` decrease with lambda for ``model``?

    Criteria (both for REPRODUCED, one for PARTLY): Spearman's rho between
    lambda and the metric over all runs (every seed) is negative with a
    two-sided p-value below :data:`ALPHA_TEST` (a rise-then-fall curve with a
    weak negative rho does not count), and the mean
    over seeds at the largest lambda is below the mean at lambda = 0 by more than
    the spread, max(sd at lambda = 0, sd at the largest lambda, ``tol``) (sample
    sd over seeds; ``tol`` defaults to :data:`TOLERANCE`).  A run counts as
    saturated when its estimate sits at the ceiling (for ``H_pen`` when any of
    the four layers does).
    """
    from scipy import stats

    sel = runs[runs.model == model]
    if sel.empty:
        raise ValueError(f"no runs of model {model!r}")
    if (sel.lam == 0).sum() == 0:
        raise ValueError(f"model {model!r} has no λ = 0 baseline run")
    tol = TOLERANCE.get(metric, 0.0) if tol is None else tol
    lam, val = sel.lam.to_numpy(float), sel[metric].to_numpy(float)
    if np.ptp(lam) == 0 or np.ptp(val) == 0:
        rho, p = 0.0, 1.0
    else:
        rho, p = stats.spearmanr(lam, val)
    base = sel[sel.lam == 0][metric]
    top_lam = float(sel.lam.max())
    top = sel[sel.lam == top_lam][metric]
    base_sd = float(base.std(ddof=1)) if len(base) > 1 else 0.0
    top_sd = float(top.std(ddof=1)) if len(top) > 1 else 0.0
    spread = max(base_sd, top_sd, tol)
    sat_col = _saturation_column(metric)
    n_sat = int((sel[sat_col] > 0).sum()) if sat_col and sat_col in sel else 0
    return Trend(model, metric, float(rho), float(p), float(base.mean()), base_sd, top_lam, float(top.mean()),
                 top_sd, spread, len(sel), n_sat, bool(rho < 0 and p < ALPHA_TEST),
                 bool(top.mean() < base.mean() - spread))


def test_loss_improvement(runs: pd.DataFrame, model: str, tol: float = TOLERANCE["test_loss"]) -> dict[str, Any]:
    """Figure 8: the lambda > 0 with the lowest mean test loss against the lambda = 0 baseline.

    ``holds`` when that mean is below the baseline mean by more than the spread
    (max of the two sample sds and ``tol``); ``lower`` when it is below at all.
    """
    sel = runs[runs.model == model]
    means = sel.groupby("lam").test_loss.mean()
    sds = sel.groupby("lam").test_loss.std(ddof=1).fillna(0.0)
    if 0.0 not in means.index or len(means) < 2:
        raise ValueError(f"model {model!r} needs a λ = 0 baseline and at least one λ > 0")
    best = float(means.drop(0.0).idxmin())
    spread = max(float(sds[0.0]), float(sds[best]), tol)
    return {"model": model, "best_lam": best, "best": float(means[best]), "base": float(means[0.0]),
            "spread": spread, "lower": bool(means[best] < means[0.0]),
            "holds": bool(means[best] < means[0.0] - spread)}


def effective_range(runs: pd.DataFrame, model: str) -> dict[str, float | None]:
    """Which lambda starts to change things for ``model`` with our penalty scale.

    ``first_effect``: the smallest lambda > 0 whose mean H_pen is below the
    baseline by more than the spread (as in :func:`trend`); ``first_cost``: the
    smallest lambda > 0 whose mean test accuracy is more than 2 points below the
    baseline's.  None where no lambda of the grid does it.
    """
    sel = runs[runs.model == model]
    g = sel.groupby("lam")
    h_mean, h_sd = g.H_pen.mean(), g.H_pen.std(ddof=1).fillna(0.0)
    acc = g.test_acc.mean()
    first_effect = first_cost = None
    for lam in sorted(x for x in h_mean.index if x > 0):
        spread = max(float(h_sd[0.0]), float(h_sd[lam]), TOLERANCE["H_pen"])
        if first_effect is None and h_mean[lam] < h_mean[0.0] - spread:
            first_effect = float(lam)
        if first_cost is None and acc[lam] < acc[0.0] - 0.02:
            first_cost = float(lam)
    return {"model": model, "first_effect": first_effect, "first_cost": first_cost}


def authors_comparison(runs: pd.DataFrame, model: str = "resmlp10") -> pd.DataFrame:
    """The authors' residual MLP on CIFAR-10 (ends of their grid) beside ours (λ = 0, smallest and largest λ > 0)."""
    sel = runs[runs.model == model]
    lams = sorted(x for x in sel.lam.unique() if x > 0)
    if not lams:
        raise ValueError(f"model {model!r} has no λ > 0 run")
    means = sel.groupby("lam")[["H_pen", "H_all", "I_XSY", "loss_gap"]].mean()
    lo, hi = AUTHORS_RESMLP_CIFAR10["log10_lambda"]
    rows = []
    for metric, ours, label in (("H", "H_pen", "H(Σ) [bits] (ours: mean of the penalised layers)"),
                                ("I_XSY", "I_XSY", "I(X;Σ;Y) [bits]"),
                                ("loss_gap", "loss_gap", "test − train loss")):
        a_lo, a_hi = AUTHORS_RESMLP_CIFAR10[metric]
        rows.append({"metric": label, f"authors λ=1e{lo:.0f}": a_lo, f"authors λ=1e{hi:.0f}": a_hi,
                     "ours λ=0": float(means.loc[0.0, ours]) if 0.0 in means.index else float("nan"),
                     f"ours λ={lams[0]:g}": float(means.loc[lams[0], ours]),
                     f"ours λ={lams[-1]:g}": float(means.loc[lams[-1], ours])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# findings
# ---------------------------------------------------------------------------
CLAIMS = {
    "H_pen": "Fig. 7: H(Σ_l) of the penalised layers decreases as λ grows.",
    "I_XSY": "Fig. 7: I(X;Σ;Y) decreases as λ grows.",
    "loss_gap": "Fig. 7: the gap between testing and training loss decreases as λ grows.",
}


def findings(runs: pd.DataFrame, setting: str, ebm: pd.DataFrame | None = None,
             matched: pd.DataFrame | None = None) -> list[Finding]:
    """Per model (and per penalty variant, when ``runs`` holds several): the Figure 7 trends and the
    Figure 8 test-loss decrease, with computed verdicts; with several variants also :func:`ablation_findings`.

    With one variant the keys are ``metric:model``; with several ``metric:model:variant`` (each variant
    judged on its own λ > 0 runs and the shared λ = 0 baseline, :func:`variant_runs`).

    H of the penalised layers falling with λ is the quantity the loss penalises: a sanity check
    (``kind="sanity"``) that the penalty works, not a claim.  The claims (I(X;Σ;Y) and the loss
    gap decrease; the test loss sometimes decreases) hold when :func:`trend` finds a significant
    decrease beyond the spread (:func:`test_loss_improvement` for the test loss), and their
    verdicts need (:mod:`tcomplex.experiments.report`): every run's network learned (test
    accuracy at every λ: a network that stopped learning has a small I(X;Σ;Y) and a small gap for
    a trivial reason), ``min_seeds_curve`` seeds per λ, ``min_points_rank`` λ values for the
    rank correlation, headroom of I(X;Σ;Y) below log2 #classes, a measurable loss gap at λ = 0
    (its interval over seeds excludes 0), and, where the decrease is read, a Welch interval over
    seeds of the deciding difference (λ = 0 against the largest λ, or against the best λ) that
    excludes 0 (the claimed sign).
    """
    variants = sorted(set(runs.variant) - {BASELINE}) if "variant" in runs else []
    out: list[Finding] = []
    for variant in variants or [None]:
        sel = variant_runs(runs, variant) if variant else runs
        suffix = f":{variant}" if len(variants) > 1 else ""
        tag = f" [{variant} penalty]" if len(variants) > 1 else ""
        out += _trend_findings(sel, setting, suffix, tag)
    if matched is not None:
        out += matched_findings(matched, setting)
    if len(variants) > 1:
        out += ablation_findings(runs, setting, ebm)
    return out


MATCHED_CLAIM = ("Fig. 7: the gap between testing and training loss decreases as λ grows — compared at a matched "
                 "training {what} (a network that stops learning also has a small gap).")


def matched_findings(matched: pd.DataFrame, setting: str) -> list[Finding]:
    """The loss-gap claim of Figure 7 read at a matched training accuracy or loss (:func:`matched_table`).

    Per model (and per penalty variant with the shared λ = 0 baseline, keys
    ``loss_gap_matched:model[:variant]``): the claim holds when :func:`trend` on the
    matched gaps finds a significant decrease beyond the spread.  Preconditions: every
    network learned (final test accuracy at every λ, :func:`learned`), every run's
    matched epoch within :data:`MATCH_TOLERANCE` of the common target (else the
    gaps are not compared at the same fit), ``min_seeds_curve`` seeds per λ,
    ``min_points_rank`` λ values, a matched gap at λ = 0 whose 95% interval over seeds
    excludes 0, and, where the decrease is read, a Welch interval of the drop from
    λ = 0 to the largest λ that excludes 0.
    """
    out: list[Finding] = []
    variants = sorted(set(matched.variant) - {BASELINE})
    for variant in variants or [None]:
        sel_v = variant_runs(matched, variant) if variant else matched
        suffix = f":{variant}" if len(variants) > 1 else ""
        tag = f" [{variant} penalty]" if len(variants) > 1 else ""
        for model in sel_v.model.unique():
            sel = sel_v[sel_v.model == model]
            if sel.lam.nunique() < 2 or (sel.lam == 0).sum() == 0:
                continue
            ds = str(sel.dataset.iloc[0])
            by, goal = str(sel.by.iloc[0]), float(sel.target.iloc[0])
            what = "accuracy" if by == "train_acc" else "loss"
            top_lam = float(sel.lam.max())
            t = trend(sel, model, "loss_gap")
            d, lo, hi = diff_ci(sel[sel.lam == 0].loss_gap, sel[sel.lam == top_lam].loss_gap)
            m0, lo0, hi0 = mean_ci(sel[sel.lam == 0].loss_gap)
            per_lam = int(sel.groupby("lam").seed.nunique().min())
            tol = MATCH_TOLERANCE[by]
            within = int(sel.within.sum())
            pre = [learned(f"{model} on {ds} (every λ)", sel.test_acc_final.tolist(), model, ds),
                   Precondition(f"every run matched at {by} {goal:.3f}", f"|{by} − target| <= {tol:g}",
                                f"max distance {sel.distance.max():.3f} ({within}/{len(sel)} runs within)",
                                bool(within == len(sel)), "enough", float(sel.distance.max()), tol),
                   enough("seeds per λ", per_lam, int(THRESHOLDS["min_seeds_curve"])),
                   enough("λ values for the rank correlation", int(sel.lam.nunique()),
                          int(THRESHOLDS["min_points_rank"])),
                   excludes_zero(f"matched loss gap at λ = 0 ({m0:.3f})", lo0, hi0)]
            holds = t.decreasing and t.below
            if holds:
                pre.append(excludes_zero(f"drop of the matched loss gap from λ = 0 to λ = {top_lam:g}", lo, hi))
            epochs = sel.groupby("lam").matched_epoch.mean()
            text = (f"{ds}, {sel.seed.nunique()} seed(s){tag}, gap read at the tracked epoch whose {by} is closest "
                    f"to {goal:.3f} (mean matched epoch per λ: "
                    + ", ".join(f"λ={k:g}: {v:.1f}" for k, v in epochs.items())
                    + f"): {t.describe()}. Drop λ = 0 → λ = {top_lam:g}: {fmt_ci(d, lo, hi, 3)} (Welch, over seeds).")
            out.append(Finding(f"loss_gap_matched:{model}{suffix}", CHAPTER, MATCHED_CLAIM.format(what=what), text,
                               judge(holds, pre), setting, preconditions=pre))
    return out


def _trend_findings(runs: pd.DataFrame, setting: str, suffix: str, tag: str) -> list[Finding]:
    out: list[Finding] = []
    for model in runs.model.unique():
        sel = runs[runs.model == model]
        if sel.lam.nunique() < 2:
            continue  # this penalty variant was not trained for this model (a per-model variant list)
        ds = sel.dataset.iloc[0]
        seeds = sel.seed.nunique()
        acc = sel.groupby("lam").test_acc.mean()
        per_lam = int(sel.groupby("lam").seed.nunique().min())
        top_lam = float(sel.lam.max())
        nets = [learned(f"{model} on {ds} (every λ)", sel.test_acc.tolist(), str(model), str(ds))]
        seeds_pre = enough("seeds per λ", per_lam, int(THRESHOLDS["min_seeds_curve"]))
        points = enough("λ values for the rank correlation", int(sel.lam.nunique()), int(THRESHOLDS["min_points_rank"]))
        acc_text = (f" Test accuracy {acc[0.0]:.3f} at λ = 0, {acc[top_lam]:.3f} at λ = {top_lam:g}, lowest "
                    f"{sel.test_acc.min():.3f}.")
        for metric, claim in CLAIMS.items():
            t = trend(sel, model, metric)
            d, lo, hi = diff_ci(sel[sel.lam == 0][metric], sel[sel.lam == top_lam][metric])
            diff_text = f" Drop λ = 0 → λ = {top_lam:g}: {fmt_ci(d, lo, hi)} (Welch, over seeds)."
            holds = t.decreasing and t.below
            if metric == "H_pen":
                out.append(Finding(f"{metric}:{model}{suffix}", CHAPTER,
                                   "Sanity check, Fig. 7: H(Σ_l) of the penalised layers (the quantity the "
                                   "complexity loss penalises) decreases as λ grows.",
                                   f"{ds}, {seeds} seed(s){tag}: {t.describe()}.{diff_text}", judge(holds), setting,
                                   kind="sanity"))
                continue
            pre = [*nets, seeds_pre, points]
            if metric == "I_XSY":
                n_classes = data_mod.DATASETS[str(ds)].num_classes
                pre.append(class_headroom("I(X;Σ;Y)", sel.I_XSY.tolist(), n_classes))
            if metric == "loss_gap":
                m0, lo0, hi0 = mean_ci(sel[sel.lam == 0].loss_gap)
                pre.append(excludes_zero(f"loss gap at λ = 0 ({m0:.3f})", lo0, hi0))
            if holds:  # the claimed sign (a decrease) needs its interval
                pre.append(excludes_zero(f"drop of {metric} from λ = 0 to λ = {top_lam:g}", lo, hi))
            out.append(Finding(f"{metric}:{model}{suffix}", CHAPTER, claim,
                               f"{ds}, {seeds} seed(s){tag}: {t.describe()}.{diff_text}{acc_text}",
                               judge(holds, pre), setting, preconditions=pre))
        imp = test_loss_improvement(sel, model)
        best = float(imp["best_lam"])
        d, lo, hi = diff_ci(sel[sel.lam == 0].test_loss, sel[sel.lam == best].test_loss)
        pre = [*nets, seeds_pre]
        if imp["holds"]:
            pre.append(excludes_zero(f"test loss λ = 0 minus λ = {best:g}", lo, hi))
        out.append(Finding(
            f"test_loss:{model}{suffix}", CHAPTER,
            "Fig. 8 / App. C: the complexity loss sometimes decreases the testing loss.",
            f"{ds}, {seeds} seed(s){tag}: best λ = {best:g} gives test loss {imp['best']:.3f} against "
            f"{imp['base']:.3f} at λ = 0 (decrease {fmt_ci(d, lo, hi, 3)}, Welch over seeds; the best λ is "
            f"picked after the fact); test accuracy {acc[best]:.3f} against {acc[0.0]:.3f}.",
            judge(imp["holds"], pre), setting, preconditions=pre,
        ))
    return out


# ---------------------------------------------------------------------------
# the ablation: learned energy model, authors' settings, prior alone
# ---------------------------------------------------------------------------
#: metrics compared between the variants
ABLATION_METRICS: tuple[str, ...] = ("H_pen", "C_pen", "TC_pen", "I_XSY", "loss_gap", "test_loss", "test_acc")
#: confidence level of the intervals of the ablation
CONFIDENCE = 0.95


def _t_half_width(sd: float, n: int) -> float:
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return float("nan")
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n))


def ablation_table(runs: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS) -> pd.DataFrame:
    """Per model, variant (``baseline`` for λ = 0) and λ: mean, sample sd, n seeds and the half-width of
    the 95% t-interval of the mean (NaN for one seed) of each metric (long format)."""
    if "variant" not in runs:
        raise ValueError("the runs have no variant column: build them with run_table")
    metrics = [m for m in metrics if m in runs]
    long = runs.melt(id_vars=["model", "variant", "lam", "seed"], value_vars=metrics, var_name="metric")
    agg = long.groupby(["model", "variant", "lam", "metric"]).value.agg(["mean", "std", "count"]).reset_index()
    agg = agg.rename(columns={"count": "n", "std": "sd"})
    agg["ci95"] = [_t_half_width(sd, n) for sd, n in zip(agg.sd, agg.n)]
    return agg


def ablation_comparison(runs: pd.DataFrame, model: str, metric: str, a: str = "learned",
                        b: str = "prior") -> pd.DataFrame:
    """Variant ``a`` minus variant ``b`` at every λ > 0 both were run at: difference of the means over
    seeds, its 95% Welch interval (lo, hi; NaN with fewer than two seeds each) and ``differs`` (the
    interval excludes 0)."""
    from scipy import stats

    sel = runs[(runs.model == model) & (runs.lam > 0)]
    rows = []
    for lam in sorted(set(sel[sel.variant == a].lam) & set(sel[sel.variant == b].lam)):
        xa = sel[(sel.variant == a) & (sel.lam == lam)][metric].to_numpy(float)
        xb = sel[(sel.variant == b) & (sel.lam == lam)][metric].to_numpy(float)
        diff = float(xa.mean() - xb.mean())
        if len(xa) > 1 and len(xb) > 1:
            va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
            se = math.sqrt(va + vb)
            if se > 0:
                dof = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
                half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se)
            else:
                half = 0.0
            lo, hi = diff - half, diff + half
        else:
            lo = hi = float("nan")
        rows.append({"model": model, "metric": metric, "lam": float(lam), "a": a, "b": b, "diff": diff,
                     "lo": lo, "hi": hi, "n_a": len(xa), "n_b": len(xb),
                     "differs": bool(math.isfinite(lo) and (lo > 0 or hi < 0))})
    return pd.DataFrame(rows)


def _interval(r: Any) -> str:
    if math.isfinite(r.lo):
        return f"{r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]"
    return f"{r.diff:+.3f} (no interval: one seed)"


def ablation_findings(runs: pd.DataFrame, setting: str, ebm: pd.DataFrame | None = None) -> list[Finding]:
    """Does the paper's effect depend on the energy model learning p(σ_l)?

    Per model: the learned energy model against the prior alone (Σ −log q ≈ C_l)
    on H_pen, I(X;Σ;Y), the loss gap and the test loss at every λ > 0 both were run
    at (95% Welch intervals, :func:`ablation_comparison`).  The claim "penalising
    H(Σ_l) through a learned p_θ(σ_l) is what does it" has parts, one per metric:
    "learned lower" for H_pen and I(X;Σ;Y) (an interval entirely below 0 at some λ),
    "learned differs" for the loss gap and the test loss (an interval excluding 0).
    REPRODUCED if the learned variant gives a lower H_pen or I(X;Σ;Y) than the prior
    alone; PARTLY (naming the parts that held) if only another part holds (a
    difference on the losses, or a higher H_pen / I(X;Σ;Y)); NOT_REPRODUCED if no
    interval excludes 0 (the effect is that of penalising C_l); NOT_MEASURED when
    the two variants share no λ.  The sign is read from the Welch interval itself.

    Preconditions (:mod:`tcomplex.experiments.report`; a failed one makes the row
    INCONCLUSIVE): every compared network learned (both variants, every λ > 0: a
    network that collapsed to chance has a low H for a trivial reason),
    ``min_seeds_curve`` seeds per variant and λ (a Welch interval over one seed
    does not exist), headroom of H_pen below log2 n (``log2_n`` of
    :func:`run_table`) and of I(X;Σ;Y) below log2 #classes (at the ceiling neither
    variant can move).  ``ebm`` (:func:`ebm_table`) adds the drift and the
    held-out pseudo-likelihood of each variant to the text.
    """
    out: list[Finding] = []
    if "variant" not in runs:
        return out
    for model in runs.model.unique():
        mine = runs[runs.model == model]
        have = set(mine.variant)
        if not {"learned", "prior"} <= have:
            continue
        ds = str(mine.dataset.iloc[0])
        comps = {m: ablation_comparison(runs, model, m) for m in ("H_pen", "I_XSY", "loss_gap", "test_loss")}
        texts, part_list = [], []
        for m, c in comps.items():
            if c.empty:
                continue
            cells = "; ".join(f"λ={r.lam:g}: {_interval(r)}" for r in c.itertuples())
            texts.append(f"{m} learned − prior: {cells}")
            if m in ("H_pen", "I_XSY"):
                lower = bool((c.hi < 0).any())
                part_list.append((f"learned lower on {m}", lower))
                if not lower:
                    part_list.append((f"learned differs on {m}", bool(c.differs.any())))
            else:
                part_list.append((f"learned differs on {m}", bool(c.differs.any())))
        if "authors" in have:
            ca = ablation_comparison(runs, model, "H_pen", "authors", "prior")
            if not ca.empty:
                texts.append("H_pen authors − prior: " + "; ".join(
                    f"λ={r.lam:g}: {_interval(r)}" for r in ca.itertuples()))
        if ebm is not None and not ebm.empty and "variant" in ebm:
            e = ebm[ebm.model == model].groupby("variant")[["drift", "pl_model", "pl_prior", "pl_gain"]].mean()
            texts.append("energy nets (mean over runs): " + "; ".join(
                f"{v}: drift {r.drift:.2g}, held-out PL {r.pl_model:.3f} vs prior {r.pl_prior:.3f} nats/gate"
                for v, r in e.iterrows()))
        lams = sorted(set(mine[mine.variant == "learned"].lam) & set(mine[mine.variant == "prior"].lam))
        both = mine[mine.variant.isin(["learned", "prior"]) & mine.lam.isin(lams)]
        per_cell = int(both.groupby(["variant", "lam"]).seed.nunique().min()) if len(both) else 0
        n_classes = data_mod.DATASETS[ds].num_classes
        ceiling = float(both.log2_n.max()) if "log2_n" in both and len(both) else float("nan")
        pre = [learned(f"{model} on {ds} (learned and prior, every λ > 0)", both.test_acc.tolist(), str(model), ds),
               enough("seeds per variant and λ", per_cell, int(THRESHOLDS["min_seeds_curve"])),
               headroom("H(Σ_l) of the penalised layers", both.H_pen.tolist(), ceiling),
               class_headroom("I(X;Σ;Y)", both.I_XSY.tolist(), n_classes)]
        lower_h = any(h for lab, h in part_list if lab.startswith("learned lower"))
        other = any(h for lab, h in part_list if not lab.startswith("learned lower"))
        v = judge(lower_h if part_list else None, pre, partly=other)
        parts = ""
        if v == PARTLY:
            parts = (f"held: {', '.join(lab for lab, h in part_list if h)}; "
                     f"not held: {', '.join(lab for lab, h in part_list if not h) or 'none'}")
        seeds = mine.seed.nunique()
        out.append(Finding(
            f"ablation:{model}", CHAPTER,
            "Sec. 4.3 / App. J: the complexity loss penalises H(Σ_l) through a learned energy model of p(σ_l); "
            "ablation: does its effect differ from penalising the prior alone (Σ −log q ≈ C_l)?",
            f"{ds}, {seeds} seed(s), {int(CONFIDENCE * 100)}% Welch intervals: " + " | ".join(texts) + ".",
            v, setting, preconditions=pre, parts=parts,
        ))
    return out


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def plot_vs_lambda(ax: Any, agg: pd.DataFrame, model: str, metric: str, *, ceiling: float | None = None,
                   ceiling_label: str = "", variant: str | None = None, baseline: bool = True) -> Any:
    """Figure 7 / 8 style: mean ± sd over seeds against λ on a log axis.

    The λ = 0 baseline cannot sit on a log axis: it is drawn as a dashed
    horizontal line with its ± sd band, as in Figure 8 (``baseline=False``: not
    drawn, for a second variant on the same axes).  ``variant``: with an
    :func:`aggregate` of several penalty variants, the λ > 0 curve of this one.
    """
    sel = agg[(agg.model == model) & (agg.metric == metric)].sort_values("lam")
    if "variant" in sel:
        if variant is None:
            names = sorted(set(sel[sel.lam > 0].variant))
            if len(names) > 1:
                raise ValueError(f"the aggregate holds the variants {names}: pass variant=")
        else:
            sel = sel[(sel.lam == 0) | (sel.variant == variant)]
    if sel.empty:
        raise ValueError(f"no aggregated rows for {model!r} / {metric!r}")
    pos, base = sel[sel.lam > 0], sel[sel.lam == 0]
    label = f"{model}, λ > 0" + (f", {variant}" if variant else "")
    line = ax.plot(pos.lam, pos["mean"], marker="o", ms=4, label=label)[0]
    if (pos.n > 1).any():
        ax.fill_between(pos.lam, pos["mean"] - pos["std"], pos["mean"] + pos["std"], color=line.get_color(),
                        alpha=0.2, lw=0)
    if baseline and not base.empty:
        b, s = float(base["mean"].iloc[0]), float(base["std"].iloc[0])
        ax.axhline(b, ls="--", color="0.2", lw=1.2, label=f"{model}, λ = 0")
        if s > 0:
            ax.axhspan(b - s, b + s, color="0.2", alpha=0.08, lw=0)
    if ceiling is not None:
        ax.axhline(ceiling, ls=":", color="0.4", lw=1)
        ax.annotate(ceiling_label, (1.0, ceiling), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color="0.3")
    ax.set_xscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel(METRICS.get(metric, metric))
    return ax
