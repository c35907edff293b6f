"""Gating-state capture: correctness of the states, naming, scoping of hooks."""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

import tcomplex as tc
from tcomplex.gating import GateRecorder


class HandMLP(nn.Module):
    """An MLP whose pre-activations we can compute by hand."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.act1 = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(7, 4)
        self.act2 = nn.ReLU(inplace=inplace)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def pre_activations(self, x):
        h1 = self.fc1(x)
        h2 = self.fc2(F.relu(h1))
        return h1, h2


def _no_hooks(model: nn.Module) -> bool:
    """No hook left behind, and no module's forward replaced (max-pool recording patches it)."""
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and "forward" not in m.__dict__
        for m in model.modules()
    )


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_gates_equal_preactivation_sign(inplace):
    torch.manual_seed(0)
    net = HandMLP(inplace=inplace)
    x = torch.randn(300, 5)
    rec = tc.record_gates(net, x, batch_size=64)
    h1, h2 = net.pre_activations(x)
    assert rec.names == ["act1", "act2"]
    assert torch.equal(rec["act1"], h1 > 0)
    assert torch.equal(rec["act2"], h2 > 0)
    assert rec["act1"].dtype == torch.bool and rec.n == 300
    assert rec.info["act1"].after == "fc" and rec.info["act1"].default_alpha == 0.01
    assert _no_hooks(net)


def test_reused_module_gives_one_layer_per_call_with_stable_names():
    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    x = torch.randn(10, 4, 6, 6)
    rec = tc.record_gates(block, x, kinds=("relu",))
    assert rec.names == ["relu#0", "relu#1"]
    # first call sees bn1(conv1(x)), the second bn2(conv2(.)) + identity
    with torch.no_grad():
        h = block.bn1(block.conv1(x))
        out2 = block.bn2(block.conv2(torch.relu(h))) + x
    assert torch.equal(rec["relu#0"], (h > 0).flatten(1))
    assert torch.equal(rec["relu#1"], (out2 > 0).flatten(1))
    assert rec.info["relu#0"].after == "conv" and rec.info["relu#0"].default_alpha == 0.04
    again = tc.record_gates(block, x, kinds=("relu",))
    assert again.names == rec.names


def test_maxpool_states_are_window_one_hots_matching_appendix_a():
    torch.manual_seed(1)
    pool = nn.MaxPool2d(2)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), pool)
    x = torch.randn(6, 1, 4, 4)
    rec = tc.record_gates(net, x)
    (name,) = rec.names
    s = rec[name]
    assert s.shape == (6, 2 * 2 * 2 * 4)  # d' = 2*2*2 windows, 4 entries each
    assert torch.all(s.view(6, 8, 4).sum(-1) == 1)  # one winner per window
    # build the d' x d one-hot of Appendix A and compare pairwise distances
    with torch.no_grad():
        h = net[0](x)
    _, idx = F.max_pool2d(h, 2, return_indices=True)
    full = torch.zeros(6, 8, 2 * 16)
    flat_idx = (idx + torch.arange(2).view(1, 2, 1, 1) * 16).flatten(1)
    full.scatter_(2, flat_idx.unsqueeze(-1), 1.0)
    full = full.flatten(1)
    ours = s.double()
    assert torch.equal(torch.cdist(ours, ours), torch.cdist(full.double(), full.double()))
    # the winner really is the maximum of its window
    h_win = h.unfold(2, 2, 2).unfold(3, 2, 2).reshape(6, 2, 2, 2, 4).reshape(6, 8, 4)
    assert torch.equal(h_win.argmax(-1), s.view(6, 8, 4).float().argmax(-1))


def test_maxpool_with_stride_padding_and_1d():
    torch.manual_seed(2)
    x = torch.randn(3, 2, 7, 7)
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    rec = tc.record_gates(nn.Sequential(pool), x)
    s = rec["0"].view(3, -1, 9)
    assert torch.all(s.sum(-1) == 1)
    vals = F.pad(x, (1, 1, 1, 1), value=-float("inf")).unfold(2, 3, 2).unfold(3, 3, 2).reshape(3, 2, 4, 4, 9)
    assert torch.equal(vals.reshape(3, -1, 9).argmax(-1), s.float().argmax(-1))
    x1 = torch.randn(4, 3, 10)
    rec1 = tc.record_gates(nn.Sequential(nn.MaxPool1d(2)), x1)
    s1 = rec1["0"].view(4, 15, 2)
    assert torch.equal(x1.unfold(2, 2, 2).reshape(4, 15, 2).argmax(-1), s1.float().argmax(-1))


def test_dropout_gates_only_in_training_mode_and_mask_is_exact():
    torch.manual_seed(3)
    drop = nn.Dropout(0.3)
    net = nn.Sequential(nn.Linear(4, 50), nn.ReLU(), drop, nn.Linear(50, 2))
    x = torch.randn(200, 4)
    net.eval()
    assert tc.record_gates(net, x).names == ["1"]
    net.train()
    out_holder = []
    with GateRecorder(net) as rec, torch.no_grad():
        h = net[1](net[0](x))
        y = net(x)
        out_holder.append(y)
    r = rec.recording()
    assert r.names == ["1", "2"]
    mask = r["2"]
    assert 0.6 < mask.float().mean() < 0.8
    # the network's output is exactly what the recorded mask implies
    expected = net[3](h * mask / 0.7)
    assert torch.allclose(out_holder[0], expected, atol=1e-6)
    assert net.training  # mode untouched


def test_sampling_off_makes_dropout_identity_and_aligns_layers():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 30), nn.ReLU(), nn.Dropout(0.5), nn.Linear(30, 20), nn.ReLU()).train()
    x = torch.randn(100, 4)
    with_s, without = tc.record_gates_with_and_without_sampling(net, x)
    assert with_s.names == without.names == ["1", "2", "4"]
    assert without["2"].all()
    assert not with_s["2"].all()
    net.eval()
    assert torch.equal(without["4"], tc.record_gates(net, x)["4"])


def test_sampling_attribute_is_switched_and_restored():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.tcomplex_sampling = True
            self.fc = nn.Linear(3, 8)
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.fc(x)
            if self.tcomplex_sampling:
                h = h + torch.randn_like(h)
            return self.act(h)

    torch.manual_seed(5)
    m = Noisy()
    x = torch.randn(50, 3)
    a = tc.record_gates(m, x, sampling=False)["act"]
    b = tc.record_gates(m, x, sampling=False)["act"]
    assert torch.equal(a, b)
    assert m.tcomplex_sampling is True
    assert not torch.equal(tc.record_gates(m, x)["act"], tc.record_gates(m, x)["act"])


def test_hooks_removed_after_exception():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            self.act(x)
            raise RuntimeError("boom")

    m = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        tc.record_gates(m, torch.randn(4, 3))
    assert _no_hooks(m)


