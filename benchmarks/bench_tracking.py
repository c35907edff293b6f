"""Overhead of complexity tracking during training (the substrate issue's target: <= 10%).

For MLP-MNIST and LeNet-5 on MNIST this trains the same configuration twice,
into fresh temporary run folders:

* ``plain``: no tracked epoch at all (``track_epochs=[]``);
* ``tracked``: complexity measured at epoch 0 and every 5 epochs (the default
  metrics of ``TrainConfig``: H, I(X;Sigma;Y), C, rate histograms for the whole
  network and each layer, plus train/test loss and accuracy), 2000 analysis images.

The overhead is (wall time tracked - wall time plain) / wall time plain over the
whole run.  The dataset is loaded once before any timing (both runs then read it from
the in-process cache).  The two runs of a model follow each other in one process; the
order is reversed on every other repeat (default 2 repeats) and medians are used.
Prints a markdown table with PASS/FAIL against the 10% target, both from the two
whole runs and from a direct timing of what one tracked epoch adds (steadier).

Usage::

    TCOMPLEX_DATA=../shared/data python benchmarks/bench_tracking.py --threads 1
    python benchmarks/bench_tracking.py --epochs 5 --train-subset 20000   # shorter
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from tcomplex.experiments import train as train_mod
from tcomplex.experiments.measure import measure_complexity
from tcomplex.experiments.train import TrainConfig, train

from _machine import cpu_model  # benchmarks/ is on sys.path when a script runs

TARGET = 0.10


def timed_run(cfg: TrainConfig, data_root: str | None) -> float:
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        train(cfg, root, data_root=data_root, progress=False)
        return time.perf_counter() - t0


def tracking_seconds(cfg: TrainConfig, data_root: str | None, repeats: int = 3) -> float:
    """Median wall time of what a tracked epoch adds, timed directly: the complexity
    metrics of the analysis set plus the train/test evaluation (the steps of ``train``'s
    tracking, on a freshly initialised model of the same architecture)."""
    d = train_mod.prepare_data(cfg, data_root)
    torch.manual_seed(cfg.seed)
    model = train_mod.build_model_for(cfg, d.shape, d.num_classes)
    cpu = torch.device("cpu")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        measure_complexity(model, d.analysis_x, d.analysis_y, kinds=cfg.kinds)
        train_batches, test_batches = train_mod.eval_batches(cfg, d)
        train_mod.evaluate(cfg, model, train_batches, cpu)
        train_mod.evaluate(cfg, model, test_batches, cpu)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp_mnist,lenet5")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--train-subset", type=int, default=None, help="training images (default: all 60000)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_model()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.epochs} epochs, tracking every {args.every}, training images: {args.train_subset or 60000}\n")
    from tcomplex.experiments import data as data_mod

    for split in ("train", "test"):  # warm the in-process dataset cache outside the timings
        data_mod.load_tensors("mnist", split, data_root=args.data_root)
    print("| model | plain s | tracked s | tracked epochs | overhead | target ≤ 10% "
          "| s per tracked epoch (direct) | overhead from direct timing | target ≤ 10% |")
    print("|---|---:|---:|---:|---:|:---:|---:|---:|:---:|")
    for model in args.models.split(","):
        common = dict(model=model, dataset="mnist", epochs=args.epochs, train_subset=args.train_subset)
        plain_cfg = TrainConfig(**common, track_epochs=[])
        tracked_cfg = TrainConfig(**common, track_every=args.every, track_log=False)
        plain, tracked = [], []
        for r in range(args.repeats):
            order = [("plain", plain_cfg), ("tracked", tracked_cfg)]
            for label, cfg in (order if r % 2 == 0 else order[::-1]):
                (plain if label == "plain" else tracked).append(timed_run(cfg, args.data_root))
        p, t = statistics.median(plain), statistics.median(tracked)
        n_tracked = len(range(0, args.epochs + 1, args.every))
        overhead = (t - p) / p
        per_track = tracking_seconds(tracked_cfg, args.data_root)
        direct = n_tracked * per_track / p
        print(f"| {model} | {p:.1f} | {t:.1f} | {n_tracked} | {overhead:+.1%} | "
              f"{'PASS' if overhead <= TARGET else 'FAIL'} | {per_track:.2f} | {direct:+.1%} | "
              f"{'PASS' if direct <= TARGET else 'FAIL'} |")
    print("\nThe direct column times what a tracked epoch adds (complexity metrics of the 2000 analysis "
          "images and the train/test evaluation, median of 3) and divides the run's total of it by the "
          "plain run's time: steadier than the difference of two whole runs on a noisy machine.")


if __name__ == "__main__":
    main()
