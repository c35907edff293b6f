"""Findings: the paper's claims beside our measurements, with computed verdicts.

Every chapter of the book ends with a findings table built from
:class:`Finding` objects whose verdicts are *computed* from results by the
helpers below (never typed in).  Tables are saved as CSV under the profile's
results folder, and the reproduction report collects them.

A verdict states what it needs and checks it.  Each finding carries its
:class:`Precondition` s (the network learned, the estimator had headroom, enough
seeds or points for the statistic, ...), each with the measured value and whether
it held; :func:`judge` turns a claim's outcome into a verdict only when every
precondition held, and into :data:`INCONCLUSIVE` (naming the failed ones) otherwise.
The thresholds live in one place, :data:`THRESHOLDS` and :func:`accuracy_threshold`,
and the book's report page explains them.  Identities and consistency checks (Eq. 6
on the plug-in distribution, the penalised H falling) are findings of
``kind="sanity"``, reported apart from the paper's claims.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcomplex import estimators

__all__ = [
    "Finding",
    "REPRODUCED",
    "PARTLY",
    "NOT_REPRODUCED",
    "NOT_MEASURED",
    "INCONCLUSIVE",
    "VERDICTS",
    "Precondition",
    "THRESHOLDS",
    "accuracy_threshold",
    "learned",
    "headroom",
    "enough",
    "excludes_zero",
    "run_accuracies",
    "learned_from_rows",
    "fitted",
    "class_headroom",
    "mean_ci",
    "diff_ci",
    "spearman_ci",
    "fisher_ci",
    "fmt_ci",
    "judged",
    "THRESHOLD_TEXT",
    "PAPER_ACCURACY",
    "ACCURACY_FLOORS",
    "networks_table",
    "judge",
    "verdict",
    "findings_frame",
    "save_findings",
    "load_findings",
    "pearson_ci",
    "dip_then_rise",
    "rise_then_saturate",
    "fmt_mean_sd",
]

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_MEASURED = "not measured"
INCONCLUSIVE = "inconclusive"
#: every verdict, in the order the report shows them
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED)
#: the kinds of finding: a claim of the paper, or a sanity check (an identity or a consistency check)
KINDS = ("claim", "sanity")


@dataclass(frozen=True)
class Precondition:
    """What a verdict needs, measured.

    ``name``: what is checked ("network learned"); ``requirement``: the threshold as
    text ("test accuracy >= 0.95"); ``measured``: the value found ("0.101"); ``held``.
    ``kind`` (one of ``"learned"``, ``"headroom"``, ``"enough"``, ``"interval"``,
    ``"fit"``, or ``""``), ``value`` and ``threshold`` (the measured number and the
    threshold as numbers, NaN when not applicable) let the report tabulate them, e.g.
    every network behind a verdict with its accuracy and threshold.
    """

    name: str
    requirement: str
    measured: str
    held: bool
    kind: str = ""
    value: float = math.nan
    threshold: float = math.nan

    def __str__(self) -> str:
        return f"{self.name}: {self.requirement}, measured {self.measured} ({'held' if self.held else 'FAILED'})"


#: The thresholds behind every precondition, chosen once (the report page explains them).
THRESHOLDS: dict[str, float] = {
    # the KDE H (Eq. 2) and I(X;Σ) (Eq. 3) are at most log2 n; within this many bits of log2 n the
    # kernel mass a state receives from all other states is below 2^0.5 - 1 = 41% of its own, so the
    # estimate mostly counts distinct patterns and cannot show a change (the estimators' own
    # saturation flag and SaturationWarning use the same margin: tcomplex.estimators.HEADROOM_BITS)
    "headroom_bits": estimators.HEADROOM_BITS,
    # I(X;Σ;Y) (Eq. 4) is at most log2(#classes); the same relative margin (0.5 of 10.97 bits)
    "headroom_fraction_classes": estimators.HEADROOM_FRACTION_CLASSES,
    # a correlation over models/seeds (Figure 2): with n models the 95% Fisher-z interval excludes 0 only
    # for |r| > tanh(1.96/sqrt(n-3)): 0.81 at n = 6, 0.63 at n = 10, 0.44 at n = 21 (the paper's n); 10 is
    # the fewest at which a strong correlation (|r| ~ 0.65) can be told from none
    "min_seeds_correlation": 10,
    # a curve's shape (training dynamics) or a difference between settings: seeds per curve / per arm; 3 is
    # the fewest for which a t interval over seeds has a finite, usable width (t_0.975 with 2 df = 4.3)
    "min_seeds_curve": 3,
    # one point of a grid (a depth x task cell of Figure 5): at least 2 seeds so that its spread is measured
    "min_seeds_point": 2,
    # a rank correlation over points (depths, task sizes, epochs): with 2 points Spearman rho is always
    # +-1 and with 3 it takes only 4 values; 4 is the fewest for a Fisher-z interval (n - 3 > 0)
    "min_points_rank": 4,
    # a regression fit (the target MLPs of Figure 5) "learned" its task: R^2 on held-out inputs >= 0.5
    # (it explains at least half of the target's variance; below that, H describes a failed fit)
    "min_r2": 0.5,
    # two trends "agree" (Figure 9): Spearman rho between the curves >= 0.8 for every pair of alphas
    "min_rho_agree": 0.8,
    # a network "learned" when its test accuracy reaches this fraction of the paper's (Table 1) where the
    # paper gives one, else the per-dataset floor below: within 10% (relative) of a converged network, and
    # far above chance (0.10 on the 10-class datasets)
    "fraction_of_paper_accuracy": 0.9,
    # confidence level of every interval behind a verdict
    "confidence": 0.95,
    # Table 1: a cell converged when its training accuracy reaches the paper's test accuracy minus this
    # many percentage points (0: a converged network fits its training images at least as well as the
    # paper's network generalises)
    "table1_train_margin": 0.0,
}

#: one line per threshold, for the report page (what it means; the numbers come from THRESHOLDS)
THRESHOLD_TEXT: dict[str, str] = {
    "headroom_bits": "H(Σ) and I(X;Σ) must stay this many bits below their ceiling log2 n (n analysis images)",
    "headroom_fraction_classes": "I(X;Σ;Y) must stay this fraction of log2 #classes below log2 #classes",
    "min_seeds_correlation": "models (seeds) behind a correlation across models (Figure 2)",
    "min_seeds_curve": "seeds behind a curve's shape or a difference between settings",
    "min_seeds_point": "seeds behind one point of a grid (Figure 5)",
    "min_points_rank": "points behind a rank correlation (depths, tasks, epochs)",
    "min_r2": "held-out R² a regression fit must reach before its H is read (Figure 5)",
    "min_rho_agree": "Spearman ρ two curves need to count as the same trend (Figure 9)",
    "fraction_of_paper_accuracy": "a network learned when its test accuracy reaches this fraction of the paper's "
                                  "Table 1 accuracy (else the dataset's floor)",
    "confidence": "level of every confidence interval behind a verdict",
    "table1_train_margin": "a Table 1 cell converged when its training accuracy reaches the paper's test accuracy "
                           "minus this many points",
}

#: test-accuracy floors where the paper gives no number for the model and dataset: 0.9 x the accuracy a
#: small converged network reaches (MNIST ~0.97 for an MLP, Fashion-MNIST ~0.89, CIFAR-10 ~0.55 for an
#: MLP and ~0.80 for a ResNet), i.e. the same 10% relative margin as ``fraction_of_paper_accuracy``;
#: chance is 0.10 on the 10-class datasets
ACCURACY_FLOORS: dict[str, float] = {"mnist": 0.90, "fashion_mnist": 0.80, "cifar10": 0.50, "cifar10_gray": 0.45,
                                     "celeba": 0.72, "voc2012_crops": 0.55, "tiny_imagenet10": 0.50}

#: test accuracies of the paper's Table 1 (Appendix G) by (our model name, our dataset name); its "MLP"
#: column is our mlp_mnist on MNIST and mlp_cifar10 on CIFAR-10
PAPER_ACCURACY: dict[tuple[str, str], float] = {
    ("mlp_mnist", "mnist"): 0.9652, ("lenet5", "mnist"): 0.9741, ("resnet20", "mnist"): 0.9870,
    ("resnet32", "mnist"): 0.9824, ("vgg11_revised", "mnist"): 0.9900,
    ("mlp_cifar10", "cifar10"): 0.5252, ("lenet5", "cifar10"): 0.615, ("resnet20", "cifar10"): 0.8175,
    ("resnet32", "cifar10"): 0.7976, ("vgg11_revised", "cifar10"): 0.8453,
    ("resnet18", "celeba"): 0.8025, ("resnet34", "celeba"): 0.8091, ("vgg16", "celeba"): 0.8970,
    ("resnet18", "voc2012_crops"): 0.6799, ("resnet34", "voc2012_crops"): 0.6427, ("vgg16", "voc2012_crops"): 0.6250,
}


def accuracy_threshold(model: str, dataset: str) -> float:
    """The test accuracy a network must reach before its numbers feed a verdict.

    ``fraction_of_paper_accuracy`` x the paper's Table 1 accuracy where it has one,
    else the dataset's floor in :data:`ACCURACY_FLOORS` (0.5 for an unknown dataset).
    """
    paper = PAPER_ACCURACY.get((model, dataset))
    if paper is not None:
        return THRESHOLDS["fraction_of_paper_accuracy"] * paper
    return ACCURACY_FLOORS.get(dataset, 0.5)


def learned(what: str, accuracies: Sequence[float], model: str, dataset: str) -> Precondition:
    """The networks behind a verdict learned: the lowest test accuracy reaches :func:`accuracy_threshold`."""
    acc = np.asarray(list(accuracies), float)
    need = accuracy_threshold(model, dataset)
    req = f"test accuracy >= {need:.3f}"
    if len(acc) == 0 or not np.all(np.isfinite(acc)):
        return Precondition(f"{what} learned", req, "not measured", False, "learned", math.nan, need)
    low = float(acc.min())
    shown = f"{low:.3f}" if len(acc) == 1 else f"min {low:.3f} over {len(acc)} runs"
    return Precondition(f"{what} learned", req, shown, bool(low >= need), "learned", low, need)


def run_accuracies(rows: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy of every run in a frame of training rows (long format of
    :func:`tcomplex.experiments.train.train`): one row per run_id with model, dataset,
    seed, epoch (the last tracked one) and test_acc."""
    need = {"run_id", "model", "dataset", "seed", "epoch", "layer", "metric", "value"}
    if not need <= set(rows.columns):
        raise ValueError(f"training rows need the columns {sorted(need)}; missing {sorted(need - set(rows.columns))}")
    sel = rows[(rows.layer == "__all__") & (rows.metric == "test_acc")]
    sel = sel[sel.epoch == sel.groupby("run_id").epoch.transform("max")]
    out = sel[["run_id", "model", "dataset", "seed", "epoch", "value"]].rename(columns={"value": "test_acc"})
    return out.drop_duplicates("run_id").reset_index(drop=True)


