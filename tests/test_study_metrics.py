"""Chapter 1's findings (tcomplex.experiments.studies.metrics) on synthetic result tables.

Known answers: Propositions 1 and 2 read on estimates pinned at their ceilings (I(X;Σ;Y) =
log2 10, H = log2 n) are inconclusive, on estimates with headroom they are reproduced; the
identities (Eq. 6, plug-in Prop. 2) are sanity checks, never claims.
"""

from __future__ import annotations

import math

import pandas as pd

from tcomplex.experiments.report import INCONCLUSIVE, PARTLY, REPRODUCED
from tcomplex.experiments.studies import metrics as study

N = 500
LOG2_N = math.log2(N)


def _rows(i_xsy: float, acc: float = 0.97) -> pd.DataFrame:
    out = []
    for epoch in (0, 1, 2):
        base = {"run_id": "r0", "model": "mlp_mnist", "dataset": "mnist", "seed": 0, "epoch": epoch}
        out.append({**base, "layer": "__all__", "metric": "I_XSY", "value": i_xsy})
        out.append({**base, "layer": "__all__", "metric": "test_acc", "value": 0.1 if epoch == 0 else acc})
    return pd.DataFrame(out)


def _suffix(h_top: float) -> pd.DataFrame:
    """Suffix entropies H(Σ_l..Σ_L), l = 1..3, non-increasing in l, both estimators."""
    return pd.DataFrame([{"seed": 0, "epoch": e, "l": l, "H_kde": h_top - l + 1, "H_plugin": h_top - l + 1}
                         for e in (0, 1, 2) for l in (1, 2, 3)])


EQ6 = pd.DataFrame({"layer": ["relu1"], "d": [100], "H_plugin": [5.0], "TC_plugin": [3.0], "C": [8.0],
                    "abs_error": [1e-13]})


def _bw(h_var: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"layer": [f"relu{i}" for i in range(len(h_var))], "log2_n": LOG2_N,
                         "H (variance)": h_var, "H (dims)": [LOG2_N] * len(h_var)})


def test_saturated_propositions_are_inconclusive_and_identities_are_sanity_checks():
    found = {f.key: f for f in study.findings(_rows(math.log2(10)), _suffix(LOG2_N), EQ6, _bw([LOG2_N]), "")}
    assert found["prop1"].verdict == INCONCLUSIVE and found["prop1"].failed[0].name == "I(X;Σ;Y) has headroom"
    assert found["prop2"].verdict == INCONCLUSIVE and "all n distinct in 3/9" in found["prop2"].failed[0].measured
    assert found["eq6"].kind == "sanity" and found["eq6"].verdict == REPRODUCED
    assert found["prop2_plugin"].kind == "sanity" and found["prop2_plugin"].verdict == REPRODUCED


def test_propositions_with_headroom_and_a_trained_network_are_reproduced():
    found = {f.key: f for f in study.findings(_rows(1.8), _suffix(7.0), EQ6, _bw([6.0, LOG2_N]), "")}
    assert found["prop1"].verdict == REPRODUCED and found["prop2"].verdict == REPRODUCED
    assert found["bandwidth"].verdict == PARTLY and found["bandwidth"].parts.startswith("held: relu0")
    # the same numbers from a network at chance accuracy
    found = {f.key: f for f in study.findings(_rows(1.8, acc=0.11), _suffix(7.0), EQ6, _bw([6.0]), "")}
    assert {found[k].verdict for k in ("prop1", "prop2", "bandwidth")} == {INCONCLUSIVE}
    assert found["prop1"].failed[0].name == "mlp_mnist on mnist learned"