def test_layer_selection_by_name_and_position():
    torch.manual_seed(6)
    net = nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(5)])
    x = torch.randn(20, 6)
    full = tc.record_gates(net, x)
    assert full.names == [f"{i}.1" for i in range(5)]
    assert tc.record_gates(net, x, layers=[3, 4]).names == ["2.1", "3.1"]
    last4 = tc.record_gates(net, x, layers=[-4, -3, -2, -1])
    assert last4.names == full.names[1:]
    assert torch.equal(last4["4.1"], full["4.1"])
    with pytest.raises(ValueError, match="valid names"):
        tc.record_gates(net, x, layers=["nope"])
    with pytest.raises(ValueError, match="out of range"):
        tc.record_gates(net, x, layers=[6])
    assert _no_hooks(net)


def test_concat_and_suffixes():
    torch.manual_seed(7)
    rec = tc.record_gates(HandMLP(), torch.randn(30, 5))
    assert rec.concat().shape == (30, 11)
    assert torch.equal(rec.suffix(2), rec["act2"])
    assert torch.equal(rec.suffix(1), torch.cat([rec["act1"], rec["act2"]], 1))
    assert rec.select(["act2"]).names == ["act2"]


def test_errors_for_models_without_gates_and_nan():
    with pytest.raises(ValueError, match="no gating module"):
        tc.record_gates(nn.Linear(3, 2), torch.randn(4, 3))

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.unused = nn.ReLU()

        def forward(self, x):
            return F.relu(self.fc(x))

    # a functional F.relu is a gating layer too (issue 15): named by its call site
    rec = tc.record_gates(Functional(), torch.randn(4, 3))
    assert rec.names == ["relu()#0"]
    with pytest.warns(tc.NonGatingWarning, match="Tanh '1'"), pytest.raises(ValueError, match="no gating module"):
        tc.record_gates(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), torch.randn(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        tc.record_gates(HandMLP(), torch.full((4, 5), float("nan")))
    with pytest.raises(ValueError, match="unknown gating kinds"):
        tc.record_gates(HandMLP(), torch.randn(4, 5), kinds=("gelu",))
    with pytest.raises(ValueError, match="at least one sample"):
        tc.record_gates(HandMLP(), torch.randn(0, 5))


def test_dataloader_input_and_mode_restored():
    torch.manual_seed(8)
    net = HandMLP().train()
    ds = torch.utils.data.TensorDataset(torch.randn(50, 5), torch.zeros(50))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    rec = tc.record_gates(net, loader)
    assert rec.n == 50 and net.training
    assert torch.equal(rec["act1"], tc.record_gates(net, ds.tensors[0])["act1"])


def test_recorder_in_training_loop_keeps_last_batch_only():
    net = HandMLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with GateRecorder(net, store=False) as rec:
        for _ in range(3):
            loss = net(torch.randn(8, 5)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert rec.last["act1"].shape == (8, 7)
    assert _no_hooks(net)
    with pytest.raises(RuntimeError, match="store=False"):
        rec.recording()


# ---------------------------------------------------------------------------
# max-pool recorded from the module's own (single) pooling call; ReLU states read
# off the ReLU's output
# ---------------------------------------------------------------------------
def _scan_winners(x, k, s, p, d, out_hw):
    """Winner offsets by the scan max_pool does: padding skipped, the index starts at
    the first real element with max -inf, and only a strictly larger value (or NaN)
    takes over, in the window's row-major order."""
    n, c, h, w = x.shape
    ref = torch.empty(n, c, *out_hw, dtype=torch.long)
    for a in range(out_hw[0]):
        for b in range(out_hw[1]):
            best, arg = torch.full((n, c), -float("inf")), None
            for i in range(k[0]):
                for j in range(k[1]):
                    r, col = a * s[0] - p[0] + i * d[0], b * s[1] - p[1] + j * d[1]
                    if not (0 <= r < h and 0 <= col < w):
                        continue
                    if arg is None:
                        arg = torch.full((n, c), i * k[1] + j)
                    v = x[:, :, r, col]
                    take = v > best
                    best, arg = torch.where(take, v, best), torch.where(take, i * k[1] + j, arg)
            ref[:, :, a, b] = arg
    return ref


POOL_CASES = [  # kernel, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (2, 1, 0, 1, False),
    (2, 3, 0, 1, True),
    (4, 3, 2, 1, True),
    (3, 2, 1, 2, False),
]


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_winners_match_maxpool_scan_with_ties_padding_ceil(nd, case):
    k, s, p, d, ceil = case
    g = torch.Generator().manual_seed(11)
    shape = (5, 3, 9) if nd == 1 else (5, 3, 7, 8)
    ties = torch.randint(-1, 2, shape, generator=g).float()  # many equal maxima
    neg_inf = torch.where(torch.rand(shape, generator=g) < 0.7, -float("inf"), torch.randn(shape, generator=g))
    pool = nn.MaxPool1d(k, s, p, d, ceil_mode=ceil) if nd == 1 else nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    for x in (ties, neg_inf, torch.randn(shape, generator=g)):
        rec = tc.record_gates(nn.Sequential(pool), x, batch_size=2)
        out = pool(x)
        x2 = x.unsqueeze(2) if nd == 1 else x  # a 1-d pool is a 2-d pool over a 1 x L plane
        kk, ss, pp, dd = ((1, k), (1, s), (0, p), (1, d)) if nd == 1 else ((k, k), (s, s), (p, p), (d, d))
        ref = _scan_winners(x2, kk, ss, pp, dd, (1, out.shape[-1]) if nd == 1 else tuple(out.shape[-2:]))
        window = k if nd == 1 else k * k
        onehot = rec["0"].view(5, -1, window)
        assert rec.info["0"].window == window and rec.info["0"].shape == tuple(out.shape[1:])
        assert torch.all(onehot.sum(-1) == 1)
        assert torch.equal(onehot.float().argmax(-1), ref.reshape(5, -1))
        assert _no_hooks(pool)


def _bits(t):
    return t.view(torch.int32)


@pytest.mark.parametrize("return_indices", [False, True])
def test_pool_output_while_recording_is_bit_identical(return_indices):
    g = torch.Generator().manual_seed(12)
    signed_zeros = torch.where(torch.rand(4, 2, 6, 6, generator=g) < 0.5, 0.0, -0.0)
    pools = [nn.MaxPool2d(2, return_indices=return_indices),
             nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=return_indices),
             nn.MaxPool1d(3, 2, 1, return_indices=return_indices)]
    for pool in pools:
        for x in (signed_zeros, torch.randint(0, 2, (4, 2, 6, 6), generator=g).float(),
                  torch.randn(4, 2, 6, 6, generator=g).to(memory_format=torch.channels_last)):
            x = x.flatten(2) if isinstance(pool, nn.MaxPool1d) else x
            expected = pool(x)
            with GateRecorder(pool) as rec:
                assert "forward" in pool.__dict__  # pooling and winners come from one call
                got = pool(x)
            assert "forward" not in pool.__dict__
            if return_indices:
                assert torch.equal(_bits(got[0]), _bits(expected[0])) and torch.equal(got[1], expected[1])
                got = got[0]
            else:
                assert torch.equal(_bits(got), _bits(expected))  # also the sign of zeros
            assert got.stride() == (expected[0] if return_indices else expected).stride()  # same layout
            assert rec.last[""].shape == (4, got[0].numel() * rec.info[""].window)


def test_pool_forward_restored_after_exception():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2)
            self.act = nn.ReLU()

        def forward(self, x):
            self.act(self.pool(x))
            raise RuntimeError("boom")

    m = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        tc.record_gates(m, torch.randn(3, 1, 4, 4))
    assert _no_hooks(m)
    bad = nn.Sequential(nn.MaxPool2d(5))  # the pooling itself raises: input smaller than the window
    with pytest.raises(RuntimeError):
        tc.record_gates(bad, torch.randn(2, 1, 3, 3))
    assert _no_hooks(bad)


