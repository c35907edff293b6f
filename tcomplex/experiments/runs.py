"""The on-disk protocol of a training run: :class:`RunDir`.

A run lives in ``<root>/<run_id>/``:

* ``config.json``: the full :class:`~tcomplex.experiments.train.TrainConfig`
  (``run_id`` is its hash);
* ``checkpoint.pt``: model, optimiser, scheduler and penalty state after the
  last finished epoch (every epoch, whatever ``track_epochs`` says), so a killed
  run loses at most the epoch in progress; at a tracked epoch it also holds that
  epoch's rows.  Once the run is finished its checkpoint keeps only what a
  trained model needs (model and penalty state, no optimiser or scheduler
  state: a third of the size under Adam), see :meth:`RunDir.compact_checkpoint`;
* ``rows/epoch_XXXXX.csv``: the tidy rows of one tracked epoch;
* ``finished.json``: written last; a finished run is not redone;
* ``<name>.csv``: derived tables a study computed from the trained model
  (:meth:`RunDir.cached_table`, :meth:`RunDir.cached_rows`).

Every file is written atomically (a temporary ``*.tmp<pid>`` file, then a
rename); the temporary file is removed on every error path, and stale ones of
killed processes are removed when the run is opened for training.  A corrupt
checkpoint or rows file raises :class:`RunFileError`, naming the file and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

if TYPE_CHECKING:
    from tcomplex.experiments.train import TrainConfig

__all__ = ["RunDir", "RunFileError", "atomic_write_bytes", "config_columns", "load_results", "pid_alive", "ROW_COLUMNS"]

log = logging.getLogger("tcomplex.runs")

#: columns every rows file has (besides the config columns)
ROW_COLUMNS = ("epoch", "layer", "metric", "value", "bin")
_TMP = re.compile(r"\.tmp(\d+)$")


class RunFileError(RuntimeError):
    """A file of a run directory is corrupt or truncated; the message names the file and the fix."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (fsynced); no temp file survives an error."""
    _atomic(path, lambda tmp: _write_synced(tmp, data))


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_rows_file(path: Path, run: Path) -> pd.DataFrame:
    """One rows CSV, checked to be complete: every record has the header's number of fields."""
    fix = f"delete the run folder {run} and train the run again"
    try:
        text = path.read_text()
    except OSError as exc:
        raise RunFileError(f"cannot read rows file {path} ({exc}): {fix}") from None
    records = list(csv.reader(io.StringIO(text)))
    if not text.endswith("\n") or not records:
        raise RunFileError(f"rows file {path} is truncated (it does not end with a complete line): {fix}")
    header = records[0]
    missing = [c for c in ROW_COLUMNS if c not in header]
    if missing:
        raise RunFileError(f"rows file {path} lacks the columns {missing}; it is corrupt: {fix}")
    bad = [i + 1 for i, r in enumerate(records[1:], start=1) if len(r) != len(header)]
    if bad:
        raise RunFileError(f"rows file {path} is corrupt: line {bad[0]} has a different number of fields "
                           f"than its header: {fix}")
    return pd.read_csv(io.StringIO(text))


