"""A prepared GPU check: one run, a few minutes, one markdown table and one JSON file.

Sections (each with its own time budget; a failure or an overrun is recorded
with its error and the script goes on to the next section):

* ``environment``: GPU model, torch / CUDA / cuDNN versions, ``torch.cuda.is_available()``;
* ``estimators``: ``kde_entropy`` and ``kde_interaction_information`` (Eq. 2, Eq. 4) at
  n = 2000 and d in {16384, 150000, 2.3M} on the device, against one bare float32 GEMM
  ``S @ S.T`` of the same states; and agreement of device, CPU and an independent float64
  reference on a smaller case (differences in bits);
* ``record_gates``: torchvision's ResNet-18 (weights=None) at 224x224 on 2000 synthetic
  images: time against a plain forward, peak GPU memory;
* ``training``: training throughput (images/s) of ResNet-20 and revised VGG-11 on
  CIFAR-shaped synthetic data, and of a step with the complexity loss
  (``tcomplex.ebm.ComplexityPenalty``) against plain training (ResNet-20);
* ``chapter1``: the quick profile's chapter 1 (``01_metrics``: training with tracking,
  Proposition 1/2, Eq. 6, bandwidths) end to end on the device, by the study functions
  the notebook calls, in a temporary runs/results folder; its numbers are compared with
  the committed CPU results of the quick profile (``papermill_runs/quick/results``);
* ``paper_estimate``: the training runs of the ``paper`` profile
  (``papermill_runs/paper.yaml``, expanded by each chapter's ``configs`` function) with
  the throughput of every distinct model/input measured here and the cost of one tracked
  epoch (``measure_complexity`` + evaluation), giving an estimate of each chapter's time.

Usage (from the repository root)::

    python benchmarks/gpu_check.py --out OUTDIR [--data-root DIR]   # on a GPU machine, <= ~6 min
    python benchmarks/gpu_check.py --out OUTDIR --cpu --tiny          # CPU dry run, < 1 min
    bash benchmarks/gpu_check.sh OUTDIR                               # fresh venv + this script

It writes ``OUTDIR/gpu_check.md`` and ``OUTDIR/gpu_check.json`` (rewritten after every
section, so a run killed midway keeps what it finished) and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing: use its tcomplex
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, loadavg  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SECTIONS = ("environment", "estimators", "record_gates", "training", "chapter1", "paper_estimate")
#: seconds per section at full size (the whole run stays under ~5.5 min plus installation)
BUDGETS = {"environment": 15, "estimators": 70, "record_gates": 40, "training": 35, "chapter1": 60,
           "paper_estimate": 110}
TINY_BUDGETS = {"environment": 5, "estimators": 8, "record_gates": 5, "training": 8, "chapter1": 15,
                "paper_estimate": 10}
#: a section that overruns its budget by this much is interrupted (SIGALRM)
GRACE_S = 25
ALPHA = 0.01
N_CLASSES = 10
FLIP = 0.02  # structured states: per-class prototypes, each gate flipped with this probability
MIB = 2**20
GIB = 2**30
#: training / test split sizes of the datasets the paper profile trains on (torchvision's splits as
#: tcomplex.experiments.data loads them); VOC 2012 crops: objects of VOC 'train' / 'val' without the
#: difficult ones, counted approximately
SPLIT_SIZES = {
    "mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000),
    "cifar10_gray": (50000, 10000), "celeba": (162770, 19962), "voc2012_crops": (13000, 13000),
    "tiny_imagenet10": (5000, 500),
}
APPROXIMATE_SPLITS = ("voc2012_crops",)


class SectionTimeout(BaseException):
    """A section ran past its budget plus the grace period (a BaseException, so that no
    ``except Exception`` inside a section swallows it)."""


class Budget:
    """The time left to one section; sub-steps ask it before they start."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.used()

    def allows(self, predicted: float) -> bool:
        return predicted <= self.left()


class Check:
    """State shared by the sections: device, sizes, output."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tiny = args.tiny
        self.device = torch.device("cpu" if args.cpu else "cuda")
        self.cuda = self.device.type == "cuda"
        self.out = Path(args.out)
        self.cache: dict[str, Any] = {}  # throughputs measured by one section and reused by another
        self.partial: dict[str, Any] = {}  # what a section measured so far, kept if it fails later

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / MIB if self.cuda else None

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Wall seconds of ``fn()`` with the device synchronized before and after."""
        self.sync()
        t0 = time.perf_counter()
        r = fn()
        self.sync()
        return time.perf_counter() - t0, r


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** (-digits)):
            return f"{v:.{digits}g}" if abs(v) >= 1e5 else f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------
