"""The test session's hygiene, loaded for every pytest run of the project (``-p`` in pyproject.toml).

* The CPU kernels take the pinned path (:mod:`tcomplex.experiments.cpu_path`) before
  torch is imported, in the test process and in the notebook kernels nbval starts;
  a value already in the environment wins (``ATEN_CPU_CAPABILITY=default pytest ...``
  checks the committed notebooks on another path).
* Nothing is written into the repository: the notebooks' relative ``runs_root`` and
  ``results_dir`` resolve under a temporary folder (``TCOMPLEX_OUTPUT_ROOT``, see
  :func:`tcomplex.experiments.notebooks.output_root`), removed at the end of the session.
* The reproduction report collects every chapter's findings, so nbval executes it
  after the chapters, whatever the order of collection.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tcomplex.experiments import cpu_path
from tcomplex.experiments.notebooks import OUTPUT_ROOT_ENV

REPORT = "00_report.ipynb"
_made: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    cpu_path.pin()
    if not os.environ.get(OUTPUT_ROOT_ENV):
        _made.append(tempfile.mkdtemp(prefix="tcomplex-test-outputs-"))
        os.environ[OUTPUT_ROOT_ENV] = _made[-1]


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(OUTPUT_ROOT_ENV) == path:
            del os.environ[OUTPUT_ROOT_ENV]
    _made.clear()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    report = [it for it in items if it.path.name == REPORT]
    if report:
        items[:] = [it for it in items if it.path.name != REPORT] + report
