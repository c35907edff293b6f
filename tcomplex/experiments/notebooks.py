"""Executing the book's notebooks with papermill and rendering them with jupyter-book.

* Source notebooks live in ``book/`` (``01_metrics.ipynb`` ...), each with a
  cell tagged ``parameters``.
* A profile (``papermill_runs/<profile>.yaml``) gives the parameters of every
  notebook: ``quick`` (CI), ``offline`` (the committed book, 2 CPU cores, MNIST
  and Fashion-MNIST) and ``paper`` (the paper's settings, GPU and internet).
* Executed notebooks go to ``papermill_runs/<profile>/<name>.ipynb`` and carry,
  in their metadata, the parameters they ran with and the CPU kernel path.  An
  executed notebook is *current* when its code cells are the source's code cells
  and its parameters are the profile's (:func:`profile_status`; file times are
  useless in a fresh clone).  As in jupyter-cache, only code decides: prose
  (markdown cells), cell tags and code comments do not change results, so editing
  them leaves the executed notebooks current.
* :func:`build_book` renders each page from the *source* notebook's markdown and
  cell tags with the code cells and outputs of the executed copy
  (:func:`render_notebook`), in a staging folder, with ``jupyter-book build``
  and execution off; the HTML lands in ``book/_build/<profile>/html``.
* A rerun with other parameters is a named variant (``papermill_runs/<profile>/
  variants/<name>/``) that never overwrites the committed notebook; the book shows
  it on request (``build_book(variants=[...])``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PROFILES",
    "project_root",
    "load_profile",
    "notebook_names",
    "declared_parameters",
    "check_parameter",
    "resolve_parameters",
    "run_notebook",
    "stale_notebooks",
    "build_book",
    "executed_path",
    "render_notebook",
    "book_dir",
    "variant_name",
    "variant_dir",
    "variant_names",
    "output_root",
    "OUTPUT_ROOT_ENV",
]

PROFILES = ("quick", "offline", "paper")
DEFAULT_PROFILE = "offline"
KERNEL = "python3"
HASH_KEY = "tcomplex"
#: Environment variable: where a notebook's relative ``runs_root`` and ``results_dir`` resolve
#: (default: the project root).  The test session points it at a temporary folder.
OUTPUT_ROOT_ENV = "TCOMPLEX_OUTPUT_ROOT"


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The repository root: the first parent holding ``book/_toc.yml``.

    Searched upwards from ``start`` (default: the working directory), then from
    this package's location (an editable install).
    """
    candidates = [Path(start or os.getcwd()).resolve(), Path(__file__).resolve().parent]
    for c in candidates:
        for p in (c, *c.parents):
            if (p / "book" / "_toc.yml").is_file() and (p / "papermill_runs").is_dir():
                return p
    raise FileNotFoundError(
        "cannot find the tcomplex project (a folder with book/_toc.yml and papermill_runs/): "
        "run this from a checkout of the repository"
    )


def output_root(root: Path | None = None) -> Path:
    """Where relative run and result paths of a notebook resolve: ``$TCOMPLEX_OUTPUT_ROOT``, else the project root."""
    env = os.environ.get(OUTPUT_ROOT_ENV)
    return Path(env).resolve() if env else (root or project_root())


def load_profile(profile: str, root: Path | None = None) -> dict[str, Any]:
    """The profile file ``papermill_runs/<profile>.yaml`` as a dict.

    Keys: ``description``, ``defaults`` (parameters for every notebook) and
    ``notebooks`` (notebook name -> its parameters, in execution order).
    """
    root = root or project_root()
    path = root / "papermill_runs" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "papermill_runs").glob("*.yaml"))
        raise ValueError(f"unknown profile {profile!r}: no {path}; profiles: {known}")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("defaults", {})
    data.setdefault("notebooks", {})
    return data


def notebook_names(root: Path | None = None) -> list[str]:
    """Book notebooks (``book/*.ipynb`` stems), sorted; the report page comes last."""
    root = root or project_root()
    names = sorted(p.stem for p in (root / "book").glob("*.ipynb"))
    return sorted(names, key=lambda n: (n.startswith("00"), n))


def _source(name: str, root: Path) -> Path:
    path = root / "book" / f"{name}.ipynb"
    if not path.is_file():
        raise ValueError(f"unknown notebook {name!r}; notebooks: {notebook_names(root)}")
    return path


