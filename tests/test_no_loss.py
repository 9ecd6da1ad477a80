"""Nothing the user had is lost or half-written: a full or read-only disk is a one-line error that leaves
the previous files whole, writes go through symlinks (never replacing them or a device), `make clean` keeps
runs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli_errors import fails
from test_training import TINY
from typer.testing import CliRunner

from gru_bench import fsutil
from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, dump, load_config
from gru_bench.errors import UserError
from gru_bench.paths import raw_dir

ROOT = Path(__file__).resolve().parents[1]


class _Full:
    """A file whose writes fail as on a full (or read-only) disk."""

    def __init__(self, f, err: int) -> None:
        self._f, self._err = f, err

    def write(self, data) -> int:
        raise OSError(self._err, os.strerror(self._err))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@pytest.fixture(params=[errno.ENOSPC, errno.EROFS])
def broken_disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Make every atomic write fail with ENOSPC or EROFS (yields the message it produces)."""

    def arm() -> str:
        real = os.fdopen
        monkeypatch.setattr(
            fsutil.os, "fdopen", lambda fd, mode="r", *a, **k: _Full(real(fd, mode, *a, **k), request.param)
        )
        return os.strerror(request.param)

    return arm


def _train_args(out: Path, *extra: str) -> list:
    return [
        "train",
        "jsb/gru",
        *(a for o in TINY for a in ("--set", o)),
        "--out",
        out,
        "--name",
        "r",
        "-q",
        *extra,
    ]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.usefixtures("tiny_jsb")
def test_full_disk_during_train_is_one_line(tmp_path: Path, broken_disk) -> None:
    why = broken_disk()
    fails(_train_args(tmp_path / "runs", "--epochs", "1"), "cannot write", why)
    assert (
        not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
        if (tmp_path / "runs").exists()
        else True
    )


def test_full_disk_during_prepare_is_one_line(data_home: Path, shared_datasets: Path, broken_disk) -> None:
    raw_dir("jsb").mkdir(parents=True)
    shutil.copy(shared_datasets / "mat" / "JSB_Chorales.mat", raw_dir("jsb"))
    why = broken_disk()
    fails(["data", "prepare", "jsb"], "cannot write", why)
    assert not (data_home / "processed").exists() or not any((data_home / "processed").iterdir())


@pytest.mark.usefixtures("tiny_jsb")
def test_full_disk_during_compare_keeps_the_previous_report(
    tmp_path: Path,
    broken_disk,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = tmp_path / "results"
    assert (
        CliRunner().invoke(app, [str(a) for a in _train_args(results / "runs", "--epochs", "2")]).exit_code
        == 0
    )
    assert CliRunner().invoke(app, ["compare", str(results)]).exit_code == 0
    before = _snapshot(results / "report")
    assert "table2.md" in before
    why = broken_disk()
    fails(["compare", results], "cannot write", why)
    assert _snapshot(results / "report") == before
    assert [p.name for p in results.iterdir()] == sorted(["runs", "report"]) or {
        p.name for p in results.iterdir()
    } == {"runs", "report"}


def test_compare_reports_a_summary_that_is_not_an_object(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "jsb" / "gru" / "r"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("[1, 2]")
    (run / "config.yaml").write_text(dump(load_config(CONFIGS_DIR / "jsb" / "gru.yaml")))
    from gru_bench.report.tables import collect_runs

    row = collect_runs(tmp_path).iloc[0]
    assert "not an object" in row["problem"]


def test_writes_go_through_symlinks_and_never_replace_a_device(tmp_path: Path) -> None:
    target = tmp_path / "real" / "sample.mid"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.mid"
    link.symlink_to(target)
    fsutil.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        fsutil.write_text(fifo, "x")
    (tmp_path / "to-pipe").symlink_to(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        fsutil.write_text(tmp_path / "to-pipe", "x")
    assert (tmp_path / "to-pipe").is_symlink()
    with pytest.raises(UserError, match="it is a folder"):
        fsutil.write_text(tmp_path / "real", "x")


def test_make_clean_keeps_runs_and_the_numba_cache(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    shutil.copy(ROOT / "Makefile", tmp_path)
    keep = [
        tmp_path / "results" / "quick" / "runs" / "jsb" / "gru" / "seed0" / "last.pt",
        tmp_path / "gru_bench" / "__pycache__" / "optim._update-1.py311.nbi",
        tmp_path / "gru_bench" / "__pycache__" / "optim._update-1.py311.1.nbc",
    ]
    gone = [
        tmp_path / "gru_bench" / "__pycache__" / "optim.cpython-311.pyc",
        tmp_path / ".pytest_cache" / "x",
    ]
    for p in keep + gone:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    subprocess.run(["make", "-s", "clean", "VENV=.venv"], cwd=tmp_path, check=True, capture_output=True)
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone)
