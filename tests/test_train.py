"""Tests of tcomplex.experiments.train: tracked epochs, configs, determinism,
accuracy on real MNIST, resuming after a kill, and data-root errors.

MNIST is read from ``TCOMPLEX_DATA`` (or ``<repo>/../shared/data``); tests that
need it are skipped when it is absent.  Budgets are tiny (a few hundred to a
few thousand images, 1-12 short epochs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tcomplex.experiments import data as data_mod
from tcomplex.experiments import measure as measure_mod
from tcomplex.experiments import runs as runs_mod
from tcomplex.experiments import train as T
from tcomplex.experiments.data import DatasetNotFoundError
from tcomplex.experiments.runs import RunDir, RunFileError
from tcomplex.experiments.train import TrainConfig, tracked_epochs

REPO = Path(__file__).resolve().parents[1]
KEY = ["epoch", "layer", "metric", "bin"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(**kw) -> TrainConfig:
    base = dict(model="mlp_mnist", dataset="mnist", epochs=1, train_subset=600, test_subset=300,
                analysis_per_class=10, eval_train_size=600, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _without_seconds(df: pd.DataFrame) -> pd.DataFrame:
    out = df[df["metric"] != "epoch_seconds"].sort_values(KEY, na_position="first")
    return out.reset_index(drop=True)


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(_without_seconds(a), _without_seconds(b), check_exact=True)


def _assert_no_duplicates(df: pd.DataFrame) -> None:
    dup = df[df.duplicated(KEY, keep=False)]
    assert dup.empty, f"duplicated rows:\n{dup[KEY]}"


# --------------------------------------------------------------------------- #
# tracked epochs, configs, run ids
# --------------------------------------------------------------------------- #
def test_tracked_epochs_default_union_of_every_k_and_fibonacci():
    assert tracked_epochs(10) == [0, 1, 2, 3, 5, 8, 10]
    assert tracked_epochs(30) == [0, 1, 2, 3, 5, 8, 10, 13, 15, 20, 21, 25, 30]
    assert tracked_epochs(0) == [0]
    assert tracked_epochs(1) == [0, 1]


def test_tracked_epochs_options():
    assert tracked_epochs(10, every=0, log_spaced=False) == [0, 10]
    assert tracked_epochs(12, every=3, log_spaced=False) == [0, 3, 6, 9, 12]
    assert tracked_epochs(7, every=5, log_spaced=False) == [0, 5, 7]  # the last epoch always
    assert tracked_epochs(10, explicit=[4, 2, 2, 0]) == [0, 2, 4]  # explicit wins, sorted, unique
    with pytest.raises(ValueError, match=r"track_epochs \[11\] outside 0..10"):
        tracked_epochs(10, explicit=[1, 11])


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "segment"}, "task must be classify, regress or vae"),
    ({"epochs": -1}, "epochs must be >= 0"),
    ({"task": "regress"}, "task='regress' needs task_n"),
    ({"complexity_lambda": -0.1}, "complexity_lambda must be >= 0"),
    ({"normalization": "zscore"}, r"normalization must be one of \['dataset', 'half'\], got 'zscore'"),
    ({"normalization": "half", "dataset": "celeba"}, "available for the in-memory datasets"),
])
def test_train_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_train_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['bogus'\]; valid fields: .*'lr'"):
        TrainConfig.from_dict({"bogus": 1, "lr": 0.1})


def test_run_id_is_stable_and_changes_with_each_field():
    a = TrainConfig()
    assert a.run_id == TrainConfig().run_id
    assert a.run_id.startswith("mlp_mnist-mnist-s0-")
    assert TrainConfig.from_dict(json.loads(json.dumps(a.to_dict()))).run_id == a.run_id  # JSON round trip
    changed = [TrainConfig(seed=1), TrainConfig(lr=0.02), TrainConfig(epochs=11), TrainConfig(train_subset=100),
               TrainConfig(model_kwargs={"bias": True}), TrainConfig(kinds=("relu", "leaky_relu")),
               TrainConfig(complexity_lambda=0.1), TrainConfig(data_seed=0), TrainConfig(normalization="half"),
               TrainConfig(flip=True), TrainConfig(memory_format="channels_last"), TrainConfig(vae_ce_weight=10.0),
               TrainConfig(schedule="log"), TrainConfig(track_steps=[0, 1, 2])]
    ids = {c.run_id for c in changed}
    assert a.run_id not in ids and len(ids) == len(changed)
    # free text and the device are not part of the identity
    assert TrainConfig(label="a note", device="cpu").run_id == a.run_id


def test_run_ids_of_runs_made_before_data_seed_and_normalization_existed_are_kept():
    # pinned ids of two configs, computed before those fields were added: the run caches stay valid
    assert TrainConfig().run_id == "mlp_mnist-mnist-s0-f424db156e"
    assert TrainConfig(model="lenet5", seed=3, train_subset=1000).run_id == "lenet5-mnist-s3-7e7b479a87"


@pytest.mark.parametrize("kwargs, message", [
    ({"memory_format": "nhwc"}, r"memory_format must be one of \['contiguous', 'channels_last'\], got 'nhwc'"),
    ({"flip": True, "augment": True, "dataset": "cifar10"}, "already flips; set one of them"),
    ({"vae_ce_weight": 0.0}, "vae_ce_weight must be > 0"),
    ({"schedule": "exp"}, r"schedule must be one of \['none', 'cosine', 'step', 'log'\]"),
    ({"track_steps": [0, -1]}, r"track_steps must be a non-empty list of optimiser steps >= 0"),
    ({"track_steps": []}, r"track_steps must be a non-empty list"),
    ({"track_steps": [1.5]}, r"track_steps must be a non-empty list"),
])
def test_training_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T.validate_config(TrainConfig(**kwargs))


def test_recipe_configs_start_from_the_recipe_and_explicit_fields_win():
    assert T.recipe("mlp_alpha") == {"lr": 0.003} and T.recipe("mlp_mnist") == {}
    assert T.recipe_config("mlp_alpha", epochs=2).lr == 0.003
    assert T.recipe_config("mlp_alpha", lr=0.01).lr == 0.01  # a study's own learning rate wins
    vae = T.recipe_config("vae_classifier", task="vae")
    assert (vae.optimizer, vae.lr, vae.vae_ce_weight) == ("adam", 1e-3, 50.0)
    assert T.recipe_config("resnet20").memory_format == "channels_last"
    assert T.recipe_config("mlp_mnist", seed=3) == TrainConfig(model="mlp_mnist", seed=3)
    with pytest.raises(ValueError, match="unknown model 'mlp9'; valid models: .*mlp_mnist"):
        T.recipe_config("mlp9")


def test_log_schedule_goes_from_lr_to_a_hundredth_log_spaced():
    cfg = TrainConfig(epochs=5, lr=0.01, schedule="log")
    opt = T.make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = T.make_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01, 0.01 * 10 ** -0.5, 1e-3, 0.01 * 10 ** -1.5, 1e-4])


def test_random_flip_flips_about_half_the_images_and_is_seeded():
    x = torch.arange(64 * 3 * 2 * 4, dtype=torch.float32).view(64, 3, 2, 4)
    out = data_mod.RandomFlip(seed=3)(x)
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(64)]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # every image is either flipped or kept
    assert 16 < sum(flipped) < 48
    assert torch.equal(data_mod.RandomFlip(seed=3)(x), out) and not torch.equal(data_mod.RandomFlip(seed=4)(x), out)


def test_channels_last_flip_and_vae_weight_train_deterministically(data_root, tmp_path):
    tiny = dict(epochs=1, train_subset=512, test_subset=256, analysis_per_class=5, eval_train_size=256,
                track_every=1, track_log=False, per_layer=False, rates=False)
    cl = _tiny(model="lenet5", memory_format="channels_last", flip=True, **tiny)
    a = T.train(cl, tmp_path / "a", data_root=data_root, progress=False).rows
    b = T.train(cl, tmp_path / "b", data_root=data_root, progress=False).rows
    timed = lambda r: r[r.metric != "epoch_seconds"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(timed(a), timed(b))
    plain = T.train(_tiny(model="lenet5", **tiny), tmp_path / "c", data_root=data_root, progress=False).rows
    loss = lambda r: r[(r.metric == "epoch_train_loss") & (r.layer == T.ALL)].value.item()  # noqa: E731
    assert loss(a) != loss(plain)  # the flip changed the batches
    vae = dict(model="vae_classifier", task="vae", **tiny)
    w1 = T.train(_tiny(**vae), tmp_path / "d", data_root=data_root, progress=False).rows
    w9 = T.train(_tiny(vae_ce_weight=9.0, **vae), tmp_path / "e", data_root=data_root, progress=False).rows
    assert loss(w9) > loss(w1)  # the weighted cross-entropy is part of the training loss


def test_data_seed_fixes_the_training_subset_across_seeds(data_root):
    def subset(**kw):
        return T.prepare_data(_tiny(**kw), data_root).train_y
    base = subset(seed=0)
    assert torch.equal(subset(seed=5, data_seed=0), base)  # same images, other init
    assert not torch.equal(subset(seed=5), base)  # default: the subset follows the seed
    assert not torch.equal(subset(seed=0, data_seed=1), base)


def test_half_normalization_maps_pixels_to_minus_one_one(data_root):
    x_half = T.prepare_data(_tiny(normalization="half"), data_root).train_x
    x_std = T.prepare_data(_tiny(), data_root).train_x
    assert float(x_half.min()) == -1.0 and float(x_half.max()) == 1.0
    assert float(x_std.min()) == pytest.approx(-0.1307 / 0.3081, rel=1e-6)


# --------------------------------------------------------------------------- #
# real training
# --------------------------------------------------------------------------- #
MNIST_2EP = dict(epochs=2, train_subset=3000, test_subset=2000, analysis_per_class=20, eval_train_size=3000)


@pytest.fixture(scope="module")
def mnist_run(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs_a")
    return T.train(_tiny(**MNIST_2EP), root, data_root=data_root, progress=False)


def test_two_epochs_on_mnist_learn(mnist_run):
    rows = mnist_run.rows
    assert sorted(rows["epoch"].unique()) == [0, 1, 2]
    acc = rows[(rows.metric == "test_acc") & (rows.layer == T.ALL)].set_index("epoch")["value"]
    assert acc[0] < 0.3  # chance before training
    assert acc[2] > 0.5, acc
    h = rows[(rows.metric == "H") & (rows.layer == T.ALL)]["value"]
    assert h.between(0, 20).all()  # at most log2(200 analysis images) ~ 7.6 bits
    # files on disk: one rows file per tracked epoch, a checkpoint, finished.json, config.json
    run = mnist_run.path
    assert sorted(p.name for p in (run / "rows").iterdir()) == [f"epoch_{e:05d}.csv" for e in (0, 1, 2)]
    assert (run / "checkpoint.pt").is_file() and (run / "finished.json").is_file()
    assert json.loads((run / "config.json").read_text())["train_subset"] == 3000
    pd.testing.assert_frame_equal(T.load_results(run.parent), rows)


def test_same_config_twice_gives_identical_rows(mnist_run, data_root, tmp_path):
    again = T.train(_tiny(**MNIST_2EP), tmp_path, data_root=data_root, progress=False)
    assert again.run_id == mnist_run.run_id
    _assert_same_rows(again.rows, mnist_run.rows)


def test_finished_run_is_not_redone(mnist_run, data_root):
    t0 = time.perf_counter()
    again = T.train(_tiny(**MNIST_2EP), mnist_run.path.parent, data_root=data_root, progress=False)
    assert time.perf_counter() - t0 < 5
    assert again.resumed_from is None and again.seconds == 0.0
    pd.testing.assert_frame_equal(again.rows, mnist_run.rows)  # including epoch_seconds: the same files


def test_finished_run_keeps_only_the_trained_model(mnist_run, data_root, tmp_path):
    """A finished run is never resumed: its checkpoint drops the optimiser state (disk), the model loads as trained."""
    state = torch.load(mnist_run.path / "checkpoint.pt", weights_only=False)
    assert state["compact"] is True and state["epoch"] == 2
    assert "optimizer" not in state and "scheduler" not in state
    cfg = _tiny(**MNIST_2EP)
    model = RunDir(mnist_run.path.parent, cfg).load_model(cfg)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    # a run killed after its finished flag but before compaction: compaction is idempotent and shrinks the file
    full = dict(state, optimizer={"state": {0: {"m": torch.zeros(100_000)}}, "param_groups": []}, compact=False)
    run = RunDir(tmp_path, cfg)
    run.prepare()
    run.save_checkpoint(full)
    before = run.checkpoint_path.stat().st_size
    run.compact_checkpoint()
    after = run.checkpoint_path.stat().st_size
    assert after < before - 300_000
    run.compact_checkpoint()
    assert run.checkpoint_path.stat().st_size == after
    assert "optimizer" not in run.load_checkpoint()


# a training process that is slowed down (not changed) so that the test can kill it mid-run
_KILLABLE = """
import json, sys, time
import torch
torch.set_num_threads(1)  # as in the test process: the same arithmetic
from tcomplex.experiments import train as T
original = T.epoch_batches
def slow(cfg, d, epoch):
    time.sleep(float(sys.argv[4]))
    return original(cfg, d, epoch)
