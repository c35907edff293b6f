"""Sweeps: grids of training runs, run locally or on a Dask cluster.

A sweep is a list of :class:`~tcomplex.experiments.train.TrainConfig` s, usually
the cartesian product of a few lists of values (models x seeds x lambda x task n
x depth ...) around a base configuration::

    configs = expand_grid(
        {"model": "target_mlp", "dataset": "mnist", "task": "regress", "epochs": 50},
        {"seed": [0, 1, 2], "task_n": [0, 4, 8], "model_kwargs.n_relu": [6, 12]},
    )
    report = run_sweep(configs, "runs")            # local process pool
    report = run_sweep(configs, "runs", scheduler="tcp://host:8786")  # Dask
    print(report.summary())
    df = report.results()                           # tidy rows of these runs

Every run is :func:`~tcomplex.experiments.train.train` in a worker process, so a
sweep inherits its guarantees: a finished run (``finished.json``) is never
redone and an interrupted run resumes from its checkpoint.  :func:`run_sweep`
skips finished runs without submitting them, records failed runs (error type,
message, traceback) without stopping the others, and rerunning the same sweep
retries only what failed or is missing.

Dask workers must see the same ``root`` (and data root) as the submitting
process: a shared file system, or a local cluster.  Install the Dask extra
with ``pip install 'tcomplex[sweep]'``.

Sweep definition files (JSON, or YAML when PyYAML is installed) hold
``{"base": {...}, "grid": {...}}`` (and an optional free-text
``"description"``); see :func:`load_sweep_file`.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from tcomplex.experiments.runs import RunDir, pid_alive
from tcomplex.experiments.train import TrainConfig, load_results

__all__ = [
    "DASK_CONNECT_TIMEOUT_S",
    "RunError",
    "SweepReport",
    "apply_overrides",
    "config_fields",
    "expand_grid",
    "load_sweep_file",
    "run_sweep",
]

log = logging.getLogger("tcomplex.sweep")

SWEEP_FILE_KEYS = ("base", "grid", "description")
_INSTALL_HINT = "install it with: pip install 'tcomplex[sweep]'  (or: pip install 'dask[distributed]')"


# ---------------------------------------------------------------------------
# configuration values: keys, dotted keys and types
# ---------------------------------------------------------------------------
def config_fields() -> dict[str, Any]:
    """The fields of :class:`TrainConfig` with their (evaluated) types."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` converted to type ``tp``; ValueError if it is not one.

    Only the conversions a JSON/YAML/command-line value needs: int -> float,
    integral float -> int, list -> tuple, "true"/"false" -> bool.
    """
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except ValueError:
                continue
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError
        item = args[0] if args else Any
        items = [_coerce(item, v) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError
        return dict(value)
    return value  # a type this module does not know: let TrainConfig judge


def _is_dict_field(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _check_key(key: str, fields: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Split a (dotted) key into its field and the path inside it; ValueError if unknown."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"configuration keys must be non-empty strings, got {key!r}")
    name, *path = key.split(".")
    if name not in fields:
        raise ValueError(
            f"unknown TrainConfig field {name!r}"
            + (f" (in {key!r})" if path else "")
            + f"; valid fields: {', '.join(fields)}"
        )
    if path:
        dict_fields = [n for n, t in fields.items() if _is_dict_field(t)]
        if name not in dict_fields:
            raise ValueError(
                f"{key!r}: field {name!r} is not a dict, so it takes no dotted key; "
                f"dotted keys work for {', '.join(dict_fields)}"
            )
        if any(not p for p in path):
            raise ValueError(f"{key!r}: empty part in a dotted key")
    return name, path


def _set(config: dict[str, Any], key: str, value: Any, fields: Mapping[str, Any]) -> None:
    name, path = _check_key(key, fields)
    if not path:
        try:
            config[name] = _coerce(fields[name], value)
        except ValueError:
            raise ValueError(
                f"bad value for {name!r}: expected {_type_name(fields[name])}, got {value!r} "
                f"({type(value).__name__})"
            ) from None
        return
    node = config.get(name)
    node = {} if node is None else copy.deepcopy(node)
    if not isinstance(node, dict):
        raise ValueError(f"{key!r}: {name!r} is {node!r}, not a dict")
    config[name] = node
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{key!r}: {part!r} is {child!r}, not a dict")
        node = child
    node[path[-1]] = value


def _order(key: str) -> tuple[int, str]:
    return key.count("."), key  # whole fields before the dotted keys that edit them


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``overrides`` applied, keys checked and values coerced.

    Keys are :class:`TrainConfig` fields or dotted keys into its dict fields
    (``"model_kwargs.n_relu"`` sets ``model_kwargs["n_relu"]``).  Values are
    converted to the field's type where a JSON value needs it (``1`` for a float
    field, a list for a tuple field).  ``base`` may itself hold dotted keys.

    Raises
    ------
    ValueError
        Unknown key (the message names it and lists the valid fields), or a
        value of the wrong type.
    """
    fields = config_fields()
    out: dict[str, Any] = {}
    for mapping in (base, overrides):
        for key in sorted(mapping, key=_order):
            _set(out, key, copy.deepcopy(mapping[key]), fields)
    return out


