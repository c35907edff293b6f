"""Benchmark the cost of the complexity loss (Section 4.3, ``tcomplex.ebm``).

Training with ``L = L_task + lambda * L_complexity`` does, per batch, more than
plain training: the penalised ReLUs become Swish gates that keep their soft
gates, the energy model of every penalised layer is fitted to the batch (Langevin
sampling + one SGD step, :meth:`ComplexityPenalty.step_energy_model`), and the
energies of the batch's gates join the task loss (:meth:`ComplexityPenalty.loss`).

For ``resmlp10`` and ``resnet20`` on MNIST (batch 128, the last four gating
layers penalised, the defaults of ``tcomplex.ebm``), this script measures in ONE
process, contenders interleaved (order reversed every other repeat), the median
time of one training step:

* ``plain``: forward, cross-entropy, backward, SGD step;
* ``authors``: the same with the complexity loss, energy nets fitted with the
  authors' settings (``fit="authors"``: SGD, 5 Langevin steps from the data);
* ``learned``: the same with the default fit that learns p(sigma_l)
  (``fit="learned"``: Adam, 1 Langevin step from prior samples, energy regulariser).

An epoch time is extrapolated from the per-step medians (469 steps of 128 on the
60000 MNIST training images).  Target: each complexity variant ≤ 2× plain (PASS/FAIL).

With ``--breakdown`` (automatic on a FAIL) it also reports the parts of an
``authors`` complexity step (forward with Swish gates, EBM fit, energy of the batch,
backward + step) and times the EBM fit alone for 0, 1 and 5 Langevin steps, for
and the MLP energy net instead of the six-layer 1x1 ConvNet of wide layers
(written as the Linear + BatchNorm1d layers it amounts to), so the cost of each
design choice is visible.

Usage::

    python benchmarks/bench_complexity_loss.py --threads 1            # ~2-3 min
    python benchmarks/bench_complexity_loss.py --threads 1 --quick    # ~1 min
    python benchmarks/bench_complexity_loss.py --breakdown

On a shared machine use ``--threads 1``: two torch threads competing with other
processes for two cores slowed every step up to 20-fold in our runs.  The
machine is noisy: only ratios measured inside one run mean much.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tcomplex.ebm import MLP_WIDTHS, ComplexityPenalty
from tcomplex.experiments import data as data_mod
from tcomplex.experiments import models as models_mod

from _machine import cpu_model, loadavg  # benchmarks/ is on sys.path when a script runs

RATIO_TARGET = 2.0
BATCH = 128
MNIST_TRAIN = 60000
LAMBDA = 1e-3
MODELS = ("resmlp10", "resnet20")
FITS_TIMED = ("authors", "learned")  # energy-model fits of tcomplex.ebm timed against plain training
MODEL_KWARGS: dict[str, dict[str, Any]] = {"resmlp10": {"init": "torch_default"}, "resnet20": {}}




def build(name: str, seed: int = 0) -> nn.Module:
    """A registry model for 1x28x28 inputs, seeded."""
    torch.manual_seed(seed)
    return models_mod.build_model(name, in_channels=1, input_size=28, num_classes=10, **MODEL_KWARGS[name])


class Trainer:
    """One model, its optimiser and (optionally) its complexity penalty; ``step`` trains one batch."""

    def __init__(self, name: str, x0: torch.Tensor, penalty_options: dict[str, Any] | None):
        self.model = build(name)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.penalty = None
        if penalty_options is not None:
            self.penalty = ComplexityPenalty.for_model(self.model, x0, lam=LAMBDA, **penalty_options)
        self.model.train()

    def step(self, x: torch.Tensor, y: torch.Tensor, parts: dict[str, list[float]] | None = None) -> None:
        t0 = time.perf_counter()
        loss = F.cross_entropy(self.model(x), y)
        t1 = time.perf_counter()
        if self.penalty is not None:
            self.penalty.step_energy_model()
            t2 = time.perf_counter()
            loss = loss + self.penalty.loss()
        else:
            t2 = t1
        t3 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        t4 = time.perf_counter()
        if parts is not None:
            for key, value in (("forward", t1 - t0), ("EBM fit", t2 - t1), ("energy of batch", t3 - t2),
                               ("backward + step", t4 - t3)):
                parts.setdefault(key, []).append(value)


def batches(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: n * BATCH]
    return [(x[idx[i * BATCH:(i + 1) * BATCH]], y[idx[i * BATCH:(i + 1) * BATCH]]) for i in range(n)]


def interleaved(contenders: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each contender's call over ``repeats`` rounds, order reversed every other round."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    order = list(contenders)
    for r in range(repeats):
        for k in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            contenders[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_steps(trainer: Trainer, data: list[tuple[torch.Tensor, torch.Tensor]],
              parts: dict[str, list[float]] | None = None) -> Callable[[], None]:
    """A closure that trains ``trainer`` on every batch of ``data`` (recording step parts into ``parts``)."""
    def go() -> None:
        for x, y in data:
            trainer.step(x, y, parts)
    return go


def breakdown(name: str, trainer: Trainer, parts: dict[str, list[float]], plain_parts: dict[str, list[float]],
              x: torch.Tensor, repeats: int) -> list[str]:
    """Where a complexity step's time went (parts timed during the main measurement), and what the
    number of Langevin steps and the energy-net width cost in the EBM fit alone."""
    x0 = x[:BATCH]
    pen = trainer.penalty
    lines = [f"**{name}**: penalised layers {pen.layer_names}, widths {[e.d for e in pen.ebms]}, energy nets "
             f"{['ConvNet 1x1' if e.f.wide else 'MLP ' + str(MLP_WIDTHS) for e in pen.ebms]}"]
    per_step = {k: statistics.median(v) * 1e3 for k, v in parts.items()}
    plain_step = {k: statistics.median(v) * 1e3 for k, v in plain_parts.items()}
    total = sum(per_step.values())
    lines.append("  - complexity step, median ms per part: " + ", ".join(
        f"{k} {v:.1f} ({100 * v / total:.0f}%)" for k, v in per_step.items()))
    lines.append(f"  - plain step, median ms: forward {plain_step['forward']:.1f}, backward + step "
                 f"{plain_step['backward + step']:.1f}")
    variants: dict[str, dict[str, Any]] = {
        "default (5 Langevin steps)": {"fit": "authors"},
        "1 Langevin step": {"fit": "authors", "langevin_steps": 1},
        "0 Langevin steps": {"fit": "authors", "langevin_steps": 0},
        "learned fit": {"fit": "learned"},
    }
    if any(e.f.wide for e in pen.ebms):
        variants[f"5 steps, MLP {MLP_WIDTHS} energy net"] = {"fit": "authors", "energy_widths": list(MLP_WIDTHS)}
    fits: dict[str, Callable[[], None]] = {}
    for label, options in variants.items():
        tr = Trainer(name, x0, options)
        with torch.no_grad():
            tr.model(x0)
        tr.penalty.step_energy_model()  # warm-up
        fits[label] = tr.penalty.step_energy_model
    med = interleaved(fits, repeats)
    lines.append("  - EBM fit alone (gates of one batch), median ms: " + ", ".join(
        f"{k} {v * 1e3:.1f}" for k, v in med.items()))
    d5, d0 = med["default (5 Langevin steps)"], med["0 Langevin steps"]
    lines.append(f"  - one Langevin step (all four layers) costs {(d5 - d0) / 5 * 1e3:.1f} ms; the rest of the fit "
                 f"(data and negatives through f, backward, SGD step) {d0 * 1e3:.1f} ms")
    plain_total = sum(plain_step.values())
    for label in ("1 Langevin step",):
        if label in med:
            projected = total - (d5 - med[label]) * 1e3
            lines.append(f"  - projected complexity step with '{label}': {projected:.1f} ms, "
                         f"{projected / plain_total:.2f}× the plain step (parts above: {total / plain_total:.2f}×)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--steps", type=int, default=None, help="training steps per timed call (default 10; 5 quick)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; 3 quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--breakdown", action="store_true", help="where a complexity step's time goes")
    ap.add_argument("--models", type=str, default=",".join(MODELS))
    ap.add_argument("--data-root", type=str, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.quick else 10)
    repeats = args.repeats or (3 if args.quick else 5)
    t_start = time.perf_counter()
    x, y = data_mod.load_tensors("mnist", "train", data_root=args.data_root)
    models = [m for m in args.models.split(",") if m]

    results = []
    details = []
    for name in models:
        data = batches(x, y, steps, seed=0)
        x0 = x[:BATCH]
        plain = Trainer(name, x0, None)
        variants = {fit: Trainer(name, x0, {"fit": fit}) for fit in FITS_TIMED}
        run_steps(plain, data[:2])()  # warm-up: allocator, thread pools
        for tr in variants.values():
            run_steps(tr, data[:2])()
        parts: dict[str, dict[str, list[float]]] = {fit: {} for fit in FITS_TIMED}
        plain_parts: dict[str, list[float]] = {}
        med = interleaved({"plain": run_steps(plain, data, plain_parts),
                           **{fit: run_steps(tr, data, parts[fit]) for fit, tr in variants.items()}}, repeats)
        results.append((name, med["plain"] / steps, {fit: med[fit] / steps for fit in FITS_TIMED}))
        details.append((name, variants[FITS_TIMED[0]], parts[FITS_TIMED[0]], plain_parts))

    steps_per_epoch = -(-MNIST_TRAIN // BATCH)
    print("## complexity-loss benchmark\n")
    print(f"- CPU: {cpu_model()}; cores (os.cpu_count): {os.cpu_count()}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; python {platform.python_version()}; load average at start "
          f"{loadavg()}")
    print(f"- MNIST, batch {BATCH}, λ = {LAMBDA:g}, the last four gating layers penalised, β = 100; energy-model "
          f"fits {', '.join(FITS_TIMED)} (tcomplex.ebm.FITS); median of {repeats} interleaved repeats of {steps} "
          "training steps each\n")
    head = " | ".join(f"{f} ms/step | {f} s/epoch | {f} ratio" for f in FITS_TIMED)
    print(f"| model | plain ms/step | plain s/epoch | {head} | ≤ {RATIO_TARGET:g}× |")
    print("|---|---:|---:|" + "---:|---:|---:|" * len(FITS_TIMED) + ":---:|")
    failed = False
    for name, p, cs in results:
        cells, oks = [], []
        for f in FITS_TIMED:
            ratio = cs[f] / p
            oks.append(ratio <= RATIO_TARGET)
            cells.append(f"{cs[f] * 1e3:.1f} | {cs[f] * steps_per_epoch:.1f} | {ratio:.2f}")
        failed |= not all(oks)
        verdicts = ", ".join(f"{f} {'PASS' if ok else 'FAIL'}" for f, ok in zip(FITS_TIMED, oks))
        print(f"| {name} | {p * 1e3:.1f} | {p * steps_per_epoch:.1f} | {' | '.join(cells)} | {verdicts} |")
    print(f"\n- epoch = {steps_per_epoch} steps of {BATCH} (60000 images); extrapolated from the per-step medians "
          "(data already in memory, no evaluation).")
    if args.breakdown or failed:
        print("\n### where the time goes\n")
        for name, trainer, parts, plain_parts in details:
            for line in breakdown(name, trainer, parts, plain_parts, x, repeats * steps):
                print(line if line.startswith("  ") else f"- {line}")
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
