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

from gru_bench.data.registry import N_NOTES, SPLITS
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
