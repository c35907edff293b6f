"""Real datasets for the experiments of the paper (Section 4.4, Appendix I).

Every dataset is read through torchvision's own dataset classes (or, for
Tiny ImageNet, which torchvision lacks, from the official on-disk layout), so
the files under the data root must be laid out exactly as torchvision expects:

===================  ==========================================================
name                 files under the data root
===================  ==========================================================
``mnist``            ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
``fashion_mnist``    ``FashionMNIST/raw/`` (same four files)
``cifar10``          ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
``cifar10_gray``     same as ``cifar10``; converted to one gray channel
``celeba``           ``celeba/img_align_celeba/*.jpg`` and the five ``list_*.txt``
                     / ``identity_CelebA.txt`` annotation files
``voc2012_crops``    ``VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}``
``tiny_imagenet10``  ``tiny-imagenet-200/{wnids.txt,train/,val/}``
===================  ==========================================================

Nothing is ever substituted: when the files are missing (and downloading is
off or fails) a :class:`DatasetNotFoundError` says what was expected where.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.utils import download_and_extract_archive

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "RandomCropFlip",
    "TinyImageNetSubset",
    "VOCObjectCrops",
    "CelebAAttribute",
    "VOC_CLASSES",
    "analysis_set",
    "batch_augmentation",
    "RandomFlip",
    "clear_cache",
    "load_dataset",
    "load_tensors",
    "make_loader",
    "resolve_data_root",
]

ENV_VAR = "TCOMPLEX_DATA"
SPLITS = ("train", "test")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

_MNIST_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(
    f"cifar-10-batches-py/{f}"
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
              "data_batch_5", "test_batch", "batches.meta")
)  # fmt: skip
_CELEBA_FILES = tuple(
    f"celeba/{f}"
    for f in ("img_align_celeba/", "list_attr_celeba.txt", "identity_CelebA.txt",
              "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt",
              "list_eval_partition.txt")
)  # fmt: skip
_VOC_FILES = tuple(
    f"VOCdevkit/VOC2012/{f}"
    for f in ("JPEGImages/", "Annotations/", "ImageSets/Main/train.txt",
              "ImageSets/Main/val.txt")
)  # fmt: skip
_TINY_FILES = tuple(
    f"tiny-imagenet-200/{f}"
    for f in ("wnids.txt", "train/", "val/images/", "val/val_annotations.txt")
)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset.

    Attributes
    ----------
    name : str
        Registry key.
    num_classes : int
        Number of labels.
    shape : tuple of int
        ``(C, H, W)`` of one image (at the default ``size`` option, if any).
    mean, std : tuple of float
        Per-channel normalisation constants (pixel values in [0, 1]).
    in_memory : bool
        Whether :func:`load_tensors` supports the dataset.
    crop_padding : int or None
        Training augmentation: random crop with this zero padding plus a
        random horizontal flip; ``None`` means no augmentation.
    expected : tuple of str
        Files and folders (trailing ``/``) relative to the data root.
    options : tuple of (str, object)
        Keyword options of :func:`load_dataset` and their defaults.
    description : str
        One line on what the dataset is.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool
    crop_padding: int | None
    expected: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()
    description: str = ""

    def default_options(self) -> dict[str, Any]:
        """Return the dataset's keyword options with their defaults."""
        return dict(self.options)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), True, None,
            tuple(f"MNIST/raw/{f}" for f in _MNIST_RAW),
            description="MNIST handwritten digits (torchvision.datasets.MNIST).",
        ),
        DatasetInfo(
            "fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), True, None,
            tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_RAW),
            description="Fashion-MNIST (torchvision.datasets.FashionMNIST).",
        ),
        DatasetInfo(
            "cifar10", 10, (3, 32, 32),
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 4,
            _CIFAR_FILES,
            description="CIFAR-10 (torchvision.datasets.CIFAR10).",
        ),
        DatasetInfo(
            # Mean: ITU-R 601-2 luma of the channel means.  Std: approximate
            # (luma std of the training set, about 0.239).
            "cifar10_gray", 10, (1, 32, 32), (0.4809,), (0.2390,), True, None,
            _CIFAR_FILES,
            description="CIFAR-10 converted to gray scale (PIL 'L'), input of "
            "the task MLPs of Section 4.2.",
        ),
        DatasetInfo(
            "celeba", 2, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, False, 8,
            _CELEBA_FILES,
            options=(("attribute", "Attractive"), ("size", 64)),
            description="CelebA aligned faces, centre-cropped to 178x178 and "
            "resized; label = one binary attribute. The paper does not say "
            "which attribute it classified; 'Attractive' (the most balanced "
            "one) is the default.",
        ),
        DatasetInfo(
            "voc2012_crops", 20, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, False, 8,
            _VOC_FILES,
            options=(("size", 64), ("include_difficult", False)),
            description="Pascal VOC 2012 objects cut out by their bounding "
            "boxes and resized to size x size; train = VOC 'train', "
            "test = VOC 'val' (the test annotations are not public).",
        ),
        DatasetInfo(
            "tiny_imagenet10", 10, (3, 64, 64),
            (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), False, 8,
            _TINY_FILES,
            description="The first ten classes (sorted wnids) of Tiny "
            "ImageNet; test = the official val split (test labels are withheld).",
        ),
    )
}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not under the data root."""

    def __init__(self, dataset: str, root: Path, expected: Sequence[str],
                 missing: Sequence[str] = (), reason: str | None = None) -> None:
        self.dataset = dataset
        self.root = _absolute(root)
        self.expected = tuple(expected)
        self.missing = tuple(missing)
        lines = [f"Dataset '{dataset}' not found under {self.root}."]
        if reason:
            lines.append(f"Reason: {reason}")
        lines.append("Expected there (torchvision's layout):")
        lines += [f"  {self.root / e}" for e in self.expected]
        if self.missing and len(self.missing) < len(self.expected):
            lines.append("Missing: " + ", ".join(self.missing))
        lines.append(
            f"Fix: point the data root at the folder holding these files "
            f"(--data-root PATH or the {ENV_VAR} environment variable), or pass "
            f"download=True on a machine with internet access."
        )
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- #
# Paths and checks
# --------------------------------------------------------------------------- #
def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root.

    Parameters
    ----------
    data_root : path-like, optional
        Explicit root; wins over everything else.

    Returns
    -------
    pathlib.Path
        ``data_root`` if given, else ``$TCOMPLEX_DATA`` if set and non-empty,
        else ``./data`` (relative to the current directory).
    """
    if data_root is not None:
        return Path(data_root)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path("data")


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute, ``..``-free path (symlinks are kept)."""
    return Path(os.path.abspath(path))


def _info(name: str) -> DatasetInfo:
    """Look a dataset up, raising ValueError with the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}"
        ) from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _missing(info: DatasetInfo, root: Path) -> list[str]:
    """Return the expected files/folders that do not exist under ``root``."""
    return [e for e in info.expected if not (root / e).exists()]


