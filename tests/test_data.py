"""Tests of tcomplex.experiments.data.

MNIST / Fashion-MNIST are the real files found through ``TCOMPLEX_DATA`` (or
``<repo>/../shared/data``).  CIFAR-10, CelebA, VOC 2012 and Tiny ImageNet are
not available offline, so the tests write small files in their real on-disk
formats into ``tmp_path`` and read them through the real code path.  Only the
md5 check that torchvision performs on the CIFAR-10 pickles and the CelebA text
files is replaced by a file-existence check (our files cannot match the md5s).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from tcomplex.experiments import data as D

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _shared_root() -> Path:
    env = os.environ.get("TCOMPLEX_DATA")
    return Path(os.path.abspath(env)) if env else (REPO / ".." / "shared" / "data").resolve()


def _require(folder: str) -> Path:
    root = _shared_root()
    missing = [f for f in MNIST_FILES if not (root / folder / "raw" / f).is_file()]
    if missing:
        pytest.skip(f"real {folder} not found under {root} (set TCOMPLEX_DATA); missing {missing}")
    return root


@pytest.fixture
def shared_root() -> Path:
    return _require("MNIST")


@pytest.fixture
def fashion_root() -> Path:
    return _require("FashionMNIST")


def _exists_only(fpath, md5=None) -> bool:
    """Stand-in for torchvision's check_integrity: existence, no md5."""
    return os.path.isfile(fpath)


def _denormalise(x: torch.Tensor, info: D.DatasetInfo) -> torch.Tensor:
    """Normalised float image(s) -> pixel values in [0, 255]."""
    mean = torch.tensor(info.mean).view(-1, 1, 1)
    std = torch.tensor(info.std).view(-1, 1, 1)
    return (x * std + mean) * 255


def _normalised(image: Image.Image, info: D.DatasetInfo) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    arr = arr.unsqueeze(-1) if arr.ndim == 2 else arr
    x = arr.permute(2, 0, 1) / 255
    return (x - torch.tensor(info.mean).view(-1, 1, 1)) / torch.tensor(info.std).view(-1, 1, 1)


def _save_jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


# --------------------------------------------------------------------------- #
# Data root and errors
# --------------------------------------------------------------------------- #
def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TCOMPLEX_DATA", raising=False)
    assert D.resolve_data_root() == Path("data")
    monkeypatch.setenv("TCOMPLEX_DATA", "/from/env")
    assert D.resolve_data_root() == Path("/from/env")
    assert D.resolve_data_root("explicit") == Path("explicit")
    assert D.resolve_data_root(tmp_path) == tmp_path


