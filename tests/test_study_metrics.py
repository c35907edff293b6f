"""Chapter 1's findings (tcomplex.experiments.studies.metrics) on synthetic result tables and states.

Known answers: Propositions 1 and 2 read on estimates pinned at their ceilings (I(X;Σ;Y) =
log2 10, H = log2 n) are inconclusive, on estimates with headroom they are reproduced; a
quantity that rises from l to l+1 in every seed breaks Proposition 2; one seed gives no
interval and an inconclusive verdict; the identities (Eq. 6, plug-in Prop. 2) are sanity
checks, never claims.  The suffix quantities are checked against the estimators directly on
gating states built so that Proposition 2's third part holds or fails by construction.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from tcomplex import estimators as est
from tcomplex.experiments.report import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED
from tcomplex.experiments.studies import metrics as study
from tcomplex.gating import GateInfo, Recording

N = 500
LOG2_N = math.log2(N)


def _rows(i_xsy: float, acc: float = 0.97, seeds: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    out = []
    for seed in seeds:
        for epoch in (0, 1, 2):
            base = {"run_id": f"r{seed}", "model": "mlp_mnist", "dataset": "mnist", "seed": seed, "epoch": epoch}
            out.append({**base, "layer": "__all__", "metric": "I_XSY", "value": i_xsy})
            out.append({**base, "layer": "__all__", "metric": "test_acc", "value": 0.1 if epoch == 0 else acc})
    return pd.DataFrame(out)


def _suffix(h_top: float, seeds: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    """Suffix entropies H(Σ_l..Σ_L), l = 1..3, non-increasing in l, both estimators."""
    return pd.DataFrame([{"seed": s, "epoch": e, "l": l, "H_kde": h_top - l + 1, "H_plugin": h_top - l + 1}
                         for s in seeds for e in (0, 1, 2) for l in (1, 2, 3)])


EQ6 = pd.DataFrame({"layer": ["relu1"], "d": [100], "H_plugin": [5.0], "TC_plugin": [3.0], "C": [8.0],
                    "abs_error": [1e-13]})


def _bw(h_var: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"layer": [f"relu{i}" for i in range(len(h_var))], "log2_n": LOG2_N,
                         "H (variance)": h_var, "H (dims)": [LOG2_N] * len(h_var)})


def _sweep(h: list[float], i: list[float], seeds: tuple[int, ...] = (0, 1, 2), alpha: float = 0.1,
           jitter: float = 0.01) -> pd.DataFrame:
    """A sweep table at one alpha: suffix values h[l-1], i[l-1] (l = 1..L) plus a seed-dependent jitter;
    the single layers carry the same numbers."""
    out = []
    for s in seeds:
        for scope in ("suffix", "layer"):
            for l, (hv, iv) in enumerate(zip(h, i), start=1):
                e = jitter * (s - 1)
                out.append({"run_id": f"r{s}", "seed": s, "alpha": alpha, "n": N, "n_classes": 10, "scope": scope,
                            "l": l, "layer": f"relu{l}", "d": 64, "sigma2": alpha * 64, "H": hv + e, "I_TS": hv + e,
                            "I_TSY": iv + e})
    return pd.DataFrame(out)


def _found(sweep: pd.DataFrame, alphas=(0.1,), rows: pd.DataFrame | None = None, suffix=None, bw=None) -> dict:
    rows = _rows(1.8) if rows is None else rows
    suffix = _suffix(7.0) if suffix is None else suffix
    bw = _bw([6.0]) if bw is None else bw
    return {f.key: f for f in study.findings(rows, suffix, EQ6, bw, "", sweep=sweep, prop_alphas=list(alphas))}


HOLDS = _sweep([6.0, 5.0, 4.0], [2.0, 1.5, 1.0])


def test_saturated_propositions_are_inconclusive_and_identities_are_sanity_checks():
    saturated = _sweep([LOG2_N, LOG2_N, LOG2_N], [math.log2(10)] * 3, jitter=0.0)
    found = _found(saturated, rows=_rows(math.log2(10)), suffix=_suffix(LOG2_N), bw=_bw([LOG2_N]))
    assert found["prop1"].verdict == INCONCLUSIVE
    assert [p.name for p in found["prop1"].failed] == ["I(T;Σ;Y) at α = 0.1 has headroom"]
    assert found["prop2"].verdict == INCONCLUSIVE and len(found["prop2"].failed) == 2
    assert found["prop1_paper_alpha"].verdict == INCONCLUSIVE
    assert found["prop1_paper_alpha"].failed[0].name == "I(X;Σ;Y) at the paper's α has headroom"
    assert found["fig1"].verdict == INCONCLUSIVE and "all n distinct in 9/27" in found["fig1"].failed[0].measured
    assert found["eq6"].kind == "sanity" and found["eq6"].verdict == REPRODUCED
    assert found["prop2_plugin"].kind == "sanity" and found["prop2_plugin"].verdict == REPRODUCED


def test_propositions_with_headroom_and_a_trained_network_are_reproduced():
    found = _found(HOLDS, bw=_bw([6.0, LOG2_N]))
    assert found["prop1"].verdict == REPRODUCED and found["prop2"].verdict == REPRODUCED
    assert found["fig1"].verdict == REPRODUCED and found["prop1_paper_alpha"].verdict == REPRODUCED
    assert "2/2 drops with CI > 0" in found["prop2"].measured
    assert found["bandwidth"].verdict == PARTLY and found["bandwidth"].parts.startswith("held: relu0")
    # the same numbers from networks at chance accuracy
    found = _found(HOLDS, rows=_rows(1.8, acc=0.11))
    assert {found[k].verdict for k in ("prop1", "prop2", "fig1", "bandwidth")} == {INCONCLUSIVE}
    assert found["prop1"].failed[0].name == "mlp_mnist on mnist learned"


def test_a_quantity_rising_with_l_breaks_its_part_of_proposition_2():
    rises = _sweep([6.0, 5.0, 4.0], [1.0, 1.5, 2.0])  # I(T;Σ;Y) grows with l in every seed
    found = _found(rises)
    p2 = found["prop2"]
    assert p2.verdict == PARTLY
    assert p2.parts == "held: H at α = 0.1, I(T;Σ) at α = 0.1; not held: I(T;Σ;Y) at α = 0.1"
    assert "I(T;Σ;Y) at α = 0.1: rises at 2/2 steps" in p2.measured
    iv = study.prop2_intervals(rises, [0.1])
    bad = iv[iv.part == "I_TSY"]
    assert bad.violated.all() and (bad.high < 0).all() and not iv[iv.part == "H"].violated.any()
    # every part rising: not reproduced
    allrise = _sweep([4.0, 5.0, 6.0], [1.0, 1.5, 2.0])
    assert _found(allrise)["prop2"].verdict == NOT_REPRODUCED
    # the fixed-kernel diagnostic is reported beside the verdict, never instead of it
    found = {f.key: f for f in study.findings(_rows(1.8), _suffix(7.0), EQ6, _bw([6.0]), "", sweep=rises,
                                              prop_alphas=[0.1], fixed_sweep=HOLDS)}
    assert found["prop2"].verdict == PARTLY
    assert "whole network's kernel: I(T;Σ;Y) rises at 0/2 steps, drops with CI > 0 at 2/2" in found["prop2"].measured


def test_a_noisy_difference_whose_interval_contains_zero_is_no_violation():
    # I(T;Σ;Y) 1.0 -> 1.02 on average, but seeds disagree: the interval of the drop contains 0
    tbl = pd.concat([_sweep([6, 5, 4], [1.0 + d, 1.0, 0.9], seeds=(s,), jitter=0.0)
                     for s, d in ((0, 0.3), (1, -0.4), (2, 0.04))], ignore_index=True)
    iv = study.prop2_intervals(tbl, [0.1])
    step = iv[(iv.part == "I_TSY") & (iv.l == 1)].iloc[0]
    assert step.low < 0 < step.high and step["mean"] < 0 and not step.violated
    assert _found(tbl)["prop2"].verdict == REPRODUCED


def test_negative_interaction_information_breaks_proposition_1_and_one_seed_is_inconclusive():
    neg = _sweep([6.0, 5.0, 4.0], [-0.5, -0.4, -0.3])
    iv = study.prop1_intervals(neg, [0.1])
    assert list(iv.layer) == ["all layers", "relu1", "relu2", "relu3"] and iv.violated.all()
    assert (iv.negative == 3).all()
    assert _found(neg)["prop1"].verdict == NOT_REPRODUCED
    one = _found(HOLDS[HOLDS.seed == 0], rows=_rows(1.8, seeds=(0,)), suffix=_suffix(7.0, seeds=(0,)))
    assert one["prop1"].verdict == INCONCLUSIVE
    assert one["prop1"].failed[0].name == "enough seeds at the operating alphas"
    assert one["fig1"].verdict == INCONCLUSIVE and one["fig1"].failed[0].name == "enough seeds"


def test_operating_alphas_and_errors():
    both = pd.concat([_sweep([LOG2_N - 0.1] * 3, [2.0] * 3, alpha=0.01, jitter=0.0), HOLDS], ignore_index=True)
    op = study.operating_alphas(both)
    assert op.alpha.tolist() == [0.01, 0.1] and op.headroom.tolist() == [False, True]
    assert op.seeds.tolist() == [3, 3]
    with pytest.raises(ValueError, match="alpha 0.3 is not in the sweep"):
        study.prop1_intervals(both, [0.3])
    with pytest.raises(ValueError, match="prop_alphas is empty"):
        _found(HOLDS, alphas=())


# --- suffix_information on gating states built by hand ---------------------------------------------
def _recording(layers: dict[str, torch.Tensor]) -> Recording:
    info = {k: GateInfo(k, k, 0, "relu", "fc", v.shape[1], (v.shape[1],)) for k, v in layers.items()}
    return Recording(layers, info)


def _states(label_layer_first: bool, n: int = 120, seed: int = 0) -> tuple[Recording, torch.Tensor]:
    """Two layers: one a copy of the label (10 gates per class, one-hot blocks), one 200 random gates
    independent of the label.  Label layer first: I(T;Σ;Y) falls from l = 1 to l = 2 (the noise layer
    knows nothing of Y); label layer last: the suffix l = 1 dilutes it with noise and I(T;Σ;Y) rises."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    label = torch.zeros(n, 40, dtype=torch.bool)
    for c in range(4):
        label[y == c, c * 10:(c + 1) * 10] = True
    noise = torch.rand(n, 200, generator=g) < 0.5
    layers = {"a": label, "b": noise} if label_layer_first else {"a": noise, "b": label}
    return _recording(layers), y