def expand_grid(base: Mapping[str, Any] | None, grid: Mapping[str, Sequence[Any]] | None) -> list[TrainConfig]:
    """The cartesian product of ``grid`` around ``base`` as a list of configs.

    Parameters
    ----------
    base:
        Values shared by all runs: :class:`TrainConfig` fields, or dotted keys
        into its dict fields (``"model_kwargs.n_relu"``).
    grid:
        ``key -> list of values`` (same keys as ``base``).  The product is taken
        in the order of the keys, the last key varying fastest.  An empty grid
        gives the single config ``base``.

    Returns
    -------
    list of TrainConfig, in grid order (duplicates are kept; :func:`run_sweep`
    runs each distinct run id once).

    Raises
    ------
    ValueError
        Unknown key (naming it and the valid fields), a grid entry that is not
        a non-empty list, a value of the wrong type, or a combination that
        :class:`TrainConfig` rejects (naming the grid point).
    """
    base = dict(base or {})
    grid = dict(grid or {})
    fields = config_fields()
    for key in list(base) + list(grid):
        _check_key(key, fields)
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"grid[{key!r}] must be a list of values, got {values!r}")
        if len(values) == 0:
            raise ValueError(f"grid[{key!r}] is an empty list, so the grid has no point")
    keys = list(grid)
    configs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, combo))
        try:
            configs.append(TrainConfig.from_dict(apply_overrides(base, point)))
        except (ValueError, TypeError) as exc:
            where = f"grid point {point}: " if point else ""
            raise ValueError(f"{where}{exc}") from None
    return configs


def load_sweep_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sweep definition ``{"base": {...}, "grid": {...}}``.

    JSON (``.json``) or YAML (``.yaml``/``.yml``, needs PyYAML).  ``"grid"``
    maps keys to lists of values; ``"description"`` is optional free text.
    Returns the dict with ``base`` and ``grid`` present (empty if absent);
    pass them to :func:`expand_grid`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Unparsable file, unknown top-level key, or ``base``/``grid`` not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sweep file not found: {p}")
    text = p.read_text()
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{p}: reading YAML needs PyYAML (pip install pyyaml), or write the sweep as JSON") from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{p}: not valid YAML: {exc}") from None
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON: {exc}") from None
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"{p}: a sweep file holds a mapping {{'base': ..., 'grid': ...}}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SWEEP_FILE_KEYS))
    if unknown:
        raise ValueError(f"{p}: unknown top-level keys {unknown}; valid keys: {', '.join(SWEEP_FILE_KEYS)}")
    out = {"base": spec.get("base") or {}, "grid": spec.get("grid") or {}}
    for k in ("base", "grid"):
        if not isinstance(out[k], dict):
            raise ValueError(f"{p}: {k!r} must be a mapping, got {type(out[k]).__name__}")
    if "description" in spec:
        out["description"] = spec["description"]
    return out


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunError:
    """A run that failed: the exception's type name, message and traceback text."""

    run_id: str
    config: TrainConfig
    type: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.run_id}: {self.type}: {self.message}"


