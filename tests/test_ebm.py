"""The energy-based complexity loss (Section 4.3, Appendix J)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import tcomplex as tc
from tcomplex.ebm import (
    BernoulliPrior,
    ComplexityPenalty,
    LayerEBM,
    SwishGate,
    langevin,
    relax_relus,
    restore_relus,
)

DATA = Path(os.environ.get("TCOMPLEX_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
needs_mnist = pytest.mark.skipif(not (DATA / "MNIST" / "raw").is_dir(), reason=f"MNIST not found under {DATA}")


def two_blocks(n: int, g: torch.Generator) -> torch.Tensor:
    """16 gates in two blocks of 8 identical bits: strong structure, rates 1/2."""
    z = (torch.rand(n, 2, generator=g) < 0.5).float()
    return torch.cat([z[:, :1].expand(n, 8), z[:, 1:].expand(n, 8)], 1)


def fit(ebm: LayerEBM, data: torch.Tensor, g: torch.Generator, iters: int = 200) -> None:
    opt = torch.optim.Adam(ebm.f.parameters(), lr=1e-3)
    ebm.q.update(data)
    for _ in range(iters):
        s = data[torch.randint(0, len(data), (128,), generator=g)]
        ebm.eval()
        neg = langevin(ebm.energy, s, steps=10, step_size=0.05, generator=g)
        ebm.train()
        loss = ebm.mle_loss(s, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ebm.eval()


def test_trained_ebm_prefers_held_out_data_over_independent_patterns():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    train, held = two_blocks(2000, g), two_blocks(500, g)
    independent = (torch.rand(500, 16, generator=g) < 0.5).float()  # same marginals, no structure
    ebm = LayerEBM(16)
    with torch.no_grad():
        before = (ebm.log_likelihood_unnormalised(held).mean() - ebm.log_likelihood_unnormalised(independent).mean())
    fit(ebm, train, g)
    with torch.no_grad():
        after = ebm.log_likelihood_unnormalised(held).mean() - ebm.log_likelihood_unnormalised(independent).mean()
    assert float(after) > 3.0 > float(before) - 3.0, (float(before), float(after))


def test_langevin_lowers_energy_on_average():
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(3)
    ebm = LayerEBM(16)
    fit(ebm, two_blocks(1000, g), g, iters=60)
    start = torch.rand(500, 16, generator=g)
    with torch.no_grad():
        e0 = ebm.energy(start).mean()
    # the drift alone is gradient descent on E
    drift = langevin(ebm.energy, start, steps=10, step_size=1e-3, noise=False)
    # with noise, the same noise sequence without the drift ends higher: the drift lowers E
    flat = lambda s: 0.0 * s.sum(1)  # noqa: E731  (zero energy: a pure random walk)
    walk = langevin(flat, start, steps=20, step_size=0.01, generator=torch.Generator().manual_seed(7))
    moved = langevin(ebm.energy, start, steps=20, step_size=0.01, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert float(ebm.energy(drift).mean()) < float(e0)
        assert float(ebm.energy(moved).mean()) < float(ebm.energy(walk).mean())


def test_langevin_noise_is_per_sample():
    ebm = LayerEBM(4)
    start = torch.zeros(3, 4)
    out = langevin(lambda s: torch.zeros(len(s)) + 0 * s.sum(1), start, steps=1, step_size=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])
    del ebm


def test_prior_tracks_rates_and_relaxed_log_prob():
    q = BernoulliPrior(3)
    q.update(torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert q.p.tolist() == [1.0, 0.0, 0.5]
    q.update(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert q.p.tolist() == pytest.approx([0.9, 0.0, 0.45])
    lp = q.log_prob(torch.tensor([[1.0, 0.0, 1.0]]))
    assert float(lp) == pytest.approx(torch.log(torch.tensor([0.9, 1.0, 0.45]) + 1e-5).sum().item())


def test_swish_with_large_beta_matches_relu_and_its_gates():
    x = torch.randn(1000) * 3
    x = x[x.abs() > 1e-2]
    s = SwishGate(beta=1e4)
    s.capture = True
    assert torch.allclose(s(x), torch.relu(x), atol=1e-6)
    assert torch.equal(s.gates[0].round().bool(), x > 0)
    # it is still recorded as a ReLU gating layer
    net = nn.Sequential(nn.Linear(3, 5), SwishGate(100.0))
    assert tc.record_gates(net, torch.randn(7, 3)).names == ["1"]


def test_relax_and_restore():
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2), nn.ReLU())
    originals = relax_relus(net, ["1"])
    assert isinstance(net[1], SwishGate) and type(net[3]) is nn.ReLU
    restore_relus(net, originals)
    assert type(net[1]) is nn.ReLU
    with pytest.raises(ValueError, match="not an nn.ReLU"):
        relax_relus(net, ["0"])


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def test_penalty_bad_input():
    x = torch.randn(8, 6)
    with pytest.raises(ValueError, match="lambda"):
        ComplexityPenalty.for_model(_mlp(), x, lam=-1.0)
    with pytest.raises(ValueError, match="exactly one"):
        ComplexityPenalty.for_model(_mlp(), x, lam=1.0, log10_lam=-2)
    with pytest.raises(ValueError, match="unknown gating layer"):
        ComplexityPenalty.for_model(_mlp(), x, lam=1.0, layers=["0"])  # a Linear does not gate
    net = _mlp()
    p = ComplexityPenalty.for_model(net, x, lam=1.0, layers=[1])
    with pytest.raises(RuntimeError, match="forward"):
        p.loss()
    net[0] = nn.Linear(6, 40)  # the penalised layer's width changes
    net[2] = nn.Linear(40, 16)
    net(x)
    with pytest.raises(ValueError, match="built for 32"):
        p.step_energy_model()


def test_penalty_in_a_plain_training_loop_and_state_round_trip():
    net = _mlp()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    p = ComplexityPenalty.for_model(net, x[:8], log10_lam=-2, layers=[-2, -1])
    assert p.lam == pytest.approx(1e-2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), y)
        p.step_energy_model()
        total = loss + p.loss()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert set(p.diagnostics()) >= {"ebm_loss", "complexity_loss", "prior_rate_mean"}
    net2 = _mlp()
    p2 = ComplexityPenalty.for_model(net2, x[:8], log10_lam=-2, layers=[-2, -1])
    p2.load_state_dict(p.state_dict())
    for a, b in zip(p.ebms.state_dict().values(), p2.ebms.state_dict().values()):
        assert torch.equal(a, b)
    p.remove()
    assert all(type(m) is not SwishGate for m in net.modules())


@needs_mnist
@pytest.mark.slow
def test_penalised_mnist_run_has_lower_complexity_on_penalised_layers(tmp_path):
    from tcomplex.experiments.train import TrainConfig, train

    common = dict(model="mlp_mnist", epochs=2, train_subset=2000, test_subset=1000, analysis_per_class=30,
                  track_every=1, track_log=False, rates=False, seed=3)
    base = train(TrainConfig(**common), tmp_path, data_root=DATA, progress=False).rows
    pen = train(TrainConfig(**common, complexity_lambda=1e-2), tmp_path, data_root=DATA, progress=False).rows

    def h(df: pd.DataFrame) -> pd.Series:
        last = df[(df.epoch == 2) & (df.metric == "H") & (df.layer.str.startswith("layers"))]
        return last.set_index("layer").value

    hb, hp = h(base), h(pen)
    assert len(hb) == 4
    assert (hp < hb).sum() >= 3 and hp.sum() < hb.sum() - 1.0, (hb.to_dict(), hp.to_dict())


@needs_mnist
@pytest.mark.slow
def test_penalty_state_resumes_with_the_substrate_checkpoints(tmp_path, monkeypatch):
    from tcomplex.experiments import train as train_mod

    cfg = train_mod.TrainConfig(model="mlp_mnist", epochs=2, train_subset=600, test_subset=300,
                                analysis_per_class=10, track_every=1, track_log=False, rates=False,
                                complexity_lambda=1e-3)
    whole = train_mod.train(cfg, tmp_path / "a", data_root=DATA, progress=False).rows
    real = train_mod.epoch_batches

    def interrupted(c, d, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(c, d, epoch)

    monkeypatch.setattr(train_mod, "epoch_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, tmp_path / "b", data_root=DATA, progress=False)
    monkeypatch.setattr(train_mod, "epoch_batches", real)
    resumed = train_mod.train(cfg, tmp_path / "b", data_root=DATA, progress=False)
    assert resumed.resumed_from == 1
    keep = lambda df: df[df.metric != "epoch_seconds"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(keep(whole), keep(resumed.rows))