def section_environment(ck: Check, budget: Budget) -> dict[str, Any]:
    """What machine and software the numbers come from."""
    import torchvision

    res: dict[str, Any] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch.version.cuda": torch.version.cuda,
        "torch.cuda.is_available()": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device used": str(ck.device),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu count": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "load average": loadavg(),
        "tf32 matmul allowed": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        res["git commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        res["git commit"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        res.update({"gpu": p.name, "gpu count": torch.cuda.device_count(),
                    "compute capability": f"{p.major}.{p.minor}", "gpu memory GiB": round(total / GIB, 1),
                    "gpu memory free GiB": round(free / GIB, 1), "multiprocessors": p.multi_processor_count})
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            res["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            res["driver"] = None
    elif ck.cuda:
        raise RuntimeError("torch.cuda.is_available() is False: no usable GPU (or a CPU-only torch build "
                           f"{torch.__version__}); rerun with --cpu for a CPU dry run")
    return {"rows": [{"key": k, "value": v} for k, v in res.items()], "values": res}


# ---------------------------------------------------------------------------
# estimators
# ---------------------------------------------------------------------------
def make_states(n: int, d: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded bool states ``[n, d]`` with structure, and their labels.

    Ten classes; each has a prototype whose gate i is open with a per-gate rate drawn from
    U(0.1, 0.5); a sample is its class's prototype with every gate flipped with probability
    ``FLIP``.  With alpha = 0.01 this keeps H(Sigma) well below log2 n and I(X;Sigma;Y) near
    log2 10 at every d.  Built in row chunks on ``device`` (same seed, same device: same states).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(n, device=device) % N_CLASSES
    rates = 0.1 + 0.4 * torch.rand(d, generator=g, device=device)
    protos = torch.rand(N_CLASSES, d, generator=g, device=device) < rates
    out = torch.empty(n, d, dtype=torch.bool, device=device)
    step = max(1, (256 * MIB) // (4 * d))
    for i in range(0, n, step):
        rows = min(step, n - i)
        flips = torch.rand(rows, d, generator=g, device=device) < FLIP
        out[i:i + rows] = protos[labels[i:i + rows]] ^ flips
        del flips
    return out, labels


def reference_bits(states: torch.Tensor, labels: torch.Tensor, alpha: float) -> tuple[float, float]:
    """H (Eq. 2) and I(X;Sigma;Y) (Eq. 4) in bits, written out directly in float64 on the CPU.

    Independent of tcomplex.estimators: dense distances from a float64 GEMM, torch.logsumexp.
    """
    x = states.detach().cpu().to(torch.float64)
    n, d = x.shape
    sigma2 = alpha * d
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    logk = -d2 / (2.0 * sigma2)

    def h_nats(idx: torch.Tensor) -> float:
        sub = logk[idx][:, idx]
        m = sub.shape[0]
        return math.log(m) - float(torch.logsumexp(sub, 1).mean())

    y = labels.cpu()
    h = h_nats(torch.arange(n))
    h_cond = 0.0
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).squeeze(1)
        if len(idx) > 1:
            h_cond += len(idx) / n * h_nats(idx)
    return h / math.log(2), (h - h_cond) / math.log(2)


def _gemm_bare(ck: Check, states: torch.Tensor) -> tuple[Callable[[], Any], str]:
    """One bare float32 ``S @ S.T``: the float copy is made outside the timing when it fits
    in memory, else the GEMM is summed over column chunks (conversion inside the timing)."""
    n, d = states.shape
    need = 4 * n * d + 4 * n * n
    if ck.cuda:
        free, _ = torch.cuda.mem_get_info()
        fits = need < 0.8 * free
    else:
        fits = need < 8 * GIB
    if fits:
        f = states.to(torch.float32)
        return (lambda: f @ f.T), "one GEMM, float32 copy made outside the timing"
    chunk = max(1, int(0.2 * (torch.cuda.mem_get_info()[0] if ck.cuda else 4 * GIB)) // (4 * n))

    def chunked():
        acc = torch.zeros(n, n, dtype=torch.float32, device=states.device)
        for j in range(0, d, chunk):
            fj = states[:, j:j + chunk].to(torch.float32)
            acc.addmm_(fj, fj.T)
        return acc

    return chunked, f"summed over column chunks of {chunk} (float32 copy of the states does not fit; conversion timed)"


def section_estimators(ck: Check, budget: Budget) -> dict[str, Any]:
    """kde_entropy / kde_interaction_information on the device vs one bare GEMM; agreement."""
    from tcomplex.estimators import (SaturationWarning, kde_entropy, kde_interaction_information,
                                     squared_distances)

    warnings.simplefilter("ignore", SaturationWarning)
    n = 200 if ck.tiny else ck.args.n
    dims = [128, 512, 2048] if ck.tiny else [16384, 150000, 2_300_000]
    small_n, small_d = (200, 1024) if ck.tiny else (2000, 16384)
    notes: list[str] = []
    # -- agreement: device vs CPU vs an independent float64 reference ---------------
    s_cpu, y_cpu = make_states(small_n, small_d, ck.args.seed, torch.device("cpu"))
    h_cpu = float(kde_entropy(s_cpu, alpha=ALPHA))
    i_cpu = float(kde_interaction_information(s_cpu, y_cpu, alpha=ALPHA))
    s_dev, y_dev = s_cpu.to(ck.device), y_cpu.to(ck.device)
    h_dev = float(kde_entropy(s_dev, alpha=ALPHA))
    i_dev = float(kde_interaction_information(s_dev, y_dev, alpha=ALPHA))
    d2_diff = float((squared_distances(s_dev).cpu() - squared_distances(s_cpu)).abs().max())
    h_ref, i_ref = reference_bits(s_cpu, y_cpu, ALPHA)
    agreement = {"n": small_n, "d": small_d, "H device": h_dev, "H cpu": h_cpu, "H float64 reference": h_ref,
                 "|H device - cpu| bits": abs(h_dev - h_cpu), "|H cpu - reference| bits": abs(h_cpu - h_ref),
                 "I device": i_dev, "I cpu": i_cpu, "I float64 reference": i_ref,
                 "|I device - cpu| bits": abs(i_dev - i_cpu), "|I cpu - reference| bits": abs(i_cpu - i_ref),
                 "max |d2 device - cpu|": d2_diff}
    del s_dev, y_dev
    # -- timings ---------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    interrupted = False
    per_unit: float | None = None  # seconds per (n^2 d) of one repeat of the three contenders, measured
    for d in dims:
        reps = 1 if ck.tiny or d > 1_000_000 else 3
        if per_unit is not None:
            predicted = per_unit * n * n * d * (reps + 1) + 1e-9 * n * d * 5  # + generation
            if not budget.allows(predicted):
                skipped.append({"n": n, "d": d, "reason": f"predicted {predicted:.0f} s from the smaller d, "
                                f"{budget.left():.0f} s left of the section's budget"})
                continue
        times: dict[str, list[float]] = {"gemm": [], "H": [], "I": []}
        values: dict[str, float] = {}
        gemm_mode = ""
        try:
            t_gen, (states, labels) = ck.timed(lambda: make_states(n, d, ck.args.seed, ck.device))
            gemm, gemm_mode = _gemm_bare(ck, states)
            # warm-up: kernels, allocator, cuBLAS handles
            ck.timed(lambda: kde_entropy(states[:128], alpha=ALPHA))
            ck.timed(gemm)
            peaks: dict[str, float | None] = {}
            contenders = {
                "gemm": gemm,
                "H": lambda: kde_entropy(states, alpha=ALPHA),
                "I": lambda: kde_interaction_information(states, labels, alpha=ALPHA),
            }
            t_round = time.perf_counter()
            for r in range(reps):
                order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
                for k in order:
                    ck.reset_peak()
                    base = torch.cuda.memory_allocated() / MIB if ck.cuda else None
                    t, v = ck.timed(contenders[k])
                    times[k].append(t)
                    if ck.cuda:
                        peaks[k] = max(peaks.get(k) or 0.0, ck.peak_mib() - base)
                    if k != "gemm":
                        values[k] = float(v)
                    del v
                if r == 0:
                    per_unit = (time.perf_counter() - t_round) / (n * n * d)
                if not budget.allows(time.perf_counter() - t_round):  # no time for another round
                    break
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"n": n, "d": d, "states MiB": n * d / MIB, "generate s": t_gen, "GEMM s": med["gemm"],
                         "kde_entropy s": med["H"], "kde_interaction_information s": med["I"],
                         "H/GEMM": med["H"] / med["gemm"], "I/GEMM": med["I"] / med["gemm"],
                         "H bits": values.get("H"), "I bits": values.get("I"),
                         "H peak MiB": peaks.get("H"), "GEMM peak MiB": peaks.get("gemm"),
                         "repeats": len(times["H"]), "GEMM mode": gemm_mode})
            del states, labels, gemm, contenders
            if ck.cuda:
                torch.cuda.empty_cache()
        except SectionTimeout:  # keep the rows and the agreement measured so far, and this d's timings
            if any(times.values()):
                rows.append({"n": n, "d": d, "states MiB": n * d / MIB,
                             **{col: statistics.median(times[k]) if times[k] else None for k, col in
                                (("gemm", "GEMM s"), ("H", "kde_entropy s"), ("I", "kde_interaction_information s"))},
                             "H bits": values.get("H"), "I bits": values.get("I"), "repeats": len(times["H"]),
                             "GEMM mode": f"{gemm_mode} (interrupted: the others did not finish)"})
            states = labels = gemm = contenders = None  # noqa: F841 - free the device memory
            if ck.cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            skipped.append({"n": n, "d": d, "reason": f"interrupted by the section's hard time limit after "
                            f"{budget.used():.0f} s (a block GEMM of this d is much slower than predicted)"})
            interrupted = True
            break
    if n != 2000:
        notes.append(f"n = {n} (tiny mode)" if ck.tiny else f"n = {n} (--n)")
    notes.append("GEMM: float32 S @ S.T of the same bool states; kde_* take the bool states; medians of "
                 "interleaved repeats, the device synchronized around every timing, after a warm-up")
    notes.append("peak MiB: torch.cuda.max_memory_allocated during the call minus the memory allocated before it "
                 "(so the states themselves are excluded)")
    return {"agreement": agreement, "rows": rows, "skipped": skipped, "notes": notes, "interrupted": interrupted}


# ---------------------------------------------------------------------------
# record_gates on ResNet-18
# ---------------------------------------------------------------------------
def section_record_gates(ck: Check, budget: Budget) -> dict[str, Any]:
    """record_gates on torchvision's ResNet-18 (weights=None) vs a plain forward."""
    import torchvision

    from tcomplex.gating import record_gates

    n, size, batch = (4, 32, 4) if ck.tiny else (ck.args.images, 224, 256)
    torch.manual_seed(ck.args.seed)
    model = torchvision.models.resnet18(weights=None).to(ck.device).eval()
    g = torch.Generator(device=ck.device).manual_seed(ck.args.seed)
    x = torch.randn(n, 3, size, size, generator=g, device=ck.device)

    def forward():
        with torch.no_grad():
            for i in range(0, n, batch):
                model(x[i:i + batch])

    def record():
        return record_gates(model, x, batch_size=batch)

    # warm-up (cuDNN algorithm choice, allocator) on one batch
    ck.timed(lambda: record_gates(model, x[:batch], batch_size=batch))
    ck.timed(lambda: forward_one(model, x[:batch]))
    times: dict[str, list[float]] = {"forward": [], "record_gates": []}
    peaks: dict[str, float | None] = {}
    info: dict[str, Any] = {}
    for r in range(2):
        for k in (["forward", "record_gates"] if r % 2 == 0 else ["record_gates", "forward"]):
            if r > 0 and not budget.allows(2 * max(times[k] or [0.0])):
                continue
            ck.reset_peak()
            t, rec = ck.timed(forward if k == "forward" else record)
            times[k].append(t)
            peaks[k] = ck.peak_mib()
            if rec is not None and not info:
                width = sum(rec.info[m].width for m in rec.names)  # max-pool one-hots not expanded
                kinds = [rec.info[m].kind for m in rec.names]
                info = {"gating layers": f"{len(kinds)} ({kinds.count('relu')} relu, {kinds.count('maxpool')} maxpool)",
                        "gates per sample": width, "states device": str(rec[rec.names[-1]].device),
                        "states GiB (as bool)": n * width / GIB}
            del rec
    fwd, recd = statistics.median(times["forward"]), statistics.median(times["record_gates"])
    row = {"images": n, "size": f"{size}x{size}", "batch": batch, **info, "forward s": fwd,
           "record_gates s": recd, "ratio": recd / fwd, "forward peak GPU MiB": peaks.get("forward"),
           "record_gates peak GPU MiB": peaks.get("record_gates"), "repeats": len(times["record_gates"])}
    return {"rows": [row], "notes": [
        "record_gates stores the states on the CPU (its default), so its time includes the device-to-host copy",
        "peak GPU MiB: torch.cuda.max_memory_allocated, reset before each call (model and inputs included)"]}


def forward_one(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


# ---------------------------------------------------------------------------
# training throughput
# ---------------------------------------------------------------------------
class Stepper:
    """One model on synthetic batches: ``step()`` trains one batch as tcomplex.experiments.train does
    (forward, loss, optional complexity loss, backward, SGD step, the loss read back to the host)."""

    def __init__(self, ck: Check, model_name: str, shape: tuple[int, int, int], classes: int, *,
                 batch: int, task: str = "classify", model_kwargs: dict[str, Any] | None = None,
                 task_n: int | None = None, lam: float = 0.0, layers: list[Any] | None = None,
                 optimizer: str = "sgd", lr: float = 0.01, seed: int = 0):
        from tcomplex.experiments import models as models_mod

        self.ck, self.task, self.batch = ck, task, batch
        torch.manual_seed(seed)
        kwargs = dict(model_kwargs or {})
        kwargs.setdefault("in_channels", shape[0])
        kwargs.setdefault("input_size", shape[-1])
        kwargs.setdefault("num_classes", classes)
        self.model = models_mod.build_model(model_name, **kwargs).to(ck.device).train()
        self.task_net = None
        if task == "regress":
            self.task_net = models_mod.build_model(
                "task_mlp", in_channels=shape[0], input_size=shape[-1], n_relu=task_n, seed=0,
                num_classes=kwargs["num_classes"]).to(ck.device)
        params = self.model.parameters()
        self.opt = (torch.optim.Adam(params, lr=lr) if optimizer == "adam"
                    else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4))
        g = torch.Generator(device=ck.device).manual_seed(seed)
        self.data = [(torch.randn(batch, *shape, generator=g, device=ck.device),
                      torch.randint(0, classes, (batch,), generator=g, device=ck.device)) for _ in range(4)]
        self.i = 0
        self.penalty = None
        if lam > 0:
            from tcomplex.ebm import ComplexityPenalty

            self.penalty = ComplexityPenalty.for_model(self.model, self.data[0][0], lam=lam,
                                                       layers=layers or [-4, -3, -2, -1])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "regress":
            with torch.no_grad():
                target = self.task_net(x.flatten(1))
            return F.mse_loss(self.model(x.flatten(1)), target)
        out = self.model(x)
        if self.task == "vae":
            logits, recon, mu, logvar = out
            flat = x.flatten(1)
            t = (flat - flat.amin(1, keepdim=True)) / (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True) + 1e-8)
            rec = F.binary_cross_entropy(recon.flatten(1), t, reduction="sum") / len(x)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
            return rec + kl + F.cross_entropy(logits, y)
        return F.cross_entropy(out, y)

    def step(self) -> float:
        x, y = self.data[self.i % len(self.data)]
        self.i += 1
        loss = self.loss(x, y)
        if self.penalty is not None:
            self.penalty.step_energy_model()
            loss = loss + self.penalty.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())  # the training loop reads the loss back every step

    def steps(self, k: int) -> None:
        for _ in range(k):
            self.step()

    def forward_images_per_s(self, seconds: float) -> float:
        """Images/s of no-grad forwards (the evaluation passes of a tracked epoch)."""
        x = self.data[0][0]
        self.model.eval()
        try:
            with torch.no_grad():
                fwd = (lambda: self.model(x.flatten(1))) if self.task == "regress" else (lambda: self.model(x))
                self.ck.timed(fwd)
                k, t = 0, 0.0
                while t < seconds or k < 2:
                    dt, _ = self.ck.timed(fwd)
                    t += dt
                    k += 1
        finally:
            self.model.train()
        return k * self.batch / t


