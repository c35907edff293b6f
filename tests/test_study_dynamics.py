"""Tests of chapter 3's aggregation and verdict logic on synthetic curves with known shapes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tcomplex.experiments.report import INCONCLUSIVE, NOT_MEASURED, NOT_REPRODUCED, PARTLY, REPRODUCED
from tcomplex.experiments.studies import dynamics as D

EPOCHS = [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 500]


def _rows(run_id: str, group: str, model: str, values: dict[str, list[float]], *, epochs=EPOCHS,
          per_class: int = 200, dataset: str = "mnist", seed: int = 0, layer: str = "__all__",
          saturated: list[float] | None = None, hist: dict[int, list[float]] | None = None,
          train_subset: float = float("nan"), n_epochs: int | None = None,
          normalization: str = "dataset", extra: dict | None = None) -> pd.DataFrame:
    """Tidy rows shaped like the training substrate's output (after :func:`D.with_groups`)."""
    base = {"run_id": run_id, "group": group, "model": model, "dataset": dataset, "seed": seed,
            "normalization": normalization,
            "analysis_per_class": per_class, "train_subset": train_subset, "epochs": n_epochs or max(epochs),
            "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 128, "bandwidth": "dims",
            "schedule": "none", "flip": False, **(extra or {})}
    out = []
    for metric, vals in values.items():
        for e, v in zip(epochs, vals):
            out.append({**base, "epoch": e, "layer": layer, "metric": metric, "value": v, "bin": np.nan})
    sat = saturated if saturated is not None else [0.0] * len(epochs)
    if "H" in values:
        for e, s in zip(epochs, sat):
            out.append({**base, "epoch": e, "layer": layer, "metric": "saturated_H", "value": s, "bin": np.nan})
    for e, counts in (hist or {}).items():
        for b, c in enumerate(counts):
            out.append({**base, "epoch": e, "layer": layer, "metric": "rate_hist", "value": c, "bin": b})
    return pd.DataFrame(out)


def _dip(first: float, low: float, last: float, at: int = 55) -> list[float]:
    """A curve that falls linearly (in the index) to ``low`` at epoch ``at`` and climbs back."""
    i_min = EPOCHS.index(at)
    down = np.linspace(first, low, i_min + 1)
    up = np.linspace(low, last, len(EPOCHS) - i_min)
    return list(down) + list(up[1:])


def _rise_then_flat() -> list[float]:
    return [3.0, 3.5, 4.0, 4.4, 4.8, 5.1, 5.3, 5.4, 5.45, 5.5, 5.5, 5.52, 5.52, 5.53, 5.53]


def _common(n_epochs: int, width: float = 1000.0, c: float = 500.0) -> dict[str, list[float]]:
    return {"C": [c] * n_epochs, "width": [width] * n_epochs, "test_acc": [0.97] * n_epochs}


def test_configs_follow_the_run_lines():
    cfgs = D.configs([["plain", "mlp_mnist", "mnist", 7, 3000], ["residual", "resmlp10", "mnist", 4, None],
                      ["vae", "vae_classifier", "mnist", 3, 1000]], [0, 1], 2000, 0, 500)
    assert len(cfgs) == 6
    mlp, res, vae = cfgs[0], cfgs[2], cfgs[4]
    assert (mlp.analysis_per_class, mlp.epochs, mlp.train_subset, mlp.label) == (200, 7, 3000, "plain")
    assert mlp.track_log and not mlp.per_layer and mlp.test_subset == 500 and mlp.eval_train_size == 500
    assert res.model_kwargs == {"init": "torch_default"}
    assert vae.task == "vae" and vae.per_layer
    with pytest.raises(ValueError, match="unknown group"):
        D.configs([["dense", "mlp_mnist", "mnist", 1, None]], [0], 200, 0, None)
    with pytest.raises(ValueError, match="unknown dataset"):
        D.configs([["plain", "mlp_mnist", "emnist", 1, None]], [0], 200, 0, None)


def test_voc_analysis_set_has_2000_images():
    (cfg,) = D.configs([["vgg", "vgg16", "voc2012_crops", 1, None]], [0], 2000, 10, None)
    assert cfg.analysis_per_class == 100


