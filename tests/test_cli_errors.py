"""Bad input on the command line: exit code 2, ONE line on stderr naming the culprit, no traceback, nothing
written or lost. Every case fails before any training, so the whole file runs in seconds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, dump, load_config, override
from gru_bench.data import processed_path
from gru_bench.errors import UserError
from gru_bench.experiments import scheduler
from gru_bench.fsutil import atomic_write, write_text
from gru_bench.models import build_model
from gru_bench.paths import raw_dir
from gru_bench.training.rundir import run_lock


def fails(args: list[str], *fragments: str) -> str:
    """Run the CLI; assert a one-line error containing every fragment, and return that line."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def sweep_file(tmp_path: Path, **keys) -> Path:
    body = {"name": "t", "datasets": ["jsb"], "models": ["gru"], "seeds": [0], **keys}
    body.setdefault("config", str(CONFIGS_DIR) + "/{dataset}/{model}.yaml")
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


# --- config and sweep files -----------------------------------------------------------------------


def test_unreadable_config_and_sweep_files(tmp_path: Path, data_home: Path, results: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00dataset: jsb")
    fails(["train", binary], str(binary), "not a text file")
    fails(["sweep", binary], str(binary), "not a text file")
    fails(["sweep", tmp_path], str(tmp_path), "cannot be read")  # a folder
    fails(["search", binary], str(binary), "not a text file")
    assert not any(results.iterdir())


def test_config_shorthand_not_found_says_what_exists(data_home: Path) -> None:
    fails(["train", "jsb/rnn"], "jsb/rnn not found", "<dataset>/<cell>", "tanh, lstm, gru")


def test_sweep_config_template_with_unknown_placeholder(tmp_path: Path, results: Path) -> None:
    path = sweep_file(tmp_path, config=str(CONFIGS_DIR) + "/{datset}/{model}.yaml")
    fails(["sweep", path, "--dry-run"], str(path), "{datset}", "{dataset} and {model}")


def test_sweep_override_error_is_one_line(tmp_path: Path, results: Path) -> None:
    path = sweep_file(tmp_path, overrides={"training.lrr": 3})
    fails(["sweep", path, "--dry-run"], "training.lrr=3:", "did you mean training.lr?")
    assert [override("k", v) for v in (3, 1e-5, "abc", None, [1, 2])] == [
        "k=3",
        "k=1.0e-05",
        "k=abc",
        "k=null",
        "k=[1, 2]",
    ]


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--lockstep", "0", "--lockstep 0"), ("--workers", "0", "--workers 0"), ("--backend", "slurm", "slurm")],
)
def test_sweep_options_are_checked_before_anything_runs(
    tmp_path: Path, data_home: Path, results: Path, option: str, value: str, fragment: str
) -> None:
    """--lockstep 0 used to fall back to the file's value and train; nothing may start or be printed first."""
    fails(["sweep", sweep_file(tmp_path), option, value], fragment)
    assert not (results / "runs").exists()


# --- search ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--trials", "0"], ("trials 0",)),
        (["--log-lr-range", "-6", "-12"], ("log_lr_range -6 -12", "low < high")),
        (["--name", "a/b"], ("--name 'a/b'", "letters, digits")),
    ],
)
def test_search_bad_options(data_home: Path, results: Path, args: list[str], fragments: tuple) -> None:
    fails(["search", "jsb/gru", *args], *fragments)
    assert not (results / "runs").exists()


# --- bench ----------------------------------------------------------------------------------------


def test_bench_names_the_bad_option_and_checks_out_first(tmp_path: Path) -> None:
    fails(["bench", "--cells", "gru,"], "--cells 'gru,'", "tanh,lstm,gru")
    fails(["bench", "--repeats", "0"], "--repeats '0'", ">= 1")
    fails(["bench", "--batch-sizes", "8,0"], "--batch-sizes '8,0'")
    fails(["bench", "--out", tmp_path], f"--out {tmp_path} is a folder")  # before minutes of timing


# --- compare --------------------------------------------------------------------------------------


def test_compare_defaults_to_the_results_folder_of_the_environment(results: Path) -> None:
    """Without an argument, compare reads $GRU_BENCH_RESULTS (where train and sweep wrote), not ./results."""
    fails(["compare"], str(results / "runs"))


