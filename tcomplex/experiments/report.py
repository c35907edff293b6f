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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
    """

    name: str
    requirement: str
    measured: str
    held: bool

    def __str__(self) -> str:
        return f"{self.name}: {self.requirement}, measured {self.measured} ({'held' if self.held else 'FAILED'})"


#: The thresholds behind every precondition, chosen once (the report page explains them).
THRESHOLDS: dict[str, float] = {
    # the KDE H (Eq. 2) and I(X;Σ) (Eq. 3) are at most log2 n; within this many bits of log2 n the
    # kernel mass a state receives from all other states is below 2^0.5 - 1 = 41% of its own, so the
    # estimate mostly counts distinct patterns and cannot show a change
    "headroom_bits": 0.5,
    # I(X;Σ;Y) (Eq. 4) is at most log2(#classes); the same relative margin (0.5 of 10.97 bits)
    "headroom_fraction_classes": 0.5 / math.log2(2000),
    # a correlation over models/seeds (Figure 2): Fisher-z intervals need n >= 4; the paper used 21
    "min_seeds_correlation": 10,
    # a curve's shape (training dynamics) or a difference between settings: seeds per curve / per arm
    "min_seeds_curve": 3,
    # a rank correlation over points (depths, task sizes, α values)
    "min_points_rank": 4,
    # a network "learned" when its test accuracy reaches this fraction of the paper's (Table 1) where the
    # paper gives one, else the per-dataset floor below
    "fraction_of_paper_accuracy": 0.9,
}

#: test-accuracy floors where the paper gives no number for the model and dataset (well above chance:
#: MNIST 0.10, Fashion-MNIST 0.10, CIFAR-10 0.10), reached by every standard architecture in a few epochs
ACCURACY_FLOORS: dict[str, float] = {"mnist": 0.95, "fashion_mnist": 0.85, "cifar10": 0.70, "gray_cifar10": 0.60,
                                     "celeba": 0.80, "voc": 0.50, "tiny_imagenet10": 0.50}

#: test accuracies of the paper's Table 1 (model, dataset) -> accuracy, where it reports one
PAPER_ACCURACY: dict[tuple[str, str], float] = {}


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
    if len(acc) == 0 or not np.all(np.isfinite(acc)):
        return Precondition(f"{what} learned", f"test accuracy >= {need:.2f}", "not measured", False)
    low = float(acc.min())
    shown = f"{low:.3f}" if len(acc) == 1 else f"min {low:.3f} over {len(acc)} runs"
    return Precondition(f"{what} learned", f"test accuracy >= {need:.2f}", shown, bool(low >= need))


def headroom(what: str, values: Sequence[float], ceiling: float, margin: float | None = None,
             distinct: int | None = None) -> Precondition:
    """The estimator had room to move: ``ceiling - max(values) >= margin`` bits.

    ``ceiling`` is log2 n for H and I(X;Σ), log2(#classes) for I(X;Σ;Y); ``margin``
    defaults to ``THRESHOLDS["headroom_bits"]``.  ``distinct`` (the number of distinct
    gating patterns, optional) is shown with the measurement.
    """
    v = np.asarray(list(values), float)
    margin = THRESHOLDS["headroom_bits"] if margin is None else margin
    req = f"{what} <= ceiling {ceiling:.2f} - {margin:.2f} bits"
    if len(v) == 0 or not np.all(np.isfinite(v)):
        return Precondition(f"{what} has headroom", req, "not measured", False)
    top = float(v.max())
    shown = f"max {top:.2f} (headroom {ceiling - top:.2f})" + (f", {distinct} distinct patterns" if distinct is not None else "")
    return Precondition(f"{what} has headroom", req, shown, bool(ceiling - top >= margin))


def enough(what: str, count: int, need: int) -> Precondition:
    """At least ``need`` seeds / points / runs for the statistic used."""
    return Precondition(f"enough {what}", f">= {need}", str(int(count)), bool(count >= need))


def excludes_zero(what: str, low: float, high: float) -> Precondition:
    """A claimed sign needs a confidence interval that excludes 0."""
    ok = bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
    return Precondition(f"{what}: interval excludes 0", "95% CI not containing 0", f"[{low:.2f}, {high:.2f}]", ok)


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
                 "preconditions_held", "failed", "setting"]


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """One row per finding; ``preconditions`` as text (one per line), ``preconditions_held`` a bool,
    ``failed`` the failed ones (the reason of an inconclusive verdict)."""
    rows = []
    for f in findings:
        d = asdict(f)
        d["preconditions"] = "\n".join(str(p) for p in f.preconditions)
        d["preconditions_held"] = not f.failed
        d["failed"] = "; ".join(f"{p.name}: {p.measured} (needs {p.requirement})" for p in f.failed)
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
    df = pd.concat(frames, ignore_index=True)
    for col in FRAME_COLUMNS:  # findings saved before preconditions existed
        if col not in df:
            df[col] = {"kind": "claim", "preconditions_held": True}.get(col, "")
    df["preconditions_held"] = df["preconditions_held"].map(lambda v: v if isinstance(v, bool) else str(v) == "True")
    return df[FRAME_COLUMNS]


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