def test_pool_subclass_with_own_forward_and_keyword_call():
    class DoublePool(nn.MaxPool2d):  # not torch's forward: recorded through the pre-hook, not patched
        def forward(self, x):
            return 2 * super().forward(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = DoublePool(2)
            self.b = nn.MaxPool2d(2)

        def forward(self, x):
            return self.b(input=self.a(x))

    torch.manual_seed(13)
    net = Net()
    x = torch.randn(6, 2, 8, 8)
    with GateRecorder(net) as rec:
        assert "forward" not in net.a.__dict__ and "forward" in net.b.__dict__
        y = net(x)
    assert torch.equal(y, net(x))
    r = rec.recording()
    assert r.names == ["a", "b"]
    h = net.a(x)
    ref_a = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(6, -1, 4).argmax(-1)
    ref_b = h.unfold(2, 2, 2).unfold(3, 2, 2).reshape(6, -1, 4).argmax(-1)
    assert torch.equal(r["a"].view(6, -1, 4).float().argmax(-1), ref_a)
    assert torch.equal(r["b"].view(6, -1, 4).float().argmax(-1), ref_b)
    assert _no_hooks(net)


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_states_from_output_equal_input_sign_incl_signed_zero(inplace):
    x = torch.tensor([[0.0, -0.0, 1e-45, -1e-45, 2.0, -3.0, float("inf"), -float("inf")]])
    net = nn.Sequential(nn.Identity(), nn.ReLU(inplace=inplace))
    rec = tc.record_gates(net, x.clone())
    assert torch.equal(rec["1"], x > 0)
    # with the NaN check off, NaN reads as "off" (x > 0), as before
    xn = torch.tensor([[float("nan"), 1.0, -1.0]])
    with GateRecorder(net, check_nan=False) as r2:
        net(xn.clone())
    assert torch.equal(r2.last["1"], xn > 0)
    with pytest.raises(ValueError, match="NaN"):
        tc.record_gates(net, xn)
    assert _no_hooks(net)


def test_relu_with_an_earlier_user_forward_hook_reads_the_input():
    torch.manual_seed(14)
    net = HandMLP()
    h = net.act1.register_forward_hook(lambda m, a, out: torch.ones_like(out))  # changes the output
    try:
        x = torch.randn(40, 5)
        rec = tc.record_gates(net, x)
        h1, _ = net.pre_activations(x)
        assert torch.equal(rec["act1"], h1 > 0)
    finally:
        h.remove()
    assert _no_hooks(net)


def test_gradients_through_recorded_pool_and_relu_are_unchanged():
    torch.manual_seed(15)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(5, 1, 9, 9)
    ties = (x * 2).round()  # tied maxima: the gradient must go to the same (first) element
    for inp in (x, ties):
        net.zero_grad()
        net(inp).square().sum().backward()
        expected = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        with GateRecorder(net, store=False) as rec:
            net(inp).square().sum().backward()
        assert rec.last["2"].shape == (5, 3 * 4 * 4 * 9)
        assert all(torch.equal(p.grad, e) for p, e in zip(net.parameters(), expected))
    assert _no_hooks(net)


def test_pool_winners_on_planes_narrower_than_the_window():
    # kernel wider than the (unpadded) plane: offsets come from the generic arithmetic
    g = torch.Generator().manual_seed(16)
    for shape, pool in [((4, 2, 3, 1), nn.MaxPool2d(2, stride=1, padding=1)),
                        ((4, 2, 1, 2), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True))]:
        x = torch.randint(-1, 2, shape, generator=g).float()
        rec = tc.record_gates(pool, x)
        out = pool(x)
        k = pool.kernel_size
        ref = _scan_winners(x, (k, k), (pool.stride,) * 2, (pool.padding,) * 2, (1, 1), tuple(out.shape[-2:]))
        assert torch.equal(rec[""].view(4, -1, k * k).float().argmax(-1), ref.reshape(4, -1))


def test_nested_recorders_see_the_same_states():
    torch.manual_seed(17)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(3), nn.ReLU())
    x = torch.randn(7, 1, 8, 8)
    alone = tc.record_gates(net, x)
    with GateRecorder(net) as outer, torch.no_grad():
        inner = tc.record_gates(net, x)  # the inner recorder finds the pool already patched
        net(x)
    assert _no_hooks(net)
    both = outer.recording()  # the outer recorder saw the inner one's forward pass too
    assert inner.names == both.names == alone.names and both.n == 2 * x.shape[0]
    for k in alone:
        assert torch.equal(inner[k], alone[k])
        assert torch.equal(both[k], torch.cat([alone[k], alone[k]]))