def declared_parameters(name: str, root: Path | None = None) -> dict[str, Any]:
    """Parameters declared in the notebook's ``parameters`` cell, with their default values
    (Python literals; a default that is not a literal is given as its source text)."""
    import ast

    import papermill

    root = root or project_root()
    info = papermill.inspect_notebook(str(_source(name, root)))
    out: dict[str, Any] = {}
    for key, entry in info.items():
        text = entry.get("default")
        try:
            out[key] = ast.literal_eval(text) if isinstance(text, str) else text
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def _family(value: Any) -> str:
    """The type family a parameter value belongs to, for validation."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def check_parameter(notebook: str, key: str, value: Any, default: Any, *, optional: bool = False) -> None:
    """Raise ValueError when ``value`` does not fit the parameter's declared default.

    The rules: the value has the default's type (an int where a float is declared is
    fine; None only where the notebook or a profile uses None); a number whose default is
    not negative must not be negative and must be finite; a list whose default holds
    ints, numbers or strings holds the same.  The message names the parameter, the value and
    what was expected.
    """
    import math

    fam, want = _family(value), _family(default)
    head = f"notebook {notebook!r}: parameter {key} = {value!r}"
    if fam == "none":
        if optional or want == "none":
            return
        raise ValueError(f"{head}: None is not allowed here; expected {want} like the default {default!r}")
    if want == "none" or want not in ("bool", "int", "float", "str", "list", "dict"):
        return  # the notebook declares None (any value) or a non-literal default
    ok = fam == want or (want == "float" and fam == "int")
    if not ok:
        raise ValueError(f"{head}: expected {want} (like the default {default!r}), got {fam}")
    if fam in ("int", "float"):
        if not math.isfinite(value):
            raise ValueError(f"{head}: expected a finite number")
        if default >= 0 and value < 0:
            raise ValueError(f"{head}: expected a number >= 0 (the default is {default!r})")
    if fam == "list" and default:
        kinds = {_family(v) for v in default}
        allowed = {"int": {"int"}, "float": {"int", "float"}, "str": {"str"}}
        if len(kinds) == 1 or kinds == {"int", "float"}:
            want_el = "float" if kinds == {"int", "float"} else next(iter(kinds))
            for v in value:
                if want_el in allowed and _family(v) not in allowed[want_el]:
                    raise ValueError(f"{head}: expected a list of {want_el} (like the default {default!r}), "
                                     f"got an element {v!r}")


def resolve_parameters(
    name: str, profile: str, overrides: dict[str, Any] | None = None, root: Path | None = None
) -> dict[str, Any]:
    """Profile defaults + the notebook's profile entry + overrides, validated before any kernel starts.

    A parameter the notebook does not declare is a ValueError (papermill only warns), and so
    is a value of the wrong type or range (:func:`check_parameter`).
    """
    root = root or project_root()
    prof = load_profile(profile, root)
    params: dict[str, Any] = {"profile": profile}
    params.update(prof["defaults"])
    params.update(prof["notebooks"].get(name) or {})
    params.update(overrides or {})
    declared = declared_parameters(name, root)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(
            f"notebook {name!r} does not declare parameter(s) {unknown}; it declares: {sorted(declared)}"
        )
    optional = _optional_parameters(name, root)
    for key, value in params.items():
        check_parameter(name, key, value, declared[key], optional=key in optional)
    return params


def _optional_parameters(name: str, root: Path) -> set[str]:
    """Parameters that some profile sets to None for this notebook (None then means 'all' or 'off')."""
    out: set[str] = set()
    for prof_path in (root / "papermill_runs").glob("*.yaml"):
        prof = yaml.safe_load(prof_path.read_text()) or {}
        for source in (prof.get("defaults") or {}, (prof.get("notebooks") or {}).get(name) or {}):
            out.update(k for k, v in source.items() if v is None)
    return out


def executed_path(name: str, profile: str, root: Path | None = None) -> Path:
    root = root or project_root()
    return root / "papermill_runs" / profile / f"{name}.ipynb"


INJECTED = "injected-parameters"


def _code_sources(cells: list[Any]) -> list[Any]:
    """What decides the results of a notebook: its code cells (papermill's injected-parameters cell
    excluded) as Python tokens, without comments and blank lines (:func:`code_tokens`)."""
    return [code_tokens(_text(c["source"])) for c in cells
            if c["cell_type"] == "code" and INJECTED not in c.get("metadata", {}).get("tags", [])]


def code_tokens(source: str) -> tuple[tuple[int, str], ...] | str:
    """A code cell as its Python tokens, comments and blank lines dropped.

    Comments and line layout never change what a cell computes, so an executed
    notebook stays current when only they change (for example a test marker moved
    from a ``# NBVAL_...`` comment into a cell tag).  Every other token counts,
    indentation included.  A cell that Python's tokenizer cannot read (an IPython
    magic) is compared as text.
    """
    import io
    import tokenize

    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    try:
        toks = tokenize.generate_tokens(io.StringIO(source).readline)
        return tuple((t.type, t.string) for t in toks if t.type not in skip and not (
            t.type == tokenize.NEWLINE and t.string == ""))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return source


def _text(source: str | list[str]) -> str:
    return source if isinstance(source, str) else "".join(source)


def _same_parameters(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    return a is not None and json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _stored_metadata(path: Path) -> dict[str, Any]:
    """The tcomplex metadata of an executed notebook ({} when missing or unreadable)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("metadata", {}).get(HASH_KEY, {})
    except (OSError, json.JSONDecodeError):
        return {}