def test_suffix_information_matches_the_estimators():
    rec, y = _states(True)
    t = study.suffix_information(rec, y, alpha=0.05)
    assert list(t.columns) == study.SWEEP_COLUMNS and len(t) == 4
    for _, r in t.iterrows():
        names = rec.names[r.l - 1:] if r.scope == "suffix" else [rec.names[r.l - 1]]
        states = rec.concat(names)
        assert r.d == states.shape[1] and r.sigma2 == pytest.approx(0.05 * states.shape[1])
        assert r.H == pytest.approx(float(est.kde_entropy(states, alpha=0.05, warn=False)), abs=1e-9)
        assert r.I_TSY == pytest.approx(float(est.kde_interaction_information(states, y, alpha=0.05, warn=False)),
                                        abs=1e-9)
        assert r.I_TS == r.H  # no sampling: Eq. 3 reads the same states


def test_proposition_2_third_part_holds_or_fails_by_construction():
    for first, falls in ((True, True), (False, False)):
        tables = []
        for seed in (0, 1, 2):
            rec, y = _states(first, seed=seed)
            t = study.suffix_information(rec, y, alpha=0.05)
            t.insert(0, "seed", seed)
            t.insert(1, "alpha", 0.05)
            t["n"], t["n_classes"] = len(y), 4
            tables.append(t)
        iv = study.prop2_intervals(pd.concat(tables, ignore_index=True), [0.05])
        step = iv[iv.part == "I_TSY"].iloc[0]
        assert bool(step.violated) is (not falls) and bool(step.strict) is falls


