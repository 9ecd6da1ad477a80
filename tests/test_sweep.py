"""Sweeps: grid expansion, skip / resume / retry, failures that do not stop the rest, lockstep grouping, Ray.

Most tests inject `fake_runners.fake_train` (writes a summary in milliseconds) into the real executor with its
real worker processes; two tests train real tiny sweeps end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_runners
import pytest
from fake_runners import FAIL, calls, crash_train, fake_train
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, config_hash
from gru_bench.data import processed_path
from gru_bench.errors import UserError
from gru_bench.experiments import scheduler, sweep
from gru_bench.report import tables
from gru_bench.training import rundir


def write_sweep(tmp_path: Path, **keys) -> Path:
    body = {"name": "t", "config": str(CONFIGS_DIR) + "/{dataset}/{model}.yaml", **keys}
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def test_expand_is_the_full_grid_with_deterministic_names(tmp_path: Path, results: Path) -> None:
    path = write_sweep(
        tmp_path,
        datasets=["jsb", "nottingham"],
        models=["gru", "tanh"],
        seeds=[0, 1],
        grid={"training.weight_noise": [0, 0.075]},
        overrides={"training.max_epochs": 3},
    )
    specs = sweep.expand(path)
    assert len(specs) == 2 * 2 * 2 * 2
    assert [s.label for s in specs] == [s.label for s in sweep.expand(path)]
    assert len({s.run_dir for s in specs}) == len(specs)
    by_label = {s.label: s for s in specs}
    spec = by_label["nottingham/tanh/t-weight_noise0.075-seed1"]
    assert spec.run_dir == results / "runs" / "nottingham" / "tanh" / "t-weight_noise0.075-seed1"
    cfg = scheduler.load(spec)
    assert (cfg.dataset, cfg.model.cell, cfg.training.seed) == ("nottingham", "tanh", 1)
    assert (cfg.training.weight_noise, cfg.training.max_epochs) == (0.075, 3)
    assert spec.info == {"sweep": "t"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"models": ["gru", "rnn"]}, "unknown model 'rnn'"),
        ({"grid": {"training.seed": [1, 2]}}, "seeds"),
        ({"datasets": ["bach"]}, "unknown dataset"),
        ({"seed": [1]}, "unknown key seed"),
        ({"search": {"trials": 0}}, "trials"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path: Path, keys: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        sweep.load_sweep(write_sweep(tmp_path, **keys))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"overrides": {"training.lr": -1}}, "training.lr must be a positive number"),
        (
            {"config": str(CONFIGS_DIR / "nottingham" / "{model}.yaml")},
            "does not belong in runs/jsb/gru/t-seed0",
        ),
    ],
)
def test_bad_config_stops_before_any_training(
    tmp_path: Path, results: Path, keys: dict, message: str
) -> None:
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], **keys)
    with pytest.raises(UserError, match=message):
        sweep.run_sweep(path, workers=1, runner=fake_train)
    assert calls(results) == []


def test_rerun_skips_complete_retries_failed_and_resumes_started(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru", "lstm"], seeds=[0, 1])
    failing = results / "runs" / "jsb" / "lstm" / "t-seed1"
    monkeypatch.setenv(FAIL, "lstm:1")

    first = sweep.run_sweep(path, workers=2, k=1, runner=fake_train)
    assert set(first.failed) == {"jsb/lstm/t-seed1"}
    assert "RuntimeError: boom in t-seed1" in first.failed["jsb/lstm/t-seed1"]
    assert "boom" in (failing / rundir.ERROR_FILE).read_text()
    done = [k for k, o in first.outcomes.items() if o.status == "complete"]
    assert len(done) == 3 and len({c["pid"] for c in calls(results)}) == 4  # one process per task
    for label in done:  # the sweep's bookkeeping is merged into each summary
        assert json.loads((results / "runs" / label / "summary.json").read_text())["sweep"] == "t"

    monkeypatch.delenv(FAIL)
    started = results / "runs" / "jsb" / "gru" / "t-seed0"  # interrupted: has config.yaml, not complete
    (started / "summary.json").write_text(json.dumps({"status": "running"}))
    (results / fake_runners.CALLS).unlink()
    second = sweep.run_sweep(path, workers=2, k=1, runner=fake_train)
    assert second.failed == {}
    # the failed run died before training wrote its config.yaml: a fresh start; the started one resumes
    assert {c["runs"][0]: c["resume"] for c in calls(results)} == {
        "jsb/lstm/t-seed1": False,
        "jsb/gru/t-seed0": True,
    }
    assert not (failing / rundir.ERROR_FILE).exists()
    assert [o.status for o in second.outcomes.values()].count("skipped") == 2

    (results / fake_runners.CALLS).unlink()
    third = sweep.run_sweep(path, workers=2, runner=fake_train)
    assert calls(results) == [] and {o.status for o in third.outcomes.values()} == {"skipped"}


def test_lockstep_groups_only_compatible_runs_in_chunks(tmp_path: Path, results: Path) -> None:
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru", "tanh"], seeds=[0, 1, 2, 3, 4],
                       grid={"model.impl": ["paper", "fused"]}, lockstep=3)  # fmt: skip
    specs = sweep.expand(path)
    _, tasks = scheduler.plan(specs, [scheduler.load(s) for s in specs], k=3)
    assert sorted(len(t.runs) for t in tasks) == [2, 2, 2, 2, 3, 3, 3, 3]  # 4 stacks x 5 seeds -> 3 + 2
    for t in tasks:
        assert len({(c.model.cell, c.model.impl) for c in t.configs}) == 1
        assert len({c.training.seed for c in t.configs}) == len(t.runs)


def test_a_dying_worker_is_a_failed_run_not_a_dead_sweep(tmp_path: Path, results: Path) -> None:
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0, 1])
    result = sweep.run_sweep(path, workers=2, k=1, runner=crash_train)
    assert result.failed == {
        f"jsb/gru/t-seed{s}": "worker exited with code 9 (killed? out of memory?)" for s in (0, 1)
    }


def test_cli_dry_run_lists_runs_and_their_fate(tmp_path: Path, results: Path, data_home: Path) -> None:
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0, 1])
    done = results / "runs" / "jsb" / "gru" / "t-seed1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "complete"}))
    out = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    lines = dict(line.split(maxsplit=1) for line in out.output.strip().splitlines())
    assert lines == {
        "jsb/gru/t-seed0": "train (data not prepared: gru-bench data prepare jsb)",
        "jsb/gru/t-seed1": "skip (complete)",
    }
    assert not (results / "runs" / "jsb" / "gru" / "t-seed0").exists()
    processed_path("jsb").parent.mkdir(parents=True)
    processed_path("jsb").write_bytes(b"")  # prepared (the dry run does not read it)
    out = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert (
        dict(line.split(maxsplit=1) for line in out.output.strip().splitlines())["jsb/gru/t-seed0"] == "train"
    )


def test_cli_reports_bad_sweep_without_traceback(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["sweep", str(tmp_path / "missing.yaml")])
    assert out.exit_code == 2 and "not found" in out.output and "Traceback" not in out.output


def test_cli_lists_failed_runs_and_exits_1(tmp_path: Path, results: Path, data_home: Path) -> None:
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0, 1])  # no prepared data
    out = CliRunner().invoke(app, ["sweep", str(path), "--workers", "1"])
    assert out.exit_code == 1, out.output
    assert "2 run(s) not finished" in out.output and "data prepare" in out.output
    assert all((results / f"runs/jsb/gru/t-seed{s}" / rundir.ERROR_FILE).exists() for s in (0, 1))


def test_ray_backend_without_ray_is_a_one_line_error(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0])
    with pytest.raises(UserError, match="pip install"):
        sweep.run_sweep(path, backend="ray", runner=fake_train)


def test_ray_backend_on_a_local_instance(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    ray.cloudpickle.register_pickle_by_value(fake_runners)  # Ray workers cannot import tests/
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0, 1, 2])
    monkeypatch.setenv(FAIL, "gru:1")  # before ray.init: its workers inherit the environment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep.run_sweep(path, backend="ray", workers=2, k=1, runner=fake_train)
    finally:
        ray.shutdown()
    runs = results / "runs" / "jsb" / "gru"
    assert set(result.failed) == {"jsb/gru/t-seed1"} and "boom" in result.failed["jsb/gru/t-seed1"]
    assert "RuntimeError: boom" in (runs / "t-seed1" / rundir.ERROR_FILE).read_text()
    for name in ("t-seed0", "t-seed2"):  # written on a worker, shipped back into the usual layout
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["sweep"] == "t"
        assert (runs / name / "config.yaml").read_text() == "fake\n"


def interrupted_train(task: scheduler.Task) -> None:
    """Real training, stopped by Ctrl-C right after the first epoch's checkpoint."""
    from gru_bench.training import trainer

    end_epoch = trainer.Trainer.end_epoch

    def end_then_interrupt(*args, **kwargs) -> None:
        end_epoch(*args, **kwargs)
        raise KeyboardInterrupt

    trainer.Trainer.end_epoch = end_then_interrupt
    scheduler.train_task(task)