T.epoch_batches = slow
T.train(T.TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], data_root=sys.argv[3], progress=False)
"""

def _killable(cfg: TrainConfig, root: Path, data_root: str, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(cfg.to_dict()), str(root), data_root,
                             str(sleep)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    """kill -9 the training subprocess as soon as ``condition()`` holds."""
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            if proc.poll() is not None:
                pytest.fail(f"the training subprocess ended early (rc {proc.returncode}):\n{proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the kill condition did not hold after {timeout} s")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


RESUME = dict(epochs=8, track_every=3, track_log=False)  # tracked: 0, 3, 6, 8


@pytest.fixture(scope="module")
def resume_reference(data_root, tmp_path_factory):
    return T.train(_tiny(**RESUME), tmp_path_factory.mktemp("ref"), data_root=data_root, progress=False)


def test_resume_after_kill_gives_the_rows_of_an_uninterrupted_run(resume_reference, data_root, tmp_path):
    cfg = _tiny(**RESUME)
    run = T.run_dir(tmp_path, cfg)
    # the checkpoint of epoch 3 is written before the rows of epoch 3
    _kill_when(_killable(cfg, tmp_path, data_root, 0.25), lambda: (run / "rows" / "epoch_00003.csv").exists())
    assert not (run / "finished.json").exists()
    killed_at = torch.load(run / "checkpoint.pt", weights_only=False)["epoch"]
    assert 3 <= killed_at < 8

    resumed = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert resumed.resumed_from == killed_at
    assert (run / "finished.json").exists()
    _assert_no_duplicates(resumed.rows)
    assert sorted(resumed.rows["epoch"].unique()) == [0, 3, 6, 8]
    _assert_same_rows(resumed.rows, resume_reference.rows)

    # and it is finished now: not redone
    t0 = time.perf_counter()
    again = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert time.perf_counter() - t0 < 5 and again.resumed_from is None
    pd.testing.assert_frame_equal(again.rows, resumed.rows)


def test_kill_between_checkpoint_and_rows_loses_no_row(resume_reference, data_root, tmp_path, monkeypatch):
    """The checkpoint of an epoch is written before its rows: a kill in between must not lose them."""
    cfg = _tiny(**RESUME)
    original = RunDir.write_rows

    def killed_at_epoch_6(run, epoch, rows, config):
        if epoch == 6:
            raise KeyboardInterrupt("simulated kill")
        original(run, epoch, rows, config)

    monkeypatch.setattr(RunDir, "write_rows", killed_at_epoch_6)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path, data_root=data_root, progress=False)
    monkeypatch.setattr(RunDir, "write_rows", original)
    run = T.run_dir(tmp_path, cfg)
    assert not (run / "rows" / "epoch_00006.csv").exists()

    resumed = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert resumed.resumed_from == 6
    _assert_no_duplicates(resumed.rows)
    _assert_same_rows(resumed.rows, resume_reference.rows)
    # epoch_train_loss/epoch_seconds of epoch 6 came from the checkpoint, not lost
    assert ((resumed.rows.epoch == 6) & (resumed.rows.metric == "epoch_seconds")).sum() == 1


# --------------------------------------------------------------------------- #
# data root errors
# --------------------------------------------------------------------------- #
def test_missing_dataset_names_dataset_and_root(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        T.train(_tiny(), tmp_path / "runs", data_root=empty, progress=False)
    err = info.value
    assert err.dataset == "mnist"
    assert Path(err.root) == empty.resolve()
    assert "Dataset 'mnist' not found under" in str(err) and str(empty) in str(err)
    assert "MNIST/raw/train-images-idx3-ubyte" in str(err)


def test_unknown_dataset_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist2'"):
        T.train(_tiny(dataset="mnist2"), tmp_path, progress=False)


def test_measure_complexity_shares_layer_distances_without_changing_numbers(monkeypatch):
    # LeNet-5 (ReLU + max-pool one-hots): the dense path (whole-network distances = sum of the
    # layers') gives the numbers of the direct estimators, row for row
    torch.manual_seed(0)
    from tcomplex.experiments.models import build_model
    model = build_model("lenet5", in_channels=1, input_size=28, num_classes=10)
    x, y = torch.randn(120, 1, 28, 28), torch.arange(120) % 10
    kw = dict(kinds=("relu", "maxpool"), tc=True)
    dense = pd.DataFrame(T.measure_complexity(model, x, y, **kw))
    monkeypatch.setattr(measure_mod, "DENSE_MAX_SAMPLES", 0)
    direct = pd.DataFrame(T.measure_complexity(model, x, y, **kw))
    assert dense[["layer", "metric", "bin"]].equals(direct[["layer", "metric", "bin"]])
    assert set(dense.metric) >= {"H", "I_XSY", "C", "TC", "rate_hist"} and dense.layer.nunique() == 7
    assert dense.value.to_numpy() == pytest.approx(direct.value.to_numpy(), rel=1e-7, abs=1e-7)


def test_training_subset_too_small_for_the_analysis_set_names_the_fix(data_root):
    with pytest.raises(ValueError, match=r"train_subset of 600 images of mnist is too small for "
                                         r"analysis_per_class=100 .*raise train_subset or lower analysis_per_class"):
        T.prepare_data(_tiny(analysis_per_class=100), data_root)


def test_check_data_fails_fast_like_train(data_root, tmp_path):
    T.check_data(_tiny(), data_root)  # fine
    with pytest.raises(ValueError, match="raise train_subset or lower analysis_per_class"):
        T.check_data(_tiny(analysis_per_class=100), data_root)
    with pytest.raises(DatasetNotFoundError):
        T.check_data(_tiny(), tmp_path)


def test_train_many_checks_every_config_before_training(data_root, tmp_path):
    from tcomplex.experiments.studies.common import Context, train_many

    ctx = Context.create("quick", str(tmp_path / "runs"), str(tmp_path / "results"), data_root)
    good, bad = _tiny(), _tiny(analysis_per_class=100)
    with pytest.raises(ValueError, match="too small for analysis_per_class=100"):
        train_many([good, bad], ctx)
    assert not (tmp_path / "runs" / good.run_id).exists()  # nothing trained before the check


# --------------------------------------------------------------------------- #
# checkpoint every epoch, corrupt files, temporary files, config errors first
# --------------------------------------------------------------------------- #
ONE_TRACKED = dict(epochs=4, track_epochs=[4], train_subset=600)


@pytest.fixture(scope="module")
def one_tracked_reference(data_root, tmp_path_factory):
    return T.train(_tiny(**ONE_TRACKED), tmp_path_factory.mktemp("ref1"), data_root=data_root, progress=False)


def test_kill_with_only_the_last_epoch_tracked_resumes_from_the_last_finished_epoch(
        one_tracked_reference, data_root, tmp_path):
    """track_epochs=[4]: a kill -9 after epoch 1 has finished loses at most the epoch in progress."""
    cfg = _tiny(**ONE_TRACKED)
    run = RunDir(tmp_path, cfg)
    # 1 s before each epoch: time to kill during epoch 2; the checkpoint is written atomically after epoch 1
    _kill_when(_killable(cfg, tmp_path, data_root, 1.0), run.checkpoint_path.exists)
    killed_at = torch.load(run.checkpoint_path, weights_only=False)["epoch"]
    assert 1 <= killed_at < 4
    assert not run.is_finished() and not run.has_rows(4)

    resumed = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert resumed.resumed_from == killed_at  # not 0: the epochs before the kill were kept
    assert sorted(resumed.rows["epoch"].unique()) == [4]
    _assert_same_rows(resumed.rows, one_tracked_reference.rows)
    assert not list(run.path.rglob("*.tmp*"))


def test_truncated_checkpoint_names_the_file_and_the_fix(data_root, tmp_path):
    cfg = _tiny(epochs=2, track_epochs=[2])
    run = RunDir(tmp_path, cfg)
    run.prepare()
    run.write_config(cfg)
    run.save_checkpoint({"epoch": 1, "model": {}})
    data = run.checkpoint_path.read_bytes()
    run.checkpoint_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFileError, match=rf"checkpoint {re.escape(str(run.checkpoint_path))} is corrupt or "
                                           r"truncated .*delete it to train the run again from epoch 0"):
        T.train(cfg, tmp_path, data_root=data_root, progress=False)


def test_truncated_rows_file_of_a_finished_run_names_the_file(mnist_run, tmp_path):
    import shutil
    run = tmp_path / mnist_run.path.name
    shutil.copytree(mnist_run.path, run)
    f = run / "rows" / "epoch_00002.csv"
    text = f.read_text()
    f.write_text(text[: len(text) - 40])  # cut in the middle of the last row
    with pytest.raises(RunFileError, match=rf"rows file {re.escape(str(f))} is truncated.*train the run again"):
        T.train(_tiny(**MNIST_2EP), tmp_path, progress=False)
    with pytest.raises(RunFileError, match="epoch_00002.csv"):
        T.load_results(tmp_path)


def test_temporary_files_are_removed_on_errors_and_after_kills(tmp_path, monkeypatch):
    cfg = _tiny()
    run = RunDir(tmp_path, cfg)
    run.prepare()

    def broken_save(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        run.save_checkpoint({"epoch": 1, "model": {}})
    assert not list(run.path.iterdir())  # neither checkpoint nor temporary file
    # a temporary file of a killed process (its pid no longer runs) is removed when the run is opened
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run.path / f"checkpoint.pt.tmp{dead.pid}"
    stale.write_bytes(b"x")
    run.prepare()
    assert not stale.exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adamw"), "optimizer must be one of"),
    (dict(model="lenet6"), "unknown model 'lenet6'"),
    (dict(dataset="mnist2"), "unknown dataset 'mnist2'"),
    (dict(schedule="linear"), "schedule must be one of"),
    (dict(bandwidth="silverman"), "bandwidth must be one of"),
    (dict(kinds=("relu", "gelu")), r"kinds \['gelu'\] unknown"),
    (dict(model_kwargs={"widht": 3}), "cannot be built with model_kwargs"),
])
def test_config_errors_are_found_before_any_data_is_loaded(kwargs, message, tmp_path, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data were loaded before the config was checked")

    monkeypatch.setattr(data_mod, "load_tensors", no_data)
    monkeypatch.setattr(data_mod, "load_dataset", no_data)
    with pytest.raises((ValueError, TypeError), match=message):
        T.train(_tiny(**kwargs), tmp_path, data_root=tmp_path, progress=False)
    assert not (tmp_path / _tiny(**kwargs).run_id).exists()


# --------------------------------------------------------------------------- #
# the public substrate API: analysis set, callbacks
# --------------------------------------------------------------------------- #
def test_analysis_set_for_is_the_set_train_measures(data_root):
    cfg = _tiny(normalization="half", analysis_per_class=5)
    x, y = T.analysis_set_for(cfg, data_root)
    d = T.prepare_data(cfg, data_root)
    assert torch.equal(x, d.analysis_x) and torch.equal(y, d.analysis_y)
    assert float(x.min()) == -1.0  # the run's normalisation
    full_x, _ = data_mod.analysis_set("mnist", per_class=5, data_root=data_root)
    assert not torch.equal(x, full_x)  # images of the run's training subset, not of the full split
    more, _ = T.analysis_set_for(cfg, data_root, per_class=8)
    assert len(more) == 80


def test_callbacks_see_every_epoch_and_every_tracked_epoch(data_root, tmp_path):
    cfg = _tiny(epochs=3, track_epochs=[0, 2], train_subset=300)
    seen: list[tuple[str, int, bool]] = []

    def on_tracked(st: T.TrainState) -> None:
        seen.append(("tracked", st.epoch, any(r["metric"] == "H" for r in st.rows)))
        st.rows.append({"layer": T.ALL, "metric": "from_callback", "value": float(st.epoch), "bin": None})

    def on_epoch(st: T.TrainState) -> None:
        assert st.epoch_loss is not None and st.seconds is not None
        seen.append(("epoch", st.epoch, st.rows is not None))

    res = T.train(cfg, tmp_path, data_root=data_root, progress=False,
                  callbacks={"on_tracked_epoch": on_tracked, "on_epoch_end": [on_epoch]})
    assert seen == [("tracked", 0, True), ("epoch", 1, False), ("tracked", 2, True), ("epoch", 2, True),
                    ("epoch", 3, False)]
    extra = res.rows[res.rows.metric == "from_callback"]
    assert extra.value.tolist() == [0.0, 2.0]  # rows a callback adds are written with the others
    assert torch.load(RunDir(tmp_path, cfg).checkpoint_path, weights_only=False)["epoch"] == 3
    with pytest.raises(ValueError, match="unknown callback event 'on_batch_end'"):
        T.train(_tiny(seed=9), tmp_path, data_root=data_root, callbacks={"on_batch_end": on_epoch})


def test_no_module_imports_a_private_name_of_another_module():
    import ast

    # the project's own modules: a third-party private name (e.g. torch.overrides'
    # function-mode stack, which a gating test inspects) has no public twin to use
    ours = {"tcomplex"} | {f.stem for folder in ("tests", "benchmarks") for f in (REPO / folder).glob("*.py")}
    hits = []
    for folder in ("tcomplex", "tests", "benchmarks"):
        for f in sorted((REPO / folder).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            tree = ast.parse(f.read_text())
            modules = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    if node.level == 0 and (node.module or "").split(".")[0] not in ours:
                        continue
                    modules.update(a.asname or a.name for a in node.names)
                    hits += [f"{rel}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
                elif isinstance(node, ast.Import):
                    modules.update((a.asname or a.name).split(".")[0] for a in node.names
                                   if a.name.split(".")[0] in ours)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and isinstance(node.value, ast.Name) and node.value.id in modules):
                    hits.append(f"{rel}:{node.lineno} {node.value.id}.{node.attr}")
    assert not hits, hits


class _FakePenalty:
    """A complexity penalty that adds nothing: records how train() scoped it."""

    def __init__(self, log: list[str], context_manager: bool):
        self.log = log
        if context_manager:
            self.__class__ = _FakePenaltyCM

    def step_energy_model(self) -> float:
        return 0.0

    def loss(self) -> torch.Tensor:
        return torch.zeros(())

    def diagnostics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def remove(self) -> None:
        self.log.append("remove")


class _FakePenaltyCM(_FakePenalty):
    def __enter__(self):
        self.log.append("enter")
        return self

    def __exit__(self, *exc) -> None:
        self.log.append("exit")


@pytest.mark.parametrize("context_manager, expected", [(True, ["enter", "exit"]), (False, ["remove"])])
def test_train_scopes_the_penalty_and_always_releases_it(context_manager, expected, data_root, tmp_path):
    log: list[str] = []
    cfg = _tiny(complexity_lambda=1e-3, train_subset=200, track_epochs=[1])
    T.train(cfg, tmp_path, data_root=data_root, progress=False,
            penalty_factory=lambda *a, **k: _FakePenalty(log, context_manager))
    assert log == expected
    log.clear()  # also when training fails
    with pytest.raises(ValueError, match="unknown callback"):
        T.train(_tiny(complexity_lambda=1e-3, train_subset=200, seed=4), tmp_path, data_root=data_root,
                progress=False, penalty_factory=lambda *a, **k: _FakePenalty(log, context_manager),
                callbacks={"bad": []})
    boom = _tiny(complexity_lambda=1e-3, train_subset=200, seed=5)

    def fail(st: T.TrainState) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        T.train(boom, tmp_path, data_root=data_root, progress=False,
                penalty_factory=lambda *a, **k: _FakePenalty(log, context_manager), callbacks={"on_epoch_end": fail})
    assert log == expected


def test_analysis_set_for_the_full_split_is_shared_by_every_seed(data_root):
    a, _ = T.analysis_set_for(_tiny(seed=0, analysis_per_class=30), data_root, full_split=True)
    b, _ = T.analysis_set_for(_tiny(seed=1, analysis_per_class=30), data_root, full_split=True)
    full, _ = data_mod.analysis_set("mnist", per_class=30, data_root=data_root)
    assert torch.equal(a, b) and torch.equal(a, full)  # 30 per class: more than 600 images may hold
    half, _ = T.analysis_set_for(_tiny(normalization="half", analysis_per_class=30), data_root, full_split=True)
    assert float(half.min()) == -1.0


# --------------------------------------------------------------------------- #
# sub-epoch tracking (track_steps)
# --------------------------------------------------------------------------- #
# 600 images, batch 128: 5 optimiser steps per epoch; steps 0, 1, 2, 4 fall in epoch 1, step 8 in epoch 2
STEPS = dict(epochs=2, track_every=0, track_log=False, per_layer=False)
STEP_LIST = [0, 1, 2, 4, 8]
STEP_KEY = ["step", "layer", "metric", "bin"]


def _same_step_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    order = lambda df: df.sort_values(STEP_KEY, na_position="first").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(order(a), order(b), check_exact=True)


@pytest.fixture(scope="module")
def steps_reference(data_root, tmp_path_factory):
    return T.train(_tiny(track_steps=STEP_LIST, **STEPS), tmp_path_factory.mktemp("steps"), data_root=data_root,
                   progress=False)


def test_track_steps_measures_after_the_listed_steps_without_changing_training(steps_reference, data_root,
                                                                                 tmp_path):
    steps = steps_reference.steps
    assert sorted(steps.step.unique()) == STEP_LIST
    assert steps.groupby("step").epoch.first().to_dict() == {0: 1, 1: 1, 2: 1, 4: 1, 8: 2}
    assert steps.groupby("step").epoch_fraction.first().to_dict() == pytest.approx(
        {0: 0.0, 1: 0.2, 2: 0.4, 4: 0.8, 8: 1.6})
    assert {"H", "I_XSY", "test_acc", "train_loss"} <= set(steps.metric)
    # the steps files are not epoch rows
    assert sorted(steps_reference.rows.epoch.unique()) == [0, 2] and "step" not in steps_reference.rows
    # step 0 is the untrained network: the rows of epoch 0
    value = lambda df, m: df[(df.metric == m) & (df.layer == T.ALL)].value.item()  # noqa: E731
    epoch0 = steps_reference.rows[steps_reference.rows.epoch == 0]
    step0 = steps[steps.step == 0]
    for m in ("H", "I_XSY", "test_loss"):
        assert value(step0, m) == value(epoch0, m)
    # H moves between the measured steps (the network is measured mid-epoch, not once per epoch)
    hs = [value(steps[steps.step == s], "train_loss") for s in STEP_LIST]
    assert len(set(hs)) == len(hs)
    # measuring mid-epoch changes nothing of the training: the same epoch rows as without track_steps
    plain = T.train(_tiny(**STEPS), tmp_path, data_root=data_root, progress=False).rows
    cols = ["epoch", "layer", "metric", "value", "bin"]
    _assert_same_rows(plain[cols], steps_reference.rows[cols])
    # a finished run returns its step rows from the files
    again = T.train(_tiny(track_steps=STEP_LIST, **STEPS), steps_reference.path.parent, data_root=data_root,
                    progress=False)
    assert again.seconds == 0.0
    _same_step_rows(again.steps, steps)
    _same_step_rows(T.read_step_rows(steps_reference.path.parent, _tiny(track_steps=STEP_LIST, **STEPS)), steps)


def test_track_steps_of_a_vae_keep_training_identical(data_root, tmp_path):
    """The VAE samples while its states are measured: the draws must not shift the training's RNG."""
    vae = dict(model="vae_classifier", task="vae", epochs=1, train_subset=512, test_subset=256, analysis_per_class=5,
               eval_train_size=256, track_every=0, track_log=False, rates=False)
    a = T.train(_tiny(track_steps=[1, 2], **vae), tmp_path / "a", data_root=data_root, progress=False)
    b = T.train(_tiny(**vae), tmp_path / "b", data_root=data_root, progress=False)
    cols = ["epoch", "layer", "metric", "value", "bin"]
    _assert_same_rows(a.rows[cols], b.rows[cols])
    assert sorted(a.steps.step.unique()) == [1, 2] and b.steps.empty


