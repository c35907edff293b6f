"""Chapter 6: the appendix experiments (Appendix H / Figure 9, Appendix G / Table 1).

(a) **alpha sensitivity** (Appendix H, Figure 9).  The KDE of Eq. 2 puts a
Gaussian of variance sigma0^2 = alpha * d on every gating state.  The paper shows
I(X;Sigma) and I(Sigma;Y) of MLP-alpha on MNIST over training for several alpha
and states: "the value of alpha did not affect the change of the complexity
during the training process".  For a deterministic network I(X;Sigma) = H(Sigma)
(Eq. 3 with H(Sigma|X) = 0) and the label term is I(X;Sigma;Y) of Eq. 4.

How it is run, and why: the metrics for every alpha are functions of the *same*
gating states, so one training run per seed suffices.  A run measures one alpha
and keeps only its last checkpoint, so :func:`record_training_states` trains it
with :func:`~tcomplex.experiments.train.train` and a callback that stores the
analysis set's gating states (packed bits) at every tracked epoch;
:func:`alpha_metrics` then evaluates any list of alpha on the stored states
without retraining.  The alternatives cost more: one run per alpha trains
``len(alphas)`` times, and one ``train`` per tracked epoch trains sum(tracked
epochs) epochs.

The verdict (:func:`trend_consistency`): curves of different alpha agree when
every pair of curves *with headroom* is strongly rank-correlated over the tracked
epochs (minimum pairwise Spearman rho >= the report's ``min_rho_agree``), per
metric.  A curve within the report's margin of its ceiling (log2 n for H,
log2 #classes for I(X;Sigma;Y)) at a tracked epoch reflects n, not the network,
and is left out of the correlations.  The verdict is inconclusive when a
precondition fails (:func:`alpha_findings`): the network did not learn, too few
seeds or tracked epochs, fewer than two alphas with headroom, the paper's own
alpha (0.01 for FC gates) without headroom, or a Fisher-z interval of the
deciding rho that does not decide.

(b) **Table 1** (Appendix G): test accuracies of the trained networks beside the
paper's (:data:`PAPER_TABLE1`); :func:`table1_verdict` compares them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tcomplex.experiments.measure import ALL, measure
from tcomplex.experiments.report import (
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    THRESHOLDS,
    Finding,
    Precondition,
    accuracy_threshold,
    enough,
    fisher_ci,
    headroom,
    judge,
    learned,
)
from tcomplex.experiments.studies.common import Context, fmt_value, train_many
from tcomplex.experiments.runs import RunDir
from tcomplex.experiments.train import TrainConfig, TrainState, recipe_config, train
from tcomplex.gating import ALPHA_FC, record_gates

__all__ = [
    "CHAPTER",
    "PAPER_ALPHAS",
    "RHO_THRESHOLD",
    "PAPER_TABLE1",
    "TABLE1_SOURCE",
    "ARCHITECTURES",
    "REPRODUCE_TOL",
    "alpha_config",
    "record_training_states",
    "load_states",
    "alpha_metrics",
    "alpha_accuracy",
    "trend_consistency",
    "saturation_table",
    "alpha_findings",
    "Table1Cell",
    "table1_cells",
    "table1_config",
    "table1",
    "table1_verdict",
    "table1_findings",
    "table1_pivot",
    "table1_comparisons",
    "substitution_text",
    "table1_label",
    "plot_alpha_curves",
]

CHAPTER = "06_appendix"

#: alpha values of our Figure 9 (the paper does not list the values it plotted;
#: these bracket its defaults 0.01 (FC) and 0.04 (conv) by factors of 2).
PAPER_ALPHAS: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)

#: minimum pairwise Spearman rho over epochs for "the trend is consistent" (the report's threshold)
RHO_THRESHOLD = THRESHOLDS["min_rho_agree"]
#: at least this many tracked epochs for a rank correlation to mean anything (the report's threshold)
MIN_EPOCHS = int(THRESHOLDS["min_points_rank"])

#: Appendix G, Table 1 (a) and (b): test accuracy (%) of the paper's networks,
#: keyed by our dataset names and architecture keys of :data:`ARCHITECTURES`.
TABLE1_SOURCE = "Appendix G, Table 1 (a) MNIST and CIFAR-10, (b) CelebA and Pascal VOC 2012"
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "mnist": {"mlp": 96.52, "lenet5": 97.41, "resnet20": 98.70, "resnet32": 98.24, "vgg11_revised": 99.00},
    "cifar10": {"mlp": 52.52, "lenet5": 61.5, "resnet20": 81.75, "resnet32": 79.76, "vgg11_revised": 84.53},
    "celeba": {"resnet18": 80.25, "resnet34": 80.91, "vgg16": 89.70},
    "voc2012_crops": {"resnet18": 67.99, "resnet34": 64.27, "vgg16": 62.50},
}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "celeba": "CelebA", "voc2012_crops": "Pascal VOC 2012",
                 "fashion_mnist": "Fashion-MNIST"}
#: Table 1's column names
ARCHITECTURES = {"mlp": "MLP", "lenet5": "LeNet-5", "resnet20": "ResNet-20", "resnet32": "ResNet-32",
                 "vgg11_revised": "revised VGG-11", "resnet18": "ResNet-18", "resnet34": "ResNet-34",
                 "vgg16": "VGG-16"}

#: Table 1 verdict: reproduced within this many percentage points of the paper (or above it), else not
#: reproduced (a cell has no parts, so no "partly"), once the network converged (:func:`table1_findings`)
REPRODUCE_TOL = 1.5

#: Table 1 needs no complexity: a small analysis set and training-accuracy sample keep tracking cheap
TABLE1_ANALYSIS_PER_CLASS = 10
TABLE1_EVAL_TRAIN = 2000


# ---------------------------------------------------------------------------
# (a) alpha sensitivity: train once, store the gating states, measure every alpha
# ---------------------------------------------------------------------------
def alpha_config(model: str, dataset: str, epochs: int, seed: int, train_subset: int | None,
                 analysis_per_class: int, track_every: int) -> TrainConfig:
    """The run behind Figure 9: ``model`` on ``dataset``, states tracked every ``track_every``
    epochs plus the log-spaced early epochs (so the early change is visible)."""
    return recipe_config(model, dataset=dataset, epochs=epochs, seed=seed, train_subset=train_subset,
                         analysis_per_class=analysis_per_class, track_every=track_every, track_log=True,
                         per_layer=False, rates=False)


def _states_root(ctx: Context) -> Path:
    return ctx.runs / "alpha_states"


def record_training_states(cfg: TrainConfig, ctx: Context) -> Path:
    """Train ``cfg`` and store Sigma of the analysis set at every tracked epoch.

    The run is an ordinary :func:`~tcomplex.experiments.train.train` run under
    ``<runs>/alpha_states/`` (checkpoint every epoch, resumed after an
    interruption) with a callback that, at every tracked epoch, adds to the run's
    folder ``epoch_XXXXX.npz`` (the concatenated bool states of all gating layers
    of the analysis set, packed bits) and ``epoch_XXXXX.json`` (test loss and
    accuracy, epoch seconds, from the tracked rows); ``labels.npy`` holds the
    labels.  A finished run is reused as is.
    """
    run = RunDir(_states_root(ctx), cfg)

    def store(st: TrainState) -> None:
        if st.data.analysis_y is None:
            raise ValueError(f"the alpha sweep needs a classification dataset, got task {cfg.task!r}")
        if st.epoch == 0 or not (run.path / "labels.npy").exists():
            np.save(run.path / "labels.npy", st.data.analysis_y.numpy())
        model = st.model
        was_training = model.training
        model.eval()
        try:
            states = record_gates(model, st.data.analysis_x.to(st.device), kinds=cfg.kinds).concat().cpu().numpy()
        finally:
            model.train(was_training)
        np.savez_compressed(run.path / f"epoch_{st.epoch:05d}.npz", bits=np.packbits(states, axis=1),
                            width=states.shape[1])
        got = {r["metric"]: r["value"] for r in st.rows if r["layer"] == ALL}
        (run.path / f"epoch_{st.epoch:05d}.json").write_text(json.dumps(
            {"epoch": st.epoch, "test_loss": got["test_loss"], "test_acc": got["test_acc"],
             "epoch_seconds": st.seconds}))

    train(cfg, run.root, data_root=ctx.data_root, progress=False, callbacks={"on_tracked_epoch": store})
    return run.path


def load_states(folder: Path) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The stored states (epoch -> bool ``[n, d]``) and labels of :func:`record_training_states`."""
    states = {}
    for f in sorted(folder.glob("epoch_*.npz")):
        z = np.load(f)
        bits = np.unpackbits(z["bits"], axis=1, count=int(z["width"])).astype(bool)
        states[int(f.stem.split("_")[1])] = torch.from_numpy(bits)
    return states, torch.from_numpy(np.load(folder / "labels.npy"))