def test_missing_data_error_names_dataset_root_and_files(tmp_path):
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset("mnist", data_root=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "'mnist'" in msg and str(tmp_path.absolute()) in msg
    assert "train-images-idx3-ubyte" in msg and "TCOMPLEX_DATA" in msg and "download=True" in msg


def test_missing_data_error_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(D.DatasetNotFoundError, match="cifar-10-batches-py/data_batch_1") as err:
        D.load_tensors("cifar10", data_root="nowhere")
    assert str(tmp_path.absolute() / "nowhere") in str(err.value)


@pytest.mark.parametrize("name,expected", [("celeba", "list_attr_celeba.txt"),
                                           ("voc2012_crops", "Annotations"),
                                           ("tiny_imagenet10", "val_annotations.txt")])
def test_missing_big_datasets(tmp_path, name, expected):
    with pytest.raises(D.DatasetNotFoundError, match=expected):
        D.load_dataset(name, data_root=tmp_path)


def test_failed_download_raises_not_found(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(D, "download_and_extract_archive", offline)
    with pytest.raises(D.DatasetNotFoundError, match="no network"):
        D.load_dataset("tiny_imagenet10", data_root=tmp_path, download=True)


def test_bad_names_options_and_splits(tmp_path):
    with pytest.raises(ValueError, match="mnist.*cifar10.*tiny_imagenet10"):
        D.load_dataset("imagenet", data_root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        D.load_dataset("mnist", "val", data_root=tmp_path)
    with pytest.raises(TypeError, match="attribute"):
        D.load_dataset("mnist", data_root=tmp_path, attribute="Smiling")
    with pytest.raises(ValueError, match="load_dataset"):
        D.load_tensors("celeba", data_root=tmp_path)


def test_registry():
    assert set(D.DATASETS) == {"mnist", "fashion_mnist", "cifar10", "cifar10_gray",
                               "celeba", "voc2012_crops", "tiny_imagenet10"}
    for name, info in D.DATASETS.items():
        assert info.name == name and len(info.mean) == len(info.std) == info.shape[0]
    assert D.DATASETS["celeba"].default_options()["attribute"] == "Attractive"
    assert D.DATASETS["mnist"].crop_padding is None and D.DATASETS["cifar10"].crop_padding == 4


# --------------------------------------------------------------------------- #
# MNIST and Fashion-MNIST (real files)
# --------------------------------------------------------------------------- #
def test_mnist_tensors(shared_root):
    x, y = D.load_tensors("mnist", "train", data_root=shared_root)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(10))
    sub = x[:10000]
    assert abs(sub.mean().item()) < 0.02 and abs(sub.std().item() - 1) < 0.02
    xt, yt = D.load_tensors("mnist", "test", data_root=shared_root)
    assert xt.shape == (10000, 1, 28, 28) and len(yt) == 10000


def test_fashion_mnist_tensors(fashion_root):
    x, y = D.load_tensors("fashion_mnist", "train", data_root=fashion_root)
    assert x.shape == (60000, 1, 28, 28) and 0 <= int(y.min()) and int(y.max()) == 9
    assert abs(x[:10000].mean().item()) < 0.02 and abs(x[:10000].std().item() - 1) < 0.02


def test_load_tensors_is_cached(shared_root):
    first = D.load_tensors("mnist", "test", data_root=shared_root)
    again = D.load_tensors("mnist", "test", data_root=str(shared_root))
    assert first[0] is again[0] and first[1] is again[1]


def test_load_dataset_matches_tensors(fashion_root):
    x, y = D.load_tensors("fashion_mnist", "test", data_root=fashion_root)
    ds = D.load_dataset("fashion_mnist", "test", data_root=fashion_root, augment=True)
    assert len(ds) == 10000
    for i in (0, 123, 9999):
        image, label = ds[i]
        assert isinstance(label, int) and label == int(y[i])
        torch.testing.assert_close(image, x[i])  # augment is a no-op for Fashion-MNIST


# --------------------------------------------------------------------------- #
# analysis_set and make_loader
# --------------------------------------------------------------------------- #
def test_analysis_set_balanced_deterministic_from_train(shared_root):
    xa, ya = D.analysis_set("mnist", data_root=shared_root)
    assert xa.shape == (2000, 1, 28, 28)
    assert torch.bincount(ya).tolist() == [200] * 10
    assert torch.equal(ya, ya.sort().values)
    xb, yb = D.analysis_set("mnist", data_root=shared_root)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = D.analysis_set("mnist", seed=1, data_root=shared_root)
    assert not torch.equal(xa, xc)

    x, y = D.load_tensors("mnist", "train", data_root=shared_root)
    rows = {row.tobytes(): int(label) for row, label in zip(x.flatten(1).numpy(), y)}
    assert all(rows.get(r.tobytes()) == int(label) for r, label in zip(xa.flatten(1).numpy(), ya))
    xt, yt = D.analysis_set((x, y))
    assert torch.equal(xt, xa) and torch.equal(yt, ya)


def test_analysis_set_too_few_images(shared_root):
    x, y = D.load_tensors("mnist", "test", data_root=shared_root)
    with pytest.raises(ValueError, match="has only"):
        D.analysis_set((x[:100], y[:100]), per_class=50)
    with pytest.raises(ValueError, match=r"class 0 has only 5923 images"):
        D.analysis_set("mnist", per_class=6000, data_root=shared_root)


def test_make_loader_tensors_deterministic():
    x = torch.randn(300, 3, 8, 8)
    y = torch.arange(300) % 10
    a = next(iter(D.make_loader(x, y, batch_size=32, seed=3)))
    b = next(iter(D.make_loader(x, y, batch_size=32, seed=3)))
    c = next(iter(D.make_loader(x, y, batch_size=32, seed=4)))
    assert a[0].shape == (32, 3, 8, 8) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(next(iter(D.make_loader(x, y, shuffle=False, batch_size=5)))[1], y[:5])
    loader = D.make_loader(x, y, batch_size=64, drop_last=True)
    assert isinstance(loader.dataset, torch.utils.data.TensorDataset)
    assert len(loader) == 4 and sum(len(yb) for _, yb in loader) == 256


def test_make_loader_augmentation_deterministic():
    x = torch.randn(64, 3, 32, 32)
    y = torch.zeros(64, dtype=torch.long)
    first = [next(iter(D.make_loader(x, y, batch_size=16, augment="cifar10", seed=0)))[0]
             for _ in range(2)]
    assert first[0].shape == (16, 3, 32, 32) and torch.equal(first[0], first[1])
    assert D.batch_augmentation("mnist") is None


def test_random_crop_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = D.RandomCropFlip(0, [0.0], seed=0)(x)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    ones = torch.ones(8, 1, 6, 6)
    out = D.RandomCropFlip(2, [-5.0], seed=0)(ones)
    assert out.shape == ones.shape and set(out.unique().tolist()) <= {1.0, -5.0}


def test_make_loader_dataset_deterministic(shared_root):
    ds = D.load_dataset("mnist", "test", data_root=shared_root)
    a = next(iter(D.make_loader(ds, batch_size=16, seed=7, num_workers=0)))
    b = next(iter(D.make_loader(ds, batch_size=16, seed=7, num_workers=0)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- #
# CIFAR-10 (written in the real pickle format)
# --------------------------------------------------------------------------- #
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(root: Path, per_batch: int = 10) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write cifar-10-batches-py as the official Python pickles (str keys
    after torchvision's latin1 decoding; data uint8 [N, 3072], channel-major)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(per_batch)]
        entry = {"batch_label": f"batch {i}", "labels": labels, "data": data,
                 "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (data, labels)
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", _exists_only)
    written = _write_cifar(tmp_path)
    return tmp_path, written


def test_cifar10_tensors_and_dataset(cifar_root):
    root, written = cifar_root
    info = D.DATASETS["cifar10"]
    x, y = D.load_tensors("cifar10", "train", data_root=root)
    raw = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert x.shape == (50, 3, 32, 32) and y.tolist() == labels
    expected = torch.from_numpy(raw.reshape(-1, 3, 32, 32)).float()
    torch.testing.assert_close(_denormalise(x, info), expected, atol=1e-3, rtol=0)

    xt, yt = D.load_tensors("cifar10", "test", data_root=root)
    assert yt.tolist() == written["test_batch"][1]
    ds = D.load_dataset("cifar10", "test", data_root=root)
    image, label = ds[3]
    assert label == yt[3] and image.shape == (3, 32, 32)
    torch.testing.assert_close(image, xt[3])
    aug = D.load_dataset("cifar10", "train", data_root=root, augment=True)
    assert aug[0][0].shape == (3, 32, 32)


def test_cifar10_gray(cifar_root):
    root, written = cifar_root
    info = D.DATASETS["cifar10_gray"]
    x, y = D.load_tensors("cifar10_gray", "test", data_root=root)
    assert x.shape == (10, 1, 32, 32)
    hwc = written["test_batch"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for i in range(len(hwc)):
        gray = Image.fromarray(hwc[i]).convert("L")
        torch.testing.assert_close(x[i], _normalised(gray, info))
    ds = D.load_dataset("cifar10_gray", "test", data_root=root)
    torch.testing.assert_close(ds[4][0], x[4])
    xa, ya = D.analysis_set((x, y), per_class=1)
    assert ya.tolist() == list(range(10))


# --------------------------------------------------------------------------- #
# CelebA (aligned jpgs + the five annotation text files)
# --------------------------------------------------------------------------- #
CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips "
    "Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin "
    "Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open "
    "Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def _write_celeba(root: Path, n: int = 6) -> tuple[list[int], np.ndarray, list[tuple]]:
    """img_align_celeba/00000k.jpg (178x218) and the annotation files."""
    base = root / "celeba"
    partition = [0, 0, 0, 1, 2, 2][:n]
    rng = np.random.default_rng(1)
    attrs = rng.choice([-1, 1], size=(n, len(CELEBA_ATTRS)))
    colours = []
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        colour = (30 * i + 20, 200 - 25 * i, 90)
        img = np.empty((218, 178, 3), dtype=np.uint8)
        img[:] = colour
        img[:20] = img[-20:] = (255, 255, 255)  # removed by the 178x178 centre crop
        _save_jpeg(base / "img_align_celeba" / name, img)
        colours.append(colour)
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{f} {p}\n" for f, p in zip(names, partition)))
    (base / "identity_CelebA.txt").write_text(
        "".join(f"{f} {100 + i}\n" for i, f in enumerate(names)))
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\n" + " ".join(CELEBA_ATTRS) + " \n"
        + "".join(f + " " + " ".join(f"{v:2d}" for v in row) + "\n" for f, row in zip(names, attrs)))
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n"
        + "".join(f"{f}    95  71 226 313\n" for f in names))
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
        "leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{f} 69  109  106  113   77  142   73  152  108  154\n" for f in names))
    return partition, attrs, colours


def test_celeba_attribute_labels_and_images(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", _exists_only)
    partition, attrs, colours = _write_celeba(tmp_path)
    info = D.DATASETS["celeba"]
    train = D.load_dataset("celeba", "train", data_root=tmp_path)
    test = D.load_dataset("celeba", "test", data_root=tmp_path)
    assert len(train) == partition.count(0) and len(test) == partition.count(2)
    col = CELEBA_ATTRS.index("Attractive")
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape == (3, 64, 64)
        assert label == (attrs[i, col] + 1) // 2
        pixels = _denormalise(image, info)
        # uniform face colour everywhere: the white bands were cropped away
        assert (pixels - torch.tensor(colours[i]).view(3, 1, 1)).abs().max() < 12
    smiling = D.load_dataset("celeba", "test", data_root=tmp_path, attribute="Smiling", size=32)
    test_rows = [i for i, p in enumerate(partition) if p == 2]
    col = CELEBA_ATTRS.index("Smiling")
    assert [smiling[k][1] for k in range(len(smiling))] == [(attrs[i, col] + 1) // 2 for i in test_rows]
    assert smiling[0][0].shape == (3, 32, 32)
    assert D.load_dataset("celeba", data_root=tmp_path, augment=True)[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="Attractive"):
        D.load_dataset("celeba", data_root=tmp_path, attribute="Handsome")
    xa, ya = D.analysis_set("celeba", per_class=1, data_root=tmp_path)
    assert xa.shape == (2, 3, 64, 64) and ya.tolist() == [0, 1]


# --------------------------------------------------------------------------- #
# Pascal VOC 2012 object crops
# --------------------------------------------------------------------------- #
def _voc_xml(filename: str, width: int, height: int, objects: list[tuple]) -> str:
    objs = "".join(
        f"""
	<object>
		<name>{name}</name>
		<pose>Unspecified</pose>
		<truncated>0</truncated>
		<occluded>0</occluded>
		<bndbox>
			<xmin>{xmin}</xmin>
			<ymin>{ymin}</ymin>
			<xmax>{xmax}</xmax>
			<ymax>{ymax}</ymax>
		</bndbox>
		<difficult>{difficult}</difficult>
	</object>"""
        for name, (xmin, ymin, xmax, ymax), difficult in objects
    )
    return f"""<annotation>
	<folder>VOC2012</folder>
	<filename>{filename}</filename>
	<source>
		<database>The VOC2008 Database</database>
		<annotation>PASCAL VOC2008</annotation>
		<image>flickr</image>
	</source>
	<size>
		<width>{width}</width>
		<height>{height}</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>{objs}
</annotation>
"""


VOC_IMAGES = {  # id -> (split, [(class, 1-based inclusive box, difficult, colour)])
    "2008_000001": ("train", [("cat", (17, 17, 64, 64), 0, (220, 30, 30)),
                              ("person", (65, 1, 96, 32), 1, (30, 220, 30))]),
    "2008_000002": ("train", [("tvmonitor", (33, 17, 96, 48), 0, (30, 30, 220))]),
    "2008_000003": ("val", [("dog", (1, 1, 48, 64), 0, (200, 200, 40))]),
}


def _write_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (_, objects) in VOC_IMAGES.items():
        img = np.full((80, 112, 3), 128, dtype=np.uint8)
        for _, (xmin, ymin, xmax, ymax), _, colour in objects:
            img[ymin - 1:ymax, xmin - 1:xmax] = colour
        _save_jpeg(base / "JPEGImages" / f"{image_id}.jpg", img)
        xml = _voc_xml(f"{image_id}.jpg", 112, 80, [(n, b, d) for n, b, d, _ in objects])
        (base / "Annotations" / f"{image_id}.xml").write_text(xml)
    for split in ("train", "val"):
        ids = [i for i, (s, _) in VOC_IMAGES.items() if s == split]
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return base


def test_voc_crops(tmp_path):
    base = _write_voc(tmp_path)
    info = D.DATASETS["voc2012_crops"]
    train = D.load_dataset("voc2012_crops", "train", data_root=tmp_path, size=32)
    assert len(train) == 2  # the difficult person is skipped
    assert train.targets == [D.VOC_CLASSES.index("cat"), D.VOC_CLASSES.index("tvmonitor")]
    kept = [("2008_000001", VOC_IMAGES["2008_000001"][1][0]),
            ("2008_000002", VOC_IMAGES["2008_000002"][1][0])]
    for k, (image_id, (name, (xmin, ymin, xmax, ymax), _, colour)) in enumerate(kept):
        crop, label = train[k]
        assert crop.shape == (3, 32, 32) and label == D.VOC_CLASSES.index(name)
        with Image.open(base / "JPEGImages" / f"{image_id}.jpg") as im:
            region = im.convert("RGB").crop((xmin - 1, ymin - 1, xmax, ymax))
        expected = _normalised(region.resize((32, 32), Image.Resampling.BILINEAR), info)
        torch.testing.assert_close(crop, expected)
        centre = _denormalise(crop, info)[:, 4:-4, 4:-4]
        assert (centre - torch.tensor(colour).view(3, 1, 1)).abs().max() < 12

    with_difficult = D.load_dataset("voc2012_crops", "train", data_root=tmp_path,
                                    include_difficult=True)
    assert len(with_difficult) == 3 and D.VOC_CLASSES.index("person") in with_difficult.targets
    assert with_difficult[0][0].shape == (3, 64, 64)
    test = D.load_dataset("voc2012_crops", "test", data_root=tmp_path, augment=True)
    assert test.targets == [D.VOC_CLASSES.index("dog")] and test[0][0].shape == (3, 64, 64)


# --------------------------------------------------------------------------- #
# Tiny ImageNet (first ten classes)
# --------------------------------------------------------------------------- #
def _write_tiny(root: Path, n_wnids: int = 12, per_class: int = 2) -> list[str]:
    base = root / "tiny-imagenet-200"
    wnids = [f"n{(7919 * k) % 10007:08d}" for k in range(1, n_wnids + 1)]  # unsorted
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    colour = {w: (10 + 20 * k, 240 - 20 * k, 60) for k, w in enumerate(sorted(wnids))}
    for w in wnids:
        boxes = []
        for j in range(per_class):
            _save_jpeg(base / "train" / w / "images" / f"{w}_{j}.JPEG",
                       np.full((64, 64, 3), colour[w], dtype=np.uint8))
            boxes.append(f"{w}_{j}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines = []
    for k, w in enumerate(reversed(wnids)):  # val order unrelated to wnid order
        _save_jpeg(base / "val" / "images" / f"val_{k}.JPEG",
                   np.full((64, 64, 3), colour[w], dtype=np.uint8))
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63\n")
    # one gray-scale image, as Tiny ImageNet has some
    gray_wnid = sorted(wnids)[0]
    Image.fromarray(np.full((64, 64), 77, dtype=np.uint8)).save(
        base / "val" / "images" / "val_gray.JPEG")
    lines.append(f"val_gray.JPEG\t{gray_wnid}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return wnids


def test_tiny_imagenet10(tmp_path):
    wnids = _write_tiny(tmp_path)
    first_ten = sorted(wnids)[:10]
    info = D.DATASETS["tiny_imagenet10"]
    train = D.load_dataset("tiny_imagenet10", "train", data_root=tmp_path)
    assert train.wnids == first_ten and len(train) == 20
    assert sorted(set(train.targets)) == list(range(10))
    assert all(p.parent.parent.name in first_ten for p, _ in train.samples)
    image, label = train[5]
    assert image.shape == (3, 64, 64)
    colour = (10 + 20 * label, 240 - 20 * label, 60)
    assert (_denormalise(image, info) - torch.tensor(colour).view(3, 1, 1)).abs().max() < 6

    val = D.load_dataset("tiny_imagenet10", "test", data_root=tmp_path)
    annotations = dict(line.split("\t")[:2] for line in
                       (tmp_path / "tiny-imagenet-200/val/val_annotations.txt").read_text().splitlines())
    assert len(val) == 11  # ten classes + the gray image; two classes left out
    for path, target in val.samples:
        assert first_ten[target] == annotations[path.name]
    gray_index = [p.name for p, _ in val.samples].index("val_gray.JPEG")
    gray, gray_label = val[gray_index]
    assert gray.shape == (3, 64, 64) and gray_label == 0
    assert (_denormalise(gray, info) - 77).abs().max() < 3

    assert D.load_dataset("tiny_imagenet10", data_root=tmp_path, augment=True)[0][0].shape == (3, 64, 64)
    xa, ya = D.analysis_set("tiny_imagenet10", per_class=2, data_root=tmp_path)
    assert xa.shape == (20, 3, 64, 64) and torch.bincount(ya).tolist() == [2] * 10