def test_paper_setting_has_no_substitutions():
    comps = D.paper_comparisons(D.PAPER_RUNS, 2000)
    assert all(paper == ours for _, paper, ours in comps)
    comps = D.paper_comparisons([["plain", "mlp_mnist", "mnist", 5, 3000]], 200)
    changed = {what for what, paper, ours in comps if paper != ours}
    assert {"MLP-MNIST epochs", "analysis images", "vgg runs (model/dataset)"} <= changed


def test_dip_then_rise_reproduced_and_saturated_curve_is_stuck():
    k = len(EPOCHS)
    dip = _rows("a", "plain", "mlp_mnist", {"H": _dip(10.8, 7.3, 10.6), "I_XSY": _dip(3.2, 1.5, 3.2), **_common(k)})
    ceiling = math.log2(2000)
    flat = _rows("b", "plain", "lenet5", {"H": [ceiling - 0.01] * k, "I_XSY": [math.log2(10) - 0.001] * k,
                                          **_common(k)}, saturated=[1.0] * k)
    mono = _rows("c", "plain", "mlp_beta", {"H": list(np.linspace(5, 8, k)), "I_XSY": list(np.linspace(1, 2, k)),
                                            **_common(k)})
    cur = D.curves(pd.concat([dip, flat, mono]))
    shapes = D.shape_table(cur, tol=0.1).set_index(["model", "metric"])
    assert shapes.loc[("mlp_mnist", "H"), "holds"] and shapes.loc[("mlp_mnist", "I_XSY"), "holds"]
    assert shapes.loc[("mlp_mnist", "H"), "min_epoch"] == 55
    assert shapes.loc[("mlp_mnist", "H"), "drop"] == pytest.approx(3.5)
    for metric in ("H", "I_XSY"):
        assert shapes.loc[("lenet5", metric), "stuck"] and not shapes.loc[("lenet5", metric), "holds"]
        assert "stuck" in shapes.loc[("lenet5", metric), "why"]
        assert not shapes.loc[("mlp_beta", metric), "holds"]
        assert shapes.loc[("mlp_beta", metric), "why"] == "no dip"


def test_rise_then_saturate_and_residual_rise():
    k = len(EPOCHS)
    flat_late = _rise_then_flat()
    late = list(np.linspace(3.0, 3.2, k - 3)) + [4.0, 5.0, 6.0]  # rises mostly in the second half
    vgg_ok = _rows("v1", "vgg", "vgg11_revised", {"H": flat_late, "I_XSY": [x / 2 for x in flat_late], **_common(k)})
    vgg_late = _rows("v2", "vgg", "vgg16", {"H": late, "I_XSY": [x / 2 for x in late], **_common(k)})
    res_ok = _rows("r1", "residual", "resnet20", {"H": late, "I_XSY": flat_late, **_common(k)})
    res_dip = _rows("r2", "residual", "resmlp10", {"H": _dip(6.0, 4.0, 7.0), "I_XSY": _dip(2.0, 1.0, 2.5),
                                                   **_common(k)})
    shapes = D.shape_table(D.curves(pd.concat([vgg_ok, vgg_late, res_ok, res_dip])), tol=0.1)
    s = shapes.set_index(["model", "metric"])
    assert s.loc[("vgg11_revised", "H"), "holds"] and s.loc[("vgg11_revised", "H"), "levels_off"]
    assert not s.loc[("vgg16", "H"), "holds"] and s.loc[("vgg16", "H"), "why"].endswith("still rising late")
    assert s.loc[("resnet20", "H"), "holds"] and s.loc[("resnet20", "I_XSY"), "holds"]
    assert not s.loc[("resmlp10", "H"), "holds"] and not s.loc[("resmlp10", "I_XSY"), "holds"]
    # one seed per curve and no accuracies: every curve claim is inconclusive, never reproduced
    found = {f.key: f for f in D.findings(shapes, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                                           pd.DataFrame(), pd.DataFrame(), 0.1, "")}
    assert found["rise_then_saturate"].verdict == INCONCLUSIVE
    assert found["residual_rise"].verdict == INCONCLUSIVE
    assert found["dip_then_rise"].verdict == NOT_MEASURED
    assert found["vae_gap"].verdict == NOT_MEASURED
    assert found["authors_curve"].verdict == NOT_MEASURED


def _seeded(run_id: str, group: str, model: str, values: dict[str, list[float]], seeds=(0, 1, 2)) -> pd.DataFrame:
    return pd.concat([_rows(f"{run_id}{s}", group, model, values, seed=s) for s in seeds])


