"""Helpers every chapter uses: paths of a notebook run, cached training, reloading models."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import pandas as pd
import torch
from tqdm import tqdm

from tcomplex.experiments import data as data_mod
from tcomplex.experiments.notebooks import output_root
from tcomplex.experiments.runs import RunDir
from tcomplex.experiments.train import TrainConfig, check_data, train

__all__ = ["Context", "train_many", "load_trained_model", "final_epoch", "setting_note", "fmt_value"]


@dataclass
class Context:
    """Where a notebook reads and writes, resolved against the project root.

    ``runs``: the training cache (not in git); ``results``: compact result files
    and findings of the profile (committed with the executed notebooks).  Relative
    paths resolve against :func:`~tcomplex.experiments.notebooks.output_root` (the
    project root, or ``$TCOMPLEX_OUTPUT_ROOT``: the test session's temporary folder).
    """

    profile: str
    runs: Path
    results: Path
    data_root: Path

    @classmethod
    def create(cls, profile: str, runs_root: str, results_dir: str, data_root: str | None) -> Context:
        root = output_root()
        runs = Path(runs_root) if Path(runs_root).is_absolute() else root / runs_root
        results = Path(results_dir) if Path(results_dir).is_absolute() else root / results_dir
        runs.mkdir(parents=True, exist_ok=True)
        results.mkdir(parents=True, exist_ok=True)
        return cls(profile, runs, results, data_mod.resolve_data_root(data_root))

    def run(self, cfg: TrainConfig) -> RunDir:
        """The run directory of ``cfg`` in this context's run cache."""
        return RunDir(self.runs, cfg)

    def save(self, frame: pd.DataFrame, name: str) -> Path:
        """Save a compact result table as ``<results>/<name>.csv``."""
        path = self.results / f"{name}.csv"
        frame.to_csv(path, index=False)
        return path


def train_many(configs: Sequence[TrainConfig], ctx: Context, *, desc: str = "runs") -> pd.DataFrame:
    """Train (or load, when finished) each config in turn; all their rows in one frame.

    Finished runs are read from the cache, interrupted ones resume; a progress
    bar over runs is shown when a person watches.  The data of every unfinished run
    is checked first (:func:`tcomplex.experiments.train.check_data`), so a bad
    config fails before the others have trained.
    """
    for cfg in configs:
        if not ctx.run(cfg).is_finished():
            check_data(cfg, ctx.data_root)
    frames = []
    show = sys.stderr.isatty()
    for cfg in tqdm(list(configs), desc=desc, unit="run", disable=not show):
        res = train(cfg, ctx.runs, data_root=ctx.data_root, progress=show)
        frames.append(res.rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_trained_model(cfg: TrainConfig, ctx: Context) -> torch.nn.Module:
    """The model of a finished run at its final epoch (eval mode, CPU): :meth:`RunDir.load_model`."""
    return ctx.run(cfg).load_model(cfg)


def final_epoch(rows: pd.DataFrame) -> int:
    return int(rows.epoch.max())


def config_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)




def fmt_value(value: Any, missing: str = "all") -> str:
    """A setting value as text: integral numbers as integers (5000.0 -> "5000"), None and NaN
    as ``missing`` (a training-image count of None means all images), other values with ``str``."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        try:
            f = float(value)
        except (TypeError, ValueError):
            return str(value)
        if math.isnan(f):
            return missing
        return str(int(f)) if f.is_integer() else f"{f:g}"
    return str(value)


def setting_note(ctx: Context, comparisons: Sequence[tuple[str, Any, Any]]) -> tuple[str, str]:
    """Compare our setting with the paper's.

    ``comparisons`` holds (what, paper's value, our value); values are shown with
    :func:`fmt_value` (integers as integers, None / NaN as "all") and compared as shown.
    Returns (markdown for the top of the notebook, one line for findings tables).
    """
    comparisons = [(what, fmt_value(paper), fmt_value(ours)) for what, paper, ours in comparisons]
    diffs = [(what, paper, ours) for what, paper, ours in comparisons if paper != ours]
    head = f"**Profile `{ctx.profile}`.** "
    if not diffs:
        return head + "This chapter runs the paper's own setting.", ""
    lines = "\n".join(f"* {what}: paper {paper}, here **{ours}**" for what, paper, ours in diffs)
    short = "; ".join(f"{what} {ours} (paper {paper})" for what, paper, ours in diffs)
    return head + "Substitutions made for this machine's data and compute budget:\n\n" + lines, short
