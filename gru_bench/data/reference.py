"""The reference piano rolls of Boulanger-Lewandowski et al. (2012), from their pickle or the `.mat` copy.

Pickles are read with a whitelist unpickler: a pickle may name any importable callable and plain
`pickle.load` would call it, so a downloaded file could run code. The original files only reference numpy's
scalar and dtype reconstructors; everything else is refused before it is imported.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.registry import LOWEST_PITCH, N_NOTES, SPLITS, Dataset
from gru_bench.errors import UserError
from gru_bench.fsutil import sha256_file

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar

# (module, name) -> object; the cPickle files were written by numpy 1.x (`numpy.core`), numpy 2 says `_core`.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: Path):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(
                f"{self.source}: refused to load, the pickle references {module}.{name} (only numpy scalars "
                "are allowed); delete the file and download it again"
            ) from None


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle `path` admitting only numpy scalar/dtype globals (UserError names any other)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as e:
        raise UserError(f"{path}: not a readable pickle ({e}); delete it and download it again") from None


def _roll_from_steps(steps: Any, path: Path, where: str) -> np.ndarray:
    """List of per-frame pitch tuples -> bool (T, 88); column j is MIDI pitch 21 + j."""
    try:
        counts = [len(step) for step in steps]
        pitches = np.fromiter((int(p) for step in steps for p in step), dtype=np.int64, count=sum(counts))
    except (TypeError, ValueError):
        raise UserError(
            f"{path}: {where} is not a list of pitch tuples; delete the file and download it again"
        ) from None
    cols = pitches - LOWEST_PITCH
    if cols.size and (cols.min() < 0 or cols.max() >= N_NOTES):
        raise UserError(
            f"{path}: {where} has pitch {int(pitches[(cols < 0) | (cols >= N_NOTES)][0])} outside "
            f"{LOWEST_PITCH}..{LOWEST_PITCH + N_NOTES - 1}; delete the file and download it again"
        )
    roll = np.zeros((len(counts), N_NOTES), dtype=bool)
    roll[np.repeat(np.arange(len(counts)), counts), cols] = True
    return roll


def _from_pickle(path: Path) -> dict[str, list[np.ndarray]]:
    data = safe_unpickle(path)
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise UserError(
            f"{path}: expected a dict with keys {', '.join(SPLITS)}; delete it and download it again"
        )
    return {
        s: [_roll_from_steps(seq, path, f"{s} sequence {i}") for i, seq in enumerate(data[s])] for s in SPLITS
    }


def _from_mat(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many types on a corrupt file; any of them means "re-download"
        raise UserError(f"{path}: not a readable .mat file ({e}); delete it and download it again") from None
    splits = {}
    for s in SPLITS:
        if f"{s}data" not in mat:
            raise UserError(f"{path}: no '{s}data' variable; delete the file and download it again")
        seqs = []
        for i, m in enumerate(np.asarray(mat[f"{s}data"]).ravel()):
            m = np.asarray(m)
            if m.ndim != 2 or m.shape[1] != N_NOTES or not np.isin(m, (0, 1)).all():
                raise UserError(
                    f"{path}: {s} sequence {i} is not a 0/1 matrix of shape (T, {N_NOTES}) "
                    f"(got {m.shape}); delete the file and download it again"
                )
            seqs.append(m.astype(bool))
        splits[s] = seqs
    return splits


def load_rolls(dataset: Dataset, path: str | Path) -> PianoRolls:
    """Read a reference `.mat` or pickle; meta records the source file and its sha256 for provenance."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run 'gru-bench data download {dataset.key} [--source DIR]'")
    splits = _from_pickle(path) if path.suffix == ".pickle" else _from_mat(path)
    names = {s: [f"{s}/{i}" for i in range(len(v))] for s, v in splits.items()}
    return PianoRolls(splits=splits, names=names, meta={"route": "reference", **provenance(dataset, path)})


def provenance(dataset: Dataset, path: Path) -> dict:
    """Meta of a processed file: the raw file it came from, its sha256, whether the registry knows it."""
    digest = sha256_file(path)
    known = {h for f in dataset.files if f.filename == path.name for h in f.sha256}
    return {
        "dataset": dataset.key,
        "source": path.name,
        "sha256": digest,
        "sha256_registered": digest in known,
    }
