"""Benchmark ``tcomplex.gating.record_gates`` against a plain forward pass.

2000 MNIST training images (the class-balanced analysis set of Appendix I:
200 per class, seed 0) go through three networks in eval mode, batch size 256:

* ``mlp_mnist`` and ``lenet5`` from ``tcomplex.experiments.models.build_model``
  on the 1x28x28 images;
* torchvision's ``resnet18(num_classes=10)`` on 3x32x32 versions of the images
  (padded to 32 with the normalised value of a black pixel, the grey channel
  repeated three times).

For each network it times ``record_gates(model, x, batch_size=256)`` against
the same batches through ``model`` under ``torch.no_grad()``, and record_gates
with ``tcomplex.gating.FUSED_MAX_POOL = False`` (torch pools, as in the plain
forward: the recording's own overhead), in one process, with all contenders
interleaved (every repeat visits every model; the order of the three contenders
rotates from repeat to repeat) and reports the medians and paired ratios.

The recording's memory (``Recording.nbytes``: bits, 64 gates per word, every layer
word-aligned) is printed next to n * d / 8 bytes (target: <= 1.1x) and the bool
states' n * d bytes (the storage before packing).

``--resnet224 N`` instead runs N seeded random images at 224x224 through
torchvision's ``resnet18()`` (eval, batches of ``--batch-size``): time of
``record_gates(kinds=("relu",))`` and of one plain forward pass over the same
batches, then ``kde_entropy(rec.packed())`` (H of the whole network, Eq. 2), with
the recording's bytes and the process's peak RSS; for N < 2000 a second table
extrapolates to n = 2000 (record and forward linear in n, H quadratic, the
recording linear).

Usage::

    TCOMPLEX_DATA=/work/shared/data python benchmarks/bench_record_gates.py
    python benchmarks/bench_record_gates.py --data-root /work/shared/data --quick
    python benchmarks/bench_record_gates.py --resnet224 2000 --batch-size 50
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from _machine import cpu_model, loadavg  # benchmarks/ is on sys.path when a script runs

RATIO_TARGET = 1.3
MIB = 2**20
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081




def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """[n, 1, 28, 28] normalised MNIST -> [n, 3, 32, 32]: pad with black, repeat the channel."""
    black = -MNIST_MEAN / MNIST_STD
    return F.pad(x, (2, 2, 2, 2), value=black).repeat(1, 3, 1, 1).contiguous()


def build_models(seed: int) -> dict[str, nn.Module]:
    import torchvision

    from tcomplex.experiments.models import build_model

    torch.manual_seed(seed)
    models = {
        "mlp_mnist": build_model("mlp_mnist"),
        "lenet5": build_model("lenet5"),
        "resnet18 (torchvision)": torchvision.models.resnet18(num_classes=10),
    }
    for m in models.values():
        m.eval()
    return models


def forward_all(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    with torch.no_grad():
        for b in x.split(batch_size):
            model(b)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# where record_gates' overhead goes
# ---------------------------------------------------------------------------
def resnet224(n: int, batch_size: int, seed: int, target_n: int = 2000) -> None:
    """record_gates + kde_entropy on n random 224x224 images through torchvision's resnet18."""
    import torchvision

    from tcomplex.estimators import kde_entropy
    from tcomplex.gating import record_gates

    load_start = loadavg()
    torch.manual_seed(seed)
    model = torchvision.models.resnet18().eval()

    def batches():
        g = torch.Generator().manual_seed(seed)
        for i in range(0, n, batch_size):
            yield torch.randn(min(batch_size, n - i), 3, 224, 224, generator=g)

    with torch.no_grad():  # warm-up, and the numba kernel's compilation
        model(torch.randn(2, 3, 224, 224))
    kde_entropy(torch.rand(4, 70) < 0.5, alpha=0.04, block=2, warn=False)  # both kernels (self and cross blocks)
    t0 = time.perf_counter()
    with torch.no_grad():
        for xb in batches():
            model(xb)
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = record_gates(model, batches(), kinds=("relu",))
    t_rec = time.perf_counter() - t0
    d = sum(i.width for i in rec.info.values())
    t0 = time.perf_counter()
    h = kde_entropy(rec.packed(), alpha=rec.default_alpha(), warn=False)
    t_h = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gib = 2**30
    print("## ResNet-18 at 224x224: gates recorded and H estimated\n")
    print(f"- CPU: {cpu_model()}; cores (os.cpu_count): {os.cpu_count()}; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; load average at start {load_start}, at end {loadavg()}")
    print(f"- torchvision resnet18() (random init, eval), {n} seeded N(0, 1) images 3x224x224 in batches of "
          f"{batch_size}, generated batch by batch; kinds=('relu',): {len(rec)} gating layers, d = {d} gates "
          "per image\n")
    print("| n | forward s | record_gates s | record / forward | H (kde_entropy on rec.packed()) s | H bits "
          "| recording MiB | n·d/8 MiB | recording / (n·d/8) | bool states would be MiB | peak RSS of the process GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n} | {t_fwd:.1f} | {t_rec:.1f} | {t_rec / t_fwd:.2f} | {t_h:.1f} | {float(h):.3f} "
          f"| {rec.nbytes / MIB:.1f} | {n * d / 8 / MIB:.1f} | {rec.nbytes / (n * d / 8):.3f} | {n * d / MIB:.0f} "
          f"| {peak / gib:.2f} |")
    if n >= target_n:
        return
    scale = target_n / n
    rec_target = rec.nbytes * scale
    print(f"\n### extrapolated to n = {target_n} (not measured)\n")
    print("| n | record_gates s | H s | recording MiB | peak RSS GiB (measured peak + the extra recording bytes "
          "+ one transient copy of them when batches are concatenated) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {target_n} | {t_rec * scale:.0f} | {t_h * scale ** 2:.0f} | {rec_target / MIB:.0f} "
          f"| {(peak + 2 * (rec_target - rec.nbytes)) / gib:.2f} |")
    print("\n- record_gates and the forward scale linearly in n; H's distances quadratically (n^2 / 2 pairs). "
          "The recording grows by n·d/8 bytes; everything else in the peak (model, activations of one batch) "
          "does not grow with n.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="data root (default: $TCOMPLEX_DATA)")
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000; 500 with --quick)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 9; 3 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="500 images, 3 repeats")
    ap.add_argument("--resnet224", type=int, default=0, metavar="N",
                    help="only the ResNet-18 224x224 measurement on N images (see above)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resnet224:
        resnet224(args.resnet224, args.batch_size, args.seed)
        return
    n = 500 if args.quick and args.n == 2000 else args.n
    repeats = args.repeats or (3 if args.quick else 9)
    t_start = time.perf_counter()
    load_start = loadavg()

    from tcomplex import gating
    from tcomplex.experiments.data import analysis_set, resolve_data_root
    from tcomplex.gating import record_gates

    root = resolve_data_root(args.data_root)
    x, _ = analysis_set("mnist", per_class=200, seed=0, data_root=root)
    x = x[:n].contiguous()
    inputs = {"mlp_mnist": x, "lenet5": x, "resnet18 (torchvision)": to_rgb32(x)}
    models = build_models(args.seed)

    info: dict[str, tuple[int, int, str]] = {}
    memory: dict[str, int] = {}
    for name, m in models.items():  # warm-up, and the gate layout
        forward_all(m, inputs[name], args.batch_size)
        rec = record_gates(m, inputs[name], batch_size=args.batch_size)
        memory[name] = rec.nbytes
        kinds = {}
        for gi in rec.info.values():
            kinds[gi.kind] = kinds.get(gi.kind, 0) + 1
        info[name] = (len(rec), sum(gi.width for gi in rec.info.values()),
                      ", ".join(f"{v} {k}" for k, v in kinds.items()))
        del rec

    # a measurement of a fast model repeats the whole pass `inner` times (>= ~0.3 s),
    # and is reported per pass, so that timer and scheduler noise stay small
    inner: dict[str, int] = {}
    for name, m in models.items():
        t1 = min(timed(lambda: forward_all(m, inputs[name], args.batch_size)) for _ in range(2))
        inner[name] = max(1, min(20, round(0.3 / max(t1, 1e-6))))

    def forward_k(m, xb, k):
        for _ in range(k):
            forward_all(m, xb, args.batch_size)

    def record_k(m, xb, k, fused=True):
        gating.FUSED_MAX_POOL = fused
        try:
            for _ in range(k):
                record_gates(m, xb, batch_size=args.batch_size)
        finally:
            gating.FUSED_MAX_POOL = True

    t_fwd = {k: [] for k in models}
    t_rec = {k: [] for k in models}
    t_rec_torch = {k: [] for k in models}  # the recorders' max-pool kernel off: torch pools
    for r in range(repeats):
        for name, m in models.items():
            xb, k = inputs[name], inner[name]
            runs = [
                lambda: t_fwd[name].append(timed(lambda: forward_k(m, xb, k)) / k),
                lambda: t_rec[name].append(timed(lambda: record_k(m, xb, k)) / k),
                lambda: t_rec_torch[name].append(timed(lambda: record_k(m, xb, k, fused=False)) / k),
            ]
            for fn in runs[r % 3:] + runs[: r % 3]:  # the order rotates with the repeat
                fn()

    print("## record_gates benchmark\n")
    print(f"- CPU: {cpu_model()}")
    print(f"- cores (os.cpu_count): {os.cpu_count()}")
    print(f"- torch {torch.__version__}, torch threads: {torch.get_num_threads()}")
    print(f"- python {platform.python_version()}, load average at start: {load_start}")
    print(f"- {n} MNIST training images (class-balanced, seed 0) from {root}; batch size {args.batch_size}; "
          "eval mode")
    cores = os.cpu_count() or 1
    try:
        busy = float(load_start.split()[0]) > cores
    except ValueError:
        busy = False
    if busy and torch.get_num_threads() > 1:
        print(f"- WARNING: load average {load_start.split()[0]} > {cores} cores: other processes compete for the "
              "CPU and multi-threaded (OpenMP) timings become erratic; --threads 1 gives steadier ratios")
    print()
    print(f"| model | gating layers | total gates per sample | forward s | record_gates s | ratio of medians "
          f"| paired ratio: median [min, max] | ≤ {RATIO_TARGET}× (paired median) "
          "| record_gates, torch's max-pool s | its paired ratio: median [min, max] |")
    print("|---|---|---:|---:|---:|---:|---:|:---:|---:|---:|")
    for name in models:
        f_s, r_s = statistics.median(t_fwd[name]), statistics.median(t_rec[name])
        paired = [r / f for r, f in zip(t_rec[name], t_fwd[name])]
        paired_torch = [r / f for r, f in zip(t_rec_torch[name], t_fwd[name])]
        ratio = statistics.median(paired)
        ok = ratio <= RATIO_TARGET
        layers, gates, kinds = info[name]
        print(f"| {name} | {layers} ({kinds}) | {gates} | {f_s:.3f} | {r_s:.3f} | {r_s / f_s:.2f} | "
              f"{ratio:.2f} [{min(paired):.2f}, {max(paired):.2f}] | {'PASS' if ok else 'FAIL'} | "
              f"{statistics.median(t_rec_torch[name]):.3f} | {statistics.median(paired_torch):.2f} "
              f"[{min(paired_torch):.2f}, {max(paired_torch):.2f}] |")
    print()
    print("- record_gates pools a stock max-pool whose window has 1, 2, 4 or 8 elements (LeNet-5's 2x2) from the "
          "second batch on with its own one-pass kernel (`tcomplex.bits.max_pool_packed`: the module's exact output "
          "and the winners' bits); the last two columns run record_gates with `tcomplex.gating.FUSED_MAX_POOL = "
          "False`, where torch pools as in the plain forward, so they show the recording's own overhead. "
          "torchvision's resnet18 pools 3x3 with padding: torch pools it either way.")
    print(f"- forward: the same batches through the model under `torch.no_grad()`; record_gates: "
          f"`record_gates(model, x, batch_size={args.batch_size})` (returns the stored Recording).")
    print(f"- median of {repeats} repeats; every repeat runs every model, the three contenders' order rotates "
          "from repeat to repeat; one process. Seconds are per pass over all images; a repeat of a fast model "
          "times several passes (" + ", ".join(f"{k}: {v}" for k, v in inner.items()) + ") and divides.")
    print("- paired ratio: record_gates / forward of the same repeat (they run back to back, so a slow "
          "stretch of a shared machine slows both); the target is read on their median, and [min, max] "
          "shows how far single repeats scatter.")
    print("- gates per sample: sum of the recorded widths; a max-pool layer counts d' x window "
          "(its one-hot width).")
    print("- resnet18 input: MNIST padded to 32x32 with the normalised black value, channel repeated to 3.")
    print("\n### memory of the recording\n")
    print("| model | n | d | recording bytes (`rec.nbytes`) | n·d/8 | recording / (n·d/8) | ≤ 1.1× "
          "| bool states n·d (before) |")
    print("|---|---:|---:|---:|---:|---:|:---:|---:|")
    for name in models:
        gates = info[name][1]
        ideal = n * gates / 8
        ratio = memory[name] / ideal
        print(f"| {name} | {n} | {gates} | {memory[name]} | {ideal:.0f} | {ratio:.3f} | "
              f"{'PASS' if ratio <= 1.1 else 'FAIL'} | {n * gates} |")
    print("\n- every layer starts on a 64-bit word boundary (so that per-layer and concatenated distances come "
          "from the same storage): a layer of d_l gates takes ceil(d_l / 64) words per sample.")

    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; load average at end: {loadavg()})")


if __name__ == "__main__":
    main()