def variant_name(overrides: dict[str, Any]) -> str:
    """A readable folder name for a rerun with ``overrides``, e.g. ``seeds-0-1_epochs-40``."""
    import re

    parts = []
    for key, value in overrides.items():
        text = json.dumps(value, sort_keys=True, default=str)
        parts.append(f"{key}-{text}")
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(parts).replace("_", "~")).strip("-").replace("~", "_")
    return slug[:80] or "variant"


def variant_dir(profile: str, variant: str, root: Path | None = None) -> Path:
    """Where the notebooks and results of a named rerun live: ``papermill_runs/<profile>/variants/<variant>/``."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", variant):
        raise ValueError(f"variant name {variant!r}: use letters, digits, '.', '_' and '-' only")
    return (root or project_root()) / "papermill_runs" / profile / "variants" / variant


def variant_names(profile: str, root: Path | None = None) -> list[str]:
    """The named reruns of a profile (folders under ``papermill_runs/<profile>/variants/``)."""
    base = (root or project_root()) / "papermill_runs" / profile / "variants"
    return sorted(p.name for p in base.iterdir() if p.is_dir() and any(p.glob("*.ipynb"))) if base.is_dir() else []


def run_notebook(
    name: str,
    profile: str = DEFAULT_PROFILE,
    overrides: dict[str, Any] | None = None,
    *,
    root: Path | None = None,
    progress: bool = True,
    output: Path | None = None,
    variant: str | None = None,
) -> Path:
    """Execute one notebook with papermill (kernel ``python3``) and return the output path.

    Without overrides the notebook runs with its profile's parameters and replaces the
    profile's executed copy (``papermill_runs/<profile>/<name>.ipynb``).  With overrides
    it is a named *variant* (``variant``, default :func:`variant_name` of the overrides):
    the notebook and its result files go to :func:`variant_dir`, and the committed
    notebook and results are never touched; ``tcomplex book --variant NAME`` shows it.
    The run cache is shared (runs are keyed by their configuration), so a variant
    retrains only what its parameters change.

    The output notebook records the parameters, the overrides and variant, the profile,
    the CPU kernel path and the wall time.  The working directory of the kernel is the
    project root, so relative paths in profiles (``runs/quick``) are relative to it.
    """
    import time

    import nbformat
    import papermill

    from tcomplex.experiments import cpu_path

    root = root or project_root()
    overrides = dict(overrides or {})
    if overrides or variant:
        variant = variant or variant_name(overrides)
        vdir = variant_dir(profile, variant, root)
        overrides.setdefault("results_dir", str((vdir / "results").relative_to(root)))
        out = output or vdir / f"{name}.ipynb"
    else:
        out = output or executed_path(name, profile, root)
    params = resolve_parameters(name, profile, overrides, root)
    # the kernel inherits this environment: the pinned CPU kernel path, and MKL/OpenMP
    # threads that do not vary with the machine's load (see cpu_path)
    cpu_path.pin()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".running-{out.name}")
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(_source(name, root)), str(tmp), parameters=params, kernel_name=KERNEL,
            progress_bar=progress, cwd=str(root), log_output=False,
        )
    except BaseException as exc:
        # keep what ran, with the failing cell's traceback, beside (never over) the executed notebook
        if tmp.exists():
            failed = out.with_name(f".failed-{out.name}")
            os.replace(tmp, failed)
            exc.add_note(f"the partly executed notebook, with the traceback, is {failed}")
        raise
    nb = nbformat.read(tmp, as_version=4)
    nb.metadata[HASH_KEY] = {
        "custom": bool(overrides),
        "overrides": overrides,
        "variant": variant,
        "profile": profile,
        "parameters": params,
        "seconds": round(time.perf_counter() - t0, 1),
        "python": sys.version.split()[0],
        "cpu_path": cpu_path.describe(),
    }
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return out


def stale_notebooks(profile: str, root: Path | None = None) -> list[str]:
    """Notebooks whose executed copy is missing or ran from another source or parameters."""
    return [r["notebook"] for r in profile_status(profile, root) if r["state"] != "current"]


def profile_status(profile: str, root: Path | None = None) -> list[dict[str, Any]]:
    """One entry per notebook of ``profile``: its state and how long it ran.

    ``state`` is ``"current"`` (executed from the source's code cells and these
    parameters; markdown and cell tags may differ), ``"stale"`` (other code or
    parameters), ``"custom"`` (executed
    with command-line overrides) or ``"missing"``; ``seconds`` and ``python`` come from
    the executed notebook's metadata (None when missing); ``cpu_path`` is ``"pinned"``
    (executed on :data:`tcomplex.experiments.cpu_path.PINNED`), ``"other"`` (another
    kernel path: its numbers may differ in the last digits), ``"unrecorded"`` (executed
    before the path was recorded) or None when missing.
    """
    from tcomplex.experiments import cpu_path

    root = root or project_root()
    prof = load_profile(profile, root)
    out = []
    for name in list(prof["notebooks"]) or notebook_names(root):
        params = resolve_parameters(name, profile, None, root)  # validates every entry, executed or not
        path = executed_path(name, profile, root)
        meta = _stored_metadata(path)
        if not path.is_file():
            state = "missing"
        elif meta.get("custom") or meta.get("fingerprint") == "custom":
            state = "custom"
        elif _same_parameters(meta.get("parameters"), params) and _code_sources(
                json.loads(path.read_text())["cells"]) == _code_sources(json.loads(_source(name, root).read_text())["cells"]):
            state = "current"
        else:
            state = "stale"
        same = cpu_path.same_path(meta.get("cpu_path"))
        path_state = None if not path.is_file() else "unrecorded" if same is None else "pinned" if same else "other"
        out.append({"notebook": name, "state": state, "seconds": meta.get("seconds"), "python": meta.get("python"),
                    "cpu_path": path_state})
    return out


#: test markers and their explanations: removed from the rendered page (they are for nbval)
_MARKER_PREFIXES = ("# NBVAL_", "# not compared by nbval")
_CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"  # a cell whose outputs nbval compares
#: tags that already decide how a cell shows
_SHOW_TAGS = {"remove-cell", "remove-input", "hide-input", "hide-cell", "show-input", "hide-output"}


def render_notebook(source: dict[str, Any], executed: dict[str, Any]) -> dict[str, Any]:
    """The page to render: the source's markdown and cell metadata with the executed code cells' outputs.

    Both are notebooks as JSON dicts.  When their code cells differ (a stale
    executed notebook), the executed notebook is rendered as it ran.  Either way the
    page reads like a lecture: the parameter cells and nbval's check cells are removed,
    every other code cell is hidden behind a toggle (``hide-input``, unless the source
    tags it otherwise), and nbval's test markers are taken out of the shown code.
    """
    ran = [c for c in executed["cells"] if c["cell_type"] == "code"]
    if _code_sources(source["cells"]) != _code_sources(ran):
        cells = [dict(c) for c in executed["cells"]]
    else:
        injected = [c for c in ran if INJECTED in c.get("metadata", {}).get("tags", [])]
        outputs = iter(c for c in ran if INJECTED not in c.get("metadata", {}).get("tags", []))
        cells = []
        for cell in source["cells"]:
            if cell["cell_type"] != "code":
                cells.append(cell)
                continue
            done = dict(next(outputs))
            done["metadata"] = {**done.get("metadata", {}), "tags": cell.get("metadata", {}).get("tags", [])}
            cells.append(done)
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                cells.extend(injected)
    return {**executed, "cells": [_present(c) for c in cells]}


def _present(cell: dict[str, Any]) -> dict[str, Any]:
    if cell["cell_type"] != "code":
        return cell
    tags = list(cell.get("metadata", {}).get("tags", []))
    checked = any(ln.lstrip().startswith(_CHECK_MARKER) for ln in _text(cell["source"]).splitlines())
    if "parameters" in tags or INJECTED in tags or checked:
        # parameter cells, and the check cells nbval compares (they print the verdicts that the
        # findings table shows the reader)
        tags.append("remove-cell")
    elif not _SHOW_TAGS & set(tags):
        tags.append("hide-input")
    lines = _text(cell["source"]).splitlines(keepends=True)
    shown = "".join(ln for ln in lines if not ln.lstrip().startswith(_MARKER_PREFIXES))
    return {**cell, "source": shown, "metadata": {**cell.get("metadata", {}), "tags": tags}}


def _variant_page(page: dict[str, Any], name: str, variant: str) -> dict[str, Any]:
    """A variant's page: a heading that names the variant and the parameters it changed."""
    meta = page.get("metadata", {}).get(HASH_KEY, {})
    changed = {k: v for k, v in (meta.get("overrides") or {}).items() if k != "results_dir"}
    head = (f"# Variant `{variant}`: {name}\n\nA rerun of chapter `{name}` (profile `{meta.get('profile')}`) "
            f"with these parameters changed: " + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in changed.items())
            + ". The chapter's own page is unchanged.")
    cells = [dict(c) for c in page["cells"]]
    for c in cells:  # the chapter's own title becomes a section of the variant page
        if c["cell_type"] == "markdown" and _text(c["source"]).startswith("# "):
            c["source"] = "#" + _text(c["source"])
            break
    return {**page, "cells": [{"cell_type": "markdown", "metadata": {}, "source": head}, *cells]}


