"""Generated blocks in README.md and docs/: the numbers they show come from the committed results.

A block is a pair of markers in a markdown file; `gru-bench compare --readme FILE` (and `make report`)
replaces what lies between them with text printed from the report's files, so no number is typed by hand:

    <!-- gru-bench:table2 -->
    (Table 2 exactly as table2.md prints it, from REPORT/table2.csv)
    <!-- /gru-bench:table2 -->

Blocks: `table2` (REPORT/table2.csv), `pairwise` (the paired model differences, REPORT/pairwise.csv),
`searches` (the learning-rate searches, REPORT/searches.csv), `ablation` (REPORT/ablation.csv, written by
`gru-bench ablation configs/sweeps/ablation.yaml`), `bench` (training throughput,
RESULTS/bench/bench.csv) and `bench-batch1` (the paper's GRU at batch 1, RESULTS/bench/batch1.csv). A
marker is a line of its own (so a mention of one inside a sentence or inline code is not a block). Text
outside the markers is never changed. Every file is rendered before any is written, and each is written
atomically, so an error leaves every file as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from gru_bench.errors import UserError
from gru_bench.fsutil import write_text
from gru_bench.report import tables

_MARK = re.compile(r"^<!-- (/?)gru-bench:([\w-]+) -->$", re.M)  # a marker is a line of its own
_NOTE = "<!-- generated from the committed results by `make report`: do not edit by hand -->"


def _csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{path} not found: run `make report` (gru-bench compare) or `make bench` first")
    return pd.read_csv(path)


def table2(report_dir: Path, bench_csv: Path) -> list[str]:
    return tables.table_markdown(_csv(report_dir / "table2.csv"))


def pairwise(report_dir: Path, bench_csv: Path) -> list[str]:
    """table2.md's "Model differences" section without its heading."""
    lines = tables.pairwise_markdown(_csv(report_dir / "pairwise.csv"))
    if not lines:
        return ["(no pair of models to compare)"]
    heading = next(i for i, line in enumerate(lines) if line.startswith("## "))
    return lines[heading + 2 :]  # after the heading and its blank line


def searches(report_dir: Path, bench_csv: Path) -> list[str]:
    path = report_dir / "searches.csv"
    if not path.exists():  # compare writes it only when there were searches
        return ["- no learning-rate search in these results"]
    return [f"- {line}" for line in tables.search_lines(_csv(path))]


def ablation(report_dir: Path, bench_csv: Path) -> list[str]:
    """The ablation table of `gru-bench ablation` (REPORT/ablation.csv), without its title."""
    path = report_dir / "ablation.csv"
    if not path.exists():
        return ["(no ablation results yet: `gru-bench sweep configs/sweeps/ablation.yaml`, then "
                "`gru-bench ablation configs/sweeps/ablation.yaml`)"]  # fmt: skip
    md = tables.ablation_markdown(_csv(path), "ablation.yaml").splitlines()
    return md[md.index("") + 1 :]


def bench(report_dir: Path, bench_csv: Path) -> list[str]:
    """The speed tables of `gru-bench bench` (RESULTS/bench/bench.csv and, beside it, epoch_jsb.csv)."""
    from gru_bench.experiments.bench import readme_table

    _csv(bench_csv)  # a one-line error if it is missing
    return readme_table(bench_csv, bench_csv.parent / "epoch_jsb.csv").rstrip("\n").splitlines()


def bench_batch1(report_dir: Path, bench_csv: Path) -> list[str]:
    """`gru-bench bench` of the paper's GRU at batch 1 (batch1.csv, beside bench.csv)."""
    from gru_bench.experiments.bench import readme_table

    path = bench_csv.parent / "batch1.csv"
    _csv(path)
    return readme_table(path).rstrip("\n").splitlines()


BLOCKS: dict[str, Callable[[Path, Path], list[str]]] = {
    "table2": table2,
    "pairwise": pairwise,
    "searches": searches,
    "ablation": ablation,
    "bench": bench,
    "bench-batch1": bench_batch1,
}


def refresh(text: str, report_dir: Path, bench_csv: Path, where: str = "text") -> str:
    """`text` with every block regenerated; an unknown, unclosed or nested marker is a UserError."""
    out, pos, rendered = [], 0, {}
    marks = list(_MARK.finditer(text))
    for i in range(0, len(marks), 2):
        start, end = marks[i], marks[i + 1] if i + 1 < len(marks) else None
        line = text.count("\n", 0, start.start()) + 1
        name = start.group(2)
        if start.group(1) or end is None or not end.group(1) or end.group(2) != name:
            raise UserError(
                f"{where}, line {line}: each <!-- gru-bench:NAME --> needs its own <!-- /gru-bench:NAME --> "
                "after it (blocks cannot nest)"
            )
        if name not in BLOCKS:
            raise UserError(f"{where}, line {line}: unknown block {name!r} (known: {', '.join(BLOCKS)})")
        if name not in rendered:
            rendered[name] = "\n".join(BLOCKS[name](Path(report_dir), Path(bench_csv)))
        out += [text[pos : start.end()], f"\n{_NOTE}\n\n{rendered[name]}\n\n"]
        pos = end.start()
    return "".join([*out, text[pos:]])


def update_files(paths: Iterable[str | Path], report_dir: str | Path, bench_csv: str | Path) -> list[Path]:
    """Regenerate the blocks of every file; write (atomically) only the files whose text changed.

    Returns the files written. Nothing is written unless every file could be rendered.
    """
    new = {}
    for path in map(Path, paths):
        try:
            text = path.read_text()
        except OSError as e:
            raise UserError(f"--readme {path}: cannot read it ({e.strerror or e})") from None
        new[path] = (text, refresh(text, Path(report_dir), Path(bench_csv), str(path)))
    changed = [path for path, (old, text) in new.items() if text != old]
    for path in changed:
        write_text(path, new[path][1])
    return changed
