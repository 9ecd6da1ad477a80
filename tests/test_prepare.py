"""`gru-bench data prepare`: reference rolls (.mat / safe pickle), size checks, MIDI routes, the CLI."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.data import PianoRolls, processed_path, resolve
from gru_bench.data.prepare import prepare
from gru_bench.data.reference import load_rolls, safe_unpickle
from gru_bench.data.registry import DATASETS, SPLITS
from gru_bench.data.stats import describe, shift_agreement
from gru_bench.errors import UserError
from gru_bench.paths import raw_dir

MAT = {
    "jsb": "JSB_Chorales.mat",
    "nottingham": "Nottingham.mat",
    "musedata": "MuseData.mat",
    "piano-midi": "Piano_midi.mat",
}
# Independent facts from ../shared/datasets/SOURCES.md ("Checks"): silent steps and min/max pitch per split.
SILENT = {
    "jsb": (18, 29, 17),
    "nottingham": (487, 51, 19),
    "musedata": (12962, 4412, 5042),
    "piano-midi": (4917, 251, 652),
}
PITCHES = {
    "jsb": ((43, 96), (48, 96), (45, 96)),
    "nottingham": ((31, 93), (34, 91), (36, 89)),
    "musedata": ((21, 96), (21, 100), (21, 105)),
    "piano-midi": ((21, 108), (24, 104), (21, 108)),
}


def _copy(shared: Path, key: str, *relpaths: str) -> None:
    raw_dir(key).mkdir(parents=True, exist_ok=True)
    for rel in relpaths:
        shutil.copy(shared / rel, raw_dir(key) / Path(rel).name)


def _same(a: PianoRolls, b: PianoRolls) -> bool:
    return all(
        len(a.splits[s]) == len(b.splits[s])
        and all(np.array_equal(x, y) for x, y in zip(a.splits[s], b.splits[s], strict=True))
        for s in SPLITS
    )


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_restricted_unpickler_refuses_code_and_never_runs_it(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = (
        _Evil(os.system, f"touch '{marker}'")
        if kind == "os.system"
        else _Evil(builtins.exec, f"open({str(marker)!r}, 'w')")
    )
    path = tmp_path / "JSB Chorales.pickle"
    path.write_bytes(pickle.dumps({"train": [payload], "valid": [], "test": []}, protocol=2))
    with pytest.raises(UserError, match=r"JSB Chorales\.pickle.*refused.*(system|exec)"):
        safe_unpickle(path)
    with pytest.raises(UserError, match="refused"):
        load_rolls(DATASETS["jsb"], path)
    assert not marker.exists()


def test_pickle_with_out_of_range_pitch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "JSB Chorales.pickle"
    path.write_bytes(pickle.dumps({"train": [[(60, 64), (120,)]], "valid": [], "test": []}, protocol=2))
    with pytest.raises(UserError, match="train sequence 0 has pitch 120"):
        load_rolls(DATASETS["jsb"], path)


def test_corrupt_mat_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "JSB_Chorales.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    with pytest.raises(UserError, match=r"JSB_Chorales\.mat: not a readable \.mat"):
        load_rolls(DATASETS["jsb"], path)


def test_jsb_pickle_and_mat_give_identical_rolls(shared_datasets: Path) -> None:
    jsb = DATASETS["jsb"]
    from_pickle = load_rolls(jsb, shared_datasets / "pickle" / "JSB Chorales.pickle")
    from_mat = load_rolls(jsb, shared_datasets / "mat" / "JSB_Chorales.mat")
    assert _same(from_pickle, from_mat)
    assert from_pickle.meta["sha256_registered"] and from_mat.meta["sha256_registered"]


def test_prepare_prefers_the_pickle_and_records_its_hash(data_home: Path, shared_datasets: Path) -> None:
    _copy(shared_datasets, "jsb", "mat/JSB_Chorales.mat", "pickle/JSB Chorales.pickle")
    out = prepare("jsb")
    assert out == processed_path("jsb", "reference") and out.is_file()
    rolls = PianoRolls.load(out)
    pickle_file = raw_dir("jsb") / "JSB Chorales.pickle"
    assert rolls.meta["source"] == pickle_file.name
    assert rolls.meta["sha256"] == hashlib.sha256(pickle_file.read_bytes()).hexdigest()
    pickle_file.unlink()
    assert PianoRolls.load(prepare("JSB Chorales")).meta["source"] == "JSB_Chorales.mat"
    assert _same(rolls, PianoRolls.load(out))


def test_missing_raw_file_says_how_to_download(data_home: Path) -> None:
    with pytest.raises(UserError, match=r"gru-bench data download nottingham \[--source DIR\]"):
        prepare("nottingham")
    with pytest.raises(UserError, match="gru-bench data download jsb"):
        prepare("jsb", from_midi=True)


def _fake_mat(path: Path, counts: dict[str, int], length: int) -> None:
    def cell(n: int) -> np.ndarray:
        arr = np.empty((1, n), dtype=object)
        for i in range(n):
            arr[0, i] = np.eye(length, 88, dtype=np.uint8)
        return arr

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {f"{s}data": cell(n) for s, n in counts.items()})


@pytest.mark.parametrize(
    ("counts", "length", "message"),
    [
        (
            {"train": 229, "valid": 76, "test": 3},
            60,
            "jsb test split of JSB_Chorales.mat: expected 77 sequences, got 3",
        ),
        (
            {"train": 229, "valid": 76, "test": 77},
            5,
            "jsb train split of JSB_Chorales.mat: expected 13807 frames, got 1145",
        ),
    ],
)
def test_size_mismatch_names_dataset_split_and_counts(data_home: Path, counts, length, message) -> None:
    _fake_mat(raw_dir("jsb") / "JSB_Chorales.mat", counts, length)
    with pytest.raises(UserError, match=message):
        prepare("jsb")
    assert not processed_path("jsb").exists()


def test_all_four_reference_datasets(data_home: Path, shared_datasets: Path) -> None:
    for key, filename in MAT.items():
        _copy(shared_datasets, key, f"mat/{filename}")
        rolls = PianoRolls.load(prepare(key))
        df = describe(rolls)
        d = DATASETS[key]
        assert rolls.meta["sha256_registered"]
        assert df["sequences"].to_dict() == d.split_sizes
        assert df["frames"].to_dict() == d.split_frames
        assert tuple(df["silent_frames"]) == SILENT[key]
        assert tuple(zip(df["min_pitch"], df["max_pitch"], strict=True)) == PITCHES[key]


def test_midi_route_reproduces_jsb_and_skips_corrupt_files(data_home: Path, shared_datasets: Path) -> None:
    _copy(shared_datasets, "jsb", "mat/JSB_Chorales.mat")
    src = shared_datasets / "midi" / "reconstructed" / "JSB Chorales.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(raw_dir("jsb") / src.name, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item))
        zout.writestr("JSB Chorales/train/broken.mid", b"MThd garbage")
    lines: list[str] = []
    out = prepare("jsb", from_midi=True, echo=lines.append)
    assert out == processed_path("jsb", "midi")
    rolls = PianoRolls.load(out)
    assert rolls.meta["route"] == "midi" and rolls.meta["sha256_registered"] is False  # we added a file
    assert any("broken.mid" in line for line in lines)
    assert _same(rolls, PianoRolls.load(prepare("jsb")))  # JSB is untransposed: MIDI == reference
    assert {s: n for s, (_, n) in shift_agreement(rolls).items()} == DATASETS["jsb"].split_sizes


def _midi_folder(shared: Path, folder: Path, n: int) -> None:
    folder.mkdir()
    with zipfile.ZipFile(shared / "midi" / "reconstructed" / "JSB Chorales.zip") as z:
        for item in [i for i in z.infolist() if i.filename.endswith(".mid")][:n]:
            (folder / Path(item.filename).name).write_bytes(z.read(item))
    (folder / "corrupt.mid").write_bytes(b"not midi")


def test_user_midi_folder(data_home: Path, shared_datasets: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-songs"
    _midi_folder(shared_datasets, folder, 10)
    lines: list[str] = []
    out = prepare(
        str(folder), from_midi=True, frame="quarter120", valid_ratio=0.2, test_ratio=0.2, echo=lines.append
    )
    assert out == processed_path("my-songs", "midi")
    rolls = PianoRolls.load(out)
    assert sum(len(rolls.splits[s]) for s in SPLITS) == 10 and len(rolls.splits["train"]) == 6
    assert any("corrupt.mid" in line for line in lines)
    with pytest.raises(UserError, match="add --from-midi"):
        prepare(str(folder))
    with pytest.raises(UserError, match="built-in dataset"):
        prepare(str(folder), from_midi=True, out_name="Nottingham")
    with pytest.raises(UserError, match="no such folder"):
        prepare(str(tmp_path / "missing"), from_midi=True)
    with pytest.raises(UserError, match="--seed: only for MIDI folders"):
        prepare("jsb", seed=1)


def test_resolve_names_registered_datasets_and_prepared_folders(data_home: Path) -> None:
    jsb = resolve("jsb")  # registered: no file needed, the route defaults to reference
    assert (jsb.key, jsb.route, jsb.path, jsb.dataset) == (
        "jsb",
        "reference",
        processed_path("jsb"),
        DATASETS["jsb"],
    )
    assert jsb.frame_rule == "quarter120"
    by_title = resolve("JSB Chorales", "midi")
    assert (by_title.key, by_title.path) == ("jsb", processed_path("jsb", "midi"))
    assert resolve("nottingham").frame_rule == "eighth"

    rolls = PianoRolls({"train": [np.zeros((2, 88), bool)]}, meta={"frame_rule": "quarter120"})
    rolls.save(processed_path("mine", "midi"))  # a folder prepared with --from-midi
    mine = resolve("mine")
    assert (mine.key, mine.route, mine.path, mine.dataset) == (
        "mine",
        "midi",
        processed_path("mine", "midi"),
        None,
    )
    assert mine.frame_rule == "quarter120"  # from the prepared file, not the registry
    with pytest.raises(
        UserError, match=r"^cfg.yaml: dataset mine is prepared for data.route midi, not reference"
    ):
        resolve("mine", "reference", where="cfg.yaml")
    PianoRolls({"train": []}).save(processed_path("mine"))  # both routes: reference by default
    assert resolve("mine").route == "reference" and resolve("mine").frame_rule == "eighth"
    assert resolve("mine", "midi").path == processed_path("mine", "midi")

    with pytest.raises(UserError, match=r"^unknown dataset 'nosuch': choose one of jsb, .* --name NAME'$"):
        resolve("nosuch")
    with pytest.raises(UserError, match=r"^cfg.yaml: dataset must be one of jsb, .*, got '../mine'$"):
        resolve("../mine", where="cfg.yaml")  # a path is never a dataset name


def test_cli_prepare(data_home: Path, shared_datasets: Path) -> None:
    _copy(shared_datasets, "jsb", "mat/JSB_Chorales.mat")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "jsb"])
    assert result.exit_code == 0, result.output
    assert processed_path("jsb").is_file()
    result = runner.invoke(app, ["data", "prepare", "all"])
    assert result.exit_code == 2 and "gru-bench data download nottingham" in result.output
    assert "Traceback" not in result.output