def book_dir(profile: str, root: Path | None = None) -> Path:
    """Where ``tcomplex book --profile P`` writes: ``book/_build/<profile>`` (the HTML in ``html/``)."""
    return (root or project_root()) / "book" / "_build" / profile


def build_book(
    profile: str = DEFAULT_PROFILE,
    root: Path | None = None,
    *,
    quiet: bool = True,
    output: Path | None = None,
    variants: list[str] | None = None,
) -> Path:
    """Render the executed notebooks of ``profile`` with jupyter-book (execution off).

    Each profile builds into its own folder, :func:`book_dir` (or ``output``); named
    reruns listed in ``variants`` are added as pages after the chapters, without
    executing anything.  Returns the folder of the HTML (``<output>/html``).
    """
    root = root or project_root()
    book, executed = root / "book", root / "papermill_runs" / profile
    dest = Path(output) if output is not None else book_dir(profile, root)
    missing = [n for n in notebook_names(root) if not (executed / f"{n}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(
            f"profile {profile!r} has no executed notebook for {missing} in {executed}: "
            f"run `tcomplex book --profile {profile}` (it executes what is missing)"
        )
    known = variant_names(profile, root)
    for v in variants or []:
        if v not in known:
            raise ValueError(f"profile {profile!r} has no variant {v!r} (papermill_runs/{profile}/variants/); "
                             f"variants: {known or 'none yet: make one with tcomplex run NOTEBOOK -p KEY VALUE'}")
    stage = dest / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for item in book.iterdir():
        if item.name.startswith("_build") or item.suffix == ".ipynb":
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, stage / item.name)
    for n in notebook_names(root):
        page = render_notebook(json.loads(_source(n, root).read_text()), json.loads((executed / f"{n}.ipynb").read_text()))
        (stage / f"{n}.ipynb").write_text(json.dumps(page, indent=1, ensure_ascii=False))
    toc = yaml.safe_load((stage / "_toc.yml").read_text())
    for v in variants or []:
        for nb_path in sorted(variant_dir(profile, v, root).glob("*.ipynb")):
            if nb_path.name.startswith(".running-"):
                continue
            page = render_notebook(json.loads(_source(nb_path.stem, root).read_text()), json.loads(nb_path.read_text()))
            target = stage / "variants" / v / nb_path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(_variant_page(page, nb_path.stem, v), indent=1, ensure_ascii=False))
            toc["chapters"].append({"file": f"variants/{v}/{nb_path.stem}"})
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (stage / "_profile.txt").write_text(profile)
    exe = Path(sys.executable).parent / "jupyter-book"
    work = dest / "jb"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(stage), "--path-output", str(work), "--all"]
    if quiet:
        cmd.append("-q")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    html = dest / "html"
    if html.exists():
        shutil.rmtree(html)
    os.replace(work / "_build" / "html", html)
    return html
