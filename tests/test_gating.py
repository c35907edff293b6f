"""Gating-state capture: correctness of the states, naming, scoping of hooks."""

from __future__ import annotations

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
    return all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
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

    with pytest.raises(ValueError, match="no gating layer"):
        tc.record_gates(Functional(), torch.randn(4, 3))
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