def alpha_metrics(cfgs: Sequence[TrainConfig], ctx: Context, alphas: Sequence[float]) -> pd.DataFrame:
    """H(Sigma) (= I(X;Sigma)) and I(X;Sigma;Y) of the whole network for every alpha, seed and epoch.

    Trains (or reuses) one run per config; rows: seed, epoch, alpha, metric
    (``H`` or ``I_XSY``), value, ceiling and saturated (the :class:`Estimate`
    flags), n and width.  Estimates are cached in the run's folder
    (``metrics.csv``, :meth:`RunDir.cached_rows`), so only alphas not computed
    before cost anything.
    """
    frames = []
    for cfg in cfgs:
        folder = record_training_states(cfg, ctx)

        def compute(todo: list[float], cfg: TrainConfig = cfg, folder: Path = folder) -> pd.DataFrame:
            states, y = load_states(folder)
            rows = []
            for epoch, s in states.items():
                for r in measure(s, y, alphas=todo):
                    rows.append({"seed": cfg.seed, "epoch": epoch, "alpha": r["alpha"], "metric": r["metric"],
                                 "value": r["value"], "ceiling": r["ceiling"], "saturated": r["saturated"],
                                 "n": r["n"], "width": r["width"]})
            return pd.DataFrame(rows)

        frames.append(RunDir(_states_root(ctx), cfg).cached_rows("metrics", "alpha", alphas, compute))
    out = pd.concat(frames, ignore_index=True)
    out["saturated"] = out.saturated.astype(bool)
    return out.sort_values(["seed", "epoch", "alpha", "metric"], ignore_index=True)


