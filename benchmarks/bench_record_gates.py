"""Benchmark ``tcomplex.gating.record_gates`` against a plain forward pass.

2000 MNIST training images (the class-balanced analysis set of Appendix I:
200 per class, seed 0) go through three networks in eval mode, batch size 256:

* ``mlp_mnist`` and ``lenet5`` from ``tcomplex.experiments.models.build_model``
  on the 1x28x28 images;
* torchvision's ``resnet18(num_classes=10)`` on 3x32x32 versions of the images
  (padded to 32 with the normalised value of a black pixel, the grey channel
  repeated three times).

For each network it times ``record_gates(model, x, batch_size=256)`` against
the same batches through ``model`` under ``torch.no_grad()``, in one process,
with all contenders interleaved (every repeat visits every model; the order of
the two contenders flips every other repeat) and reports the medians.

With ``--profile`` (or automatically for a network that misses the target)
the overhead of ``record_gates`` is split into its parts: the hooks' Python
dispatch, the NaN check, the ReLU states, the max-pool winners (net of the
module's own pooling, which recording replaces) and the final concatenation,
next to the previous implementation's ReLU and max-pool parts.

The recording's memory (``Recording.nbytes``: bits, 64 gates per word, every layer
word-aligned) is printed next to n * d / 8 bytes (target: <= 1.1x) and the bool
states' n * d bytes (the storage before packing).

``--resnet224 N`` instead runs N seeded random images at 224x224 through
torchvision's ``resnet18()`` (eval, batches of ``--batch-size``): time of
``record_gates(kinds=("relu",))`` and of one plain forward pass over the same
batches, then ``kde_entropy(rec.packed())`` (H of the whole network, Eq. 2), with
the recording's bytes and the process's peak RSS; a second table extrapolates to
n = 2000 (record and forward linear in n, H quadratic, the recording linear).

Usage::

    TCOMPLEX_DATA=/work/shared/data python benchmarks/bench_record_gates.py
    python benchmarks/bench_record_gates.py --data-root /work/shared/data --quick
    python benchmarks/bench_record_gates.py --resnet224 200 --batch-size 50
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
def profile_parts(model: nn.Module, x: torch.Tensor, batch_size: int, repeats: int) -> list[tuple[str, float]]:
    """Seconds (median over repeats, for all of x) of each part of record_gates' work.

    The parts are recomputed here on the gating inputs and outputs captured from
    a real forward pass, with the same functions gating.py uses.
    """
    from tcomplex.gating import (
        GATE_KINDS,
        _concat_states,
        _kind_of,
        _offsets_generic,
        _pool_params,
        _pool_with_winners,
        _PoolWinners,
        gating_modules,
        record_gates,
    )

    mods = gating_modules(model, GATE_KINDS)
    captured: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []  # every gating call, every batch
    handles = []
    for name, mod in mods.items():
        def grab(m, args, out, name=name):
            captured.append((name, m, args[0], out))
        handles.append(mod.register_forward_hook(grab))
    forward_all(model, x, batch_size)
    for h in handles:
        h.remove()
    relu_in = [t for _, m, t, _o in captured if _kind_of(m) == "relu"]
    relu_out = [o for _, m, _t, o in captured if _kind_of(m) == "relu"]
    pool_in = [(m, t) for _, m, t, _o in captured if _kind_of(m) == "maxpool"]

    # empty hooks with the same structure: the cost of Python hook dispatch alone
    def noop(*_a, **_k):
        return None

    def forward_with_empty_hooks():
        hs = [model.register_forward_pre_hook(noop), model.register_forward_hook(noop)]
        hs += [m.register_forward_hook(noop) if _kind_of(m) == "relu" else m.register_forward_pre_hook(noop)
               for m in mods.values()]
        try:
            forward_all(model, x, batch_size)
        finally:
            for h in hs:
                h.remove()

    def nan_check():
        for t in relu_out + [t for _, t in pool_in]:
            bool(torch.isnan(t.amax()))

    def relu_states():
        return [o.bool().flatten(1) for o in relu_out]

    def module_pooling():
        for m, t in pool_in:
            m(t)

    def pool_with_winners():
        return [_pool_with_winners(t, m) for m, t in pool_in]

    offs = [(o, w) for _out, _idx, o, w, _shape in pool_with_winners()]

    # the final Recording: one torch.cat per layer over the batches
    per_layer: dict[str, list] = {}
    states = relu_states()
    it_relu, it_pool = iter(states), iter(offs)
    for name, m, _t, _o in captured:
        if _kind_of(m) == "relu":
            per_layer.setdefault(name, []).append(next(it_relu))
        else:
            o, window = next(it_pool)
            per_layer.setdefault(name, []).append(_PoolWinners(o, window))

    def concat():
        for parts in per_layer.values():
            _concat_states(parts)

    # the previous implementation's parts, for comparison
    def relu_states_prehook():
        return [(t > 0).flatten(1) for t in relu_in]

    def pool_twice_generic():
        for m, t in pool_in:
            nd, k, s, p, dil = _pool_params(m)
            fn = F.max_pool2d if nd == 2 else F.max_pool1d
            _, idx = fn(t, k, s, p, dil, ceil_mode=m.ceil_mode, return_indices=True)
            _offsets_generic(idx, tuple(t.shape[-nd:]), k, s, p, dil).flatten(1).to(torch.uint8)

    parts = {
        "forward alone": lambda: forward_all(model, x, batch_size),
        "forward + empty hooks (dispatch)": forward_with_empty_hooks,
        "record_gates (all of it)": lambda: record_gates(model, x, batch_size=batch_size),
        "NaN check isnan(x.amax()) on every gate input": nan_check,
        "ReLU states relu(x).bool().flatten(1), in a forward hook": relu_states,
    }
    if pool_in:
        parts["max-pool: the module's own pooling (part of the forward)"] = module_pooling
        parts["max-pool: pooling + winners in one call (replaces the module's pooling)"] = pool_with_winners
    parts["Recording: torch.cat of the batches per layer"] = concat
    parts["(before) ReLU states (x > 0).flatten(1) in a pre-hook"] = relu_states_prehook
    if pool_in:
        parts["(before) max-pool winners: a second pooling + int64 index arithmetic"] = pool_twice_generic
    times: dict[str, list[float]] = {k: [] for k in parts}
    for fn in parts.values():  # warm-up
        fn()
    inner = max(1, min(20, round(0.3 / max(timed(parts["forward alone"]), 1e-6))))

    def timed_k(fn):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner

    for r in range(repeats):
        for k, fn in (list(parts.items()) if r % 2 == 0 else list(parts.items())[::-1]):
            times[k].append(timed_k(fn))
    out = [(k, statistics.median(v)) for k, v in times.items()]
    # paired differences (same repeat) are steadier than differences of medians
    fwd = times["forward alone"]
    out.append(("__overhead", statistics.median(r - f for r, f in zip(times["record_gates (all of it)"], fwd))))
    out.append(("__dispatch", statistics.median(
        h - f for h, f in zip(times["forward + empty hooks (dispatch)"], fwd))))
    if pool_in:
        pw, mp = (times["max-pool: pooling + winners in one call (replaces the module's pooling)"],
                  times["max-pool: the module's own pooling (part of the forward)"])
        out.append(("__pool_net", statistics.median(a - b for a, b in zip(pw, mp))))
    return out


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
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; 3 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="500 images, 3 repeats")
    ap.add_argument("--profile", action="store_true", help="split the overhead of every model into parts")
    ap.add_argument("--no-auto-profile", action="store_true", help="do not profile models that miss the target")
    ap.add_argument("--resnet224", type=int, default=0, metavar="N",
                    help="only the ResNet-18 224x224 measurement on N images (see above)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resnet224:
        resnet224(args.resnet224, args.batch_size, args.seed)
        return
    n = 500 if args.quick and args.n == 2000 else args.n
    repeats = args.repeats or (3 if args.quick else 5)
    t_start = time.perf_counter()
    load_start = loadavg()

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

    def record_k(m, xb, k):
        for _ in range(k):
            record_gates(m, xb, batch_size=args.batch_size)

    t_fwd = {k: [] for k in models}
    t_rec = {k: [] for k in models}
    for r in range(repeats):
        for name, m in models.items():
            xb, k = inputs[name], inner[name]
            run_fwd = lambda: t_fwd[name].append(timed(lambda: forward_k(m, xb, k)) / k)  # noqa: E731
            run_rec = lambda: t_rec[name].append(timed(lambda: record_k(m, xb, k)) / k)  # noqa: E731
            for fn in ((run_fwd, run_rec) if r % 2 == 0 else (run_rec, run_fwd)):
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
    print(f"| model | gating layers | total gates per sample | forward s | record_gates s | ratio | ≤ {RATIO_TARGET}× |")
    print("|---|---|---:|---:|---:|---:|:---:|")
    missed = []
    for name in models:
        f_s, r_s = statistics.median(t_fwd[name]), statistics.median(t_rec[name])
        ratio = r_s / f_s
        ok = ratio <= RATIO_TARGET
        if not ok:
            missed.append(name)
        layers, gates, kinds = info[name]
        print(f"| {name} | {layers} ({kinds}) | {gates} | {f_s:.3f} | {r_s:.3f} | {ratio:.2f} | "
              f"{'PASS' if ok else 'FAIL'} |")
    print()
    print(f"- forward: the same batches through the model under `torch.no_grad()`; record_gates: "
          f"`record_gates(model, x, batch_size={args.batch_size})` (returns the stored Recording).")
    print(f"- median of {repeats} repeats; every repeat runs every model, the two contenders' order flips "
          "every other repeat; one process. Seconds are per pass over all images; a repeat of a fast model "
          "times several passes (" + ", ".join(f"{k}: {v}" for k, v in inner.items()) + ") and divides.")
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

    to_profile = list(models) if args.profile else ([] if args.no_auto_profile else missed)
    for name in to_profile:
        parts = profile_parts(models[name], inputs[name], args.batch_size, max(3, repeats))
        d = dict(parts)
        base, overhead, dispatch = d["forward alone"], d["__overhead"], d["__dispatch"]
        print(f"\n### where record_gates' time goes: {name}\n")
        print("| part (over all images) | s | % of record_gates overhead |")
        print("|---|---:|---:|")
        for k, s in parts:
            if k.startswith("__"):
                continue
            if s != s:  # nan: a note
                print(f"| {k} | | |")
                continue
            if k == "forward alone" or k == "record_gates (all of it)":
                pct = ""
            elif k == "forward + empty hooks (dispatch)":
                pct = f"{100 * dispatch / overhead:.0f}% (paired difference to the forward: {dispatch:+.4f} s)"
            elif k.startswith("max-pool: the module's own"):
                pct = "(saved: record_gates pools once)"
            elif k.startswith("max-pool: pooling + winners"):
                net = d["__pool_net"]
                pct = f"{100 * net / overhead:.0f}% (net of the pooling it replaces: {net:+.4f} s)"
            elif k.startswith("(before)"):
                pct = "(the previous implementation, not part of record_gates)"
            else:
                pct = f"{100 * s / overhead:.0f}%"
            print(f"| {k} | {s:.4f} | {pct} |")
        print(f"\n- record_gates overhead over the forward (median of paired differences): {overhead:.4f} s "
              f"({100 * overhead / base:.0f}% of the forward); the parts are timed on their own, so they "
              "need not add up to it exactly.")
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s; load average at end: {loadavg()})")


if __name__ == "__main__":
    main()
