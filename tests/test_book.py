"""The book: profiles name only declared parameters; the rendered HTML works in a browser."""

from __future__ import annotations

import functools
import http.server
import json
import re
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from tcomplex.experiments import notebooks as nbs

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: a folder for screenshots of every page of the quick book (set it to look at them; nothing is written otherwise)
SCREENSHOTS = os.environ.get("TCOMPLEX_SCREENSHOTS")


@pytest.mark.parametrize("profile", nbs.PROFILES)
def test_every_profile_parameter_is_declared_by_its_notebook(profile):
    prof = nbs.load_profile(profile, ROOT)
    assert set(prof["notebooks"]) == set(nbs.notebook_names(ROOT)), "every notebook needs an entry in every profile"
    for name in prof["notebooks"]:
        params = nbs.resolve_parameters(name, profile, None, ROOT)
        assert params["profile"] == profile
        assert params["results_dir"].endswith(f"{profile}/results")


def test_unknown_parameter_is_rejected_with_the_declared_ones():
    with pytest.raises(ValueError, match="does not declare parameter.*not_a_parameter.*declares"):
        nbs.resolve_parameters("01_metrics", "quick", {"not_a_parameter": 1}, ROOT)
    with pytest.raises(ValueError, match="unknown profile"):
        nbs.load_profile("huge", ROOT)
    with pytest.raises(ValueError, match="unknown notebook"):
        nbs.declared_parameters("99_nothing", ROOT)


def test_quick_notebooks_are_executed_and_current():
    """The committed quick notebooks ran from the current sources and parameters, on the pinned
    CPU kernel path that nbval re-executes them on."""
    assert nbs.stale_notebooks("quick", ROOT) == []
    paths = {r["notebook"]: r["cpu_path"] for r in nbs.profile_status("quick", ROOT)}
    assert set(paths.values()) == {"pinned"}, paths


@pytest.mark.parametrize("profile", ["offline", "paper"])
def test_committed_notebooks_of_long_profiles_are_current_and_error_free(profile):
    """Executed offline/paper notebooks in the repository (they are not re-run in CI) ran from
    the current notebook sources and parameters, and no cell failed."""
    for entry in nbs.profile_status(profile, ROOT):
        if entry["state"] == "missing":
            continue
        assert entry["state"] == "current", f"{profile}/{entry['notebook']} is {entry['state']}: re-execute it"
        cells = json.loads(nbs.executed_path(entry["notebook"], profile, ROOT).read_text())["cells"]
        errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
                  if o["output_type"] == "error"]
        assert not errors, f"{profile}/{entry['notebook']}: {errors[0]['ename']}: {errors[0]['evalue']}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module", params=["quick", "offline"])