def test_real_tiny_sweep_resumes_interrupted_runs_and_skips_finished(
    tmp_path: Path, results: Path, jsb_data: Path
) -> None:
    tiny = {
        "model.hidden": 6,
        "training.max_epochs": 2,
        "training.batch_size": 64,
        "training.weight_noise": 0,
    }
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0, 1], overrides=tiny, lockstep=2)
    runs = results / "runs" / "jsb" / "gru"
    first = sweep.run_sweep(path, workers=2, runner=interrupted_train)
    assert {o.status for o in first.outcomes.values()} == {"interrupted"}
    assert all(rundir.epochs_done(runs / f"t-seed{s}") == 1 for s in (0, 1))

    second = sweep.run_sweep(path, workers=2)
    assert second.failed == {}
    summaries = [json.loads((runs / f"t-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert [(s["status"], s["seed"], s["epochs"], s["lockstep_k"], s["sweep"]) for s in summaries] == [
        ("complete", seed, 2, 2, "t") for seed in (0, 1)
    ]
    # the interrupted, resumed, stacked run equals the same run trained alone in one go
    alone = write_sweep(tmp_path, name="alone", datasets=["jsb"], models=["gru"], seeds=[1], overrides=tiny)
    assert sweep.run_sweep(alone, workers=1).failed == {}
    alone_summary = json.loads((runs / "alone-seed1" / "summary.json").read_text())
    assert alone_summary["test_nll"] == pytest.approx(summaries[1]["test_nll"], rel=1e-5)

    third = sweep.run_sweep(path, workers=2)
    assert {o.status for o in third.outcomes.values()} == {"skipped"}


def test_ctrl_c_stops_the_workers_and_leaves_resumable_runs(
    tmp_path: Path, results: Path, jsb_data: Path
) -> None:
    long = {
        "model.hidden": 6,
        "training.max_epochs": 500,
        "training.patience": None,
        "training.batch_size": 64,
    }
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru", "tanh"], seeds=[0], overrides=long)
    runs = [results / "runs" / "jsb" / cell / "t-seed0" for cell in ("gru", "tanh")]
    cmd = [sys.executable, "-m", "gru_bench.cli", "sweep", str(path), "--workers", "2"]
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as in a terminal: a job started in the background (`cmd &`, as CI may be) inherits SIGINT ignored,
        # and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not all((r / "last.pt").exists() for r in runs) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "interrupted" in output and "Traceback" not in output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived the interrupted sweep")
    plan = dict(sweep.preview(path))
    for r in runs:
        assert rundir.run_state(r) == "partial" and not (r / rundir.ERROR_FILE).exists()
        assert (
            plan[scheduler.RunSpec("", Path(), (), r).label] == f"resume after epoch {rundir.epochs_done(r)}"
        )
        assert rundir.epochs_done(r) >= 1


def test_variants_are_named_sets_of_overrides_and_datasets_can_be_narrowed(tmp_path: Path, results: Path):
    path = write_sweep(
        tmp_path,
        datasets=["jsb", "nottingham"],
        models=["gru"],
        seeds=[0],
        overrides={"training.max_epochs": 3},
        variants={"a": {}, "b": {"training.loss": "mean", "training.max_epochs": 5}},
    )
    s = sweep.load_sweep(path)
    specs = {r.label: r.overrides for r in sweep.expand(s)}
    assert list(specs) == [f"{d}/gru/t-{v}-seed0" for d in ("jsb", "nottingham") for v in ("a", "b")]
    configs = {label: scheduler.load(r) for label, r in zip(specs, sweep.expand(s), strict=True)}
    assert configs["jsb/gru/t-b-seed0"].training.loss == "mean"
    assert configs["jsb/gru/t-b-seed0"].training.max_epochs == 5  # a variant overrides the common overrides
    assert configs["jsb/gru/t-a-seed0"].training.max_epochs == 3
    # a variant's runs are tagged as such, and the report keeps them out of Table 2 (they are an ablation's)
    sweep.run_sweep(path, workers=1, runner=fake_train)
    summary = json.loads((results / "runs" / "jsb" / "gru" / "t-b-seed0" / "summary.json").read_text())
    assert (summary["sweep"], summary["variant"]) == ("t", "b")
    assert set(tables.collect_runs(results)["role"]) == {"ablation variant"}
    assert sweep.only_datasets(s, "nottingham") == ["nottingham"]
    with pytest.raises(UserError, match="musedata not in"):
        sweep.only_datasets(s, "musedata")
    with pytest.raises(UserError, match="variants must map names"):
        sweep.load_sweep(write_sweep(tmp_path, variants={"bad name": {}}))


def test_off_a_terminal_progress_lines_are_printed_periodically(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nohup / CI logs get a line now and then (epochs per stack, elapsed, an estimate), not silence."""
    import io

    from rich.console import Console

    monkeypatch.setattr(scheduler, "TICK_SECONDS", 0.2)
    monkeypatch.setattr(scheduler, "PROGRESS_SECONDS", 0.0)
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru", "tanh"], seeds=[0], lockstep=1)
    buf = io.StringIO()
    sweep.run_sweep(path, workers=1, runner=fake_runners.slow_train, console=Console(file=buf, width=200))
    lines = [x for x in buf.getvalue().splitlines() if "runs finished" in x]
    assert lines and "0/2 runs finished; training: jsb/" in lines[0] and "epoch 0/500" in lines[0]
    assert any("1/2 runs finished, ~0:00:0" in x and "left" in x for x in lines)


def test_a_finished_run_with_other_settings_is_never_passed_off_as_this_sweeps(
    tmp_path: Path, results: Path
) -> None:
    """After a config default changes, a rerun must not skip the old run as if it were the new one."""
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0])
    old = results / "runs" / "jsb" / "gru" / "t-seed0"
    old.mkdir(parents=True)
    (old / "summary.json").write_text(json.dumps({"status": "complete", "config_hash": "0ldc0ffe"}))
    with pytest.raises(UserError, match="finished with other settings .config hash 0ldc0ffe"):
        sweep.run_sweep(path, workers=1, runner=fake_runners.fake_train)
    s = json.loads((old / "summary.json").read_text())
    (old / "summary.json").write_text(
        json.dumps({**s, "config_hash": config_hash(scheduler.load(sweep.expand(path)[0]))})
    )
    assert (
        sweep.run_sweep(path, workers=1, runner=fake_runners.fake_train).outcomes["jsb/gru/t-seed0"].status
        == "skipped"
    )


def test_a_run_that_finished_in_a_stopped_stack_gets_the_sweeps_bookkeeping_on_the_rerun(
    tmp_path: Path, results: Path
) -> None:
    """A stack is tagged when it ends; a model that finished inside a stack stopped before that (Ctrl-C,
    end of a session) must still be tagged, or the report cannot tell it belongs to the sweep."""
    path = write_sweep(tmp_path, datasets=["jsb"], models=["gru"], seeds=[0])
    done = results / "runs" / "jsb" / "gru" / "t-seed0"
    done.mkdir(parents=True)
    h = config_hash(scheduler.load(sweep.expand(path)[0]))
    (done / "summary.json").write_text(json.dumps({"status": "complete", "config_hash": h}))
    out = sweep.run_sweep(path, workers=1, runner=fake_runners.fake_train)
    assert out.outcomes["jsb/gru/t-seed0"].status == "skipped" and calls(results) == []
    assert json.loads((done / "summary.json").read_text()) == {
        "status": "complete",
        "config_hash": h,
        "sweep": "t",
    }


def test_cores_no_worker_would_use_go_to_the_tasks_as_threads(
    tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 CPUs: a task gets its worker's share, and no share is lost to workers without a task (1 task, a
    2-model stack: all 4 CPUs; 2 or 4 tasks on 2 workers: 2 each; 2 tasks on 4 workers: 2 each)."""
    monkeypatch.setattr(scheduler, "available_cpus", lambda: 4)
    cases = (
        (["gru"], 2, 2, {"4"}),
        (["gru"], 1, 2, {"2"}),
        (["gru", "lstm"], 1, 2, {"2"}),
        (["gru"], 1, 4, {"2"}),
    )
    for i, (models, k, workers, cpus) in enumerate(cases):
        (results / fake_runners.CALLS).unlink(missing_ok=True)
        path = write_sweep(tmp_path, name=f"t{i}", datasets=["jsb"], models=models, seeds=[0, 1])
        sweep.run_sweep(path, workers=workers, k=k, runner=fake_train)
        assert {c["cpus"] for c in calls(results)} == cpus


def test_auto_threads_spread_a_stack_over_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from gru_bench.config import CPUS_VAR, stack_threads

    monkeypatch.setenv(CPUS_VAR, "2")
    assert stack_threads("auto", 3) == (1, 2)  # torch on one thread, three models over two threads
    assert stack_threads("auto", 1) == (1, 1)
    assert stack_threads(4, 3) == (4, 4)
    assert stack_threads(None, 3) == (None, 1)
