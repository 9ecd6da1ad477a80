"""MIDI route: the frame rule on generated files, skipping bad files, folder splits, key finding, and
exactness against the reference piano rolls of the four datasets."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import mido
import numpy as np
import pytest
import scipy.io
from mido.midifiles.meta import UnknownMetaMessage

from gru_bench.data.keyfind import estimate_key, estimate_shift
from gru_bench.data.midi import MidiSkipWarning, midi_to_roll, read_notes, rolls_from_folder, rolls_from_zip
from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.registry import DATASETS, SPLITS, get_dataset
from gru_bench.errors import UserError

ZIPS = {
    "jsb": "midi/reconstructed/JSB Chorales.zip",
    "nottingham": "midi/reconstructed/Nottingham.zip",
    "musedata": "midi/reconstructed/MuseData.zip",
    "piano-midi": "midi/Piano-midi.de.zip",
}


def midi_bytes(events: list[tuple], tpb: int = 480, tracks: int = 1) -> bytes:
    """A type-1 MIDI file; events are (kind, note, velocity, absolute tick), repeated in every track."""
    mid = mido.MidiFile(ticks_per_beat=tpb)
    for _ in range(tracks):
        track = mid.add_track()
        now = 0
        for kind, note, velocity, tick in sorted(events, key=lambda e: e[3]):
            track.append(mido.Message(kind, note=note, velocity=velocity, time=tick - now))
            now = tick
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def notes_bytes(notes: list[tuple[int, int, int]], tpb: int = 480) -> bytes:
    """A MIDI file from (pitch, start, end) notes."""
    events = [("note_on", p, 80, s) for p, s, _ in notes] + [("note_off", p, 0, e) for p, _, e in notes]
    return midi_bytes(events, tpb)


def col(pitch: int) -> int:
    return pitch - 21


# --- frame rule on generated files -------------------------------------------------------------------


def test_eighth_rule_samples_midpoints_and_counts_frames() -> None:
    # tpb 480 -> E = 240, samples at t = 360, 600, 840, 1080; a frame needs start < t <= end
    roll = midi_to_roll(notes_bytes([(60, 0, 600), (64, 600, 1080), (67, 360, 500)]), "eighth")
    assert roll.shape == (4, 88) and roll.dtype == bool
    assert roll[:, col(60)].tolist() == [True, True, False, False]  # ends exactly at t=600: counted
    assert roll[:, col(64)].tolist() == [False, False, True, True]  # starts exactly at t=600: not counted
    assert roll[:, col(67)].tolist() == [False, False, False, False]  # starts at the sample point 360
    assert roll.sum() == 4


def test_repeated_note_on_replaces_pending_onset() -> None:
    events = [("note_on", 60, 80, 0), ("note_on", 60, 80, 480), ("note_off", 60, 0, 960)]
    roll = midi_to_roll(midi_bytes(events), "eighth")
    # the onset at 0 is discarded: only (480, 960) sounds, i.e. samples 600 and 840, not 360
    assert roll[:, col(60)].tolist() == [False, True, True]


def test_velocity_zero_note_on_closes_and_open_notes_are_dropped() -> None:
    events = [("note_on", 62, 80, 0), ("note_on", 62, 0, 480), ("note_on", 70, 80, 0)]  # 70 never closed
    notes, tpb = read_notes(midi_bytes(events))
    assert notes.tolist() == [[62, 0, 480]] and tpb == 480


def test_notes_are_paired_per_track() -> None:
    data = midi_bytes([("note_on", 60, 80, 0), ("note_off", 60, 0, 480)], tracks=2)
    assert read_notes(data)[0].tolist() == [[60, 0, 480], [60, 0, 480]]


def test_quarter120_rule_ignores_declared_ticks_per_beat() -> None:
    data = notes_bytes([(60, 0, 240), (48, 120, 480)], tpb=100)  # JSB declares 100 but writes 120/quarter
    roll = midi_to_roll(data, "quarter120")
    assert roll.shape == (4, 88)
    assert roll[:, col(60)].tolist() == [True, True, False, False]
    assert roll[:, col(48)].tolist() == [False, True, True, True]


def test_out_of_range_pitches_are_folded_after_transposition() -> None:
    data = notes_bytes([(15, 0, 960), (115, 0, 960), (100, 0, 960)])
    assert np.flatnonzero(midi_to_roll(data, "eighth")[0]).tolist() == [col(27), col(100), col(103)]
    # +12: 15 -> 27, 115 -> 127 -> 103 (folded twice), 100 -> 112 -> 100
    assert np.flatnonzero(midi_to_roll(data, "eighth", shift=12)[0]).tolist() == [col(27), col(100), col(103)]
    # -8: 15 -> 7 -> 31 (two octaves up), 115 -> 107, 100 -> 92
    assert np.flatnonzero(midi_to_roll(data, "eighth", shift=-8)[0]).tolist() == [col(31), col(92), col(107)]


def test_out_of_range_smpte_offset_is_tolerated() -> None:
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mid.add_track()
    track.append(UnknownMetaMessage(0x54, (0xE1, 70, 0, 0, 0)))  # frame-rate code 7, 70 minutes
    track.append(mido.Message("note_on", note=60, velocity=80, time=0))
    track.append(mido.Message("note_off", note=60, time=960))
    buf = io.BytesIO()
    mid.save(file=buf)
    with pytest.raises(KeyError):
        mido.MidiFile(file=io.BytesIO(buf.getvalue()))  # mido's strict checks reject it
    assert midi_to_roll(buf.getvalue(), "eighth")[:, col(60)].all()
    assert mido.midifiles.midifiles.read_meta_message.__name__ == "read_meta_message"  # patch undone


def test_unknown_frame_rule_is_a_user_error() -> None:
    with pytest.raises(UserError, match="frame rule"):
        midi_to_roll(notes_bytes([(60, 0, 960)]), "sixteenth")


# --- key finding -------------------------------------------------------------------------------------


def cadence(tonic: int, minor: bool = False, repeats: int = 4) -> list[tuple[int, int, int]]:
    """Scale up and down, then I-IV-V-I chords, in the key of `tonic` (pitch class)."""
    steps = [0, 2, 3, 5, 7, 8, 11, 12] if minor else [0, 2, 4, 5, 7, 9, 11, 12]
    third = 3 if minor else 4
    chords = [[0, third, 7], [5, 5 + third, 12], [7, 11, 14], [0, third, 7]]
    notes, t = [], 0
    for _ in range(repeats):
        for s in steps + steps[::-1]:
            notes.append((60 + tonic + s, t, t + 240))
            t += 240
        for chord in chords:
            notes += [(48 + tonic + c, t, t + 960) for c in chord]
            t += 960
    return notes


@pytest.mark.parametrize(
    ("tonic", "minor", "shift"),
    [(7, False, 5), (2, False, -2), (0, False, 0), (9, True, 3), (4, True, -4), (5, False, -5), (6, True, 6)],
)
def test_estimate_shift_moves_the_tonic_to_c(tonic: int, minor: bool, shift: int) -> None:
    notes = np.array(cadence(tonic, minor))
    assert estimate_key(notes) == (tonic, "minor" if minor else "major")
    assert estimate_shift(notes) == shift


def test_estimate_shift_of_silence_is_zero() -> None:
    assert estimate_shift(np.zeros((0, 3), dtype=np.int64)) == 0


# --- folders and zips of generated files -------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_skips_bad_files_with_a_warning_each_and_a_count(tmp_path: Path) -> None:
    good = notes_bytes(cadence(7))
    write(tmp_path / "a.mid", good)
    write(tmp_path / "sub" / "b.MIDI", good)
    write(tmp_path / "empty.mid", b"")
    write(tmp_path / "corrupt.mid", b"MThd\x00\x00\x00\x06garbage" + bytes(range(40)))
    write(tmp_path / "silent.mid", midi_bytes([]))
    smpte = notes_bytes([(60, 0, 960)])
    write(tmp_path / "smpte.mid", smpte[:12] + b"\xe7\x28" + smpte[14:])  # 25 fps x 40: no beats
    write(tmp_path / "notes.txt", b"not midi, ignored")
    with pytest.warns(MidiSkipWarning) as record:
        rolls = rolls_from_folder(tmp_path, valid_ratio=0, test_ratio=0)
    messages = [str(w.message) for w in record]
    assert any("empty.mid" in m for m in messages) and any("corrupt.mid" in m for m in messages)
    assert any("silent.mid" in m and "no notes" in m for m in messages)
    assert any("smpte.mid" in m and "SMPTE" in m for m in messages)
    assert messages[-1] == "skipped 4 of 6 MIDI files"
    skipped = sorted(f for f, _ in rolls.meta["skipped"])
    assert skipped == ["corrupt.mid", "empty.mid", "silent.mid", "smpte.mid"]
    assert rolls.names["train"] == ["a.mid", "sub/b.MIDI"] and rolls.splits["valid"] == []
    # transpose="estimate": the G-major piece is moved up 5 semitones to C major
    assert rolls.meta["shifts"]["train"] == [[5, None], [5, None]]
    assert np.array_equal(rolls.splits["train"][0], midi_to_roll(good, "eighth", shift=5))


def test_folder_without_usable_files_is_a_user_error(tmp_path: Path) -> None:
    write(tmp_path / "empty.mid", b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MidiSkipWarning)
        with pytest.raises(UserError, match="no usable MIDI"):
            rolls_from_folder(tmp_path)
    with pytest.raises(UserError, match="not found"):
        rolls_from_folder(tmp_path / "missing")
    with pytest.raises(UserError, match="transpose"):
        rolls_from_folder(tmp_path, transpose="up")


def test_folder_split_by_subfolders(tmp_path: Path) -> None:
    data = notes_bytes([(60, 0, 960)])
    for split, n in (("train", 3), ("valid", 1), ("test", 2)):
        for i in range(n):
            write(tmp_path / split / f"{i}.mid", data)
    rolls = rolls_from_folder(tmp_path, transpose="none")
    assert {s: len(rolls.splits[s]) for s in SPLITS} == {"train": 3, "valid": 1, "test": 2}
    assert rolls.names["test"] == ["test/0.mid", "test/1.mid"]
    assert rolls.meta["split"] == "subfolders" and rolls.meta["transpose"] == "none"


def test_folder_split_by_seeded_ratio_is_deterministic(tmp_path: Path) -> None:
    for i in range(20):
        write(tmp_path / f"{i:02d}.mid", notes_bytes([(40 + i, 0, 960)]))
    a = rolls_from_folder(tmp_path, valid_ratio=0.2, test_ratio=0.1, seed=3)
    b = rolls_from_folder(tmp_path, valid_ratio=0.2, test_ratio=0.1, seed=3)
    c = rolls_from_folder(tmp_path, valid_ratio=0.2, test_ratio=0.1, seed=4)
    assert a.names == b.names and a.names != c.names
    assert {s: len(a.names[s]) for s in SPLITS} == {"train": 14, "valid": 4, "test": 2}
    assert sorted(sum(a.names.values(), [])) == [f"{i:02d}.mid" for i in range(20)]
    with pytest.raises(UserError, match="ratio"):
        rolls_from_folder(tmp_path, valid_ratio=0.6, test_ratio=0.5)


def test_zip_is_read_in_memory_and_ordered_like_the_reference(tmp_path: Path) -> None:
    pieces = {"x.mid": [(60, 0, 960)], "y.mid": [(62, 0, 480)], "z.mid": [(100, 0, 960)]}
    zpath = tmp_path / "Toy.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, notes in pieces.items():
            zf.writestr(f"Toy/train/{name}", notes_bytes(notes))
        zf.writestr("__MACOSX/Toy/train/._x.mid", b"junk")
        zf.writestr("Toy/readme.txt", b"ignored")
    nott = get_dataset("nottingham")
    plain = rolls_from_zip(nott, zpath, transpose="none")
    assert plain.names["train"] == ["x.mid", "y.mid", "z.mid"] and plain.meta["skipped"] == []
    assert plain.meta["route"] == "midi" and plain.meta["transpose"] == "none"
    # reference: z unshifted, then x shifted by -3; y (1 frame) has no counterpart and goes last
    ref = PianoRolls({"train": [plain.splits["train"][2], np.roll(plain.splits["train"][0], -3, axis=1)]})
    rolls = rolls_from_zip(nott, zpath, transpose="none", reference=ref)
    assert rolls.names["train"] == ["z.mid", "x.mid", "y.mid"]
    assert [r for _, r in rolls.meta["shifts"]["train"]] == [0, -3, None]
    assert rolls.meta["reference_unmatched"] == {"train": [], "valid": [], "test": []}
    with pytest.raises(UserError, match="not found"):
        rolls_from_zip(nott, tmp_path / "missing.zip")
    write(tmp_path / "bad.zip", b"not a zip")
    with pytest.raises(UserError, match="not a readable zip"):
        rolls_from_zip(nott, tmp_path / "bad.zip")


# --- the real datasets: exact reproduction of the reference piano rolls -------------------------------


def reference_rolls(shared: Path, key: str) -> PianoRolls:
    mat = next(f.filename for f in DATASETS[key].files if f.kind == "mat")
    m = scipy.io.loadmat(shared / "mat" / mat)
    return PianoRolls({s: [np.asarray(x, dtype=bool) for x in m[f"{s}data"][0]] for s in SPLITS})


def oracle(shared: Path, key: str) -> dict[str, list[list]]:
    """[file name, shift] per reference sequence (made when the zips were rebuilt): a test oracle only."""
    pairs = json.loads((shared / "midi/reconstructed/sequence_to_midi_map.json").read_text())
    return pairs[DATASETS[key].title]


def test_jsb_midi_reproduces_reference_exactly(shared_datasets: Path) -> None:
    ref, pairs = reference_rolls(shared_datasets, "jsb"), oracle(shared_datasets, "jsb")
    with zipfile.ZipFile(shared_datasets / ZIPS["jsb"]) as zf:
        data = {"/".join(Path(n).parts[-2:]): zf.read(n) for n in zf.namelist() if n.endswith(".mid")}
    for split in SPLITS:
        for seq, (name, shift) in zip(ref.splits[split], pairs[split], strict=True):
            assert np.array_equal(midi_to_roll(data[f"{split}/{name}"], "quarter120", shift), seq), name


@pytest.mark.parametrize("key", list(ZIPS))
def test_zip_route_matches_every_reference_sequence(shared_datasets: Path, key: str) -> None:
    """All 2,326 pieces: matching finds each piece's reference sequence and shift (== the oracle map), and
    transpose="estimate" reproduces the reference rolls wherever the estimated key agrees."""
    ref, pairs = reference_rolls(shared_datasets, key), oracle(shared_datasets, key)
    rolls = rolls_from_zip(DATASETS[key], shared_datasets / ZIPS[key], transpose="estimate", reference=ref)
    assert rolls.meta["skipped"] == [] and not any(rolls.meta["reference_unmatched"].values())
    agree = total = 0
    for split in SPLITS:
        shifts = rolls.meta["shifts"][split]
        assert [[n, r] for n, (_, r) in zip(rolls.names[split], shifts, strict=True)] == pairs[split]
        for seq, roll, (est, r) in zip(ref.splits[split], rolls.splits[split], shifts, strict=True):
            applied = 0 if key == "jsb" else est  # JSB's reference is untransposed
            assert np.array_equal(roll, seq) == (applied == r)
            agree, total = agree + (est == r), total + 1
    assert agree / total > 0.85  # key finding agrees with the original site's transposition