# --- data -----------------------------------------------------------------------------------------


def test_download_error_is_exactly_one_line(data_home: Path, tmp_path: Path) -> None:
    """The transient progress bars used to leave a blank line on a non-terminal stderr."""
    fails(["data", "download", "jsb", "--source", tmp_path], "JSB_Chorales.mat", "no file of that name")
    assert not raw_dir("jsb").exists() or not any(raw_dir("jsb").iterdir())


def test_unprepared_dataset_names_the_prepare_command(data_home: Path, results: Path) -> None:
    fails(["train", "jsb/gru"], "jsb (reference route) is not prepared", "'gru-bench data prepare jsb'")
    fails(["data", "info", "jsb", "--from-midi"], "'gru-bench data prepare jsb --from-midi'")


@pytest.mark.parametrize("damage", ["text", "foreign", "truncated"])
def test_damaged_processed_file(data_home: Path, jsb_data: Path, damage: str) -> None:
    path = processed_path("jsb")
    if damage == "text":
        path.write_text("not numpy")
    elif damage == "foreign":
        np.savez(path, a=np.zeros(3))
    else:
        path.write_bytes(path.read_bytes()[:3000])
    fails(["data", "info", "jsb"], str(path), "not a gru-bench piano-roll file", "data prepare")


def test_prepare_into_a_blocked_folder_is_a_one_line_error(data_home: Path, shared_datasets: Path) -> None:
    raw_dir("jsb").mkdir(parents=True)
    shutil.copy(shared_datasets / "mat" / "JSB_Chorales.mat", raw_dir("jsb"))
    processed_path("jsb").parent.write_text("a file where the folder should be")
    fails(["data", "prepare", "jsb"], f"cannot write {processed_path('jsb').parent}")


# --- crash-safe writes -----------------------------------------------------------------------------


def test_atomic_write_unwritable_target_is_a_user_error_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / "x").mkdir(parents=True)  # a folder where the file should go
    with pytest.raises(UserError, match=f"cannot write {folder / 'x'}"):
        write_text(folder / "x", "data")
    assert [p.name for p in folder.iterdir()] == ["x"]  # no temporary file left behind
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(UserError, match=f"cannot write {blocker}"):
        write_text(blocker / "y.txt", "data")
    assert blocker.read_text() == "keep me"


def test_atomic_write_passes_the_callers_errors_through(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    for error in (ValueError("bad value"), FileNotFoundError("an input the block reads")):
        with pytest.raises(type(error)), atomic_write(target, "w") as f:
            f.write("new")
            raise error
        assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_ray_ships_summary_last(tmp_path: Path) -> None:
    """A final status in summary.json means "done": it must never land before the checkpoints."""
    for name in ("summary.json", "best.pt", "last.pt", "metrics.csv", "config.yaml"):
        (tmp_path / name).write_text(name)
    assert list(scheduler._pack(tmp_path))[-1] == "summary.json"


# --- run folders --------------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished run folder as `train --out tmp_path --name r` leaves it (untrained weights: no training)."""
    run = tmp_path / "jsb" / "gru" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump(load_config(CONFIGS_DIR / "jsb" / "gru.yaml", ["model.hidden=4"])))
    for name in ("best.pt", "last.pt"):
        torch.save({"model": build_model("gru", hidden=4).state_dict()}, run / name)
    (run / "summary.json").write_text(json.dumps({"status": "complete"}))
    return run


def test_damaged_summary_is_one_line_and_says_resume(run_dir: Path, jsb_data: Path) -> None:
    (run_dir / "summary.json").write_text('{"status": "comp')
    args = ["train", "jsb/gru", "--set", "model.hidden=4", "--out", run_dir.parents[2], "--name", "r"]
    fails(args, f"{run_dir / 'summary.json'} is damaged", f"'gru-bench train --resume {run_dir}'")
    assert (run_dir / "summary.json").read_text() == '{"status": "comp'