class RunDir:
    """One run's folder ``<root>/<run_id>``: config, checkpoint, rows, finished flag, derived tables.

    ``RunDir(root, cfg)`` for a :class:`TrainConfig`, or ``RunDir(root, run_id)``.
    """

    def __init__(self, root: str | os.PathLike[str], config: TrainConfig | str):
        self.root = Path(root)
        self.config = None if isinstance(config, str) else config
        self.run_id = config if isinstance(config, str) else config.run_id
        self.path = self.root / self.run_id
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.finished_path = self.path / "finished.json"
        self.config_path = self.path / "config.json"
        self.rows_dir = self.path / "rows"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths --------------------------------------------------------------
    def rows_path(self, epoch: int) -> Path:
        return self.rows_dir / f"epoch_{epoch:05d}.csv"

    # -- state --------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def is_finished(self) -> bool:
        """Whether the run finished (``finished.json`` is written last)."""
        return self.finished_path.is_file()

    def prepare(self) -> None:
        """Create the folder and remove temporary files that killed processes left behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.rows_dir):
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                m = _TMP.search(f.name)
                if m and not pid_alive(int(m.group(1))):
                    f.unlink(missing_ok=True)
                    log.info("removed %s, left behind by a killed process", f)

    def write_config(self, cfg: TrainConfig) -> None:
        atomic_write_bytes(self.config_path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True).encode())

    def mark_finished(self, seconds: float, epochs: int) -> None:
        atomic_write_bytes(self.finished_path, json.dumps({"seconds": seconds, "epochs": epochs}).encode())

    # -- checkpoint ----------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        _atomic(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def compact_checkpoint(self) -> None:
        """Drop the optimiser and scheduler state from a finished run's checkpoint.

        A finished run is never resumed, so only the trained model (and the
        complexity penalty's state, which :mod:`~tcomplex.experiments.studies.min_complexity`
        reads) is kept; the file shrinks to about a third under Adam.  The
        checkpoint is marked ``"compact": True``; calling this again is a no-op.
        """
        state = self.load_checkpoint("cpu")
        if state is None or state.get("compact"):
            return
        state = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler")}
        state["compact"] = True
        self.save_checkpoint(state)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The checkpoint (None when there is none); :class:`RunFileError` when it cannot be read."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # truncated zip, bad pickle, ...: torch raises several types
            raise RunFileError(
                f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it to train "
                f"the run again from epoch 0, or delete the run folder {self.path}"
            ) from None
        if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
            raise RunFileError(f"checkpoint {path} is not a tcomplex checkpoint (no epoch/model); delete it to "
                               f"train the run again from epoch 0")
        return state

    # -- rows ---------------------------------------------------------------
    def write_rows(self, epoch: int, rows: list[dict[str, Any]], cfg: TrainConfig, path: Path | None = None) -> None:
        """The rows of a tracked epoch, with the run's config as columns, as one CSV (atomic), at
        :meth:`rows_path` ``(epoch)`` or at ``path`` (e.g. the rows measured inside an epoch)."""
        df = pd.DataFrame(rows)
        df.insert(0, "epoch", epoch)
        for k, v in reversed(list(config_columns(cfg).items())):
            if k not in df.columns:
                df.insert(0, k, v)
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path or self.rows_path(epoch), df.to_csv(index=False).encode())

    def has_rows(self, epoch: int) -> bool:
        return self.rows_path(epoch).exists()

    def read_rows(self) -> pd.DataFrame:
        """All rows of the run (empty when none); :class:`RunFileError` for a truncated or corrupt file."""
        files = sorted(self.rows_dir.glob("epoch_*.csv"))
        if not files:
            return pd.DataFrame()
        return pd.concat([_read_rows_file(f, self.path) for f in files], ignore_index=True)

    # -- the trained model ----------------------------------------------------
    def load_model(self, cfg: TrainConfig | None = None) -> nn.Module:
        """The model of the run at its last checkpoint (the final epoch of a finished run), eval mode, CPU.

        A run with the complexity loss (Section 4.3) trained with the penalised
        ReLUs relaxed to Swish (Eq. 40); they are relaxed the same way here, with
        the run's beta (default :data:`tcomplex.ebm.DEFAULT_BETA`).
        """
        from tcomplex.experiments.train import build_model_for

        cfg = cfg or self.config
        if cfg is None:
            raise ValueError("RunDir.load_model needs the run's TrainConfig")
        state = self.load_checkpoint("cpu")
        if state is None:
            raise FileNotFoundError(f"run {self.run_id} has no checkpoint in {self.path}: train it first")
        model = build_model_for(cfg)
        if cfg.complexity_lambda > 0:
            from tcomplex.ebm import DEFAULT_BETA, relax_relus

            names = [k[0] for k in state["penalty"]["targets"]] if state.get("penalty") else []
            relax_relus(model, sorted(set(names)), float(cfg.complexity_options.get("beta", DEFAULT_BETA)))
        model.load_state_dict(state["model"])
        return model.eval()

    # -- derived tables -------------------------------------------------------
    def table_path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"table name {name!r} must be letters, digits, '_', '-' or '.'")
        return self.path / f"{name}.csv"

    def cached_table(self, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``<run>/<name>.csv`` if present, else ``compute()`` written there (atomic) and returned.

        Put everything the table depends on besides the run into ``name``
        (e.g. a hash of the options), so another setting gets another file.
        """
        path = self.table_path(name)
        if path.is_file():
            return pd.read_csv(path)
        frame = compute()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, frame.to_csv(index=False).encode())
        return frame

    def cached_rows(self, name: str, key: str, wanted: Sequence[float],
                    compute: Callable[[list[float]], pd.DataFrame], *, columns: Sequence[str] = (),
                    legacy: Path | None = None) -> pd.DataFrame:
        """A table grown by key values (e.g. alpha): compute only the ``wanted`` values not cached yet.

        Returns the cached rows whose ``key`` is (up to float rounding) one of
        ``wanted``.  ``legacy``: an older cache file read when ``<name>.csv`` is missing.
        """
        path = self.table_path(name)
        source = path if path.is_file() else (legacy if legacy is not None and legacy.is_file() else None)
        cached = pd.read_csv(source) if source is not None else pd.DataFrame(columns=[key, *columns])
        have = cached[key].to_numpy(float)
        missing = [float(v) for v in wanted if not np.isclose(have, v).any()]
        if missing or source != path:
            new = compute(missing) if missing else None
            if new is not None and len(new):
                cached = pd.concat([cached, new], ignore_index=True) if len(cached) else new
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, cached.to_csv(index=False).encode())
        keep = np.isclose(cached[key].to_numpy(float)[:, None], np.asarray(wanted, float)[None, :]).any(1)
        return cached[keep]


def config_columns(cfg: TrainConfig) -> dict[str, Any]:
    """The run id and the config fields as the leading columns of a rows file (JSON for containers)."""
    cols: dict[str, Any] = {"run_id": cfg.run_id}
    for k, v in cfg.to_dict().items():
        if isinstance(v, (dict, list, tuple)):
            v = json.dumps(v, sort_keys=True)
        cols[k] = v
    return cols


def load_results(root: str | os.PathLike[str], *, finished_only: bool = False) -> pd.DataFrame:
    """All rows of all runs under ``root`` as one tidy DataFrame (empty if none)."""
    frames = []
    for config in sorted(Path(root).glob("*/config.json")):
        run = RunDir(root, config.parent.name)
        if finished_only and not run.is_finished():
            continue
        rows = run.read_rows()
        if len(rows):
            frames.append(rows)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
