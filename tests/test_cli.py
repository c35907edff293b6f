"""Tests of the ``tcomplex`` command line (tcomplex.cli)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tcomplex import cli
from tcomplex.experiments.runs import RunDir, load_results
from tcomplex.experiments.train import TrainConfig

TINY_SET = ["--set", "train_subset=1000", "--set", "test_subset=500", "--set", "analysis_per_class=10",
            "--set", "eval_train_size=1000", "--set", "device=cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_args(out, *extra, data_root=None, epochs="1"):
    args = ["train", "--model", "mlp_mnist", "--dataset", "mnist", "--epochs", epochs, "--out", str(out)]
    if data_root is not None:
        args += ["--data-root", str(data_root)]
    return args + TINY_SET + list(extra)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


# --------------------------------------------------------------------------- #
# help and placeholders
# --------------------------------------------------------------------------- #
def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("train", "sweep", "run", "book", "status"):
        assert word in out


@pytest.mark.parametrize("command", ["train", "sweep", "run", "book", "status"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert f"tcomplex {command}" in capsys.readouterr().out


def test_console_script_help():
    script = Path(sys.executable).with_name("tcomplex")
    cmd = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "tcomplex.cli", "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: tcomplex" in done.stdout and "sweep" in done.stdout


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: tcomplex" in capsys.readouterr().err


def test_run_and_book_parse_and_reject_bad_input(capsys):
    args = cli.build_parser().parse_args(["run", "nb.ipynb", "--profile", "quick", "-p", "epochs", "3", "-p", "seed", "1"])
    assert args.notebook == "nb.ipynb" and args.profile == "quick"
    assert args.parameters == [["epochs", "3"], ["seed", "1"]]
    assert cli.build_parser().parse_args(["book"]).profile is None
    assert cli.main(["run", "01_metrics", "--profile", "quick", "-p", "not_a_parameter", "1"]) == 2
    assert "does not declare parameter(s) ['not_a_parameter']" in capsys.readouterr().err
    assert cli.main(["run", "99_nothing", "--profile", "quick"]) == 2
    assert "unknown notebook" in capsys.readouterr().err
    assert cli.main(["book", "--profile", "full"]) == 2
    assert "unknown profile 'full'" in capsys.readouterr().err


def test_status_lists_every_notebook_with_its_state(tmp_path, capsys):
    from tcomplex.experiments import notebooks as nbs

    assert cli.main(["status", "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    for name in nbs.notebook_names():
        assert name in out
    # a copy of the project with one executed notebook removed and one parameter changed
    root = nbs.project_root()
    for item in ("book", "papermill_runs"):
        shutil.copytree(root / item, tmp_path / item, ignore=shutil.ignore_patterns("_build", "results"))
    before = {r["notebook"]: r["state"] for r in nbs.profile_status("quick", tmp_path)}
    (tmp_path / "papermill_runs" / "quick" / "01_metrics.ipynb").unlink()
    prof = tmp_path / "papermill_runs" / "quick.yaml"
    text = prof.read_text()
    assert "    analysis_per_class: 20\n    track_per_class" in text  # chapter 2's block
    prof.write_text(text.replace("    analysis_per_class: 20\n    track_per_class", "    analysis_per_class: 21\n    track_per_class"))
    after = {r["notebook"]: r["state"] for r in nbs.profile_status("quick", tmp_path)}
    assert after == {**before, "01_metrics": "missing", "02_disentanglement": "stale"}
    assert cli.main(["status", "--profile", "full"]) == 2
    assert "unknown profile 'full'" in capsys.readouterr().err


def test_parse_set():
    assert cli.parse_set(["lr=0.1", "kinds=[\"relu\"]", "label=hello world", "alpha=null", "x.y=a=b"]) == {
        "lr": 0.1, "kinds": ["relu"], "label": "hello world", "alpha": None, "x.y": "a=b"}


# --------------------------------------------------------------------------- #
# train
# --------------------------------------------------------------------------- #
def test_train_writes_results_and_prints_a_summary(data_root, tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli.main(_train_args(out, "--seed", "3", "--set", "label=2024", data_root=data_root)) == 0
    captured = capsys.readouterr()
    df = load_results(out, finished_only=True)
    (run_id,) = df["run_id"].unique()
    assert run_id.startswith("mlp_mnist-mnist-s3-")
    assert sorted(df["epoch"].unique()) == [0, 1]
    cfg = json.loads((out / run_id / "config.json").read_text())
    assert cfg["label"] == "2024" and cfg["train_subset"] == 1000  # string field kept as text
    table = captured.out
    for word in ("H", "I_XSY", "test_acc", str(out / run_id / "rows"), "checkpoint.pt"):
        assert word in table
    # without a terminal: one log line per tracked epoch on stderr
    assert captured.err.count(" epoch 0: H=") == 1 and captured.err.count(" epoch 1: H=") == 1

    # again: finished, not redone
    assert cli.main(_train_args(out, "--seed", "3", "--set", "label=2024", data_root=data_root)) == 0
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--set", "bogus=1"], r"unknown TrainConfig field 'bogus'; valid fields: model, dataset"),
    (["--set", "epochs=abc"], r"bad value for 'epochs': expected int, got 'abc'"),
    (["--set", "lr"], r"--set expects key=value, got 'lr'"),
    (["--set", "task=segment"], r"task must be classify, regress or vae"),
    (["--set", "model=no_such_model"], r"unknown model 'no_such_model'; valid models: mlp_mnist"),
    (["--set", "dataset=mnist3"], r"unknown dataset 'mnist3'; valid datasets: mnist"),
])
def test_train_user_errors_exit_2_with_one_line(extra, message, tmp_path, capsys):
    import re

    assert cli.main(_train_args(tmp_path / "runs", *extra)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("tcomplex train: error: ")
    assert re.search(message, line), line
    assert not (tmp_path / "runs").exists()


def test_train_missing_dataset_exits_2_naming_dataset_and_root(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(_train_args(tmp_path / "runs", data_root=empty)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"dataset 'mnist' not found under {empty}" in line and "--data-root" in line


# --------------------------------------------------------------------------- #
# sweep
# --------------------------------------------------------------------------- #
def _sweep_file(tmp_path, grid) -> Path:
    f = tmp_path / "sweep.json"
    base = {"model": "mlp_mnist", "dataset": "mnist", "epochs": 1, "train_subset": 1000, "test_subset": 500,
            "analysis_per_class": 10, "eval_train_size": 1000, "device": "cpu"}
    f.write_text(json.dumps({"base": base, "grid": grid}))
    return f


def test_sweep_dry_run_lists_the_runs(tmp_path, capsys):
    f = _sweep_file(tmp_path, {"seed": [0, 1], "lr": [0.1, 0.01]})
    assert cli.main(["sweep", str(f), "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("to run") == 4 and "4 runs" in out


def test_sweep_runs_and_reports(data_root, tmp_path, capsys):
    f = _sweep_file(tmp_path, {"seed": [5]})
    out = tmp_path / "runs"
    assert cli.main(["sweep", str(f), "--out", str(out), "--workers", "1", "--threads", "1",
                     "--data-root", data_root]) == 0
    assert "1 finished, 0 skipped (already finished), 0 failed" in capsys.readouterr().out
    assert load_results(out, finished_only=True)["seed"].unique().tolist() == [5]
    # a failing grid point: exit 1, reported; the finished run is skipped
    f = _sweep_file(tmp_path, {"seed": [5], "model": ["mlp_mnist", "no_such_model"]})
    assert cli.main(["sweep", str(f), "--out", str(out), "--threads", "1", "--data-root", data_root]) == 1
    report = capsys.readouterr().out
    assert "0 finished, 1 skipped (already finished), 1 failed" in report
    assert "FAILED" in report and "unknown model 'no_such_model'" in report


@pytest.mark.parametrize("content, message", [
    ({"base": {}, "grid": {"sed": [1]}}, "unknown TrainConfig field 'sed'"),
    ({"bas": {}}, r"unknown top-level keys \['bas'\]"),
])
def test_sweep_bad_file_exits_2(content, message, tmp_path, capsys):
    import re

    f = tmp_path / "s.json"
    f.write_text(json.dumps(content))
    assert cli.main(["sweep", str(f), "--out", str(tmp_path / "runs")]) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err))
    assert cli.main(["sweep", str(tmp_path / "missing.json")]) == 2
    assert "sweep file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# the reproducers of issue 11: clear errors
# --------------------------------------------------------------------------- #
def test_sweep_dry_run_finds_config_errors(tmp_path, capsys):
    f = _sweep_file(tmp_path, {"optimizer": ["sgd", "adamw"], "model": ["mlp_mnist", "no_such_model"]})
    assert cli.main(["sweep", str(f), "--out", str(tmp_path / "runs"), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("to run") == 1 and captured.out.count("invalid:") == 3
    assert "optimizer must be one of ['sgd', 'adam'], got 'adamw'" in captured.out
    assert "unknown model 'no_such_model'" in captured.out
    assert "3 of 4 runs" in _one_error_line(captured.err)


@pytest.mark.parametrize("setting, message", [
    ("optimizer=adamw", "optimizer must be one of"),
    ("schedule=linear", "schedule must be one of"),
])
def test_train_config_errors_come_before_the_data(setting, message, tmp_path, capsys):
    empty = tmp_path / "no_data"
    empty.mkdir()  # would give a dataset-not-found error if the data were loaded first
    assert cli.main(_train_args(tmp_path / "r", "--set", setting, data_root=empty)) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_train_with_a_truncated_checkpoint_names_the_file_and_the_fix(data_root, tmp_path, capsys):
    out = tmp_path / "r"
    cfg = TrainConfig(model="mlp_mnist", dataset="mnist", epochs=1, train_subset=1000, test_subset=500,
                      analysis_per_class=10, eval_train_size=1000, device="cpu")
    run = RunDir(out, cfg)
    run.prepare()
    run.save_checkpoint({"epoch": 0, "model": {}})
    run.checkpoint_path.write_bytes(run.checkpoint_path.read_bytes()[:100])
    assert cli.main(_train_args(out, data_root=data_root)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"checkpoint {run.checkpoint_path} is corrupt or truncated" in line and "delete it" in line
    assert "EOFError" not in line.split("(")[0]


# --------------------------------------------------------------------------- #
# issue 15: a killed sweep leaves no process behind
# --------------------------------------------------------------------------- #
def test_kill_9_of_a_sweep_with_two_workers_leaves_no_process(data_root, tmp_path):
    """``kill -9`` of ``tcomplex sweep --workers 2``: its fork server, workers and resource
    tracker are all gone within a few seconds (they used to train on for minutes)."""
    import os
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    f = _sweep_file(tmp_path, {"seed": [0, 1], "epochs": [20]})  # long enough to be killed mid-run
    repo = str(Path(cli.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "tcomplex.cli", "sweep", str(f), "--out", str(tmp_path / "runs"),
           "--workers", "2", "--threads", "1", "--data-root", data_root, "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    descendants = []
    try:
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 240
        # the resource tracker, the fork server and its two workers
        while time.monotonic() < deadline and proc.poll() is None:
            descendants = me.children(recursive=True)
            workers = [p for p in descendants if p.ppid() != proc.pid]
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()}"
        assert len(workers) >= 2, [p.cmdline() for p in descendants]
        time.sleep(1.0)  # the workers are training
        descendants = me.children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        gone_by = time.monotonic() + 10
        alive = descendants
        while alive and time.monotonic() < gone_by:
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        assert not alive, f"still alive 10 s after kill -9: {[' '.join(p.cmdline())[:80] for p in alive]}"
        # nothing of the session is left either (its process group is empty)
        group = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == proc.pid]
        assert not [p for p in group if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for p in descendants:
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def _pgid(pid: int) -> int | None:
    import os

    try:
        return os.getpgid(pid)
    except OSError:
        return None
