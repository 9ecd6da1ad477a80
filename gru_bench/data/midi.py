"""MIDI -> piano rolls by the rule that reproduces the Boulanger-Lewandowski (2012) rolls exactly.

The rule (checked on all 2,326 pieces, see `../shared/datasets/SOURCES.md`):
1. time is in MIDI ticks (tempo ignored), parsed by mido with `clip=True`; malformed meta messages
   (MuseData has out-of-range SMPTE offsets) are kept as unknown meta instead of failing the file;
2. notes per track (channels merged) with a per-pitch dict: a note-on (velocity > 0) opens a note,
   a second note-on of a sounding pitch REPLACES the pending onset (the earlier onset is discarded),
   a note-off or a velocity-0 note-on closes it; notes still open at the end of their track are dropped;
3. frames: "quarter120" (JSB) = 120-tick frames from t=0, frame k holds the pitches sounding during
   [120k, 120k+120), there are ceil(last end / 120) frames; "eighth" (the others) = E = ticks_per_beat/2,
   frame k holds the pitches with start < t <= end at t = (k + 1.5)E, for every k with (k + 1.5)E <= last end;
4. transposition by `shift` semitones, then out-of-range pitches are folded by octaves into 21..108.
Column j is MIDI pitch 21 + j.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mido
import numpy as np
from mido.midifiles import midifiles as _mf
from mido.midifiles.meta import UnknownMetaMessage, build_meta_message

from gru_bench.console import progress
from gru_bench.data.keyfind import estimate_shift
from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.registry import LOWEST_PITCH, N_NOTES, SPLITS, Dataset
from gru_bench.errors import UserError

FRAME_RULES = ("quarter120", "eighth")
TRANSPOSES = ("estimate", "none")
MIDI_SUFFIXES = (".mid", ".midi")
HIGHEST_PITCH = LOWEST_PITCH + N_NOTES - 1  # 108 (C8)
QUARTER_TICKS = 120  # JSB files declare 100 ticks per beat but are written at 120 per quarter
MATCH_SHIFTS = range(-12, 13)  # shifts tried when matching a piece to a reference sequence


class MidiSkipWarning(UserWarning):
    """A MIDI file was skipped (unreadable or without notes); the message names it and why."""


def _lenient_read_meta(infile, delta: int):
    """mido's `read_meta_message`, but a meta message with out-of-range values becomes an unknown one."""
    meta_type = _mf.read_byte(infile)
    data = _mf.read_bytes(infile, _mf.read_variable_int(infile))
    try:
        return build_meta_message(meta_type, data, delta)
    except (KeyError, ValueError, TypeError, IndexError):
        return UnknownMetaMessage(meta_type, data, time=delta)


@contextlib.contextmanager
def _lenient_meta() -> Iterator[None]:
    strict = _mf.read_meta_message
    _mf.read_meta_message = _lenient_read_meta
    try:
        yield
    finally:
        _mf.read_meta_message = strict


