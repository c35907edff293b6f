"""Tests of the verdict preconditions (tcomplex.experiments.report) and the report's tables
(tcomplex.experiments.studies.reproduction) on synthetic findings and result tables.

Known answers: an untrained network, a saturated estimator, too few seeds and an interval
that contains 0 each turn a would-be verdict into "inconclusive"; a Finding whose
preconditions failed cannot say reproduced, partly or not reproduced; "partly" needs parts.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tcomplex.experiments import report as R
from tcomplex.experiments.studies import reproduction as rep
from tcomplex.experiments.studies.common import Context, fmt_value, setting_note


def _train_rows(accuracies: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """Training rows (long format) with test accuracies at epochs 0 and 3 (the last counts)."""
    rows = []
    for (model, dataset), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            for epoch, value in ((0, 0.1), (3, acc)):
                rows.append({"run_id": f"{model}-{dataset}-{seed}", "model": model, "dataset": dataset,
                             "seed": seed, "epoch": epoch, "layer": "__all__", "metric": "test_acc",
                             "value": value})
    return pd.DataFrame(rows)


def test_accuracy_thresholds_come_from_table_1_or_the_floors():
    assert R.PAPER_ACCURACY[("resnet20", "mnist")] == pytest.approx(0.9870)
    assert R.PAPER_ACCURACY[("vgg11_revised", "mnist")] == pytest.approx(0.99)
    assert R.PAPER_ACCURACY[("mlp_cifar10", "cifar10")] == pytest.approx(0.5252)
    assert len(R.PAPER_ACCURACY) == 16  # every cell of the paper's Table 1
    frac = R.THRESHOLDS["fraction_of_paper_accuracy"]
    assert R.accuracy_threshold("resnet32", "mnist") == pytest.approx(frac * 0.9824)
    assert R.accuracy_threshold("mlp_alpha", "mnist") == R.ACCURACY_FLOORS["mnist"]
    assert R.accuracy_threshold("x", "unknown_dataset") == 0.5
    assert all(k in R.THRESHOLD_TEXT for k in R.THRESHOLDS)


def test_an_untrained_network_makes_a_verdict_inconclusive():
    rows = _train_rows({("mlp_alpha", "mnist"): [0.97, 0.101, 0.96], ("lenet5", "mnist"): [0.985] * 3})
    pre = R.learned_from_rows(rows)
    assert [p.name for p in pre] == ["mlp_alpha on mnist learned", "lenet5 on mnist learned"]
    assert not pre[0].held and pre[0].measured == "min 0.101 over 3 runs" and pre[0].value == pytest.approx(0.101)
    assert pre[1].held and pre[1].threshold == pytest.approx(0.9 * 0.9741)
    assert R.judge(True, pre) == R.INCONCLUSIVE
    assert R.judge(False, pre) == R.INCONCLUSIVE
    assert R.judge(True, pre[1:]) == R.REPRODUCED
    assert R.judge(False, pre[1:]) == R.NOT_REPRODUCED
    assert R.judge(None, pre) == R.NOT_MEASURED
    # no accuracy at all is not a pass
    assert not R.learned("x", [], "lenet5", "mnist").held


def test_a_saturated_estimator_makes_a_verdict_inconclusive():
    n = 2000
    ceiling = math.log2(n)
    sat = R.headroom("H", [10.2, 10.96], ceiling, distinct=2000)
    assert not sat.held and "headroom 0.01" in sat.measured and "2000 distinct patterns" in sat.measured
    ok = R.headroom("H", [7.0, 9.9], ceiling)
    assert ok.held and ok.value == pytest.approx(ceiling - 9.9)
    # H at 91-98% of log2 n (chapter 2 offline) is within the margin although no 1% flag fires
    assert not R.headroom("H", [0.96 * ceiling], ceiling).held
    ii = R.class_headroom("I(X;Σ;Y)", [3.32], 10)
    assert not ii.held and R.class_headroom("I(X;Σ;Y)", [2.9], 10).held
    assert R.judge(True, [ok, sat]) == R.INCONCLUSIVE
    assert not R.headroom("H", [math.nan], ceiling).held


def test_too_few_seeds_or_points_and_open_intervals_make_a_verdict_inconclusive():
    few = R.enough("seeds", 1, int(R.THRESHOLDS["min_seeds_curve"]))
    assert not few.held and few.measured == "1" and R.judge(True, [few]) == R.INCONCLUSIVE
    assert R.enough("depths", 4, int(R.THRESHOLDS["min_points_rank"])).held
    assert R.excludes_zero("r", -0.9, -0.2).held and R.excludes_zero("r", 0.1, 0.5).held
    assert not R.excludes_zero("r", -0.9, 0.2).held
    assert not R.excludes_zero("r", math.nan, math.nan).held


def test_a_finding_with_failed_preconditions_cannot_say_reproduced():
    failed = R.learned("resnet20 on mnist", [0.252], "resnet20", "mnist")
    for v in (R.REPRODUCED, R.NOT_REPRODUCED, R.PARTLY):
        with pytest.raises(ValueError, match="preconditions failed"):
            R.Finding("k", "ch", "claim", "measured", v, preconditions=[failed], parts="a held")
    f = R.Finding("k", "ch", "claim", "measured", R.judge(True, [failed]), preconditions=[failed])
    assert f.verdict == R.INCONCLUSIVE and f.failed == [failed]
    with pytest.raises(ValueError, match="must say which parts held"):
        R.Finding("k", "ch", "claim", "measured", R.PARTLY)
    with pytest.raises(ValueError, match="unknown kind"):
        R.Finding("k", "ch", "claim", "measured", R.REPRODUCED, kind="identity")


def test_judged_gives_partly_only_for_parts():
    v, text = R.judged(True, [], [("a", True), ("b", False)])
    assert v == R.PARTLY and text == "held: a; not held: b"
    assert R.judged(True, [], [("a", True), ("b", True)]) == (R.REPRODUCED, "")
    assert R.judged(True, [], [("a", False)]) == (R.NOT_REPRODUCED, "")
    bad = R.enough("seeds", 1, 3)
    assert R.judged(True, [bad], [("a", True), ("b", False)]) == (R.INCONCLUSIVE, "")


def test_intervals():
    m, lo, hi = R.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(R.mean_ci([1.0])[1])
    d, lo, hi = R.diff_ci([5.0, 5.1, 4.9], [1.0, 1.1, 0.9])
    assert d == pytest.approx(4.0) and 3.5 < lo < 4.0 < hi < 4.5
    rho, lo, hi = R.spearman_ci(range(10), np.arange(10) ** 2)
    assert rho == pytest.approx(1.0) and lo > 0.9
    rho, lo, hi = R.spearman_ci([6, 12], [1.0, 2.0])  # two points: rho is +-1 and has no interval
    assert abs(rho) == pytest.approx(1.0) and math.isnan(lo)
    assert R.fmt_ci(0.5, math.nan, math.nan) == "0.50 (no CI)"


def _findings() -> list[R.Finding]:
    net = R.learned("mlp_alpha on mnist", [0.098], "mlp_alpha", "mnist")
    ok_net = R.learned("lenet5 on mnist", [0.99], "lenet5", "mnist")
    fit = R.fitted("residual target MLPs", [-0.98, 0.3])
    return [
        R.Finding("alpha_H", "06_appendix", "c", "m", R.judge(True, [net]), "epochs 15 (paper not stated)",
                  preconditions=[net]),
        R.Finding("table1_mnist_lenet5", "06_appendix", "c", "m", R.judge(True, [ok_net]), "cells 8 (paper 16)",
                  preconditions=[ok_net]),
        R.Finding("eq6", "01_metrics", "c", "m", R.REPRODUCED, "analysis images 500 (paper 2000)", kind="sanity"),
        R.Finding("prop1", "01_metrics", "c", "m", R.NOT_MEASURED, "analysis images 500 (paper 2000)"),
        R.Finding("residual_1", "04_maximum_complexity", "c", "m", R.judge(True, [fit]), "", preconditions=[fit]),
        R.Finding("residual_2", "04_maximum_complexity", "c", "m", R.PARTLY, "", parts="held: depth 6"),
    ]


def test_findings_round_trip_and_report_tables(tmp_path):
    found = _findings()
    for ch in ("01_metrics", "04_maximum_complexity", "06_appendix"):
        R.save_findings([f for f in found if f.chapter == ch], tmp_path, ch)
    df, missing = rep.collect(tmp_path)
    assert missing == ["02_disentanglement", "03_training_dynamics", "05_minimum_complexity"]
    assert df.chapter.tolist()[0] == "01_metrics"
    counts = rep.verdict_counts(df).set_index("section")
    assert list(counts.columns) == list(R.VERDICTS)
    assert counts.loc["total"].to_dict() == {R.REPRODUCED: 1, R.PARTLY: 1, R.NOT_REPRODUCED: 0,
                                             R.INCONCLUSIVE: 2, R.NOT_MEASURED: 1}
    assert rep.verdict_counts(df, "sanity").set_index("section").loc["total", R.REPRODUCED] == 1
    claims = rep.claims_table(df).set_index("key")
    assert "eq6" not in claims.index and "eq6" in rep.sanity_table(df).key.tolist()
    # an inconclusive row says which precondition failed, with its number
    assert claims.loc["alpha_H", "why"] == "mlp_alpha on mnist learned: 0.098 (needs test accuracy >= 0.900)"
    assert claims.loc["residual_2", "why"] == "held: depth 6"
    # the setting once per chapter, not per row
    settings = rep.settings_table(df)
    assert settings.section.tolist() == ["1. Metrics and propositions", "4. Maximum complexity",
                                         "6. Appendix", "6. Appendix"]
    assert settings.iloc[0].findings == "all" and settings.iloc[1].setting == "the paper's setting"
    assert settings.iloc[2].findings == "alpha_H"
    # every network that gates a verdict, with its accuracy and threshold
    nets = rep.networks(df).set_index("network")
    assert set(nets.index) == {"mlp_alpha on mnist", "lenet5 on mnist", "residual target MLPs"}
    assert not nets.loc["mlp_alpha on mnist", "held"] and nets.loc["lenet5 on mnist", "held"]
    assert nets.loc["lenet5 on mnist", "threshold"] == pytest.approx(0.9 * 0.9741)
    assert nets.loc["residual target MLPs", "measure"] == "R²"
    assert set(rep.thresholds_table().threshold) == set(R.THRESHOLDS)
    assert len(rep.accuracy_thresholds_table()) == len(R.PAPER_ACCURACY) + len(R.ACCURACY_FLOORS)


def test_a_chapter_closes_with_its_claims_then_sanity_checks_each_verdict_in_its_colour():
    found = [f for f in _findings() if f.chapter == "01_metrics"][::-1] + _findings()[:1]
    table = rep.chapter_verdicts(found)
    assert list(table.columns) == ["what", "claim", "measured", "verdict", "why"]
    assert table.what.tolist() == ["claim", "claim", "sanity check"]  # claims first, in their order
    assert table.verdict.tolist() == [R.NOT_MEASURED, R.INCONCLUSIVE, R.REPRODUCED]
    assert table.why.tolist()[1] == "mlp_alpha on mnist learned: 0.098 (needs test accuracy >= 0.900)"
    html = rep.show_verdicts(found).data
    for verdict in (R.NOT_MEASURED, R.INCONCLUSIVE, R.REPRODUCED):
        assert f'style="color:{rep.VERDICT_COLOURS[verdict]};font-weight:600">{verdict}</span>' in html
    # the preconditions and the setting are one click away, not in the compact table
    compact, full = html.split("<details>")
    assert "epochs 15 (paper not stated)" not in compact and "epochs 15 (paper not stated)" in full
    assert set(rep.VERDICT_COLOURS) == set(R.VERDICTS)
    assert rep.chapter_verdicts([]).empty


def test_findings_saved_before_preconditions_are_read_beside_new_ones(tmp_path):
    """An old-format file (no kind, no preconditions) next to new ones: its rows are claims, not dropped."""
    R.save_findings([f for f in _findings() if f.chapter == "01_metrics"], tmp_path, "01_metrics")
    pd.DataFrame({"key": ["stacked_1"], "chapter": ["04_maximum_complexity"], "claim": ["c"], "measured": ["m"],
                  "verdict": [R.NOT_REPRODUCED], "setting": [""]}).to_csv(tmp_path / "findings_04_maximum_complexity.csv",
                                                                        index=False)
    df, _ = rep.collect(tmp_path)
    old = df[df.chapter == "04_maximum_complexity"]
    assert old.kind.tolist() == ["claim"] and old.preconditions_held.tolist() == [True]
    counts = rep.verdict_counts(df).set_index("section")
    assert counts.loc["4. Maximum complexity" + rep.EARLIER, R.NOT_REPRODUCED] == 1  # labelled as such
    assert "1. Metrics and propositions" in counts.index
    assert rep.predating_preconditions(df) == ["04_maximum_complexity"]  # the report names it


def test_the_report_claim_table_links_each_section_and_folds_the_numbers(tmp_path):
    found = _findings()
    for ch in ("01_metrics", "06_appendix"):
        R.save_findings([f for f in found if f.chapter == ch], tmp_path, ch)
    df, _ = rep.collect(tmp_path)
    html = rep.show_claims(df).data
    compact, full = html.split("<details>")
    assert '<a href="06_appendix.html#findings">6. Appendix</a>' in compact
    assert '<a href="01_metrics.html#findings">1. Metrics and propositions</a>' in compact
    assert f'color:{rep.VERDICT_COLOURS[R.INCONCLUSIVE]}' in compact and "<th>measured</th>" not in compact
    assert "<th>measured</th>" in full and "eq6" not in html  # a sanity check is not a claim
    assert "eq6" in rep.show_claims(df, kind="sanity").data


def test_setting_values_print_integers_and_no_nan(tmp_path, monkeypatch):
    assert fmt_value(5000.0) == "5000" and fmt_value(np.int64(7)) == "7" and fmt_value(0.5) == "0.5"
    assert fmt_value(None) == "all" and fmt_value(math.nan) == "all" and fmt_value("mnist") == "mnist"
    ctx = Context("quick", tmp_path, tmp_path, tmp_path)
    note, short = setting_note(ctx, [("training images", 60000, 5000.0), ("training images (b)", "all", math.nan),
                                     ("analysis images", 2000, 2000.0)])
    assert short == "training images 5000 (paper 60000)"
    assert "nan" not in note and "5000.0" not in note