def learned_from_rows(rows: pd.DataFrame, label: str = "") -> list[Precondition]:
    """One :func:`learned` precondition per (model, dataset) of a frame of training rows
    (their final test accuracies, :func:`run_accuracies`); ``label`` is prefixed to the name."""
    acc = run_accuracies(rows)
    out = []
    for (model, dataset), g in acc.groupby(["model", "dataset"], sort=False):
        out.append(learned(f"{label}{model} on {dataset}", g.test_acc.tolist(), str(model), str(dataset)))
    return out


def fitted(what: str, r2: Sequence[float]) -> Precondition:
    """A regression fit learned its target: the lowest held-out R² reaches ``THRESHOLDS["min_r2"]``."""
    v = np.asarray(list(r2), float)
    need = THRESHOLDS["min_r2"]
    if len(v) == 0 or not np.all(np.isfinite(v)):
        return Precondition(f"{what} fitted", f"R² >= {need:.2f}", "not measured", False, "fit", math.nan, need)
    low = float(v.min())
    shown = f"{low:.2f}" if len(v) == 1 else f"min {low:.2f} over {len(v)} fits (median {float(np.median(v)):.2f})"
    return Precondition(f"{what} fitted", f"R² >= {need:.2f}", shown, bool(low >= need), "fit", low, need)