# ---------------------------------------------------------------------------
# issue 15: every gating operation is recorded wherever it runs; the others are named
# ---------------------------------------------------------------------------
class MixedNet(nn.Module):
    """nn.ReLU, F.relu, ReLU6, LeakyReLU, GELU, AdaptiveMaxPool2d and Dropout2d (the issue's model)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.six = nn.ReLU6()
        self.leaky = nn.LeakyReLU()
        self.gelu = nn.GELU()
        self.pool = nn.AdaptiveMaxPool2d((3, 2))
        self.drop = nn.Dropout2d(0.4)
        self.fc = nn.Linear(4 * 3 * 2, 5)

    def stages(self, x):
        h1 = self.conv(x)
        h2 = self.conv2(self.act(h1))
        h3 = 4 * F.relu(h2)  # functional: recorded as "relu()#0"
        h4 = self.leaky(self.six(h3))
        return h1, h2, h3, self.gelu(h4)

    def forward(self, x):
        h = self.stages(x)[-1]
        return self.fc(self.drop(self.pool(h)).flatten(1))


def _adaptive_windows(L, O):
    return [(i * L // O, -(-(i + 1) * L // O)) for i in range(O)]


def _adaptive_winner_onehot(h, out_hw):
    """Brute force: one-hot of each adaptive window's first maximum, in a box of the largest window."""
    n, c, H, W = h.shape
    rows, cols = _adaptive_windows(H, out_hw[0]), _adaptive_windows(W, out_hw[1])
    kh, kw = max(b - a for a, b in rows), max(b - a for a, b in cols)
    ref = torch.zeros(n, c, out_hw[0], out_hw[1], kh * kw, dtype=torch.bool)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            win = h[:, :, r0:r1, c0:c1].reshape(n, c, -1)
            a = win.argmax(-1)  # the first maximum
            off = (a // (c1 - c0)) * kw + a % (c1 - c0)
            ref[:, :, i, j].scatter_(-1, off.unsqueeze(-1), True)
    return ref.reshape(n, -1), kh * kw


def test_non_gating_warning_points_at_the_callers_line():
    """Neither torch's module call nor the recorder's hooks: the warning names the line that ran the model."""
    net = MixedNet().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GateRecorder(net), torch.no_grad():
            net(torch.randn(2, 1, 7, 5)); line = sys._getframe().f_lineno  # noqa: E702
    got = [w for w in caught if issubclass(w.category, tc.NonGatingWarning)]
    assert len(got) == 1
    assert (Path(got[0].filename).resolve(), got[0].lineno) == (Path(__file__).resolve(), line)


def test_every_gating_operation_is_recorded_and_non_gating_ones_are_named():
    torch.manual_seed(20)
    net = MixedNet().train()
    x = torch.randn(6, 1, 7, 5)
    with pytest.warns(tc.NonGatingWarning, match=r"LeakyReLU 'leaky'.*GELU 'gelu'"):
        with GateRecorder(net) as rec, torch.no_grad():
            y = net(x)
    r = rec.recording()
    assert r.names == ["act", "relu()#0", "six", "pool", "drop"]
    assert [r.info[k].kind for k in r.names] == ["relu", "relu", "relu6", "maxpool", "dropout"]
    assert r.info["relu()#0"].module == "" and r.info["relu()#0"].function == "relu"
    with torch.no_grad():
        h1, h2, h3, h = net.stages(x)
        pooled = F.adaptive_max_pool2d(h, (3, 2))
    assert torch.equal(r["act"], (h1 > 0).flatten(1))
    assert torch.equal(r["relu()#0"], (h2 > 0).flatten(1))
    # ReLU6: two gates per unit, first x > 0 for every unit, then x < 6
    assert r.info["six"].width == 2 * h3[0].numel()
    assert torch.equal(r["six"], torch.cat([(h3 > 0).flatten(1), (h3 < 6).flatten(1)], 1))
    onehot, window = _adaptive_winner_onehot(h, (3, 2))
    assert r.info["pool"].window == window == 3 * 3 and torch.equal(r["pool"], onehot)
    # Dropout2d: one keep bit per (sample, channel), expanded to the channel's elements, and applied
    keep = r["drop"].view(6, 4, 3 * 2)
    assert torch.equal(keep, keep[:, :, :1].expand_as(keep))
    assert torch.allclose(y, net.fc((pooled * keep.view(6, 4, 3, 2) / 0.6).flatten(1)), atol=1e-6)
    assert _no_hooks(net) and net.training
    with warnings.catch_warnings():  # once per model
        warnings.simplefilter("error")
        assert tc.record_gates(net, x).names == r.names


class FunctionalBlock(nn.Module):
    """Gating done by functions only; called twice by its parent."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU()  # a module ReLU: recorded once, not again through its F.relu

    def forward(self, x):
        h = self.fc(x)
        a = torch.relu(h)
        b = self.act(h + 1)
        c = (h - 1).relu()
        d = F.relu_(h.clone() * 2)
        return a + b + c + d


def test_functional_relus_are_named_by_call_site_and_module_relus_not_twice():
    torch.manual_seed(21)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = FunctionalBlock()
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(F.relu(self.block(self.block(x))))

    net = Net()
    x = torch.randn(9, 6)
    rec = tc.record_gates(net, x)
    assert rec.names == [
        "block.relu()#0", "block.act#0", "block.relu()#1", "block.relu()#2",
        "block.relu()#3", "block.act#1", "block.relu()#4", "block.relu()#5",
        "relu()#0",
    ]
    with torch.no_grad():
        h = net.block.fc(x)
        first = net.block(x)
        h2 = net.block.fc(first)
        second = net.block(first)
    assert torch.equal(rec["block.relu()#0"], h > 0)
    assert torch.equal(rec["block.act#0"], h + 1 > 0)
    assert torch.equal(rec["block.relu()#1"], h - 1 > 0)
    assert torch.equal(rec["block.relu()#2"], h * 2 > 0)
    assert torch.equal(rec["block.relu()#4"], h2 - 1 > 0)
    assert torch.equal(rec["relu()#0"], second > 0)
    assert rec.info["block.relu()#4"].module == "block" and rec.info["block.relu()#4"].call == 4
    # layers can be selected by these names, and the names are the same on every run
    assert tc.record_gates(net, x, layers=["block.relu()#4"]).names == ["block.relu()#4"]
    assert tc.record_gates(net, x).names == rec.names
    # only ReLUs, only max-pools: kinds filter functional calls too
    with pytest.raises(ValueError, match="no gating module"):
        tc.record_gates(net, x, kinds=("maxpool",))
    assert _no_hooks(net)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_functional_and_module_max_pools_in_1_2_3_dims(nd):
    g = torch.Generator().manual_seed(22 + nd)
    shape = (4, 2) + (7, 6, 5)[:nd]
    x = torch.randint(-2, 3, shape, generator=g).float()  # many ties: the first maximum wins
    mod = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[nd - 1](3, stride=2, padding=1)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    tfn = (torch.max_pool1d, torch.max_pool2d, torch.max_pool3d)[nd - 1]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = mod

        def forward(self, x):
            a = self.pool(x)
            b, _ = fn(x, 3, 2, 1, return_indices=True)
            c = tfn(x, kernel_size=3, stride=2, padding=1)
            return a + b + c

    net = Net()
    rec = tc.record_gates(net, x)
    op = f"max_pool{nd}d"
    assert rec.names == ["pool", f"{op}()#0", f"{op}()#1"]
    _, idx = fn(x, 3, 2, 1, return_indices=True)
    # brute force: the winner's coordinates minus its window's start, row-major in the 3^nd window
    coords, rem = [], idx
    for d in reversed(range(nd)):
        coords.insert(0, rem % shape[2 + d])
        rem = rem // shape[2 + d]
    off = torch.zeros_like(idx)
    for d in range(nd):
        start = torch.arange(idx.shape[2 + d]) * 2 - 1
        off = off * 3 + coords[d] - start.view([-1] + [1] * (nd - 1 - d))
    ref = F.one_hot(off.flatten(1), 3**nd).flatten(1).bool()
    for name in rec.names:
        assert rec.info[name].window == 3**nd
        assert torch.equal(rec[name], ref)
    # the winners are maxima of their windows
    vals = x.flatten(2).gather(2, idx.flatten(2))
    assert torch.equal(vals, fn(x, 3, 2, 1).flatten(2))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_max_pools_module_and_functional(nd):
    g = torch.Generator().manual_seed(30 + nd)
    shape = (3, 2) + (7, 5, 6)[:nd]
    out = (3, 2, 4)[:nd]
    x = torch.randn(shape, generator=g)
    mod = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)[nd - 1](out)
    fn = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[nd - 1]
    net = nn.Sequential(mod)
    rec = tc.record_gates(net, x)
    windows = [_adaptive_windows(L, O) for L, O in zip(shape[2:], out)]
    box = [max(b - a for a, b in w) for w in windows]
    assert rec.info["0"].window == math.prod(box)
    # brute force over every output position
    ref = torch.zeros(3, 2, *out, math.prod(box), dtype=torch.bool)
    for pos in itertools.product(*[range(o) for o in out]):
        sl = [slice(*windows[d][pos[d]]) for d in range(nd)]
        win = x[(slice(None), slice(None), *sl)]
        ext = win.shape[2:]
        a = win.reshape(3, 2, -1).argmax(-1)
        local, rem = [], a
        for d in reversed(range(nd)):
            local.insert(0, rem % ext[d])
            rem = rem // ext[d]
        off = torch.zeros_like(a)
        for d in range(nd):
            off = off * box[d] + local[d]
        ref[(slice(None), slice(None), *pos)] = F.one_hot(off, math.prod(box)).bool()
    assert torch.equal(rec["0"], ref.reshape(3, -1))

    class Functional(nn.Module):
        def forward(self, x):
            return fn(x, out)

    frec = tc.record_gates(Functional(), x)
    assert frec.names == [f"adaptive_max_pool{nd}d()#0"]
    assert torch.equal(frec[frec.names[0]], rec["0"])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_channel_dropout_modules_and_functions_draw_one_applied_mask_per_channel(nd):
    torch.manual_seed(40 + nd)
    shape = (50, 8) + (3, 4, 2)[:nd]
    x = torch.randn(shape)
    mod = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)[nd - 1](0.3)
    fn = (F.dropout1d, F.dropout2d, F.dropout3d)[nd - 1]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = mod

        def forward(self, x):
            return self.drop(x), fn(x, 0.5, training=self.training), F.dropout(x, 0.2, self.training)

    net = Net().train()
    with GateRecorder(net) as rec:
        outs = net(x)
    r = rec.recording()
    assert r.names == ["drop", f"dropout{nd}d()#0", "dropout()#0"]
    spatial = math.prod(shape[2:])
    for name, p, out in zip(r.names, (0.3, 0.5, 0.2), outs):
        keep = r[name]
        assert r.info[name].kind == "dropout" and keep.shape == (50, 8 * spatial)
        assert torch.allclose(out, x * keep.view(shape) / (1 - p))  # the recorded mask is the applied one
        per_channel = keep.view(50, 8, spatial)
        if name != "dropout()#0":
            assert torch.equal(per_channel, per_channel[:, :, :1].expand_as(per_channel))
        assert abs(per_channel[:, :, 0].float().mean().item() - (1 - p)) < 0.12
    # Eq. 3: with sampling off, every dropout is the identity with an all-ones mask
    without = tc.record_gates(net, x, sampling=False)
    assert without.names == r.names and all(without[k].all() for k in without)
    net.eval()  # eval mode: not gating
    with pytest.raises(ValueError, match="no gating module"):
        tc.record_gates(net, x)


def test_functional_gating_on_a_non_batch_tensor_is_left_out_with_a_warning():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.randn(3))

        def forward(self, x):
            return F.relu(self.fc(x)) * torch.relu(self.scale)  # the second is not per sample

    torch.manual_seed(23)
    net = Net()
    with pytest.warns(tc.NonGatingWarning, match=r"relu in the root module on a tensor of shape \(3,\)"):
        rec = tc.record_gates(net, torch.randn(5, 4))
    assert rec.names == ["relu()#0"]


def test_relu6_module_inplace_and_functional():
    x = torch.tensor([[-1.0, 0.0, 3.0, 6.0, 7.0, float("inf")]])
    for net in (nn.Sequential(nn.Identity(), nn.ReLU6(inplace=True)), nn.Sequential(nn.Identity(), nn.ReLU6())):
        rec = tc.record_gates(net, x.clone())
        assert torch.equal(rec["1"], torch.cat([x > 0, x < 6], 1))

    class Functional(nn.Module):
        def forward(self, x):
            return F.relu6(x)

    rec = tc.record_gates(Functional(), x.clone())
    assert rec.names == ["relu6()#0"] and torch.equal(rec["relu6()#0"], torch.cat([x > 0, x < 6], 1))
    assert tc.record_gates(Functional(), x, kinds=("relu6",)).names == ["relu6()#0"]
    with pytest.raises(ValueError, match="NaN"):
        tc.record_gates(Functional(), torch.tensor([[float("nan")]]))


def test_function_mode_is_active_only_during_the_recorded_forward():
    from torch.overrides import _get_current_function_mode_stack

    seen = []

    class Net(nn.Module):
        def forward(self, x):
            seen.append(len(_get_current_function_mode_stack()))
            return F.relu(x)

    net = Net()
    before = len(_get_current_function_mode_stack())
    with GateRecorder(net) as rec:
        assert len(_get_current_function_mode_stack()) == before
        net(torch.randn(3, 2))
        assert len(_get_current_function_mode_stack()) == before
        with pytest.raises(ValueError, match="NaN"):
            net(torch.full((3, 2), float("nan")))  # raises in the recorder: the mode is gone after it
    assert seen[0] == before + 1
    assert len(_get_current_function_mode_stack()) == before
    assert rec.names == ["relu()#0"]


def test_a_users_function_mode_sees_the_models_operations_and_not_the_recorders():
    """The recorder's own checks and packing run with torch-function handling off, so a user's
    mode (a FLOP counter, a tracer) around the recording sees what the model computes and
    nothing else; the pooling of a recorded max-pool module is the model's and stays visible."""
    from torch.overrides import TorchFunctionMode

    class Names(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 4), nn.ReLU())
    x = torch.randn(5, 1, 8, 8)
    with Names() as mode:
        rec = tc.record_gates(net, x)
    ops = [n for n in mode.names if n != "__get__"]
    for own in ("amax", "isnan", "numpy", "bool", "contiguous", "__setitem__", "is_floating_point"):
        assert own not in ops, (own, ops)
    assert ops.count("conv2d") == 1 and ops.count("linear") == 1 and ops.count("relu") == 2
    assert "max_pool2d_with_indices" in ops or "max_pool2d" in ops
    assert rec.names == ["1", "2", "5"]