def served_book(request, tmp_path_factory):
    """The quick book (executed in CI's nbval pass) and the committed offline book, each served."""
    html = nbs.build_book(request.param, ROOT, output=tmp_path_factory.mktemp(f"book-{request.param}"))
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield html, f"http://127.0.0.1:{server.server_address[1]}/", request.param
    server.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_book_pages_load_with_figures_equations_and_working_links(served_book):
    from playwright.sync_api import sync_playwright

    html, base, profile = served_book
    chapters = ["intro", *nbs.notebook_names(ROOT)]
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        external = []
        page.on("request", lambda r: external.append(r.url) if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith("data:") else None)
        for chapter in chapters:
            url = urljoin(base, f"{chapter}.html")
            resp = page.goto(url, wait_until="load")
            assert resp is not None and resp.status == 200, f"{profile}/{chapter}: HTTP {resp and resp.status}"
            assert page.title(), f"{profile}/{chapter}: page has no title"
            if chapter != "intro":
                # every executed chapter shows figures that the browser decoded
                sizes = page.eval_on_selector_all(
                    "article img", "els => els.map(e => [e.naturalWidth, e.getBoundingClientRect().width])"
                )
                assert sizes, f"{profile}/{chapter}: no figure"
                assert all(w > 0 and shown > 0 for w, shown in sizes), f"{profile}/{chapter}: empty image {sizes}"
                assert page.locator("article table").count() > 0, f"{profile}/{chapter}: no findings table"
            if chapter in ("intro", "01_metrics"):
                page.wait_for_selector("mjx-container", state="attached", timeout=60000)
                widths = page.eval_on_selector_all(
                    "mjx-container", "els => els.map(e => e.getBoundingClientRect().width)"
                )
                assert any(w > 0 for w in widths), f"{profile}/{chapter}: equations not typeset ({len(widths)} empty)"
            if chapter != "intro":
                text = page.inner_text("article")
                assert "NBVAL" not in text, f"{profile}/{chapter}: a test marker is shown"
                shown_code = page.eval_on_selector_all(
                    "div.cell_input", "els => els.filter(e => e.checkVisibility({contentVisibilityAuto: true})).length")
                assert shown_code == 0, f"{profile}/{chapter}: {shown_code} code cells shown unfolded"
                assert "runs_root" not in text, f"{profile}/{chapter}: a parameter cell is shown"
                # missing values shown as "nan" in the outputs (prose may name a NaN loss)
                outputs = "\n".join(page.eval_on_selector_all("div.cell_output", "els => els.map(e => e.innerText)"))
                nans = re.findall(r".{0,40}\bnan\b.{0,40}", outputs, flags=re.I)
                assert not nans, f"{profile}/{chapter}: 'nan' shown: {nans[:3]}"
            # no page wider than the window, no content wider than its column
            too_wide = page.evaluate(
                "() => [document.documentElement.scrollWidth - window.innerWidth,"
                " ...[...document.querySelectorAll('article')].map(a => a.scrollWidth - a.clientWidth)]")
            assert max(too_wide) <= 1, f"{profile}/{chapter}: wider than its column by {max(too_wide)} px"
            typeset = page.eval_on_selector_all(  # equations the reader sees (not those in folded cells)
                "mjx-container", "els => els.filter(e => e.checkVisibility()).map(e => e.getBoundingClientRect().width)")
            assert all(w > 0 for w in typeset), f"{profile}/{chapter}: {sum(w == 0 for w in typeset)} equations not typeset"
            if SCREENSHOTS:
                shots = Path(SCREENSHOTS) / profile
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / f"{chapter}.png"), full_page=True)
            hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            for href in hrefs:
                target = urlparse(href)
                if target.hostname != "127.0.0.1":
                    continue
                path = html / target.path.lstrip("/")
                assert path.exists(), f"{profile}/{chapter}: broken link {href}"
        browser.close()
    assert not external, f"the book fetched from outside the machine: {external[:5]}"


def test_only_code_and_parameters_make_an_executed_notebook_stale(tmp_path):
    """Prose and cell tags do not change results: editing them keeps the executed notebook current
    and the page renders the new prose with the executed outputs; editing code makes it stale."""
    for item in ("book", "papermill_runs"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("_build", "results"))
    src_path = tmp_path / "book" / "01_metrics.ipynb"
    state = lambda: {r["notebook"]: r["state"] for r in nbs.profile_status("quick", tmp_path)}["01_metrics"]  # noqa: E731
    assert state() == "current"
    src = json.loads(src_path.read_text())
    md = next(i for i, c in enumerate(src["cells"]) if c["cell_type"] == "markdown")
    # the last code cell that is not one of nbval's check cells (those are removed from pages)
    code = [i for i, c in enumerate(src["cells"])
            if c["cell_type"] == "code" and "NBVAL_CHECK_OUTPUT" not in "".join(c["source"])][-1]
    src["cells"][md]["source"] = "# A new title\n\nNew prose."
    src["cells"][code].setdefault("metadata", {})["tags"] = ["hide-input"]
    src_path.write_text(json.dumps(src))
    assert state() == "current"
    executed = json.loads(nbs.executed_path("01_metrics", "quick", tmp_path).read_text())
    page = nbs.render_notebook(src, executed)
    assert page["cells"][md]["source"] == "# A new title\n\nNew prose."
    kinds = [c["cell_type"] for c in page["cells"]]
    assert kinds.count("code") == [c["cell_type"] for c in executed["cells"]].count("code")  # injected cell kept
    shown = page["cells"][code + 1]  # the injected parameter cell sits before it, on the page as in the run
    assert shown["metadata"]["tags"] == ["hide-input"]
    assert shown["outputs"] == executed["cells"][code + 1]["outputs"] and shown["outputs"]
    params_at = next(i for i, c in enumerate(page["cells"]) if "parameters" in c["metadata"].get("tags", []))
    assert "injected-parameters" in page["cells"][params_at + 1]["metadata"]["tags"]
    src["cells"][code]["source"] = "# a comment\n\n" + "".join(src["cells"][code]["source"]) + "  # another"
    src_path.write_text(json.dumps(src))
    assert state() == "current"  # comments and blank lines are not code
    src["cells"][code]["source"] = "print('changed')"
    src_path.write_text(json.dumps(src))
    assert state() == "stale"
    stale_page = nbs.render_notebook(src, executed)  # a stale page renders as it ran
    assert [c.get("outputs") for c in stale_page["cells"]] == [c.get("outputs") for c in executed["cells"]]
    assert [c["source"] for c in stale_page["cells"] if c["cell_type"] == "markdown"] == [
        c["source"] for c in executed["cells"] if c["cell_type"] == "markdown"]


