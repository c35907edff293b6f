"""The README's examples run as written (issue 14).

Python blocks are executed verbatim after a prelude that defines what the text
leaves to the reader (``model``, ``x``, ``y``, ``loader``, ``opt``); a training
example gets a cheap budget by one textual substitution, checked to apply, so
an edited README fails here instead of drifting.  The command lines of the
README's bash blocks are run through the CLI: ``--list-params`` as written, the
training command with a tiny budget.  The rerun example (``tcomplex run ... -p
... --variant``, then ``tcomplex book --variant``) is executed, with a cheap
parameter set, by ``tests/test_book.py::test_a_rerun_with_parameters_is_a_variant_that_lands_in_the_book``,
which reads its command lines from the README through :func:`readme_commands`.
Commands not run here: ``bash .ci/run`` (this test session is what it runs),
``tcomplex book`` of the whole offline book (tests/test_book.py builds the
quick book), the GPU check (a GPU) and the dataset downloads (internet).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_blocks(language: str) -> list[str]:
    """The fenced code blocks of the README in ``language`` (bash, python), in order."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def readme_commands(prefix: str) -> list[list[str]]:
    """Every command line of the README's bash blocks that starts with ``prefix`` (comments dropped), split."""
    out = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(prefix):
                out.append(shlex.split(line))
    return out


def _block(marker: str) -> str:
    blocks = [b for b in readme_blocks("python") if marker in b]
    assert len(blocks) == 1, f"README: expected one python block containing {marker!r}, found {len(blocks)}"
    return blocks[0]


def test_the_estimator_example_runs(capsys):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.randn(200, 1, 28, 28), torch.randint(0, 10, (200,))
    exec(_block("tc.record_gates(model, x)"), {"model": model, "x": x, "y": y})
    printed = capsys.readouterr().out.split()
    assert len(printed) >= 3  # H, I(X;Σ;Y) and TC printed


def test_the_complexity_loss_example_runs():
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), *[m for _ in range(4) for m in (nn.Linear(784 if _ == 0 else 32, 32), nn.ReLU())],
                          nn.Linear(32, 10))
    x = torch.randn(128, 1, 28, 28)
    loader = [(x[:64], torch.randint(0, 10, (64,))), (x[64:], torch.randint(0, 10, (64,)))]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    exec(_block("ComplexityPenalty.for_model"), {"model": model, "x": x, "loader": loader, "F": F, "opt": opt})
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained


def test_the_callback_example_runs(tmp_path, monkeypatch, data_root, capsys):
    monkeypatch.chdir(tmp_path)  # it trains into ./runs
    monkeypatch.setenv("TCOMPLEX_DATA", data_root)
    code = _block('callbacks={"on_tracked_epoch": keep}')
    as_written = 'TrainConfig(model="lenet5", epochs=3, track_epochs=[3])'
    assert as_written in code, "README's callback example changed: update this test's cheap budget"
    code = code.replace(as_written, 'TrainConfig(model="lenet5", epochs=1, track_epochs=[1], train_subset=500, '
                                    'test_subset=500, eval_train_size=500, analysis_per_class=10)')
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["model"].training is False
    assert capsys.readouterr().out.split()[:1] == ["1"]  # the callback saw the tracked epoch 1


def test_list_params_command_runs_as_written(capsys):
    from tcomplex import cli

    (cmd,) = [c for c in readme_commands("tcomplex run") if "--list-params" in c]
    assert cli.main(cmd[1:]) == 0
    out = capsys.readouterr().out
    assert "epochs" in out and "seeds" in out


def test_train_command_runs_with_a_tiny_budget(tmp_path, data_root):
    from tcomplex import cli
    from tcomplex.experiments.runs import load_results

    (cmd,) = readme_commands("tcomplex train")
    assert cmd[cmd.index("--epochs") + 1] == "3"
    args = cmd[1:]
    args[args.index("--epochs") + 1] = "1"
    tiny = ["--set", "train_subset=500", "--set", "test_subset=300", "--set", "analysis_per_class=10",
            "--set", "eval_train_size=500", "--out", str(tmp_path / "runs"), "--data-root", data_root, "-q"]
    assert cli.main(args + tiny) == 0
    assert sorted(load_results(tmp_path / "runs", finished_only=True).epoch.unique()) == [0, 1]


@pytest.mark.parametrize("prefix", ["tcomplex run", "tcomplex book", "tcomplex train", "tcomplex sweep"])
def test_every_command_line_parses(prefix):
    from tcomplex import cli

    cmds = readme_commands(prefix)
    assert cmds, f"no {prefix!r} example in the README"
    parser = cli.build_parser()
    for cmd in cmds:
        parser.parse_args(cmd[1:])  # exits (SystemExit) on an unknown option
