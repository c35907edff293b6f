"""The reproduction report: every chapter's findings, claims and sanity checks apart, plus run times.

Verdicts are on the scale of :data:`tcomplex.experiments.report.VERDICTS`; an *inconclusive*
row shows which precondition failed and with what number, the setting of each chapter is shown
once, and every network whose accuracy gates a verdict is listed with its threshold.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tcomplex.experiments.report import (
    ACCURACY_FLOORS,
    Finding,
    PAPER_ACCURACY,
    THRESHOLD_TEXT,
    THRESHOLDS,
    VERDICTS,
    findings_frame,
    load_findings,
    networks_table,
)
from tcomplex.plots import table_html

__all__ = ["CHAPTERS", "VERDICT_ORDER", "VERDICT_COLOURS", "EARLIER", "collect", "predating_preconditions",
           "chapter_verdicts", "show_verdicts", "show_claims", "verdict_counts", "claims_table", "sanity_table",
           "settings_table", "networks", "thresholds_table", "accuracy_thresholds_table", "runtimes", "machine"]

#: chapter notebook -> title, in book order
CHAPTERS = {
    "01_metrics": "1. Metrics and propositions",
    "02_disentanglement": "2. Disentanglement",
    "03_training_dynamics": "3. Training dynamics",
    "04_maximum_complexity": "4. Maximum complexity",
    "05_minimum_complexity": "5. Minimum complexity",
    "06_appendix": "6. Appendix",
}
VERDICT_ORDER = list(VERDICTS)
#: appended to the section of findings saved before verdicts checked preconditions (see :func:`collect`)
EARLIER = " (earlier version: preconditions not checked)"
#: one colour per verdict, shared by the report's bar chart and the verdict tables
VERDICT_COLOURS = {"reproduced": "#4c9a5e", "partly reproduced": "#e0a23b", "not reproduced": "#c8553d",
                   "inconclusive": "#6f8fb8", "not measured": "#9a9a9a"}


def collect(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All findings in book order, and the chapters that produced none."""
    df = load_findings(results_dir)
    missing = [c for c in CHAPTERS if c not in set(df.chapter)]
    if df.empty:
        return df.assign(section=pd.Series(dtype=str)), missing
    df = df.assign(_order=df.chapter.map({c: i for i, c in enumerate(CHAPTERS)}).fillna(len(CHAPTERS)))
    df = df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    df.insert(1, "section", df.chapter.map(CHAPTERS).fillna(df.chapter))
    # rows of a file saved before verdicts checked preconditions say so wherever their section is shown
    df.loc[df.preconditions_data == "", "section"] += EARLIER
    return df, missing


def predating_preconditions(df: pd.DataFrame) -> list[str]:
    """Chapters whose findings file was saved before findings carried preconditions (read as claims by
    :func:`tcomplex.experiments.report.load_findings`; their verdicts checked no precondition)."""
    if df.empty:
        return []
    return [c for c in CHAPTERS if ((df.chapter == c) & (df.preconditions_data == "")).any()]


def verdict_counts(df: pd.DataFrame, kind: str | None = "claim") -> pd.DataFrame:
    """Number of findings per chapter and verdict (columns in :data:`VERDICT_ORDER`, plus a total row);
    ``kind``: only claims (default), only sanity checks, or None for both."""
    if not df.empty and kind is not None:
        df = df[df.kind == kind]
    if df.empty:
        return pd.DataFrame(columns=["section", *VERDICT_ORDER])
    t = pd.crosstab(df.section, df.verdict).reindex(columns=VERDICT_ORDER, fill_value=0)
    t = t.reindex([s for s in CHAPTERS.values() if s in t.index] + [s for s in t.index if s not in CHAPTERS.values()])
    t.loc["total"] = t.sum()
    return t.astype(int).reset_index().rename(columns={"index": "section"}).rename_axis(columns=None)


