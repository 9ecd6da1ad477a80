"""What a run folder holds is never lost: finished runs are not retrained, a missing checkpoint is rebuilt
and checked, a damaged or edited run says how to get out, and every refusal is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli_errors import fails
from test_training import TINY, _cfg
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.errors import UserError
from gru_bench.training import rundir
from gru_bench.training.trainer import train


@pytest.fixture
def finished(tmp_path: Path, tiny_jsb: Path) -> Path:  # noqa: F811
    """A finished 2-epoch run of the tiny dataset."""
    cfg = _cfg(tmp_path, "training.max_epochs=2", "run.name=r")
    assert train(cfg, quiet=True)["status"] == "complete"
    return tmp_path / "runs" / "jsb" / "gru" / "r"


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


@pytest.fixture
def interrupted(tmp_path: Path, tiny_jsb: Path) -> Path:  # noqa: F811
    """A 3-epoch run of the tiny dataset marked as still running, as if stopped before its summary said so."""
    assert train(_cfg(tmp_path, "training.max_epochs=3", "run.name=r"), quiet=True)["status"] == "complete"
    run = tmp_path / "runs" / "jsb" / "gru" / "r"
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    return run


def test_resume_of_a_finished_run_without_checkpoints_is_refused_and_rebuild_restores_them(finished: Path):
    best = torch.load(finished / "best.pt", weights_only=True)["model"]
    (finished / "best.pt").unlink()
    (finished / "last.pt").unlink()
    before = _files(finished)
    line = fails(["train", "--resume", finished], "never retrained or overwritten", f"--rebuild {finished}")
    assert "finished run (complete)" in line
    fails(["sample", finished], f"--rebuild {finished}")
    fails(["evaluate", finished], f"--rebuild {finished}")
    assert _files(finished) == before
    result = CliRunner().invoke(app, ["train", "--rebuild", str(finished), "-q"])
    assert result.exit_code == 0, result.output
    after = _files(finished)
    assert {k: after[k] for k in before} == before  # summary.json and metrics.csv untouched
    rebuilt = torch.load(finished / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], rebuilt[k]) for k in best)
    assert (finished / "last.pt").exists() and not (finished / ".rebuild").exists()


def test_a_pruned_search_trial_without_checkpoints_is_never_retrained(finished: Path):
    """Committed search trials have no checkpoints; `--resume` or `--restart` must not start them over."""
    for f in ("best.pt", "last.pt"):
        (finished / f).unlink()
    summary = json.loads((finished / "summary.json").read_text()) | {"status": "pruned", "pruned_epoch": 1}
    (finished / "summary.json").write_text(json.dumps(summary))
    before = _files(finished)
    fails(["train", "--resume", finished], "finished run (pruned)", "never retrained", "pruned search trial")
    fails(["train", "--resume", finished, "--restart"], "finished run (pruned)")
    assert _files(finished) == before


def test_rebuild_that_does_not_reproduce_the_numbers_changes_nothing(finished: Path):
    (finished / "best.pt").unlink()
    rows = rundir.read_metrics(finished / "metrics.csv")
    rows[-1]["valid_nll"] = str(float(rows[-1]["valid_nll"]) + 1e-3)  # as if trained elsewhere
    rundir.write_outputs(finished, rows, json.loads((finished / "summary.json").read_text()))
    before = _files(finished)
    with pytest.raises(UserError, match="does not reproduce metrics.csv"):
        rundir.rebuild(finished, quiet=True)
    assert _files(finished) == before


def test_rebuild_refuses_runs_that_need_none(finished: Path):
    fails(["train", "--rebuild", finished], "best.pt and last.pt are both there")
    fails(["train", "--rebuild", finished, "--seed", "3"], "takes no other option")


def test_resume_after_editing_config_yaml_is_one_line(interrupted: Path):
    text = (interrupted / "config.yaml").read_text()
    (interrupted / "config.yaml").write_text(text.replace("hidden: 6", "hidden: 7"))
    before = _files(interrupted)
    fails(["train", "--resume", interrupted], "config.yaml was edited after the run started", "restore it")
    assert _files(interrupted) == before


def test_damaged_last_pt_offers_restart_in_both_messages(tmp_path: Path, interrupted: Path):
    (interrupted / "last.pt").write_bytes(b"garbage")
    restart = f"'gru-bench train --resume {interrupted} --restart'"
    fails(["train", "--resume", interrupted], "last.pt is damaged", restart)
    args = ["train", "jsb/gru", *(a for o in [*TINY, "training.max_epochs=3"] for a in ("--set", o))]
    fails([*args, "--out", tmp_path / "runs", "--name", "r"], "unfinished run", restart)
    result = CliRunner().invoke(app, ["train", "--resume", str(interrupted), "--restart", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((interrupted / "summary.json").read_text())["status"] == "complete"
    fails(["train", "--resume", interrupted, "--restart"], "--restart never overwrites it")


def test_a_hand_edited_last_pt_is_a_one_line_error(interrupted: Path):
    """A checkpoint that loads but does not fit the run (a tensor of another shape): refused, no crash."""
    state = torch.load(interrupted / "last.pt", weights_only=False)
    state["model"]["U"] = state["model"]["U"][:, :3]  # as if edited by hand
    torch.save(state, interrupted / "last.pt")
    line = fails(["train", "--resume", interrupted], "last.pt does not fit", "--restart")
    assert "Traceback" not in line


@pytest.mark.usefixtures("tiny_jsb")
def test_seed_options(tmp_path: Path):
    fails(["train", "jsb/gru", "--seed", "-1"], "--seed -1: training.seed must be an integer from 0")
    fails(["train", "jsb/gru", "--seeds", "1,-1"], "--seeds 1,-1")
    fails(["train", "jsb/gru", "--seeds", "1,2", "--seed", "3"], "--seed 3 and --seeds 1,2: give one")
    fails(["train", "jsb/gru", "--epochs", "0"], "--epochs 0: training.max_epochs must be")
    for name in ("..", "."):
        fails(["train", "jsb/gru", "--name", name], f"--name {name}: run.name must be a name")
    assert not (tmp_path / "runs").exists()