def headroom(what: str, values: Sequence[float], ceiling: float, margin: float | None = None,
             distinct: int | str | None = None) -> Precondition:
    """The estimator had room to move: ``ceiling - max(values) >= margin`` bits.

    ``ceiling`` is log2 n for H and I(X;Σ) (Eq. 2-3), log2(#classes) for I(X;Σ;Y)
    (Eq. 4; use :func:`class_headroom`); ``margin`` defaults to
    ``THRESHOLDS["headroom_bits"]``.  ``distinct`` (the number of distinct gating
    patterns, or a text about them; optional) is shown with the measurement.
    """
    v = np.asarray(list(values), float)
    margin = THRESHOLDS["headroom_bits"] if margin is None else margin
    req = f"{what} <= ceiling {ceiling:.2f} - {margin:.2f} bits"
    if len(v) == 0 or not np.all(np.isfinite(v)):
        return Precondition(f"{what} has headroom", req, "not measured", False, "headroom", math.nan, margin)
    top = float(v.max())
    shown = f"max {top:.2f} (headroom {ceiling - top:.2f})"
    if isinstance(distinct, int):
        shown += f", {distinct} distinct patterns"
    elif distinct:
        shown += f", {distinct}"
    return Precondition(f"{what} has headroom", req, shown, bool(ceiling - top >= margin), "headroom",
                        ceiling - top, margin)