def chapter_verdicts(findings: Sequence[Finding]) -> pd.DataFrame:
    """A chapter's closing table: one row per finding, claims before sanity checks, with
    ``what`` (claim or sanity check), claim, measured, verdict and ``why`` (see :func:`claims_table`)."""
    df = findings_frame(findings)
    cols = ["what", "claim", "measured", "verdict", "why"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.assign(what=df.kind.map({"claim": "claim", "sanity": "sanity check"}).fillna(df.kind),
                   why=df.apply(_why, axis=1))
    return df.sort_values("what", kind="stable", key=lambda v: v != "claim")[cols].reset_index(drop=True)


def show_verdicts(findings: Sequence[Finding]) -> Any:
    """:func:`chapter_verdicts` as a compact HTML table with each verdict in its colour
    (:data:`VERDICT_COLOURS`); the full findings (preconditions with their numbers, setting)
    are one click away below it, as in the result file ``findings_<chapter>.csv``."""
    from IPython.display import HTML

    html = _coloured(table_html(chapter_verdicts(findings)))
    full = findings_frame(findings).drop(columns=["preconditions_data", "preconditions_held"])
    return HTML(html + f"<details><summary>all columns: preconditions, setting</summary>{table_html(full)}</details>")


def _coloured(html: str) -> str:
    for verdict, colour in VERDICT_COLOURS.items():
        html = html.replace(f"<td>{verdict}</td>",
                            f'<td><span class="verdict" style="color:{colour};font-weight:600">{verdict}</span></td>')
    return html


def show_claims(df: pd.DataFrame, kind: str = "claim") -> Any:
    """The report's claim table, compact: section (a link to the chapter's findings), claim, verdict
    in its colour and why; the measured numbers (and keys) of :func:`claims_table` one click away."""
    from IPython.display import HTML

    full = claims_table(df, kind)
    html = table_html(full[["section", "claim", "verdict", "why"]])
    if not df.empty:
        for chapter, section in CHAPTERS.items():
            cell = table_html(pd.DataFrame({"section": [section]})).split("<td>")[1].split("</td>")[0]
            html = html.replace(f"<td>{cell}</td>", f'<td><a href="{chapter}.html#findings">{cell}</a></td>')
    return HTML(_coloured(html)
                + f"<details><summary>with the measured numbers and keys</summary>{table_html(full)}</details>")


def _why(row: pd.Series) -> str:
    """The reason shown beside a verdict: the failed preconditions of an inconclusive row, the
    parts of a partly reproduced one."""
    if row.verdict == "inconclusive":
        return row.failed
    if row.verdict == "partly reproduced":
        return row.parts
    return ""


def claims_table(df: pd.DataFrame, kind: str = "claim") -> pd.DataFrame:
    """The findings of ``kind`` (claims by default) with section, key, claim, measured, verdict and
    ``why``: for an inconclusive row the failed preconditions with their numbers, for a partly
    reproduced one the parts that held.  The setting is not repeated here (:func:`settings_table`)."""
    cols = ["section", "key", "claim", "measured", "verdict", "why"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    sel = df[df.kind == kind]
    return sel.assign(why=sel.apply(_why, axis=1))[cols].reset_index(drop=True)


def sanity_table(df: pd.DataFrame) -> pd.DataFrame:
    """The sanity checks (identities and consistency checks), apart from the paper's claims."""
    return claims_table(df, kind="sanity")


def settings_table(df: pd.DataFrame) -> pd.DataFrame:
    """How each chapter's setting differs from the paper's, once per chapter (one row per distinct
    setting text; ``findings`` names the rows that use it when a chapter has more than one)."""
    cols = ["section", "setting", "findings"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for section, g in df.groupby("section", sort=False):
        texts = g.setting.fillna("").astype(str)
        distinct = list(dict.fromkeys(texts))
        for text in distinct:
            keys = g.key[texts == text].tolist()
            out.append({"section": section, "setting": text or "the paper's setting",
                        "findings": "all" if len(distinct) == 1 else ", ".join(keys)})
    return pd.DataFrame(out, columns=cols)


def networks(df: pd.DataFrame) -> pd.DataFrame:
    """Every network (or regression fit) whose numbers feed a verdict, with its measured accuracy
    (or R²), threshold and whether it held (:func:`tcomplex.experiments.report.networks_table`)."""
    t = networks_table(df)
    if t.empty:
        return t.rename(columns={"chapter": "section"})
    t.insert(0, "section", t.chapter.map(CHAPTERS).fillna(t.chapter))
    return t.drop(columns="chapter")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


def thresholds_table() -> pd.DataFrame:
    """Every threshold behind a precondition (:data:`THRESHOLDS`) with what it means."""
    return pd.DataFrame([{"threshold": k, "value": _fmt(v), "meaning": THRESHOLD_TEXT.get(k, "")}
                         for k, v in THRESHOLDS.items()])


def accuracy_thresholds_table() -> pd.DataFrame:
    """The test accuracy a network must reach per (model, dataset) from the paper's Table 1
    (``fraction_of_paper_accuracy`` x the paper's number), and the per-dataset floors used otherwise."""
    frac = THRESHOLDS["fraction_of_paper_accuracy"]
    rows = [{"model": m, "dataset": d, "paper accuracy": round(a, 4), "threshold": round(frac * a, 4)}
            for (m, d), a in PAPER_ACCURACY.items()]
    rows += [{"model": "any other", "dataset": d, "paper accuracy": math.nan, "threshold": f}
             for d, f in ACCURACY_FLOORS.items()]
    return pd.DataFrame(rows)


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
    version = torch.__version__.split("+")[0]
    if torch.cuda.is_available():
        return f"{cpu}, {os.cpu_count()} cores, {torch.cuda.get_device_name(0)}, torch {version} (CUDA {torch.version.cuda})"
    build = f" (a CUDA {torch.version.cuda} build)" if torch.version.cuda else ""
    return f"{cpu}, {os.cpu_count()} cores, no GPU (CPU only), torch {version}{build}"
