"""Mathematical properties of the estimators on synthetic ground truth."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tcomplex as tc
from tcomplex.estimators import SaturationWarning

LOG2 = math.log(2)
# kde_* sum the kernel values of one block in float32 (exact integer distances, float32 exp),
# then combine blocks in float64: agreement with float64 references to ~1e-8 relative
KDE_REL = 1e-7


def reference_kde_entropy(s: torch.Tensor, sigma2: float) -> float:
    """Slow, obviously correct Eq. 2 in bits: a double loop over samples."""
    x = s.double()
    n = x.shape[0]
    total = 0.0
    for j in range(n):
        inner = 0.0
        for k in range(n):
            inner += math.exp(-0.5 * float(((x[j] - x[k]) ** 2).sum()) / sigma2)
        total += math.log(inner / n)
    return -total / n / LOG2


def reference_tc(s: torch.Tensor, synth: torch.Tensor, sigma2: float) -> float:
    x, z = s.double(), synth.double()
    num = torch.logsumexp(-0.5 * torch.cdist(x, x) ** 2 / sigma2, 1)
    den = torch.logsumexp(-0.5 * torch.cdist(x, z) ** 2 / sigma2, 1)
    return float((num - den).mean()) / LOG2


def random_states(n: int, d: int, p: float = 0.4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) < p


# --- KDE entropy -------------------------------------------------------------------
def test_identical_states_have_zero_entropy():
    s = torch.ones(50, 30, dtype=torch.bool)
    assert tc.kde_entropy(s, alpha=0.01) == pytest.approx(0.0, abs=1e-12)


def test_far_apart_distinct_states_reach_log2_n():
    n = 64
    s = torch.zeros(n, n * 50, dtype=torch.bool)
    for i in range(n):  # disjoint blocks of 50 ones: pairwise distance 100 >> sigma0^2
        s[i, i * 50 : (i + 1) * 50] = True
    with pytest.warns(SaturationWarning):
        h = tc.kde_entropy(s, alpha=1e-3, bandwidth="variance")
    assert h == pytest.approx(math.log2(n), abs=1e-9)
    assert h.saturated


@pytest.mark.parametrize("bandwidth", ["dims", "variance"])
def test_matches_slow_reference(bandwidth):
    s = random_states(40, 25, seed=1)
    h = tc.kde_entropy(s, alpha=0.05, bandwidth=bandwidth, warn=False)
    assert float(h) == pytest.approx(reference_kde_entropy(s, h.sigma2), rel=KDE_REL)


def test_blocked_and_unblocked_agree_on_soft_states():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(300, 40, generator=g)  # soft gates in [0, 1]
    a = tc.kde_entropy(s, alpha=0.02, block=7)
    b = tc.kde_entropy(s, alpha=0.02, block=1000)
    x = s.double()
    ref = -(torch.logsumexp(-0.5 * torch.cdist(x, x) ** 2 / (0.02 * 40), 1) - math.log(300)).mean() / LOG2
    # soft states go through a float32 GEMM: agreement to float32 precision
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    assert float(a) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("block", [13, 64, 299, 300])
def test_blocks_of_binary_states_agree_with_reference(block):
    # several row blocks (the last one short): the upper block triangle with its transposed
    # contributions, the reuse of the last converted block, and the cross term of TC
    s = random_states(300, 37, p=0.3, seed=5)
    h = tc.kde_entropy(s, alpha=0.03, block=block)
    assert float(h) == pytest.approx(reference_kde_entropy(s, h.sigma2), rel=KDE_REL)
    gen = torch.Generator().manual_seed(11)
    t = tc.kde_total_correlation(s, alpha=0.03, block=block, generator=gen)
    rates = s.float().mean(0)
    synth = torch.rand(s.shape, generator=torch.Generator().manual_seed(11)) < rates
    assert float(t) == pytest.approx(reference_tc(s, synth, 0.03 * 37), rel=KDE_REL, abs=KDE_REL)


def test_invariant_to_permutation_of_samples_and_gates():
    s = random_states(120, 60, seed=2)
    g = torch.Generator().manual_seed(9)
    perm_rows = torch.randperm(120, generator=g)
    perm_cols = torch.randperm(60, generator=g)
    h = tc.kde_entropy(s, alpha=0.01, warn=False)
    assert float(tc.kde_entropy(s[perm_rows], alpha=0.01, warn=False)) == pytest.approx(float(h), rel=KDE_REL)
    assert float(tc.kde_entropy(s[:, perm_cols], alpha=0.01, warn=False)) == pytest.approx(float(h), rel=KDE_REL)


def test_monotone_decreasing_in_alpha():
    s = random_states(200, 50, seed=4)
    values = [float(tc.kde_entropy(s, alpha=a, warn=False)) for a in (0.001, 0.01, 0.05, 0.2, 1.0, 5.0)]
    assert all(x > y for x, y in zip(values, values[1:])), values


def test_numpy_input_and_nats():
    s = random_states(80, 20, seed=5)
    bits = tc.kde_entropy(s.numpy(), alpha=0.1)
    nats = tc.kde_entropy(s, alpha=0.1, base=math.e)
    assert float(nats) == pytest.approx(float(bits) * LOG2, rel=1e-12)


def test_variance_bandwidth_saturates_where_dims_does_not():
    # sparse, structured states: small variance relative to d
    g = torch.Generator().manual_seed(6)
    proto = torch.rand(10, 400, generator=g) < 0.5
    idx = torch.randint(0, 10, (500,), generator=g)
    noise = torch.rand(500, 400, generator=g) < 0.02
    s = proto[idx] ^ noise
    dims = tc.kde_entropy(s, alpha=0.01, warn=False)
    var = tc.kde_entropy(s, alpha=0.01, bandwidth="variance", warn=False)
    assert var.sigma2 < dims.sigma2
    assert float(var) > float(dims)


def test_estimate_pickles_with_its_flags():
    s = random_states(30, 10, seed=7)
    h = tc.kde_entropy(s, alpha=0.2)
    back = pickle.loads(pickle.dumps(h))
    assert float(back) == float(h) and back.sigma2 == h.sigma2 and back.saturated == h.saturated


# --- interaction information (Proposition 1) -------------------------------------
def test_interaction_information_nonnegative_and_bounded_on_deterministic_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(400, 8)
    y = net(x).argmax(1)
    rec = tc.record_gates(net, x)
    for alpha in (0.001, 0.01, 0.1, 1.0):
        ii = tc.kde_interaction_information(rec.concat(), y, alpha=alpha, warn=False)
        assert -1e-9 <= float(ii) <= math.log2(4) + 1e-9


def test_interaction_information_class_prior_is_n_m_over_n():
    # class 0: 30 identical states; class 1: 10 mutually far states
    s = torch.zeros(40, 400, dtype=torch.bool)
    for i in range(10):
        s[30 + i, i * 40 : (i + 1) * 40] = True
    y = torch.tensor([0] * 30 + [1] * 10)
    a = 1e-3
    h = tc.kde_entropy(s, alpha=a)
    h1 = tc.kde_entropy(s[30:], alpha=a * 400 / 400, warn=False)  # same d, same sigma0^2
    ii = tc.kde_interaction_information(s, y, alpha=a, warn=False)
    expected = float(h) - (30 / 40) * 0.0 - (10 / 40) * float(h1)
    assert float(ii) == pytest.approx(expected, rel=KDE_REL)


def test_interaction_information_zero_when_labels_independent_of_states():
    s = torch.zeros(100, 20, dtype=torch.bool)
    s[50:, :10] = True  # two patterns
    y = torch.tensor([0, 1] * 50)  # each pattern half of each class
    ii = tc.kde_interaction_information(s, y, alpha=0.01)
    assert float(ii) == pytest.approx(0.0, abs=KDE_REL)


def test_mutual_information_equals_entropy_for_deterministic_states():
    s = random_states(60, 30, seed=8)
    assert float(tc.kde_mutual_information(s, alpha=0.05)) == float(tc.kde_entropy(s, alpha=0.05))


# --- total correlation and Eq. 6 ----------------------------------------------------
def test_kde_tc_matches_reference_with_same_synthetic_draw():
    s = random_states(50, 12, seed=10)
    g1 = torch.Generator().manual_seed(123)
    est = tc.kde_total_correlation(s, alpha=0.1, generator=g1)
    g2 = torch.Generator().manual_seed(123)
    synth = torch.rand(s.shape, generator=g2) < s.float().mean(0)
    assert float(est) == pytest.approx(reference_tc(s, synth, 0.1 * 12), rel=KDE_REL)


def test_kde_tc_small_for_independent_and_large_for_copied_gates():
    g = torch.Generator().manual_seed(11)
    independent = torch.rand(1000, 16, generator=g) < 0.5
    base = torch.rand(1000, 1, generator=g) < 0.5
    copied = base.expand(1000, 16).clone()
    tc_ind = tc.kde_total_correlation(independent, alpha=0.05)
    tc_cop = tc.kde_total_correlation(copied, alpha=0.05)
    assert abs(float(tc_ind)) < 0.5
    assert float(tc_cop) > 5.0


def test_plugin_eq6_exact():
    g = torch.Generator().manual_seed(12)
    z = torch.rand(3000, 3, generator=g) < 0.5
    s = torch.cat([z, z[:, :1] ^ z[:, 1:2], z[:, :2].all(1, keepdim=True), torch.rand(3000, 2, generator=g) < 0.2], 1)
    h = tc.plugin_entropy(s)
    t = tc.plugin_total_correlation(s)
    c = tc.marginal_entropy_sum(s)
    assert float(h) + t == pytest.approx(c, abs=1e-10)
    assert t > 0.5  # the xor/and gates depend on the others


def test_plugin_values_on_known_distributions():
    # two independent fair bits, all four patterns equally often: H = 2, TC = 0
    s = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]] * 25, dtype=torch.bool)
    assert float(tc.plugin_entropy(s)) == pytest.approx(2.0)
    assert tc.plugin_total_correlation(s) == pytest.approx(0.0, abs=1e-12)
    # one fair bit copied 5 times: H = 1, TC = 4, C = 5
    s = torch.tensor([[0] * 5, [1] * 5] * 50, dtype=torch.bool)
    assert float(tc.plugin_entropy(s)) == pytest.approx(1.0)
    assert tc.plugin_total_correlation(s) == pytest.approx(4.0)
    assert tc.marginal_entropy_sum(s) == pytest.approx(5.0)


# --- Proposition 2 on a real small MLP -----------------------------------------------
def test_plugin_suffix_entropy_nonincreasing_in_l():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)
    )
    rec = tc.record_gates(net, torch.randn(3000, 6))
    hs = [float(h) for h in tc.layerwise_entropies(rec, estimator="plugin")]
    assert len(hs) == 3
    assert all(a >= b - 1e-12 for a, b in zip(hs, hs[1:])), hs
    kde = tc.layerwise_entropies(rec, estimator="kde")
    assert len(kde) == 3 and all(k.sigma2 is not None for k in kde)


# --- bad input -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "states, message",
    [
        (torch.zeros(0, 5), "empty"),
        (torch.zeros(1, 5), "single sample"),
        (torch.zeros(5), "2-D"),
        (torch.zeros(3, 4, 5), "2-D"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), "NaN"),
        (torch.tensor([[0.0, 2.0], [1.0, 0.0]]), "outside"),
        (torch.tensor([[0.0, -0.5], [1.0, 0.0]]), "outside"),
    ],
)
def test_bad_states_are_clear_errors(states, message):
    with pytest.raises(ValueError, match=message):
        tc.kde_entropy(states, alpha=0.01)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        tc.kde_entropy(torch.ones(4, 3), alpha=alpha)


def test_zero_variance_with_variance_bandwidth():
    with pytest.raises(ValueError, match="zero variance"):
        tc.kde_entropy(torch.ones(10, 3), alpha=0.01, bandwidth="variance")


def test_label_length_mismatch_and_unknown_bandwidth():
    with pytest.raises(ValueError, match="labels hold 3"):
        tc.kde_interaction_information(torch.ones(4, 3), [0, 1, 0], alpha=0.01)
    with pytest.raises(ValueError, match="bandwidth"):
        tc.kde_entropy(torch.ones(4, 3), alpha=0.01, bandwidth="silverman")


def test_plugin_rejects_soft_states():
    with pytest.raises(ValueError, match="binary"):
        tc.plugin_entropy(torch.full((4, 3), 0.5))


def test_large_d_stays_exact_in_float32_gemm():
    # d beyond float16/bfloat16 exactness: the distances must still be exact integers
    s = random_states(20, 70000, p=0.5, seed=13)
    h = tc.kde_entropy(s, alpha=1e-4, block=8, warn=False)
    x = s.double()
    d2 = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    ref = -(torch.logsumexp(-0.5 * d2 / (1e-4 * 70000), 1) - math.log(20)).mean() / LOG2
    assert float(h) == pytest.approx(float(ref), rel=1e-12)


def test_activation_rates_and_numpy_array_in_eq6():
    s = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.uint8)
    assert tc.activation_rates(s).tolist() == [0.75, 0.25]
    h_b = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert tc.marginal_entropy_sum(s) == pytest.approx(2 * h_b)


def test_entropy_and_interaction_in_one_pass_equal_the_separate_estimators():
    s = random_states(120, 30, p=0.35, seed=8)
    y = torch.arange(120) % 4
    h, ii = tc.kde_entropy_and_interaction(s, y, alpha=0.5)
    h_alone = tc.kde_entropy(s, alpha=0.5)
    assert float(h) == float(h_alone) and h.saturated == h_alone.saturated
    assert float(ii) == float(tc.kde_interaction_information(s, y, alpha=0.5))
    assert h.sigma2 == ii.sigma2 == h_alone.sigma2


@pytest.mark.parametrize("block", [None, 13])
def test_squared_distances_are_exact_and_add_up_over_layers(block):
    a, b = random_states(90, 23, p=0.3, seed=2), random_states(90, 41, p=0.6, seed=3)
    d_a, d_b = tc.squared_distances(a, block=block), tc.squared_distances(b, block=block)
    ref = torch.cdist(a.double(), a.double()).pow(2).round()
    assert torch.equal(d_a.double(), ref)  # exact integers, symmetric, zero diagonal
    assert torch.equal(d_a + d_b, tc.squared_distances(torch.cat([a, b], 1), block=block))


def test_entropy_from_distances_equals_the_direct_estimators():
    s = random_states(150, 60, p=0.3, seed=4)
    y = torch.arange(150) % 3
    sigma2 = tc.kde_bandwidth(s, alpha=0.05)
    h, ii = tc.kde_entropy_from_distances(tc.squared_distances(s), sigma2=sigma2, labels=y)
    h_ref, ii_ref = tc.kde_entropy_and_interaction(s, y, alpha=0.05)
    # one implementation of Eq. 2 / Eq. 4 fed with the same distance blocks: the same numbers
    assert float(h) == float(h_ref) and float(ii) == float(ii_ref)
    assert h.ceiling == h_ref.ceiling and ii.ceiling == ii_ref.ceiling
    h_only, none = tc.kde_entropy_from_distances(tc.squared_distances(s), sigma2=sigma2)
    assert none is None and float(h_only) == pytest.approx(float(h), rel=KDE_REL)


@pytest.mark.parametrize("d2, sigma2, message", [
    (torch.zeros(3, 4), 1.0, r"square \[n, n\] tensor, got \(3, 4\)"),
    (torch.zeros(1, 1), 1.0, "at least 2"),
    (torch.zeros(3, 3), 0.0, "sigma2 must be > 0"),
    (torch.zeros(3, 3), float("nan"), "sigma2 must be > 0"),
    (torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]]), 1.0, "contains NaN"),
    (torch.tensor([[0.0, -1.0], [-1.0, 0.0]]), 1.0, "negative"),
])
def test_entropy_from_distances_rejects_bad_input(d2, sigma2, message):
    with pytest.raises(ValueError, match=message):
        tc.kde_entropy_from_distances(d2, sigma2=sigma2)


# --- warnings come from the public functions (issue 11) ------------------------------
def test_estimate_value_object_never_warns_and_public_functions_can_be_silenced():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = tc.Estimate(6.0, ceiling=6.0, what="H")  # a value object: creating it is silent
    assert e.saturated
    s = torch.eye(64, dtype=torch.bool).repeat_interleave(50, dim=1)  # far apart: saturates
    with pytest.warns(SaturationWarning, match="warn=False"):
        tc.kde_entropy(s, alpha=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = tc.kde_entropy(s, alpha=1e-3, warn=False)
        hh, _ = tc.kde_entropy_and_interaction(s, torch.arange(64) % 2, alpha=1e-3, warn=False)
        tc.kde_entropy_from_distances(tc.squared_distances(s), sigma2=h.sigma2, warn=False)
        tc.plugin_entropy(s, warn=False)
    assert h.saturated and hh.saturated


# --- estimator edges (issue 15) -----------------------------------------------------
def test_negative_tc_is_kept_and_flagged():
    s = random_states(60, 12, p=0.5, seed=0)  # independent gates: true TC = 0
    t = tc.kde_total_correlation(s, alpha=0.2)
    assert float(t) < 0 and t.negative  # the raw Eq. 28 bound, flagged
    assert "negative" in repr(t) and pickle.loads(pickle.dumps(t)).negative
    assert not tc.kde_total_correlation(random_states(60, 12, p=0.5, seed=1), alpha=0.2).negative


@pytest.mark.parametrize("base", [float("nan"), float("inf"), 0.0, 1.0, -2.0])
def test_bad_base_is_a_clear_error(base):
    s = random_states(20, 8, seed=3)
    with pytest.raises(ValueError, match="base must be"):
        tc.kde_entropy(s, alpha=0.1, base=base)
    with pytest.raises(ValueError, match="base must be"):
        tc.kde_entropy_from_distances(tc.squared_distances(s), sigma2=1.0, base=base)


@pytest.mark.parametrize("alpha", [np.float32(0.05), np.float64(0.05), torch.tensor(0.05), np.array(0.05)])
def test_alpha_accepts_real_scalars(alpha):
    s = random_states(40, 16, seed=4)
    ref = tc.kde_entropy(s, alpha=float(alpha))  # the scalar's own value (float32 0.05 is not 0.05)
    assert float(tc.kde_entropy(s, alpha=alpha)) == float(ref)


@pytest.mark.parametrize("alpha", [torch.tensor(-0.1), np.float32(0), np.float64("nan"), torch.tensor([0.1]), True, "0.1"])
def test_alpha_rejects_non_positive_non_finite_and_non_scalars(alpha):
    with pytest.raises(ValueError, match="alpha must be a positive finite real number"):
        tc.kde_entropy(random_states(10, 4), alpha=alpha)


@pytest.mark.parametrize("labels", [["a", "b"] * 5, np.array(["cat"] * 10), [None] * 10])
def test_string_labels_are_a_clear_error(labels):
    with pytest.raises(ValueError, match="labels must be integer class ids, 1-D"):
        tc.kde_interaction_information(random_states(10, 4), labels, alpha=0.1)


# --- packed states: XOR + popcount (issue 16) -------------------------------------------
def _structured(n: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    proto = torch.rand(5, d, generator=g) < 0.5
    return proto[torch.arange(n) % 5] ^ (torch.rand(n, d, generator=g) < 0.05)


@pytest.mark.parametrize("n, d, kind", [
    (2, 1, "random"), (3, 1, "random"), (50, 1, "random"), (40, 63, "random"), (40, 64, "random"),
    (41, 65, "structured"), (70, 130, "structured"), (33, 1000, "random"), (20, 3000, "equal"),
    (2, 200, "random"), (600, 70, "random"),
])
def test_packed_distances_are_bit_identical_to_the_gemm(n, d, kind):
    if kind == "random":
        s = random_states(n, d, p=0.4, seed=n + d)
    elif kind == "structured":
        s = _structured(n, d)
    else:  # all rows equal
        s = (torch.arange(d) % 3 == 0).expand(n, d).clone()
    packed = tc.squared_distances(s, backend="packed")
    gemm = tc.squared_distances(s, backend="gemm")
    assert torch.equal(packed, gemm)
    assert torch.equal(packed.double(), torch.cdist(s.double(), s.double()).pow(2).round())
    assert torch.equal(tc.hamming_distances(tc.PackedStates.from_bool(s)), gemm)
    if kind == "equal":
        assert not packed.any()


@pytest.mark.parametrize("block", [None, 7])
def test_estimators_equal_on_both_paths(block):
    s = _structured(90, 150)
    y = torch.arange(90) % 3
    p = tc.PackedStates.from_bool(s)
    for kw in ({"alpha": 0.05}, {"alpha": 0.2, "bandwidth": "variance"}):
        kw = {**kw, "block": block, "warn": False}
        ref = tc.kde_entropy(s, backend="gemm", **kw)
        assert float(tc.kde_entropy(s, backend="packed", **kw)) == float(ref)
        assert float(tc.kde_entropy(p, **kw)) == float(ref)
        assert float(tc.kde_mutual_information(p, **kw)) == float(ref)
        h_g, i_g = tc.kde_entropy_and_interaction(s, y, backend="gemm", **kw)
        h_p, i_p = tc.kde_entropy_and_interaction(p, y, **kw)
        assert (float(h_p), float(i_p)) == (float(h_g), float(i_g))
        tkw = {k: v for k, v in kw.items() if k != "warn"}
        t_g = tc.kde_total_correlation(s, backend="gemm", **tkw)
        assert float(tc.kde_total_correlation(p, **tkw)) == float(t_g)
    assert torch.equal(tc.activation_rates(p), tc.activation_rates(s))
    assert tc.marginal_entropy_sum(p) == tc.marginal_entropy_sum(s)
    assert float(tc.plugin_entropy(p, warn=False)) == float(tc.plugin_entropy(s, warn=False))


def test_packed_states_of_several_layers_keep_their_boundaries():
    a, b = random_states(30, 70, seed=1), random_states(30, 5, seed=2)
    words = torch.cat([tc.PackedStates.from_bool(a).words, torch.zeros(30, 1, dtype=torch.int64),
                       tc.PackedStates.from_bool(b).words], 1)
    both = tc.PackedStates(words, [(0, 70), (3, 5)])  # a gap word between the layers
    assert both.shape == (30, 75) and torch.equal(both.unpack(), torch.cat([a, b], 1))
    assert torch.equal(tc.squared_distances(both), tc.squared_distances(torch.cat([a, b], 1), backend="gemm"))
    with pytest.raises(ValueError, match="does not fit"):
        tc.PackedStates(words, [(3, 70)])


def test_pack_bits_torch_route_equals_numpy_route():
    from tcomplex.bits import pack_bits, unpack_bits

    for d in (1, 8, 63, 64, 65, 200):
        s = random_states(9, d, seed=d)
        words = pack_bits(s)
        assert torch.equal(pack_bits(s, route="torch"), words)
        assert torch.equal(unpack_bits(words, d, route="torch"), s) and torch.equal(unpack_bits(words, d), s)


def test_packed_backend_needs_binary_cpu_states():
    with pytest.raises(ValueError, match="backend='packed' needs binary"):
        tc.kde_entropy(torch.rand(10, 4), alpha=0.1, backend="packed")
    with pytest.raises(ValueError, match="backend must be"):
        tc.kde_entropy(random_states(10, 4), alpha=0.1, backend="fast")


# --- leave-one-out Eq. 28 and TC from distance matrices ------------------------------
def reference_tc_loo(s: torch.Tensor, synth: torch.Tensor, sigma2: float) -> float:
    """Slow, obviously correct leave-one-out Eq. 28 in bits: the own sum without k = j, both sums as densities."""
    x, z = s.double(), synth.double()
    n, m = x.shape[0], z.shape[0]
    own = -0.5 * torch.cdist(x, x) ** 2 / sigma2
    own.fill_diagonal_(-math.inf)
    num = torch.logsumexp(own, 1) - math.log(n - 1)
    den = torch.logsumexp(-0.5 * torch.cdist(x, z) ** 2 / sigma2, 1) - math.log(m)
    return float((num - den).mean()) / LOG2


def test_independent_states_are_the_draw_of_eq28():
    s = random_states(80, 20, p=0.3, seed=20)
    synth = tc.estimators.independent_states(s, generator=torch.Generator().manual_seed(4))
    assert synth.dtype == torch.bool and synth.shape == s.shape
    assert float(tc.kde_total_correlation(s, alpha=0.1, generator=torch.Generator().manual_seed(4))) == \
        pytest.approx(reference_tc(s, synth, 0.1 * 20), rel=KDE_REL, abs=1e-6)  # float32 log-sum-exp in nats
    # the default draw is seed 0, for bool and packed states alike
    assert torch.equal(tc.estimators.independent_states(s), tc.estimators.independent_states(tc.PackedStates.from_bool(s)))
    # rates: a gate that is always on (off) stays on (off)
    s[:, 0], s[:, 1] = True, False
    synth = tc.estimators.independent_states(s)
    assert synth[:, 0].all() and not synth[:, 1].any()


@pytest.mark.parametrize("block", [None, 13])
def test_loo_tc_matches_reference_with_same_synthetic_draw(block):
    s = random_states(60, 15, seed=21)
    synth = tc.estimators.independent_states(s)
    ref = reference_tc_loo(s, synth, 0.05 * 15)
    for states, backend in ((s, "gemm"), (s, "auto"), (tc.PackedStates.from_bool(s), "auto")):
        t = tc.kde_total_correlation(states, alpha=0.05, leave_one_out=True, block=block, backend=backend)
        assert float(t) == pytest.approx(ref, rel=KDE_REL, abs=1e-6)
        assert t.what == "TC (leave-one-out)"
    # the standard bound is unchanged by the new option's default
    assert float(tc.kde_total_correlation(s, alpha=0.05, block=block)) == pytest.approx(
        reference_tc(s, synth, 0.05 * 15), rel=KDE_REL, abs=1e-6)


def test_loo_tc_near_zero_for_independent_bits_where_the_standard_bound_tracks_c():
    # 40 independent fair gates, 400 samples: every pattern distinct; true TC = 0.  With a narrow
    # kernel Eq. 28's own sum is ~K(sigma_j, sigma_j) = 1 and the bound climbs towards C_l (40 bits);
    # leaving the own term out removes that bias.
    s = random_states(400, 40, p=0.5, seed=22)
    c = tc.marginal_entropy_sum(s)
    std = float(tc.kde_total_correlation(s, alpha=0.01))
    loo = float(tc.kde_total_correlation(s, alpha=0.01, leave_one_out=True))
    assert std > 0.3 * c
    assert abs(loo) < 0.5
    # a wide kernel: both near 0
    assert abs(float(tc.kde_total_correlation(s, alpha=0.2, leave_one_out=True))) < 0.05


def test_loo_tc_of_a_duplicated_fair_bit_is_one_bit():
    # sigma = (b, b): TC = H(b) = 1 bit (Eq. 5); 2000 samples, narrow kernel (K ~ [sigma_j = sigma_k])
    g = torch.Generator().manual_seed(23)
    b = torch.rand(2000, 1, generator=g) < 0.5
    s = torch.cat([b, b], 1)
    plug = tc.plugin_total_correlation(s)
    assert plug == pytest.approx(1.0, abs=1e-3)
    assert float(tc.kde_total_correlation(s, alpha=0.01, leave_one_out=True)) == pytest.approx(plug, abs=0.05)
    # with 30 more independent gates every pattern is distinct: the standard bound is far off, the
    # leave-one-out estimate stays within a bit of the truth
    s30 = torch.cat([b, b, torch.rand(2000, 30, generator=g) < 0.5], 1)
    loo = float(tc.kde_total_correlation(s30, alpha=0.005, leave_one_out=True))
    std = float(tc.kde_total_correlation(s30, alpha=0.005))
    assert abs(loo - 1.0) < 1.0 and std > 10.0


def test_loo_tc_approaches_the_plugin_tc_when_every_pattern_is_frequent():
    g = torch.Generator().manual_seed(24)
    n = 3000
    z = torch.rand(n, 3, generator=g) < 0.5
    s = torch.cat([z, z[:, :1] ^ z[:, 1:2], z[:, :2].all(1, keepdim=True)], 1)
    plug = tc.plugin_total_correlation(s)  # 5 gates, 8 patterns, each seen hundreds of times
    loo = float(tc.kde_total_correlation(s, alpha=0.005, leave_one_out=True))
    std = float(tc.kde_total_correlation(s, alpha=0.005))
    assert loo == pytest.approx(plug, abs=0.05)
    assert std == pytest.approx(loo, abs=0.01)  # the own term is negligible beside hundreds of copies


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_tc_from_distances_equals_the_streamed_estimator(leave_one_out):
    s = _structured(130, 70)
    synth = tc.estimators.independent_states(s)
    for kw in ({"alpha": 0.05}, {"alpha": 0.3, "bandwidth": "variance"}):
        sigma2 = tc.kde_bandwidth(s, **kw)
        own = tc.estimators.squared_distances(s)
        cross = tc.estimators.squared_distances(s, synth)
        t = tc.estimators.kde_total_correlation_from_distances(own, cross, sigma2=sigma2, leave_one_out=leave_one_out)
        ref = tc.kde_total_correlation(s, leave_one_out=leave_one_out, block=50, **kw)
        assert float(t) == pytest.approx(float(ref), rel=1e-6, abs=1e-9)
        assert t.sigma2 == ref.sigma2
        # a synthesized set used twice is the same density: the m != n normalisation keeps the value
        t2 = tc.estimators.kde_total_correlation_from_distances(own, torch.cat([cross, cross], 1), sigma2=sigma2,
                                                                leave_one_out=leave_one_out)
        assert float(t2) == pytest.approx(float(t), rel=1e-6, abs=1e-9)


def test_squared_distances_to_other_states():
    a, b = random_states(33, 70, seed=25), random_states(21, 70, seed=26)
    ref = torch.cdist(a.double(), b.double()).pow(2).round()
    for other in (b, tc.PackedStates.from_bool(b)):
        for states, backend in ((a, "auto"), (a, "gemm"), (tc.PackedStates.from_bool(a), "auto")):
            d2 = tc.estimators.squared_distances(states, other, backend=backend, block=8)
            assert d2.shape == (33, 21) and torch.equal(d2.double(), ref)
    with pytest.raises(ValueError, match="other has 5"):
        tc.estimators.squared_distances(a, random_states(4, 5))


@pytest.mark.parametrize("own, cross, sigma2, message", [
    (torch.zeros(3, 4), torch.zeros(3, 3), 1.0, "square"),
    (torch.zeros(3, 3), torch.zeros(2, 3), 1.0, r"\[n = 3, m >= 1\]"),
    (torch.zeros(1, 1), torch.zeros(1, 1), 1.0, "at least 2"),
    (torch.zeros(3, 3), torch.zeros(3, 3), 0.0, "sigma2 must be > 0"),
    (torch.zeros(3, 3), -torch.ones(3, 3), 1.0, "negative entries"),
    (torch.zeros(3), torch.zeros(3, 3), 1.0, "2-D tensor"),
])
def test_tc_from_distances_rejects_bad_input(own, cross, sigma2, message):
    with pytest.raises(ValueError, match=message):
        tc.estimators.kde_total_correlation_from_distances(own, cross, sigma2=sigma2)


@pytest.mark.parametrize("n, d, soft", [(200, 12, False), (60, 300, False), (80, 10, True)])
def test_sweep_equals_the_single_width_estimators(n, d, soft):
    # (200, 12): integer distances spanning < n / 2 values (the counting route); (60, 300): a span
    # above n / 2 (one log-sum-exp per width); soft states: non-integer distances
    s = torch.rand(n, d, generator=torch.Generator().manual_seed(n + d)) if soft else _structured(n, d)
    synth = tc.estimators.independent_states(s.round().bool() if soft else s)
    own = tc.estimators.squared_distances(s)
    cross = tc.estimators.squared_distances(s, synth.float() if soft else synth)
    sigma2s = [0.02 * d, 0.1 * d, 1.0 * d, 0.3]
    sweep = tc.estimators.kde_sweep_from_distances(own, cross, sigma2s)
    assert len(sweep) == len(sigma2s)
    for s2, (h, t, t_loo) in zip(sigma2s, sweep):
        h_ref, _ = tc.kde_entropy_from_distances(own, sigma2=s2, warn=False)
        assert float(h) == pytest.approx(float(h_ref), rel=1e-6, abs=1e-9)
        assert h.saturated == h_ref.saturated and h.ceiling == h_ref.ceiling
        for est_, loo in ((t, False), (t_loo, True)):
            ref = tc.estimators.kde_total_correlation_from_distances(own, cross, sigma2=s2, leave_one_out=loo)
            assert float(est_) == pytest.approx(float(ref), rel=1e-6, abs=1e-6)
            assert est_.what == ref.what and est_.sigma2 == s2


def test_sweep_rejects_bad_input():
    own, cross = torch.zeros(3, 3), torch.ones(3, 3)
    with pytest.raises(ValueError, match="every sigma2 must be > 0"):
        tc.estimators.kde_sweep_from_distances(own, cross, [1.0, 0.0])
    with pytest.raises(ValueError, match="negative entries"):
        tc.estimators.kde_sweep_from_distances(own, -cross, [1.0])
    with pytest.raises(ValueError, match=r"\[n = 3, m >= 1\]"):
        tc.estimators.kde_sweep_from_distances(own, torch.ones(2, 3), [1.0])


def test_saturation_flag_uses_the_verdicts_headroom_margin():
    from tcomplex.estimators import HEADROOM_BITS, HEADROOM_FRACTION_CLASSES, Estimate
    from tcomplex.experiments.report import THRESHOLDS

    assert THRESHOLDS["headroom_bits"] == HEADROOM_BITS and THRESHOLDS["headroom_fraction_classes"] == HEADROOM_FRACTION_CLASSES
    ceiling = math.log2(2000)
    # 96% of log2 n was not flagged by the old 1% rule; it is within 0.5 bits of the ceiling
    assert Estimate(ceiling - 0.4, ceiling=ceiling).saturated
    assert not Estimate(ceiling - 0.6, ceiling=ceiling).saturated
    # the estimators set the margin in the estimate's unit (nats here) and for I(X;Sigma;Y) relative to log M
    rng = torch.Generator().manual_seed(0)
    s = torch.rand(400, 64, generator=rng) < 0.5
    h_nats = tc.kde_entropy(s, alpha=0.01, base=math.e, warn=False)
    assert h_nats.margin == pytest.approx(HEADROOM_BITS * math.log(2))
    y = torch.randint(0, 10, (400,), generator=rng)
    i = tc.kde_interaction_information(s, y, alpha=0.01, warn=False)
    assert i.margin == pytest.approx(HEADROOM_FRACTION_CLASSES * math.log2(10))
    with pytest.warns(tc.SaturationWarning, match="within 0.5 of its ceiling"):
        tc.kde_entropy(s, alpha=0.01)