def test_track_steps_beyond_the_run_name_the_last_step(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"track_steps \[11\] lie beyond the run's last step 10 \(2 epochs x 5 "
                                         r"steps\); drop them or train more epochs"):
        T.train(_tiny(track_steps=[0, 11], **STEPS), tmp_path, data_root=data_root, progress=False)


def test_kill_mid_epoch_after_a_measured_step_gives_the_step_rows_of_an_uninterrupted_run(
        steps_reference, data_root, tmp_path, monkeypatch):
    cfg = _tiny(track_steps=STEP_LIST, **STEPS)
    original = T.epoch_batches

    def killed_in_epoch_2(c, d, epoch):
        for i, batch in enumerate(original(c, d, epoch)):
            if epoch == 2 and i == 4:  # steps 6, 7, 8 done, step 8 measured (in memory only)
                raise KeyboardInterrupt("simulated kill")
            yield batch

    monkeypatch.setattr(T, "epoch_batches", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path, data_root=data_root, progress=False)
    monkeypatch.setattr(T, "epoch_batches", original)
    run = T.run_dir(tmp_path, cfg)
    assert sorted(p.name for p in (run / "rows").glob("steps_*")) == ["steps_00001.csv"]
    resumed = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert resumed.resumed_from == 1
    _same_step_rows(resumed.steps, steps_reference.steps)
    _assert_same_rows(resumed.rows, steps_reference.rows)


