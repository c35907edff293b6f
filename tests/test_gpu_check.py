"""The prepared GPU check (benchmarks/gpu_check.py) runs as a CPU dry run, so it cannot rot
before a GPU is lent: every section ends with a result or a recorded error, and the estimator
agreement holds real numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ("environment", "estimators", "record_gates", "training", "chapter1", "paper_estimate")


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def _mnist_root() -> Path | None:
    env = os.environ.get("TCOMPLEX_DATA")
    root = Path(os.path.abspath(env)) if env else (REPO / ".." / "shared" / "data").resolve()
    return root if all((root / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES) else None


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    root = _mnist_root()
    data_root = str(root) if root else str(out)  # without MNIST, chapter 1 must say so
    env = _env()
    # generous budgets: the dry run proves the code paths, a loaded CI machine must not skip sections (with
    # the tiny 8 s training budget, two trainings on the same 2 cores made it skip the complexity-loss step;
    # with 8 s for the estimators, three jobs on 2 cores made it skip the d = 2048 row)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--tiny", "--out", str(out), "--data-root", data_root,
         "--total-budget", "600", "--budgets", "training=40,record_gates=20,estimators=60"],
        cwd=out, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), proc.stdout, out


def test_every_section_has_a_result_or_an_error(dry_run):
    report, stdout, out = dry_run
    assert report["mode"] == "cpu, tiny"
    assert set(report["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        sec = report["sections"][name]
        assert sec["status"] in ("ok", "error", "timeout"), (name, sec)
        if sec["status"] == "ok":
            assert sec["result"], name
        else:
            assert sec["error"], name
    # on the CPU every section must actually work
    assert {n: s["status"] for n, s in report["sections"].items()} == {n: "ok" for n in SECTIONS}, \
        {n: s.get("error") for n, s in report["sections"].items()}
    md = (out / "gpu_check.md").read_text()
    assert md.strip() in stdout
    for name in SECTIONS:
        assert f"| {name} | ok |" in md


def test_estimator_agreement_is_real(dry_run):
    report, _, _ = dry_run
    res = report["sections"]["estimators"]["result"]
    a = res["agreement"]
    for q in ("H", "I"):
        for src in ("device", "cpu", "float64 reference"):
            assert math.isfinite(a[f"{q} {src}"])
        # the CPU estimate against the independent float64 formula of Eq. 2 / Eq. 4
        assert a[f"|{q} cpu - reference| bits"] < 1e-5
        assert a[f"|{q} device - cpu| bits"] < 1e-5
    # structured states: H well below the log2 n ceiling, I(X;Sigma;Y) near log2 10
    assert 1.0 < a["H cpu"] < math.log2(a["n"]) - 0.5
    assert 2.5 < a["I cpu"] <= math.log2(10) + 1e-6
    assert a["max |d2 device - cpu|"] == 0.0
    # the three timed sizes ran, each against its GEMM
    assert [r["d"] for r in res["rows"]] == [128, 512, 2048]
    for r in res["rows"]:
        assert r["GEMM s"] > 0 and r["kde_entropy s"] > 0 and r["kde_interaction_information s"] > 0


def test_sections_hold_numbers(dry_run):
    report, _, _ = dry_run
    s = report["sections"]
    env = s["environment"]["result"]["values"]
    assert env["device used"] == "cpu" and env["torch.cuda.is_available()"] in (True, False)
    rg = s["record_gates"]["result"]["rows"][0]
    assert rg["gating layers"] == "18 (17 relu, 1 maxpool)" and rg["forward s"] > 0 and rg["record_gates s"] > 0
    tr = {(r["model"], r["loss"]): r for r in s["training"]["result"]["rows"] if "loss" in r}
    assert tr[("resnet20", "plain")]["images/s"] > 0 and tr[("vgg11_revised", "plain")]["images/s"] > 0
    assert tr[("resnet20", "+ complexity loss λ=1e-3")]["images/s"] > 0
    ch1 = s["chapter1"]["result"]
    if _mnist_root() is None:
        assert "MNIST not found" in ch1["skip_reason"]
    else:
        assert ch1["device of the runs"] == "cpu" and ch1["prop2 plug-in violations"] == 0
        assert ch1["max |H + TC - C|"] < 1e-9
        assert [r["epoch"] for r in ch1["rows"]] == [0, 1]
    pe = s["paper_estimate"]["result"]
    chapters = [r["chapter"] for r in pe["rows"]]
    assert chapters == ["01_metrics", "02_disentanglement", "03_training_dynamics", "04_maximum_complexity",
                        "05_minimum_complexity", "06_appendix", "all"]
    assert any(r.get("train images/s") for r in pe["throughputs"])
    assert any(r.get("s per tracked epoch") for r in pe["tracking"])
    assert pe["notes"][0].startswith("TINY MODE")


def test_without_mnist_chapter1_says_why(tmp_path):
    """Without MNIST under the data root the chapter-1 section records why and how to fix it."""
    env = _env()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--tiny", "--out", str(tmp_path), "--data-root", str(tmp_path),
         "--sections", "chapter1,estimators"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    ch1 = report["sections"]["chapter1"]
    assert ch1["status"] == "ok" and "MNIST not found" in ch1["result"]["skip_reason"]
    assert "--data-root" in ch1["result"]["skip_reason"]
    assert report["sections"]["estimators"]["status"] == "ok"
    assert report["sections"]["training"]["status"] == "skipped"
    assert "MNIST not found" in (tmp_path / "gpu_check.md").read_text()


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path):
    """Asked for CUDA where there is none: the environment section records the error, the
    sections after it record that they did not run, and the files are still written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the failure path needs one without")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path), "--sections", "environment,estimators"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    env = report["sections"]["environment"]
    assert env["status"] == "error" and "torch.cuda.is_available() is False" in env["error"]
    assert "--cpu" in env["error"]
    est = report["sections"]["estimators"]
    assert est["status"] == "error" and "CUDA unusable" in est["error"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| environment | error |" in md and "| estimators | error |" in md


def test_a_section_past_its_time_limit_is_interrupted_and_recorded(tmp_path):
    """A section that runs past budget + grace is interrupted (SIGALRM), recorded as a timeout
    with what it measured so far, and the next section still runs."""
    proc = subprocess.run(
        # the estimators section measures kernels for seconds before it looks at its budget; record_gates became
        # fast enough to finish inside 0.05 s (the max-pool kernel) and training returns at once on a tiny budget
        [sys.executable, str(SCRIPT), "--cpu", "--tiny", "--out", str(tmp_path), "--sections", "estimators,training",
         "--budgets", "estimators=0.01", "--grace", "0.04"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    est = report["sections"]["estimators"]
    assert est["status"] == "timeout" and "SectionTimeout" in est["error"]
    assert est["seconds"] < 5
    assert report["sections"]["training"]["status"] == "ok"
    assert "| estimators | timeout |" in (tmp_path / "gpu_check.md").read_text()