def class_headroom(what: str, values: Sequence[float], n_classes: int) -> Precondition:
    """:func:`headroom` of I(X;Σ;Y) (Eq. 4) under its ceiling log2(#classes), with the margin
    ``THRESHOLDS["headroom_fraction_classes"]`` x log2(#classes)."""
    ceiling = math.log2(n_classes)
    return headroom(what, values, ceiling, THRESHOLDS["headroom_fraction_classes"] * ceiling)


def enough(what: str, count: int, need: int) -> Precondition:
    """At least ``need`` seeds / points / runs for the statistic used."""
    return Precondition(f"enough {what}", f">= {need}", str(int(count)), bool(count >= need), "enough",
                        float(count), float(need))


def excludes_zero(what: str, low: float, high: float) -> Precondition:
    """A claimed sign needs a confidence interval that excludes 0."""
    ok = bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
    shown = f"[{low:.2f}, {high:.2f}]" if np.isfinite(low) and np.isfinite(high) else "no interval (too few values)"
    level = f"{THRESHOLDS['confidence']:.0%}"
    return Precondition(f"{what}: interval excludes 0", f"{level} CI not containing 0", shown, ok, "interval")


def mean_ci(values: Sequence[float], conf: float | None = None) -> tuple[float, float, float]:
    """Mean with a Student-t confidence interval over independent values (seeds).

    Returns (mean, low, high); the interval is (NaN, NaN) with fewer than 2 values.
    """
    from scipy import stats

    conf = THRESHOLDS["confidence"] if conf is None else conf
    a = np.asarray(list(values), float)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    m = float(a.mean())
    if len(a) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + conf / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return m, m - half, m + half