def test_curve_claims_with_seeds_have_parts():
    k = len(EPOCHS)
    flat_late = _rise_then_flat()
    late = list(np.linspace(3.0, 3.2, k - 3)) + [4.0, 5.0, 6.0]
    half = [x / 2 for x in flat_late]
    rows = pd.concat([
        _seeded("v1", "vgg", "vgg11_revised", {"H": flat_late, "I_XSY": half, **_common(k)}),
        _seeded("v2", "vgg", "vgg16", {"H": late, "I_XSY": [x / 2 for x in late], **_common(k)}),
        _seeded("r1", "residual", "resnet20", {"H": late, "I_XSY": half, **_common(k)}),
        _seeded("r2", "residual", "resmlp10", {"H": _dip(6.0, 4.0, 7.0), "I_XSY": _dip(2.0, 1.0, 2.5), **_common(k)}),
    ])
    cur = D.curves(rows)
    shapes = D.shape_table(cur, tol=0.1)
    found = {f.key: f for f in D.findings(shapes, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), cur, rows, 0.1, "")}
    f = found["rise_then_saturate"]
    assert f.verdict == PARTLY and not f.failed
    assert f.parts.startswith("held: vgg11_revised/mnist H, vgg11_revised/mnist I(X;Σ;Y); not held: vgg16")
    # "most residual networks": 2 of 4 curves is not most
    assert found["residual_rise"].verdict == PARTLY and "resnet20/mnist H" in found["residual_rise"].parts
    # the same curves from networks at chance accuracy: inconclusive, with the number
    untrained = cur.assign(test_acc=0.1)
    found = {f.key: f for f in D.findings(shapes, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), untrained, rows,
                                           0.1, "")}
    f = found["rise_then_saturate"]
    assert f.verdict == INCONCLUSIVE
    assert [p.name for p in f.failed] == ["vgg11_revised on mnist learned", "vgg16 on mnist learned"]
    assert f.failed[0].measured == "min 0.100 over 3 runs"


def test_dip_then_rise_needs_headroom_and_seeds():
    k = len(EPOCHS)
    dip = {"H": _dip(10.0, 7.3, 9.8), "I_XSY": _dip(3.0, 1.5, 3.0), **_common(k)}
    rows = _seeded("a", "plain", "mlp_mnist", dip)
    cur = D.curves(rows)
    found = {f.key: f for f in D.findings(D.shape_table(cur, 0.1), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                                           cur, rows, 0.1, "")}
    assert found["dip_then_rise"].verdict == REPRODUCED and not found["dip_then_rise"].failed
    # a saturated estimator: the same dip, but H climbs back to within 0.5 bit of log2 2000 = 10.97
    sat = _seeded("b", "plain", "mlp_mnist", {**dip, "H": _dip(10.9, 7.3, 10.9)})
    cur = D.curves(sat)
    f = D.findings(D.shape_table(cur, 0.1), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), cur, sat, 0.1, "")[0]
    assert f.verdict == INCONCLUSIVE and [p.name for p in f.failed] == ["H (mlp_mnist on mnist) has headroom"]
    # too few seeds
    one = rows[rows.seed == 0]
    cur = D.curves(one)
    f = D.findings(D.shape_table(cur, 0.1), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), cur, one, 0.1, "")[0]
    assert f.verdict == INCONCLUSIVE
    assert [p.name for p in f.failed] == ["enough seeds (mlp_mnist on mnist)",
                                          "deciding differences of the curves that hold: intervals above 0"]


def test_rate_table_sees_noisy_activations_removed():
    k = len(EPOCHS)
    h = _dip(10.8, 7.3, 10.6)
    c = [900.0] * k
    c[EPOCHS.index(55)] = 400.0  # C/d falls from 0.9 to 0.4 bits per gate at the minimum
    hist = {0: [0] * 8 + [50, 400, 400, 50] + [0] * 8, 55: [300] + [50] * 10 + [0] * 8 + [200],
            500: [250] + [50] * 10 + [0] * 8 + [250]}
    rows = _rows("a", "plain", "mlp_mnist", {"H": h, "I_XSY": h, "C": c, "width": [1000.0] * k,
                                             "test_acc": [0.9] * k}, hist=hist)
    rates = D.rate_table(rows, D.curves(rows))
    r = rates.iloc[0]
    assert r.min_epoch == 55 and r.removed
    assert r.gate_entropy_0 == pytest.approx(0.9) and r.gate_entropy_min == pytest.approx(0.4)
    assert r.decided_0 == 0 and r.decided_min == pytest.approx(0.5)
    # the same gate entropies under an H curve stuck at log2 n: no minimum, nothing removed
    stuck = _rows("b", "plain", "mlp_mnist", {"H": [math.log2(2000)] * k, "I_XSY": h, "C": c, "width": [1000.0] * k,
                                              "test_acc": [0.9] * k}, hist=hist, saturated=[1.0] * k)
    r = D.rate_table(stuck, D.curves(stuck)).iloc[0]
    assert r.H_stuck and not r.removed


