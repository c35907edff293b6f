"""Chapter 1: the three metrics and the propositions (Sections 3, 4.1; Appendix D).

* the metrics H(Sigma), I(X;Sigma;Y) on a trained network, whole and per layer;
* Proposition 1: I(X;Sigma;Y) >= 0 for a deterministic network;
* Proposition 2 / Figure 1: H(Sigma_l..Sigma_L) non-increasing in l, by the exact
  plug-in entropy and by the KDE bound (whose sigma0^2 = alpha*d changes with d);
* Eq. 6: H + TC = C, exact for plug-in estimates;
* the two bandwidth conventions side by side, and where each saturates at log2 n;
* Propositions 1 and 2 at operating points with headroom: an alpha sweep on the trained
  networks' states (:func:`prop_sweep`), with every part of Proposition 2 (H, I(T;Sigma),
  I(T;Sigma;Y)) and intervals over seeds (:func:`prop1_intervals`, :func:`prop2_intervals`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from tcomplex import estimators as est

from tcomplex.experiments import data as data_mod
from tcomplex.experiments.measure import ALL, measure
from tcomplex.experiments.report import (
    THRESHOLDS,
    Finding,
    Precondition,
    class_headroom,
    enough,
    fmt_ci,
    headroom,
    judge,
    judged,
    learned_from_rows,
    mean_ci,
)
from tcomplex.experiments.studies.common import Context, load_trained_model
from tcomplex.experiments.train import TrainConfig, analysis_set_for, recipe_config
from tcomplex.gating import Recording, record_gates, record_gates_with_and_without_sampling

__all__ = ["configs", "suffix_table", "prop1", "prop2", "eq6_table", "bandwidth_table", "findings",
           "suffix_information", "prop_sweep", "operating_alphas", "prop1_intervals", "prop2_intervals",
           "PROP2_PARTS", "SWEEP_COLUMNS"]

CHAPTER = "01_metrics"


def configs(model: str, dataset: str, epochs: int, seeds: list[int], train_subset: int | None,
            analysis_per_class: int, track_every: int) -> list[TrainConfig]:
    """The training runs of chapter 1 (suffix entropies tracked), on top of :func:`~tcomplex.experiments.train.recipe_config`."""
    return [
        recipe_config(model, dataset=dataset, epochs=epochs, seed=s, train_subset=train_subset,
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


# ---------------------------------------------------------------------------
# Propositions 1 and 2 at operating points with headroom (an alpha sweep)
# ---------------------------------------------------------------------------
#: the three inequalities of Proposition 2 (Appendix D.2), by the column of :func:`suffix_information`
PROP2_PARTS: dict[str, str] = {
    "H": "H(Σ_l..Σ_L) ≥ H(Σ_{l+1}..Σ_L)",
    "I_TS": "I(T_{l-1}; Σ_l..Σ_L) ≥ I(T_l; Σ_{l+1}..Σ_L)",
    "I_TSY": "I(T_{l-1}; Σ_l..Σ_L; Y) ≥ I(T_l; Σ_{l+1}..Σ_L; Y)",
}

SWEEP_COLUMNS = ["scope", "l", "layer", "d", "sigma2", "H", "I_TS", "I_TSY"]


def suffix_information(recording: Recording, labels: torch.Tensor, *, alpha: float,
                       without_sampling: Recording | None = None, bandwidth: str = "dims",
                       kernel: str = "per_suffix") -> pd.DataFrame:
    """Every KDE quantity of Propositions 1 and 2 at one kernel width ``alpha``.

    One row per suffix ``(Σ_l, ..., Σ_L)`` (``scope == "suffix"``, l = 1..L) and per single
    layer ``Σ_l`` (``scope == "layer"``), with ``d`` gates and the kernel variance ``sigma2``:

    * ``H``: H(Σ_l..Σ_L) by the upper bound of Eq. 2 (Proposition 2, first part);
    * ``I_TS``: I(T_{l-1}; Σ_l..Σ_L) by Eq. 3, i.e. Eq. 2 on the states recorded with sampling
      removed (``without_sampling``; Appendix D.2: Σ_l..Σ_L are functions of the feature
      T_{l-1}, which carries everything of X that reaches them).  For a network without
      sampling ``without_sampling`` may be omitted: the states are the same and I_TS = H
      (where the two recordings are bit-identical, Eq. 2's value is reused);
    * ``I_TSY``: I(T_{l-1}; Σ_l..Σ_L; Y) by Eq. 4 (the proof of Eq. 17 reads it as
      H(Y) - H(Y | Σ_l..Σ_L), Eq. 14).  T_0 = X, so the suffix l = 1 gives the whole
      network's I(X; Σ; Y) of Proposition 1; the ``layer`` rows give I(X; Σ_l; Y).

    ``kernel="per_suffix"`` (default): one sigma0^2 per set of states (``bandwidth``: ``"dims"``,
    alpha times its number of gates, or ``"variance"``), as in
    :func:`tcomplex.estimators.layerwise_entropies`.  ``kernel="fixed"`` (``bandwidth="dims"``
    only): every row uses the kernel of the whole network, sigma0^2 = alpha * (all gates), so
    that a change from l to l+1 comes from the states alone; then H cannot rise with l (a
    suffix's squared distances are at most those of the longer suffix).
    """
    if kernel not in ("per_suffix", "fixed"):
        raise ValueError(f"kernel must be 'per_suffix' or 'fixed', got {kernel!r}")
    if kernel == "fixed" and bandwidth != "dims":
        raise ValueError("kernel='fixed' needs bandwidth='dims' (sigma0^2 = alpha * the number of all gates)")
    names = list(recording.names)
    if not names:
        raise ValueError("the recording has no gating layer")
    if without_sampling is None:
        without_sampling = recording
    elif list(without_sampling.names) != names or any(
            without_sampling[k].shape != recording[k].shape for k in names):
        raise ValueError("without_sampling must hold the same layers and widths as recording: record both with "
                         "tcomplex.record_gates_with_and_without_sampling(model, x)")
    n = recording[names[0]].shape[0]
    total = sum(recording[k].shape[1] for k in names)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one entry per recorded sample ({n}), got shape "
                         f"{tuple(labels.shape)}")
    rows = []
    for scope in ("suffix", "layer"):
        for l in range(1, len(names) + 1):
            sel = names[l - 1:] if scope == "suffix" else [names[l - 1]]
            states, clean = recording.packed(sel), without_sampling.packed(sel)
            a = alpha if kernel == "per_suffix" else alpha * total / states.shape[1]
            h, ixsy = est.kde_entropy_and_interaction(states, labels, alpha=a, bandwidth=bandwidth, warn=False)
            if clean is states or torch.equal(clean.unpack(), states.unpack()):
                its = h  # Eq. 3 on the very states Eq. 2 read: the same number, not computed twice
            else:
                its = est.kde_mutual_information(clean, alpha=a, bandwidth=bandwidth, warn=False)
            rows.append({"scope": scope, "l": l, "layer": sel[0], "d": int(states.shape[1]),
                         "sigma2": float(h.sigma2), "H": float(h), "I_TS": float(its), "I_TSY": float(ixsy)})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def prop_sweep(cfgs: Sequence[TrainConfig], ctx: Context, alphas: Sequence[float],
               bandwidth: str = "dims", kernel: str = "per_suffix") -> pd.DataFrame:
    """:func:`suffix_information` of each trained run (final epoch, its analysis set) at every alpha.

    Cached per run (``prop_sweep_<bandwidth>.csv``, ``prop_sweep_<bandwidth>_fixed.csv`` for
    ``kernel="fixed"``, in the run folder, grown by alpha), so a re-execution computes only
    alphas it has not seen.  Columns: run_id, seed, alpha, n (analysis images), n_classes,
    then :data:`SWEEP_COLUMNS`.
    """
    if kernel not in ("per_suffix", "fixed") or bandwidth not in ("dims", "variance") or (
            kernel == "fixed" and bandwidth != "dims"):
        raise ValueError(f"kernel {kernel!r} with bandwidth {bandwidth!r}: use kernel 'per_suffix' with bandwidth "
                         "'dims' or 'variance', or kernel 'fixed' with bandwidth 'dims'")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not (math.isfinite(a) and a > 0) for a in alphas):
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
    frames = []
    for cfg in cfgs:
        run = ctx.run(cfg)
        if not run.is_finished():
            raise FileNotFoundError(f"run {cfg.run_id} is not finished: train it first (train_many)")

        def compute(missing: list[float], cfg: TrainConfig = cfg) -> pd.DataFrame:
            model = load_trained_model(cfg, ctx)
            x, y = analysis_set_for(cfg, ctx.data_root)
            rec, clean = record_gates_with_and_without_sampling(model, x, kinds=cfg.kinds)
            parts = []
            for a in missing:
                t = suffix_information(rec, y, alpha=a, without_sampling=clean, bandwidth=bandwidth, kernel=kernel)
                t.insert(0, "alpha", a)
                t.insert(1, "n", len(y))
                t.insert(2, "n_classes", int(torch.unique(y).numel()))
                parts.append(t)
            return pd.concat(parts, ignore_index=True)

        name = f"prop_sweep_{bandwidth}" + ("" if kernel == "per_suffix" else f"_{kernel}")
        got = run.cached_rows(name, "alpha", alphas, compute,
                              columns=["n", "n_classes", *SWEEP_COLUMNS]).copy()
        got.insert(0, "run_id", cfg.run_id)
        got.insert(1, "seed", cfg.seed)
        frames.append(got)
    return pd.concat(frames, ignore_index=True)


def _at(sweep: pd.DataFrame, alpha: float) -> pd.DataFrame:
    sel = sweep[np.isclose(sweep.alpha.to_numpy(float), alpha)]
    if sel.empty:
        raise ValueError(f"alpha {alpha:g} is not in the sweep (alphas {sorted(sweep.alpha.unique().tolist())}); "
                         "add it to the notebook's sweep_alphas")
    return sel


def operating_alphas(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per alpha: the largest H / I(T;Σ) (all suffixes, layers and seeds) against log2 n, the
    largest I(T;Σ;Y) against log2(#classes), the smallest H, and whether both headroom margins
    of :data:`~tcomplex.experiments.report.THRESHOLDS` hold (an operating point with headroom)."""
    out = []
    margin = THRESHOLDS["headroom_bits"]
    for a, g in sweep.groupby("alpha"):
        log2_n, log2_m = math.log2(int(g.n.max())), math.log2(int(g.n_classes.max()))
        top_h = float(max(g.H.max(), g.I_TS.max()))
        top_i = float(g.I_TSY.max())
        margin_i = THRESHOLDS["headroom_fraction_classes"] * log2_m
        out.append({"alpha": float(a), "seeds": int(g.seed.nunique()), "max H": top_h, "min H": float(g.H.min()),
                    "H headroom": log2_n - top_h, "max I_TSY": top_i, "I_TSY headroom": log2_m - top_i,
                    "headroom": bool(log2_n - top_h >= margin and log2_m - top_i >= margin_i)})
    return pd.DataFrame(out)


def _ci_row(values: Sequence[float]) -> dict[str, float]:
    m, lo, hi = mean_ci(values)
    v = np.asarray(list(values), float)
    # a weak inequality (>= 0) is broken where the interval lies below 0; with one seed (no
    # interval) where the value itself does (the seed-count precondition then fails anyway)
    broken = bool(hi < 0) if np.isfinite(hi) else bool(m < 0)
    return {"mean": m, "low": lo, "high": hi, "min": float(v.min()), "seeds": int(len(v)), "violated": broken}


def prop1_intervals(sweep: pd.DataFrame, alphas: Sequence[float]) -> pd.DataFrame:
    """Proposition 1 per alpha: I(X; Σ_l; Y) of each layer and I(X; Σ; Y) of all layers
    (the suffix l = 1), mean over seeds with its interval (:func:`mean_ci`); ``violated``
    where the interval lies below 0."""
    out = []
    for a in alphas:
        g = _at(sweep, a)
        whole = g[(g.scope == "suffix") & (g.l == 1)]
        groups = [("all layers", whole)] + [(str(name), t) for name, t in
                                            g[g.scope == "layer"].sort_values("l").groupby("layer", sort=False)]
        for name, t in groups:
            out.append({"alpha": float(a), "layer": name, **_ci_row(t.I_TSY.tolist()),
                        "negative": int((t.I_TSY < 0).sum())})
    return pd.DataFrame(out)


def prop2_intervals(sweep: pd.DataFrame, alphas: Sequence[float]) -> pd.DataFrame:
    """Proposition 2 per alpha, part (:data:`PROP2_PARTS`) and l = 1..L-1: the drop
    X(l) - X(l+1) of the suffix quantity, per seed, then its mean over seeds with an interval;
    ``violated`` where the interval lies below 0 (the quantity rises from l to l+1), ``strict``
    where it lies above 0."""
    out = []
    for a in alphas:
        g = _at(sweep, a)
        suf = g[g.scope == "suffix"]
        for part in PROP2_PARTS:
            wide = suf.pivot_table(index="seed", columns="l", values=part)
            ls = sorted(wide.columns)
            for l, nxt in zip(ls[:-1], ls[1:]):
                drop = (wide[l] - wide[nxt]).dropna().tolist()
                row = _ci_row(drop)
                out.append({"alpha": float(a), "part": part, "l": int(l), **row,
                            "strict": bool(np.isfinite(row["low"]) and row["low"] > 0)})
    return pd.DataFrame(out)


def _sweep_preconditions(sweep: pd.DataFrame, alphas: Sequence[float], columns: Sequence[str]
                         ) -> list[Precondition]:
    """Seeds and headroom of the sweep's estimates at the operating alphas (``columns`` read)."""
    sel = pd.concat([_at(sweep, a) for a in alphas])
    log2_n = math.log2(int(sel.n.max()))
    seeds = int(sel.seed.nunique())
    out = [enough("seeds at the operating alphas", seeds, int(THRESHOLDS["min_seeds_curve"]))]
    h_cols = [c for c in columns if c in ("H", "I_TS")]
    if h_cols:
        out.append(headroom(f"{', '.join(h_cols)} at α = {', '.join(f'{a:g}' for a in alphas)}",
                            sel[h_cols].to_numpy().ravel().tolist(), log2_n))
    if "I_TSY" in columns:
        out.append(class_headroom(f"I(T;Σ;Y) at α = {', '.join(f'{a:g}' for a in alphas)}",
                                  sel.I_TSY.tolist(), int(sel.n_classes.max())))
    return out


def _distinct_text(table: pd.DataFrame, log2_n: float) -> str:
    """How many (seed, epoch, l) suffixes give every analysis image its own pattern (plug-in H = log2 n)."""
    if "H_plugin" not in table:
        return "not measured"
    full = int((table.H_plugin >= log2_n - 1e-9).sum())
    return f"all n distinct in {full}/{len(table)} suffixes"


def _alphas_text(alphas: Sequence[float]) -> str:
    return ", ".join(f"{a:g}" for a in alphas)


def _prop1_finding(sweep: pd.DataFrame, alphas: Sequence[float], nets: list[Precondition],
                   setting: str) -> Finding:
    iv = prop1_intervals(sweep, alphas)
    pre = [*nets, *_sweep_preconditions(sweep, alphas, ["I_TSY"])]
    parts, texts = [], []
    for a, g in iv.groupby("alpha", sort=False):
        worst = g.sort_values("mean").iloc[0]
        held = not bool(g.violated.any())
        parts.append((f"α = {a:g}", held))
        texts.append(f"α = {a:g}: {int(g.negative.sum())} negative of {int(g.seeds.sum())} estimates, smallest mean "
                     f"{worst.layer} {fmt_ci(worst['mean'], worst.low, worst.high, 3)}")
    v, ptxt = judged(True, pre, parts)
    return Finding(
        "prop1", CHAPTER,
        "Sanity check, Proposition 1 on the estimator: I(X;Σ;Y) by Eq. 4 ≥ 0 (each layer and all layers) at kernel "
        "widths where it is below its ceiling log2 #classes. Eq. 4 with one σ0² for all classes was never negative "
        "for any states and labels we tried (tests/test_study_metrics.py), so it cannot show a network breaking "
        "the proposition.",
        f"{len(iv)} (α, layer) means over {int(iv.seeds.max())} seeds (95% CI); " + "; ".join(texts) + ".",
        v, setting, preconditions=pre, parts=ptxt, kind="sanity",
    )


def _prop2_finding(sweep: pd.DataFrame, alphas: Sequence[float], nets: list[Precondition],
                   setting: str, fixed: pd.DataFrame | None = None) -> Finding:
    iv = prop2_intervals(sweep, alphas)
    pre = [*nets, *_sweep_preconditions(sweep, alphas, list(PROP2_PARTS))]
    parts, texts = [], []
    short = {"H": "H", "I_TS": "I(T;Σ)", "I_TSY": "I(T;Σ;Y)"}
    for (part, a), g in iv.groupby(["part", "alpha"], sort=False):
        bad = g[g.violated]
        parts.append((f"{short[part]} at α = {a:g}", bad.empty))
        if bad.empty:
            texts.append(f"{short[part]} at α = {a:g}: no rise ({int(g.strict.sum())}/{len(g)} drops with CI > 0)")
        else:
            w = bad.sort_values("mean").iloc[0]
            texts.append(f"{short[part]} at α = {a:g}: rises at {len(bad)}/{len(g)} steps l → l+1, largest at "
                         f"l = {int(w.l)}: drop {fmt_ci(w['mean'], w.low, w.high, 3)}")
    if fixed is not None:
        fx = prop2_intervals(fixed, alphas)
        fx = fx[fx.part == "I_TSY"]
        texts.append(f"diagnostic, every suffix read with the whole network's kernel: I(T;Σ;Y) rises at "
                     f"{int(fx.violated.sum())}/{len(fx)} steps, drops with CI > 0 at {int(fx.strict.sum())}/{len(fx)}")
    v, ptxt = judged(True, pre, parts)
    return Finding(
        "prop2", CHAPTER,
        "Proposition 2: H(Σ_l..Σ_L), I(T_{l-1};Σ_l..Σ_L) and I(T_{l-1};Σ_l..Σ_L;Y) do not increase with l, read on "
        "the KDE bounds (Eq. 2-4) at kernel widths with headroom.",
        f"drop X(l) − X(l+1) per seed, mean over {int(iv.seeds.max())} seeds (95% CI); " + "; ".join(texts) + ".",
        v, setting, preconditions=pre, parts=ptxt,
    )


def findings(rows: pd.DataFrame, table: pd.DataFrame, eq6: pd.DataFrame, bw: pd.DataFrame,
             setting: str, *, sweep: pd.DataFrame, prop_alphas: Sequence[float],
             fixed_sweep: pd.DataFrame | None = None) -> list[Finding]:
    """The chapter's claims and sanity checks.

    Claims: Proposition 2 (its three parts) at the operating ``prop_alphas`` of the alpha
    ``sweep`` (:func:`prop_sweep`), with intervals over seeds; Figure 1 as tracked during
    training at the paper's alpha (``rows`` and ``table``); the bandwidth rule (``fixed_sweep``,
    optional: the same sweep with ``kernel="fixed"``, whose I(T;Σ;Y) steps are added to
    Proposition 2's text as a diagnostic; the verdict reads the paper's per-suffix kernel).  Sanity
    checks: Proposition 1 on Eq. 4 (at the operating alphas and during training: the
    estimator with one sigma0^2 for all classes is never negative, so it checks the code,
    not the network), Eq. 6 and Prop. 2 on the plug-in distribution (identities of the
    empirical distribution).

    Preconditions (:mod:`tcomplex.experiments.report`): the networks learned (final test
    accuracy against :func:`~tcomplex.experiments.report.accuracy_threshold`), enough seeds
    for an interval, and the estimates the claim reads have headroom below their ceilings
    (I(X;Σ;Y) below log2 #classes, H and I(T;Σ) below log2 n): an estimate pinned at its
    ceiling satisfies both propositions whatever the network does.
    """
    if not len(prop_alphas):
        raise ValueError("prop_alphas is empty: name at least one alpha of the sweep to test the propositions at")
    p1 = prop1(rows)
    p2 = prop2(table)
    n_plug, n_kde = len(p2["plugin"]), len(p2["kde"])
    seeds = sorted(rows.seed.unique().tolist())
    log2_n = float(bw.log2_n.iloc[0])
    dataset = str(rows.dataset.iloc[0])
    n_classes = data_mod.DATASETS[dataset].num_classes
    nets = learned_from_rows(rows)
    ii = rows[rows.metric == "I_XSY"].value
    head_ii = class_headroom("I(X;Σ;Y) at the paper's α", ii.tolist(), n_classes)
    head_h = headroom("suffix H(Σ_l..Σ_L) (KDE) at the paper's α", table.H_kde.tolist(), log2_n,
                      distinct=_distinct_text(table, log2_n))
    many = enough("seeds", len(seeds), int(THRESHOLDS["min_seeds_curve"]))
    margin = THRESHOLDS["headroom_bits"]
    parts = [(f"{r.layer} (H {r['H (variance)']:.2f})", bool(r["H (variance)"] <= r.log2_n - margin))
             for _, r in bw.iterrows()]
    v_bw, parts_bw = judged(True, nets, parts)
    n_room = sum(h for _, h in parts)
    n_room_dims = int((bw["H (dims)"] <= bw.log2_n - margin).sum())
    return [
        _prop1_finding(sweep, prop_alphas, nets, setting),
        _prop2_finding(sweep, prop_alphas, nets, setting, fixed_sweep),
        Finding(
            "prop1_paper_alpha", CHAPTER,
            "Sanity check, Proposition 1 on the estimator during training, at the paper's α (every tracked epoch "
            "and layer): I(X;Σ;Y) by Eq. 4 ≥ 0.",
            f"min I(X;Σ;Y) = {p1['min']:.3f} bits over {p1['n']} estimates (all tracked epochs and layers, "
            f"seeds {seeds}); {p1['negative']} negative.",
            judge(p1["negative"] == 0, [*nets, many, head_ii]), setting, preconditions=[*nets, many, head_ii],
            kind="sanity",
        ),
        Finding(
            "fig1", CHAPTER,
            "Figure 1 / Proposition 2 during training, at the paper's α: H(Σ_l,…,Σ_L) ≥ H(Σ_{l+1},…,Σ_L) on the "
            "KDE bound of Eq. 2 at every tracked epoch.",
            f"KDE bound (σ0² = α·d shrinks with d): {n_kde} violations in {p2['checks']} comparisons "
            f"(seeds {seeds}).",
            judge(n_kde == 0, [*nets, many, head_h]), setting, preconditions=[*nets, many, head_h],
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