def test_kill_between_checkpoint_and_step_rows_loses_no_step_row(steps_reference, data_root, tmp_path, monkeypatch):
    cfg = _tiny(track_steps=STEP_LIST, **STEPS)
    original = runs_mod.atomic_write_bytes  # every run file is written through it (RunDir)

    def killed_before_steps_of_epoch_1(path, data):
        if Path(path).name == "steps_00001.csv":
            raise KeyboardInterrupt("simulated kill")
        original(path, data)

    monkeypatch.setattr(runs_mod, "atomic_write_bytes", killed_before_steps_of_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path, data_root=data_root, progress=False)
    monkeypatch.setattr(runs_mod, "atomic_write_bytes", original)
    run = T.run_dir(tmp_path, cfg)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (run / "rows" / "steps_00001.csv").exists()
    resumed = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert resumed.resumed_from == 1
    _same_step_rows(resumed.steps, steps_reference.steps)


def test_sigkill_in_the_epoch_after_measured_steps_gives_the_rows_of_an_uninterrupted_run(
        steps_reference, data_root, tmp_path):
    cfg = _tiny(track_steps=STEP_LIST, **STEPS)
    run = T.run_dir(tmp_path, cfg)
    # epoch 1's steps file is written after its checkpoint; epoch 2 (step 8 measured there) is slowed down
    _kill_when(_killable(cfg, tmp_path, data_root, 0.5), lambda: (run / "rows" / "steps_00001.csv").exists())
    assert not (run / "rows" / "steps_00002.csv").exists() and not (run / "finished.json").exists()
    resumed = T.train(cfg, tmp_path, data_root=data_root, progress=False)
    assert resumed.resumed_from == 1
    _same_step_rows(resumed.steps, steps_reference.steps)
    _assert_same_rows(resumed.rows, steps_reference.rows)