def _resolve_options(info: DatasetInfo, options: dict[str, Any]) -> dict[str, Any]:
    """Merge ``options`` into the dataset's defaults, rejecting unknown keys."""
    allowed = info.default_options()
    unknown = set(options) - set(allowed)
    if unknown:
        raise TypeError(
            f"dataset {info.name!r} got unknown option(s) {sorted(unknown)}; "
            f"it accepts {sorted(allowed) or 'none'}"
        )
    return {**allowed, **options}


# --------------------------------------------------------------------------- #
# Datasets torchvision does not provide as such
# --------------------------------------------------------------------------- #
class CelebAAttribute(Dataset):
    """CelebA with one binary attribute as an ``int`` label (0 or 1).

    Parameters
    ----------
    celeba : torchvision.datasets.CelebA
        Built with ``target_type="attr"``; its ``transform`` is applied.
    attribute : str
        Name of the attribute column of ``list_attr_celeba.txt``.
    """

    def __init__(self, celeba: tvd.CelebA, attribute: str) -> None:
        names = [n for n in celeba.attr_names if n]
        if attribute not in names:
            raise ValueError(f"unknown CelebA attribute {attribute!r}; valid: {names}")
        self.celeba = celeba
        self.attribute = attribute
        self.targets: Tensor = celeba.attr[:, names.index(attribute)].long()

    def __len__(self) -> int:
        return len(self.celeba)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _ = self.celeba[index]
        return image, int(self.targets[index])