# ---------------------------------------------------------------------------
# issue 15: nested recorders on a training-mode model share one applied dropout mask
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("functional", [False, True])
def test_nested_recorders_store_the_one_applied_dropout_mask(functional):
    torch.manual_seed(24)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 200)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            h = self.fc(x)
            return F.dropout(h, 0.5, self.training) if functional else self.drop(h)

    net = Net().train()
    x = torch.randn(64, 4)
    with GateRecorder(net, store=False) as outer, torch.no_grad():
        with GateRecorder(net, store=False) as inner:
            y = net(x)
        name = inner.names[0]
        assert outer.names == inner.names == [("dropout()#0" if functional else "drop")]
        mask = inner.last[name]
        assert torch.equal(outer.last[name], mask)  # one mask, stored by both
        assert torch.allclose(y, net.fc(x) * mask / 0.5)  # and it is the applied one
        z = net(x)  # the outer recorder alone after the inner one left
        assert torch.allclose(z, net.fc(x) * outer.last[name] / 0.5)
    assert _no_hooks(net)


def test_nested_recorders_with_different_sampling_are_refused():
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Dropout(0.5)).train()
    with GateRecorder(net):
        with pytest.raises(RuntimeError, match="must agree on sampling"):
            tc.record_gates(net, torch.randn(4, 3), sampling=False)
        with GateRecorder(net) as inner:  # the same sampling is fine
            net(torch.randn(4, 3))
        assert inner.names == ["1", "2"]
    assert _no_hooks(net)


