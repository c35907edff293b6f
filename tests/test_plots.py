"""The book's table rendering (tcomplex.plots.table_html / show_table)."""

from __future__ import annotations

import math

import pandas as pd

from tcomplex import plots


def test_tables_show_integers_as_integers_missing_as_dash_and_booleans_as_words():
    df = pd.DataFrame({"seeds": [3.0, 21.0], "r": [-0.51234, math.nan], "learned": [True, False], "n": [5000.0, math.nan]})
    html = plots.table_html(df, digits=2)
    assert "<td>3</td>" in html and "<td>21</td>" in html and "3.0" not in html
    assert "<td>5000</td>" in html and "5000.0" not in html
    assert "-0.51" in html and "NaN" not in html and "nan" not in html and "<td>–</td>" in html
    assert "<td>yes</td>" in html and "<td>no</td>" in html
    # no nonzero value is shown as 0: such a column keeps significant digits
    small = plots.table_html(pd.DataFrame({"lam": [0.0, 1e-4, 0.01], "acc": [0.91234, 0.5, math.nan]}), digits=2)
    assert "<td>0.0001</td>" in small and "<td>0.01</td>" in small and "<td>0</td>" in small
    assert "<td>0.91</td>" in small and "<td>–</td>" in small
    # an identifier may wrap after its underscores (a zero-width space), not widen the table
    keys = plots.table_html(pd.DataFrame({"findings": ["fig2_loo_lenet5_l3", None]}))
    assert "<td>fig2_\u200bloo_\u200blenet5_\u200bl3</td>" in keys and "<td>–</td>" in keys


def test_long_tables_show_their_head_and_the_rest_one_click_away():
    df = pd.DataFrame({"epoch": range(30), "H": [0.5] * 30})
    html = plots.show_table(df, max_rows=12).data
    head, details = html.split("<details>")
    assert head.count("<tr") == 13  # header + 12 rows
    assert "all 30 rows" in details and details.count("<tr") == 31
    assert "<details>" not in plots.show_table(df.head(5)).data