@pytest.mark.parametrize("damage", ["config", "truncated", "text", "missing"])
def test_run_that_does_not_load_is_one_line(run_dir: Path, tmp_path: Path, damage: str) -> None:
    best = run_dir / "best.pt"
    if damage == "config":  # edited after training
        config = run_dir / "config.yaml"
        config.write_text(config.read_text().replace("hidden: 4", "hidden: 5"))
        want = (
            f"{best} does not match {config} (gru, hidden 5)",
            "the checkpoint has W of shape (1, 88, 12)",
        )
    elif damage == "missing":
        best.unlink()
        want = (f"{best} not found", "try --which last")
    else:
        best.write_bytes(best.read_bytes()[:500] if damage == "truncated" else b"hello")
        want = (f"{best} is damaged or not a gru-bench checkpoint",)
    line = fails(["evaluate", run_dir], *want)
    assert len(line.replace(str(run_dir), "RUN")) < 250, line  # a summary, not torch's paragraph
    fails(["sample", run_dir, "--out", tmp_path / "s.mid"], *want)


def test_evaluate_names_the_split_option(run_dir: Path, jsb_data: Path) -> None:
    fails(["evaluate", run_dir, "--split", "dev"], "--split must be one of train, valid, test, got 'dev'")


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    fails(["train", "--resume", tmp_path], f"{tmp_path} is not a run folder (no config.yaml)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_names_the_option(data_home: Path, results: Path) -> None:
    fails(["train", "jsb/gru", "--device", "cuda"], "training.device is cuda (from --device", "--device cpu")
    assert not any(results.rglob("*"))  # no empty run folder left behind


def test_a_run_folder_in_use_is_refused(run_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with run_lock(run_dir, Console(quiet=True)):
        fails(["train", "--resume", run_dir], f"{run_dir} is being trained by PID {os.getpid()} on")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_compare_with_a_missing_configs_folder(results: Path, tmp_path: Path) -> None:
    (results / "runs").mkdir()
    fails(
        ["compare", results, "--configs", tmp_path / "nope"], f"--configs {tmp_path / 'nope'} is not a folder"
    )


@pytest.mark.parametrize("temperature", ["nan", "inf", "-1"])
def test_sample_temperature_must_be_finite(run_dir: Path, tmp_path: Path, temperature: str) -> None:
    fails(["sample", run_dir, "--temperature", temperature, "--out", tmp_path / "s.mid"], "--temperature")
    assert not (tmp_path / "s.mid").exists()


def test_a_model_too_big_for_memory_says_what_it_needs(jsb_data: Path, results: Path) -> None:
    fails(["train", "jsb/gru", "--set", "model.hidden=100000"], "model.hidden 100000", "GiB to train")


def test_ctrl_c_in_train_says_once_how_to_continue(tmp_path: Path, tiny_jsb: Path, monkeypatch) -> None:
    from gru_bench.training import trainer

    def ctrl_c(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "end_epoch", ctrl_c)
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["train", "jsb/gru", "--set", "model.hidden=4", "--seeds", "1,2", "--out", str(out), "-q"]
    )
    assert result.exit_code == 130
    (line,) = [x for x in result.stderr.splitlines() if "interrupted" in x]  # said once
    assert line.startswith("interrupted: continue with 'gru-bench train --resume ")
    assert f"--resume {out}/jsb/gru/seed1" in line and f"--resume {out}/jsb/gru/seed2" in line
    assert "Traceback" not in result.output


def test_search_refuses_a_fixed_lr_and_an_lr_range_above_one(tmp_path: Path, results: Path) -> None:
    fails(["search", "jsb/gru", "--set", "training.lr=1e-3"], "the search chooses training.lr")
    fails(["search", "jsb/gru", "--log-lr-range", "0", "3"], "learning rates up to 20.1", "ln(lr)")


def test_data_info_all_describes_every_prepared_dataset(jsb_data: Path, monkeypatch) -> None:
    result = CliRunner().invoke(app, ["data", "info", "all"])
    assert result.exit_code == 0, result.output
    assert "jsb (reference route)" in result.output and "Bernoulli NLL per sequence" in result.output
    assert "nottingham" not in result.output  # not prepared: not described


def test_tables_are_not_cut_off_a_terminal(capsys) -> None:
    """Piped or logged (not a terminal), a table keeps its long run names instead of "notting…"."""
    from gru_bench.cli import _print_failures

    label = "nottingham/gru/reproduce-search-lr1.234e-04-seed0"
    _print_failures({label: "RuntimeError: boom in a worker process that died"})
    assert label in capsys.readouterr().err
