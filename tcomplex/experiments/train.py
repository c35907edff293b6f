"""Training with complexity tracking (Sections 4.2-4.4).

One function, :func:`train`, trains a model of the registry on a dataset of the
registry and, at chosen epochs, records the gating states of the analysis set
(Appendix I) and stores the complexity metrics as tidy rows:
one row per run x epoch x layer x metric.

A run lives in ``<root>/<run_id>/``:

* ``config.json``: the full :class:`TrainConfig` (``run_id`` is its hash);
* ``rows/epoch_XXXXX.csv``: the rows of one tracked epoch, written atomically
  (temporary file + rename), so a killed run never leaves half a row;
* ``checkpoint.pt``: model, optimiser and scheduler state of the last tracked
  epoch, written atomically before that epoch's rows;
* ``finished.json``: written last; a finished run is not redone.

Randomness is a function of (seed, epoch): the batch order and augmentation of
epoch e are seeded from them and the global torch RNG is reseeded at the start
of every epoch, so resuming from a checkpoint gives exactly the rows of an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from tcomplex import estimators as est
from tcomplex.gating import GateRecorder, Recording, record_gates
from tcomplex.experiments import data as data_mod
from tcomplex.experiments import models as models_mod

__all__ = [
    "TrainConfig",
    "RunResult",
    "train",
    "tracked_epochs",
    "load_results",
    "run_dir",
    "measure_complexity",
    "RATE_BINS",
]

log = logging.getLogger("tcomplex.train")

#: bins of the activation-rate histograms (Figure 3c)
RATE_BINS = 20
#: measure_complexity keeps n x n float32 distance matrices up to this many samples
DENSE_MAX_SAMPLES = 4096
ALL = "__all__"  # layer label of the whole network's Sigma


@dataclass
class TrainConfig:
    """Everything that defines a run; its hash is the run id.

    Defaults follow the authors' public code: SGD, lr 0.01, momentum 0.9,
    weight decay 5e-4, batch 128, 200 analysis images per class.
    """

    model: str = "mlp_mnist"
    dataset: str = "mnist"
    task: str = "classify"  # classify | regress (target MLP on a task MLP) | vae
    epochs: int = 10
    seed: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "none"  # none | cosine | step (x0.1 at 50% and 75%)
    augment: bool = False
    train_subset: int | None = None  # first k images of a seeded permutation of the train split
    test_subset: int | None = None
    data_seed: int | None = None  # seed of the train_subset permutation; None: ``seed``
    normalization: str = "dataset"  # dataset mean/std, or "half": (x - 0.5) / 0.5 (authors' MNIST)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # regression onto a task MLP (Section 4.2)
    task_n: int | None = None
    task_seed: int = 0
    # complexity tracking
    track_every: int = 5
    track_log: bool = True  # also 1, 2, 3, 5, 8, ... so the early dip is visible
    track_epochs: list[int] | None = None  # explicit list overrides the two above
    analysis_per_class: int = 200
    analysis_seed: int = 0
    analysis_size: int = 2000  # regression only (no classes)
    kinds: tuple[str, ...] = ("relu",)  # Section 4.4: "we analysed ... ReLU layers"
    bandwidth: str = "dims"
    alpha: float | None = None  # None: 0.01 after FC, 0.04 after conv
    per_layer: bool = True
    suffix: bool = False  # H(Sigma_l..Sigma_L), Figure 1
    tc: bool = False  # TC(Sigma_l) per layer, Eq. 28
    rates: bool = True  # activation-rate histograms, Figure 3c
    eval_train_size: int = 10000  # train loss/accuracy measured on this many train images
    # complexity loss (Section 4.3): see tcomplex.ebm
    complexity_lambda: float = 0.0
    complexity_layers: list[int | str] = field(default_factory=lambda: [-4, -3, -2, -1])
    complexity_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    label: str = ""  # free text, not part of the identity

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        if self.task not in ("classify", "regress", "vae"):
            raise ValueError(f"task must be classify, regress or vae, got {self.task!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.task == "regress" and self.task_n is None:
            raise ValueError("task='regress' needs task_n (the task MLP's number of ReLU layers)")
        if self.complexity_lambda < 0:
            raise ValueError(f"complexity_lambda must be >= 0, got {self.complexity_lambda}")
        if self.normalization not in data_mod.NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {list(data_mod.NORMALIZATIONS)}, got {self.normalization!r}"
            )
        info = data_mod.DATASETS.get(self.dataset)
        if self.normalization != "dataset" and info is not None and not info.in_memory:
            raise ValueError(
                f"normalization={self.normalization!r} is available for the in-memory datasets "
                f"{[n for n, i in data_mod.DATASETS.items() if i.in_memory]} only, not {self.dataset!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kinds"] = list(self.kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; valid fields: {sorted(known)}")
        return cls(**d)

    @property
    def run_id(self) -> str:
        d = self.to_dict()
        d.pop("label")
        d.pop("device")
        # fields added after the first runs: left out at their defaults, so those runs keep their ids
        for key, default in (("data_seed", None), ("normalization", "dataset")):
            if d[key] == default:
                d.pop(key)
        blob = json.dumps(d, sort_keys=True, default=str)
        digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
        return f"{self.model}-{self.dataset}-s{self.seed}-{digest}"


@dataclass
class RunResult:
    run_id: str
    path: Path
    rows: pd.DataFrame
    resumed_from: int | None
    seconds: float


def tracked_epochs(epochs: int, every: int = 5, log_spaced: bool = True, explicit: Sequence[int] | None = None) -> list[int]:
    """Epochs at which complexity is measured: 0, every k-th, a log-spaced set, and the last."""
    if explicit is not None:
        bad = [e for e in explicit if not 0 <= e <= epochs]
        if bad:
            raise ValueError(f"track_epochs {bad} outside 0..{epochs}")
        return sorted(set(int(e) for e in explicit))
    out = {0, epochs}
    if every and every > 0:
        out.update(range(0, epochs + 1, every))
    if log_spaced:
        a, b = 1, 2
        while a <= epochs:  # Fibonacci numbers: dense early, sparse later
            out.add(a)
            a, b = b, a + b
    return sorted(out)


def run_dir(root: str | os.PathLike[str], config: TrainConfig) -> Path:
    return Path(root) / config.run_id


# ---------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------
@dataclass
class _Data:
    train_x: Tensor | None
    train_y: Tensor | None
    test_x: Tensor | None
    test_y: Tensor | None
    train_ds: Any  # a Dataset when not in memory
    test_ds: Any
    analysis_x: Tensor
    analysis_y: Tensor | None
    num_classes: int
    shape: tuple[int, ...]


def _subset(x: Tensor, y: Tensor, k: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if k is None or k >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]
    return x[idx], y[idx]


def _prepare_data(cfg: TrainConfig, data_root: str | None) -> _Data:
    info = data_mod.DATASETS.get(cfg.dataset)
    if info is None:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; valid: {sorted(data_mod.DATASETS)}")
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    if info.in_memory:
        tx, ty = data_mod.load_tensors(cfg.dataset, "train", data_root=data_root, normalization=cfg.normalization)
        vx, vy = data_mod.load_tensors(cfg.dataset, "test", data_root=data_root, normalization=cfg.normalization)
        tx, ty = _subset(tx, ty, cfg.train_subset, 1_000_003 + data_seed)
        vx, vy = _subset(vx, vy, cfg.test_subset, 2_000_003)
        train_ds = test_ds = None
    else:
        tx = ty = vx = vy = None
        train_ds = data_mod.load_dataset(cfg.dataset, "train", data_root=data_root, augment=cfg.augment)
        test_ds = data_mod.load_dataset(cfg.dataset, "test", data_root=data_root)
        if cfg.train_subset is not None:
            idx = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(1_000_003 + data_seed))
            train_ds = torch.utils.data.Subset(train_ds, idx[: cfg.train_subset].tolist())
        if cfg.test_subset is not None:
            test_ds = torch.utils.data.Subset(test_ds, list(range(min(cfg.test_subset, len(test_ds)))))
    if cfg.task == "regress":
        # no classes: a seeded random subset of the training images
        src = tx if tx is not None else torch.stack([train_ds[i][0] for i in range(min(len(train_ds), cfg.analysis_size))])
        ax, _ = _subset(src, torch.zeros(len(src)), cfg.analysis_size, cfg.analysis_seed)
        ay = None
    else:
        source = (tx, ty) if tx is not None else cfg.dataset
        try:
            ax, ay = data_mod.analysis_set(source, per_class=cfg.analysis_per_class, seed=cfg.analysis_seed,
                                           data_root=data_root)
        except ValueError as exc:
            if cfg.train_subset is None:
                raise
            raise ValueError(
                f"the analysis set is drawn from the training images, and the train_subset of "
                f"{cfg.train_subset} images of {cfg.dataset} is too small for analysis_per_class="
                f"{cfg.analysis_per_class} ({exc}): raise train_subset or lower analysis_per_class"
            ) from None
    return _Data(tx, ty, vx, vy, train_ds, test_ds, ax, ay, info.num_classes, tuple(info.shape))


def _build(cfg: TrainConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("in_channels", shape[0])
    kwargs.setdefault("input_size", shape[-1])
    kwargs.setdefault("num_classes", num_classes)
    return models_mod.build_model(cfg.model, **kwargs)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def _forward_loss(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor, task_net: nn.Module | None) -> tuple[Tensor, Tensor, int]:
    """Returns (loss, number correct, batch size)."""
    if cfg.task == "classify":
        out = model(x)
        return F.cross_entropy(out, y), (out.argmax(1) == y).sum(), len(y)
    if cfg.task == "regress":
        with torch.no_grad():
            target = task_net(x.flatten(1))
        out = model(x.flatten(1))
        return F.mse_loss(out, target), torch.zeros((), device=x.device), len(x)
    out = model(x)  # vae: (logits, reconstruction, mu, logvar)
    logits, recon, mu, logvar = out
    flat = x.flatten(1)
    # reconstruct inputs rescaled to [0, 1] with a Bernoulli likelihood
    target = (flat - flat.amin(1, keepdim=True)) / (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True) + 1e-8)
    rec = F.binary_cross_entropy(recon.flatten(1), target, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    ce = F.cross_entropy(logits, y)
    return rec + kl + ce, (logits.argmax(1) == y).sum(), len(y)


@torch.no_grad()
def _evaluate(cfg, model, batches: Iterable[tuple[Tensor, Tensor]], device, task_net) -> tuple[float, float]:
    model.eval()
    total, correct, count = 0.0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss, c, b = _forward_loss(cfg, model, x, y, task_net)
        total += float(loss) * b
        correct += float(c)
        count += b
    return total / max(count, 1), correct / max(count, 1)


def _tensor_batches(x: Tensor, y: Tensor, bs: int = 256) -> Iterable[tuple[Tensor, Tensor]]:
    # 256: LeNet-5 evaluates 1.7x faster than with 1000-image batches on the CPU (cache)
    for i in range(0, len(x), bs):
        yield x[i : i + bs], y[i : i + bs]


# ---------------------------------------------------------------------------
# complexity metrics
# ---------------------------------------------------------------------------
def measure_complexity(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    *,
    kinds: Sequence[str] = ("relu",),
    bandwidth: str = "dims",
    alpha: float | None = None,
    per_layer: bool = True,
    suffix: bool = False,
    tc: bool = False,
    rates: bool = True,
    mutual_information: bool | None = None,
) -> list[dict[str, Any]]:
    """Complexity metrics of ``model`` on the analysis set as tidy rows.

    Rows have keys ``layer`` (a gating-layer name, or ``"__all__"`` for the
    concatenated Sigma, or ``"suffix:l"`` for (Sigma_l..Sigma_L)), ``metric``,
    ``value`` and ``bin`` (histogram bin, else None).  Metrics: ``H`` (Eq. 2),
    ``I_XSY`` (Eq. 4, when labels are given), ``I_XS`` (Eq. 3, for models with
    sampling), ``TC`` (Eq. 28), ``C`` (Eq. 6), ``H_plugin``, ``width``, ``alpha``,
    ``saturated_H`` and ``rate_hist``.  The model is put in eval mode for the
    recording (so dropout does not gate) and restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        has_sampling = any(hasattr(m, "tcomplex_sampling") for m in model.modules())
        if mutual_information is None:
            mutual_information = has_sampling
        rec = record_gates(model, x, kinds=kinds)
        rec_det = record_gates(model, x, kinds=kinds, sampling=False) if mutual_information else None
    finally:
        model.train(was_training)

    def metrics_for(layer: str, states: Tensor, det: Tensor | None, a: float, with_tc: bool,
                    sq_dists: Tensor | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def add(metric: str, value: float, bin_: int | None = None) -> None:
            out.append({"layer": layer, "metric": metric, "value": float(value), "bin": bin_})

        if sq_dists is not None:  # H and the class terms of Eq. 4 from one distance matrix
            h, ixsy = est.kde_entropy_from_distances(
                sq_dists, sigma2=est.kde_bandwidth(states, alpha=a, bandwidth=bandwidth), labels=y)
        elif y is not None:  # H(Sigma) is a term of Eq. 4: computed once for both
            h, ixsy = est.kde_entropy_and_interaction(states, y, alpha=a, bandwidth=bandwidth)
        else:
            h, ixsy = est.kde_entropy(states, alpha=a, bandwidth=bandwidth), None
        add("H", h)
        add("saturated_H", float(h.saturated))
        add("alpha", a)
        add("width", states.shape[1])
        if ixsy is not None:
            add("I_XSY", ixsy)
        if det is not None:
            add("I_XS", est.kde_mutual_information(det, alpha=a, bandwidth=bandwidth))
        add("C", est.marginal_entropy_sum(states))
        if with_tc:
            add("TC", est.kde_total_correlation(states, alpha=a, bandwidth=bandwidth))
        if rates:
            r = est.activation_rates(states).numpy()
            counts, _ = np.histogram(r, bins=RATE_BINS, range=(0.0, 1.0))
            for b, c in enumerate(counts):
                add("rate_hist", c, b)
            add("rate_mean", r.mean())
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", est.SaturationWarning)
        # with per-layer metrics and a moderate n, the whole network's squared distances are the
        # sum of the layers': one GEMM per layer serves both (and the class terms of Eq. 4)
        dense = per_layer and len(x) <= DENSE_MAX_SAMPLES
        total: Tensor | None = None
        layer_rows: list[dict[str, Any]] = []
        if per_layer:
            for name in rec.names:
                a = alpha if alpha is not None else rec.info[name].default_alpha
                states = rec.packed([name])  # bits: distances by XOR + popcount on the CPU
                d2 = est.squared_distances(states) if dense else None
                layer_rows += metrics_for(name, states, rec_det.packed([name]) if rec_det is not None else None, a, tc, d2)
                if d2 is not None:
                    total = d2 if total is None else total.add_(d2)
        a_all = alpha if alpha is not None else rec.default_alpha()
        rows = metrics_for(ALL, rec.packed(), rec_det.packed() if rec_det is not None else None, a_all, False, total)
        rows += layer_rows
        if suffix:
            kde = est.layerwise_entropies(rec, alpha=alpha, bandwidth=bandwidth)
            plug = est.layerwise_entropies(rec, estimator="plugin")
            for l, (hk, hp) in enumerate(zip(kde, plug), start=1):
                rows.append({"layer": f"suffix:{l}", "metric": "H", "value": float(hk), "bin": None})
                rows.append({"layer": f"suffix:{l}", "metric": "H_plugin", "value": float(hp), "bin": None})
    return rows


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _config_columns(cfg: TrainConfig) -> dict[str, Any]:
    cols: dict[str, Any] = {"run_id": cfg.run_id}
    for k, v in cfg.to_dict().items():
        if isinstance(v, (dict, list, tuple)):
            v = json.dumps(v, sort_keys=True)
        cols[k] = v
    return cols


def _write_rows(run: Path, epoch: int, rows: list[dict[str, Any]], cfg: TrainConfig) -> None:
    df = pd.DataFrame(rows)
    df.insert(0, "epoch", epoch)
    for k, v in reversed(list(_config_columns(cfg).items())):
        if k not in df.columns:
            df.insert(0, k, v)
    (run / "rows").mkdir(exist_ok=True)
    _atomic_write_bytes(run / "rows" / f"epoch_{epoch:05d}.csv", df.to_csv(index=False).encode())


def load_results(root: str | os.PathLike[str], *, finished_only: bool = False) -> pd.DataFrame:
    """All rows of all runs under ``root`` as one tidy DataFrame (empty if none)."""
    frames = []
    for run in sorted(Path(root).glob("*/config.json")):
        d = run.parent
        if finished_only and not (d / "finished.json").exists():
            continue
        for f in sorted((d / "rows").glob("epoch_*.csv")):
            frames.append(pd.read_csv(f))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def _read_rows(run: Path) -> pd.DataFrame:
    files = sorted((run / "rows").glob("epoch_*.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else pd.DataFrame()


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------
def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "step":
        ms = [max(1, int(cfg.epochs * 0.5)), max(1, int(cfg.epochs * 0.75))]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=0.1)
    raise ValueError(f"schedule must be none, cosine or step, got {cfg.schedule!r}")


def _epoch_batches(cfg: TrainConfig, d: _Data, epoch: int):
    seed = cfg.seed * 1_000_003 + epoch
    if d.train_x is not None:
        augment = cfg.dataset if cfg.augment else None
        return data_mod.make_loader(d.train_x, d.train_y, batch_size=cfg.batch_size, shuffle=True, seed=seed, augment=augment)
    return data_mod.make_loader(d.train_ds, batch_size=cfg.batch_size, shuffle=True, seed=seed)


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def check_data(cfg: TrainConfig, data_root: str | os.PathLike[str] | None = None) -> None:
    """Raise the error :func:`train` would raise about ``cfg``'s data, before any training.

    Loads the dataset files and draws the training subset and the analysis set
    (cheap for the in-memory datasets; for the others only the files are checked),
    so a grid of runs fails at once instead of after hours of other runs.
    """
    info = data_mod.DATASETS.get(cfg.dataset)
    if info is None:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; valid: {sorted(data_mod.DATASETS)}")
    root = data_mod.resolve_data_root(data_root)
    if not info.in_memory:
        data_mod.load_dataset(cfg.dataset, "train", data_root=root)
        return
    _prepare_data(cfg, str(root))


def train(
    config: TrainConfig | dict[str, Any],
    root: str | os.PathLike[str] = "runs",
    *,
    data_root: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    penalty_factory: Callable[..., Any] | None = None,
) -> RunResult:
    """Train one run with complexity tracking; resume it if it was interrupted.

    Parameters
    ----------
    config: a :class:`TrainConfig` (or a dict of its fields).
    root: directory holding one sub-directory per run.
    data_root: the data root (see :func:`tcomplex.experiments.data.resolve_data_root`).
    progress: show tqdm bars (default: only when a person watches a terminal).
    penalty_factory: builds the complexity penalty when ``complexity_lambda > 0``
        (default: :func:`tcomplex.ebm.ComplexityPenalty.for_model`).

    Returns
    -------
    RunResult with the run's rows (all tracked epochs) as a DataFrame.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    root = Path(root)
    run = run_dir(root, cfg)
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if (run / "finished.json").exists():
        log.info("run %s is finished; not redone", cfg.run_id)
        return RunResult(cfg.run_id, run, _read_rows(run), None, 0.0)
    _atomic_write_bytes(run / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True).encode())
    show = _show_progress() if progress is None else progress
    device = _device(cfg.device)
    resolved_root = str(data_mod.resolve_data_root(data_root))

    torch.manual_seed(cfg.seed)
    task_net = None
    if cfg.task == "regress":
        info = data_mod.DATASETS[cfg.dataset]
        task_net = models_mod.build_model(
            "task_mlp", in_channels=info.shape[0], input_size=info.shape[-1], n_relu=cfg.task_n,
            seed=cfg.task_seed, num_classes=cfg.model_kwargs.get("num_classes", 10),
        ).to(device)
    d = _prepare_data(cfg, resolved_root)
    torch.manual_seed(cfg.seed)
    model = _build(cfg, d.shape, d.num_classes).to(device)
    opt = _make_optimizer(cfg, model.parameters())
    sched = _make_scheduler(cfg, opt)
    penalty = None
    if cfg.complexity_lambda > 0:
        if penalty_factory is None:
            from tcomplex.ebm import ComplexityPenalty

            penalty_factory = ComplexityPenalty.for_model
        penalty = penalty_factory(model, d.analysis_x[: cfg.batch_size].to(device), lam=cfg.complexity_lambda,
                                  layers=cfg.complexity_layers, **cfg.complexity_options)

    start_epoch, resumed = 0, None
    ckpt_path = run / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        if penalty is not None and state.get("penalty") is not None:
            penalty.load_state_dict(state["penalty"])
        start_epoch = resumed = int(state["epoch"])
        log.info("resuming %s from epoch %d", cfg.run_id, start_epoch)

    epochs_to_track = set(tracked_epochs(cfg.epochs, cfg.track_every, cfg.track_log, cfg.track_epochs))
    ax = d.analysis_x.to(device)
    ay = d.analysis_y.to(device) if d.analysis_y is not None else None
    if d.train_x is not None:
        ex, ey = _subset(d.train_x, d.train_y, cfg.eval_train_size, 3_000_017)
    else:
        ex = ey = None

    def eval_sets():
        if ex is not None:
            return _tensor_batches(ex, ey), _tensor_batches(d.test_x, d.test_y)
        sub = torch.utils.data.Subset(d.train_ds, list(range(min(cfg.eval_train_size, len(d.train_ds)))))
        return (data_mod.make_loader(sub, batch_size=256, shuffle=False),
                data_mod.make_loader(d.test_ds, batch_size=256, shuffle=False))

    def track(epoch: int, epoch_loss: float | None, seconds: float | None) -> None:
        rows = measure_complexity(
            model, ax, ay if cfg.task != "regress" else None, kinds=cfg.kinds, bandwidth=cfg.bandwidth,
            alpha=cfg.alpha, per_layer=cfg.per_layer, suffix=cfg.suffix, tc=cfg.tc, rates=cfg.rates,
        )
        tr, te = eval_sets()
        train_loss, train_acc = _evaluate(cfg, model, tr, device, task_net)
        test_loss, test_acc = _evaluate(cfg, model, te, device, task_net)
        for metric, value in (("train_loss", train_loss), ("test_loss", test_loss),
                              ("train_acc", train_acc), ("test_acc", test_acc),
                              ("loss_gap", test_loss - train_loss)):
            rows.append({"layer": ALL, "metric": metric, "value": value, "bin": None})
        if epoch_loss is not None:
            rows.append({"layer": ALL, "metric": "epoch_train_loss", "value": epoch_loss, "bin": None})
        if seconds is not None:
            rows.append({"layer": ALL, "metric": "epoch_seconds", "value": seconds, "bin": None})
        if penalty is not None:
            for k, v in penalty.diagnostics().items():
                rows.append({"layer": ALL, "metric": k, "value": v, "bin": None})
        _save_checkpoint(ckpt_path, {
            "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "penalty": penalty.state_dict() if penalty is not None else None,
            "config": cfg.to_dict(),
            "rows": rows,  # so a kill before the rows file is written loses none of them
        })
        _write_rows(run, epoch, rows, cfg)
        h = next(r["value"] for r in rows if r["layer"] == ALL and r["metric"] == "H")
        log.info("%s epoch %d: H=%.3f bits, test_loss=%.4f, test_acc=%.4f", cfg.run_id, epoch, h, test_loss, test_acc)

    # a checkpoint whose rows were not written yet (killed in between): write them now
    if resumed is not None and not (run / "rows" / f"epoch_{resumed:05d}.csv").exists():
        if state.get("rows") is not None:
            _write_rows(run, resumed, state["rows"], cfg)
        else:  # checkpoint of an older version: recompute (loses epoch_train_loss/seconds)
            track(resumed, None, None)
    if start_epoch == 0 and 0 in epochs_to_track and not (run / "rows" / "epoch_00000.csv").exists():
        track(0, None, None)

    bar = tqdm(range(start_epoch + 1, cfg.epochs + 1), desc=cfg.run_id, disable=not show, unit="epoch")
    for epoch in bar:
        torch.manual_seed(cfg.seed * 7919 + epoch)
        model.train()
        t_ep = time.perf_counter()
        total, count = 0.0, 0
        for x, y in _epoch_batches(cfg, d, epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, _, b = _forward_loss(cfg, model, x, y, task_net)
            if penalty is not None:
                # Section 4.3: per batch, first fit the EBM to this batch's (detached) gates,
                # then penalise the gates with the EBM held fixed
                penalty.step_energy_model()
                loss = loss + penalty.loss()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"run {cfg.run_id}: the loss became {float(loss.detach())} at epoch {epoch}; lower the learning "
                    "rate (or λ of the complexity loss)"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * b
            count += b
        if sched is not None:
            sched.step()
        seconds = time.perf_counter() - t_ep
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        if epoch in epochs_to_track:
            track(epoch, total / max(count, 1), seconds)

    rows = _read_rows(run)
    elapsed = time.perf_counter() - t0
    _atomic_write_bytes(run / "finished.json", json.dumps({"seconds": elapsed, "epochs": cfg.epochs}).encode())
    return RunResult(cfg.run_id, run, rows, resumed, elapsed)
