"""What one tracked epoch costs before and after packed states (issue 16).

A tracked epoch measures the complexity metrics of the 2000 analysis images
(``tcomplex.experiments.train.measure_complexity`` with the defaults of
``TrainConfig``: H, I(X;Sigma;Y), C and rate histograms for the whole network and
each ReLU layer).  This script times that call for ``resnet20`` and
``vgg11_revised`` (seeded random init, eval; 2000 class-balanced MNIST training
images padded to 3x32x32 as in ``bench_record_gates.py``) with two source trees:
``--before`` (a checkout of the commit before packed states, e.g. made by
``git archive 8497d91 | tar -x -C /tmp/before``) and this tree ("after"), each in
its own subprocess, interleaved (before, after, after, before, ...), median of the
repeats.  The metrics' values are compared between the trees (they agree to float
rounding; H of every layer bit-identical where the per-layer route is the same).

Usage::

    TCOMPLEX_DATA=/work/shared/data python benchmarks/bench_tracked_epoch.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _machine import cpu_model, loadavg  # benchmarks/ is on sys.path when a script runs

MODELS = ("resnet20", "vgg11_revised")
HERE = os.path.dirname(os.path.abspath(__file__))


def child(model_name: str, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from tcomplex.experiments.data import analysis_set
    from tcomplex.experiments.models import build_model
    from tcomplex.experiments.train import measure_complexity

    x, y = analysis_set("mnist", per_class=200, seed=0)
    x = F.pad(x, (2, 2, 2, 2), value=-0.1307 / 0.3081).repeat(1, 3, 1, 1).contiguous()
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=3, input_size=32)
    measure_complexity(model, x[:64], y[:64])  # warm-up (kernel compilation, thread pools)
    t0 = time.perf_counter()
    rows = measure_complexity(model, x, y)
    seconds = time.perf_counter() - t0
    values = {f"{r['layer']}|{r['metric']}|{r['bin']}": r["value"] for r in rows}
    print(json.dumps({"seconds": seconds, "values": values}))


def run(tree: str, model_name: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": tree + os.pathsep + HERE}
    out = subprocess.run([sys.executable, os.path.join(HERE, "bench_tracked_epoch.py"), "--_child", model_name,
                          "--threads", str(threads)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="source tree of the 'before' commit")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads)
        return
    after = os.path.dirname(HERE)
    load_start = loadavg()
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.repeats):
        for m in MODELS:
            trees = [("before", args.before), ("after", after)]
            for label, tree in trees if r % 2 == 0 else trees[::-1]:
                results.setdefault((m, label), []).append(run(tree, m, args.threads))
    print("## one tracked epoch (measure_complexity, 2000 analysis images) before and after packed states\n")
    print(f"- CPU: {cpu_model()}; cores (os.cpu_count): {os.cpu_count()}; {args.threads} threads; "
          f"load average at start {load_start}, at end {loadavg()}\n")
    print("| model | before s | after s | after / before | largest relative difference of a metric |")
    print("|---|---:|---:|---:|---:|")
    for m in MODELS:
        b = [x["seconds"] for x in results[(m, "before")]]
        a = [x["seconds"] for x in results[(m, "after")]]
        vb, va = results[(m, "before")][0]["values"], results[(m, "after")][0]["values"]
        diff = max(abs(va[k] - vb[k]) / max(abs(vb[k]), 1e-12) for k in vb)
        print(f"| {m} | {statistics.median(b):.2f} | {statistics.median(a):.2f} "
              f"| {statistics.median(a) / statistics.median(b):.2f} | {diff:.1e} |")
    print(f"\n- median of {args.repeats} runs per tree, each a fresh subprocess, trees interleaved.")


if __name__ == "__main__":
    main()
