"""Training with complexity tracking (Sections 4.2-4.4).

One function, :func:`train`, trains a model of the registry on a dataset of the
registry and, at chosen epochs, records the gating states of the analysis set
(Appendix I) and stores the complexity metrics as tidy rows:
one row per run x epoch x layer x metric.

A run lives in ``<root>/<run_id>/``:

* ``config.json``: the full :class:`TrainConfig` (``run_id`` is its hash);
* ``rows/epoch_XXXXX.csv``: the rows of one tracked epoch, written atomically
  (temporary file + rename), so a killed run never leaves half a row;
* ``rows/steps_XXXXX.csv``: with ``track_steps``, the rows measured after the
  listed optimiser steps that fall in epoch XXXXX (sub-epoch resolution), also
  atomic and never read with the epoch rows (:func:`read_step_rows`);
* ``checkpoint.pt``: model, optimiser and scheduler state after every epoch,
  written atomically (before a tracked epoch's rows, which it also holds);
* ``finished.json``: written last; a finished run is not redone.

:class:`tcomplex.experiments.runs.RunDir` owns these files.  The public pieces
of the loop (:func:`prepare_data`, :func:`analysis_set_for`,
:func:`build_model_for`, :func:`make_optimizer`, :func:`evaluate`, ...) and the
callbacks of :func:`train` let a study record what it needs per epoch without a
second training loop.

Randomness is a function of (seed, epoch): the batch order and augmentation of
epoch e are seeded from them and the global torch RNG is reseeded at the start
of every epoch, so resuming from a checkpoint gives exactly the rows of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from tcomplex.experiments import data as data_mod
from tcomplex.experiments import models as models_mod
from tcomplex.experiments.measure import ALL, RATE_BINS, measure_complexity
from tcomplex.experiments.runs import RunDir, RunFileError, load_results

__all__ = [
    "TrainConfig",
    "RunResult",
    "TrainState",
    "Data",
    "train",
    "tracked_epochs",
    "validate_config",
    "check_data",
    "prepare_data",
    "analysis_set_for",
    "build_model_for",
    "build_task_net",
    "device_for",
    "forward_loss",
    "evaluate",
    "eval_batches",
    "tensor_batches",
    "epoch_batches",
    "make_optimizer",
    "make_scheduler",
    "subset",
    "load_results",
    "run_dir",
    "read_step_rows",
    "steps_per_epoch",
    "measure_complexity",
    "ALL",
    "RATE_BINS",
    "CALLBACK_EVENTS",
    "RECIPES",
    "recipe",
    "recipe_config",
]

log = logging.getLogger("tcomplex.train")



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
    schedule: str = "none"  # none | cosine | step (x0.1 at 50% and 75%) | log (lr -> lr/100, log-spaced per epoch)
    augment: bool = False
    flip: bool = False  # random horizontal flip of training batches (the authors' MNIST loader)
    memory_format: str = "contiguous"  # or channels_last (conv nets: ~1.4x faster on the CPU)
    vae_ce_weight: float = 1.0  # task="vae": weight of the classifier's cross-entropy beside reconstruction + KL
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
    # optimiser steps (counted from the start of training; 0 = before the first) after which the metrics are
    # also measured, e.g. 0, 1, 2, 4, ..., 512 for the first epoch at sub-epoch resolution (rows/steps_*.csv)
    track_steps: list[int] | None = None
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
        for key, default in (("data_seed", None), ("normalization", "dataset"), ("flip", False),
                             ("memory_format", "contiguous"), ("vae_ce_weight", 1.0), ("track_steps", None)):
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
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # rows of ``track_steps`` (read_step_rows)


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
    """``<root>/<run_id>``: the folder of ``config``'s run (see :class:`RunDir`)."""
    return Path(root) / config.run_id


def _steps_path(run: RunDir, epoch: int) -> Path:
    return run.rows_dir / f"steps_{epoch:05d}.csv"


