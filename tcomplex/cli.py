"""The ``tcomplex`` command line.

Subcommands::

    tcomplex train --model M --dataset D --epochs N [--seed S] [--out runs]
                   [--data-root PATH] [--set key=value ...]
    tcomplex sweep FILE [--out runs] [--scheduler tcp://host:8786] [--workers N]
                   [--threads T] [--data-root PATH] [--dry-run]
    tcomplex run NOTEBOOK --profile P [-p key value ...]
    tcomplex book [--profile P]

Errors that are the user's fault (a missing dataset, an unknown field, a bad
value) print one line to stderr and exit with status 2; ``--traceback`` shows
the full traceback instead.  The experiment modules are imported only by the
subcommands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "parse_set", "cmd_train", "cmd_sweep", "cmd_run", "cmd_book"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """An error caused by the command line or its inputs: reported in one line, exit 2."""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
class _StderrHandler(logging.Handler):
    """Writes to the *current* ``sys.stderr`` (which tests may swap) through
    ``tqdm.write``, so log lines print above a progress bar, not through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("tcomplex")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _tty() -> bool:
    return sys.stderr.isatty()


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.1", "model_kwargs.n_relu=3", "label=x"]`` -> ``{"lr": 0.1, ...}``.

    Each value is read as JSON when it parses (numbers, true/false/null, lists,
    objects), else taken as a string.  Keys are checked later, against the
    fields of TrainConfig.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key] = value
    return out


def _string_fields_raw(overrides: dict[str, Any], raw: list[str] | None) -> dict[str, Any]:
    """Keep the literal text for string fields (``--set label=2024`` is the string '2024')."""
    from tcomplex.experiments.sweep import config_fields

    fields = config_fields()
    literal = {k.strip(): v for k, _, v in (i.partition("=") for i in raw or [])}
    return {k: (literal[k] if fields.get(k) is str and not isinstance(v, str) else v) for k, v in overrides.items()}


def _one_line(exc: BaseException) -> str:
    """A dataset error or any other exception as one line."""
    from tcomplex.experiments.data import DatasetNotFoundError

    if isinstance(exc, DatasetNotFoundError):
        missing = ", ".join(exc.missing or exc.expected)
        return (f"dataset '{exc.dataset}' not found under {exc.root} (missing: {missing}); "
                f"pass --data-root PATH or set TCOMPLEX_DATA")
    text = str(exc).strip() or type(exc).__name__
    lines = [ln for ln in text.splitlines() if ln.strip("- ")] or [type(exc).__name__]
    first = lines[0] if len(lines) == 1 else lines[0] + " ..."
    notes = getattr(exc, "__notes__", None) or []
    return "; ".join([first, *notes])


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------
def _train_config(args: argparse.Namespace):
    from tcomplex.experiments import data as data_mod
    from tcomplex.experiments import models as models_mod
    from tcomplex.experiments.sweep import apply_overrides
    from tcomplex.experiments.train import TrainConfig, validate_config

    base: dict[str, Any] = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs}
    if args.seed is not None:
        base["seed"] = args.seed
    overrides = _string_fields_raw(parse_set(args.set), args.set)
    try:
        values = apply_overrides(base, overrides)
        cfg = TrainConfig.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    if cfg.model not in models_mod.list_models():
        raise UserError(f"unknown model {cfg.model!r}; valid models: {', '.join(models_mod.list_models())}")
    if cfg.dataset not in data_mod.DATASETS:
        raise UserError(f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(data_mod.DATASETS)}")
    try:
        validate_config(cfg)  # every config error before any data is loaded
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    return cfg


def _summary_table(rows) -> str:
    import pandas as pd

    from tcomplex.experiments.measure import ALL

    if rows is None or rows.empty:
        return "(no rows)"
    wanted = ["H", "I_XSY", "test_acc"]
    sel = rows[(rows["layer"] == ALL) & rows["metric"].isin(wanted)]
    table = sel.pivot_table(index="epoch", columns="metric", values="value", aggfunc="first")
    table = table.reindex(columns=[m for m in wanted if m in table.columns])
    with pd.option_context("display.float_format", "{:.4f}".format):
        return table.to_string()


