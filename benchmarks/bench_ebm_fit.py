"""Does the energy model learn p(sigma_l)?  Exact check on enumerable layers (Appendix J, Eq. 30-38).

For gating states of d <= 16 gates, log Z (Eq. 30) is summed exactly over all
2^d binary states, so the energy model's entropy estimate -E[log p_theta(sigma)]
(Eq. 38) can be compared with the exact plug-in entropy H of the same states and
with what the prior alone gives, sum_i H(sigma^i) (= C_l, Eq. 6).  ``closed`` =
(prior - model) / (prior - plug-in): the share of the gap between the independent
prior and the truth that the energy model closes (1: all of it, 0: none, < 0:
worse than the prior).  The states are fitted as training would fit them
(:func:`tcomplex.ebm.fit_energy_model`: batches of 128, one
:meth:`EnergyFitter.step` each), with every fit of :data:`tcomplex.ebm.FITS` and
with candidate settings, so the default can be chosen from measurements.

Data (each: 4000 states for fitting, 1000 held out; the table shows the fit on
the fitted states and, in brackets, the cross-entropy on held-out states):

* ``blocks``: 16 gates in two blocks of 8 identical bits (H = 2 bits, prior 16 bits);
* ``prototypes``: 8 random 16-bit prototypes, each bit flipped with probability 0.05;
* ``ising``: a 16-spin chain with coupling 1.0, sampled exactly by enumeration;
* ``mnist layer``: 16 gates (every 16th of the 256) of layer 2 of ``mlp_mnist``
  trained for 2 epochs on 4000 MNIST images (hard gates of training and test images).

Also reports the per-gate pseudo-log-likelihood (:func:`tcomplex.ebm.pseudo_log_likelihood`)
of held-out states, the score used where enumeration is impossible.  With
``--wide`` a second table does that on real layers too wide to enumerate: the
last four gating layers (784 gates each) of ``resmlp10`` trained plainly for 2
epochs on 4000 MNIST images, fitted on the hard gates of those images and scored
on 1000 test images (64 random gates per layer).

Usage::

    python benchmarks/bench_ebm_fit.py --threads 1          # ~3-6 min
    python benchmarks/bench_ebm_fit.py --threads 1 --quick  # fewer fits
    python benchmarks/bench_ebm_fit.py --threads 1 --quick --wide --no-mnist --seeds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import torch

from tcomplex.ebm import (
    FITS,
    FitSettings,
    LayerEBM,
    exact_fit,
    fit_energy_model,
    prior_pseudo_log_likelihood,
    pseudo_log_likelihood,
    resolve_fit,
)

from _machine import cpu_model, loadavg  # benchmarks/ is on sys.path when a script runs

D = 16
N_FIT, N_HELD = 4000, 1000


def blocks(n: int, g: torch.Generator) -> torch.Tensor:
    z = (torch.rand(n, 2, generator=g) < 0.5).float()
    return torch.cat([z[:, :1].expand(n, 8), z[:, 1:].expand(n, 8)], 1).contiguous()


def prototypes(n: int, g: torch.Generator, k: int = 8, flip: float = 0.05) -> torch.Tensor:
    protos = (torch.rand(k, D, generator=torch.Generator().manual_seed(11)) < 0.5).float()
    which = torch.randint(0, k, (n,), generator=g)
    noise = (torch.rand(n, D, generator=g) < flip).float()
    return (protos[which] + noise) % 2


def ising(n: int, g: torch.Generator, coupling: float = 1.0) -> torch.Tensor:
    from tcomplex.ebm import binary_states

    s = binary_states(D)
    spins = 2 * s - 1
    logp = coupling * (spins[:, 1:] * spins[:, :-1]).sum(1) + 0.3 * spins[:, 0]
    idx = torch.multinomial(torch.softmax(logp, 0), n, replacement=True, generator=g)
    return s[idx]


def _trained(model_name: str, seed: int, data_root: str | None) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``model_name`` after 2 epochs of SGD on N_FIT seeded MNIST training images (eval mode), with
    those images (the fit set) and the test images (held out)."""
    import torch.nn.functional as F

    from tcomplex.experiments import data as data_mod
    from tcomplex.experiments import models as models_mod

    x, y = data_mod.load_tensors("mnist", "train", data_root=data_root)
    xt, _ = data_mod.load_tensors("mnist", "test", data_root=data_root)
    torch.manual_seed(seed)
    kwargs = {"init": "torch_default"} if model_name == "resmlp10" else {}
    model = models_mod.build_model(model_name, in_channels=1, input_size=28, num_classes=10, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:N_FIT]
    for _ in range(2):
        for i in range(0, N_FIT, 128):
            b = idx[i:i + 128]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x, idx, xt