def read_step_rows(root: str | os.PathLike[str], config: TrainConfig) -> pd.DataFrame:
    """The rows measured at ``config.track_steps`` (empty when none): the columns of the epoch rows
    plus ``step`` (optimiser steps since the start of training) and ``epoch_fraction`` (step /
    steps per epoch); ``epoch`` is the epoch in progress (1 for step 0)."""
    run = RunDir(root, config)
    files = sorted(run.rows_dir.glob("steps_*.csv")) if run.rows_dir.is_dir() else []
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def steps_per_epoch(cfg: TrainConfig, d: Data) -> int:
    """Optimiser steps in one epoch of ``cfg`` on the prepared data ``d`` (the number of batches)."""
    n = len(d.train_x) if d.train_x is not None else len(d.train_ds)
    return math.ceil(n / cfg.batch_size)  # epoch_batches keeps the last, smaller batch


# ---------------------------------------------------------------------------
# configuration checks (no data loaded)
# ---------------------------------------------------------------------------
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step", "log")
MEMORY_FORMATS = ("contiguous", "channels_last")
BANDWIDTHS = ("dims", "variance")
CALLBACK_EVENTS = ("on_tracked_epoch", "on_epoch_end")


#: Settings, per model, under which the model learns here (measured on MNIST / Fashion-MNIST on the CPU);
#: the studies build their configs on top of :func:`recipe`, the substrate's defaults stay the authors'.
#: * mlp_alpha (11 FC layers, no bias): with SGD lr 0.01 it dies in the first epoch (every ReLU of a
#:   layer off, test loss ln 10, accuracy 0.09 at every epoch); lr 0.003 reaches 0.85 after 2 epochs of
#:   10000 MNIST images (0.82 at lr 0.001).
#: * vae_classifier: with SGD lr 0.01 the classifier head stays at 0.26 after 3 epochs of 10000 images,
#:   beside a reconstruction term summed over 784 pixels; Adam lr 1e-3 reaches 0.87, and with the
#:   classifier's cross-entropy weighted 50 (still ~5% of the loss) 0.93.
#: * conv nets: channels_last memory format; training images/s at 28x28, batch 128, 2 idle cores,
#:   contiguous -> channels_last: LeNet-5 18100 -> 30500, ResNet-20 1090 -> 1330, ResNet-32 690 -> 830,
#:   revised VGG-11 320 -> 360.
RECIPES: dict[str, dict[str, Any]] = {
    "lenet5": {"memory_format": "channels_last"},
    "mlp_alpha": {"lr": 0.003},
    "vae_classifier": {"optimizer": "adam", "lr": 1e-3, "vae_ce_weight": 50.0},
    "resnet20": {"memory_format": "channels_last"},
    "resnet32": {"memory_format": "channels_last"},
    "resnet18": {"memory_format": "channels_last"},
    "resnet34": {"memory_format": "channels_last"},
    "vgg11_revised": {"memory_format": "channels_last"},
    "vgg16": {"memory_format": "channels_last"},
}


