"""Tests of tcomplex.experiments.sweep: grids, sweep files, and running sweeps
on the local process pool and on a real (loopback-only) Dask cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tcomplex.experiments import sweep as S
from tcomplex.experiments.train import TrainConfig, run_dir


TINY = {"model": "mlp_mnist", "dataset": "mnist", "epochs": 1, "train_subset": 1000, "test_subset": 500,
        "analysis_per_class": 10, "eval_train_size": 1000, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- #
# expand_grid
# --------------------------------------------------------------------------- #
def test_expand_grid_cartesian_product_in_key_order():
    cfgs = S.expand_grid({"epochs": 3, "model": "mlp_mnist"}, {"seed": [0, 1], "lr": [0.1, 0.01, 0.001]})
    assert len(cfgs) == 6 and all(isinstance(c, TrainConfig) for c in cfgs)
    assert [(c.seed, c.lr) for c in cfgs] == [(0, 0.1), (0, 0.01), (0, 0.001), (1, 0.1), (1, 0.01), (1, 0.001)]
    assert all(c.epochs == 3 for c in cfgs)
    assert len({c.run_id for c in cfgs}) == 6


def test_expand_grid_empty_grid_is_the_base():
    (cfg,) = S.expand_grid({"seed": 4}, {})
    assert cfg == TrainConfig(seed=4)
    assert S.expand_grid(None, None) == [TrainConfig()]


def test_expand_grid_dotted_keys_set_nested_entries():
    cfgs = S.expand_grid(
        {"model": "target_mlp", "model_kwargs": {"residual": True}, "complexity_options.ebm.hidden": 8},
        {"model_kwargs.n_relu": [6, 12], "complexity_lambda": [0.0, 0.1]},
    )
    assert [c.model_kwargs for c in cfgs[::2]] == [{"residual": True, "n_relu": 6}, {"residual": True, "n_relu": 12}]
    assert all(c.complexity_options == {"ebm": {"hidden": 8}} for c in cfgs)
    # the base's dict is not shared between configs
    cfgs[0].model_kwargs["x"] = 1
    assert "x" not in cfgs[2].model_kwargs


def test_expand_grid_coerces_json_values_to_field_types():
    (cfg,) = S.expand_grid({"lr": 1, "kinds": ["relu"], "epochs": 3.0, "augment": "true"}, {})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.kinds == ("relu",) and cfg.epochs == 3 and isinstance(cfg.epochs, int) and cfg.augment is True
    assert cfg.run_id == TrainConfig(lr=1.0, epochs=3, augment=True).run_id


def test_expand_grid_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown TrainConfig field 'sed'; valid fields: model, dataset, .*seed"):
        S.expand_grid({}, {"sed": [0, 1]})
    with pytest.raises(ValueError, match=r"unknown TrainConfig field 'modl_kwargs' \(in 'modl_kwargs.n'\)"):
        S.expand_grid({"modl_kwargs.n": 1}, {})
    with pytest.raises(ValueError, match=r"'lr.x': field 'lr' is not a dict.*model_kwargs"):
        S.expand_grid({}, {"lr.x": [1]})


@pytest.mark.parametrize("grid, message", [
    ({"seed": 3}, r"grid\['seed'\] must be a list"),
    ({"seed": "0,1"}, r"grid\['seed'\] must be a list"),
    ({"seed": []}, r"grid\['seed'\] is an empty list"),
    ({"epochs": ["ten"]}, r"bad value for 'epochs': expected int, got 'ten'"),
    ({"lr": [0.1, None]}, r"grid point \{'lr': None\}: bad value for 'lr': expected float"),
    ({"epochs": [-1]}, r"grid point \{'epochs': -1\}: epochs must be >= 0"),
])
def test_expand_grid_bad_values(grid, message):
    with pytest.raises(ValueError, match=message):
        S.expand_grid({}, grid)


def test_apply_overrides_types():
    out = S.apply_overrides({"alpha": None}, {"alpha": 1, "track_epochs": [0, 2.0], "train_subset": None})
    assert out == {"alpha": 1.0, "track_epochs": [0, 2], "train_subset": None}
    with pytest.raises(ValueError, match="bad value for 'augment': expected bool"):
        S.apply_overrides({}, {"augment": 1})


# --------------------------------------------------------------------------- #
# sweep files
# --------------------------------------------------------------------------- #
def test_load_sweep_file_json(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"description": "two seeds", "base": {"epochs": 2}, "grid": {"seed": [0, 1]}}))
    spec = S.load_sweep_file(f)
    assert spec == {"base": {"epochs": 2}, "grid": {"seed": [0, 1]}, "description": "two seeds"}
    assert [c.seed for c in S.expand_grid(spec["base"], spec["grid"])] == [0, 1]


def test_load_sweep_file_yaml(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "s.yaml"
    f.write_text("base:\n  epochs: 2\n  model_kwargs.bias: true\ngrid:\n  seed: [0, 1, 2]\n")
    spec = S.load_sweep_file(f)
    cfgs = S.expand_grid(spec["base"], spec["grid"])
    assert [c.seed for c in cfgs] == [0, 1, 2] and cfgs[0].model_kwargs == {"bias": True}


def test_load_sweep_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep file not found"):
        S.load_sweep_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        S.load_sweep_file(bad)
    bad.write_text(json.dumps({"base": {}, "grids": {}}))
    with pytest.raises(ValueError, match=r"unknown top-level keys \['grids'\]; valid keys: base, grid"):
        S.load_sweep_file(bad)
    bad.write_text(json.dumps({"grid": [1, 2]}))
    with pytest.raises(ValueError, match="'grid' must be a mapping"):
        S.load_sweep_file(bad)


# --------------------------------------------------------------------------- #
# running sweeps
# --------------------------------------------------------------------------- #
def _grid_with_a_failure() -> tuple[list[TrainConfig], TrainConfig]:
    good = S.expand_grid(TINY, {"seed": [0, 1]})
    (bad,) = S.expand_grid({**TINY, "model_kwargs.no_such_argument": 1}, {})  # MLP(...) raises TypeError
    return good + [good[0], bad], bad  # a duplicate is run once


def _check_first_and_second_pass(configs, bad, root, run):
    good_ids = [c.run_id for c in configs[:2]]
    report = run()
    assert not report.ok
    assert report.finished == good_ids and report.skipped == []
    assert len(report.configs) == 3
    (err,) = report.failed
    assert err.run_id == bad.run_id and err.type == "TypeError"
    assert "no_such_argument" in err.message and "Traceback" in err.traceback and "build_model" in err.traceback
    for rid in good_ids:
        assert (Path(root) / rid / "finished.json").is_file()
    summary = report.summary()
    assert "2 finished, 0 skipped (already finished), 1 failed" in summary and "FAILED" in summary
    df = report.results()
    assert sorted(df["run_id"].unique()) == sorted(good_ids)
    assert sorted(df["epoch"].unique()) == [0, 1]

    again = run()  # finished runs are skipped, the failed one is retried
    assert again.skipped == good_ids and again.finished == []
    assert [e.run_id for e in again.failed] == [bad.run_id]
    assert "0 finished, 2 skipped (already finished), 1 failed" in again.summary()
    return report


def test_run_sweep_on_the_local_process_pool(data_root, tmp_path):
    configs, bad = _grid_with_a_failure()
    _check_first_and_second_pass(
        configs, bad, tmp_path, lambda: S.run_sweep(configs, tmp_path, data_root=data_root, max_workers=1, threads=1,
                                                  progress=False))


def test_run_sweep_on_a_dask_cluster(data_root, tmp_path):
    distributed = pytest.importorskip("distributed")
    configs, bad = _grid_with_a_failure()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        _check_first_and_second_pass(
            configs, bad, tmp_path, lambda: S.run_sweep(configs, tmp_path, data_root=data_root, scheduler=address,
                                                        progress=False))


def test_run_sweep_with_everything_finished_submits_nothing(tmp_path):
    cfg = TrainConfig(**TINY)
    d = run_dir(tmp_path, cfg)
    d.mkdir(parents=True)
    (d / "finished.json").write_text("{}")

    class NoSubmit:
        def submit(self, *a, **k):
            raise AssertionError("a finished run was submitted")

    report = S.run_sweep([cfg, cfg.to_dict()], tmp_path, executor=NoSubmit(), progress=False)
    assert report.ok and report.skipped == [cfg.run_id] and report.finished == [] and report.failed == []
    assert report.results().empty


def test_run_sweep_without_dask_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ImportError, match=r"tcomplex\[sweep\]"):
        S.run_sweep([TrainConfig(**TINY)], tmp_path, scheduler="tcp://127.0.0.1:1", progress=False)


def test_run_sweep_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        S.run_sweep([TrainConfig(**TINY)], tmp_path, max_workers=0)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        S.run_sweep([TrainConfig(**TINY)], tmp_path, threads=0)
    with pytest.raises(ValueError, match="either executor or scheduler"):
        S.run_sweep([TrainConfig(**TINY)], tmp_path, executor=object(), scheduler="tcp://x:1")


def test_run_sweep_on_a_given_executor_resumes_an_interrupted_run(data_root, tmp_path, monkeypatch):
    """A user's executor (here threads of this process) is used and not shut down; an
    interrupted run is resumed from its checkpoint and reported as such."""
    from concurrent.futures import ThreadPoolExecutor

    from tcomplex.experiments import train as T
    from tcomplex.experiments.runs import RunDir

    cfg = TrainConfig(**{**TINY, "epochs": 2, "train_subset": 500})
    original = RunDir.write_rows

    def killed_at_epoch_1(run, epoch, rows, config):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        original(run, epoch, rows, config)

    monkeypatch.setattr(RunDir, "write_rows", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path, data_root=data_root, progress=False)
    monkeypatch.setattr(RunDir, "write_rows", original)

    with ThreadPoolExecutor(max_workers=1) as pool:
        report = S.run_sweep([cfg], tmp_path, data_root=data_root, executor=pool, progress=False)
        assert report.ok and report.finished == [cfg.run_id] and report.resumed == {cfg.run_id: 1}
        assert "resumed from epoch 1" in report.summary()
        assert pool.submit(lambda: 42).result() == 42  # still usable
    assert sorted(report.results()["epoch"].unique()) == [0, 1, 2]


def test_run_sweep_reports_a_lost_task(tmp_path):
    """A task whose future raises (a worker that died, a lost connection) is a failed run."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class DyingWorkers:
        def submit(self, fn, *args, **kwargs):
            fut = Future()
            fut.set_exception(BrokenProcessPool("a worker died abruptly"))
            return fut

    cfgs = S.expand_grid(TINY, {"seed": [0, 1]})
    report = S.run_sweep(cfgs, tmp_path, executor=DyingWorkers(), progress=False)
    assert not report.ok and report.finished == []
    assert [(e.run_id, e.type) for e in report.failed] == [(c.run_id, "BrokenProcessPool") for c in cfgs]
    assert "a worker died abruptly" in report.summary()