def test_recorders_in_two_threads_see_only_their_own_functional_calls():
    import threading

    class Net(nn.Module):
        def __init__(self, gate):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.gate = gate

        def forward(self, x):
            self.gate()
            return F.relu(self.fc(x))

    inside, release = threading.Event(), threading.Event()

    def hold():  # thread A stays inside its recorded forward while thread B records
        inside.set()
        assert release.wait(30)

    torch.manual_seed(25)
    a, b = Net(hold), Net(lambda: None)
    xa, xb = torch.randn(5, 3), torch.randn(7, 3)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("a", tc.record_gates(a, xa)))
    t.start()
    try:
        assert inside.wait(30)
        rb = tc.record_gates(b, xb)
    finally:
        release.set()
        t.join(30)
    assert rb.names == out["a"].names == ["relu()#0"]
    assert rb.n == 7 and out["a"].n == 5
    with torch.no_grad():
        assert torch.equal(rb["relu()#0"], b.fc(xb) > 0) and torch.equal(out["a"]["relu()#0"], a.fc(xa) > 0)


# --- storage as bits (issue 16) -------------------------------------------------------
def test_recording_is_stored_as_bits_with_layer_boundaries():
    torch.manual_seed(21)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 65), nn.ReLU())
    x = torch.randn(37, 1, 8, 8)
    with GateRecorder(net) as rec:  # bool states of each batch, as captured
        batches = []
        for xb in x.split(10):
            net(xb)
            batches.append(rec.last)
    bool_states = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    for r in (tc.record_gates(net, x, batch_size=10), tc.record_gates(net, list(x.split(10)))):
        assert r.names == ["1", "2", "5"] and r.n == 37
        widths = [r.info[k].width for k in r.names]  # 108, 27 * 4, 65
        assert widths == [108, 108, 65]
        # 64 gates per word, each layer word-aligned: n * sum(ceil(d_l / 64)) * 8 bytes
        assert r.nbytes == 37 * sum(-(-w // 64) for w in widths) * 8
        for k in r.names:
            assert r[k].dtype == torch.bool and torch.equal(r[k], bool_states[k])
        assert torch.equal(r.concat(), torch.cat([bool_states[k] for k in r.names], 1))
        assert torch.equal(r.suffix(2), torch.cat([bool_states["2"], bool_states["5"]], 1))
        p = r.packed()
        assert p.shape == (37, 281) and torch.equal(p.unpack(), r.concat())
        assert torch.equal(r.packed(["5", "1"]).unpack(), torch.cat([bool_states["5"], bool_states["1"]], 1))
        sel = r.select([-1])
        assert sel.names == ["5"] and torch.equal(sel["5"], bool_states["5"])
        assert sel.packed().words.data_ptr() == r.packed().words.data_ptr()  # shared, not copied
    # a recording built from bool states packs them the same way
    again = tc.Recording({k: bool_states[k] for k in r.names}, r.info)
    assert torch.equal(again.packed().words, r.packed().words)


def test_estimates_from_the_packed_recording_equal_the_bool_ones():
    torch.manual_seed(22)
    net = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 70), nn.ReLU())
    x = torch.randn(120, 6)
    r = tc.record_gates(net, x)
    for names in (None, ["1"], ["3"]):
        s = r.concat(names)
        h_bool = tc.kde_entropy(s, alpha=0.05, backend="gemm", warn=False)
        assert float(tc.kde_entropy(r.packed(names), alpha=0.05, warn=False)) == float(h_bool)
    # the whole network's distances are the sum of the layers', from the same storage
    d_all = tc.squared_distances(r.packed())
    assert torch.equal(d_all, tc.squared_distances(r.packed(["1"])) + tc.squared_distances(r.packed(["3"])))


@pytest.mark.parametrize("window, dtype", [(1, torch.uint8), (4, torch.uint8), (9, torch.uint8), (300, torch.int16)])
def test_pool_winners_are_packed_straight_to_bits(window, dtype):
    from tcomplex.bits import pack_bits, pack_onehot

    g = torch.Generator().manual_seed(window)
    off = torch.randint(0, window, (7, 23), generator=g).to(dtype)
    onehot = F.one_hot(off.long(), window).reshape(7, 23 * window).bool()
    assert torch.equal(pack_onehot(off, window), pack_bits(onehot))
    assert torch.equal(pack_onehot(off, window, route="torch"), pack_bits(onehot))


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[3] == 1])
def test_pool_winners_packed_from_indices_equal_the_offsets_route(nd, case):
    from tcomplex.bits import pack_onehot, pack_pool_winners

    k, s, p, _, ceil = case
    g = torch.Generator().manual_seed(5)
    shape = (4, 3, 11) if nd == 1 else (4, 3, 9, 10)
    x = torch.randint(-1, 2, shape, generator=g).float()  # ties
    fn = F.max_pool1d if nd == 1 else F.max_pool2d
    _, idx = fn(x, k, s, p, ceil_mode=ceil, return_indices=True)
    plane, kk, ss, pp = tuple(shape[2:]), (k,) * nd, (s,) * nd, (p,) * nd
    words = pack_pool_winners(idx, plane, kk, ss, pp)
    assert words is not None
    x2 = x.unsqueeze(2) if nd == 1 else x  # the reference scan of the test above, independent of the kernel
    k2, s2, p2 = ((1, k), (1, s), (0, p)) if nd == 1 else ((k, k), (s, s), (p, p))
    ref = _scan_winners(x2, k2, s2, p2, (1, 1), (1, idx.shape[-1]) if nd == 1 else tuple(idx.shape[-2:]))
    assert torch.equal(words, pack_onehot(ref.reshape(4, -1).to(torch.uint8), k**nd))
    # a window wider than the plane's row: the general route (None)
    assert pack_pool_winners(idx, (plane[0], 1) if nd == 2 else (1,), kk, ss, pp) is None