def test_rendered_pages_hide_code_parameters_and_test_markers():
    src = json.loads((ROOT / "book" / "02_disentanglement.ipynb").read_text())
    executed = json.loads(nbs.executed_path("02_disentanglement", "quick", ROOT).read_text())
    page = nbs.render_notebook(src, executed)
    code = [c for c in page["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if {"parameters", "injected-parameters"} & set(c["metadata"]["tags"])]
    assert len(params) == 2 and all("remove-cell" in c["metadata"]["tags"] for c in params)
    # nbval's check cells (the verdicts, shown to the reader by the findings table) are removed too
    n_checks = sum("# NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in src["cells"])
    removed = [c for c in code if c not in params and "remove-cell" in c["metadata"]["tags"]]
    assert n_checks >= 1 and len(removed) == n_checks
    assert all("hide-input" in c["metadata"]["tags"] for c in code if c not in params and c not in removed)
    assert not any("NBVAL" in "".join(c["source"]) for c in code)
    assert any("NBVAL_CHECK_OUTPUT" in "".join(c["source"]) for c in src["cells"])  # only the page loses them


def test_a_rerun_with_parameters_is_a_variant_that_lands_in_the_book(tmp_path, monkeypatch, data_root):
    """`tcomplex run NOTEBOOK -p ...` writes a named variant beside the committed notebook (never over it),
    and `build_book(variants=[...])` adds it as a page; bad parameters fail before any kernel starts."""
    from tcomplex import cli

    for item in ("book", "papermill_runs"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("_build", "variants"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TCOMPLEX_DATA", data_root)
    committed = tmp_path / "papermill_runs" / "quick" / "01_metrics.ipynb"
    before = committed.read_bytes()
    results_before = sorted((tmp_path / "papermill_runs" / "quick" / "results").iterdir())
    for bad, message in ((["-p", "epochs", "two"], "parameter epochs = 'two': expected int"),
                         (["-p", "epochs", "2.5"], "parameter epochs = 2.5: expected int"),
                         (["-p", "epochs", "-1"], "parameter epochs = -1: expected a number >= 0"),
                         (["-p", "epochz", "1"], "does not declare parameter(s) ['epochz']"),
                         (["-p", "epochs", "1", "--variant", "../x"], "variant name '../x'")):
        assert cli.main(["run", "01_metrics", "--profile", "quick", *bad]) == 2
    assert not list((tmp_path / "papermill_runs" / "quick").glob("variants/*/*.ipynb"))
    assert not list((tmp_path / "papermill_runs" / "quick").glob(".running-*"))
    # the README's rerun example as written, on the quick profile with cheap values (tests/test_readme.py)
    from test_readme import readme_commands

    (rerun,) = [c for c in readme_commands("tcomplex run") if "--variant" in c]
    (book_cmd,) = [c for c in readme_commands("tcomplex book") if "--variant" in c]
    cheap = {"offline": "quick", "10": "1", "[0, 1]": "[0]"}
    assert all(v in rerun for v in cheap), rerun  # the substitutions below apply to the README's line
    args = [cheap.get(a, a) for a in rerun[1:]] + ["-p", "train_subset", "1000", "-p", "analysis_per_class", "10"]
    name = rerun[rerun.index("--variant") + 1]
    assert cli.main(args) == 0
    assert committed.read_bytes() == before
    assert sorted((tmp_path / "papermill_runs" / "quick" / "results").iterdir()) == results_before
    variant = tmp_path / "papermill_runs" / "quick" / "variants" / name / "01_metrics.ipynb"
    meta = json.loads(variant.read_text())["metadata"]["tcomplex"]
    assert meta["variant"] == name and meta["parameters"]["epochs"] == 1 and meta["parameters"]["seeds"] == [0]
    assert {r["notebook"]: r["state"] for r in nbs.profile_status("quick", tmp_path)}["01_metrics"] == "current"
    assert nbs.variant_names("quick", tmp_path) == [name]
    assert cli.main(["book", "--profile", "quick", "--variant", "nope"]) == 2
    assert cli.main([cheap.get(a, a) for a in book_cmd[1:]]) == 0  # renders only: the copied notebooks are current
    html = tmp_path / "book" / "_build" / "quick" / "html"

    page = re.sub(r"<[^>]+>", "", (html / "variants" / name / "01_metrics.html").read_text())
    assert f"Variant {name}" in page and "epochs = 1" in page and "train_subset = 1000" in page
    assert (html / "01_metrics.html").is_file()
