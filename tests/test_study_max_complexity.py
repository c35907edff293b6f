"""Verdict and aggregation logic of chapter 4 (maximum complexity) on synthetic tables with known answers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tcomplex.experiments.report import INCONCLUSIVE, NOT_MEASURED, NOT_REPRODUCED, PARTLY, REPRODUCED
from tcomplex.experiments.studies import max_complexity as mc

NS = [0, 1, 2, 4, 8, 16, 31]
DEPTHS = [6, 12, 18, 24]
CEIL = math.log2(2000)


def _stacked_h(depth: int, n: int) -> float:
    """Deeper is more complex for n <= 1, shallower for n >= 16 (the paper's stacked findings)."""
    slope = {0: 1.0, 1: 0.5, 2: 0.2, 4: 0.0, 8: -0.1, 16: -0.5, 31: -1.0}[n]
    return 4.0 + slope * depth / 6


def _residual_h(depth: int, n: int) -> float:
    """Deeper always more complex; H rises with n up to n = 8, then falls (the paper's residual findings)."""
    bump = {0: 0.0, 1: 0.4, 2: 0.8, 4: 1.2, 8: 1.5, 16: 1.0, 31: 0.6}[n]
    return 2.0 + depth / 6 + bump


def _table(stacked=_stacked_h, residual=_residual_h, alpha: float = 0.03, saturate=lambda arch, d, n: False,
           seeds: int = 2, r2: float = 0.9):
    rows = []
    for arch, f in (("stacked", stacked), ("residual", residual)):
        for d in DEPTHS:
            for n in NS:
                sat = saturate(arch, d, n)
                rows.append({"alpha": alpha, "arch": arch, "depth": d, "task_n": n,
                             "H": CEIL if sat else f(d, n), "H_sd": 0.05 if seeds > 1 else float("nan"),
                             "seeds": seeds, "saturated": sat, "ceiling": CEIL, "test_mse": 0.1, "r2": r2,
                             "rate_mean": 0.4})
    return pd.DataFrame(rows)


def _verdicts(table, alpha=0.03, tol=0.1):
    return {f.key: f.verdict for f in mc.findings(table, alpha, tol, "")}


def test_n_groups_take_the_smallest_and_largest_third():
    assert mc.n_groups(NS) == ([0, 1], [16, 31])
    assert mc.n_groups([8, 0, 2]) == ([0], [8])


def test_paper_like_table_reproduces_every_claim():
    assert set(_verdicts(_table()).values()) == {REPRODUCED}


def test_reversed_orderings_are_not_reproduced():
    v = _verdicts(_table(stacked=lambda d, n: -_stacked_h(d, n), residual=lambda d, n: 10 - d / 6 + 0 * n))
    assert v["stacked_1"] == NOT_REPRODUCED
    assert v["stacked_2"] == NOT_REPRODUCED
    assert v["residual_1"] == NOT_REPRODUCED
    assert v["residual_2"] == NOT_REPRODUCED  # flat in n: no rise beyond the tolerance
    assert v["residual_3"] == NOT_REPRODUCED


def test_monotone_rise_is_claim_2_but_not_claim_3():
    v = _verdicts(_table(residual=lambda d, n: 2.0 + d / 6 + 0.1 * n))
    assert v["residual_2"] == REPRODUCED
    assert v["residual_3"] == NOT_REPRODUCED


def test_everything_at_the_ceiling_is_inconclusive():
    v = _verdicts(_table(saturate=lambda arch, d, n: True))
    assert set(v.values()) == {INCONCLUSIVE}


def test_one_estimate_at_the_ceiling_makes_its_architecture_inconclusive():
    # the deepest stacked net saturates at n = 0: the stacked claims lose their headroom, the residual ones not
    v = _verdicts(_table(saturate=lambda arch, d, n: arch == "stacked" and d == 24 and n == 0))
    assert v["stacked_1"] == INCONCLUSIVE and v["stacked_2"] == INCONCLUSIVE
    assert v["residual_1"] == REPRODUCED and v["residual_3"] == REPRODUCED


def test_untrained_targets_too_few_seeds_and_two_depths_are_inconclusive():
    failed = {f.key: [p.name for p in f.failed] for f in mc.findings(_table(r2=-0.98), 0.03, 0.1, "")}
    assert all(names[0].endswith("target MLPs fitted") for names in failed.values())
    found = mc.findings(_table(seeds=1), 0.03, 0.1, "")
    assert {f.verdict for f in found} == {INCONCLUSIVE}
    assert all("enough seeds per (depth, task) point" in [p.name for p in f.failed] for f in found)
    # two depths: Spearman rho is +-1 whatever the data; the ordering claims need min_points_rank depths
    two = _table()
    found = {f.key: f for f in mc.findings(two[two.depth.isin([6, 12])], 0.03, 0.1, "")}
    for key in ("stacked_1", "stacked_2", "residual_1"):
        assert found[key].verdict == INCONCLUSIVE
        assert [p.name for p in found[key].failed] == ["enough depths for a rank correlation"]


def test_always_means_every_task():
    # deeper is more complex everywhere except at n = 31: partly, and the row names the task that failed
    found = {f.key: f for f in mc.findings(
        _table(residual=lambda d, n: _residual_h(d, n) if n != 31 else 5 - d / 6), 0.03, 0.1, "")}
    assert found["residual_1"].verdict == PARTLY
    assert found["residual_1"].parts.endswith("not held: n=31")


def test_no_alpha_means_not_measured():
    found = mc.findings(_table(), None, 0.1, "setting")
    assert {f.verdict for f in found} == {NOT_MEASURED}
    assert all(f.setting == "setting" for f in found)


def test_depth_order_signs_and_ties():
    order = mc.depth_order(_table())
    st = order[order.arch == "stacked"].set_index("task_n").rho
    assert st[0] == pytest.approx(1.0) and st[31] == pytest.approx(-1.0)
    assert math.isnan(st[4])  # all depths equal: no ordering


def test_curve_shapes_find_the_interior_maximum():
    shapes = mc.curve_shapes(_table(), tol=0.1)
    res = shapes[shapes.arch == "residual"]
    assert (res.n_at_max == 8).all()
    assert res.rise_then_fall.all() and res.rises_first.all() and res.readable.all()


def test_choose_alpha_skips_saturated_alphas():
    sat = _table(alpha=0.01, saturate=lambda arch, d, n: True)
    ok = _table(alpha=0.03)
    both = pd.concat([sat, ok], ignore_index=True)
    assert mc.choose_alpha(both, [0.01, 0.03], max_saturated=0.1) == 0.03
    assert mc.choose_alpha(sat, [0.01], max_saturated=0.1) is None
    by_alpha = mc.verdicts_by_alpha(both, tol=0.1).set_index("alpha")
    assert by_alpha.loc[0.01, "saturated_fraction"] == 1.0
    assert by_alpha.loc[0.01, "stacked_1"] == INCONCLUSIVE
    assert by_alpha.loc[0.03, "residual_3"] == REPRODUCED


def test_configs_cover_the_grid_and_reach_the_target_mlp():
    cfgs = mc.configs(dataset="mnist", task_ns=[0, 8], depths=[6, 12], architectures=["stacked", "residual"],
                      seeds=[0], epochs=2, train_subset=100, eval_size=50, analysis_size=30,
                      optimizer="adam", lr_stacked=1e-4, lr_residual=1e-3, batch_size=32)
    assert len(cfgs) == 8 and len({c.run_id for c in cfgs}) == 8
    assert all(c.task == "regress" and c.model == "target_mlp" and c.track_epochs == [2] for c in cfgs)
    kinds = {mc.architecture_of(c.model_kwargs) for c in cfgs}
    assert kinds == {("stacked", 6), ("stacked", 12), ("residual", 6), ("residual", 12)}
    assert {(mc.architecture_of(c.model_kwargs)[0], c.lr) for c in cfgs} == {("stacked", 1e-4), ("residual", 1e-3)}
    assert mc.architecture_of(json.dumps({"n_relu": 18, "residual": True})) == ("residual", 18)
    # the default init stays out of the config (cached runs keep their ids); another one reaches residual targets only
    assert all("init" not in c.model_kwargs for c in cfgs)
    scaled = mc.configs(dataset="mnist", task_ns=[0, 8], depths=[6, 12], architectures=["stacked", "residual"],
                        seeds=[0], epochs=2, train_subset=100, eval_size=50, analysis_size=30, optimizer="adam",
                        lr_stacked=1e-4, lr_residual=1e-3, batch_size=32, residual_init="scaled_residual")
    by_arch = {mc.architecture_of(c.model_kwargs)[0]: c for c in scaled}
    assert by_arch["residual"].model_kwargs["init"] == "scaled_residual"
    assert "init" not in by_arch["stacked"].model_kwargs
    assert {c.run_id for c in scaled if "init" not in c.model_kwargs} == \
        {c.run_id for c in cfgs if mc.architecture_of(c.model_kwargs)[0] == "stacked"}
    with pytest.raises(ValueError, match="residual_init"):
        mc.configs(dataset="mnist", task_ns=[0], depths=[6], architectures=["residual"], seeds=[0], epochs=1,
                   train_subset=None, eval_size=None, analysis_size=10, optimizer="adam", lr_stacked=1e-4,
                   lr_residual=1e-3, batch_size=8, residual_init="zero")
    with pytest.raises(ValueError):
        mc.configs(dataset="mnist", task_ns=[0], depths=[6], architectures=["dense"], seeds=[0], epochs=1,
                   train_subset=None, eval_size=None, analysis_size=10, optimizer="adam", lr_stacked=1e-4, lr_residual=1e-3, batch_size=8)


def test_final_table_keeps_the_last_epoch():
    rows = []
    for epoch, h in ((0, 5.0), (3, 4.0)):
        for metric, value in (("H", h), ("saturated_H", 0.0), ("test_loss", 0.5 / (epoch + 1)), ("rate_mean", 0.3)):
            rows.append({"run_id": "r1", "model_kwargs": json.dumps({"n_relu": 6, "residual": True}), "task_n": 4,
                         "seed": 0, "analysis_size": 300, "epoch": epoch, "layer": "__all__", "metric": metric,
                         "value": value, "bin": None})
    t = mc.final_table(pd.DataFrame(rows))
    assert len(t) == 1
    r = t.iloc[0]
    assert (r.arch, r.depth, r.epoch, r.H, r.test_loss) == ("residual", 6, 3, 4.0, 0.125)
    assert not r.saturated_H


def test_grid_text():
    assert mc.grid_text(range(32)) == "0..31"
    assert mc.grid_text([8, 0, 2]) == "[0, 2, 8]"
    assert mc.grid_text([0, 1]) == "[0, 1]"


def test_fit_table_r2_against_the_target_variance():
    final = pd.DataFrame({"run_id": ["a", "b", "c"], "arch": ["stacked", "stacked", "residual"],
                          "task_n": [0, 8, 8], "test_loss": [0.5, 2.0, 0.1], "rate_mean": [0.4, 0.2, 0.3]})
    variance = pd.DataFrame({"task_n": [0, 8], "var_target": [2.0, 1.0]})
    fit = mc.fit_table(final, variance)
    assert fit.r2.tolist() == pytest.approx([0.75, -1.0, 0.9])
    summary = mc.fit_summary(fit).set_index("arch")
    assert summary.loc["stacked", "runs_r2_positive"] == 1 and summary.loc["residual", "runs"] == 1


# --- issue 13: fits gate H, rank correlations over (depth, seed) points -------------------------------------
def _runs(r2_of=lambda arch, d, n, s: 0.9, h_of=lambda arch, d, n, s: _stacked_h(d, n) + 0.01 * s,
          seeds=(0, 1), alpha=0.03):
    """Synthetic alpha rows, final rows and task variances (Var = 1, so R² = 1 - test MSE)."""
    a, f = [], []
    for arch in ("stacked", "residual"):
        for d in DEPTHS:
            for n in NS:
                for s in seeds:
                    rid = f"{arch}-{d}-{n}-{s}"
                    a.append({"run_id": rid, "arch": arch, "depth": d, "task_n": n, "seed": s, "alpha": alpha,
                              "H": h_of(arch, d, n, s), "ceiling": CEIL, "saturated": False})
                    f.append({"run_id": rid, "arch": arch, "depth": d, "task_n": n, "seed": s,
                              "test_loss": 1.0 - r2_of(arch, d, n, s), "rate_mean": 0.4})
    return pd.DataFrame(a), pd.DataFrame(f), pd.DataFrame({"task_n": NS, "var_target": 1.0})


def test_only_fitted_runs_are_read():
    # seed 1 of the deepest stacked target fails Task-31 (R² 0.2): its H (set absurdly high) must not be read
    bad = lambda arch, d, n, s: arch == "stacked" and d == 24 and n == 31 and s == 1  # noqa: E731
    alphas, final, var = _runs(r2_of=lambda *k: 0.2 if bad(*k) else 0.9,
                               h_of=lambda arch, d, n, s: 99.0 if bad(arch, d, n, s) else _stacked_h(d, n))
    read = mc.read_table(alphas, final, var, 0.5)
    assert int((~read.read).sum()) == 1
    table = mc.complexity_table(alphas, final, var, 0.5).set_index(["arch", "depth", "task_n"])
    cell = table.loc[("stacked", 24, 31)]
    assert cell.seeds == 1 and cell.seeds_run == 2 and cell.H == pytest.approx(_stacked_h(24, 31))
    assert cell.r2 == pytest.approx(0.55) and cell.r2_read == pytest.approx(0.9) and cell.r2_min == pytest.approx(0.2)
    # without the gate every run is read and the absurd H enters the mean
    assert mc.complexity_table(alphas, final, var).set_index(["arch", "depth", "task_n"]).loc[
        ("stacked", 24, 31)].H > 40
    # one fitted seed at a point is fewer than min_seeds_point: the stacked verdicts are inconclusive, naming why
    found = {f.key: f for f in mc.findings(table.reset_index(), 0.03, 0.1, "", read)}
    for key in ("stacked_1", "stacked_2"):
        assert found[key].verdict == INCONCLUSIVE
        assert [p.name for p in found[key].failed] == ["enough fitted seeds per (depth, task) point"]
        assert "55 of 56 fits read" in found[key].failed[0].measured
    assert "enough fitted seeds per (depth, task) point" not in [p.name for p in found["residual_1"].failed]


def test_point_without_a_fitted_seed_has_no_h_and_fails_the_fit_precondition():
    alphas, final, var = _runs(r2_of=lambda arch, d, n, s: 0.1 if (arch == "residual" and n == 31) else 0.9,
                               h_of=lambda arch, d, n, s: _residual_h(d, n) + 0.01 * s)
    table = mc.complexity_table(alphas, final, var, 0.5)
    res31 = table[(table.arch == "residual") & (table.task_n == 31)]
    assert res31.H.isna().all() and (res31.seeds == 0).all()
    read = mc.read_table(alphas, final, var, 0.5)
    found = {f.key: f for f in mc.findings(table, 0.03, 0.1, "", read)}
    failed = [p.name for p in found["residual_1"].failed]
    assert found["residual_1"].verdict == INCONCLUSIVE
    assert "residual target MLPs (fits whose H is read) fitted" in failed
    assert "enough fitted seeds per (depth, task) point" in failed
    assert found["stacked_1"].verdict == REPRODUCED  # the stacked fits are all read


def test_rank_correlation_over_depth_seed_points_has_a_fisher_interval():
    alphas, final, var = _runs(h_of=lambda arch, d, n, s: d / 6 + 0.1 * s)  # deeper is more complex, every task
    read = mc.read_table(alphas, final, var, 0.5)
    table = mc.complexity_table(alphas, final, var, 0.5)
    on_points = mc.depth_order(table, read)
    assert (on_points.points == 8).all() and (on_points.depths == 4).all()
    assert (on_points.rho > 0.9).all() and (on_points.rho_low > 0).all()
    # over the four means alone the Fisher-z interval (1 point of freedom) is far wider
    on_means = mc.depth_order(table)
    assert (on_means.points == 4).all()
    width = lambda o: (o.rho_high - o.rho_low).mean()  # noqa: E731
    assert width(on_points) < width(on_means) or on_means.rho.eq(1.0).all()
    # seeds that disagree with the depth order widen the interval to include 0
    noisy = mc.read_table(*_runs(h_of=lambda arch, d, n, s: (d / 6) * (1 if s == 0 else -1)), 0.5)
    o = mc.depth_order(table, noisy)
    assert (o.rho_low < 0).all() and (o.rho_high > 0).all()


def test_read_table_needs_every_fit():
    alphas, final, var = _runs()
    with pytest.raises(ValueError, match="train them first"):
        mc.read_table(alphas, final.iloc[1:], var, 0.5)


def test_no_curve_with_three_read_points_gives_not_measured_shapes():
    # every Task-8 and Task-16..31 fit fails: 4 read tasks remain per depth for the stacked targets, but the residual
    # targets keep only n = 0, 1 -- no curve of three points, and the shape claims are "not measured", not a crash
    alphas, final, var = _runs(r2_of=lambda arch, d, n, s: 0.1 if (arch == "residual" and n >= 2) else 0.9)
    table = mc.complexity_table(alphas, final, var, 0.5)
    shapes = mc.curve_shapes(table[table.arch == "residual"], tol=0.1)
    assert shapes.empty and "rise_then_fall" in shapes.columns
    found = {f.key: f for f in mc.findings(table, 0.03, 0.1, "", mc.read_table(alphas, final, var, 0.5))}
    assert found["residual_2"].verdict == NOT_MEASURED and found["residual_3"].verdict == NOT_MEASURED


def test_figure5_panels_span_up_to_the_ceiling_and_say_when_nothing_is_read():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"arch": ["stacked"] * 3, "depth": [6] * 3, "task_n": [0, 2, 8], "H": [8.2, 8.19, 8.21],
                          "H_sd": [0.0] * 3, "seeds": [2] * 3, "saturated": [True, True, True]})
    fig, (a, b) = plt.subplots(1, 2)
    mc.plot_vs_n(a, table, "stacked", "H", ceiling=8.23)
    assert a.get_ylim() == pytest.approx((0.0, 8.23 * 1.08))  # not zoomed into 8.19-8.21
    assert not a.texts
    mc.plot_vs_n(b, table.assign(H=float("nan")), "stacked", "H", ceiling=8.23)
    assert "no target's H is read" in b.texts[0].get_text()
    plt.close(fig)