def test_suffix_information_reads_eq3_on_the_states_without_sampling():
    rec, y = _states(True)
    g = torch.Generator().manual_seed(5)
    # "dropout": the recorded states lose random gates; without sampling they are the clean ones
    dropped = _recording({k: rec[k] & (torch.rand(rec[k].shape, generator=g) < 0.7) for k in rec.names})
    t = study.suffix_information(dropped, y, alpha=0.05, without_sampling=rec)
    clean = study.suffix_information(rec, y, alpha=0.05)
    assert t.I_TS.tolist() == pytest.approx(clean.H.tolist(), abs=1e-9)
    assert (t.H != t.I_TS).any()
    with pytest.raises(ValueError, match="same layers and widths"):
        study.suffix_information(rec, y, alpha=0.05, without_sampling=_recording({"a": rec["a"]}))
    with pytest.raises(ValueError, match="one entry per recorded sample"):
        study.suffix_information(rec, y[:-1], alpha=0.05)


def test_prop_sweep_on_a_trained_run_is_cached(tmp_path, data_root, one_torch_thread):
    from tcomplex.experiments.studies.common import Context, train_many

    ctx = Context.create("test", str(tmp_path / "runs"), str(tmp_path / "results"), data_root)
    cfgs = study.configs("mlp_mnist", "mnist", 1, [0], 300, 5, 1)
    with pytest.raises(FileNotFoundError, match="train it first"):
        study.prop_sweep(cfgs, ctx, [0.1])
    train_many(cfgs, ctx)
    sw = study.prop_sweep(cfgs, ctx, [0.1, 1.0])
    fixed = study.prop_sweep(cfgs, ctx, [0.1], kernel="fixed")
    assert ctx.run(cfgs[0]).table_path("prop_sweep_dims_fixed").is_file() and fixed.sigma2.nunique() == 1
    assert set(sw.alpha) == {0.1, 1.0} and (sw.n == 50).all() and len(sw) == 2 * 8
    path = ctx.run(cfgs[0]).table_path("prop_sweep_dims")
    stamp = path.stat().st_mtime_ns
    again = study.prop_sweep(cfgs, ctx, [1.0])
    assert path.stat().st_mtime_ns == stamp  # read from the cache, nothing recomputed
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  sw[sw.alpha == 1.0].reset_index(drop=True), check_dtype=False)
    with pytest.raises(ValueError, match="positive numbers"):
        study.prop_sweep(cfgs, ctx, [0.0])
    with pytest.raises(ValueError, match="kernel 'fixed' with bandwidth 'dims'"):
        study.prop_sweep(cfgs, ctx, [0.1], bandwidth="variance", kernel="fixed")


