"""Plot helpers shared by the book's notebooks (matplotlib + seaborn).

They take tidy frames (one row per run x epoch x layer x metric, as written by
the training substrate) and draw on a given axes; no computation happens here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

__all__ = ["use_style", "metric_curves", "rate_histograms", "mark_ceiling", "show_table", "table_html"]


def use_style() -> None:
    """The book's look: seaborn's whitegrid, readable font sizes, 110 dpi inline figures."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 11, "legend.fontsize": 9})


def metric_curves(
    ax: Any,
    rows: pd.DataFrame,
    metric: str,
    *,
    layer: str = "__all__",
    hue: str = "model",
    x: str = "epoch",
    logx: bool = False,
    label_fmt: str = "{}",
    **kwargs: Any,
) -> Any:
    """Mean +/- sd over seeds of one metric against epochs, one line per ``hue`` value."""
    sel = rows[(rows.metric == metric) & (rows.layer == layer)]
    if sel.empty:
        raise ValueError(f"no rows for metric {metric!r} at layer {layer!r}")
    for key, grp in sel.groupby(hue, sort=False):
        stats = grp.groupby(x).value.agg(["mean", "std", "count"]).reset_index()
        line = ax.plot(stats[x], stats["mean"], marker="o", ms=3, label=label_fmt.format(key), **kwargs)[0]
        if (stats["count"] > 1).any():
            ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                            color=line.get_color(), alpha=0.2, lw=0)
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    return ax


def rate_histograms(ax: Any, rows: pd.DataFrame, epochs: Sequence[int], *, layer: str = "__all__") -> Any:
    """Histograms of per-gate activation rates (Figure 3c) at the given epochs."""
    sel = rows[(rows.metric == "rate_hist") & (rows.layer == layer) & (rows.epoch.isin(list(epochs)))]
    if sel.empty:
        raise ValueError(f"no activation-rate histograms for layer {layer!r} at epochs {list(epochs)}")
    nbins = int(sel["bin"].max()) + 1
    width = 1.0 / nbins
    for e in epochs:
        h = sel[sel.epoch == e].groupby("bin").value.mean().reindex(range(nbins), fill_value=0)
        frac = h / h.sum()
        ax.step([b * width for b in range(nbins)] + [1.0], list(frac) + [frac.iloc[-1]], where="post",
                label=f"epoch {e}")
    ax.set_xlabel("activation rate of a gate")
    ax.set_ylabel("fraction of gates")
    ax.legend()
    return ax


def mark_ceiling(ax: Any, value: float, text: str) -> None:
    """A dashed horizontal line at an estimator's ceiling (e.g. log2 n)."""
    ax.axhline(value, ls="--", lw=1, color="0.4")
    ax.annotate(text, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8,
                color="0.3")


def table_html(df: pd.DataFrame, digits: int = 3) -> str:
    """``df`` as a compact HTML table: rounded, no index, missing values as "–", whole numbers
    without decimals, a column with a nonzero value that would round to 0 in significant digits,
    booleans as yes/no, a zero-width space after every underscore of a text cell
    (so a long identifier wraps there instead of widening the table)."""
    out = df.copy()
    for col in out.columns:
        v = out[col]
        if v.dtype == object or pd.api.types.is_string_dtype(v):  # identifiers (fig2_loo_lenet5_l3) may break after an underscore
            out[col] = v.map(lambda s: s.replace("_", "_\u200b") if isinstance(s, str) else s)
        elif v.dtype == bool:
            out[col] = v.map({True: "yes", False: "no"})
        elif pd.api.types.is_float_dtype(v):
            finite = v.dropna()
            if len(finite) and bool((finite == finite.round()).all()) and bool((finite.abs() < 2**53).all()):
                out[col] = v.astype("Int64")
            elif bool(((finite != 0) & (finite.round(digits) == 0)).any()):
                # a value that rounding would show as 0 (a λ of 1e-4, an lr of 1e-5): significant digits
                out[col] = v.map(lambda x: x if x != x else f"{x:.{max(digits, 1)}g}")
            else:
                out[col] = v.round(digits)
    return out.to_html(index=False, escape=True, border=0, classes="tcomplex-table", na_rep="–")


def show_table(df: pd.DataFrame, digits: int = 3, max_rows: int = 12) -> Any:
    """A compact HTML rendering of a frame for notebooks (see :func:`table_html`).

    A frame longer than ``max_rows`` shows its first ``max_rows`` rows; the whole
    table is one click away (an HTML ``<details>`` element below them).
    """
    from IPython.display import HTML

    if len(df) <= max_rows:
        return HTML(table_html(df, digits))
    return HTML(table_html(df.head(max_rows), digits)
                + f"<details><summary>all {len(df)} rows</summary>{table_html(df, digits)}</details>")