def recipe(model: str) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of :data:`RECIPES` for ``model`` (empty: the defaults learn)."""
    if model not in models_mod.list_models():
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(models_mod.list_models())}")
    return dict(RECIPES.get(model, {}))


def recipe_config(model: str, **fields: Any) -> TrainConfig:
    """A :class:`TrainConfig` of ``model`` on top of its :func:`recipe`: the recipe's fields, then
    ``fields`` (which win where both set one, e.g. a study's own learning rate)."""
    return TrainConfig(**{**recipe(model), **fields, "model": model})


def validate_config(cfg: TrainConfig) -> None:
    """Raise ValueError (TypeError for model options the model does not take) for every problem of ``cfg`` that needs no data: unknown model, dataset,
    optimizer, schedule, bandwidth, gating kind, bad alpha or tracked epochs, model options the
    model does not take.  :func:`train` calls it before loading any data; ``tcomplex sweep --dry-run``
    calls it for every run of a grid.
    """
    if cfg.model not in models_mod.list_models():
        raise ValueError(f"unknown model {cfg.model!r}; valid models: {', '.join(models_mod.list_models())}")
    if cfg.dataset not in data_mod.DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(data_mod.DATASETS)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {list(MEMORY_FORMATS)}, got {cfg.memory_format!r}")
    if cfg.flip and cfg.augment and data_mod.DATASETS[cfg.dataset].crop_padding is not None:
        raise ValueError(f"flip=True with augment=True: {cfg.dataset}'s augmentation already flips; set one of them")
    if cfg.flip and not data_mod.DATASETS[cfg.dataset].in_memory:
        raise ValueError(f"flip is available for the in-memory datasets only, not {cfg.dataset!r} (use augment)")
    if not cfg.vae_ce_weight > 0:
        raise ValueError(f"vae_ce_weight must be > 0, got {cfg.vae_ce_weight}")
    if cfg.bandwidth not in BANDWIDTHS:
        raise ValueError(f"bandwidth must be one of {list(BANDWIDTHS)}, got {cfg.bandwidth!r}")
    if cfg.alpha is not None and not cfg.alpha > 0:
        raise ValueError(f"alpha must be > 0 (or None for the per-layer default), got {cfg.alpha}")
    bad_kinds = [k for k in cfg.kinds if k not in ("relu", "maxpool", "dropout")]
    if bad_kinds:
        raise ValueError(f"kinds {bad_kinds} unknown; valid gating kinds: relu, maxpool, dropout")
    for name in ("batch_size", "analysis_per_class", "analysis_size", "eval_train_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    tracked_epochs(cfg.epochs, cfg.track_every, cfg.track_log, cfg.track_epochs)
    if cfg.track_steps is not None:
        bad_steps = [s for s in cfg.track_steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad_steps or not cfg.track_steps:
            raise ValueError(f"track_steps must be a non-empty list of optimiser steps >= 0 (or None), got "
                             f"{cfg.track_steps}")
    try:
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the global RNG as it was
            build_model_for(cfg)
    except (TypeError, ValueError) as exc:  # same type, so callers that sort errors by type still can
        raise type(exc)(f"model {cfg.model!r} cannot be built with model_kwargs={cfg.model_kwargs}: {exc}") from exc


# ---------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------
@dataclass
class Data:
    """The tensors (in-memory datasets) or Datasets of one run, and its analysis set (Appendix I)."""

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


def subset(x: Tensor, y: Tensor, k: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` of a permutation of (x, y) seeded with ``seed`` (all when k is None or >= n)."""
    if k is None or k >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]
    return x[idx], y[idx]


def _data_seed(cfg: TrainConfig) -> int:
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def _train_tensors(cfg: TrainConfig, data_root: str) -> tuple[Tensor, Tensor]:
    tx, ty = data_mod.load_tensors(cfg.dataset, "train", data_root=data_root, normalization=cfg.normalization)
    return subset(tx, ty, cfg.train_subset, 1_000_003 + _data_seed(cfg))


def _train_dataset(cfg: TrainConfig, data_root: str, augment: bool) -> Any:
    ds = data_mod.load_dataset(cfg.dataset, "train", data_root=data_root, augment=augment)
    if cfg.train_subset is not None:
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1_000_003 + _data_seed(cfg)))
        ds = torch.utils.data.Subset(ds, idx[: cfg.train_subset].tolist())
    return ds


def _draw_analysis(cfg: TrainConfig, tx: Tensor | None, ty: Tensor | None, train_ds: Any, data_root: str,
                   per_class: int) -> tuple[Tensor, Tensor | None]:
    if cfg.task == "regress":
        # no classes: a seeded random subset of the training images
        src = tx if tx is not None else torch.stack([train_ds[i][0] for i in range(min(len(train_ds), cfg.analysis_size))])
        ax, _ = subset(src, torch.zeros(len(src)), cfg.analysis_size, cfg.analysis_seed)
        return ax, None
    source = (tx, ty) if tx is not None else cfg.dataset
    try:
        return data_mod.analysis_set(source, per_class=per_class, seed=cfg.analysis_seed, data_root=data_root)
    except ValueError as exc:
        if cfg.train_subset is None:
            raise
        raise ValueError(
            f"the analysis set is drawn from the training images, and the train_subset of "
            f"{cfg.train_subset} images of {cfg.dataset} is too small for analysis_per_class="
            f"{per_class} ({exc}): raise train_subset or lower analysis_per_class"
        ) from None


def prepare_data(cfg: TrainConfig, data_root: str | os.PathLike[str] | None = None) -> Data:
    """Load the run's train/test data (subsets, normalisation) and draw its analysis set.

    The analysis set is :func:`analysis_set_for` ``(cfg)``: ``analysis_per_class``
    training images per class of the run's own training images (after
    ``train_subset``, with the run's ``normalization``), Appendix I.
    """
    validate_config(cfg)
    info = data_mod.DATASETS[cfg.dataset]
    root = str(data_mod.resolve_data_root(data_root))
    if info.in_memory:
        tx, ty = _train_tensors(cfg, root)
        vx, vy = data_mod.load_tensors(cfg.dataset, "test", data_root=root, normalization=cfg.normalization)
        vx, vy = subset(vx, vy, cfg.test_subset, 2_000_003)
        train_ds = test_ds = None
    else:
        tx = ty = vx = vy = None
        train_ds = _train_dataset(cfg, root, cfg.augment)
        test_ds = data_mod.load_dataset(cfg.dataset, "test", data_root=root)
        if cfg.test_subset is not None:
            test_ds = torch.utils.data.Subset(test_ds, list(range(min(cfg.test_subset, len(test_ds)))))
    ax, ay = _draw_analysis(cfg, tx, ty, train_ds, root, cfg.analysis_per_class)
    return Data(tx, ty, vx, vy, train_ds, test_ds, ax, ay, info.num_classes, tuple(info.shape))


def analysis_set_for(cfg: TrainConfig, data_root: str | os.PathLike[str] | None = None, *,
                     per_class: int | None = None, full_split: bool = False) -> tuple[Tensor, Tensor | None]:
    """The analysis images (and labels; None for regression) of ``cfg``'s run: the one way they are chosen.

    Appendix I: complexity is computed on images sampled from the training set.
    By default these are the images :func:`train` measures at every tracked
    epoch: ``analysis_per_class`` per class (``per_class`` overrides the number;
    the draw is seeded by ``analysis_seed``), or ``analysis_size`` random images
    for regression.  For the in-memory datasets (MNIST, Fashion-MNIST, CIFAR-10)
    they come from the run's own training images (after ``train_subset``) with
    the run's ``normalization``; for the file-backed ones (CelebA, VOC crops,
    Tiny ImageNet) a classification run draws them from the full training split.

    ``full_split=True`` ignores ``train_subset`` (the run's normalisation still
    applies): every run on a dataset then gets the same images, whatever its
    seed, e.g. to compare models across seeds on one image set, or to measure
    more images per class than a small training subset holds.
    """
    validate_config(cfg)
    if full_split and cfg.train_subset is not None:
        cfg = dataclasses.replace(cfg, train_subset=None)
    info = data_mod.DATASETS[cfg.dataset]
    root = str(data_mod.resolve_data_root(data_root))
    n = cfg.analysis_per_class if per_class is None else int(per_class)
    if info.in_memory:
        tx, ty = _train_tensors(cfg, root)
        return _draw_analysis(cfg, tx, ty, None, root, n)
    # classification draws from the dataset by name; only regression reads the run's training Dataset
    train_ds = _train_dataset(cfg, root, cfg.augment) if cfg.task == "regress" else None
    return _draw_analysis(cfg, None, None, train_ds, root, n)


def build_model_for(cfg: TrainConfig, shape: tuple[int, ...] | None = None,
                    num_classes: int | None = None) -> nn.Module:
    """The registry model of ``cfg`` for its dataset's input shape and classes (not seeded here).

    :func:`train` seeds torch with ``cfg.seed`` right before calling it, so
    ``torch.manual_seed(cfg.seed); build_model_for(cfg)`` is the run's initial model.
    """
    if shape is None or num_classes is None:
        info = data_mod.DATASETS.get(cfg.dataset)
        if info is None:
            raise ValueError(f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(data_mod.DATASETS)}")
        shape, num_classes = tuple(info.shape), info.num_classes
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("in_channels", shape[0])
    kwargs.setdefault("input_size", shape[-1])
    kwargs.setdefault("num_classes", num_classes)
    return models_mod.build_model(cfg.model, **kwargs)


def build_task_net(cfg: TrainConfig) -> nn.Module | None:
    """The frozen task MLP a ``task="regress"`` run regresses onto (Section 4.2); None for other tasks."""
    if cfg.task != "regress":
        return None
    info = data_mod.DATASETS[cfg.dataset]
    return models_mod.build_model(
        "task_mlp", in_channels=info.shape[0], input_size=info.shape[-1], n_relu=cfg.task_n,
        seed=cfg.task_seed, num_classes=cfg.model_kwargs.get("num_classes", 10),
    )


def device_for(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------
# losses, evaluation, batches
# ---------------------------------------------------------------------------
def forward_loss(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor,
                 task_net: nn.Module | None = None) -> tuple[Tensor, Tensor, int]:
    """The task loss of one batch: (loss, number correct, batch size).

    classify: cross-entropy; regress: MSE onto the task MLP's output (Section
    4.2); vae: Bernoulli reconstruction + KL + cross-entropy of the classifier head.
    """
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
    return rec + kl + cfg.vae_ce_weight * ce, (logits.argmax(1) == y).sum(), len(y)


@torch.no_grad()
def evaluate(cfg: TrainConfig, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
             device: torch.device | str = "cpu", task_net: nn.Module | None = None) -> tuple[float, float]:
    """Mean task loss and accuracy of ``model`` over ``batches`` (eval mode; accuracy 0 for regression)."""
    model.eval()
    total, correct, count = 0.0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss, c, b = forward_loss(cfg, model, x, y, task_net)
        total += float(loss) * b
        correct += float(c)
        count += b
    return total / max(count, 1), correct / max(count, 1)


def tensor_batches(x: Tensor, y: Tensor, batch_size: int = 256) -> Iterable[tuple[Tensor, Tensor]]:
    """(x, y) in consecutive batches (no shuffling), for :func:`evaluate`."""
    # 256: LeNet-5 evaluates 1.7x faster than with 1000-image batches on the CPU (cache)
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def eval_batches(cfg: TrainConfig, d: Data) -> tuple[Iterable[tuple[Tensor, Tensor]], Iterable[tuple[Tensor, Tensor]]]:
    """Batches of the ``eval_train_size`` training images and of the test images where loss/accuracy are measured."""
    if d.train_x is not None:
        ex, ey = subset(d.train_x, d.train_y, cfg.eval_train_size, 3_000_017)
        return tensor_batches(ex, ey), tensor_batches(d.test_x, d.test_y)
    sub = torch.utils.data.Subset(d.train_ds, list(range(min(cfg.eval_train_size, len(d.train_ds)))))
    return (data_mod.make_loader(sub, batch_size=256, shuffle=False),
            data_mod.make_loader(d.test_ds, batch_size=256, shuffle=False))


def make_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (lr, momentum, weight decay; the authors' defaults) or Adam, as ``cfg`` says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    """None, cosine annealing over the epochs, x0.1 steps at 50% and 75% of them, or log.

    ``log``: the learning rate of epoch e (1-based) is ``lr * 0.01 ** ((e - 1) / (epochs - 1))``,
    log-spaced from ``lr`` down to ``lr / 100`` over the run (the authors' loop: 0.01 to 1e-4).
    """
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "log":
        span = max(cfg.epochs - 1, 1)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.01 ** (min(e, span) / span))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.schedule == "step":
        ms = [max(1, int(cfg.epochs * 0.5)), max(1, int(cfg.epochs * 0.75))]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=0.1)
    raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {cfg.schedule!r}")


def epoch_batches(cfg: TrainConfig, d: Data, epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
    """The shuffled (and, with ``augment``, augmented) training batches of ``epoch``, seeded by (seed, epoch)."""
    seed = cfg.seed * 1_000_003 + epoch
    if d.train_x is not None:
        augment: Any = cfg.dataset if cfg.augment else None
        if cfg.flip and augment is None:
            augment = data_mod.RandomFlip(seed)
        return data_mod.make_loader(d.train_x, d.train_y, batch_size=cfg.batch_size, shuffle=True, seed=seed, augment=augment)
    return data_mod.make_loader(d.train_ds, batch_size=cfg.batch_size, shuffle=True, seed=seed)


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def check_data(cfg: TrainConfig, data_root: str | os.PathLike[str] | None = None) -> None:
    """Raise the error :func:`train` would raise about ``cfg`` (config, then data), before any training.

    Checks the config (:func:`validate_config`), loads the dataset files and
    draws the training subset and the analysis set (cheap for the in-memory
    datasets; for the others only the files are checked), so a grid of runs
    fails at once instead of after hours of other runs.
    """
    validate_config(cfg)
    info = data_mod.DATASETS[cfg.dataset]
    root = data_mod.resolve_data_root(data_root)
    if not info.in_memory:
        data_mod.load_dataset(cfg.dataset, "train", data_root=root)
        return
    prepare_data(cfg, str(root))


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------
@dataclass
class TrainState:
    """What a callback of :func:`train` sees after an epoch.

    ``rows``: the tidy rows of a tracked epoch (a callback may append rows;
    they are written with the others), None at an untracked epoch.
    ``epoch_loss`` / ``seconds``: mean training loss and wall time of the epoch
    (None at epoch 0 and for an epoch recomputed after a resume).
    """

    cfg: TrainConfig
    run: RunDir
    epoch: int
    model: nn.Module
    data: Data
    device: torch.device
    rows: list[dict[str, Any]] | None
    epoch_loss: float | None
    seconds: float | None
    task_net: nn.Module | None = None


Callback = Callable[[TrainState], None]


def _callbacks(callbacks: Mapping[str, Callback | Sequence[Callback]] | None) -> dict[str, list[Callback]]:
    out: dict[str, list[Callback]] = {e: [] for e in CALLBACK_EVENTS}
    for event, fns in (callbacks or {}).items():
        if event not in out:
            raise ValueError(f"unknown callback event {event!r}; valid events: {list(CALLBACK_EVENTS)}")
        out[event] += [fns] if callable(fns) else list(fns)
    return out


def _penalty_scope(stack: contextlib.ExitStack, penalty: Any) -> Any:
    """Enter the penalty as a context manager when it is one, else remove it on exit; returns the penalty."""
    if hasattr(penalty, "__enter__") and hasattr(penalty, "__exit__"):
        return stack.enter_context(penalty) or penalty
    if hasattr(penalty, "remove"):
        stack.callback(penalty.remove)
    return penalty


def train(
    config: TrainConfig | dict[str, Any],
    root: str | os.PathLike[str] = "runs",
    *,
    data_root: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    penalty_factory: Callable[..., Any] | None = None,
    callbacks: Mapping[str, Callback | Sequence[Callback]] | None = None,
) -> RunResult:
    """Train one run with complexity tracking; resume it if it was interrupted.

    Parameters
    ----------
    config: a :class:`TrainConfig` (or a dict of its fields).
    root: directory holding one sub-directory per run (see :class:`RunDir`).
    data_root: the data root (see :func:`tcomplex.experiments.data.resolve_data_root`).
    progress: show tqdm bars (default: only when a person watches a terminal).
    penalty_factory: builds the complexity penalty when ``complexity_lambda > 0``
        (default: :func:`tcomplex.ebm.ComplexityPenalty.for_model`); used as a
        context manager when it is one, else its ``remove()`` runs on exit.
    callbacks: ``{event: fn or [fn, ...]}`` called with a :class:`TrainState`,
        in the spirit of minGPT's ``register_callback``: ``"on_tracked_epoch"``
        after the rows of a tracked epoch (epoch 0 included) are measured,
        ``"on_epoch_end"`` after every training epoch.  Both run before that
        epoch's checkpoint is written, so what they store is never behind the
        checkpoint a rerun resumes from.  A finished run is not retrained and
        calls nothing.

    With ``config.track_steps`` the metrics are also measured after those optimiser steps
    (sub-epoch resolution, e.g. the first epoch at steps 0, 1, 2, 4, ...), on a forked RNG so that
    training is unchanged; their rows are kept apart (:func:`read_step_rows`, ``RunResult.steps``).

    Every epoch ends with an atomic checkpoint, so a killed run resumes from the
    last finished epoch (whatever ``track_epochs`` says) and gives the rows of an
    uninterrupted run (randomness is a function of (seed, epoch)).

    Returns
    -------
    RunResult with the run's rows (all tracked epochs) as a DataFrame.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    validate_config(cfg)  # every config error before any data is loaded
    hooks = _callbacks(callbacks)
    run = RunDir(root, cfg)
    t0 = time.perf_counter()
    if run.is_finished():
        log.info("run %s is finished; not redone", cfg.run_id)
        return RunResult(cfg.run_id, run.path, run.read_rows(), None, 0.0, read_step_rows(root, cfg))
    run.prepare()
    run.write_config(cfg)
    show = _show_progress() if progress is None else progress
    device = device_for(cfg.device)
    resolved_root = str(data_mod.resolve_data_root(data_root))
    state = run.load_checkpoint(device)  # a corrupt checkpoint is reported before the data are loaded

    torch.manual_seed(cfg.seed)
    task_net = build_task_net(cfg)
    if task_net is not None:
        task_net = task_net.to(device)
    d = prepare_data(cfg, resolved_root)
    torch.manual_seed(cfg.seed)
    model = build_model_for(cfg, d.shape, d.num_classes).to(device)
    if cfg.memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt)
    with contextlib.ExitStack() as stack:
        penalty = None
        if cfg.complexity_lambda > 0:
            if penalty_factory is None:
                from tcomplex.ebm import ComplexityPenalty

                penalty_factory = ComplexityPenalty.for_model
            penalty = _penalty_scope(stack, penalty_factory(
                model, d.analysis_x[: cfg.batch_size].to(device), lam=cfg.complexity_lambda,
                layers=cfg.complexity_layers, **cfg.complexity_options))
        result = _train_loop(cfg, run, state, d, model, opt, sched, penalty, task_net, device, hooks, show)
    rows = run.read_rows()
    elapsed = time.perf_counter() - t0
    run.mark_finished(elapsed, cfg.epochs)
    run.compact_checkpoint()  # after the flag: a kill in between leaves a full checkpoint, never a run that cannot resume
    return RunResult(cfg.run_id, run.path, rows, result, elapsed, read_step_rows(root, cfg))


def _train_loop(cfg: TrainConfig, run: RunDir, state: dict[str, Any] | None, d: Data, model: nn.Module,
                opt: torch.optim.Optimizer, sched: Any, penalty: Any, task_net: nn.Module | None, device: torch.device,
                hooks: dict[str, list[Callback]], show: bool) -> int | None:
    """Resume from the checkpoint, then train the remaining epochs; returns the epoch resumed from (or None)."""
    start_epoch, resumed = 0, None
    if state is not None:
        if state.get("compact") and int(state["epoch"]) < cfg.epochs:
            raise RunFileError(f"checkpoint {run.checkpoint_path} is a finished run's (no optimiser state, epoch "
                               f"{state['epoch']}) but the run asks for {cfg.epochs} epochs; delete the run folder "
                               f"{run.path} to train it again")
        model.load_state_dict(state["model"])
        if "optimizer" in state:
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

    def measure_now() -> list[dict[str, Any]]:
        rows = measure_complexity(
            model, ax, ay if cfg.task != "regress" else None, kinds=cfg.kinds, bandwidth=cfg.bandwidth,
            alpha=cfg.alpha, per_layer=cfg.per_layer, suffix=cfg.suffix, tc=cfg.tc, rates=cfg.rates,
        )
        tr, te = eval_batches(cfg, d)
        train_loss, train_acc = evaluate(cfg, model, tr, device, task_net)
        test_loss, test_acc = evaluate(cfg, model, te, device, task_net)
        for metric, value in (("train_loss", train_loss), ("test_loss", test_loss),
                              ("train_acc", train_acc), ("test_acc", test_acc),
                              ("loss_gap", test_loss - train_loss)):
            rows.append({"layer": ALL, "metric": metric, "value": value, "bin": None})
        return rows

    # sub-epoch tracking: optimiser steps are a function of the epoch (every epoch has the same batches)
    step_set = set(cfg.track_steps or ())
    per_epoch = steps_per_epoch(cfg, d) if step_set else 0
    if step_set and max(step_set) > cfg.epochs * per_epoch:
        raise ValueError(f"track_steps {sorted(s for s in step_set if s > cfg.epochs * per_epoch)} lie beyond the "
                         f"run's last step {cfg.epochs * per_epoch} ({cfg.epochs} epochs x {per_epoch} steps); "
                         "drop them or train more epochs")
    rng_devices = [device.index or 0] if device.type == "cuda" else []

    step_seconds = [0.0]  # time spent measuring steps in the current epoch (not counted in epoch_seconds)

    def measure_step(step: int, epoch: int, out: list[dict[str, Any]]) -> None:
        # the measurement must not change training: its random draws (VAE sampling) come from a forked RNG
        t = time.perf_counter()
        with torch.random.fork_rng(devices=rng_devices):
            rows = measure_now()
        model.train()
        step_seconds[0] += time.perf_counter() - t
        out += [{**r, "step": step, "epoch_fraction": step / per_epoch} for r in rows]
        log.debug("%s step %d (epoch %d) measured", cfg.run_id, step, epoch)

    def write_steps(epoch: int, rows: list[dict[str, Any]]) -> None:
        run.write_rows(epoch, rows, cfg, path=_steps_path(run, epoch))

    def track(epoch: int, epoch_loss: float | None, seconds: float | None) -> list[dict[str, Any]]:
        rows = measure_now()
        if epoch_loss is not None:
            rows.append({"layer": ALL, "metric": "epoch_train_loss", "value": epoch_loss, "bin": None})
        if seconds is not None:
            rows.append({"layer": ALL, "metric": "epoch_seconds", "value": seconds, "bin": None})
        if penalty is not None:
            for k, v in penalty.diagnostics().items():
                rows.append({"layer": ALL, "metric": k, "value": v, "bin": None})
        got = {r["metric"]: r["value"] for r in rows if r["layer"] == ALL and r["metric"] in ("H", "test_loss", "test_acc")}
        log.info("%s epoch %d: H=%.3f bits, test_loss=%.4f, test_acc=%.4f", cfg.run_id, epoch, got["H"],
                 got["test_loss"], got["test_acc"])
        return rows

    def finish_epoch(epoch: int, epoch_loss: float | None, seconds: float | None, *, tracked: bool,
                     checkpoint: bool, step_rows: list[dict[str, Any]] | None = None) -> None:
        rows = track(epoch, epoch_loss, seconds) if tracked else None
        st = TrainState(cfg, run, epoch, model, d, device, rows, epoch_loss, seconds, task_net)
        if tracked:
            for fn in hooks["on_tracked_epoch"]:
                fn(st)
        if epoch > 0:
            for fn in hooks["on_epoch_end"]:
                fn(st)
        if checkpoint:
            run.save_checkpoint({
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "penalty": penalty.state_dict() if penalty is not None else None,
                "config": cfg.to_dict(),
                "rows": rows,  # so a kill before the rows file is written loses none of them
                "step_rows": step_rows or None,
            })
        if step_rows:
            write_steps(epoch, step_rows)
        if rows is not None:
            run.write_rows(epoch, rows, cfg)

    # a tracked checkpoint whose rows were not written yet (killed in between): write them now
    if resumed is not None and resumed in epochs_to_track and not run.has_rows(resumed):
        if state.get("rows") is not None:
            run.write_rows(resumed, state["rows"], cfg)
        else:  # checkpoint of an older version: recompute (loses epoch_train_loss/seconds)
            finish_epoch(resumed, None, None, tracked=True, checkpoint=False)
    if resumed is not None and state.get("step_rows") and not _steps_path(run, resumed).exists():
        write_steps(resumed, state["step_rows"])
    if start_epoch == 0 and 0 in epochs_to_track and not run.has_rows(0):
        finish_epoch(0, None, None, tracked=True, checkpoint=False)

    bar = tqdm(range(start_epoch + 1, cfg.epochs + 1), desc=cfg.run_id, disable=not show, unit="epoch")
    for epoch in bar:
        torch.manual_seed(cfg.seed * 7919 + epoch)
        model.train()
        t_ep = time.perf_counter()
        total, count = 0.0, 0
        step = (epoch - 1) * per_epoch
        step_rows: list[dict[str, Any]] = []
        step_seconds[0] = 0.0
        if epoch == 1 and 0 in step_set:
            measure_step(0, epoch, step_rows)
        for x, y in epoch_batches(cfg, d, epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.memory_format == "channels_last" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, _, b = forward_loss(cfg, model, x, y, task_net)
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
            step += 1
            if step in step_set:
                measure_step(step, epoch, step_rows)
        if sched is not None:
            sched.step()
        seconds = time.perf_counter() - t_ep - step_seconds[0]
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        finish_epoch(epoch, total / max(count, 1), seconds, tracked=epoch in epochs_to_track, checkpoint=True,
                     step_rows=step_rows)
    return resumed
