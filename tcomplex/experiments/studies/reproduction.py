"""The reproduction report: every chapter's findings in one table, plus run times."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

from tcomplex.experiments.report import NOT_MEASURED, NOT_REPRODUCED, PARTLY, REPRODUCED, load_findings

__all__ = ["CHAPTERS", "collect", "verdict_counts", "runtimes", "machine"]

#: chapter notebook -> title, in book order
CHAPTERS = {
    "01_metrics": "1. Metrics and propositions",
    "02_disentanglement": "2. Disentanglement",
    "03_training_dynamics": "3. Training dynamics",
    "04_maximum_complexity": "4. Maximum complexity",
    "05_minimum_complexity": "5. Minimum complexity",
    "06_appendix": "6. Appendix",
}
VERDICT_ORDER = [REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED]


def collect(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All findings in book order, and the chapters that produced none."""
    df = load_findings(results_dir)
    missing = [c for c in CHAPTERS if c not in set(df.chapter)]
    if df.empty:
        return df, missing
    df = df.assign(_order=df.chapter.map({c: i for i, c in enumerate(CHAPTERS)}).fillna(len(CHAPTERS)))
    df = df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    df.insert(1, "section", df.chapter.map(CHAPTERS).fillna(df.chapter))
    return df, missing


def verdict_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Number of findings per chapter and verdict."""
    if df.empty:
        return pd.DataFrame(columns=["section", *VERDICT_ORDER])
    t = pd.crosstab(df.section, df.verdict).reindex(columns=VERDICT_ORDER, fill_value=0)
    return t.reindex([s for s in CHAPTERS.values() if s in t.index]).reset_index()


def runtimes(executed_dir: str | Path) -> pd.DataFrame:
    """Wall time of each executed notebook of a profile (from its metadata)."""
    rows = []
    for nb in sorted(Path(executed_dir).glob("*.ipynb")):
        meta = json.loads(nb.read_text()).get("metadata", {}).get("tcomplex", {})
        if "seconds" in meta:
            rows.append({"notebook": nb.stem, "minutes": round(meta["seconds"] / 60, 1)})
    return pd.DataFrame(rows, columns=["notebook", "minutes"])


def machine() -> str:
    """A one-line description of this machine (CPU model, cores, torch, GPU)."""
    import os

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"
