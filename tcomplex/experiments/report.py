"""Findings: the paper's claims beside our measurements, with computed verdicts.

Every chapter of the book ends with a findings table built from
:class:`Finding` objects whose verdicts are *computed* from results by the
helpers below (never typed in).  Tables are saved as CSV under the profile's
results folder, and the reproduction report collects them.
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


@dataclass(frozen=True)
class Finding:
    """One claim of the paper and what we measured.

    Attributes
    ----------
    key: short stable id (e.g. ``"prop1"``).
    chapter: the book chapter (notebook name).
    claim: the paper's statement, with its section/figure.
    measured: our numbers (seeds, spread), as text.
    verdict: one of REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED.
    setting: how our setting differs from the paper's (empty if it does not).
    """

    key: str
    chapter: str
    claim: str
    measured: str
    verdict: str
    setting: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED):
            raise ValueError(f"unknown verdict {self.verdict!r}")


def verdict(holds: bool, partly: bool = False) -> str:
    """REPRODUCED if ``holds``, else PARTLY if ``partly``, else NOT_REPRODUCED."""
    if holds:
        return REPRODUCED
    return PARTLY if partly else NOT_REPRODUCED


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    return pd.DataFrame([asdict(f) for f in findings], columns=list(Finding.__dataclass_fields__))


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
    return pd.concat([pd.read_csv(f).fillna("") for f in files], ignore_index=True)


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