def test_nan_is_named_at_the_first_relu_and_a_following_pool_is_not_checked_twice():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU())
    x = torch.randn(5, 4)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN in the input of gating layer '1'"):
        tc.record_gates(net, x)
    # ReLU then max-pool on its output: one check of the shared tensor, states unchanged
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2))
    img = torch.randn(4, 1, 8, 8)
    rec = tc.record_gates(conv, img)
    y = conv[1](conv[0](img))
    assert torch.equal(rec["1"], (y > 0).flatten(1))
    img[1, 0, 4, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN in the input of gating layer '1'"):
        tc.record_gates(conv, img)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 63, 64, 65, 200])
def test_pack_positive_equals_packing_the_bool_states_and_counts_nan(d):
    from tcomplex.bits import pack_bits, pack_positive

    g = torch.Generator().manual_seed(d)
    for dtype in (torch.float32, torch.float64):
        y = torch.relu(torch.randn(6, d, generator=g, dtype=dtype))
        y[1] = -0.0  # relu's -0.0 is not > 0
        buf = torch.full((6, 3 + -(-d // 64) + 2), -1, dtype=torch.int64)  # dirty, wider: a strided view
        dest = buf[:, 3 : 3 + -(-d // 64)]
        assert pack_positive(y, dest) == 0
        assert torch.equal(dest, pack_bits(y > 0))
        assert (buf[:, :3] == -1).all() and (buf[:, 3 + -(-d // 64) :] == -1).all()  # neighbours untouched
        y[2, d // 2] = float("nan")
        y[4, 0] = float("nan")
        assert pack_positive(y, dest) == 2
        assert torch.equal(dest, pack_bits(y > 0))  # NaN reads as 0
    with pytest.raises(ValueError, match="int64 CPU tensor"):
        pack_positive(torch.ones(2, d), torch.zeros(2, -(-d // 64) + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="float32/float64"):
        pack_positive(torch.ones(2, d, dtype=torch.float16), torch.zeros(2, -(-d // 64), dtype=torch.int64))


@pytest.mark.parametrize("nd, kernel, stride, padding", [
    (1, (8,), (8,), (0,)), (1, (2,), (1,), (1,)), (2, (1, 2), (1, 2), (0, 0)), (2, (2, 4), (2, 3), (1, 2)),
    (2, (2, 2), (2, 2), (0, 0)),
])
def test_pool_winners_by_bytes_equal_the_offsets_route_and_fill_a_strided_out(nd, kernel, stride, padding):
    """Windows of 1, 2, 4 or 8 elements take the byte kernel; rectangular ones too."""
    from tcomplex.bits import pack_onehot, pack_pool_winners

    g = torch.Generator().manual_seed(sum(kernel))
    shape = (5, 3, 19) if nd == 1 else (5, 3, 9, 13)
    x = torch.randint(-1, 2, shape, generator=g).float()  # ties
    fn = F.max_pool1d if nd == 1 else F.max_pool2d
    _, idx = fn(x, kernel, stride, padding, return_indices=True)
    plane = tuple(shape[2:])
    words = pack_pool_winners(idx, plane, kernel, stride, padding)
    x2 = x.unsqueeze(2) if nd == 1 else x
    k2, s2, p2 = ((1, *kernel), (1, *stride), (0, *padding)) if nd == 1 else (kernel, stride, padding)
    ref = _scan_winners(x2, k2, s2, p2, (1, 1), (1, idx.shape[-1]) if nd == 1 else tuple(idx.shape[-2:]))
    window = math.prod(kernel)
    assert torch.equal(words, pack_onehot(ref.reshape(5, -1).to(torch.uint8), window))
    buf = torch.full((5, words.shape[1] + 3), -1, dtype=torch.int64)
    out = buf[:, 1 : 1 + words.shape[1]]
    assert pack_pool_winners(idx, plane, kernel, stride, padding, out=out) is out
    assert torch.equal(out, words) and (buf[:, 0] == -1).all() and (buf[:, -2:] == -1).all()


class _TwiceRelu(nn.Module):
    """A ReLU module called twice (as torchvision's BasicBlock does), a max-pool and a functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv(x)))
        x = self.relu(x - 0.1)
        return F.relu(self.fc(x.flatten(1)))


def test_later_batches_packed_as_recorded_equal_one_batch_and_last():
    """From the second batch on, states are packed into the buffer as they are recorded (ReLU bits
    straight from the output): the recording equals one big batch, and .last the last batch's."""
    torch.manual_seed(0)
    net = _TwiceRelu().eval()
    x = torch.randn(37, 1, 8, 8)
    whole = tc.record_gates(net, x, batch_size=64)
    for bs in (5, 16):
        parts = tc.record_gates(net, x, batch_size=bs)
        assert list(parts) == list(whole) == ["relu#0", "pool", "relu#1", "relu()#0"]
        assert torch.equal(parts.packed().words, whole.packed().words)
    batches = [x[:16], x[16:32], x[32:]]
    with tc.GateRecorder(net) as rec, torch.no_grad():
        for b in batches:
            net(b)
        last = rec.last
    ref = tc.record_gates(net, batches[-1])
    assert all(torch.equal(last[k], ref[k]) for k in ref)
    # a DataLoader-like iterable without a preallocated buffer: the same words
    assert torch.equal(tc.record_gates(net, iter(batches)).packed().words, whole.packed().words)


def test_nan_in_a_later_batch_is_refused_and_its_rows_are_not_kept():
    torch.manual_seed(0)
    net = _TwiceRelu().eval()
    good, bad = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    bad[3, 0, 2, 2] = float("nan")
    with tc.GateRecorder(net) as rec, torch.no_grad():
        net(good)
        with pytest.raises(ValueError, match="NaN in the input of gating layer 'relu'"):
            net(bad)
        net(good)
        got = rec.recording()
    ref = tc.record_gates(net, torch.cat([good, good]))
    assert torch.equal(got.packed().words, ref.packed().words)


def test_a_later_batch_of_another_shape_is_refused_with_the_layer_named():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    with tc.GateRecorder(net) as rec, torch.no_grad():
        net(torch.randn(3, 1, 8, 8))
        with pytest.raises(RuntimeError, match=r"gating layer '1' has 50 gates in this forward pass but 72"):
            net(torch.randn(3, 1, 7, 7))


# --------------------------------------------------------------------------- #
# the recorder's own max-pool kernel (windows of 1, 2, 4 or 8 elements)
# --------------------------------------------------------------------------- #
FUSED_WINDOWS = [((1, 1), (1, 1)), ((1, 2), (1, 2)), ((2, 1), (1, 1)), ((2, 2), (2, 2)), ((2, 2), (1, 1)),
                 ((1, 4), (1, 3)), ((4, 1), (2, 1)), ((2, 4), (2, 3)), ((4, 2), (3, 2)), ((1, 8), (1, 8)),
                 ((8, 1), (1, 1))]


def _pool_inputs(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    signed_zeros = torch.where(torch.rand(shape, generator=g) < 0.5, 0.0, -0.0)
    ties = torch.randint(-1, 2, shape, generator=g).float()
    relu_like = torch.relu(torch.randn(shape, generator=g))  # half zeros: the case the kernel is for
    neg_inf = torch.where(torch.rand(shape, generator=g) < 0.7, -float("inf"), torch.randn(shape, generator=g))
    return [t.to(dtype) for t in (signed_zeros, ties, relu_like, neg_inf)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel, stride", FUSED_WINDOWS)
def test_fused_max_pool_equals_torch_pooling_and_the_indices_route(kernel, stride, dtype):
    """Output bit for bit (signed zeros, ties, -inf) and the winners' words of max_pool's indices."""
    from tcomplex.bits import max_pool_packed, pack_pool_winners

    shape = (5, 3, 9, 13)
    for x in _pool_inputs(shape, sum(kernel) + 7 * sum(stride), dtype):
        expected, idx = F.max_pool2d(x, kernel, stride, return_indices=True)
        words = pack_pool_winners(idx, shape[2:], kernel, stride, (0, 0))
        buf = torch.full((5, words.shape[1] + 3), -1, dtype=torch.int64)  # a strided out: columns 1 .. words
        out = torch.full_like(expected, 7.0)
        assert max_pool_packed(x, kernel, stride, out, buf[:, 1 : 1 + words.shape[1]]) == 0
        bits = torch.int64 if dtype == torch.float64 else torch.int32
        assert torch.equal(out.view(bits), expected.view(bits))
        assert torch.equal(buf[:, 1 : 1 + words.shape[1]], words)
        assert (buf[:, 0] == -1).all() and (buf[:, -2:] == -1).all()


def test_fused_max_pool_counts_nan_and_refuses_what_it_does_not_cover():
    from tcomplex.bits import max_pool_packed

    x = torch.randn(2, 3, 6, 6)
    out, words = torch.empty(2, 3, 3, 3), torch.zeros(2, 2, dtype=torch.int64)  # 3 * 9 windows of 4 gates
    x[1, 2, 4, 5] = float("nan")
    assert max_pool_packed(x, (2, 2), (2, 2), out, words) == 1  # the caller pools with torch then
    for args in [(x, (3, 3), (2, 2), torch.empty(2, 3, 2, 2), words),  # a window of 9 does not fill bytes
                 (x.transpose(2, 3), (2, 2), (2, 2), out, words),  # not contiguous
                 (x.half(), (2, 2), (2, 2), out.half(), words),  # float16
                 (x, (2, 2), (2, 2), torch.empty(2, 3, 3, 2), words)]:  # out of the wrong shape
        assert max_pool_packed(*args) is None


class _Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.pool_rect = nn.MaxPool2d((1, 2), (1, 1))
        self.pool1d = nn.MaxPool1d(4, 2)
        self.pool_pad = nn.MaxPool2d(2, 2, 1)  # padding: torch's pooling and the indices route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool_rect(self.pool(self.relu(self.conv(x))))
        return torch.cat([self.pool1d(y.flatten(2)).flatten(1), self.pool_pad(y).flatten(1)], 1)


def _record_in_batches(model, x, **kwargs):
    with GateRecorder(model, **kwargs) as rec:
        out = torch.cat([model(b) for b in x.split(3)])
    return out, rec.recording()


def test_recorder_pools_with_its_kernel_from_the_second_batch_and_changes_nothing(monkeypatch):
    import tcomplex.gating as gating

    torch.manual_seed(30)
    model = _Pools().eval()
    x = torch.randn(11, 1, 12, 12)
    calls = []
    kernel = gating.max_pool_packed
    monkeypatch.setattr(gating, "max_pool_packed", lambda *a, **k: calls.append(a[1]) or kernel(*a, **k))
    with torch.no_grad():
        plain = model(x)
        out, rec = _record_in_batches(model, x)
        monkeypatch.setattr(gating, "FUSED_MAX_POOL", False)
        out_torch, rec_torch = _record_in_batches(model, x)
    # batches 2, 3 and 4: pool, pool_rect and pool1d by the kernel (pool_pad has padding)
    assert sorted(calls) == sorted([(2, 2), (1, 2), (1, 4)] * 3)
    assert torch.equal(out.view(torch.int32), plain.view(torch.int32))
    assert torch.equal(out_torch.view(torch.int32), plain.view(torch.int32))
    assert rec.names == rec_torch.names == ["relu", "pool", "pool_rect", "pool1d", "pool_pad"]
    for name in rec.names:
        assert torch.equal(rec[name], rec_torch[name]), name


def test_recorder_kernel_steps_aside_for_modes_nan_and_autograd(monkeypatch):
    import tcomplex.gating as gating
    from torch.overrides import TorchFunctionMode

    class Spy(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.pools = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.pools += "max_pool" in getattr(func, "__name__", "")
            return func(*args, **(kwargs or {}))

    torch.manual_seed(31)
    model = _Pools().eval()
    x = torch.randn(9, 1, 12, 12)
    calls = []
    kernel = gating.max_pool_packed
    monkeypatch.setattr(gating, "max_pool_packed", lambda *a, **k: calls.append(a) or kernel(*a, **k))
    with torch.no_grad():
        reference, rec_ref = _record_in_batches(model, x)
    assert calls  # the reference batches after the first were pooled by the kernel
    calls.clear()
    # a user's torch-function mode is owed every pooling call: torch pools
    with torch.no_grad(), Spy() as spy:
        out, rec = _record_in_batches(model, x)
    assert not calls and spy.pools == 3 * 4  # four pools, three batches
    assert torch.equal(out, reference) and all(torch.equal(rec[k], rec_ref[k]) for k in rec.names)
    # NaN in a later batch with check_nan=False: the kernel counts it and torch pools that batch
    x_nan = x.clone()
    x_nan[7, 0, 3:6, 3:6] = float("nan")
    with torch.no_grad():
        plain = model(x_nan)
        out, rec = _record_in_batches(model, x_nan, check_nan=False)
        monkeypatch.setattr(gating, "FUSED_MAX_POOL", False)
        _, rec_torch = _record_in_batches(model, x_nan, check_nan=False)
        monkeypatch.setattr(gating, "FUSED_MAX_POOL", True)
    assert torch.equal(out.isnan(), plain.isnan()) and torch.equal(out.nan_to_num(), plain.nan_to_num())
    assert all(torch.equal(rec[k], rec_torch[k]) for k in rec.names)
    # autograd: torch pools, gradients as without the recorder
    calls.clear()
    xg = x.clone().requires_grad_()
    with GateRecorder(model):
        for b in xg.split(3):
            model(b).sum().backward()
    assert not calls
    grad = xg.grad.clone()
    xg.grad = None
    for b in xg.split(3):
        model(b).sum().backward()
    assert torch.equal(grad, xg.grad)
