"""`gru-bench compare` on real tiny JSB runs, plus hand-made runs that must be reported, never averaged in."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from gru_bench import paper
from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.data import processed_path
from gru_bench.errors import UserError
from gru_bench.experiments.search import Search
from gru_bench.report.tables import MANIFEST, build_report, collect_runs, compare, search_lines
from gru_bench.training.trainer import train_lockstep

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
def results(tmp_path_factory: pytest.TempPathFactory, jsb_npz: Path) -> Path:
    """results/ with 2 real seeds of each model on JSB (2 epochs), and hand-made runs to be left out."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRU_BENCH_DATA", str(root / "data"))
        processed_path("jsb").parent.mkdir(parents=True)
        shutil.copy(jsb_npz, processed_path("jsb"))
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
        # the paper's metric (mean over sequences) is the one set beside the paper
        seq = [x["test_nll_seq"] for x in s]
        assert row["test_seq_mean"] == pytest.approx(statistics.mean(seq))
        assert row["test_seq_std"] == pytest.approx(statistics.stdev(seq))
        assert row["train_seq_mean"] == pytest.approx(statistics.mean(x["train_nll_seq"] for x in s))
        assert row["diff_test"] == pytest.approx(row["test_seq_mean"] - paper.TABLE2["jsb"][cell][1])
        assert row["lr"] == s[0]["lr"]
    models = table.loc["jsb"].loc[list(paper.CELLS)]
    assert models["best"].sum() == 1 and models["test_seq_mean"].idxmin() == models.index[models["best"]][0]
    baseline = table.loc[("jsb", "bernoulli")]
    assert baseline["test_mean"] == pytest.approx(_summaries(results, "gru")[0]["baseline_nll"]["test"])
    assert baseline["test_seq_mean"] == pytest.approx(
        _summaries(results, "gru")[0]["baseline_nll_seq"]["test"]
    )


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
    (search,) = search_lines(report.searches)
    assert search.startswith("jsb/gru search 'search': 1 trial (1 finished")
    assert search.endswith("no lr chosen (no search.json)")
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
    tables = {"table2.md", "table2.csv", "runs.csv", "pairwise.csv", "searches.csv"}
    assert names == tables | figures | {MANIFEST}
    assert all((out / f).stat().st_size > 1000 for f in figures)
    table = pd.read_csv(out / "table2.csv")
    assert list(table["model"]) == [*paper.CELLS, "bernoulli"]
    assert len(pd.read_csv(out / "runs.csv")) == 3 * len(SEEDS) + 5
    md = (out / "table2.md").read_text()
    best = table.loc[table["best"], "model"].item()
    assert f"| jsb | **{best}** | 2 |" in md
    assert "jsb/lstm/half: status running" in md and "model.hidden: 12 (table: 8)" in md


def test_compare_writes_the_same_bytes_every_time(results: Path, tmp_path: Path) -> None:
    """Rerunning `compare` on unchanged runs leaves committed reports untouched: no dates, versions or
    random SVG ids in the figures."""
    first = compare(results, tmp_path / "a", configs_dir=None)
    again = compare(results, tmp_path / "b", configs_dir=None)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    svg = (first / "test_nll.svg").read_text()
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg
    assert b"Software" not in (first / "test_nll.png").read_bytes()
    compare(results, first, configs_dir=None)  # into the same folder: nothing changes either
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in names)