def alpha_accuracy(cfgs: Sequence[TrainConfig], ctx: Context) -> pd.DataFrame:
    """Test accuracy and loss (and epoch seconds) of the alpha-sweep runs per tracked epoch."""
    rows = []
    for cfg in cfgs:
        for f in sorted(record_training_states(cfg, ctx).glob("epoch_*.json")):
            rows.append({"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, **json.loads(f.read_text())})
    return pd.DataFrame(rows)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho; 0 when a curve is constant (a flat curve shows no trend to agree with)."""
    from scipy import stats

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b)[0])


def _has_headroom(curve: pd.DataFrame, metric: str) -> bool:
    """Every point of one alpha's curve (all seeds) at least the report's margin below its ceiling
    (``THRESHOLDS["headroom_bits"]`` for H, ``headroom_fraction_classes`` x log2 #classes for I(X;Σ;Y))."""
    ceiling = float(curve.ceiling.iloc[0])
    margin = THRESHOLDS["headroom_bits"] if metric == "H" else THRESHOLDS["headroom_fraction_classes"] * ceiling
    return bool(curve.value.max() <= ceiling - margin and not curve.saturated.astype(bool).any())


def trend_consistency(metrics: pd.DataFrame, metric: str, threshold: float = RHO_THRESHOLD,
                      reference_alpha: float = ALPHA_FC) -> dict[str, Any]:
    """Do the curves of ``metric`` over epochs for different alpha share their trend (Figure 9)?

    Usable alphas are those whose curve has headroom below its ceiling in every seed
    (:func:`_has_headroom`: the margin of the report's ``THRESHOLDS``, not just the
    estimator's saturation flag); every pair of them gets a Spearman rho over epochs per seed.
    The claim holds when the *minimum* pairwise rho is >= ``threshold`` (no median rule: one
    pair of disagreeing curves is a disagreement).

    Preconditions of the verdict: at least ``THRESHOLDS["min_points_rank"]`` tracked epochs;
    at least 2 usable alphas; the paper's own alpha for the network (``reference_alpha``, 0.01
    after FC layers; only when it is among the alphas) usable; and the 95% Fisher-z interval
    of the deciding rho (the minimum pair) decides: lower bound > 0 for a reproduction, upper
    bound < ``threshold`` for a non-reproduction.

    Returns a dict: alphas, saturated (alpha -> fraction of saturated points), usable,
    reference_usable, pairs (frame seed, alpha_a, alpha_b, rho, low, high), min_rho, min_low,
    min_high, median_rho, n_epochs, holds, preconditions, verdict (:func:`judge`).
    """
    sel = metrics[metrics.metric == metric]
    if sel.empty:
        raise ValueError(f"no rows for metric {metric!r}")
    alphas = sorted(sel.alpha.unique().tolist())
    sat_frac = sel.groupby("alpha").saturated.mean().to_dict()
    usable = [a for a in alphas if _has_headroom(sel[sel.alpha == a], metric)]
    has_ref = any(math.isclose(a, reference_alpha) for a in alphas)
    reference_usable = not any(math.isclose(a, reference_alpha) for a in alphas if a not in usable)
    n_epochs = int(sel.groupby("seed").epoch.nunique().min())
    pairs = []
    for seed, g in sel.groupby("seed"):
        wide = g.pivot_table(index="epoch", columns="alpha", values="value").sort_index()
        for a, b in itertools.combinations(usable, 2):
            rho = _spearman(wide[a].to_numpy(), wide[b].to_numpy())
            lo, hi = fisher_ci(rho, len(wide), rank=True)
            pairs.append({"seed": seed, "alpha_a": a, "alpha_b": b, "rho": rho, "low": lo, "high": hi})
    pairs = pd.DataFrame(pairs, columns=["seed", "alpha_a", "alpha_b", "rho", "low", "high"])
    worst = pairs.loc[pairs.rho.idxmin()] if len(pairs) else None
    min_rho = float(worst.rho) if worst is not None else math.nan
    min_low = float(worst.low) if worst is not None else math.nan
    min_high = float(worst.high) if worst is not None else math.nan
    median_rho = float(pairs.rho.median()) if len(pairs) else math.nan
    holds = bool(len(pairs) and min_rho >= threshold)
    pre = [enough("tracked epochs", n_epochs, int(THRESHOLDS["min_points_rank"])),
           enough("α with headroom", len(usable), 2)]
    if has_ref:
        ref = sel[np.isclose(sel.alpha, reference_alpha)]
        ceiling = float(ref.ceiling.iloc[0])
        margin = (THRESHOLDS["headroom_bits"] if metric == "H"
                  else THRESHOLDS["headroom_fraction_classes"] * ceiling)
        pre.append(headroom(f"{metric} at the paper's α = {reference_alpha:g}", ref.value.tolist(), ceiling, margin))
    shown = (f"[{min_low:.2f}, {min_high:.2f}]" if np.isfinite(min_low) else "no interval")
    if holds:
        pre.append(Precondition("min pairwise ρ: interval excludes 0", "95% CI lower bound > 0", shown,
                                bool(np.isfinite(min_low) and min_low > 0), "interval"))
    else:
        pre.append(Precondition("min pairwise ρ: interval below the agreement threshold",
                                f"95% CI upper bound < {threshold:g}", shown,
                                bool(np.isfinite(min_high) and min_high < threshold), "interval"))
    v = judge(holds, pre)
    return {"metric": metric, "alphas": alphas, "saturated": sat_frac, "usable": usable,
            "reference_usable": reference_usable, "pairs": pairs, "min_rho": min_rho, "min_low": min_low,
            "min_high": min_high, "median_rho": median_rho, "n_epochs": n_epochs, "holds": holds,
            "preconditions": pre, "verdict": v}


def saturation_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per metric and alpha: sigma0^2 = alpha*d, mean/min/max value over epochs and seeds,
    the ceiling, and the fraction of tracked points at the ceiling."""
    g = metrics.groupby(["metric", "alpha"])
    out = g.agg(mean=("value", "mean"), min=("value", "min"), max=("value", "max"),
                ceiling=("ceiling", "first"), saturated=("saturated", "mean"), width=("width", "first")).reset_index()
    out.insert(2, "sigma0^2", out.alpha * out.width)
    return out.drop(columns="width")


_METRIC_CLAIMS = {
    "H": "the value of α did not affect the change of the complexity I(X;Σ) during training",
    "I_XSY": "the value of α did not affect the change of I(Σ;Y) during training",
}


def _fmt_alpha(a: float) -> str:
    return f"{a:g}"


def alpha_findings(metrics: pd.DataFrame, setting: str, accuracy: pd.DataFrame | None = None,
                   model: str = "mlp_alpha", dataset: str = "mnist") -> list[Finding]:
    """Findings of Figure 9, one per metric (:func:`trend_consistency`), with its preconditions and
    two more: the network learned (``accuracy``: :func:`alpha_accuracy`, the last tracked epoch of
    every seed against :func:`~tcomplex.experiments.report.accuracy_threshold`; None: not measured)
    and at least ``THRESHOLDS["min_seeds_curve"]`` seeds."""
    found = []
    if accuracy is None or accuracy.empty:
        net = learned(f"{model} on {dataset}", [], model, dataset)
    else:
        last = accuracy[accuracy.epoch == accuracy.groupby("seed").epoch.transform("max")]
        net = learned(f"{model} on {dataset}", last.test_acc.tolist(), model, dataset)
    seeds = enough("seeds", int(metrics.seed.nunique()), int(THRESHOLDS["min_seeds_curve"]))
    for metric in ("H", "I_XSY"):
        r = trend_consistency(metrics, metric)
        sat = [a for a in r["alphas"] if a not in r["usable"]]
        ceiling = float(metrics[metrics.metric == metric].ceiling.iloc[0])
        what = "log2 n" if metric == "H" else "log2 #classes"
        sat_text = (f"without headroom (within the margin of {what} = {ceiling:.2f} at some epoch): "
                    f"α ∈ {{{', '.join(map(_fmt_alpha, sat))}}}" if sat else "every curve has headroom")
        rho_text = (f"min pairwise Spearman ρ over {r['n_epochs']} tracked epochs = {r['min_rho']:.2f} "
                    f"[{r['min_low']:.2f}, {r['min_high']:.2f}] (median {r['median_rho']:.2f}) among the "
                    f"{len(r['usable'])} α with headroom {{{', '.join(map(_fmt_alpha, r['usable']))}}}"
                    if len(r["pairs"]) else f"fewer than 2 α with headroom: no correlation ({r['n_epochs']} "
                    "tracked epochs)")
        pre = [net, seeds, *r["preconditions"]]
        found.append(Finding(
            f"alpha_{metric}", CHAPTER,
            f"Appendix H, Fig. 9 (MLP-α, MNIST): {_METRIC_CLAIMS[metric]} (criterion: min ρ ≥ {RHO_THRESHOLD} "
            f"over every pair of α with headroom, the paper's α = {ALPHA_FC:g} among them).",
            f"{rho_text}; {sat_text}.", judge(r["holds"], pre), setting, preconditions=pre,
        ))
    return found


def plot_alpha_curves(metrics: pd.DataFrame, accuracy: pd.DataFrame) -> Any:
    """Figure 9: H and I(X;Sigma;Y) against epochs, one line per alpha (mean over seeds;
    saturated curves dashed), with the ceilings; the second row shows each unsaturated
    curve standardised (zero mean, unit sd over epochs) so that trends can be compared
    across alpha; the last column shows test accuracy and the legend."""
    import matplotlib.pyplot as plt

    from tcomplex.plots import mark_ceiling

    alphas = sorted(metrics.alpha.unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(alphas)))
    log_x = metrics.epoch.max() > 20
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.2))
    titles = {"H": "I(X;Σ) = H(Σ) [bits]", "I_XSY": "I(Σ;Y) = I(X;Σ;Y) [bits]"}
    handles = []
    for col, metric in enumerate(("H", "I_XSY")):
        sel = metrics[metrics.metric == metric]
        for a, c in zip(alphas, colors):
            m = sel[sel.alpha == a].groupby("epoch").value.mean()
            sat = bool(sel[sel.alpha == a].saturated.any())
            line = axes[0, col].plot(m.index, m.values, "--" if sat else "-", marker="o", ms=3, color=c,
                                     label=f"α = {a:g}" + (" (saturated)" if sat else ""))[0]
            if col == 0:
                handles.append(line)
            if not sat and m.std() > 0:
                axes[1, col].plot(m.index, (m - m.mean()) / m.std(), marker="o", ms=3, color=c)
        mark_ceiling(axes[0, col], float(sel.ceiling.iloc[0]), "log2 n" if metric == "H" else "log2 #classes")
        axes[0, col].set_title(titles[metric])
        axes[1, col].set_title(titles[metric].split(" [")[0] + ", standardised (unsaturated α)")
    acc = accuracy.groupby("epoch").test_acc.mean()
    axes[0, 2].plot(acc.index, acc.values, marker="o", ms=3, color="k")
    if {"model", "dataset"} <= set(accuracy.columns) and len(accuracy):
        need = accuracy_threshold(str(accuracy.model.iloc[0]), str(accuracy.dataset.iloc[0]))
        axes[0, 2].axhline(need, color="0.5", ls=":", lw=1)
        axes[0, 2].annotate("learned", (0.01, need), xycoords=("axes fraction", "data"), va="bottom", fontsize=8,
                            color="0.4")
    axes[0, 2].set_ylim(0, 1.02)  # the whole range: a network at chance shows as one
    axes[0, 2].set_title("test accuracy (mean over seeds)")
    for ax in axes.flat[:5]:
        if log_x:
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("epoch")
    axes[1, 2].axis("off")
    axes[1, 2].legend(handles=handles, loc="center", title="KDE width σ0² = α·d")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# (b) Table 1
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Table1Cell:
    """One cell of Table 1 as we run it.

    paper_dataset: the paper's column (a key of :data:`PAPER_TABLE1`);
    dataset: the dataset we train on (equal, or a stand-in such as Fashion-MNIST);
    arch: a key of :data:`ARCHITECTURES`; epochs and train_subset: our budget.
    """

    paper_dataset: str
    dataset: str
    arch: str
    epochs: int
    train_subset: int | None

    @property
    def substituted(self) -> bool:
        return self.dataset != self.paper_dataset

    @property
    def model(self) -> str:
        """Registry model: the MLP is MLP-CIFAR10 in the CIFAR-10 column, MLP-MNIST elsewhere."""
        if self.arch == "mlp":
            return "mlp_cifar10" if self.paper_dataset == "cifar10" else "mlp_mnist"
        return self.arch

    @property
    def paper_acc(self) -> float:
        return PAPER_TABLE1[self.paper_dataset][self.arch]


def table1_cells(spec: Sequence[Sequence[Any]]) -> list[Table1Cell]:
    """Cells from the notebook parameter: ``[[paper_dataset, dataset, arch, epochs, train_subset], ...]``."""
    cells = []
    for item in spec:
        if len(item) != 5:
            raise ValueError(f"a Table 1 cell is [paper_dataset, dataset, arch, epochs, train_subset], got {item!r}")
        cell = Table1Cell(str(item[0]), str(item[1]), str(item[2]), int(item[3]),
                          None if item[4] is None else int(item[4]))
        if cell.paper_dataset not in PAPER_TABLE1:
            raise ValueError(f"paper dataset {cell.paper_dataset!r} is not a column of Table 1: {sorted(PAPER_TABLE1)}")
        if cell.arch not in PAPER_TABLE1[cell.paper_dataset]:
            raise ValueError(f"Table 1 has no {cell.arch!r} on {cell.paper_dataset!r}: "
                             f"{sorted(PAPER_TABLE1[cell.paper_dataset])}")
        cells.append(cell)
    return cells


def table1_config(cell: Table1Cell, seed: int, test_subset: int | None) -> TrainConfig:
    """Training of one cell: the substrate's defaults (SGD, lr 0.01, momentum 0.9,
    weight decay 5e-4, batch 128); complexity measured only at the last epoch
    (``track_epochs=[epochs]``, whole network only) since Table 1 needs none."""
    return recipe_config(cell.model, dataset=cell.dataset, epochs=cell.epochs, seed=seed,
                         train_subset=cell.train_subset, test_subset=test_subset, track_every=0, track_log=False,
                         track_epochs=[cell.epochs], per_layer=False, rates=False,
                         analysis_per_class=TABLE1_ANALYSIS_PER_CLASS, eval_train_size=TABLE1_EVAL_TRAIN)


def table1_verdict(ours: float, paper: float, substituted: bool) -> str:
    """Reproduced when our accuracy (%) is at most :data:`REPRODUCE_TOL` points below the
    paper's (or above it), else not reproduced; a cell trained on a substituted dataset is
    not measured.  (:func:`table1_findings` adds the convergence precondition.)"""
    if substituted:
        return NOT_MEASURED
    return REPRODUCED if paper - ours <= REPRODUCE_TOL else NOT_REPRODUCED


def table1_converged(train_acc: float, paper: float) -> Precondition:
    """A Table 1 cell can test the paper's number only when the network converged: its training
    accuracy (%) reaches the paper's test accuracy minus ``THRESHOLDS["table1_train_margin"]``
    points (a converged network fits its training images at least as well as the paper's
    generalises; one that does not is still learning, and its test accuracy measures the budget)."""
    need = paper - THRESHOLDS["table1_train_margin"]
    if train_acc is None or not np.isfinite(train_acc):
        return Precondition("network converged", f"training accuracy >= {need:.2f}%", "not measured", False,
                            "enough", math.nan, need)
    return Precondition("network converged", f"training accuracy >= {need:.2f}%", f"{train_acc:.2f}%",
                        bool(train_acc >= need), "enough", float(train_acc), need)


def table1(cells: Sequence[Table1Cell], ctx: Context, seeds: Sequence[int],
           test_subset: int | None = None) -> pd.DataFrame:
    """Train every cell (cached) and report its test accuracy beside the paper's.

    Columns: paper_dataset, dataset, arch, model, epochs, train_subset, seeds,
    test_acc, train_acc and paper_acc (%, ours averaged over seeds), diff (ours - paper,
    percentage points), epoch_seconds (mean), verdict.
    """
    rows = []
    for cell in cells:
        cfgs = [table1_config(cell, s, test_subset) for s in seeds]
        res = train_many(cfgs, ctx, desc=f"Table 1: {cell.arch} on {cell.dataset}")
        last = res[(res.epoch == cell.epochs) & (res.layer == "__all__")]
        acc = 100 * float(last[last.metric == "test_acc"].value.mean())
        train_acc = 100 * float(last[last.metric == "train_acc"].value.mean())
        secs = res[res.metric == "epoch_seconds"].value
        rows.append({
            "paper_dataset": cell.paper_dataset, "dataset": cell.dataset, "arch": cell.arch, "model": cell.model,
            "epochs": cell.epochs, "train_subset": cell.train_subset, "seeds": len(cfgs),
            "test_acc": acc, "train_acc": train_acc, "paper_acc": cell.paper_acc, "diff": acc - cell.paper_acc,
            "epoch_seconds": float(secs.mean()) if len(secs) else math.nan,
            "verdict": table1_verdict(acc, cell.paper_acc, cell.substituted),
        })
    return pd.DataFrame(rows)


def table1_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 in the paper's layout: rows = paper datasets, columns = architectures,
    cells "ours % (paper %)", with the dataset we trained on in the row name."""
    out: dict[str, dict[str, str]] = {}
    for r in table.itertuples():
        name = DATASET_NAMES.get(r.paper_dataset, r.paper_dataset)
        if r.dataset != r.paper_dataset:
            name += f" (ran {DATASET_NAMES.get(r.dataset, r.dataset)})"
        out.setdefault(name, {})[ARCHITECTURES[r.arch]] = f"{r.test_acc:.2f} ({r.paper_acc:.2f})"
    cols = [ARCHITECTURES[a] for a in ARCHITECTURES if ARCHITECTURES[a] in {c for v in out.values() for c in v}]
    return pd.DataFrame.from_dict(out, orient="index").reindex(columns=cols).fillna("").rename_axis("dataset")


def table1_findings(table: pd.DataFrame, profile: str, setting: str) -> list[Finding]:
    """One finding per cell of the paper's Table 1; cells this profile did not run are not measured.

    A cell trained on the paper's dataset gets two preconditions: the network learned (test
    accuracy against :func:`~tcomplex.experiments.report.accuracy_threshold`, shown in the
    report's table of networks) and converged (:func:`table1_converged`); when one fails the
    cell is inconclusive: its budget, not the architecture, decided the number.
    """
    found = []
    ran = {(r.paper_dataset, r.arch): r for r in table.itertuples()}
    for paper_ds, accs in PAPER_TABLE1.items():
        for arch, paper_acc in accs.items():
            claim = (f"Appendix G, Table 1: {ARCHITECTURES[arch]} reaches {paper_acc:.2f}% test accuracy on "
                     f"{DATASET_NAMES[paper_ds]}.")
            r = ran.get((paper_ds, arch))
            pre: list[Precondition] = []
            if r is None:
                measured = f"not run in profile {profile}."
                verdict_ = NOT_MEASURED
            else:
                budget = (f"{fmt_value(r.epochs)} epoch(s), {fmt_value(r.train_subset)} training images, "
                          f"{fmt_value(r.seeds)} seed(s)")
                if r.dataset != r.paper_dataset:
                    ours = DATASET_NAMES.get(r.dataset, r.dataset)
                    measured = (f"{r.test_acc:.2f}% on {ours} ({budget}), a stand-in for "
                                f"{DATASET_NAMES[paper_ds]}: not comparable with the paper's number.")
                    verdict_ = NOT_MEASURED
                else:
                    train_acc = float(getattr(r, "train_acc", math.nan))
                    measured = (f"{r.test_acc:.2f}% ({r.diff:+.2f} points; training accuracy "
                                + (f"{train_acc:.2f}%" if np.isfinite(train_acc) else "not measured")
                                + f"; {budget}).")
                    pre = [learned(f"{r.model} on {r.dataset} (Table 1)", [r.test_acc / 100], r.model, r.dataset),
                           table1_converged(train_acc, paper_acc)]
                    verdict_ = judge(paper_acc - r.test_acc <= REPRODUCE_TOL, pre)
            found.append(Finding(f"table1_{paper_ds}_{arch}", CHAPTER, claim, measured, verdict_, setting,
                                 preconditions=pre))
    return found


def table1_comparisons(cells: Sequence[Table1Cell], seeds: Sequence[int]) -> list[tuple[str, Any, Any]]:
    """(what, paper, ours) of Table 1's setting for :func:`setting_note`."""
    def names(datasets: Any) -> str:
        return ", ".join(dict.fromkeys(DATASET_NAMES.get(d, d) for d in datasets))

    subs = sorted({f"{DATASET_NAMES[c.paper_dataset]} → {DATASET_NAMES.get(c.dataset, c.dataset)}"
                   for c in cells if c.substituted})
    epochs = sorted({c.epochs for c in cells})
    subsets = sorted({fmt_value(c.train_subset) for c in cells})
    return [
        ("Table 1 columns", names(PAPER_TABLE1), names(c.paper_dataset for c in cells)),
        ("cells", sum(len(v) for v in PAPER_TABLE1.values()), len(cells)),
        ("dataset substitutions", "none", "; ".join(subs) or "none"),
        ("epochs", "not stated", "/".join(map(str, epochs))),
        ("training images per run", "all", "/".join(subsets)),
        ("seeds per cell", 1, len(seeds)),
    ]


def substitution_text(cells: Sequence[Table1Cell]) -> str:
    """Markdown warning for the cells trained on a stand-in dataset (empty if none)."""
    subs = sorted({(c.paper_dataset, c.dataset) for c in cells if c.substituted})
    if not subs:
        return ""
    parts = [f"**{DATASET_NAMES[p]}** is not available here; its column was trained on "
             f"**{DATASET_NAMES.get(d, d)}** instead" for p, d in subs]
    return ("; ".join(parts) + ". Those accuracies are **not comparable** with the paper's numbers and their "
            f"cells are marked *{NOT_MEASURED}*: they only show that the architectures train.")


def table1_label(row: Any) -> str:
    """Axis label of one Table 1 cell: architecture, then the paper's dataset (-> ours if substituted)."""
    ds = DATASET_NAMES.get(row.paper_dataset, row.paper_dataset)
    if row.dataset != row.paper_dataset:
        ds += f" →\n{DATASET_NAMES.get(row.dataset, row.dataset)}"
    return f"{ARCHITECTURES[row.arch]}\n{ds}"