def diff_ci(a: Sequence[float], b: Sequence[float], conf: float | None = None) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a Welch confidence interval (independent seeds per arm).

    Returns (difference, low, high); the interval is (NaN, NaN) when either arm has fewer than 2 values.
    """
    from scipy import stats

    conf = THRESHOLDS["confidence"] if conf is None else conf
    x, y = np.asarray(list(a), float), np.asarray(list(b), float)
    d = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return d, math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return d, d, d
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + conf / 2, df) * se)
    return d, d - half, d + half


def spearman_ci(x: Sequence[float], y: Sequence[float], conf: float | None = None) -> tuple[float, float, float]:
    """Spearman ρ with a Fisher-z interval (standard error 1.03 / sqrt(n - 3), Fieller et al. 1957).

    Returns (rho, low, high); the interval is (NaN, NaN) with fewer than 4 points, and
    everything is NaN when a side is constant.
    """
    from scipy import stats

    conf = THRESHOLDS["confidence"] if conf is None else conf
    xs, ys = np.asarray(list(x), float), np.asarray(list(y), float)
    n = len(xs)
    if n < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan, math.nan, math.nan
    rho = float(stats.spearmanr(xs, ys)[0])
    return (rho, *fisher_ci(rho, n, conf, rank=True))


def fisher_ci(r: float, n: int, conf: float | None = None, rank: bool = False) -> tuple[float, float]:
    """Fisher-z confidence interval of a correlation ``r`` over ``n`` points: standard error
    1 / sqrt(n - 3) for Pearson, 1.03 / sqrt(n - 3) for Spearman (``rank``; Fieller et al. 1957).
    (NaN, NaN) with fewer than 4 points or an undefined ``r``."""
    from scipy import stats

    conf = THRESHOLDS["confidence"] if conf is None else conf
    if n < 4 or not np.isfinite(r):
        return math.nan, math.nan
    z = math.atanh(max(min(r, 0.999999), -0.999999))
    half = float(stats.norm.ppf(0.5 + conf / 2)) * (1.03 if rank else 1.0) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def fmt_ci(value: float, low: float, high: float, digits: int = 2) -> str:
    """``"v [lo, hi]"``, or ``"v (no CI)"`` when the interval is undefined."""
    if not np.isfinite(value):
        return "undefined"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f} (no CI)"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def judged(holds: bool | None, preconditions: Sequence[Precondition], parts: Sequence[tuple[str, bool]] = ()
           ) -> tuple[str, str]:
    """:func:`judge` for a claim with ``parts`` ((label, held) pairs): REPRODUCED when every part
    holds, PARTLY (with the text of which held) when some do, NOT_REPRODUCED when none does;
    ``holds`` None: NOT_MEASURED.  Returns (verdict, parts text)."""
    if not parts:
        return judge(holds, preconditions), ""
    ok = [lab for lab, h in parts if h]
    text = f"held: {', '.join(ok) or 'none'}; not held: {', '.join(lab for lab, h in parts if not h) or 'none'}"
    if holds is None:
        return NOT_MEASURED, ""
    v = judge(len(ok) == len(parts), preconditions, partly=0 < len(ok) < len(parts))
    return v, (text if v == PARTLY else "")


def judge(holds: bool | None, preconditions: Sequence[Precondition] = (), partly: bool = False) -> str:
    """The verdict of a claim: INCONCLUSIVE when a precondition failed, NOT_MEASURED when
    ``holds`` is None, else :func:`verdict` (``partly`` only for claims with parts)."""
    if holds is None:
        return NOT_MEASURED
    if any(not p.held for p in preconditions):
        return INCONCLUSIVE
    return verdict(bool(holds), partly)


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and what we measured.

    Attributes
    ----------
    key: short stable id (e.g. ``"prop1"``).
    chapter: the book chapter (notebook name).
    claim: the paper's statement, with its section/figure.
    measured: our numbers (seeds, spread), as text.
    verdict: one of :data:`VERDICTS`.
    setting: how our setting differs from the paper's (empty if it does not).
    preconditions: what the verdict needs, measured (:class:`Precondition`); a
        verdict of reproduced / partly / not reproduced requires every one to hold.
    kind: ``"claim"`` (the paper's) or ``"sanity"`` (an identity or consistency check).
    parts: for a claim with parts (verdict PARTLY), which parts held, as text.
    """

    key: str
    chapter: str
    claim: str
    measured: str
    verdict: str
    setting: str = ""
    preconditions: tuple[Precondition, ...] = ()
    kind: str = "claim"
    parts: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; one of {VERDICTS}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; one of {KINDS}")
        object.__setattr__(self, "preconditions", tuple(self.preconditions))
        failed = [p.name for p in self.preconditions if not p.held]
        if failed and self.verdict in (REPRODUCED, PARTLY, NOT_REPRODUCED):
            raise ValueError(f"finding {self.key!r}: verdict {self.verdict!r} although preconditions failed: "
                             f"{failed}; use judge() (it gives {INCONCLUSIVE!r})")
        if self.verdict == PARTLY and not self.parts:
            raise ValueError(f"finding {self.key!r}: a 'partly' verdict must say which parts held (parts=...)")

    @property
    def failed(self) -> list[Precondition]:
        """The preconditions that did not hold."""
        return [p for p in self.preconditions if not p.held]