def test_vae_gap_shrinks_unless_h_saturated_at_the_end():
    ep = [0, 1, 2, 3, 5]
    shrinking = _rows("v", "vae", "vae_classifier", {"H": [7.6, 7.5, 7.4, 7.3, 7.2], "I_XS": [4.0, 5.0, 6.0, 6.5, 7.0]},
                      epochs=ep, layer="classifier.relu1")
    sat_end = _rows("v", "vae", "vae_classifier", {"H": [7.0, 7.3, 7.5, 7.6, 7.64], "I_XS": [4.0, 5.0, 6.0, 6.5, 7.0]},
                    epochs=ep, layer="classifier.relu2", saturated=[0, 0, 0, 1, 1])
    encoder = _rows("v", "vae", "vae_classifier", {"H": [1.0] * 5, "I_XS": [1.0] * 5}, epochs=ep,
                    layer="encoder.relu")
    gaps = D.vae_gaps(pd.concat([shrinking, sat_end, encoder]), tol=0.1).set_index("layer")
    assert list(gaps.index) == ["classifier.relu1", "classifier.relu2"]
    assert gaps.loc["classifier.relu1", "gap_first"] == pytest.approx(3.6)
    assert gaps.loc["classifier.relu1", "gap_last"] == pytest.approx(0.2)
    assert gaps.loc["classifier.relu1", "holds"] and gaps.loc["classifier.relu1", "spearman"] == pytest.approx(-1)
    assert gaps.loc["classifier.relu2", "decreased"] and not gaps.loc["classifier.relu2", "holds"]
    found = {f.key: f for f in D.findings(pd.DataFrame(columns=["group"]), pd.DataFrame(), gaps.reset_index(),
                                           pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), 0.1, "")}
    # one seed, and no classifier accuracy to show that it learned: inconclusive
    f = found["vae_gap"]
    assert f.verdict == INCONCLUSIVE
    assert {"vae_classifier (classifier) learned", "enough seeds"} <= {p.name for p in f.failed}


def _mlp_rows(per_class: int, h: list[float], i: list[float], epochs=EPOCHS) -> pd.DataFrame:
    return _rows("m", "plain", "mlp_mnist", {"H": h, "I_XSY": i, **_common(len(epochs))}, epochs=epochs,
                 per_class=per_class)


def test_authors_comparison_matches_their_curve():
    rows = _mlp_rows(200, _dip(10.85, 7.35, 10.65), _dip(3.28, 1.5, 3.25))
    cur = D.curves(rows)
    table = D.authors_table(cur).set_index(["metric", "point"])
    assert table.loc[("H", "minimum"), "our_epoch"] == 55
    assert table.loc[("H", "minimum"), "difference"] == pytest.approx(0.0)
    assert table.loc[("H", "epoch 500"), "our_value"] == pytest.approx(10.65)
    f = D.authors_finding(table.reset_index(), cur, rows)
    assert f.verdict == REPRODUCED and "7.35 @ 55" in f.measured
    assert f.setting == ("lr schedule none (their repository's loop: log-spaced 0.01 to 1e-4); no horizontal flip "
                         "(their MNIST loader: random horizontal flip); input normalised with mean 0.1307, std 0.3081 "
                         "(theirs 0.5, 0.5)")


