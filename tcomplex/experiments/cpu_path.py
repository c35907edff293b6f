"""One numerical path for the CPU kernels wherever the book's notebooks run or are checked.

PyTorch picks its CPU kernels by instruction set at run time, and kernels for
different instruction sets round differently; training amplifies the last-digit
differences until trained-network numbers (accuracies, H of a trained layer) differ
between two hosts of the same kind, one with AVX-512 and one with only AVX2.  The
executed notebooks are compared cell by cell in CI (nbval), so they are executed
and checked on one *pinned* path, the widest one every x86-64 host of this project
has: AVX2.

What this torch build (2.14.1, pip wheel, x86-64) honours, measured on an AMD EPYC
with AVX-512 (50 SGD steps of a small conv net, loss after the last step; a
float32 GEMM; a conv2d; every variable changed the training loss):

==========================  ============================================================
``ATEN_CPU_CAPABILITY``      ATen's own vectorised kernels (elementwise, reductions,
                             softmax, max-pool...): ``default``/``avx2``/``avx512``.
                             Changes the training loss and the GEMM-free ops.
``ONEDNN_MAX_CPU_ISA``       oneDNN (mkldnn) convolutions and some matmuls: the widest
                             ISA its JIT may emit.  Changes the training loss.
``MKL_CBWR``                 MKL's BLAS code path (conditional numerical reproducibility).
                             On this AMD host MKL already takes its AVX2 path (no change
                             with ``AVX2``; ``COMPATIBLE`` changes the GEMM); on an Intel
                             host with AVX-512 it would take the AVX-512 path unless pinned.
``MKL_DYNAMIC``/             MKL and OpenMP must not change their thread count with the
``OMP_DYNAMIC=FALSE``        machine's load (a different thread count sums in another order).
==========================  ============================================================

The pinned path is applied with :func:`pin` (values already in the environment win,
so ``ATEN_CPU_CAPABILITY=default python -m pytest`` checks the notebooks on another
path) and recorded in every executed notebook (:func:`describe`), so
``tcomplex status`` can tell a notebook executed on another path.  The variables are
read when torch first dispatches to a kernel, so :func:`pin` must run before torch is
imported in a process whose own numbers matter; the notebook kernels are fresh
processes and inherit it.

Check cells (``# NBVAL_CHECK_OUTPUT``) still print only what is stable across paths:
see the README's Tests section.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

__all__ = ["PINNED", "pin", "describe", "same_path"]

#: The environment of the pinned CPU path (the widest instruction set every host of the project has).
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
}


def pin(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the pinned CPU path in ``environ`` (default ``os.environ``) where a variable is unset.

    Returns the values in effect afterwards (a value set before, e.g.
    ``ATEN_CPU_CAPABILITY=default``, is kept: that is how another path is tested).
    """
    env = os.environ if environ is None else environ
    for key, value in PINNED.items():
        env.setdefault(key, value)
    return {key: env[key] for key in PINNED}


def describe(environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """The CPU path of a process started with ``environ``: the pinned variables' values and the CPU.

    ``pinned`` is True when every variable has its pinned value.
    """
    env = os.environ if environ is None else environ
    values = {key: env.get(key) for key in PINNED}
    return {"pinned": values == PINNED, "env": values, "cpu": _cpu_model()}


def same_path(recorded: dict[str, Any] | None) -> bool | None:
    """Whether a recorded :func:`describe` is the pinned path (None when nothing was recorded)."""
    if not recorded:
        return None
    return recorded.get("env") == PINNED


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    flags = next((ln for ln in fh if ln.startswith("flags")), "")
                    return name + (" (AVX-512)" if " avx512f" in flags else " (AVX2)" if " avx2" in flags else "")
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
