"""Tests of chapter 2's logic (tcomplex.experiments.studies.disentanglement) on synthetic data.

Known answers: models whose C_l is the same and whose H varies give r(H, TC) < 0
with a CI that excludes 0 (reproduced); models whose C_l varies a lot and drags
TC with it give r > 0 (not reproduced); few models give a CI that includes 0
(inconclusive); saturated H makes a reproduction inconclusive, and so do untrained
networks and too few models in the findings.  On a tiny network, the KDE
H + TC equals the kernel cross-entropy C_hat exactly and plug-in H + TC = C_l.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tcomplex import estimators as est
from tcomplex.experiments.report import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED
from tcomplex.experiments.studies import disentanglement as st


def _measures(h: np.ndarray, tc: np.ndarray, c: np.ndarray, *, model: str = "m", l: int = 3,
              saturated: np.ndarray | None = None, n: int = 200) -> pd.DataFrame:
    k = len(h)
    sat = np.zeros(k, bool) if saturated is None else saturated
    return pd.DataFrame({
        "model": model, "seed": range(k), "run_id": [f"{model}-{i}" for i in range(k)], "l": l,
        "layer": f"relu{l}", "d": 120, "alpha": 0.01, "n": n, "H": h, "TC": tc, "C": c, "H_plus_TC": h + tc,
        "rate_mean": 0.5, "rate_sd": 0.3, "H_saturated": sat, "H_plugin": math.log2(n),
        "TC_plugin": c - math.log2(n), "H_plugin_saturated": True,
    })


def test_constant_c_gives_reproduced() -> None:
    rng = np.random.default_rng(0)
    h = rng.uniform(6, 9, 21)
    c = np.full(21, 50.0)
    tc = c - h + rng.normal(0, 0.05, 21)  # Eq. 6 with a little estimation noise
    table = st.correlation_table(_measures(h, tc, c))
    row = table.iloc[0]
    assert row.r < -0.95 and row.r_high < 0
    assert row.verdict == REPRODUCED
    assert row.Chat_slope_on_H < 1 and "premise holds" in st.reading(table)
    assert row.n_models == 21 and row.H_plugin_saturated == 21
    assert math.isnan(row.r_plugin)  # plug-in H constant at log2 n: no correlation


def test_varying_c_gives_positive_r_and_not_reproduced() -> None:
    rng = np.random.default_rng(1)
    c = rng.uniform(40, 60, 21)
    h = 5 + 0.05 * c + rng.normal(0, 0.05, 21)  # H rises a little with C
    tc = c - h  # TC follows C
    table = st.correlation_table(_measures(h, tc, c))
    row = table.iloc[0]
    assert row.r > 0
    assert row.verdict == NOT_REPRODUCED
    assert row.sdC_over_sdH > 1
    # at fixed C the Eq. 6 relation TC = C - H is exactly anti-correlated
    assert row.r_given_C == pytest.approx(-1.0, abs=1e-6)
    assert row.Chat_slope_on_H > 1
    assert "premise fails" in st.reading(table)


def test_few_models_are_inconclusive() -> None:
    h = np.array([7.0, 7.5, 8.0, 7.2, 7.9])
    tc = np.array([3.0, 3.2, 2.0, 2.4, 2.9])  # weakly negative
    row = st.correlation_table(_measures(h, tc, h + tc)).iloc[0]
    assert row.r < 0 and row.r_high > 0
    assert row.verdict == INCONCLUSIVE


def test_saturation_makes_a_reproduction_inconclusive() -> None:
    rng = np.random.default_rng(2)
    h = rng.uniform(6, 9, 21)
    tc = 50 - h
    sat = np.zeros(21, bool)
    sat[:3] = True
    row = st.correlation_table(_measures(h, tc, np.full(21, 50.0), saturated=sat)).iloc[0]
    assert row.r < 0 and row.r_high < 0 and row.H_saturated == 3
    assert row.verdict == INCONCLUSIVE


def test_group_verdict_edge_cases() -> None:
    assert st.group_verdict(math.nan, math.nan, math.nan, 0) == INCONCLUSIVE
    assert st.group_verdict(0.0, -0.5, 0.5, 0) == INCONCLUSIVE
    assert st.group_verdict(0.8, 0.3, 0.95, 0) == NOT_REPRODUCED
    assert st.group_verdict(-0.9, -0.97, -0.5, 0) == REPRODUCED
    assert st.group_verdict(-0.9, -0.97, 0.1, 0) == INCONCLUSIVE
    assert st.group_verdict(-0.9, -0.97, -0.5, 2) == INCONCLUSIVE


def _rows(accuracies: dict[str, list[float]], dataset: str = "mnist") -> pd.DataFrame:
    """Training rows (long format) with one final test accuracy per model and seed."""
    return pd.DataFrame([{"run_id": f"{m}-{i}", "model": m, "dataset": dataset, "seed": i, "epoch": 2,
                          "layer": "__all__", "metric": "test_acc", "value": a}
                         for m, accs in accuracies.items() for i, a in enumerate(accs)])


def test_findings_overall() -> None:
    rng = np.random.default_rng(3)
    h = rng.uniform(6, 9, 21)
    good = _measures(h, 50 - h + rng.normal(0, 0.05, 21), np.full(21, 50.0), model="a", n=2000)
    bad = _measures(h, 10 + h, 10 + 2 * h, model="b", n=2000)
    rows = _rows({"a": [0.97] * 21, "b": [0.97] * 21})
    found = st.findings(st.correlation_table(pd.concat([good, bad])), "setting", rows)
    assert [f.key for f in found] == ["fig2_a_l3", "fig2_b_l3", "fig2_overall"]
    assert [f.verdict for f in found] == [REPRODUCED, NOT_REPRODUCED, PARTLY]
    assert all(not f.failed for f in found) and "a l=3" in found[-1].parts.split(";")[0]
    all_good = st.findings(st.correlation_table(pd.concat([good, good.assign(l=4)])), "", rows)
    assert all_good[-1].verdict == REPRODUCED
    all_bad = st.findings(st.correlation_table(pd.concat([bad, bad.assign(l=4)])), "", rows)
    assert all_bad[-1].verdict == NOT_REPRODUCED


def test_findings_are_inconclusive_without_their_preconditions() -> None:
    rng = np.random.default_rng(3)
    h = rng.uniform(6, 9, 21)
    good = _measures(h, 50 - h + rng.normal(0, 0.05, 21), np.full(21, 50.0), model="a", n=2000)
    table = st.correlation_table(good)
    # an untrained network (test accuracy at chance) cannot support a reproduction
    (f, overall) = st.findings(table, "", _rows({"a": [0.97] * 20 + [0.11]}))
    assert f.verdict == INCONCLUSIVE and [p.name for p in f.failed] == ["a on mnist learned"]
    assert overall.verdict == INCONCLUSIVE  # fewer than two conclusive groups
    # without the training rows the accuracy is not measured: inconclusive, not reproduced
    assert st.findings(table, "")[0].verdict == INCONCLUSIVE
    # a saturated estimator: every H within 0.5 bit of log2 n (n = 512 -> 9 bits)
    sat = st.correlation_table(_measures(h, 50 - h, np.full(21, 50.0), model="a", n=512))
    f = st.findings(sat, "", _rows({"a": [0.97] * 21}))[0]
    assert f.verdict == INCONCLUSIVE and "has headroom" in f.failed[0].name
    # too few models: 9 < min_seeds_correlation, although r's interval excludes 0
    few = st.correlation_table(_measures(h[:9], 50 - h[:9], np.full(9, 50.0), model="a", n=2000))
    f = st.findings(few, "", _rows({"a": [0.97] * 9}))[0]
    assert few.r_high.iloc[0] < 0
    assert f.verdict == INCONCLUSIVE and [p.name for p in f.failed] == ["enough models (seeds)"]


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.r1 = nn.Linear(6, 10), nn.ReLU()
        self.fc2, self.r2 = nn.Linear(10, 8), nn.ReLU()
        self.fc3, self.r3 = nn.Linear(8, 5), nn.ReLU()
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.r3(self.fc3(self.r2(self.fc2(self.r1(self.fc1(x)))))))


def test_measure_model_identities() -> None:
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    rows = st.measure_model(_Tiny(), x, [2, 3])
    assert [r["l"] for r in rows] == [2, 3]
    assert [r["layer"] for r in rows] == ["r2", "r3"]
    assert [r["d"] for r in rows] == [8, 5]
    for r in rows:
        # plug-in: Eq. 6 exactly (small layers, 300 samples: not saturated)
        assert r["H_plugin"] + r["TC_plugin"] == pytest.approx(r["C"], abs=1e-9)
        assert not r["H_plugin_saturated"]
        assert r["alpha"] == 0.01 and r["n"] == 300
    # KDE: H + TC = -mean_j log (1/n) sum_k K(sigma_j, hat sigma_k) (the own-kernel term cancels)
    model = _Tiny().eval()
    with torch.no_grad():
        pre = model.fc3(model.r2(model.fc2(model.r1(model.fc1(x)))))
    s = (pre > 0).float()
    sigma2 = 0.01 * s.shape[1]
    rates = s.mean(0)
    synth = (torch.rand(s.shape, generator=torch.Generator().manual_seed(0)) < rates).float()
    d2 = torch.cdist(s.double(), synth.double()) ** 2
    c_hat = -(torch.logsumexp(-d2 / (2 * sigma2), 1) - math.log(len(s))).mean() / math.log(2)
    assert rows[1]["H_plus_TC"] == pytest.approx(float(c_hat), rel=1e-6)
    assert rows[1]["C"] == pytest.approx(est.marginal_entropy_sum(s.bool()), abs=1e-12)


def test_partial_r_needs_five_models() -> None:
    assert math.isnan(st.partial_r(np.arange(4.0), np.arange(4.0), np.arange(4.0)))


def test_configs_track_only_the_last_epoch() -> None:
    cfgs = st.configs(["lenet5", "mlp_beta"], [0, 1], dataset="mnist", epochs=3, train_subset=100,
                      track_per_class=2, eval_size=50)
    assert [(c.model, c.seed) for c in cfgs] == [("lenet5", 0), ("lenet5", 1), ("mlp_beta", 0), ("mlp_beta", 1)]
    assert all(c.track_epochs == [3] and not c.per_layer and not c.tc for c in cfgs)
    assert all(c.test_subset == 50 and c.eval_train_size == 50 for c in cfgs)
    full = st.configs(["lenet5"], [0], dataset="mnist", epochs=1, train_subset=None, track_per_class=2,
                      eval_size=None)[0]
    assert full.test_subset is None and full.eval_train_size == 10000


# --- issue 13: grid, pooled groups, sensitivity, both Eq. 28 variants ------------------
def _grid(n_models: int = 21, n: int = 2000) -> pd.DataFrame:
    """A synthetic measurement grid: models a and b (layer 3, same width) and c (layer 3, another width),
    two lengths, alpha factors 1 and 10, both bandwidths.  At factor 1 H sits at log2 n (no headroom);
    at factor 10 it has headroom.  Standard TC = C_hat - H with constant C_hat (r = -1 up to noise); the
    leave-one-out TC rises with H (r > 0)."""
    rng = np.random.default_rng(7)
    out = []
    for model, d in (("a", 120), ("b", 120), ("c", 500)):
        h10 = rng.uniform(5, 7, n_models)
        for length, epochs in (("short", 1), ("converged", 10)):
            for bw in ("dims", "variance"):
                for f in (1.0, 10.0):
                    h = np.full(n_models, math.log2(n) - 0.1) - rng.uniform(0, 0.05, n_models) if f == 1 else h10
                    for i in range(n_models):
                        out.append({"model": model, "seed": i, "run_id": f"{model}-{i}", "length": length,
                                    "epochs": epochs, "l": 3, "layer": "relu3", "d": d, "n": n, "bandwidth": bw,
                                    "alpha_factor": f, "alpha": 0.01 * f, "sigma2": 0.01 * f * d, "H": h[i],
                                    "H_saturated": False, "TC": 20 - h[i] + rng.normal(0, 0.01),
                                    "TC_loo": 0.5 * h[i] + rng.normal(0, 0.01), "C": 60.0,
                                    "H_plus_TC": 20.0, "rate_mean": 0.5, "rate_sd": 0.3, "H_plugin": math.log2(n),
                                    "TC_plugin": 60 - math.log2(n), "H_plugin_saturated": True})
    return pd.DataFrame(out)


def _rows_epochs(models: str = "abc", n_models: int = 21, acc: float = 0.97) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": f"{m}-{i}", "model": m, "dataset": "mnist", "seed": i, "epoch": e,
                          "layer": "__all__", "metric": "test_acc", "value": acc}
                         for m in models for i in range(n_models) for e in (1, 10)])


def test_pooled_groups_share_a_width_and_keep_their_architecture() -> None:
    m = st.at_setting(_grid(), alpha_factor=10.0)
    p = st.pooled(m)
    assert set(p.model) == {"a+b"} and len(p) == 42  # c has another width: not pooled
    assert sorted(set(p.arch)) == ["a", "b"]
    with pytest.raises(ValueError, match="no rows for length='converged', alpha_factor=3"):
        st.at_setting(_grid(), alpha_factor=3.0)


def test_pooled_within_r_removes_group_means() -> None:
    rng = np.random.default_rng(8)
    # within each group y falls with x; the group means rise together: raw r > 0, within r < 0
    x = np.concatenate([rng.normal(0, 1, 20), rng.normal(10, 1, 20)])
    y = np.concatenate([-x[:20], 30 - x[20:]]) + rng.normal(0, 0.1, 40)
    groups = ["u"] * 20 + ["v"] * 20
    assert np.corrcoef(x, y)[0, 1] > 0.5
    r, lo, hi = st.pooled_within_r(x, y, groups)
    assert r < -0.99 and hi < 0
    # one group: the ordinary Pearson r with the Fisher interval of pearson_ci
    r1, lo1, hi1 = st.pooled_within_r(x[:20], y[:20], groups[:20])
    ref = st.pearson_ci(x[:20], y[:20])
    assert (r1, lo1, hi1) == pytest.approx(ref[:3])
    assert all(math.isnan(v) for v in st.pooled_within_r(x[:3], y[:3], ["u"] * 3))


def test_correlation_table_variants() -> None:
    m = st.at_setting(_grid(), alpha_factor=10.0)
    std = st.correlation_table(m, "standard")
    loo = st.correlation_table(m, "leave_one_out")
    assert (std.r < -0.99).all() and (loo.r > 0.99).all()
    assert set(std.variant) == {"standard"} and set(loo.variant) == {"leave_one_out"}
    assert (std.alpha_factor == 10.0).all()
    with pytest.raises(ValueError, match="variant must be one of"):
        st.correlation_table(m, "other")
    with pytest.raises(ValueError, match="needs the column 'TC_loo'"):
        st.correlation_table(m.drop(columns="TC_loo"), "leave_one_out")


def test_sensitivity_table_shape_and_semantics() -> None:
    grid, rows = _grid(), _rows_epochs()
    sens = st.sensitivity_table(grid, rows)
    # 2 lengths x 2 bandwidths x 2 alpha factors x 2 variants x (3 architectures + 1 pooled group)
    assert len(sens) == 2 * 2 * 2 * 2 * 4
    assert list(sens.columns) == st.SENSITIVITY_COLUMNS
    assert sens.groupby(["model", "l", "length", "bandwidth", "alpha_factor", "variant"]).size().eq(1).all()
    # at the paper's alpha H has no headroom: inconclusive, and the failed precondition is named
    at1 = sens[sens.alpha_factor == 1.0]
    assert (at1.verdict == INCONCLUSIVE).all() and at1.failed.str.contains("has headroom").all()
    assert (at1.headroom < 0.5).all()
    # with headroom: standard r < 0 (reproduced), leave-one-out r > 0 (not reproduced)
    at10 = sens[sens.alpha_factor == 10.0]
    assert (at10[at10.variant == "standard"].verdict == REPRODUCED).all()
    assert (at10[at10.variant == "leave_one_out"].verdict == NOT_REPRODUCED).all()
    assert (at10.failed == "").all()
    assert set(sens[sens.length == "short"].epochs) == {1} and set(sens[sens.length == "converged"].epochs) == {10}
    # an untrained architecture at the short length turns its groups (and the pooled one) inconclusive
    low = _rows_epochs()
    low.loc[(low.model == "a") & (low.epoch == 1), "value"] = 0.11
    s2 = st.sensitivity_table(grid, low)
    short_a = s2[(s2.length == "short") & s2.model.isin(["a", "a+b"])]
    assert (short_a.verdict == INCONCLUSIVE).all() and short_a.failed.str.contains("a on mnist learned").all()
    conv_a = s2[(s2.length == "converged") & (s2.model == "a") & (s2.alpha_factor == 10.0)]
    assert (conv_a.verdict != INCONCLUSIVE).all()
    # pivots: one row per (group, variant), one column per value
    piv = st.sensitivity_pivot(sens, "alpha_factor")
    assert list(piv.columns) == ["model", "l", "variant", "alpha_factor=1", "alpha_factor=10"] and len(piv) == 8
    assert piv.iloc[0]["alpha_factor=10"].endswith(" R")
    assert list(st.sensitivity_pivot(sens, "length", alpha_factor=10.0).columns)[3:] == ["length=short",
                                                                                        "length=converged"]


def test_operating_alpha_findings_and_survival() -> None:
    grid, rows = _grid(), _rows_epochs()
    sens = st.sensitivity_table(grid, rows)
    factors = st.operating_factors(sens)
    assert factors == {("a", 3): 10.0, ("b", 3): 10.0, ("c", 3): 10.0, ("a+b", 3): 10.0}
    found = st.chapter_findings(grid, rows, "setting", factors)
    keys = [f.key for f in found]
    assert keys == ["fig2_a_l3", "fig2_b_l3", "fig2_c_l3", "fig2_a_b_l3", "fig2_overall",
                    "fig2_loo_a_l3", "fig2_loo_b_l3", "fig2_loo_c_l3", "fig2_loo_a_b_l3", "fig2_loo_overall"]
    v = {f.key: f.verdict for f in found}
    assert v["fig2_overall"] == REPRODUCED and v["fig2_loo_overall"] == NOT_REPRODUCED
    assert "3 (architecture, layer) groups" in found[4].measured  # the pooled group is not a part
    assert "α = 0.1 (10× the paper's" in found[0].measured and "within-architecture r" in found[3].measured
    text = st.survival(sens, found)
    assert "survives under TC by Eq. 28 as written, not under TC by the leave-one-out Eq. 28" in text
    # without headroom anywhere the operating alpha is the paper's and every verdict is inconclusive
    only1 = grid[grid.alpha_factor == 1.0]
    s1 = st.sensitivity_table(only1, rows)
    f1 = st.operating_factors(s1)
    assert set(f1.values()) == {1.0}
    found1 = st.chapter_findings(only1, rows, "", f1)
    assert all(f.verdict == INCONCLUSIVE for f in found1)
    assert "neither variant (both overall verdicts are inconclusive)" in st.survival(s1, found1)


def test_measure_grid_matches_the_direct_estimators() -> None:
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    model = _Tiny()
    grid = st.measure_grid(model, x, [2, 3], alpha_factors=[1.0, 5.0], bandwidths=["dims", "variance"])
    assert len(grid) == 2 * 2 * 2 and list(grid[0]) == st.GRID_COLUMNS
    ref = {r["l"]: r for r in st.measure_model(model, x, [2, 3])}
    with torch.no_grad():
        s3 = model.fc3(model.r2(model.fc2(model.r1(model.fc1(x))))) > 0
    for r in grid:
        if r["alpha_factor"] == 1.0 and r["bandwidth"] == "dims":
            m = ref[r["l"]]
            assert r["H"] == pytest.approx(m["H"], rel=1e-6) and r["TC"] == pytest.approx(m["TC"], rel=1e-5, abs=1e-6)
            assert r["C"] == m["C"] and r["H_plugin"] == m["H_plugin"]
        if r["l"] == 3:
            a = 0.01 * r["alpha_factor"]
            assert r["TC_loo"] == pytest.approx(float(est.kde_total_correlation(
                s3, alpha=a, bandwidth=r["bandwidth"], leave_one_out=True)), rel=1e-5, abs=1e-6)
            assert r["sigma2"] == est.kde_bandwidth(s3, alpha=a, bandwidth=r["bandwidth"])
    with pytest.raises(ValueError, match="alpha_factors must be positive"):
        st.measure_grid(model, x, [2], alpha_factors=[0.0])
    with pytest.raises(ValueError, match="bandwidths must be"):
        st.measure_grid(model, x, [2], bandwidths=["silverman"])


def test_configs_track_the_short_length() -> None:
    cfgs = st.configs(["lenet5"], [0], dataset="mnist", epochs=10, train_subset=None, track_per_class=2,
                      eval_size=None, short_epochs=1)
    assert cfgs[0].track_epochs == [1, 10]
    same = st.configs(["lenet5"], [0], dataset="mnist", epochs=1, train_subset=None, track_per_class=2,
                      eval_size=None, short_epochs=1)
    assert same[0].track_epochs == [1]
    with pytest.raises(ValueError, match="short_epochs must be >= 1"):
        st.configs(["lenet5"], [0], dataset="mnist", epochs=3, train_subset=None, track_per_class=2,
                   eval_size=None, short_epochs=0)