def test_authors_comparison_prefers_runs_with_their_input_normalisation():
    ours = _rows("a", "plain", "mlp_mnist", {"H": [10.96] * 15, "I_XSY": [3.3] * 15, **_common(15)},
                 saturated=[1.0] * 15)
    loop = {"schedule": "log", "flip": True}
    theirs = _rows("b", "plain", "mlp_mnist", {"H": _dip(10.85, 7.35, 10.65), "I_XSY": _dip(3.28, 1.5, 3.25),
                                               **_common(15)}, normalization="half",
                   extra={**loop, "setting": D.setting_label("half", loop)})
    half = _rows("c", "plain", "mlp_mnist", {"H": _dip(10.0, 9.0, 10.0), "I_XSY": _dip(3.0, 2.0, 3.0),
                                             **_common(15)}, normalization="half", extra={"setting": "input 0.5/0.5"})
    rows = pd.concat([ours.assign(setting=""), theirs, half])
    cur = D.curves(rows)
    table = D.authors_table(cur)
    assert table.groupby("setting", sort=False).compared.first().to_dict() == {
        "input 0.5/0.5, flip, schedule=log": True, "input 0.5/0.5": False, "": False}
    f = D.authors_finding(table, cur, rows)
    assert f.verdict == REPRODUCED and f.setting == ""  # no difference of setting left
    assert "Other MLP-MNIST settings (not compared): [input 0.5/0.5] H min 9.00 @ 55; [recipe] H min 10.96" in f.measured
    # their normalisation without their loop and loader: compared when it is the closest, with the differences named
    rows = pd.concat([ours.assign(setting=""), half])
    cur = D.curves(rows)
    f = D.authors_finding(D.authors_table(cur), cur, rows)
    assert f.setting.startswith("lr schedule none") and "flip" in f.setting and "input normalised" not in f.setting
    # without the "half" run the comparison falls back to the other one (stuck at the ceiling)
    f = D.authors_finding(D.authors_table(D.curves(ours)), D.curves(ours), ours)
    assert f.verdict == NOT_REPRODUCED and "input normalised" in f.setting


def test_run_lines_may_set_training_options_and_name_their_setting():
    a, b = D.configs([["plain", "mlp_mnist", "mnist", 2, None, "half", {"schedule": "log", "flip": True}],
                      ["plain", "mlp_alpha", "mnist", 2, None, {"lr": 0.01}]], [0], 2000, 0, None)
    assert (a.schedule, a.flip, a.normalization, a.lr) == ("log", True, "half", 0.01)
    assert b.lr == 0.01 and b.normalization == "dataset"  # the option wins over the recipe (mlp_alpha: lr 0.003)
    rows = pd.DataFrame({"run_id": [a.run_id, b.run_id], "value": [1.0, 2.0]})
    assert D.with_groups(rows, [a, b]).setting.tolist() == ["input 0.5/0.5, flip, schedule=log", "lr=0.01"]
    (plain,) = D.configs([["plain", "mlp_alpha", "mnist", 2, None]], [0], 2000, 0, None)
    assert D.with_groups(rows.assign(run_id=plain.run_id), [plain]).setting.tolist() == ["", ""]
    with pytest.raises(ValueError, match=r"unknown training options \['alpha'\].*valid: \['schedule'"):
        D.configs([["plain", "mlp_mnist", "mnist", 2, None, {"alpha": 0.1}]], [0], 2000, 0, None)
    with pytest.raises(ValueError, match="a run is"):
        D.configs([["plain", "mlp_mnist", "mnist", 2]], [0], 2000, 0, None)


def test_run_lines_may_name_the_input_normalisation():
    a, b = D.configs([["plain", "mlp_mnist", "mnist", 2, None, "half"], ["plain", "mlp_mnist", "mnist", 2, None]],
                     [0], 2000, 0, None)
    assert (a.normalization, b.normalization) == ("half", "dataset") and a.run_id != b.run_id
    with pytest.raises(ValueError, match=r"unknown normalization 'minmax'"):
        D.configs([["plain", "mlp_mnist", "mnist", 2, None, "minmax"]], [0], 2000, 0, None)


