"""The pinned CPU kernel path and the test session's output folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tcomplex.experiments import cpu_path
from tcomplex.experiments import notebooks as nbs
from tcomplex.experiments.studies.common import Context

ROOT = Path(__file__).resolve().parents[1]


def test_pin_fills_unset_variables_and_keeps_set_ones():
    env = {"ATEN_CPU_CAPABILITY": "default", "PATH": "/bin"}
    values = cpu_path.pin(env)
    assert values["ATEN_CPU_CAPABILITY"] == "default"  # a value set before wins: another path on purpose
    assert {k: env[k] for k in cpu_path.PINNED if k != "ATEN_CPU_CAPABILITY"} == {
        k: v for k, v in cpu_path.PINNED.items() if k != "ATEN_CPU_CAPABILITY"}
    assert not cpu_path.describe(env)["pinned"]
    assert cpu_path.same_path(cpu_path.describe(env)) is False
    assert cpu_path.describe(dict(cpu_path.PINNED))["pinned"]
    assert cpu_path.same_path(cpu_path.describe(dict(cpu_path.PINNED))) is True
    assert cpu_path.same_path(None) is None


def test_the_test_session_runs_on_the_pinned_path_and_writes_outside_the_repository():
    for key, value in cpu_path.PINNED.items():
        assert os.environ.get(key), f"{key} is not set in the test session"
    out = Path(os.environ[nbs.OUTPUT_ROOT_ENV])
    assert out.is_dir()
    assert ROOT not in out.resolve().parents and out.resolve() != ROOT
    ctx = Context.create("quick", "runs/quick", "papermill_runs/quick/results", None)
    assert ctx.runs == out / "runs" / "quick" and ctx.results == out / "papermill_runs" / "quick" / "results"


def test_a_process_started_on_the_pinned_path_uses_avx2_kernels():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in cpu_path.PINNED}
    cpu_path.pin(env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    if " avx2" in flags:
        assert out.strip() == "AVX2"
    env["ATEN_CPU_CAPABILITY"] = "default"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "DEFAULT"