@dataclass
class SweepReport:
    """The outcome of :func:`run_sweep`.

    ``finished``: run ids trained to completion by this call (resumed or not);
    ``skipped``: run ids already finished before it; ``failed``: a
    :class:`RunError` per run that raised (or whose worker died).
    """

    root: Path
    configs: dict[str, TrainConfig]  # run id -> config, every distinct run of the sweep
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[RunError] = field(default_factory=list)
    resumed: dict[str, int] = field(default_factory=dict)  # run id -> epoch it resumed from
    run_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every run of the sweep is finished."""
        return not self.failed and len(self.finished) + len(self.skipped) == len(self.configs)

    @property
    def run_ids(self) -> list[str]:
        return list(self.configs)

    def summary(self) -> str:
        n = len(self.configs)
        lines = [
            f"sweep of {n} run{'s' if n != 1 else ''} in {self.root}: {len(self.finished)} finished, "
            f"{len(self.skipped)} skipped (already finished), {len(self.failed)} failed "
            f"[{self.seconds:.1f} s]"
        ]
        for rid in self.finished:
            extra = f", resumed from epoch {self.resumed[rid]}" if rid in self.resumed else ""
            lines.append(f"  done    {rid} ({self.run_seconds.get(rid, 0.0):.1f} s{extra})")
        for err in self.failed:
            lines.append(f"  FAILED  {err.run_id}: {err.type}: {_first_line(err.message)}")
        if self.failed:
            lines.append("rerun the same sweep to retry the failed runs (finished runs are skipped)")
        return "\n".join(lines)

    def results(self, *, finished_only: bool = False) -> pd.DataFrame:
        """The tidy rows (see :func:`~tcomplex.experiments.train.load_results`) of this sweep's runs."""
        df = load_results(self.root, finished_only=finished_only)
        if df.empty or "run_id" not in df.columns:
            return df
        return df[df["run_id"].isin(self.configs)].reset_index(drop=True)


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


# one training at a time per process: train() reseeds torch's global RNG, which
# threads of one process (a Dask worker with several threads) would share
_TRAIN_LOCK = threading.Lock()