def test_authors_comparison_needs_their_n_and_reports_a_wrong_dip():
    rows = _mlp_rows(20, _dip(7.6, 6.0, 7.6), _dip(3.3, 2.0, 3.3))
    cur = D.curves(rows)
    f = D.authors_finding(D.authors_table(cur), cur, rows)
    assert f.verdict == NOT_MEASURED and "n = 200" in f.measured
    # their n, but the minimum comes at epoch 3 and is 2 bits too low: epoch 0 agrees, the dip does not
    short = EPOCHS[:12]
    h = [10.85, 9.0, 7.0, 5.35, 6.0, 7.0, 8.0, 9.0, 10.0, 10.3, 10.5, 10.6]
    rows = _mlp_rows(200, h, [3.28] + [2.5] * 10 + [3.2], epochs=short)
    cur = D.curves(rows)
    table = D.authors_table(cur)
    f = D.authors_finding(table, cur, rows)
    assert f.verdict == NOT_REPRODUCED and "dip of H does not match" in f.measured
    assert "144 epochs (theirs 500)" in f.setting
    assert not table.set_index(["metric", "point"]).loc[("H", "minimum"), "agrees"]
    assert math.isnan(table.set_index(["metric", "point"]).loc[("H", "epoch 500"), "our_value"])


def test_with_groups_uses_the_configs_not_the_cached_label():
    (cfg,) = D.configs([["plain", "lenet5", "mnist", 1, 100]], [0], 200, 0, None)
    rows = pd.DataFrame({"run_id": [cfg.run_id, "other"], "label": ["another chapter", "x"], "value": [1.0, 2.0]})
    out = D.with_groups(rows, [cfg])
    assert out.group.tolist() == ["plain"] and out.value.tolist() == [1.0]