class VOCObjectCrops(Dataset):
    """Pascal VOC objects cut out by their bounding boxes.

    Parameters
    ----------
    voc : torchvision.datasets.VOCDetection
        Gives the image and annotation paths of a split.
    size : int
        Crops are resized (bilinear) to ``size x size``.
    include_difficult : bool
        Keep objects flagged ``difficult`` (default: skip them).
    transform : callable, optional
        Applied to the resized PIL crop.
    """

    def __init__(self, voc: tvd.VOCDetection, size: int = 64, *,
                 include_difficult: bool = False,
                 transform: Callable | None = None) -> None:
        self.size = size
        self.transform = transform
        self.objects: list[tuple[str, tuple[int, int, int, int], int]] = []
        for image_path, xml_path in zip(voc.images, voc.annotations):
            for box, label in self._read_objects(xml_path, include_difficult):
                self.objects.append((image_path, box, label))
        self.targets = [label for _, _, label in self.objects]

    @staticmethod
    def _read_objects(xml_path: str, include_difficult: bool
                      ) -> list[tuple[tuple[int, int, int, int], int]]:
        """Parse one annotation into ``(pixel box, class index)`` pairs.

        VOC boxes are 1-based and inclusive; the returned box is the PIL crop
        box ``(xmin - 1, ymin - 1, xmax, ymax)``.
        """
        tree = tvd.VOCDetection.parse_voc_xml(ElementTree.parse(xml_path).getroot())
        objects = tree["annotation"].get("object", [])
        if isinstance(objects, dict):
            objects = [objects]
        found = []
        for obj in objects:
            if not include_difficult and int(obj.get("difficult", "0") or 0):
                continue
            bb = obj["bndbox"]
            xmin, ymin, xmax, ymax = (round(float(bb[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
            found.append(((xmin - 1, ymin - 1, xmax, ymax), VOC_CLASSES.index(obj["name"].strip())))
        return found

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, box, label = self.objects[index]
        with Image.open(path) as image:
            crop = image.convert("RGB").crop(box)
        crop = crop.resize((self.size, self.size), Image.Resampling.BILINEAR)
        if self.transform is not None:
            crop = self.transform(crop)
        return crop, label


class TinyImageNetSubset(Dataset):
    """The first ``n_classes`` classes (sorted wnids) of Tiny ImageNet.

    Parameters
    ----------
    root : path-like
        Folder holding ``tiny-imagenet-200/``.
    split : {"train", "val"}
        ``val`` labels come from ``val/val_annotations.txt``.
    n_classes : int
        How many of the sorted wnids to keep.
    transform : callable, optional
        Applied to the RGB PIL image.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *,
                 n_classes: int = 10, transform: Callable | None = None) -> None:
        self.base = Path(root) / "tiny-imagenet-200"
        self.transform = transform
        all_wnids = sorted(
            w.strip() for w in (self.base / "wnids.txt").read_text().splitlines() if w.strip()
        )
        if len(all_wnids) < n_classes:
            raise ValueError(f"wnids.txt lists {len(all_wnids)} classes, fewer than {n_classes}")
        self.wnids = all_wnids[:n_classes]
        self.class_to_idx = {w: i for i, w in enumerate(self.wnids)}
        if split == "train":
            self.samples = self._train_samples()
        elif split == "val":
            self.samples = self._val_samples()
        else:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.targets = [label for _, label in self.samples]

    def _train_samples(self) -> list[tuple[Path, int]]:
        samples = []
        for wnid, label in self.class_to_idx.items():
            folder = self.base / "train" / wnid / "images"
            if not folder.is_dir():
                raise FileNotFoundError(f"Tiny ImageNet class folder missing: {folder}")
            samples += [(p, label) for p in sorted(folder.glob("*.JPEG"))]
        return samples

    def _val_samples(self) -> list[tuple[Path, int]]:
        samples = []
        lines = (self.base / "val" / "val_annotations.txt").read_text().splitlines()
        for line in lines:
            fields = line.split("\t")
            if len(fields) >= 2 and fields[1] in self.class_to_idx:
                samples.append((self.base / "val" / "images" / fields[0], self.class_to_idx[fields[1]]))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, label


# --------------------------------------------------------------------------- #
# Transforms
# --------------------------------------------------------------------------- #
def _transform(info: DatasetInfo, augment: bool, size: int,
               pre: Sequence[Callable] = ()) -> Callable:
    """``pre`` + training augmentation (if asked and defined) + normalisation."""
    steps = list(pre)
    if augment and info.crop_padding is not None:
        steps += [T.RandomCrop(size, padding=info.crop_padding), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(info.mean, info.std)]
    return T.Compose(steps)


# --------------------------------------------------------------------------- #
# Builders: one per dataset, (root, split, download, augment, options)
# --------------------------------------------------------------------------- #
def _build_mnist(root: Path, split: str, download: bool, augment: bool,
                 opts: dict[str, Any]) -> Dataset:
    info = DATASETS["mnist"]
    return tvd.MNIST(root, train=split == "train", download=download,
                     transform=_transform(info, augment, 28))


def _build_fashion_mnist(root: Path, split: str, download: bool, augment: bool,
                         opts: dict[str, Any]) -> Dataset:
    info = DATASETS["fashion_mnist"]
    return tvd.FashionMNIST(root, train=split == "train", download=download,
                            transform=_transform(info, augment, 28))


def _build_cifar10(root: Path, split: str, download: bool, augment: bool,
                   opts: dict[str, Any]) -> Dataset:
    info = DATASETS["cifar10"]
    return tvd.CIFAR10(root, train=split == "train", download=download,
                       transform=_transform(info, augment, 32))


def _build_cifar10_gray(root: Path, split: str, download: bool, augment: bool,
                        opts: dict[str, Any]) -> Dataset:
    info = DATASETS["cifar10_gray"]
    pre = [T.Grayscale(num_output_channels=1)]
    return tvd.CIFAR10(root, train=split == "train", download=download,
                       transform=_transform(info, augment, 32, pre))


def _build_celeba(root: Path, split: str, download: bool, augment: bool,
                  opts: dict[str, Any]) -> Dataset:
    info, size = DATASETS["celeba"], int(opts["size"])
    pre = [T.CenterCrop(178), T.Resize(size)]
    celeba = tvd.CelebA(root, split=split, target_type="attr", download=download,
                        transform=_transform(info, augment, size, pre))
    return CelebAAttribute(celeba, opts["attribute"])


def _build_voc2012_crops(root: Path, split: str, download: bool, augment: bool,
                         opts: dict[str, Any]) -> Dataset:
    info, size = DATASETS["voc2012_crops"], int(opts["size"])
    voc = tvd.VOCDetection(root, year="2012", image_set="train" if split == "train" else "val",
                           download=download)
    return VOCObjectCrops(voc, size, include_difficult=bool(opts["include_difficult"]),
                          transform=_transform(info, augment, size))


def _build_tiny_imagenet10(root: Path, split: str, download: bool, augment: bool,
                           opts: dict[str, Any]) -> Dataset:
    info = DATASETS["tiny_imagenet10"]
    if download:
        download_and_extract_archive(TINY_IMAGENET_URL, str(root), md5=TINY_IMAGENET_MD5)
    return TinyImageNetSubset(root, "train" if split == "train" else "val",
                              n_classes=info.num_classes,
                              transform=_transform(info, augment, info.shape[1]))


_BUILDERS: dict[str, Callable[..., Dataset]] = {
    "mnist": _build_mnist,
    "fashion_mnist": _build_fashion_mnist,
    "cifar10": _build_cifar10,
    "cifar10_gray": _build_cifar10_gray,
    "celeba": _build_celeba,
    "voc2012_crops": _build_voc2012_crops,
    "tiny_imagenet10": _build_tiny_imagenet10,
}


def _open(info: DatasetInfo, split: str, root: Path, download: bool,
          augment: bool, opts: dict[str, Any]) -> Dataset:
    """Check the files, download if asked and needed, and build the dataset."""
    root = _absolute(root)
    missing = _missing(info, root)
    if missing and not download:
        raise DatasetNotFoundError(info.name, root, info.expected, missing)
    try:
        return _BUILDERS[info.name](root, split, download and bool(missing), augment, opts)
    except (RuntimeError, OSError) as exc:
        reason = ("download failed or the files are incomplete" if missing
                  else "the files exist but torchvision rejected them "
                  "(checksum mismatch or corrupted/incomplete files)")
        raise DatasetNotFoundError(
            info.name, root, info.expected, _missing(info, root), f"{reason}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- #
# Public loading API
# --------------------------------------------------------------------------- #
def load_dataset(name: str, split: str = "train", *,
                 data_root: str | os.PathLike[str] | None = None,
                 download: bool = False, augment: bool = False,
                 **options: Any) -> Dataset:
    """Load a dataset split as ``(normalised image tensor, int label)`` pairs.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    split : {"train", "test"}
        For ``voc2012_crops`` and ``tiny_imagenet10``, "test" is the official
        validation split.
    data_root : path-like, optional
        See :func:`resolve_data_root`.
    download : bool
        Let torchvision download missing files (needs internet).
    augment : bool
        Apply the training augmentation of the paper's setting (random crop
        with padding + horizontal flip); a no-op for datasets trained without
        augmentation (MNIST, Fashion-MNIST, gray CIFAR-10).
    **options
        Dataset specific: ``celeba``: ``attribute`` ("Attractive"), ``size``
        (64); ``voc2012_crops``: ``size`` (64), ``include_difficult`` (False).

    Returns
    -------
    torch.utils.data.Dataset

    Raises
    ------
    DatasetNotFoundError
        Files missing and ``download`` off, or the download failed.
    ValueError
        Unknown dataset name or split.
    """
    info = _info(name)
    _check_split(split)
    opts = _resolve_options(info, options)
    return _open(info, split, resolve_data_root(data_root), download, augment, opts)


#: Input normalisations of :func:`load_tensors`: ``"dataset"`` is the dataset's own
#: mean/std (:class:`DatasetInfo`); ``"half"`` is (x - 0.5) / 0.5 in every channel,
#: the normalisation of the authors' public code for MNIST.
NORMALIZATIONS: tuple[str, ...] = ("dataset", "half")


def _mean_std(info: DatasetInfo, normalization: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if normalization == "dataset":
        return info.mean, info.std
    if normalization == "half":
        return (0.5,) * len(info.mean), (0.5,) * len(info.std)
    raise ValueError(f"unknown normalization {normalization!r}; valid: {list(NORMALIZATIONS)}")


def _normalise(images: Tensor, info: DatasetInfo, normalization: str = "dataset") -> Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 normalised like ToTensor + Normalize."""
    m, sd = _mean_std(info, normalization)
    x = images.float().div(255)
    mean = torch.tensor(m).view(1, -1, 1, 1)
    std = torch.tensor(sd).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def _luma(rgb: Tensor) -> Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 1, H, W]`` exactly as PIL's ``convert("L")``."""
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
    chunks = [
        (((chunk.int() * weights).sum(1, keepdim=True) + 0x8000) >> 16).to(torch.uint8)
        for chunk in rgb.split(4096)
    ]
    return torch.cat(chunks)


def _uint8_images(dataset: Dataset, info: DatasetInfo) -> Tensor:
    """The raw ``.data`` of a torchvision dataset as uint8 ``[N, C, H, W]``."""
    data = torch.as_tensor(dataset.data)
    if data.ndim == 3:  # MNIST-like: [N, H, W]
        return data.unsqueeze(1)
    data = data.permute(0, 3, 1, 2).contiguous()  # CIFAR: [N, H, W, C]
    return _luma(data) if info.shape[0] == 1 else data


@functools.lru_cache(maxsize=8)
def _cached_tensors(name: str, split: str, root: str, normalization: str) -> tuple[Tensor, Tensor]:
    info = DATASETS[name]
    dataset = _open(info, split, Path(root), False, False, {})
    x = _normalise(_uint8_images(dataset, info), info, normalization)
    y = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return x, y


def load_tensors(name: str, split: str = "train", *,
                 data_root: str | os.PathLike[str] | None = None,
                 download: bool = False,
                 normalization: str = "dataset") -> tuple[Tensor, Tensor]:
    """Load a whole small split as in-memory tensors (no per-sample PIL work).

    Parameters
    ----------
    name : {"mnist", "fashion_mnist", "cifar10", "cifar10_gray"}
    split : {"train", "test"}
    data_root : path-like, optional
        See :func:`resolve_data_root`.
    download : bool
        Let torchvision download missing files.
    normalization : {"dataset", "half"}
        The dataset's mean/std (default) or (x - 0.5) / 0.5, the authors' MNIST
        pipeline (see :data:`NORMALIZATIONS`).

    Returns
    -------
    x : Tensor
        float32 ``[N, C, H, W]``, normalised as asked.
    y : Tensor
        int64 ``[N]`` labels.

    Notes
    -----
    Results are cached in-process per (name, split, absolute root); repeated
    calls return the *same* tensors, so do not modify them in place (see
    :func:`clear_cache`).
    """
    info = _info(name)
    _check_split(split)
    if not info.in_memory:
        raise ValueError(
            f"load_tensors supports only the small datasets "
            f"{[n for n, i in DATASETS.items() if i.in_memory]}; use "
            f"load_dataset({name!r}, ...) with make_loader for {name!r}"
        )
    _mean_std(info, normalization)  # validates the name before any file is read
    root = _absolute(resolve_data_root(data_root))
    if download and _missing(info, root):
        _open(info, split, root, True, False, {})
    return _cached_tensors(name, split, str(root), normalization)


def clear_cache() -> None:
    """Drop the tensors cached by :func:`load_tensors`."""
    _cached_tensors.cache_clear()


def _labels(dataset: Dataset) -> Tensor:
    """Labels of a dataset, from ``.targets`` when it has them."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.as_tensor(targets, dtype=torch.int64)


def _balanced_indices(y: Tensor, classes: Sequence[int], per_class: int,
                      seed: int) -> Tensor:
    """``per_class`` random indices per class, sorted by class then index."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < per_class:
            raise ValueError(
                f"class {c} has only {len(idx)} images, fewer than per_class={per_class}"
            )
        pick = torch.randperm(len(idx), generator=generator)[:per_class]
        chosen.append(idx[pick].sort().values)
    return torch.cat(chosen)


def analysis_set(name_or_tensors: str | tuple[Tensor, Tensor], *,
                 per_class: int = 200, seed: int = 0,
                 data_root: str | os.PathLike[str] | None = None,
                 **options: Any) -> tuple[Tensor, Tensor]:
    """The class-balanced training images used to estimate complexity.

    Appendix I: the complexity is computed on 2000 images sampled from the
    training set; here ``per_class`` images of every class (200 x 10 = 2000).

    Parameters
    ----------
    name_or_tensors : str or (Tensor, Tensor)
        A dataset name (its *training* split is used) or ``(x, y)``.
    per_class : int
        Images per class.
    seed : int
        Seed of the ``torch.Generator`` that draws them.
    data_root : path-like, optional
        See :func:`resolve_data_root`.
    **options
        Passed to :func:`load_dataset` for the big datasets.

    Returns
    -------
    x, y : Tensor
        Sorted by class, then by index in the training set; identical for
        identical arguments.

    Raises
    ------
    ValueError
        A class has fewer than ``per_class`` images.
    """
    if isinstance(name_or_tensors, str):
        info = _info(name_or_tensors)
        classes: Sequence[int] = range(info.num_classes)
        if info.in_memory:
            _resolve_options(info, options)  # rejects any option
            x, y = load_tensors(info.name, "train", data_root=data_root)
        else:
            dataset = load_dataset(info.name, "train", data_root=data_root, **options)
            y = _labels(dataset)
            idx = _balanced_indices(y, classes, per_class, seed)
            x = torch.stack([dataset[int(i)][0] for i in idx])
            return x, y[idx]
    else:
        x, y = name_or_tensors
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        y = torch.as_tensor(y)
        classes = torch.unique(y).tolist()
    idx = _balanced_indices(y, classes, per_class, seed)
    return x[idx], y[idx]


# --------------------------------------------------------------------------- #
# Loaders
# --------------------------------------------------------------------------- #
class RandomCropFlip:
    """Seeded batch augmentation for normalised image tensors ``[B, C, H, W]``.

    Pads every image by ``padding`` pixels of black (the normalised value of a
    0 pixel), takes a random ``H x W`` crop and flips horizontally with
    probability 1/2, like ``RandomCrop(padding) + RandomHorizontalFlip`` on
    PIL images, but vectorised and driven by its own generator.
    """

    def __init__(self, padding: int, fill: Sequence[float], seed: int = 0) -> None:
        self.padding = padding
        self.fill = torch.tensor(list(fill), dtype=torch.float32)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if c != len(self.fill):
            raise ValueError(f"augmentation made for {len(self.fill)} channels, got {c}")
        p = self.padding
        padded = self.fill.to(x.dtype).view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        oy = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=self.generator)
        flip = torch.rand(b, generator=self.generator) < 0.5
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = torch.arange(w).expand(b, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
        return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                      rows, cols[:, None, None, :]]


class RandomFlip:
    """Seeded horizontal flip, with probability 1/2, of every image of a batch ``[B, C, H, W]``.

    The ``RandomHorizontalFlip`` of the authors' MNIST loader, vectorised and driven by its
    own generator (``TrainConfig.flip``).
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        flip = torch.rand(x.shape[0], generator=self.generator) < 0.5
        return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def batch_augmentation(name: str, seed: int = 0) -> RandomCropFlip | None:
    """The training augmentation of a dataset for in-memory tensors.

    Returns ``None`` for datasets trained without augmentation.
    """
    info = _info(name)
    if info.crop_padding is None:
        return None
    fill = [-m / s for m, s in zip(info.mean, info.std)]
    return RandomCropFlip(info.crop_padding, fill, seed)


class _TensorBatches(TensorDataset):
    """A TensorDataset indexed by a whole list of indices (one gather per
    batch), with an optional augmentation of the image batch."""

    def __init__(self, x: Tensor, y: Tensor,
                 augment: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(x, y)
        self.augment = augment

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        x, y = self.tensors
        xb = x[indices]
        return (self.augment(xb) if self.augment else xb), y[indices]


def _default_workers() -> int:
    """Leave one core to the training process (1 worker on 2 cores)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(x_or_dataset: Tensor | Dataset, y: Tensor | None = None, *,
                batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                num_workers: int | None = None,
                augment: str | Callable[[Tensor], Tensor] | None = None,
                drop_last: bool = False) -> DataLoader:
    """A deterministic DataLoader over tensors or a dataset.

    Parameters
    ----------
    x_or_dataset : Tensor or Dataset
        Images ``[N, ...]`` (then ``y`` is required) or a dataset.
    y : Tensor, optional
        Labels for tensor input.
    batch_size, shuffle, drop_last
        As in DataLoader.
    seed : int
        Seeds the shuffling generator (and the augmentation), so the batch
        sequence is a function of ``seed``.
    num_workers : int, optional
        Default: 0 for tensors; ``cpu_count - 1`` (at most 4) for datasets.
    augment : str or callable, optional
        Tensor input only: a dataset name (its :func:`batch_augmentation`) or
        a callable applied to every image batch. For datasets, pass
        ``augment=True`` to :func:`load_dataset` instead.

    Returns
    -------
    torch.utils.data.DataLoader
    """
    generator = torch.Generator().manual_seed(seed)
    if isinstance(x_or_dataset, Tensor):
        if y is None or len(y) != len(x_or_dataset):
            raise ValueError("tensor input needs labels y of the same length")
        if isinstance(augment, str):
            augment = batch_augmentation(augment, seed)
        data = _TensorBatches(x_or_dataset, torch.as_tensor(y), augment)
        base = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
        workers = 0 if num_workers is None else num_workers
        return DataLoader(data, sampler=BatchSampler(base, batch_size, drop_last),
                          batch_size=None, num_workers=workers)
    if y is not None or augment is not None:
        raise ValueError("for a Dataset, y and augment must be None "
                         "(use load_dataset(..., augment=True) for augmentation)")
    workers = _default_workers() if num_workers is None else num_workers
    return DataLoader(x_or_dataset, batch_size=batch_size, shuffle=shuffle,
                      drop_last=drop_last, generator=generator, num_workers=workers,
                      persistent_workers=workers > 0)