def measure_throughput(steppers: dict[str, Stepper], seconds: float, warmup: int = 3,
                       quick: bool = False) -> dict[str, dict[str, float]]:
    """Images/s of each stepper: warm-up, then rounds of a few steps each, contenders interleaved,
    until each has run about ``seconds`` (at least 2 rounds).  ``quick`` (tiny mode): one warm-up
    step and one timed step each."""
    for s in steppers.values():
        s.steps(1 if quick else warmup)
        s.ck.sync()
    per_round = {k: 1 for k in steppers}
    # size a round to ~seconds/4 from one timed step
    for k, s in steppers.items():
        if quick:
            break
        t, _ = s.ck.timed(s.step)
        per_round[k] = max(1, min(50, int(seconds / 4 / max(t, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in steppers}
    order = list(steppers)
    r = 0
    while r < (1 if quick else 2) or (not quick and min(sum(v) for v in times.values()) < seconds):
        for k in order if r % 2 == 0 else order[::-1]:
            s = steppers[k]
            t, _ = s.ck.timed(lambda: s.steps(per_round[k]))
            times[k].append(t / per_round[k])
        r += 1
        if r >= 12:
            break
    return {k: {"ms/step": 1e3 * statistics.median(v), "images/s": steppers[k].batch / statistics.median(v),
                "steps": per_round[k] * len(v)} for k, v in times.items()}


def section_training(ck: Check, budget: Budget) -> dict[str, Any]:
    """Images/s of ResNet-20 and revised VGG-11 (CIFAR shape), and the complexity-loss step."""
    batch = 4 if ck.tiny else 128
    secs = 0.01 if ck.tiny else 4.0
    shape = (3, 32, 32)
    rows: list[dict[str, Any]] = ck.partial.setdefault("rows", [])
    for name in ("resnet20", "vgg11_revised"):
        if not budget.allows(2 * secs + 2):
            rows.append({"model": name, "error": "skipped: section budget used up"})
            continue
        st = Stepper(ck, name, shape, 10, batch=batch, seed=ck.args.seed)
        r = measure_throughput({"plain": st}, secs, quick=ck.tiny)["plain"]
        rows.append({"model": name, "input": "3x32x32", "batch": batch, "loss": "plain", **r})
        ck.cache[("train", name, shape, 10, "classify", "{}", None, False, batch, "sgd")] = r["images/s"]
        del st
    # complexity loss against plain, interleaved (ResNet-20, lambda = 1e-3, last four ReLU layers)
    if budget.allows(4 * secs + (0.5 if ck.tiny else 5)):
        plain = Stepper(ck, "resnet20", shape, 10, batch=batch, seed=ck.args.seed)
        comp = Stepper(ck, "resnet20", shape, 10, batch=batch, seed=ck.args.seed, lam=1e-3)
        m = measure_throughput({"plain": plain, "complexity": comp}, secs, quick=ck.tiny)
        for k in ("plain", "complexity"):
            rows.append({"model": "resnet20", "input": "3x32x32", "batch": batch,
                         "loss": "plain (interleaved)" if k == "plain" else "+ complexity loss λ=1e-3", **m[k]})
        ratio = m["plain"]["images/s"] / m["complexity"]["images/s"]
        ck.cache[("train", "resnet20", shape, 10, "classify", "{}", None, True, batch, "sgd")] = m["complexity"]["images/s"]
    else:
        ratio = None
        rows.append({"model": "resnet20", "error": "complexity-loss step skipped: section budget used up"})
    return {"rows": rows, "complexity/plain time ratio": ratio, "notes": [
        "synthetic batches already on the device (4 batches cycled); SGD lr 0.01 momentum 0.9 wd 5e-4 as the "
        "substrate; the loss is read back every step as the training loop does; data loading not included",
        "complexity loss: tcomplex.ebm.ComplexityPenalty.for_model(model, x, lam=1e-3) (last four ReLU layers, "
        "defaults of tcomplex.ebm), step_energy_model() + loss() per step"]}


# ---------------------------------------------------------------------------
# chapter 1 of the quick profile on the device
# ---------------------------------------------------------------------------
def section_chapter1(ck: Check, budget: Budget) -> dict[str, Any]:
    """The quick profile's 01_metrics through the study functions its notebook calls."""
    import pandas as pd

    from tcomplex.experiments import data as data_mod
    from tcomplex.experiments.notebooks import load_profile
    from tcomplex.experiments.report import findings_frame
    from tcomplex.experiments.studies import metrics as study
    from tcomplex.experiments.studies.common import Context, train_many

    params = dict(load_profile("quick", ROOT)["notebooks"]["01_metrics"])
    if ck.tiny:
        params.update(epochs=1, seeds=[0], train_subset=500, analysis_per_class=10, track_every=1)
    root = data_mod.resolve_data_root(ck.args.data_root)
    missing = [e for e in data_mod.DATASETS["mnist"].expected if not (root / e).is_file()]
    if missing:
        return {"skip_reason": (f"MNIST not found under the data root {root} (missing {', '.join(missing)}): "
                            "pass --data-root DIR holding MNIST/raw/*-ubyte (e.g. copy it into ./data/MNIST "
                            "and carry 'data/MNIST' to the GPU machine, 53 MiB)"), "rows": []}
    model, dataset = "mlp_mnist", "mnist"
    with tempfile.TemporaryDirectory(prefix="tcomplex-gpu-check-") as tmp:
        ctx = Context.create("quick", str(Path(tmp) / "runs"), str(Path(tmp) / "results"), str(root))
        cfgs = study.configs(model, dataset, params["epochs"], params["seeds"], params["train_subset"],
                             params["analysis_per_class"], params["track_every"])
        if any(c.device != "auto" for c in cfgs):
            raise RuntimeError(f"chapter 1's configs ask for device {cfgs[0].device!r}, not 'auto'")
        ck.reset_peak()
        base = torch.cuda.memory_allocated() / MIB if ck.cuda else 0.0
        t_train, rows = ck.timed(lambda: train_many(cfgs, ctx, desc="chapter 1"))
        used_gpu_mib = ck.peak_mib() - base if ck.cuda else None
        # where the trained weights lived: the storage locations recorded in the checkpoints
        locations: set[str] = set()
        for c in cfgs:
            torch.load(ctx.runs / c.run_id / "checkpoint.pt", weights_only=False,
                       map_location=lambda storage, loc: (locations.add(loc), storage)[1])
        t_rest0 = time.perf_counter()
        p1 = study.prop1(rows)
        table = study.suffix_table(rows)
        p2 = study.prop2(table)
        eq6 = study.eq6_table(cfgs[0], ctx)
        bw = study.bandwidth_table(cfgs[0], ctx)
        sweep = study.prop_sweep(cfgs, ctx, params["sweep_alphas"])
        found = study.findings(rows, table, eq6, bw, "", sweep=sweep, prop_alphas=params["prop_alphas"])
        t_rest = time.perf_counter() - t_rest0
        summary = study.summary_numbers(rows)
    res: dict[str, Any] = {
        "parameters": params, "training s": t_train, "analysis s": t_rest,
        "device of the runs": ",".join(sorted(locations)),
        "peak GPU MiB during training": used_gpu_mib,
        "prop1 min I bits": p1["min"], "prop2 plug-in violations": len(p2["plugin"]),
        "max |H + TC - C|": float(eq6.abs_error.max()),
        "findings": findings_frame(found).to_dict("records"),
        "summary": summary.reset_index().to_dict("records") if hasattr(summary, "reset_index") else str(summary),
    }
    # the committed CPU results of the quick profile: same configs, so epoch 0 (before training)
    # must agree to float rounding, later epochs to the run-to-run spread of GPU arithmetic
    committed = ROOT / "papermill_runs" / "quick" / "results" / "01_metrics_rows.csv"
    cmp_rows = []
    if not ck.tiny and committed.is_file():
        ref = pd.read_csv(committed)
        ours = rows[rows.layer == "__all__"]
        for metric in ("H", "I_XSY", "test_acc"):
            a = ours[ours.metric == metric].groupby("epoch").value.mean()
            b = ref[(ref.layer == "__all__") & (ref.metric == metric)].groupby("epoch").value.mean()
            for e in sorted(set(a.index) & set(b.index)):
                cmp_rows.append({"metric": metric, "epoch": int(e), "device": float(a[e]), "committed CPU": float(b[e]),
                                 "|diff|": abs(float(a[e]) - float(b[e]))})
    elif ck.tiny:
        res["comparison"] = "tiny parameters differ from the committed quick run: no comparison"
    else:
        res["comparison"] = f"no committed results at {committed}"
    res["rows"] = cmp_rows or [{"metric": "H", "epoch": int(e), "device": float(v)} for e, v in
                               rows[(rows.layer == "__all__") & (rows.metric == "H")].groupby("epoch").value.mean().items()]
    return res


# ---------------------------------------------------------------------------
# paper profile: runs, throughputs, estimate
# ---------------------------------------------------------------------------
def paper_configs(profile: str = "paper") -> dict[str, list[Any]]:
    """The training runs of every chapter of a profile, as its notebooks build them."""
    from tcomplex.experiments.notebooks import load_profile
    from tcomplex.experiments.studies import appendix, disentanglement, dynamics, max_complexity, min_complexity
    from tcomplex.experiments.studies import metrics

    nb = load_profile(profile, ROOT)["notebooks"]
    out: dict[str, list[Any]] = {}
    p = nb["01_metrics"]
    out["01_metrics"] = metrics.configs(p.get("model", "mlp_mnist"), p.get("dataset", "mnist"), p["epochs"],
                                        p["seeds"], p["train_subset"], p["analysis_per_class"], p["track_every"])
    p = nb["02_disentanglement"]
    out["02_disentanglement"] = (
        disentanglement.configs(p["mnist_models"], p["seeds"], dataset=p["dataset"], epochs=p["epochs"],
                                train_subset=p["train_subset"], track_per_class=p["track_per_class"],
                                eval_size=p["eval_size"], short_epochs=p.get("short_epochs"))
        + disentanglement.configs(p["resnet_models"], p["resnet_seeds"], dataset=p["dataset"],
                                  epochs=p["resnet_epochs"], train_subset=p["resnet_train_subset"],
                                  track_per_class=p["track_per_class"], eval_size=p["eval_size"],
                                  short_epochs=p.get("short_epochs")))
    p = nb["03_training_dynamics"]
    out["03_training_dynamics"] = dynamics.configs(p["runs"], p["seeds"], p["analysis_images"], p["track_every"],
                                                   p["eval_images"])
    p = nb["04_maximum_complexity"]
    out["04_maximum_complexity"] = max_complexity.configs(
        dataset=p["dataset"], task_ns=p["task_ns"], depths=p["depths"], architectures=p["architectures"],
        seeds=p["seeds"], epochs=p["epochs"], train_subset=p["train_subset"], eval_size=p["eval_size"],
        analysis_size=p["analysis_size"], optimizer=p["optimizer"], lr_stacked=p["lr_stacked"],
        lr_residual=p["lr_residual"], batch_size=p["batch_size"], task_seed=p.get("task_seed", 0))
    p = nb["05_minimum_complexity"]
    out["05_minimum_complexity"] = min_complexity.configs(
        p["model_datasets"], p["lambdas"], p["seeds"], epochs=p["epochs"], train_subset=p["train_subset"],
        test_subset=p["test_subset"], analysis_per_class=p["analysis_per_class"], lr=p["lr"],
        resmlp_init=p["resmlp_init"])
    p = nb["06_appendix"]
    out["06_appendix"] = (
        [appendix.alpha_config(p["alpha_model"], p["alpha_dataset"], p["alpha_epochs"], s, p["alpha_train_subset"],
                               p["alpha_analysis_per_class"], p["alpha_track_every"]) for s in p["seeds"]]
        + [appendix.table1_config(c, s, p["table1_test_subset"]) for c in appendix.table1_cells(p["table1_cells"])
           for s in p["table1_seeds"]])
    return out


def _train_key(cfg: Any, batch: int | None = None) -> tuple:
    from tcomplex.experiments import data as data_mod

    info = data_mod.DATASETS[cfg.dataset]
    # 04's task MLPs differ only in their depth n: measured at the deepest (an upper bound)
    return ("train", cfg.model, tuple(info.shape), info.num_classes, cfg.task,
            json.dumps(cfg.model_kwargs, sort_keys=True), None, cfg.complexity_lambda > 0,
            batch or cfg.batch_size, cfg.optimizer)


def _track_key(cfg: Any, n_analysis: int) -> tuple:
    return ("track", cfg.model, cfg.dataset, cfg.task, json.dumps(cfg.model_kwargs, sort_keys=True),
            tuple(cfg.kinds), cfg.per_layer, cfg.suffix, cfg.tc, cfg.rates, n_analysis, cfg.complexity_lambda > 0)


def _analysis_n(cfg: Any) -> int:
    from tcomplex.experiments import data as data_mod

    if cfg.task == "regress":
        return cfg.analysis_size
    return cfg.analysis_per_class * data_mod.DATASETS[cfg.dataset].num_classes


def section_paper_estimate(ck: Check, budget: Budget) -> dict[str, Any]:
    """Time per chapter of the paper profile from throughputs measured here."""
    from tcomplex.experiments import data as data_mod
    from tcomplex.experiments.train import measure_complexity, tracked_epochs

    chapters = paper_configs()
    batch_override = 4 if ck.tiny else None
    secs = 0.01 if ck.tiny else 0.5
    # what each chapter needs: images trained per (model, input, loss); tracked epochs per tracking setup
    need_train: dict[tuple, float] = {}
    need_track: dict[tuple, int] = {}
    eval_images: dict[tuple, float] = {}
    cfg_of: dict[tuple, Any] = {}
    per_chapter: dict[str, list[tuple[tuple, float, tuple, int, float]]] = {}
    for ch, cfgs in chapters.items():
        items = []
        for cfg in cfgs:
            n_train, n_test = SPLIT_SIZES[cfg.dataset]
            n_train = min(n_train, cfg.train_subset or n_train)
            n_test = min(n_test, cfg.test_subset or n_test)
            tk = _train_key(cfg, batch_override)
            n_tracked = len(tracked_epochs(cfg.epochs, cfg.track_every, cfg.track_log, cfg.track_epochs))
            kk = _track_key(cfg, _analysis_n(cfg))
            ev = n_tracked * (min(cfg.eval_train_size, n_train) + n_test)
            items.append((tk, cfg.epochs * n_train, kk, n_tracked, ev))
            need_train[tk] = need_train.get(tk, 0.0) + cfg.epochs * n_train
            need_track[kk] = need_track.get(kk, 0) + n_tracked
            eval_images[tk] = eval_images.get(tk, 0.0) + ev
            if tk not in cfg_of or (cfg.task_n or 0) > (cfg_of[tk].task_n or 0):
                cfg_of[tk] = cfg
            cfg_of.setdefault(kk, cfg)
        per_chapter[ch] = items
    # -- training throughput of every distinct setup, the most-used first -------------
    train_rate: dict[tuple, float] = {}
    fwd_rate: dict[tuple, float] = {}
    interrupted = False
    measured_rows = []
    # one setup of each kind (task x complexity loss) first, so that every code path runs even when
    # the budget ends early; then the others, the most-trained first
    firsts = {}
    for tk in sorted(need_train, key=lambda k: -need_train[k]):
        firsts.setdefault((tk[4], tk[7]), tk)
    order = list(firsts.values()) + [k for k in sorted(need_train, key=lambda k: -need_train[k])
                                     if k not in firsts.values()]
    for tk in order:
        cfg = cfg_of[tk]
        info = data_mod.DATASETS[cfg.dataset]
        if tk in ck.cache and not ck.tiny:
            train_rate[tk] = ck.cache[tk]
        if not budget.allows(0.4 * budget.seconds):  # keep ~40% of the budget for the tracked epochs
            measured_rows.append({"model": cfg.model, "input": "x".join(map(str, info.shape)), "error": "not measured: budget"})
            continue
        try:
            st = Stepper(ck, cfg.model, tuple(info.shape), info.num_classes, batch=tk[8], task=cfg.task,
                         model_kwargs=cfg.model_kwargs, task_n=cfg.task_n, lam=cfg.complexity_lambda,
                         layers=cfg.complexity_layers, optimizer=cfg.optimizer, lr=cfg.lr)
            if tk not in train_rate:
                train_rate[tk] = measure_throughput({"x": st}, secs, quick=ck.tiny)["x"]["images/s"]
            fwd_rate[tk] = st.forward_images_per_s(secs / 4)
            measured_rows.append({"model": cfg.model, "kwargs": tk[5] if tk[5] != "{}" else "",
                                  "input": "x".join(map(str, info.shape)), "task": cfg.task,
                                  "complexity loss": tk[7], "batch": tk[8], "train images/s": train_rate[tk],
                                  "eval images/s": fwd_rate[tk], "images to train": need_train[tk]})
            del st
        except SectionTimeout:
            interrupted = True
            measured_rows.append({"model": cfg.model, "input": "x".join(map(str, info.shape)),
                                  "error": "interrupted: the section's hard time limit"})
            break
        except Exception as exc:  # noqa: BLE001 - recorded, the estimate marks it
            measured_rows.append({"model": cfg.model, "input": "x".join(map(str, info.shape)),
                                  "error": f"{type(exc).__name__}: {exc}"[:300]})
        if ck.cuda:
            torch.cuda.empty_cache()
    # -- one tracked epoch's complexity measurement per tracking setup ----------------
    track_s: dict[tuple, float] = {}
    track_rows = []
    # round robin over the chapters (each chapter's most-tracked setup first), so that every chapter
    # gets its main tracking cost measured before the budget ends
    queues = [sorted({it[2] for it in items}, key=lambda k: -need_track[k]) for items in per_chapter.values()]
    track_order: list[tuple] = []
    while any(queues):
        for q in queues:
            while q and q[0] in track_order:
                q.pop(0)
            if q:
                track_order.append(q.pop(0))
    for kk in track_order:
        if interrupted:
            break
        cfg = cfg_of[kk]
        info = data_mod.DATASETS[cfg.dataset]
        n_an = 20 if ck.tiny else kk[10]
        predicted = 0.0
        if track_s:
            predicted = min(track_s.values())
        if track_rows and not budget.allows(predicted + 1.0):  # the first one always runs
            track_rows.append({"model": cfg.model, "dataset": cfg.dataset, "analysis images": n_an,
                               "error": "not measured: budget"})
            continue
        try:
            from tcomplex.experiments import models as models_mod

            kwargs = dict(cfg.model_kwargs)
            kwargs.setdefault("in_channels", info.shape[0])
            kwargs.setdefault("input_size", info.shape[-1])
            kwargs.setdefault("num_classes", info.num_classes)
            torch.manual_seed(0)
            model = models_mod.build_model(cfg.model, **kwargs).to(ck.device)
            g = torch.Generator(device=ck.device).manual_seed(0)
            x = torch.randn(n_an, *info.shape, generator=g, device=ck.device)
            if cfg.task == "regress":
                x = x.flatten(1)
            y = None if cfg.task == "regress" else torch.arange(n_an, device=ck.device) % info.num_classes
            t, _ = ck.timed(lambda: measure_complexity(model, x, y, kinds=cfg.kinds, bandwidth=cfg.bandwidth,
                                                       alpha=cfg.alpha, per_layer=cfg.per_layer, suffix=cfg.suffix,
                                                       tc=cfg.tc, rates=cfg.rates))
            track_s[kk] = t
            track_rows.append({"model": cfg.model, "dataset": cfg.dataset, "analysis images": n_an,
                               "per layer": cfg.per_layer, "suffix": cfg.suffix, "s per tracked epoch": t,
                               "tracked epochs": need_track[kk]})
            del model, x
        except SectionTimeout:
            interrupted = True
            track_rows.append({"model": cfg.model, "dataset": cfg.dataset,
                               "error": "interrupted: the section's hard time limit"})
        except Exception as exc:  # noqa: BLE001
            track_rows.append({"model": cfg.model, "dataset": cfg.dataset, "error": f"{type(exc).__name__}: {exc}"[:300]})
    # -- the estimate ------------------------------------------------------------------
    est_rows = []
    total = 0.0
    complete = True
    for ch, items in per_chapter.items():
        train_h = track_h = eval_h = 0.0
        missing = set()
        for tk, images, kk, n_tracked, ev in items:
            if tk in train_rate:
                train_h += images / train_rate[tk] / 3600
            else:
                missing.add(f"train {tk[1]}")
            if tk in fwd_rate:
                eval_h += ev / fwd_rate[tk] / 3600
            else:
                missing.add(f"eval {tk[1]}")
            if kk in track_s:
                track_h += n_tracked * track_s[kk] / 3600
            else:
                missing.add(f"tracking {kk[1]}")
        h = train_h + track_h + eval_h
        total += h
        complete &= not missing
        kinds = [k for k in ("train", "eval", "tracking") if any(m.startswith(k) for m in missing)]
        gap = ", ".join(f"{k} of {sum(m.startswith(k) for m in missing)} setup(s)" for k in kinds)
        est_rows.append({"chapter": ch, "runs": len(items), "train h": train_h, "tracking h": track_h,
                         "eval h": eval_h, "total h": h,
                         "not measured (total is then a lower bound)": gap, "_missing": sorted(missing)})
    est_rows.append({"chapter": "all", "runs": sum(r["runs"] for r in est_rows), "total h": total,
                     "not measured (total is then a lower bound)": "" if complete else "see above"})
    notes = [
        "runs: each chapter's configs() with papermill_runs/paper.yaml's parameters (training runs only; the "
        "post-training analyses of 02 (measure_runs) and 06 (alpha_metrics) are not counted)",
        "train h = epochs x training images / measured images/s (synthetic batches on the device: data loading, "
        "augmentation and host-to-device copies are NOT included); tracking h = tracked epochs x one "
        "measure_complexity call on the analysis set (synthetic images, untrained weights); eval h = the train/test "
        "evaluation passes of the tracked epochs at the measured no-grad images/s",
        "04's target MLPs are timed with the deepest task MLP of the list (upper bound for its training part)",
        f"training split sizes: {SPLIT_SIZES} ({', '.join(APPROXIMATE_SPLITS)}: approximate)",
    ]
    if interrupted:
        notes.insert(0, "a measurement ran past the section's hard time limit: the setups after it were not measured")
    if ck.tiny:
        notes.insert(0, "TINY MODE: batches of 4 and 20 analysis images: the hours below are NOT an estimate")
    return {"rows": est_rows, "throughputs": measured_rows, "tracking": track_rows, "notes": notes,
            "device": str(ck.device)}


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------
SECTION_FUNCS: dict[str, Callable[[Check, Budget], dict[str, Any]]] = {
    "environment": section_environment, "estimators": section_estimators, "record_gates": section_record_gates,
    "training": section_training, "chapter1": section_chapter1, "paper_estimate": section_paper_estimate,
}


def _on_alarm(signum, frame):  # noqa: ANN001
    raise SectionTimeout("the section ran past its budget plus the grace period and was interrupted")


def markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown: one overview table, then each section's tables."""
    lines = [f"## tcomplex GPU check ({report['mode']})", "",
             f"started {report['started_utc']} UTC, {report.get('total_seconds', 0):.0f} s in all", "",
             "| section | status | seconds | budget s | error / reason |", "|---|---|---:|---:|---|"]
    for name, sec in report["sections"].items():
        err = (sec.get("error") or sec.get("reason") or (sec.get("result") or {}).get("skip_reason") or "")
        err = err.splitlines()[0][:200] if err else ""
        lines.append(f"| {name} | {sec['status']} | {_fmt(sec.get('seconds'), 1)} | {sec.get('budget_s')} | {err} |")
    for name, sec in report["sections"].items():
        res = sec.get("result")
        if not res:
            if sec.get("partial_result", {}).get("rows"):
                lines += ["", f"### {name} (partial: {sec['status']})", "", _table(sec["partial_result"]["rows"])]
            continue
        lines += ["", f"### {name}", ""]
        if name == "estimators":
            a = res["agreement"]
            lines += [f"Agreement at n = {a['n']}, d = {a['d']} (bits):", "",
                      _table([{"quantity": q, "device": a[f"{q} device"], "CPU": a[f"{q} cpu"],
                               "float64 reference": a[f"{q} float64 reference"],
                               "|device - CPU|": a[f"|{q} device - cpu| bits"],
                               "|CPU - reference|": a[f"|{q} cpu - reference| bits"]} for q in ("H", "I")]),
                      "", f"max |squared distance device - CPU| = {a['max |d2 device - cpu|']:g}", ""]
            lines.append(_table(res["rows"], ["n", "d", "states MiB", "GEMM s", "kde_entropy s",
                                              "kde_interaction_information s", "H/GEMM", "I/GEMM", "H bits",
                                              "I bits", "H peak MiB", "repeats", "GEMM mode"]))
            for s in res.get("skipped", []):
                lines.append(f"- skipped n = {s['n']}, d = {s['d']}: {s['reason']}")
        elif name == "environment":
            lines.append(_table(res["rows"]))
        elif name == "paper_estimate":
            lines += ["Estimated time per chapter of the `paper` profile on this device:", "",
                      _table(res["rows"], [c for c in res["rows"][0] if not c.startswith("_")]), "", "Throughputs:", "", _table(res["throughputs"]), "",
                      "One tracked epoch's complexity measurement:", "", _table(res["tracking"])]
        elif name == "chapter1":
            if res.get("skip_reason"):
                lines.append(f"skipped: {res['skip_reason']}")
            else:
                keys = ["training s", "analysis s", "device of the runs", "peak GPU MiB during training",
                        "prop1 min I bits", "prop2 plug-in violations", "max |H + TC - C|"]
                lines += [_table([{"quantity": k, "value": res[k]} for k in keys]), "",
                          _table(res["rows"]), "", _table(res["findings"], ["key", "verdict"])
                          if res["findings"] and "key" in res["findings"][0] else ""]
                if res.get("comparison"):
                    lines.append(f"- {res['comparison']}")
        else:
            lines.append(_table(res["rows"]))
        for note in res.get("notes", []):
            lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    try:
        text = markdown(report)
    except Exception as exc:  # noqa: BLE001 - the JSON is written; never lose a run to a rendering bug
        text = f"(markdown rendering failed: {type(exc).__name__}: {exc}; see gpu_check.json)\n"
    (out / "gpu_check.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                    help="output folder (default: $OUT, else ./gpu_check_out)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (dry run; with --tiny in the tests)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the whole run in well under a minute on a CPU")
    ap.add_argument("--data-root", default=None, help="data root holding MNIST/raw (chapter1); default: "
                    "$TCOMPLEX_DATA, else ./data")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--total-budget", type=float, default=None,
                    help="seconds for all sections (default: 360, tiny 50); a section that would start later is skipped")
    ap.add_argument("--budgets", default="", help="per-section budgets in seconds, e.g. estimators=60,chapter1=90")
    ap.add_argument("--grace", type=float, default=None,
                    help=f"seconds past its budget after which a section is interrupted (default {GRACE_S}, tiny half)")
    ap.add_argument("--n", type=int, default=2000, help="samples of the estimator timings (default 2000)")
    ap.add_argument("--images", type=int, default=2000, help="images of the record_gates check (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; known: {', '.join(SECTIONS)}")
    ck = Check(args)
    budgets = dict(TINY_BUDGETS if args.tiny else BUDGETS)
    for item in filter(None, (b.strip() for b in args.budgets.split(","))):
        name, _, value = item.partition("=")
        if name not in SECTIONS:
            ap.error(f"--budgets: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        try:
            budgets[name] = float(value)
        except ValueError:
            ap.error(f"--budgets: {item!r} is not section=seconds")
    grace = args.grace if args.grace is not None else (GRACE_S / 2 if args.tiny else GRACE_S)
    total_budget = args.total_budget or (50.0 if args.tiny else 360.0)
    if args.cpu:  # a dry run shares the machine: few threads are steadier
        torch.set_num_threads(1 if args.tiny else min(torch.get_num_threads(), 4))
    report: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py", "argv": sys.argv[1:] if argv is None else argv,
        "mode": f"{'cpu' if args.cpu else 'cuda'}{', tiny' if args.tiny else ''}",
        "started_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "sections": {s: {"status": "not run", "budget_s": budgets[s]} for s in SECTIONS},
    }
    for s in SECTIONS:
        if s not in sections:
            report["sections"][s] = {"status": "skipped", "budget_s": budgets[s], "reason": "not in --sections"}
    t_start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    cuda_broken = None
    try:
        for s in sections:
            entry: dict[str, Any] = {"budget_s": budgets[s]}
            left = total_budget - (time.perf_counter() - t_start)
            if left < min(budgets[s], 10) :
                entry.update(status="skipped", reason=f"total budget of {total_budget:.0f} s used up ({left:.0f} s left)")
            elif cuda_broken and s != "environment":
                entry.update(status="error", error=f"not run: CUDA unusable ({cuda_broken})")
            else:
                budget = Budget(min(budgets[s], left))
                ck.partial = {}
                print(f"[gpu_check] {s}: budget {budget.seconds:.0f} s ...", file=sys.stderr, flush=True)
                signal.setitimer(signal.ITIMER_REAL, max(budget.seconds, 0.0) + grace)
                try:
                    entry["result"] = SECTION_FUNCS[s](ck, budget)
                    entry["status"] = "ok"
                except BaseException as exc:  # noqa: BLE001 - recorded; KeyboardInterrupt still stops
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    entry["status"] = "timeout" if isinstance(exc, SectionTimeout) else "error"
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    entry["traceback"] = traceback.format_exc()[-3000:]
                    if ck.partial:
                        entry["partial_result"] = ck.partial
                    if s == "environment" and ck.cuda:
                        cuda_broken = str(exc).splitlines()[0]
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                entry["seconds"] = budget.used()
                if ck.cuda:
                    try:
                        torch.cuda.empty_cache()
                    except Exception:  # noqa: BLE001
                        pass
                print(f"[gpu_check] {s}: {entry['status']} in {entry['seconds']:.1f} s"
                      + (f" ({entry['error'].splitlines()[0][:200]})" if entry.get("error") else ""),
                      file=sys.stderr, flush=True)
            report["sections"][s] = entry
            report["total_seconds"] = time.perf_counter() - t_start
            write(report, ck.out)
    finally:
        signal.signal(signal.SIGALRM, old)
    report["total_seconds"] = time.perf_counter() - t_start
    write(report, ck.out)
    print((ck.out / "gpu_check.md").read_text())
    print(f"[gpu_check] wrote {ck.out / 'gpu_check.md'} and {ck.out / 'gpu_check.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
