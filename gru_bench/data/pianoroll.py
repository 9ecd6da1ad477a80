"""Piano rolls on disk: one `.npz` per dataset and route, bit-packed, loaded in milliseconds.

Layout (all arrays, no pickled objects, so loading runs no code):
- `<split>.bits`: uint8 (frames, 11), `np.packbits` of the (frames, 88) note matrix, sequences concatenated;
- `<split>.offsets`: int64 (n_sequences + 1), sequence i is frames offsets[i]:offsets[i+1];
- `<split>.names`: str (n_sequences,), where each sequence came from (file name or index);
- `meta`: a JSON string (dataset, route, transposition, source hashes, ...).
Column j is MIDI pitch 21 + j.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gru_bench.data.registry import LOWEST_PITCH, N_NOTES, SPLITS
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_write


@dataclass
class PianoRolls:
    """Sequences of 88-note binary frames per split."""

    splits: dict[str, list[np.ndarray]]  # split -> list of bool arrays (T, 88)
    names: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(self.meta))}
        for split, seqs in self.splits.items():
            lengths = [len(s) for s in seqs]
            frames = np.concatenate(seqs, axis=0) if seqs else np.zeros((0, N_NOTES), bool)
            arrays[f"{split}.bits"] = np.packbits(frames.astype(bool), axis=1)
            arrays[f"{split}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            names = self.names.get(split) or [str(i) for i in range(len(seqs))]
            arrays[f"{split}.names"] = np.array(names, dtype=str)
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> PianoRolls:
        splits, names = {}, {}
        with _open(Path(path)) as z:
            for split in [s for s in SPLITS if f"{s}.bits" in z] + sorted(
                {k.split(".")[0] for k in z.files if k.endswith(".bits")} - set(SPLITS)
            ):
                frames = np.unpackbits(z[f"{split}.bits"], axis=1, count=N_NOTES).astype(bool)
                off = z[f"{split}.offsets"]
                splits[split] = [frames[off[i] : off[i + 1]] for i in range(len(off) - 1)]
                names[split] = [str(n) for n in z[f"{split}.names"]]
            meta = json.loads(str(z["meta"]))
        return cls(splits=splits, names=names, meta=meta)

    @staticmethod
    def read_meta(path: str | Path) -> dict:
        """Only the `meta` of a piano-roll file (the rolls stay unread)."""
        with _open(Path(path)) as z:
            return json.loads(str(z["meta"]))

    def frames(self, split: str) -> int:
        return sum(len(s) for s in self.splits[split])


# What the model's input and output columns are (config `data.pitches`). piano: the 88 keys, MIDI 21-108;
# authors: MIDI pitch 1 up to the dataset's highest (96/93/105/108 columns for JSB/Nottingham/MuseData/
# Piano-midi.de), the layout of the authors' code; the extra columns are never on.
PITCH_LAYOUTS = ("piano", "authors")
_LOWEST = {"piano": LOWEST_PITCH, "authors": 1}  # MIDI pitch of column 0


@dataclass(frozen=True)
class Keyboard:
    """The model's columns: column j is MIDI pitch `lowest + j`, `width` columns."""

    lowest: int = LOWEST_PITCH
    width: int = N_NOTES

    @classmethod
    def of(cls, layout: str, rolls: PianoRolls) -> Keyboard:
        """The keyboard of a `data.pitches` layout for a dataset (authors: up to its highest pitch)."""
        if layout == "piano":
            return cls()
        played = [np.flatnonzero(s.any(axis=0)) for seqs in rolls.splits.values() for s in seqs]
        top = max((int(c.max()) for c in played if len(c)), default=0) + LOWEST_PITCH
        return cls.of_model(layout, top - _LOWEST[layout] + 1)

    @classmethod
    def of_model(cls, layout: str, width: int) -> Keyboard:
        """The keyboard of a trained model: its layout and its number of note columns."""
        return cls(_LOWEST[layout], width)

    @property
    def is_piano(self) -> bool:
        """True for the 88 piano keys, the piano roll's own columns (no mapping needed)."""
        return (self.lowest, self.width) == (LOWEST_PITCH, N_NOTES)

    def _columns(self) -> tuple[slice, slice]:
        """(piano-roll columns, keyboard columns) that hold the same pitches."""
        lo, hi = max(self.lowest, LOWEST_PITCH), min(self.lowest + self.width, LOWEST_PITCH + N_NOTES)
        return slice(lo - LOWEST_PITCH, hi - LOWEST_PITCH), slice(lo - self.lowest, hi - self.lowest)

    def from_piano(self, roll: np.ndarray) -> np.ndarray:
        """(T, 88) piano roll -> (T, width) frames; a note outside the keyboard is a UserError."""
        if self.is_piano:
            return roll
        piano, keys = self._columns()
        if roll.sum() != roll[:, piano].sum():
            raise UserError(
                f"a note lies outside MIDI pitches {self.lowest}-{self.lowest + self.width - 1}: "
                "use data.pitches: piano"
            )
        out = np.zeros((len(roll), self.width), roll.dtype)
        out[:, keys] = roll[:, piano]
        return out

    def to_piano(self, frames: np.ndarray) -> np.ndarray:
        """(T, width) frames -> (T, 88) piano roll (pitches off the piano are dropped: never on)."""
        if self.is_piano:
            return frames
        piano, keys = self._columns()
        out = np.zeros((len(frames), N_NOTES), frames.dtype)
        out[:, piano] = frames[:, keys]
        return out


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """A piano-roll `.npz` opened for reading; any failure, while opening or reading, is a UserError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            yield z
    except FileNotFoundError:
        raise UserError(f"{path} not found: run 'gru-bench data prepare' first") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or e})") from None
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile):  # truncated, damaged or foreign
        msg = f"{path} is not a gru-bench piano-roll file: delete it and re-run 'gru-bench data prepare'"
        raise UserError(msg) from None