def verdict(holds: bool, partly: bool = False) -> str:
    """REPRODUCED if ``holds``, else PARTLY if ``partly``, else NOT_REPRODUCED."""
    if holds:
        return REPRODUCED
    return PARTLY if partly else NOT_REPRODUCED


FRAME_COLUMNS = ["key", "chapter", "kind", "claim", "measured", "verdict", "parts", "preconditions",
                 "preconditions_held", "failed", "setting", "preconditions_data"]


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """One row per finding; ``preconditions`` as text (one per line), ``preconditions_held`` a bool,
    ``failed`` the failed ones (the reason of an inconclusive verdict), ``preconditions_data`` the
    preconditions as JSON (for :func:`networks_table`)."""
    rows = []
    for f in findings:
        d = asdict(f)
        d["preconditions"] = "\n".join(str(p) for p in f.preconditions)
        d["preconditions_held"] = not f.failed
        d["failed"] = "; ".join(f"{p.name}: {p.measured} (needs {p.requirement})" for p in f.failed)
        d["preconditions_data"] = json.dumps([{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                               for k, v in asdict(p).items()} for p in f.preconditions])
        rows.append(d)
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def save_findings(findings: Sequence[Finding], results_dir: str | Path, chapter: str) -> Path:
    """Write a chapter's findings to ``<results_dir>/findings_<chapter>.csv``."""
    path = Path(results_dir) / f"findings_{chapter}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    findings_frame(findings).to_csv(path, index=False)
    return path


def load_findings(results_dir: str | Path) -> pd.DataFrame:
    """All chapters' findings under ``results_dir`` (empty frame if none)."""
    files = sorted(Path(results_dir).glob("findings_*.csv"))
    if not files:
        return findings_frame([])
    frames = [pd.read_csv(f, keep_default_na=False) for f in files]
    for frame in frames:  # a file saved before preconditions existed: filled per file, so none of its rows is dropped
        for col in FRAME_COLUMNS:
            if col not in frame:
                frame[col] = {"kind": "claim", "preconditions_held": True}.get(col, "")
    df = pd.concat(frames, ignore_index=True)
    df["preconditions_held"] = df["preconditions_held"].map(lambda v: v if isinstance(v, bool) else str(v) == "True")
    return df[FRAME_COLUMNS]


