"""`gru-bench compare` on real tiny JSB runs, plus hand-made runs that must be reported, never averaged in."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from gru_bench import paper
from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.data.prepare import prepare
from gru_bench.paths import raw_dir
from gru_bench.report import build_report, collect_runs, compare
from gru_bench.training import train_lockstep

TINY = ["model.hidden=8", "training.max_epochs=2", "training.batch_size=64", "training.weight_noise=0"]
SEEDS = (1, 2)


def _edit(run_dir: Path, summary: dict | None = None, config: dict | None = None) -> None:
    """Change keys of a run's summary.json / config.yaml (config: dotted keys)."""
    if summary:
        s = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps(s | summary))
    if config:
        c = yaml.safe_load((run_dir / "config.yaml").read_text())
        for key, value in config.items():
            section, name = key.split(".")
            c[section][name] = value
        (run_dir / "config.yaml").write_text(yaml.safe_dump(c))


def _copy(runs: Path, src: str, dst: str) -> Path:
    shutil.copytree(runs / src, runs / dst)
    return runs / dst


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Path:
    """results/ with 2 real seeds of each model on JSB (2 epochs), and hand-made runs to be left out."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRU_BENCH_DATA", str(root / "data"))
        raw_dir("jsb").mkdir(parents=True)
        shutil.copy(shared_datasets / "mat" / "JSB_Chorales.mat", raw_dir("jsb"))
        prepare("jsb", echo=lambda _: None)
        for cell in paper.CELLS:
            cfgs = [
                load_config(CONFIGS_DIR / "jsb" / f"{cell}.yaml", [*TINY, f"training.seed={s}"])
                for s in SEEDS
            ]
            dirs = [root / "results" / "runs" / "jsb" / cell / f"seed{s}" for s in SEEDS]
            train_lockstep(cfgs, dirs, quiet=True)
    runs = root / "results" / "runs" / "jsb"
    # other settings: a finished run with a wider GRU and a test NLL that would shift any mean it joined
    _edit(_copy(runs, "gru/seed1", "gru/wide"), {"hidden": 12, "test_nll": 1.0}, {"model.hidden": 12})
    # half-finished: status running, one epoch fewer in metrics.csv
    half = _copy(runs, "lstm/seed1", "lstm/half")
    _edit(half, {"status": "running", "test_nll": None, "epochs": 1})
    m = pd.read_csv(half / "metrics.csv")
    m.iloc[:1].to_csv(half / "metrics.csv", index=False)
    # killed before writing a summary, and diverged
    (_copy(runs, "lstm/seed2", "lstm/killed") / "summary.json").unlink()
    _edit(_copy(runs, "tanh/seed1", "tanh/diverged"), {"status": "stopped_nan", "test_nll": 0.5})
    # a learning-rate search trial: a run of its own, summarised, not in the table
    trial = {"lr": 0.01, "search_trial": {"name": "search", "trial": 0, "trials": 10}}
    _edit(_copy(runs, "gru/seed2", "gru/search-lr0.01-seed0"), trial, {"training.lr": 0.01})
    return root / "results"


def _summaries(results: Path, cell: str) -> list[dict]:
    return [
        json.loads((results / "runs" / "jsb" / cell / f"seed{s}" / "summary.json").read_text()) for s in SEEDS
    ]


def test_collect_runs_lists_every_run_dir(results: Path) -> None:
    runs = collect_runs(results).set_index(["cell", "run"])
    assert len(runs) == 3 * len(SEEDS) + 5
    assert runs.loc[("lstm", "killed"), "status"] == "no summary"
    assert runs.loc[("gru", "search-lr0.01-seed0"), "role"] == "search trial"
    assert (
        runs.loc[("gru", "seed1"), "group"]
        == runs.loc[("gru", "seed2"), "group"]
        != runs.loc[("gru", "wide"), "group"]
    )
    assert all(runs.loc[(c, f"seed{s}"), "problem"] == "" for c in paper.CELLS for s in SEEDS)


def test_table_averages_the_seeds_of_one_setting_beside_the_paper(results: Path) -> None:
    table = build_report(results, configs_dir=None).table.set_index(["dataset", "model"])
    for cell in paper.CELLS:
        s = _summaries(results, cell)
        row = table.loc[("jsb", cell)]
        test = [x["test_nll"] for x in s]
        assert row["n_runs"] == len(SEEDS)
        assert row["test_mean"] == pytest.approx(statistics.mean(test))
        assert row["test_std"] == pytest.approx(statistics.stdev(test))
        assert row["train_mean"] == pytest.approx(statistics.mean(x["train_nll"] for x in s))
        assert (row["paper_train"], row["paper_test"]) == paper.TABLE2["jsb"][cell]
        assert row["diff_test"] == pytest.approx(row["test_mean"] - paper.TABLE2["jsb"][cell][1])
        assert row["lr"] == s[0]["lr"]
    models = table.loc["jsb"].loc[list(paper.CELLS)]
    assert models["best"].sum() == 1 and models["test_mean"].idxmin() == models.index[models["best"]][0]
    baseline = table.loc[("jsb", "bernoulli")]
    assert baseline["test_mean"] == pytest.approx(_summaries(results, "gru")[0]["baseline_nll"]["test"])


def test_left_out_runs_are_reported_with_the_reason(results: Path) -> None:
    report = build_report(results, configs_dir=None)
    problems = "\n".join(report.problems)
    assert "jsb/lstm/half: status running" in problems
    assert "jsb/lstm/killed: no summary.json" in problems
    assert "jsb/tanh/diverged: stopped on NaN" in problems
    assert "no runs at all for: nottingham, musedata, piano-midi" in problems
    assert "search" not in problems and "wide" not in problems  # finished: reported elsewhere
    (other,) = report.other_groups
    assert other.startswith("jsb/gru group") and "model.hidden: 12 (table: 8)" in other
    (search,) = report.searches
    assert search.startswith("jsb/gru search 'search': 1 trial (1 finished")
    main = report.runs[report.runs["main"]]
    assert sorted(main["run"]) == sorted(f"seed{s}" for s in SEEDS for _ in paper.CELLS)
    assert {k: len(v) for k, v in report.curves.items()} == {("jsb", c): len(SEEDS) for c in paper.CELLS}


def test_the_cells_config_file_picks_the_table_group(results: Path, tmp_path: Path) -> None:
    """configs/<dataset>/<cell>.yaml wins over the larger group: here it asks for the wide GRU."""
    (tmp_path / "jsb").mkdir()
    wide = {"inherit": str(CONFIGS_DIR / "defaults.yaml"), "dataset": "jsb",
            "model": {"cell": "gru", "hidden": 12},
            "training": {"max_epochs": 2, "batch_size": 64, "weight_noise": 0}}  # fmt: skip
    (tmp_path / "jsb" / "gru.yaml").write_text(yaml.safe_dump(wide))
    report = build_report(results, configs_dir=tmp_path)
    gru = report.table.set_index(["dataset", "model"]).loc[("jsb", "gru")]
    assert gru["n_runs"] == 1 and gru["test_mean"] == 1.0
    (other,) = report.other_groups
    assert "(2 runs): model.hidden: 8 (table: 12)" in other
    # lstm.yaml matches no run (hidden 8 is not its hidden): largest group, with a note; tanh has no file
    (tmp_path / "jsb" / "lstm.yaml").write_text(yaml.safe_dump({**wide, "model": {"cell": "lstm"}}))
    report = build_report(results, configs_dir=tmp_path)
    table = report.table.set_index(["dataset", "model"])
    assert table.loc[("jsb", "lstm"), "n_runs"] == table.loc[("jsb", "tanh"), "n_runs"] == len(SEEDS)
    notes = [o for o in report.other_groups if "no run matches" in o]
    assert len(notes) == 1 and notes[0].startswith("jsb/lstm: no run matches")


def test_searched_learning_rates_do_not_split_a_cell(results: Path, tmp_path: Path) -> None:
    """Final runs of a search carry the chosen lr; it is an outcome, so it does not define the group."""
    shutil.copytree(results, tmp_path / "results")
    runs = tmp_path / "results" / "runs" / "jsb"
    for s, lr in zip(SEEDS, (3e-4, 5e-4), strict=True):
        _edit(runs / "tanh" / f"seed{s}", {"lr": lr, "search": {"name": "search"}}, {"training.lr": lr})
    report = build_report(tmp_path / "results", configs_dir=None)
    tanh = report.table.set_index(["dataset", "model"]).loc[("jsb", "tanh")]
    assert tanh["n_runs"] == 2 and tanh["lr_searched"]
    assert not any(g.startswith("jsb/tanh") for g in report.other_groups)


def test_compare_writes_tables_and_figures(results: Path, tmp_path: Path) -> None:
    out = compare(results, tmp_path / "report", configs_dir=None)
    names = {p.name for p in out.iterdir()}
    figures = {f"{stem}.{ext}" for stem in ("curves_jsb", "test_nll", "epoch_time") for ext in ("png", "svg")}
    assert names == {"table2.md", "table2.csv", "runs.csv"} | figures
    assert all((out / f).stat().st_size > 1000 for f in figures)
    table = pd.read_csv(out / "table2.csv")
    assert list(table["model"]) == [*paper.CELLS, "bernoulli"]
    assert len(pd.read_csv(out / "runs.csv")) == 3 * len(SEEDS) + 5
    md = (out / "table2.md").read_text()
    best = table.loc[table["best"], "model"].item()
    assert f"| jsb | **{best}** | 2 |" in md
    assert "jsb/lstm/half: status running" in md and "model.hidden: 12 (table: 8)" in md


def test_cli_compare(results: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["compare", str(results), "--out", str(tmp_path / "r"), "--configs", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "Table 2" in res.output and (tmp_path / "r" / "table2.md").exists()
    res = runner.invoke(app, ["compare", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "runs" in res.output and "Traceback" not in res.output
