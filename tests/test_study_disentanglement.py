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