def networks_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every network (or fit) whose numbers feed a verdict, from the ``preconditions_data`` of a
    findings frame: chapter, network, accuracy (or R²) measured, threshold, held, and the findings
    that use it.  Findings without structured preconditions contribute nothing."""
    cols = ["chapter", "network", "measure", "measured", "threshold", "held", "findings"]
    out: dict[tuple[str, str], dict] = {}
    for r in df.itertuples():
        text = getattr(r, "preconditions_data", "")
        if not isinstance(text, str) or not text.strip():
            continue
        for p in json.loads(text):
            if p.get("kind") not in ("learned", "fit"):
                continue
            name = p["name"].rsplit(" learned", 1)[0] if p["kind"] == "learned" else p["name"].rsplit(" fitted", 1)[0]
            key = (r.chapter, name)
            entry = out.setdefault(key, {"chapter": r.chapter, "network": name,
                                         "measure": "test accuracy" if p["kind"] == "learned" else "R²",
                                         "measured": p["measured"], "threshold": p["threshold"],
                                         "held": bool(p["held"]), "findings": []})
            entry["findings"].append(r.key)
    rows = [{**e, "findings": ", ".join(dict.fromkeys(e["findings"]))} for e in out.values()]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------
# statistics behind verdicts
# ---------------------------------------------------------------------------
def pearson_ci(x: Sequence[float], y: Sequence[float], conf: float = 0.95) -> tuple[float, float, float, float]:
    """Pearson r with a Fisher-z confidence interval and a two-sided p-value.

    Returns (r, low, high, p).  Needs at least 4 pairs.
    """
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 4 or len(y) != n:
        raise ValueError(f"need at least 4 paired values, got {len(x)} and {len(y)}")
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    r, p = stats.pearsonr(x, y)
    z = math.atanh(max(min(r, 0.999999), -0.999999))
    half = stats.norm.ppf(0.5 + conf / 2) / math.sqrt(n - 3)
    return float(r), math.tanh(z - half), math.tanh(z + half), float(p)


def dip_then_rise(epochs: Sequence[float], values: Sequence[float], tol: float = 0.05) -> dict[str, float | bool]:
    """Does a curve first decrease and later increase (Section 4.2, finding 1)?

    ``drop`` = value at the first epoch - minimum, ``rise`` = last value - minimum;
    the shape holds when the minimum is at an interior epoch and both exceed
    ``tol`` (absolute, in the curve's units).
    """
    e, v = np.asarray(epochs, float), np.asarray(values, float)
    order = np.argsort(e)
    e, v = e[order], v[order]
    i = int(np.argmin(v))
    drop, rise = float(v[0] - v[i]), float(v[-1] - v[i])
    return {
        "min_epoch": float(e[i]), "min": float(v[i]), "first": float(v[0]), "last": float(v[-1]),
        "drop": drop, "rise": rise,
        "holds": bool(0 < i < len(v) - 1 and drop > tol and rise > tol),
        "dips": bool(drop > tol),
    }


def rise_then_saturate(epochs: Sequence[float], values: Sequence[float], tol: float = 0.05) -> dict[str, float | bool]:
    """Does a curve rise (mostly monotonically) and level off (Section 4.2, findings 2-3)?

    ``rise`` = last - first; ``monotone`` = fraction of non-decreasing steps
    (allowing ``tol`` of noise); ``dip`` = first - minimum.  The shape holds when
    the curve rises by more than ``tol`` with no dip deeper than ``tol``.
    """
    e, v = np.asarray(epochs, float), np.asarray(values, float)
    order = np.argsort(e)
    v = v[order]
    steps = np.diff(v)
    monotone = float(np.mean(steps >= -tol)) if len(steps) else 1.0
    rise, dip = float(v[-1] - v[0]), float(v[0] - v.min())
    half = len(v) // 2
    late = float(v[-1] - v[half]) if len(v) > 2 else rise
    return {
        "first": float(v[0]), "last": float(v[-1]), "rise": rise, "dip": dip,
        "monotone": monotone, "late_rise": late,
        "holds": bool(rise > tol and dip <= tol),
    }


def fmt_mean_sd(values: Sequence[float], digits: int = 2) -> str:
    """``"m ± sd (n=k)"`` of a sample."""
    a = np.asarray(values, float)
    if len(a) == 0:
        return "n/a"
    if len(a) == 1:
        return f"{a[0]:.{digits}f} (n=1)"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f} (n={len(a)})"