def cmd_train(args: argparse.Namespace) -> int:
    """``tcomplex train``: one run with complexity tracking (resumes if interrupted)."""
    cfg = _train_config(args)
    from tcomplex.experiments.runs import RunDir
    from tcomplex.experiments.train import train, tracked_epochs

    out = Path(args.out)
    rd = RunDir(out, cfg)
    run = rd.path
    epochs = tracked_epochs(cfg.epochs, cfg.track_every, cfg.track_log, cfg.track_epochs)
    log = logging.getLogger("tcomplex.cli")
    log.info("run %s -> %s (tracked epochs: %s)", cfg.run_id, run, ", ".join(map(str, epochs)))
    already = rd.is_finished()
    show = _tty() and not args.quiet
    result = train(cfg, out, data_root=args.data_root, progress=show)

    print(f"run {result.run_id}")
    if already:
        print(f"already finished earlier, not redone (delete {run} to train it again)")
    elif result.resumed_from is not None:
        print(f"resumed from the checkpoint of epoch {result.resumed_from}")
    print(_summary_table(result.rows))
    print(f"rows:       {rd.rows_dir}  (load all runs with tcomplex.experiments.runs.load_results({str(out)!r}))")
    print(f"checkpoint: {rd.checkpoint_path}")
    print(f"config:     {run / 'config.json'}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    """``tcomplex sweep FILE``: every run of a sweep file; exit 1 if any failed."""
    from tcomplex.experiments.sweep import expand_grid, load_sweep_file, run_sweep

    try:
        spec = load_sweep_file(args.file)
        configs = expand_grid(spec["base"], spec["grid"])
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    for name in ("workers", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if args.dry_run:
        from tcomplex.experiments.runs import RunDir
        from tcomplex.experiments.train import validate_config

        bad = 0
        for cfg in configs:
            try:
                validate_config(cfg)
            except (ValueError, TypeError) as exc:
                bad += 1
                print(f"{cfg.run_id}  invalid: {exc}")
                continue
            print(f"{cfg.run_id}  {'finished' if RunDir(args.out, cfg).is_finished() else 'to run'}")
        print(f"{len(configs)} runs" + (f", {bad} invalid" if bad else ""))
        if bad:
            raise UserError(f"{bad} of {len(configs)} runs of {args.file} have config errors (listed above); "
                            "fix them in the sweep file")
        return EXIT_OK
    try:
        report = run_sweep(configs, args.out, data_root=args.data_root, scheduler=args.scheduler,
                           max_workers=args.workers, threads=args.threads, progress=_tty() and not args.quiet)
    except (ImportError, ConnectionError) as exc:  # no Dask, or a bad --scheduler address
        raise UserError(str(exc)) from None
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


# ---------------------------------------------------------------------------
# placeholders (implemented by another module later)
# ---------------------------------------------------------------------------
def _notebook_value(text: str) -> Any:
    """A notebook parameter from the command line: JSON when it parses, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _notebook_epilog() -> str:
    """The notebooks of the book, for ``tcomplex run --help`` (empty outside a checkout)."""
    try:
        from tcomplex.experiments import notebooks as nbs

        names = nbs.notebook_names()
    except Exception:  # noqa: BLE001 - help must print anywhere
        return ""
    return ("notebooks: " + ", ".join(names) +
            "\nparameters of one: tcomplex run NOTEBOOK --profile PROFILE --list-params")


def cmd_run(args: argparse.Namespace) -> int:
    """``tcomplex run NOTEBOOK --profile P [-p key value]... [--variant NAME] [--list-params]``.

    Without ``-p`` the notebook runs with its profile's parameters (the book's page);
    with ``-p`` it runs as a named variant beside it, never over it.
    """
    from tcomplex.experiments import notebooks as nbs

    name = Path(args.notebook).stem
    overrides = {k: _notebook_value(v) for k, v in args.parameters}
    try:
        root = nbs.project_root()
        if args.list_params:
            declared = nbs.declared_parameters(name, root)
            profile = nbs.resolve_parameters(name, args.profile, None, root)
            print(f"{name}: parameters (notebook default -> profile {args.profile})")
            for key, default in declared.items():
                print(f"  {key:24s} {default!r:32s} -> {profile.get(key, default)!r}")
            return 0
        variant = args.variant or (nbs.variant_name(overrides) if overrides else None)
        if variant:
            nbs.variant_dir(args.profile, variant, root)  # a bad name fails here, before any kernel
        nbs.resolve_parameters(name, args.profile, overrides, root)  # validate before starting a kernel
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"executing {name} with profile {args.profile}" + (f" and {overrides}" if overrides else ""))
    out = nbs.run_notebook(name, args.profile, overrides, root=root, progress=sys.stderr.isatty(), variant=variant)
    print(f"executed notebook: {out}")
    if variant:
        print(f"variant {variant!r}: see it in the book with `tcomplex book --profile {args.profile} --variant {variant}`")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    """``tcomplex book [--profile P] [--variant NAME]...``: execute missing or stale notebooks, then build the HTML."""
    from tcomplex.experiments import notebooks as nbs

    profile = args.profile or nbs.DEFAULT_PROFILE
    try:
        root = nbs.project_root()
        stale = nbs.stale_notebooks(profile, root)
        known = nbs.variant_names(profile, root)
        bad = [v for v in args.variant if v not in known]
        if bad:
            raise ValueError(f"profile {profile!r} has no variant {bad}; variants: {known or 'none'}")
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if stale:
        print(f"profile {profile}: executing {len(stale)} notebook(s): {', '.join(stale)}")
    else:
        print(f"profile {profile}: every executed notebook is current; rendering only")
    # the report collects every chapter's findings, so it runs last
    ordered = [n for n in nbs.notebook_names(root) if n in stale]
    if any(n != "00_report" for n in ordered) and "00_report" not in ordered:
        ordered.append("00_report")
    for name in ordered:
        print(f"  running {name} ...", flush=True)
        nbs.run_notebook(name, profile, root=root, progress=sys.stderr.isatty())
    html = nbs.build_book(profile, root, variants=args.variant)
    print(f"book built: {html / 'index.html'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``tcomplex status [--profile P]``: which notebooks are current, stale or missing, and their run times."""
    from tcomplex.experiments import notebooks as nbs

    profile = args.profile or nbs.DEFAULT_PROFILE
    try:
        rows = nbs.profile_status(profile)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"profile {profile}:")
    print(f"  {'notebook':24s} {'state':8s} {'minutes':>8s}  cpu path")
    total = 0.0
    for r in rows:
        minutes = "" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
        total += r["seconds"] or 0.0
        print(f"  {r['notebook']:24s} {r['state']:8s} {minutes:>8s}  {r['cpu_path'] or ''}")
    print(f"  {'total':24s} {'':8s} {total / 60:8.1f}")
    if any(r["cpu_path"] == "other" for r in rows):
        print("  (other: executed on another CPU kernel path than the pinned one; its trained-network "
              "numbers may differ in the last digits)")
    return 0