def test_eq4_is_never_negative_so_proposition_1_on_it_is_a_sanity_check():
    """Why Proposition 1 is a sanity check here: Eq. 4 with one sigma0^2 for all classes stays >= 0 for random
    binary states, labels and kernel widths, including labels drawn independently of the states (where the true
    I(Σ;Y) is 0 and an unbiased estimate would be negative about half the time)."""
    g = torch.Generator().manual_seed(0)
    low = math.inf
    for trial in range(300):
        n = int(torch.randint(4, 40, (1,), generator=g))
        d = int(torch.randint(1, 12, (1,), generator=g))
        states = torch.rand(n, d, generator=g) < float(torch.rand(1, generator=g))
        labels = torch.randint(0, int(torch.randint(2, 5, (1,), generator=g)), (n,), generator=g)
        if labels.unique().numel() < 2:
            continue
        alpha = float(10 ** (torch.rand(1, generator=g) * 3 - 2))
        low = min(low, float(est.kde_interaction_information(states, labels, alpha=alpha, warn=False)))
    assert -1e-9 <= low < 0.05
    found = _found(HOLDS)
    assert found["prop1"].kind == "sanity" and found["prop1_paper_alpha"].kind == "sanity"
    assert found["prop2"].kind == "claim" and found["fig1"].kind == "claim"


def test_a_fixed_kernel_is_the_whole_networks_and_keeps_h_from_rising():
    for seed in range(3):
        rec, y = _states(False, seed=seed)  # noise first: the per-suffix kernel sees the label layer rise
        fixed = study.suffix_information(rec, y, alpha=0.05, kernel="fixed")
        total = sum(rec[k].shape[1] for k in rec.names)
        assert fixed.sigma2.tolist() == pytest.approx([0.05 * total] * len(fixed))
        suf = fixed[fixed.scope == "suffix"].sort_values("l")
        assert (suf.H.diff().dropna() <= 1e-12).all()
        assert suf.H.iloc[1] == pytest.approx(
            float(est.kde_entropy(rec.concat(["b"]), alpha=0.05 * total / 40, warn=False)), abs=1e-9)
    with pytest.raises(ValueError, match="kernel='fixed' needs bandwidth='dims'"):
        study.suffix_information(rec, y, alpha=0.05, kernel="fixed", bandwidth="variance")
    with pytest.raises(ValueError, match="kernel must be"):
        study.suffix_information(rec, y, alpha=0.05, kernel="wide")
