"""Test-session hygiene shared by every test module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="module")
def _restore_environment():
    """Give each module's tests a clean process environment back.

    Dask's nanny writes OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1 into the parent's
    os.environ when a LocalCluster spawns workers; the notebooks that nbval runs
    later in the same session would inherit it, run single-threaded and differ
    from their committed outputs in the last digits.
    """
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def data_root() -> str:
    """The data root holding the real MNIST (TCOMPLEX_DATA, else ../shared/data); skip if absent."""
    from pathlib import Path

    env = os.environ.get("TCOMPLEX_DATA")
    repo = Path(__file__).resolve().parents[1]
    root = Path(os.path.abspath(env)) if env else (repo / ".." / "shared" / "data").resolve()
    if not all((root / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        pytest.skip(f"real MNIST not found under {root} (set TCOMPLEX_DATA)")
    return str(root)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a busy 2-core machine, two spinning threads are many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
