"""Numbers in README.md and docs/ come from the committed results: generated blocks, checked against them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gru_bench.config import CONFIGS_DIR
from gru_bench.errors import UserError
from gru_bench.report import figures
from gru_bench.report.readme import refresh, update_files
from gru_bench.report.tables import compare

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "results" / "report"
BENCH = REPO / "results" / "bench" / "bench.csv"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_committed_docs_show_the_committed_results() -> None:
    """A hand edit inside a generated block, or a block older than results/, fails here."""
    stale = [p.name for p in DOCS if refresh(p.read_text(), REPORT, BENCH, str(p)) != p.read_text()]
    assert not stale, f"generated blocks of {stale} differ from results/: run `make report`"
    readme = (REPO / "README.md").read_text()
    assert "<!-- gru-bench:table2 -->" in readme and "make test" in readme and "make reproduce" in readme


def test_committed_report_matches_the_committed_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """results/report/ is what `compare` makes of results/runs/ today (tables only: figures are slow,
    and their bytes depend on the matplotlib build; test_report checks that they are reproducible)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(figures, "write_all", lambda table, curves, out: [])
    out = compare(Path("results"), tmp_path, CONFIGS_DIR)
    for f in sorted(out.glob("*.csv")) + [out / "table2.md"]:
        assert f.read_text() == (REPORT / f.name).read_text(), f"{f.name} is stale: run `make report`"


def _doc(tmp_path: Path, text: str, name: str = "doc.md") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_blocks_are_rewritten_and_the_rest_is_kept(tmp_path: Path) -> None:
    doc = _doc(
        tmp_path,
        "# title\n\n<!-- gru-bench:table2 -->\nhand-typed 9.99\n<!-- /gru-bench:table2 -->\n\nprose\n"
        "<!-- gru-bench:bench -->\n<!-- /gru-bench:bench -->\n"
        "<!-- gru-bench:bench-batch1 -->\n<!-- /gru-bench:bench-batch1 -->\nend\n"
        "`<!-- gru-bench:table2 -->` in a sentence is no block\n",
    )
    assert update_files([doc], REPORT, BENCH) == [doc]
    text = doc.read_text()
    assert text.startswith("# title\n\n<!-- gru-bench:table2 -->\n")
    assert text.endswith("\nend\n`<!-- gru-bench:table2 -->` in a sentence is no block\n")
    assert "hand-typed" not in text and "\n\nprose\n" in text
    table2 = (REPORT / "table2.md").read_text()
    first_row = next(line for line in table2.splitlines() if line.startswith("| jsb |"))
    assert first_row in text
    assert "| gru | torch.nn |" in text and "× JAX" in text  # the bench block, from bench.csv
    assert "| gru | paper fast=on | 46 | 1 | 1 |" in text  # bench-batch1, from batch1.csv: one step
    mtime = doc.stat().st_mtime_ns
    assert update_files([doc], REPORT, BENCH) == []  # unchanged: not rewritten
    assert doc.stat().st_mtime_ns == mtime and doc.read_text() == text


def test_a_bad_block_leaves_every_file_as_it_was(tmp_path: Path) -> None:
    good = _doc(tmp_path, "<!-- gru-bench:table2 -->\nold\n<!-- /gru-bench:table2 -->\n", "good.md")
    cases = {
        "<!-- gru-bench:tabel2 -->\n<!-- /gru-bench:tabel2 -->\n": "unknown block 'tabel2'",
        "x\n<!-- gru-bench:table2 -->\nno end\n": "line 2: each <!-- gru-bench:NAME -->",
        "<!-- gru-bench:table2 -->\n<!-- /gru-bench:pairwise -->\n": "needs its own",
        "<!-- /gru-bench:table2 -->\n": "needs its own",
    }
    for text, message in cases.items():
        bad = _doc(tmp_path, text, "bad.md")
        with pytest.raises(UserError, match="bad.md") as e:
            update_files([good, bad], REPORT, BENCH)
        assert message in str(e.value)
        assert good.read_text().count("old") == 1 and bad.read_text() == text
    with pytest.raises(UserError, match="make report"):
        update_files([good], tmp_path / "no-report", BENCH)
    assert "old" in good.read_text()