def _run_one(config: dict[str, Any], root: str, data_root: str | None, num_threads: int | None) -> dict[str, Any]:
    """Worker side: train one run; every exception is returned, not raised.

    Returning the error as text keeps exceptions that do not pickle (or whose
    classes the submitting process cannot import) from breaking the sweep.
    """
    run_id = "?"
    try:
        cfg = TrainConfig.from_dict(config)
        run_id = cfg.run_id
        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)
        from tcomplex.experiments.train import train

        with _TRAIN_LOCK:
            result = train(cfg, root, data_root=data_root, progress=False)
        return {"ok": True, "run_id": run_id, "seconds": result.seconds, "resumed_from": result.resumed_from}
    except BaseException as exc:  # noqa: BLE001 - reported to the submitting process
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and threading.current_thread() is threading.main_thread():
            raise
        return {
            "ok": False, "run_id": run_id, "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }


def _set_parent_death_signal() -> None:
    """Linux: SIGKILL this process when its parent process ends (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the watchdog below still works
        pass


def _die_with(sweep_pid: int) -> None:
    """Worker initializer: end this worker as soon as the sweep's process ends, even by SIGKILL.

    A pool worker is a child of the fork server, not of the sweep, and holds the
    fork server's and the resource tracker's pipes open: if the sweep is killed
    (``kill -9``), the worker would train on for minutes and keep them, and the
    caller's stdout, alive.  A daemon thread waits on a pidfd of the sweep's
    process (polls its pid where pidfds do not exist) and then SIGKILLs the fork
    server (the sweep's own, idle without it; alive while this worker holds its
    pipe, so its pid cannot have been reused) and the worker; the resource
    tracker sees its pipe close and exits too.  The direct parent's death also
    kills the worker (PR_SET_PDEATHSIG on Linux).
    """
    _set_parent_death_signal()
    server_pid = os.getppid()  # the fork server (or the sweep itself under spawn)
    try:
        fd: int | None = os.pidfd_open(sweep_pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (AttributeError, OSError):
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has exited
        else:
            while pid_alive(sweep_pid) and os.getppid() == server_pid:
                time.sleep(0.5)
        if server_pid not in (sweep_pid, 1) and os.getppid() == server_pid:
            try:
                os.kill(server_pid, signal.SIGKILL)
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="tcomplex-sweep-watchdog", daemon=True).start()


def _mp_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where available, else ``spawn``: never a plain fork of a process using torch.

    The fork server (a fresh interpreter, started once per process) imports
    torch and this package before it forks workers, so a worker starts in a
    fraction of a second instead of re-importing torch.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["tcomplex.experiments.train"])  # no effect once the server runs
        return ctx
    return multiprocessing.get_context("spawn")


#: seconds to reach a Dask scheduler and get its handshake before the sweep gives up
DASK_CONNECT_TIMEOUT_S = 10.0
_DASK_DEFAULT_PORT = 8786
_EXPECTED = "expected the address of a running Dask scheduler, e.g. tcp://HOST:8786 (start one with `dask scheduler`)"


def _scheduler_host_port(address: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a ``tcp://`` or ``tls://`` address (scheme optional), else None."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme not in ("tcp", "tls"):
        return None  # inproc://, ucx://, ...: left to distributed
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):  # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise ConnectionError(f"Dask scheduler address {address!r} has no host; {_EXPECTED}")
    try:
        port = int(port_text) if port_text else _DASK_DEFAULT_PORT
    except ValueError:
        raise ConnectionError(f"Dask scheduler address {address!r}: port {port_text!r} is not a number; {_EXPECTED}") from None
    return scheme, host, port


def _probe_scheduler(address: str, timeout: float) -> None:
    """Check within ``timeout`` s that a Dask scheduler answers at ``address``; ConnectionError if not.

    distributed itself retries a refused port or an unknown host until its own
    timeout and then says only "Timed out trying to connect", and it reads the
    first bytes a non-Dask service sends as a frame length (a MemoryError of
    exbibytes).  Here: resolve the host, open a TCP connection, and (for tcp://)
    read the 8-byte frame length a Dask scheduler sends first on every new
    connection (its handshake), which must be a plausible size.
    """
    parsed = _scheduler_host_port(address)
    if parsed is None:
        return
    scheme, host, port = parsed
    where = f"Dask scheduler {address!r}"
    deadline = time.monotonic() + timeout
    resolved: list[Any] = []

    def resolve() -> None:
        try:
            resolved.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            resolved.append(exc)

    t = threading.Thread(target=resolve, daemon=True)
    t.start()
    t.join(timeout)
    if not resolved:
        raise ConnectionError(f"cannot reach the {where}: host {host!r} did not resolve within {timeout:g} s; {_EXPECTED}")
    if isinstance(resolved[0], OSError):
        reason = getattr(resolved[0], "strerror", None) or resolved[0]
        raise ConnectionError(f"cannot reach the {where}: unknown host {host!r} ({reason}); {_EXPECTED}")
    try:
        sock = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1))
    except ConnectionRefusedError:
        raise ConnectionError(
            f"cannot reach the {where}: connection refused at {host}:{port}, nothing listens on that port; {_EXPECTED}"
        ) from None
    except TimeoutError:
        raise ConnectionError(
            f"cannot reach the {where}: no answer from {host}:{port} within {timeout:g} s (host down or port "
            f"filtered); {_EXPECTED}"
        ) from None
    except OSError as exc:
        raise ConnectionError(f"cannot reach the {where}: {host}:{port}: {exc.strerror or exc}; {_EXPECTED}") from None
    if scheme != "tcp":
        sock.close()  # tls:// starts with a TLS handshake: leave the rest to distributed
        return
    not_dask = f"{host}:{port} accepts connections but is not a Dask scheduler"
    try:
        head = b""
        while len(head) < 8:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(8 - len(head))
            if not chunk:
                raise ConnectionError(f"{not_dask} (it closed the connection without a handshake); {_EXPECTED}")
            head += chunk
    except TimeoutError:
        raise ConnectionError(
            f"{not_dask} (it sent no Dask handshake within {timeout:g} s; is this the scheduler's port, not its "
            f"dashboard's?); {_EXPECTED}"
        ) from None
    except OSError as exc:
        if isinstance(exc, ConnectionError) and str(exc).startswith(not_dask):
            raise
        raise ConnectionError(f"{not_dask} ({exc.strerror or exc}); {_EXPECTED}") from None
    finally:
        sock.close()
    (nbytes,) = struct.unpack("<Q", head)
    if not 0 < nbytes < 2**26:
        raise ConnectionError(f"{not_dask} (its first bytes {head!r} are no Dask frame header); {_EXPECTED}")


def _dask_executor(scheduler: str, timeout: float | None = None):
    try:
        from distributed import Client
    except ImportError:
        raise ImportError(f"running a sweep on a Dask scheduler needs dask.distributed; {_INSTALL_HINT}") from None
    timeout = DASK_CONNECT_TIMEOUT_S if timeout is None else timeout
    _probe_scheduler(scheduler, timeout)
    try:
        client = Client(scheduler, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - translated: distributed's own message names neither
        raise ConnectionError(
            f"could not connect to the Dask scheduler {scheduler!r} within {timeout:g} s: "
            f"{type(exc).__name__}: {_first_line(str(exc))}; {_EXPECTED}"
        ) from exc
    # pure=False: a retried run is a new task, never a cached (failed) result
    return client, client.get_executor(pure=False)


def _cluster_threads(client) -> int:
    try:
        return int(sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - only a hint for torch's thread count
        return 1


def run_sweep(
    configs: Iterable[TrainConfig | Mapping[str, Any]],
    root: str | os.PathLike[str] = "runs",
    *,
    data_root: str | os.PathLike[str] | None = None,
    executor: cf.Executor | None = None,
    scheduler: str | None = None,
    max_workers: int | None = None,
    threads: int | None = None,
    progress: bool | None = None,
) -> SweepReport:
    """Train every config of a sweep, skipping finished runs and surviving failures.

    Parameters
    ----------
    configs:
        :class:`TrainConfig` s (or dicts of their fields, dotted keys allowed),
        e.g. from :func:`expand_grid`.  Configs with the same run id are run once.
    root:
        Directory of the runs (one sub-directory per run id).  Dask workers
        must see it at the same path.
    data_root:
        Data root passed to :func:`train` (default: ``$TCOMPLEX_DATA`` or
        ``./data``, resolved here for local workers, on each worker for Dask).
    executor:
        Any :class:`concurrent.futures.Executor` to run on; it is not shut
        down.  Default: a process pool (``forkserver``, else ``spawn``) of ``max_workers``,
        or a Dask cluster when ``scheduler`` is given.
    scheduler:
        Address of a Dask scheduler, e.g. ``"tcp://host:8786"`` (needs
        ``tcomplex[sweep]``).
    max_workers:
        Size of the local process pool (default 1; ignored with ``executor``
        or ``scheduler``).
    threads:
        ``torch.set_num_threads`` in the workers.  Default: 1 when more than
        one run can run at once (a pool of several workers, a Dask cluster
        with several threads in all), else torch's default.
    progress:
        A tqdm bar over runs (default: when stderr is a terminal).

    Returns
    -------
    SweepReport
        Finished, skipped and failed runs; ``report.results()`` gives the rows.

    Notes
    -----
    Local workers are started with ``forkserver`` (``spawn`` where it does not
    exist): a script calling this function must guard it with
    ``if __name__ == "__main__":``.
    """
    t0 = time.perf_counter()
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if executor is not None and scheduler is not None:
        raise ValueError("pass either executor or scheduler, not both")
    root_path = Path(os.path.abspath(root))
    root_path.mkdir(parents=True, exist_ok=True)
    unique: dict[str, TrainConfig] = {}
    for c in configs:
        cfg = c if isinstance(c, TrainConfig) else TrainConfig.from_dict(apply_overrides({}, c))
        unique.setdefault(cfg.run_id, cfg)
    report = SweepReport(root=root_path, configs=unique)
    todo = []
    for rid, cfg in unique.items():
        if RunDir(root_path, cfg).is_finished():
            report.skipped.append(rid)
        else:
            todo.append(cfg)
    log.info("sweep: %d runs, %d already finished, %d to run", len(unique), len(report.skipped), len(todo))
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report

    own_executor, client = None, None
    if executor is None:
        if scheduler is not None:
            client, executor = _dask_executor(scheduler)
            num_threads = 1 if _cluster_threads(client) > 1 else None
            worker_data_root = os.path.abspath(data_root) if data_root is not None else None
        else:
            workers = max_workers or 1
            executor = own_executor = cf.ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=_mp_context(),
                initializer=_die_with, initargs=(os.getpid(),),  # workers die with this process
            )
            num_threads = 1 if workers > 1 else None
            from tcomplex.experiments.data import resolve_data_root

            worker_data_root = os.path.abspath(resolve_data_root(data_root))
    else:
        num_threads = None
        worker_data_root = os.path.abspath(data_root) if data_root is not None else None
    if threads is not None:
        num_threads = threads

    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(unique), initial=len(report.skipped), desc="sweep", unit="run")
    futures: dict[cf.Future, TrainConfig] = {}
    try:
        for cfg in todo:
            try:
                fut = executor.submit(_run_one, cfg.to_dict(), str(root_path), worker_data_root, num_threads)
            except Exception as exc:  # noqa: BLE001 - e.g. a broken pool: report, go on
                report.failed.append(_error_from_exception(cfg, exc))
                continue
            futures[fut] = cfg
        for fut in cf.as_completed(futures):
            cfg = futures[fut]
            error: RunError | None = None
            try:
                out = fut.result()
            except Exception as exc:  # noqa: BLE001 - the worker died or the task was lost
                error = _error_from_exception(cfg, exc)
            else:
                if out["ok"]:
                    report.finished.append(cfg.run_id)
                    report.run_seconds[cfg.run_id] = float(out["seconds"])
                    if out.get("resumed_from") is not None:
                        report.resumed[cfg.run_id] = int(out["resumed_from"])
                else:
                    error = RunError(cfg.run_id, cfg, out["type"], out["message"], out["traceback"])
            done = len(report.finished) + len(report.skipped) + len(report.failed) + (error is not None)
            if error is not None:
                report.failed.append(error)
                log.warning("[%d/%d] run %s failed: %s: %s", done, len(unique), cfg.run_id, error.type,
                            _first_line(error.message))
            else:
                log.info("[%d/%d] run %s finished (%.1f s)", done, len(unique), cfg.run_id,
                         report.run_seconds[cfg.run_id])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=len(report.failed))
    except BaseException:
        for fut in futures:
            fut.cancel()
        if own_executor is not None:
            own_executor.shutdown(wait=False, cancel_futures=True)
            own_executor = None
        raise
    finally:
        if bar is not None:
            bar.close()
        if own_executor is not None:
            own_executor.shutdown(wait=True)
        if client is not None:
            client.close()
    order = {rid: i for i, rid in enumerate(unique)}
    report.finished.sort(key=order.__getitem__)
    report.failed.sort(key=lambda e: order[e.run_id])
    report.seconds = time.perf_counter() - t0
    return report


def _error_from_exception(cfg: TrainConfig, exc: BaseException) -> RunError:
    return RunError(cfg.run_id, cfg, type(exc).__name__, str(exc) or repr(exc),
                    "".join(traceback.format_exception(exc)))
