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