# ---------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcomplex",
        description="Transformation complexity of ReLU networks: training with complexity tracking, "
        "sweeps, and the reproducible book.",
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="runs", help="directory of the runs (default: runs)")
    common.add_argument("--data-root", default=None, metavar="PATH",
                        help="data root (default: $TCOMPLEX_DATA, else ./data)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("train", parents=[common], help="train one model with complexity tracking",
                       description="Train one run; an interrupted run resumes from its checkpoint, "
                       "a finished run is not redone.")
    p.add_argument("--model", required=True, help="a model of the registry, e.g. mlp_mnist, lenet5, resnet20")
    p.add_argument("--dataset", required=True, help="e.g. mnist, fashion_mnist, cifar10")
    p.add_argument("--epochs", required=True, type=int)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field (repeatable), e.g. --set lr=0.1 --set train_subset=5000 "
                   "--set model_kwargs.n_relu=3; values are JSON when they parse, else strings")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", parents=[common], help="run a grid of trainings from a sweep file",
                       description="Run every config of a sweep file ({'base': {...}, 'grid': {...}}, JSON "
                       "or YAML); finished runs are skipped, failed ones retried on the next call.")
    p.add_argument("file", help="sweep file (.json, .yaml)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address, e.g. tcp://host:8786 (needs tcomplex[sweep])")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: 1 with several workers, else torch's default)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("run", help="execute one notebook of the book with a profile's parameters",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Execute one notebook. Without -p it runs with the profile's parameters and "
                       "replaces the profile's executed copy; with -p it runs as a named variant in "
                       "papermill_runs/PROFILE/variants/NAME/ (the committed notebook is never overwritten) that "
                       "`tcomplex book --variant NAME` adds to the book. Parameters are checked against the "
                       "notebook's declared defaults (name, type, sign) before any kernel starts.",
                       epilog=_notebook_epilog())
    p.add_argument("notebook")
    p.add_argument("--profile", required=True)
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   dest="parameters", help="notebook parameter (repeatable); VALUE is JSON when it parses")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="name of the variant (default: made from the -p parameters)")
    p.add_argument("--list-params", action="store_true",
                   help="list the notebook's parameters, their defaults and the profile's values, and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("book", help="execute missing or stale notebooks of a profile, then build the HTML book",
                       description="Execute what is missing or stale for the profile, then render it into "
                       "book/_build/PROFILE/html (each profile its own folder).")
    p.add_argument("--profile", default=None, help="profile to render (default: offline)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME",
                   help="add a variant made by `tcomplex run -p ...` as a page (repeatable); nothing is re-executed")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("status", help="list a profile's notebooks: current, stale or missing, with run times")
    p.add_argument("--profile", default=None, help="profile (default: offline)")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(getattr(args, "quiet", False))
    if args.traceback:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"tcomplex {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"tcomplex {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - classified below
        from tcomplex.experiments.data import DatasetNotFoundError
        from tcomplex.experiments.runs import RunFileError

        user = isinstance(exc, (DatasetNotFoundError, RunFileError, ValueError, TypeError))
        print(f"tcomplex {args.command}: error: {type(exc).__name__ + ': ' if not user else ''}{_one_line(exc)}"
              + ("" if user else " (rerun with --traceback for details)"), file=sys.stderr)
        return EXIT_USAGE if user else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