# --------------------------------------------------------------------------- #
# issue 15: a bad Dask address is named, with what was expected, within the timeout
# --------------------------------------------------------------------------- #
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_on(address, tmp_path):
    import time

    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        S.run_sweep([TrainConfig(**TINY)], tmp_path, scheduler=address, progress=False)
    return str(info.value), time.monotonic() - t0


@pytest.fixture
def short_connect_timeout(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(S, "DASK_CONNECT_TIMEOUT_S", 2.0)


def test_dask_refused_port_and_unknown_host_are_named_at_once(tmp_path, short_connect_timeout):
    port = _free_port()
    message, seconds = _sweep_on(f"tcp://127.0.0.1:{port}", tmp_path)
    assert f"'tcp://127.0.0.1:{port}'" in message and "connection refused" in message
    assert "expected the address of a running Dask scheduler" in message
    assert seconds < 2.0 + 3.0  # was ~45 s, then "Timed out trying to connect"
    message, seconds = _sweep_on("tcp://no-such-host.invalid:8786", tmp_path)
    assert "unknown host 'no-such-host.invalid'" in message and "Dask scheduler" in message
    assert seconds < 2.0 + 3.0
    message, _ = _sweep_on("tcp://127.0.0.1:notaport", tmp_path)
    assert "port 'notaport' is not a number" in message


def test_dask_address_of_another_service_is_named_within_the_timeout(tmp_path, short_connect_timeout):
    import http.server
    import socket
    import threading

    # an HTTP server (e.g. the scheduler's dashboard) waits for a request: no handshake
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    # a service that speaks first (ssh-like banner) sends no Dask frame header
    banner = socket.socket()
    banner.bind(("127.0.0.1", 0))
    banner.listen(1)

    def greet():
        conn, _ = banner.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        conn.close()

    threading.Thread(target=greet, daemon=True).start()
    try:
        address = f"tcp://127.0.0.1:{srv.server_address[1]}"
        message, seconds = _sweep_on(address, tmp_path)  # was: MemoryError: Unable to allocate 3.07 EiB
        assert f"127.0.0.1:{srv.server_address[1]} accepts connections but is not a Dask scheduler" in message
        assert "no Dask handshake within 2 s" in message and 1.5 < seconds < 2.0 + 3.0
        message, seconds = _sweep_on(f"tcp://127.0.0.1:{banner.getsockname()[1]}", tmp_path)
        assert "is not a Dask scheduler" in message and "SSH-2.0" in message and seconds < 2.0 + 3.0
    finally:
        srv.shutdown()
        srv.server_close()
        banner.close()


def test_cli_sweep_with_a_bad_scheduler_is_one_line(tmp_path, short_connect_timeout, capsys):
    from tcomplex import cli

    f = tmp_path / "s.json"
    f.write_text(json.dumps({"base": TINY, "grid": {}}))
    port = _free_port()
    code = cli.main(["sweep", str(f), "--out", str(tmp_path / "runs"), "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert f"tcomplex sweep: error: cannot reach the Dask scheduler 'tcp://127.0.0.1:{port}'" in err