def test_init_normalisation_table_on_real_mnist():
    root = Path(os.environ.get("TCOMPLEX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST not available")
    table = D.init_normalisation_table([0], 100, root)
    assert len(table) == 2 and set(table.n) == {100}
    assert (table.H <= math.log2(100) + 1e-9).all() and (table.I_XSY <= math.log2(10) + 1e-9).all()
    assert table.input.iloc[1].endswith("(authors')")
    note = D.init_note(table)
    assert "n = 100" in note and "(authors')" in note


def test_authors_comparison_partly_when_only_the_dip_matches():
    h = _dip(9.5, 7.6, 9.0, at=34)  # epoch 0 and the end 1.35 / 1.65 bits off, the dip within 0.5 bits at epoch 34
    rows = _mlp_rows(200, h, _dip(2.5, 1.4, 2.4, at=34))
    cur = D.curves(rows)
    f = D.authors_finding(D.authors_table(cur), cur, rows)
    assert f.verdict == PARTLY and "dip of H matches" in f.measured


def test_authors_comparison_of_a_curve_stuck_at_the_ceiling():
    k = len(EPOCHS)
    rows = _rows("m", "plain", "mlp_mnist", {"H": [10.96] * k, "I_XSY": [3.322] * k, **_common(k)},
                 saturated=[1.0] * k)
    cur = D.curves(rows)
    f = D.authors_finding(D.authors_table(cur), cur, rows)
    assert f.verdict == NOT_REPRODUCED and "stays at the log2 n ceiling" in f.measured


# --------------------------------------------------------------------------- #
# the dip at sub-epoch resolution
# --------------------------------------------------------------------------- #
def test_log_steps_and_dip_configs():
    assert D.log_steps(512) == D.DIP_STEPS == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert D.log_steps(5) == [0, 1, 2, 4] and D.log_steps(0) == [0]
    cfgs = D.dip_configs("mlp_mnist", "mnist", "half", 3, None, [1e-2, 1e-4], [0.01, 0.04], [0, 1, 2], [0, 1, 2],
                         2000, 1000)
    assert len(cfgs) == 12 and len({c.run_id for c in cfgs}) == 12
    c = cfgs[0]
    assert (c.alpha, c.lr, c.track_steps, c.track_every, c.track_log, c.normalization) == (
        0.01, 0.01, [0, 1, 2], 1, False, "half")
    assert c.analysis_per_class == 200 and c.label == "dip" and not c.rates
    alpha_lr = {(c.alpha, c.lr) for c in cfgs}
    assert alpha_lr == {(0.01, 0.01), (0.01, 1e-4), (0.04, 0.01), (0.04, 1e-4)}
    (m,) = D.dip_configs("mlp_alpha", "mnist", "dataset", 1, 100, [1e-3], [0.1], [0], [0], 200, None)
    assert m.lr == 1e-3  # the swept lr replaces the recipe's (mlp_alpha: 0.003)
    with pytest.raises(ValueError, match="needs learning rates, alphas and seeds"):
        D.dip_configs("mlp_mnist", "mnist", "half", 1, None, [], [0.01], [0], [0], 200, None)


SPE = 10  # steps per epoch of the synthetic dip runs


def _dip_rows(cfg, h_steps: dict[int, float], h_epochs: dict[int, float], acc: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic step rows and epoch rows of one dip run (I(X;Σ;Y) = H / 4)."""
    def rows(points: dict[int, float], key: str) -> pd.DataFrame:
        out = []
        for x, h in points.items():
            for metric, value in (("H", h), ("I_XSY", h / 4), ("saturated_H", 0.0), ("test_acc", acc),
                                  ("train_loss", 1.0)):
                row = {"run_id": cfg.run_id, key: x, "layer": "__all__", "metric": metric, "value": value}
                if key == "step":
                    row.update(epoch_fraction=x / SPE, epoch=max(1, math.ceil(x / SPE)))
                out.append(row)
        return pd.DataFrame(out)
    return rows(h_steps, "step"), rows(h_epochs, "epoch")


def _dip_study(acc_by_lr: dict[float, float], dip: bool = True):
    cfgs = D.dip_configs("mlp_mnist", "mnist", "half", 2, None, sorted(acc_by_lr), [0.04], [0, 1, 2],
                         [0, 1, 2, 4, 8, 10], 2000, 1000)
    steps, epochs = [], []
    for c in cfgs:
        wobble = 0.01 * c.seed
        if dip:
            hs = {0: 6.0, 1: 5.9, 2: 5.5 - wobble, 4: 5.0, 8: 5.6, 10: 6.0 + wobble}
        else:
            hs = {0: 6.0, 1: 6.1, 2: 6.2 + wobble, 4: 6.3, 8: 6.4, 10: 6.5}
        s, e = _dip_rows(c, hs, {0: 6.0, 1: hs[10], 2: 7.0 + wobble}, acc_by_lr[c.lr])
        steps.append(s)
        epochs.append(e)
    return cfgs, pd.concat(steps), pd.concat(epochs)


def test_dip_curves_merge_steps_and_epochs_on_one_step_axis():
    cfgs, steps, epochs = _dip_study({0.01: 0.95})
    cur = D.dip_curves(epochs, steps, cfgs)
    one = cur[cur.run_id == cfgs[0].run_id]
    # step 10 ends epoch 1: measured once (the step row); epoch 2 is step 20; epoch 0 is step 0
    assert one.step.tolist() == [0, 1, 2, 4, 8, 10, 20]
    assert one.source.tolist() == ["step"] * 6 + ["epoch"]
    assert one.epoch.tolist() == pytest.approx([0, 0.1, 0.2, 0.4, 0.8, 1.0, 2.0])
    assert one.H.tolist() == pytest.approx([6.0, 5.9, 5.5, 5.0, 5.6, 6.0, 7.0])
    assert (one.lr == 0.01).all() and (one.alpha == 0.04).all() and one.log2_n.iloc[0] == pytest.approx(math.log2(2000))
    with pytest.raises(ValueError, match="must be trained with track_steps"):
        D.dip_curves(epochs, pd.DataFrame(), cfgs)


def test_dip_findings_per_learning_rate_with_preconditions():
    cfgs, steps, epochs = _dip_study({0.01: 0.95, 1e-4: 0.50})
    cur = D.dip_curves(epochs, steps, cfgs)
    table = D.dip_table(cur, 0.1)
    h = table[(table.metric == "H") & (table.lr == 0.01)]
    assert h.holds.all() and (h.min_step == 4).all() and h.min_epoch.tolist() == pytest.approx([0.4] * 3)
    assert h["drop"].tolist() == pytest.approx([1.0] * 3)
    found = {f.key: f for f in D.dip_findings(table, cur, "mlp_mnist", "mnist", "")}
    assert set(found) == {"dip_steps_alpha0.04_lr0.01", "dip_steps_alpha0.04_lr0.0001"}
    ok = found["dip_steps_alpha0.04_lr0.01"]
    assert ok.verdict == REPRODUCED and not ok.failed
    assert "minimum at step(s) [4, 4, 4] (epoch 0.40, 0.40, 0.40)" in ok.measured
    # the same curves from a network that did not learn in the run: inconclusive, with its accuracy
    slow = found["dip_steps_alpha0.04_lr0.0001"]
    assert slow.verdict == INCONCLUSIVE
    assert [p.name for p in slow.failed] == ["mlp_mnist on mnist, α = 0.04, lr = 0.0001 learned"]
    assert slow.failed[0].measured == "min 0.500 over 3 runs"
    # curves without a dip: not reproduced; two seeds: inconclusive
    cfgs, steps, epochs = _dip_study({0.01: 0.95}, dip=False)
    cur = D.dip_curves(epochs, steps, cfgs)
    (f,) = D.dip_findings(D.dip_table(cur, 0.1), cur, "mlp_mnist", "mnist", "")
    assert f.verdict == NOT_REPRODUCED
    two = cur[cur.seed < 2]
    (f,) = D.dip_findings(D.dip_table(two, 0.1), two, "mlp_mnist", "mnist", "")
    assert f.verdict == INCONCLUSIVE and "enough seeds" in f.failed[0].name


def test_dip_findings_need_headroom():
    cfgs, steps, epochs = _dip_study({0.01: 0.95})
    cur = D.dip_curves(epochs, steps, cfgs)
    cur = cur.assign(H=cur.H + 4.0)  # the same dip 0.5 bit below log2 2000: no headroom
    (f,) = D.dip_findings(D.dip_table(cur, 0.1), cur, "mlp_mnist", "mnist", "")
    assert f.verdict == INCONCLUSIVE and [p.name for p in f.failed] == [
        "H (mlp_mnist on mnist, α = 0.04, lr = 0.01) has headroom"]


def test_dip_study_on_a_tiny_real_run(tmp_path):
    root = Path(os.environ.get("TCOMPLEX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST not available")
    import torch

    from tcomplex.experiments.train import read_step_rows, train

    torch.set_num_threads(1)
    cfgs = D.dip_configs("mlp_mnist", "mnist", "half", 2, 512, [0.01], [0.04], [0], [0, 1, 2, 4], 100, 200)
    (cfg,) = cfgs
    res = train(cfg, tmp_path, data_root=root, progress=False)
    cur = D.dip_curves(res.rows, read_step_rows(tmp_path, cfg), cfgs)
    assert cur.step.tolist() == [0, 1, 2, 4, 8]  # 512 images, batch 128: 4 steps per epoch
    assert cur.source.tolist() == ["step"] * 4 + ["epoch"]
    assert (cur.H <= math.log2(100) + 1e-9).all() and cur.H.nunique() > 1
    table = D.dip_table(cur, 0.1)
    assert set(table.metric) == {"H", "I_XSY"} and (table.last_step == 8).all()


def test_dip_summary_and_note_say_whether_and_when_h_dips():
    cfgs, steps, epochs = _dip_study({0.01: 0.95, 1e-4: 0.5})
    cur = D.dip_curves(epochs, steps, cfgs)
    table = D.dip_table(cur, 0.1)
    summary = D.dip_summary(table).set_index(["lr", "metric"])
    assert summary.loc[(0.01, "H"), "dip"] == 3 and summary.loc[(0.01, "H"), "min_step"] == 4
    assert summary.loc[(0.01, "H"), "final_test_acc"] == pytest.approx(0.95)
    note = D.dip_note(table, 0.1)
    assert "**α = 0.04:** lr 0.0001: H dipped by more than 0.1 bits in 3/3 seeds" in note
    assert "minimum at step 4 (epoch 0.40), drop 1.00" in note
    flat_cfgs, s2, e2 = _dip_study({0.01: 0.95}, dip=False)
    flat = D.dip_table(D.dip_curves(e2, s2, flat_cfgs), 0.1)
    assert "no drop larger than tol" in D.dip_note(flat, 0.1)
    assert D.dip_setting(cfgs).startswith("2 epochs of all training images (paper 500 of all)")
    assert D.dip_setting([]) == ""


def test_matched_note_names_what_was_and_was_not_matched():
    note = D.matched_note(["n = 200 analysis images (theirs 2000)", "5 epochs (theirs 500)",
                           "no horizontal flip (their MNIST loader: random horizontal flip)"])
    matched, rest = note.split("**Not matched here:**")
    assert "lr 0.01" in matched and "momentum 0.9" in matched and "input normalised with mean 0.5" in matched
    assert "n = 2000" not in matched and "500 epochs" not in matched and "horizontal flip" not in matched
    assert "5 epochs (theirs 500)" in rest and "script that trained their plotted MLP is not public" in rest
    assert D.matched_note([]).endswith("no MLP-MNIST run to compare.")