def test_cli_compare(results: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app, ["compare", str(results), "--out", str(tmp_path / "r"), "--configs", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "Table 2" in res.output and (tmp_path / "r" / "table2.md").exists()
    res = runner.invoke(app, ["compare", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "runs" in res.output and "Traceback" not in res.output


def test_cli_compare_rewrites_the_readme_blocks(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# r\n<!-- gru-bench:table2 -->\nold\n<!-- /gru-bench:table2 -->\nend\n")
    args = ["compare", str(results), "--out", str(tmp_path / "r"), "--configs", str(tmp_path)]
    res = CliRunner().invoke(app, [*args, "--readme", str(readme)])
    assert res.exit_code == 0, res.output
    assert f"updated {readme}" in res.output
    text, table2 = readme.read_text(), (tmp_path / "r" / "table2.md").read_text()
    rows = [line for line in table2.split("## Left out")[0].splitlines() if line.startswith("| jsb |")]
    assert "\nold\n" not in text and text.endswith("end\n") and rows and all(row in text for row in rows)
    res = CliRunner().invoke(app, [*args, "--readme", str(tmp_path / "missing.md")])
    assert res.exit_code == 2 and "missing.md" in res.output and "Traceback" not in res.output


def test_model_differences_match_a_paired_t_test_over_seeds(results: Path, tmp_path: Path) -> None:
    out = compare(results, tmp_path / "report", configs_dir=None)
    pw = pd.read_csv(out / "pairwise.csv")
    md = (out / "table2.md").read_text()
    assert "## Model differences (paired over seeds)" in md
    nll = {c: np.array([x["test_nll_seq"] for x in _summaries(results, c)]) for c in paper.CELLS}
    pairs = [("tanh", "lstm"), ("tanh", "gru"), ("lstm", "gru")]
    assert [(r.cell_a, r.cell_b) for r in pw.itertuples()] == pairs
    for r, (a, b) in zip(pw.itertuples(), pairs, strict=True):
        d = nll[a] - nll[b]
        t = stats.ttest_rel(nll[a], nll[b])
        spread = max(nll[a].std(ddof=1), nll[b].std(ddof=1))
        assert r.n_paired == len(SEEDS) and r.mean_diff == pytest.approx(d.mean())
        assert r.std_diff == pytest.approx(d.std(ddof=1)) and r.std_a == pytest.approx(nll[a].std(ddof=1))
        assert (r.t, r.p) == (pytest.approx(t.statistic), pytest.approx(t.pvalue))
        big, significant = abs(d.mean()) > spread, t.pvalue < 0.05
        winner = a if d.mean() < 0 else b
        expected = {
            (True, True): f"{winner} better (difference > seed spread",
            (True, False): f"{winner} lower by > seed spread, not significant",
            (False, True): f"{winner} consistently lower, by < seed spread",
            (False, False): "not distinguishable",
        }[(big, significant)]
        assert r.beyond_spread == big and r.verdict.startswith(expected)
        assert f"| jsb | seq | {a} − {b} | {d.mean():.3f} ± {d.std(ddof=1):.3f} | {len(SEEDS)} |" in md
        assert f"| {t.pvalue:.2g} | {r.verdict} |" in md


def test_a_repeated_seed_is_not_counted_twice(results: Path, tmp_path: Path) -> None:
    shutil.copytree(results, tmp_path / "results")
    _copy(tmp_path / "results" / "runs" / "jsb", "gru/seed1", "gru/seed1-again")
    report = build_report(tmp_path / "results", configs_dir=None)
    assert "jsb/gru/seed1-again: same settings and seed 1 as seed1" in report.problems
    assert report.table.set_index("model").loc["gru", "n_runs"] == len(SEEDS)
    assert list(report.pairwise["n_paired"]) == [len(SEEDS)] * 3


def test_searches_show_the_chosen_lr_and_the_spread_of_trials(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial runs named and recorded as `gru-bench search` does it; one diverged trial."""
    monkeypatch.setenv("GRU_BENCH_RESULTS", str(tmp_path / "results"))
    shutil.copytree(results, tmp_path / "results")
    s = Search("lrs", CONFIGS_DIR / "jsb" / "gru.yaml", tuple(TINY), "jsb", "gru", trials=3)
    valid = [9.5, 8.25, 7.0]
    for spec, v, status in zip(s.specs(), valid, ("complete", "complete", "stopped_nan"), strict=True):
        trial = spec.info["search_trial"]
        shutil.copytree(tmp_path / "results" / "runs" / "jsb" / "gru" / "seed1", spec.run_dir)
        _edit(spec.run_dir, {"lr": trial["lr"], "best_valid_nll": v, "status": status, "search_trial": trial},
              {"training.lr": trial["lr"]})  # fmt: skip
    rec = s.write()
    lrs = [spec.info["search_trial"]["lr"] for spec in s.specs()]
    assert rec["chosen"]["lr"] == lrs[1]  # the diverged trial's lower valid NLL does not count
    report = build_report(tmp_path / "results", configs_dir=None)
    row = report.searches.set_index("search").loc["lrs"]
    assert (row["trials"], row["finished"], row["diverged"]) == (3, 2, 1)
    assert (row["valid_min"], row["valid_median"], row["valid_max"]) == (8.25, np.median(valid[:2]), 9.5)
    assert (row["lr_min"], row["lr_max"]) == (min(lrs), max(lrs))
    assert (row["chosen_lr"], row["chosen_valid_nll"], row["record"]) == (lrs[1], 8.25, "complete")
    (line,) = [x for x in search_lines(report.searches) if "'lrs'" in x]
    assert "min 8.250 (lr " in line and "median 8.875, max 9.500" in line
    assert line.endswith(f"**chosen lr {lrs[1]:.3g}** (valid NLL 8.250)")
    assert report.table.set_index("model").loc["gru", "n_runs"] == len(SEEDS)  # trials stay out


def test_compare_removes_only_its_own_stale_files(results: Path, tmp_path: Path) -> None:
    """A dataset whose runs are gone loses its curves; files compare did not write stay."""
    shutil.copytree(results, tmp_path / "results")
    runs = tmp_path / "results" / "runs"
    other = runs / "nottingham" / "gru" / "seed1"
    shutil.copytree(runs / "jsb" / "gru" / "seed1", other)
    _edit(other, {"dataset": "nottingham"})
    c = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump(c | {"dataset": "nottingham"}))
    out = compare(tmp_path / "results", tmp_path / "report", configs_dir=None)
    assert (out / "curves_nottingham.png").exists()
    mine = [out / "notes.txt", out / "curves_mine.png"]
    for p in mine:
        p.write_text("mine")
    shutil.rmtree(runs / "nottingham")
    compare(tmp_path / "results", out, configs_dir=None)
    assert not (out / "curves_nottingham.png").exists() and not (out / "curves_nottingham.svg").exists()
    assert all(p.read_text() == "mine" for p in mine) and (out / "curves_jsb.png").exists()
    assert "nottingham" not in json.loads((out / MANIFEST).read_text())


def test_ablation_pairs_each_variant_with_the_baseline_over_seeds(tmp_path: Path, monkeypatch) -> None:
    """`gru-bench ablation`: variant - baseline per seed, in the paper's metric, from the runs' summaries."""
    from gru_bench.report.tables import ablation_table, write_ablation

    results = tmp_path / "results"
    monkeypatch.setenv("GRU_BENCH_RESULTS", str(results))
    sweep_file = tmp_path / "abl.yaml"
    sweep_file.write_text(
        json.dumps({
            "name": "abl", "datasets": ["jsb"], "models": ["gru"], "seeds": [0, 1, 2],
            "config": str(CONFIGS_DIR) + "/{dataset}/{model}.yaml",
            "variants": {"authors": {}, "mean": {"training.loss": "mean"}},
        })
    )  # fmt: skip
    valid = {"authors": [3.0, 3.2, 3.1], "mean": [3.1, 3.5, 3.2]}
    for variant, values in valid.items():
        for seed, v in enumerate(values):
            run = results / "runs" / "jsb" / "gru" / f"abl-{variant}-seed{seed}"
            run.mkdir(parents=True)
            status = "complete" if (variant, seed) != ("mean", 2) else "running"
            (run / "summary.json").write_text(
                json.dumps({"status": status, "valid_nll_seq": v, "test_nll_seq": v + 1})
            )
    table = ablation_table(sweep_file).set_index("metric")
    for metric, shift in (("valid", 0), ("test", 1)):
        r = table.loc[metric]
        assert (r["variant"], r["cell_a"], r["cell_b"], r["n_paired"]) == ("mean", "mean", "authors", 2)
        assert r["mean_diff"] == pytest.approx(np.mean([0.1, 0.3]))  # seed 2 of `mean` did not finish
        assert r["mean_a"] == pytest.approx(np.mean([3.1, 3.5]) + shift)
        t = stats.ttest_rel([3.1, 3.5], [3.0, 3.2])
        assert r["p"] == pytest.approx(t.pvalue) and r["t"] == pytest.approx(t.statistic)
    md = write_ablation(sweep_file, tmp_path / "out").read_text()
    assert "| jsb | gru | mean | valid |" in md
    with pytest.raises(UserError, match="not a variant"):
        ablation_table(sweep_file, baseline="nope")
