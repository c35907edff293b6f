"""Chapter 1: the three metrics and the propositions (Sections 3, 4.1; Appendix D).

* the metrics H(Sigma), I(X;Sigma;Y) on a trained network, whole and per layer;
* Proposition 1: I(X;Sigma;Y) >= 0 for a deterministic network;
* Proposition 2 / Figure 1: H(Sigma_l..Sigma_L) non-increasing in l, by the exact
  plug-in entropy and by the KDE bound (whose sigma0^2 = alpha*d changes with d);
* Eq. 6: H + TC = C, exact for plug-in estimates;
* the two bandwidth conventions side by side, and where each saturates at log2 n.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from tcomplex.experiments import data as data_mod
from tcomplex.experiments.measure import ALL, measure
from tcomplex.experiments.report import (
    THRESHOLDS,
    Finding,
    class_headroom,
    headroom,
    judge,
    judged,
    learned_from_rows,
)
from tcomplex.experiments.studies.common import Context, load_trained_model
from tcomplex.experiments.train import TrainConfig, analysis_set_for
from tcomplex.gating import Recording, record_gates

__all__ = ["configs", "suffix_table", "prop1", "prop2", "eq6_table", "bandwidth_table", "findings"]

CHAPTER = "01_metrics"


def configs(model: str, dataset: str, epochs: int, seeds: list[int], train_subset: int | None,
            analysis_per_class: int, track_every: int) -> list[TrainConfig]:
    """The training runs of chapter 1 (suffix entropies tracked)."""
    return [
        TrainConfig(model=model, dataset=dataset, epochs=epochs, seed=s, train_subset=train_subset,
                    analysis_per_class=analysis_per_class, track_every=track_every, suffix=True, rates=False)
        for s in seeds
    ]


def suffix_table(rows: pd.DataFrame) -> pd.DataFrame:
    """H(Sigma_l..Sigma_L) per seed, epoch and l, KDE and plug-in side by side."""
    sel = rows[rows.layer.str.startswith("suffix:")].copy()
    sel["l"] = sel.layer.str.split(":").str[1].astype(int)
    wide = sel.pivot_table(index=["seed", "epoch", "l"], columns="metric", values="value").reset_index()
    return wide.rename(columns={"H": "H_kde"})


def _violations(table: pd.DataFrame, column: str, tol: float) -> pd.DataFrame:
    """(seed, epoch, l) where H(Sigma_l..) < H(Sigma_{l+1}..) - tol."""
    out = []
    for (seed, epoch), g in table.groupby(["seed", "epoch"]):
        v = g.sort_values("l")[column].to_numpy()
        for i in range(len(v) - 1):
            if v[i] < v[i + 1] - tol:
                out.append({"seed": seed, "epoch": epoch, "l": i + 1, "H_l": v[i], "H_l+1": v[i + 1]})
    return pd.DataFrame(out, columns=["seed", "epoch", "l", "H_l", "H_l+1"])


def prop1(rows: pd.DataFrame) -> dict[str, float]:
    """Smallest I(X;Sigma;Y) over every tracked epoch, seed and layer."""
    ii = rows[rows.metric == "I_XSY"].value
    return {"min": float(ii.min()), "n": int(len(ii)), "negative": int((ii < -1e-9).sum())}


def prop2(table: pd.DataFrame, tol: float = 1e-9) -> dict[str, object]:
    """Monotonicity of the suffix entropies: violations for plug-in and KDE."""
    plug = _violations(table, "H_plugin", tol)
    kde = _violations(table, "H_kde", tol)
    checks = len(table) - table.groupby(["seed", "epoch"]).ngroups
    return {"checks": checks, "plugin": plug, "kde": kde}


def _final_recording(cfg: TrainConfig, ctx: Context) -> tuple[Recording, torch.Tensor]:
    """The trained model's gating states on the run's own analysis set (:func:`analysis_set_for`)."""
    model = load_trained_model(cfg, ctx)
    x, y = analysis_set_for(cfg, ctx.data_root)
    return record_gates(model, x, kinds=cfg.kinds), y


def eq6_table(cfg: TrainConfig, ctx: Context) -> pd.DataFrame:
    """Per layer of the trained model: plug-in H, TC, C and |H + TC - C| (Eq. 6)."""
    rec, _ = _final_recording(cfg, ctx)
    rows = pd.DataFrame(measure(rec, whole_network=False, rates=False, plugin=True))
    wide = rows.pivot(index="layer", columns="metric", values="value").loc[rec.names]
    out = pd.DataFrame({"layer": rec.names, "d": wide.width.astype(int).to_numpy(),
                        "H_plugin": wide.H_plugin.to_numpy(), "TC_plugin": wide.TC_plugin.to_numpy(),
                        "C": wide.C.to_numpy()})
    out["abs_error"] = (out.H_plugin + out.TC_plugin - out.C).abs()
    return out


def bandwidth_table(cfg: TrainConfig, ctx: Context) -> pd.DataFrame:
    """H and I(X;Sigma;Y) of each layer and of all layers under both bandwidth rules, with the log2 n ceiling.

    alpha is each layer's default (0.01 after FC, 0.04 after conv; Section 4.4)
    and, for all layers together, 0.04 as soon as one of them follows a convolution.
    """
    rec, y = _final_recording(cfg, ctx)
    sweeps = {bw: pd.DataFrame(measure(rec, y, alphas=[None], bandwidth=bw)) for bw in ("dims", "variance")}
    rows = []
    for name in [*rec.names, ALL]:
        entry = {"layer": "all layers" if name == ALL else name, "d": rec.concat().shape[1] if name == ALL
                 else rec[name].shape[1], "log2_n": math.log2(len(y))}
        for bw, sweep in sweeps.items():
            h = sweep[(sweep.layer == name) & (sweep.metric == "H")].iloc[0]
            ii = sweep[(sweep.layer == name) & (sweep.metric == "I_XSY")].iloc[0]
            entry[f"sigma0^2 ({bw})"] = h.sigma2
            entry[f"H ({bw})"] = float(h.value)
            entry[f"I_XSY ({bw})"] = float(ii.value)
            entry[f"saturated ({bw})"] = bool(h.saturated)
        rows.append(entry)
    return pd.DataFrame(rows)


def _distinct_text(table: pd.DataFrame, log2_n: float) -> str:
    """How many (seed, epoch, l) suffixes give every analysis image its own pattern (plug-in H = log2 n)."""
    if "H_plugin" not in table:
        return "not measured"
    full = int((table.H_plugin >= log2_n - 1e-9).sum())
    return f"all n distinct in {full}/{len(table)} suffixes"


def findings(rows: pd.DataFrame, table: pd.DataFrame, eq6: pd.DataFrame, bw: pd.DataFrame,
             setting: str) -> list[Finding]:
    """The chapter's claims (Prop. 1, Prop. 2 on the KDE bound, the bandwidth rule) and sanity checks
    (Eq. 6 and Prop. 2 on the plug-in distribution, identities of the empirical distribution).

    Preconditions (:mod:`tcomplex.experiments.report`): the network learned (final test accuracy
    against :func:`~tcomplex.experiments.report.accuracy_threshold`), and the estimates the claim
    reads have headroom below their ceilings (I(X;Σ;Y) below log2 #classes for Prop. 1, every
    suffix H below log2 n for Prop. 2): an estimate pinned at its ceiling satisfies both
    propositions whatever the network does.
    """
    p1 = prop1(rows)
    p2 = prop2(table)
    n_plug, n_kde = len(p2["plugin"]), len(p2["kde"])
    seeds = sorted(rows.seed.unique().tolist())
    log2_n = float(bw.log2_n.iloc[0])
    dataset = str(rows.dataset.iloc[0])
    n_classes = data_mod.DATASETS[dataset].num_classes
    nets = learned_from_rows(rows)
    ii = rows[rows.metric == "I_XSY"].value
    head_ii = class_headroom("I(X;Σ;Y)", ii.tolist(), n_classes)
    head_h = headroom("suffix H(Σ_l..Σ_L) (KDE)", table.H_kde.tolist(), log2_n,
                      distinct=_distinct_text(table, log2_n))
    margin = THRESHOLDS["headroom_bits"]
    parts = [(f"{r.layer} (H {r['H (variance)']:.2f})", bool(r["H (variance)"] <= r.log2_n - margin))
             for _, r in bw.iterrows()]
    v_bw, parts_bw = judged(True, nets, parts)
    n_room = sum(h for _, h in parts)
    n_room_dims = int((bw["H (dims)"] <= bw.log2_n - margin).sum())
    return [
        Finding(
            "prop1", CHAPTER,
            "Proposition 1: I(X;Σ;Y) ≥ 0 for a network without sampling.",
            f"min I(X;Σ;Y) = {p1['min']:.3f} bits over {p1['n']} estimates (all tracked epochs and layers, "
            f"seeds {seeds}); {p1['negative']} negative.",
            judge(p1["negative"] == 0, [*nets, head_ii]), setting, preconditions=[*nets, head_ii],
        ),
        Finding(
            "prop2", CHAPTER,
            "Proposition 2 / Fig. 1: H(Σ_l,…,Σ_L) ≥ H(Σ_{l+1},…,Σ_L), read on the KDE bound of Eq. 2.",
            f"KDE bound (σ0² = α·d shrinks with d): {n_kde} violations in {p2['checks']} comparisons "
            f"(seeds {seeds}).",
            judge(n_kde == 0, [*nets, head_h]), setting, preconditions=[*nets, head_h],
        ),
        Finding(
            "prop2_plugin", CHAPTER,
            "Sanity check: on the plug-in (empirical) distribution, marginalising out Σ_l cannot raise the "
            "entropy, H(Σ_l,…,Σ_L) ≥ H(Σ_{l+1},…,Σ_L).",
            f"exact plug-in entropy: {n_plug} violations in {p2['checks']} comparisons "
            f"({_distinct_text(table, log2_n)}: those comparisons are ties at log2 n).",
            judge(n_plug == 0), setting, kind="sanity",
        ),
        Finding(
            "eq6", CHAPTER,
            "Sanity check, Eq. 6: H(Σ_l) + TC(Σ_l) = C_l on the plug-in distribution (an identity there).",
            f"plug-in estimates on {len(eq6)} layers of the trained model: max |H + TC − C| = "
            f"{eq6.abs_error.max():.1e} bits.",
            judge(bool(eq6.abs_error.max() < 1e-8)), setting, kind="sanity",
        ),
        Finding(
            "bandwidth", CHAPTER,
            "Eq. 2 with σ0² = α·Var(Σ_l) (the paper's text) measures complexity: its estimates stay below log2 n.",
            f"with σ0² = α·Var, {n_room}/{len(bw)} estimates have ≥ {margin:g} bit headroom below log2 n = "
            f"{log2_n:.2f}; with σ0² = α·d (authors' code), {n_room_dims}/{len(bw)}.",
            v_bw, setting, preconditions=nets, parts=parts_bw,
        ),
    ]


def summary_numbers(rows: pd.DataFrame) -> pd.DataFrame:
    """H and I(X;Σ;Y) of the whole network per epoch (mean over seeds), rounded."""
    sel = rows[(rows.layer == "__all__") & rows.metric.isin(["H", "I_XSY", "test_acc"])]
    return sel.pivot_table(index="epoch", columns="metric", values="value", aggfunc="mean").round(2)