def read_notes(src: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Notes of a MIDI file as int64 rows (pitch, start tick, end tick), and its ticks per beat."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    with _lenient_meta():
        mid = mido.MidiFile(file=io.BytesIO(data), clip=True)
    if mid.ticks_per_beat <= 0:
        raise ValueError(f"SMPTE time division ({mid.ticks_per_beat}) is not supported, only ticks per beat")
    notes: list[tuple[int, int, int]] = []
    for track in mid.tracks:
        t, sounding = 0, {}
        for msg in track:
            t += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[msg.note] = t  # replaces (discards) a pending onset of the same pitch
            elif msg.type in ("note_off", "note_on") and msg.note in sounding:
                notes.append((msg.note, sounding.pop(msg.note), t))
    return np.array(notes, dtype=np.int64).reshape(-1, 3), mid.ticks_per_beat


@dataclass
class _Cells:
    """The occupied (frame, pitch) cells of a piece before transposition; re-rendered per shift."""

    frames: np.ndarray  # frame index of each cell
    pitches: np.ndarray  # untransposed MIDI pitch of each cell
    n_frames: int

    @classmethod
    def from_notes(cls, notes: np.ndarray, ticks_per_beat: int, frame_rule: str) -> _Cells:
        pitch, start, end = notes.T
        last_end = int(end.max()) if len(notes) else 0
        if frame_rule == "quarter120":
            q = QUARTER_TICKS
            lo, hi, n = start // q, np.where(end > start, -(-end // q), start // q), -(-last_end // q)
        else:  # "eighth"
            # integer form of the rule: t_k = (2k + 3) * tpb / 4, note in frame k iff start < t_k <= end
            b = ticks_per_beat
            lo = np.maximum((4 * start - 3 * b) // (2 * b) + 1, 0)
            hi = (4 * end - 3 * b) // (2 * b) + 1  # exclusive
            n = max((4 * last_end - 3 * b) // (2 * b) + 1, 0)
        lengths = np.maximum(hi - lo, 0)
        ends = np.cumsum(lengths)
        frames = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths - lo, lengths)
        return cls(frames, np.repeat(pitch, lengths), int(n))

    def render(self, shift: int = 0) -> np.ndarray:
        roll = np.zeros((self.n_frames, N_NOTES), dtype=bool)
        roll[self.frames, fold_pitches(self.pitches + shift) - LOWEST_PITCH] = True
        return roll


def fold_pitches(pitches: np.ndarray) -> np.ndarray:
    """Move pitches outside 21..108 by whole octaves into it (the reference folds, it does not drop)."""
    low, high = pitches < LOWEST_PITCH, pitches > HIGHEST_PITCH
    up = (LOWEST_PITCH - pitches + 11) // 12
    down = (pitches - HIGHEST_PITCH + 11) // 12
    return np.where(low, pitches + 12 * up, np.where(high, pitches - 12 * down, pitches))


def _check_frame_rule(frame_rule: str) -> None:
    if frame_rule not in FRAME_RULES:
        raise UserError(f"unknown frame rule {frame_rule!r}: choose one of {', '.join(FRAME_RULES)}")


def _check_transpose(transpose: str) -> None:
    if transpose not in TRANSPOSES:
        raise UserError(f"unknown transpose {transpose!r}: choose one of {', '.join(TRANSPOSES)}")


def midi_to_roll(path_or_bytes: str | Path | bytes, frame_rule: str, shift: int = 0) -> np.ndarray:
    """Piano roll, bool (T, 88), of one MIDI file, transposed by `shift` semitones then octave-folded."""
    _check_frame_rule(frame_rule)
    return _Cells.from_notes(*read_notes(path_or_bytes), frame_rule).render(shift)


def _piece(src: Path | bytes, frame_rule: str) -> tuple[_Cells | None, int, str]:
    """Cells and estimated shift of a MIDI file, or None and why it cannot be used."""
    try:
        notes, tpb = read_notes(src)
    except Exception as e:  # any read or parse failure of a corrupt file means "skip it"
        return None, 0, f"unreadable MIDI ({type(e).__name__}{': ' if str(e) else ''}{e})"
    if not len(notes):
        return None, 0, "no notes"
    cells = _Cells.from_notes(notes, tpb, frame_rule)
    if not cells.n_frames:
        return None, 0, "no frames (all notes end before the first sample)"
    return cells, estimate_shift(notes), ""


def _key(roll: np.ndarray) -> tuple[int, bytes]:
    return len(roll), hashlib.blake2b(np.packbits(roll).tobytes(), digest_size=16).digest()


def _skip(skipped: list[list[str]], name: str, reason: str) -> None:
    skipped.append([name, reason])
    warnings.warn(f"skipped {name}: {reason}", MidiSkipWarning, stacklevel=4)


def _build(
    files: dict[str, list[tuple[str, Path | bytes]]],
    frame_rule: str,
    transpose: bool,
    reference: PianoRolls | None,
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[str]], dict]:
    """Rolls and names per split, in reference order where given, and meta: [estimated, reference] shift
    per piece, skipped files, and the reference sequences that no piece matched."""
    splits, names, shifts, skipped, unmatched = {}, {}, {}, [], {}
    with progress(sum(len(e) for e in files.values()), "reading MIDI files") as advance:
        for split, entries in files.items():
            ref_seqs = reference.splits.get(split, []) if reference is not None else []
            by_key: dict[tuple[int, bytes], list[int]] = {}
            for i, seq in enumerate(ref_seqs):
                by_key.setdefault(_key(np.asarray(seq, dtype=bool)), []).append(i)
            placed: dict[int, tuple] = {}  # reference index -> row
            rest: list[tuple] = []
            lengths = {len(s) for s in ref_seqs}
            for name, src in entries:
                cells, est, reason = _piece(src, frame_rule)
                advance()
                if cells is None:
                    _skip(skipped, name, reason)
                    continue
                ref_shift, ref_index = None, None
                if cells.n_frames in lengths:
                    for s in sorted(MATCH_SHIFTS, key=lambda s: (s != est, s != 0, abs(s), s)):
                        shifted = cells.render(s)
                        candidates = [i for i in by_key.get(_key(shifted), []) if i not in placed]
                        if candidates and np.array_equal(shifted, ref_seqs[candidates[0]]):
                            ref_shift, ref_index = s, candidates[0]
                            break
                roll = cells.render(est if transpose else 0)
                row = (roll, name, [est, ref_shift])
                if ref_index is None:
                    rest.append(row)
                else:
                    placed[ref_index] = row
            rows = [placed[i] for i in sorted(placed)] + rest
            unmatched[split] = [i for i in range(len(ref_seqs)) if i not in placed]
            splits[split] = [r[0] for r in rows]
            names[split] = [r[1] for r in rows]
            shifts[split] = [r[2] for r in rows]
    if skipped:
        n = sum(len(e) for e in files.values())
        warnings.warn(f"skipped {len(skipped)} of {n} MIDI files", MidiSkipWarning, stacklevel=3)
    meta = {"shifts": shifts, "skipped": skipped}
    if reference is not None:
        meta["reference_unmatched"] = unmatched
    return splits, names, meta


def _zip_entries(zip_path: Path) -> dict[str, list[tuple[str, Path | bytes]]]:
    """`.../<split>/<file>.mid` entries of an archive, read in memory, sorted by file name per split."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise UserError(f"{zip_path} not found: run 'gru-bench data download' first") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(
            f"{zip_path} is not a readable zip archive ({e}): delete it, download again"
        ) from None
    files: dict[str, list[tuple[str, Path | bytes]]] = {s: [] for s in SPLITS}
    with zf:
        for info in zf.infolist():
            p = PurePosixPath(info.filename)
            if (
                not info.is_dir()
                and p.suffix.lower() in MIDI_SUFFIXES
                and len(p.parts) >= 2
                and p.parts[-2] in files
                and not p.name.startswith(".")
                and "__MACOSX" not in p.parts
            ):
                files[p.parts[-2]].append((p.name, zf.read(info)))
    if not any(files.values()):
        raise UserError(f"{zip_path} holds no <split>/<file>.mid entries (splits {', '.join(SPLITS)})")
    return {s: sorted(e) for s, e in files.items()}


def rolls_from_zip(
    dataset: Dataset, zip_path: str | Path, transpose: str = "estimate", reference: PianoRolls | None = None
) -> PianoRolls:
    """Piano rolls of a dataset's MIDI archive (`<Title>/{train,valid,test}/*.mid`), read without extracting.

    With `reference` rolls, pieces are ordered like the reference sequences and each piece's reference
    shift is found by exact matching (the shift in -12..12 that turns it into a reference sequence).
    transpose="estimate" applies the key-finding shift, except for JSB whose reference rolls are
    untransposed (its rolls then use shift 0; the estimates are still recorded). "none" applies shift 0.
    """
    _check_transpose(transpose)
    applied = "none" if dataset.frame_rule == "quarter120" else transpose
    splits, names, found = _build(
        _zip_entries(Path(zip_path)), dataset.frame_rule, applied == "estimate", reference
    )
    meta = {
        "dataset": dataset.key,
        "route": "midi",
        "source": Path(zip_path).name,
        "frame_rule": dataset.frame_rule,
        "transpose": applied,
        **found,
    }
    return PianoRolls(splits=splits, names=names, meta=meta)


def _folder_files(folder: Path, valid_ratio: float, test_ratio: float, seed: int) -> dict[str, list[Path]]:
    """MIDI files per split: from train/valid/test subfolders if any exist, else a seeded random split."""

    def midis(root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)

    if any((folder / s).is_dir() for s in SPLITS):
        return {s: midis(folder / s) if (folder / s).is_dir() else [] for s in SPLITS}
    if not (0 <= valid_ratio < 1 and 0 <= test_ratio < 1 and valid_ratio + test_ratio < 1):
        raise UserError(
            f"valid_ratio={valid_ratio}, test_ratio={test_ratio}: each must be in [0, 1), their sum below 1"
        )
    paths = midis(folder)
    order = np.random.default_rng(seed).permutation(len(paths))

    def count(ratio: float) -> int:  # a split asked for gets at least one file once there are 3
        return max(round(len(paths) * ratio), int(ratio > 0 and len(paths) >= 3))

    n_valid, n_test = count(valid_ratio), count(test_ratio)
    picked = [paths[i] for i in order]
    return {
        "train": sorted(picked[n_valid + n_test :]),
        "valid": sorted(picked[:n_valid]),
        "test": sorted(picked[n_valid : n_valid + n_test]),
    }


def rolls_from_folder(
    folder: str | Path,
    frame_rule: str = "eighth",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    transpose: str = "estimate",
) -> PianoRolls:
    """Piano rolls of your own `.mid/.midi` files (searched recursively).

    Split by `train/`, `valid/`, `test/` subfolders when present, else by a seeded random split with the
    given ratios (deterministic: it depends only on the file names and the seed). Unreadable files or files
    without notes are skipped with a `MidiSkipWarning` each and a count at the end.
    """
    _check_frame_rule(frame_rule)
    _check_transpose(transpose)
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"MIDI folder {folder} not found: pass a folder holding .mid/.midi files")
    by_subfolders = any((folder / s).is_dir() for s in SPLITS)
    paths = _folder_files(folder, valid_ratio, test_ratio, seed)
    files = {s: [(p.relative_to(folder).as_posix(), p) for p in ps] for s, ps in paths.items()}
    splits, names, found = _build(files, frame_rule, transpose == "estimate", None)
    if not any(splits.values()):
        n = len(found["skipped"])
        raise UserError(f"no usable MIDI file in {folder} ({n} skipped): add .mid/.midi files with notes")
    meta = {
        "dataset": folder.name,
        "route": "midi",
        "source": str(folder),
        "frame_rule": frame_rule,
        "transpose": transpose,
        "split": "subfolders"
        if by_subfolders
        else {"valid_ratio": valid_ratio, "test_ratio": test_ratio, "seed": seed},
        **found,
    }
    return PianoRolls(splits=splits, names=names, meta=meta)