def resmlp_layers(seed: int = 0, data_root: str | None = None,
                  model_name: str = "resmlp10") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Hard gates of the model's last four gating layers: layer -> (training images, test images)."""
    from tcomplex import record_gates

    model, x, idx, xt = _trained(model_name, seed, data_root)
    train = record_gates(model, x[idx], kinds=("relu",))
    test = record_gates(model, xt[:N_HELD], kinds=("relu",))
    return {name: (train[name].float(), test[name].float()) for name in train.names[-4:]}


def wide_table(labels: list[str], iters: int, seeds: int, data_root: str | None, model_name: str) -> None:
    print(f"\n## {model_name}: real layers too wide to enumerate, held-out pseudo-likelihood (nats per gate, "
          "64 gates)\n")
    print(f"- {model_name} trained plainly for 2 epochs on {N_FIT} MNIST images; held out: {N_HELD} test images\n")
    print("| layer (d) | fit | PL prior | PL model | gain | s/fit |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (train, held) in resmlp_layers(data_root=data_root, model_name=model_name).items():
        for label in labels:
            st = settings_for(label)
            pq, pm, secs = [], [], []
            for seed in range(seeds):
                torch.manual_seed(seed)
                ebm = LayerEBM(train.shape[1], widths=st.energy_widths)
                t = time.perf_counter()
                fit_energy_model(ebm, train, st, iters=iters, seed=seed)
                secs.append(time.perf_counter() - t)
                pq.append(prior_pseudo_log_likelihood(ebm.q, held, gates=64))
                pm.append(pseudo_log_likelihood(ebm.energy, held, gates=64))
            q, m = sum(pq) / len(pq), sum(pm) / len(pm)
            print(f"| {name} ({train.shape[1]}) | {label} | {q:.4f} | {m:.4f} | {m - q:+.4f} | "
                  f"{sum(secs) / len(secs):.1f} |", flush=True)


def mnist_layer(seed: int = 0, data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard gates of 16 gates of mlp_mnist's second ReLU layer (training images, test images)."""
    from tcomplex import record_gates

    model, x, idx, xt = _trained("mlp_mnist", seed, data_root)
    layer = record_gates(model, x[:2], kinds=("relu",)).names[1]
    gates = torch.arange(0, 256, 16)
    train = record_gates(model, x[idx], kinds=("relu",))[layer][:, gates].float()
    test = record_gates(model, xt[:N_HELD], kinds=("relu",))[layer][:, gates].float()
    return train, test


CANDIDATES: dict[str, dict[str, Any]] = {
    "authors": {},
    "authors, Adam 1e-3, no clip": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, clip_grad=None),
    "Adam 3e-3, data starts, dtau 0.01": dict(optimizer="adam", lr=3e-3, weight_decay=0.0, clip_grad=None,
                                             langevin_step_size=1e-2),
    "Adam 3e-3, data starts, dtau 0.01, 20 steps": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                       clip_grad=None, langevin_step_size=1e-2, langevin_steps=20),
    "Adam 3e-3, prior starts, dtau 0.001": dict(optimizer="adam", lr=3e-3, weight_decay=0.0, clip_grad=None,
                                               negatives="prior"),
    "Adam 3e-3, prior starts, dtau 0.01": dict(optimizer="adam", lr=3e-3, weight_decay=0.0, clip_grad=None,
                                              langevin_step_size=1e-2, negatives="prior"),
    "Adam 1e-2, prior starts, dtau 0.01": dict(optimizer="adam", lr=1e-2, weight_decay=0.0, clip_grad=None,
                                              langevin_step_size=1e-2, negatives="prior"),
    "Adam 3e-3, prior starts, dtau 0.01, 3 MLE steps": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                           clip_grad=None, langevin_step_size=1e-2,
                                                           negatives="prior", mle_steps=3),
    "Adam 3e-3, prior starts, dtau 0.05": dict(optimizer="adam", lr=3e-3, weight_decay=0.0, clip_grad=None,
                                              langevin_step_size=5e-2, negatives="prior"),
    "Adam 3e-3, prior starts, dtau 0.01, reg 0.8": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                       clip_grad=None, langevin_step_size=1e-2,
                                                       negatives="prior", energy_reg=0.8),
    "Adam 3e-3, prior starts, dtau 0.01, reg 0.24": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                        clip_grad=None, langevin_step_size=1e-2,
                                                        negatives="prior", energy_reg=0.24),
    "Adam 3e-3, prior starts, dtau 0.01, reg 2.4": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                       clip_grad=None, langevin_step_size=1e-2,
                                                       negatives="prior", energy_reg=2.4),
    "Adam 1e-2, prior starts, dtau 0.01, reg 0.8": dict(optimizer="adam", lr=1e-2, weight_decay=0.0,
                                                       clip_grad=None, langevin_step_size=1e-2,
                                                       negatives="prior", energy_reg=0.8),
    "Adam 3e-3, prior starts, dtau 0.01, 1 step, reg 0.8": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                               clip_grad=None, langevin_step_size=1e-2,
                                                               langevin_steps=1, negatives="prior",
                                                               energy_reg=0.8),
    "Adam 3e-3, data starts, dtau 0.01, 20 steps, reg 0.8": dict(optimizer="adam", lr=3e-3, weight_decay=0.0,
                                                                clip_grad=None, langevin_step_size=1e-2,
                                                                langevin_steps=20, energy_reg=0.8),
}


def settings_for(label: str) -> FitSettings:
    if label in FITS:
        return FITS[label]
    return resolve_fit("authors", name=label, **CANDIDATES[label])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="only the named fits")
    ap.add_argument("--iters", type=int, default=300, help="training batches per fit (default 300)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--data-root", type=str, default=None)
    ap.add_argument("--no-mnist", action="store_true")
    ap.add_argument("--wide", action="store_true", help="also the pseudo-likelihood on resmlp10's real layers")
    ap.add_argument("--no-enumerable", action="store_true", help="skip the exact table")
    ap.add_argument("--wide-models", type=str, default="resmlp10", help="models of --wide (e.g. resmlp10,resnet20)")
    ap.add_argument("--only", type=str, default="", help="fits whose label contains one of these ('|'-separated)")
    ap.add_argument("--data", type=str, default="", help="comma-separated data sets (with --only)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, fn in (("blocks", blocks), ("prototypes", prototypes), ("ising", ising)):
        sets[name] = (fn(N_FIT, g), fn(N_HELD, g))
    if not args.no_mnist:
        sets["mnist layer"] = mnist_layer(data_root=args.data_root)
    fits = [f for f in FITS if FITS[f].use_f]  # "prior" fits nothing: its row is the "prior" column
    labels = fits if args.quick else list(dict.fromkeys([*fits, *CANDIDATES]))
    if args.only:
        labels = [x for x in labels if any(o in x for o in args.only.split("|"))]
        sets = {k: v for k, v in sets.items() if not args.data or k in args.data.split(",")}
    print("## does the energy model learn p(σ)? (exact log Z over 2^16 states)\n")
    print(f"- CPU: {cpu_model()}; cores {os.cpu_count()}; torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; python {platform.python_version()}; load average {loadavg()} "
          "(other agents shared the cores)")
    print(f"- {N_FIT} fitted states, {N_HELD} held out; {args.iters} batches of 128 per fit; mean over "
          f"{args.seeds} seeds (min..max of `closed` in brackets); energy net MLP 128-128 (d = {D})\n")
    print("| data | fit | H plug-in [bits] | Σ H(σ^i) prior [bits] | model −E log p_θ [bits] | closed | "
          "held-out: prior / model [bits] | held-out PL prior / model [nats/gate] | s/fit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    if args.no_enumerable:
        sets = {}
    for dname, (train, held) in sets.items():
        for label in labels:
            st = settings_for(label)
            res, held_ce, pls, secs = [], [], [], []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                ebm = LayerEBM(D, widths=st.energy_widths)
                t = time.perf_counter()
                fit_energy_model(ebm, train, st, iters=args.iters, seed=seed)
                secs.append(time.perf_counter() - t)
                res.append(exact_fit(ebm, train))
                h = exact_fit(ebm, held)
                held_ce.append(h["model"])
                pls.append((prior_pseudo_log_likelihood(ebm.q, held, gates=None),
                            pseudo_log_likelihood(ebm.energy, held, gates=None)))
            mean = lambda k: sum(r[k] for r in res) / len(res)  # noqa: E731
            closed = [r["closed"] for r in res]
            # the prior's held-out cross-entropy: the energy model with f = 0
            q_only = LayerEBM(D)
            q_only.q.update(train)
            with torch.no_grad():
                for p in q_only.f.head.parameters():
                    p.zero_()
            prior_held = exact_fit(q_only, held)["model"]
            print(f"| {dname} | {label} | {mean('plugin'):.2f} | {mean('prior'):.2f} | {mean('model'):.2f} | "
                  f"{sum(closed) / len(closed):.2f} ({min(closed):.2f}..{max(closed):.2f}) | "
                  f"{prior_held:.2f} / {sum(held_ce) / len(held_ce):.2f} | "
                  f"{sum(p[0] for p in pls) / len(pls):.3f} / {sum(p[1] for p in pls) / len(pls):.3f} | "
                  f"{sum(secs) / len(secs):.1f} |", flush=True)
    if args.wide:
        for model_name in args.wide_models.split(","):
            wide_table(labels, args.iters, args.seeds, args.data_root, model_name)
    print(f"\n(total wall time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
