"""Raw downloads (or a user's MIDI folder) -> one checked `.npz` of piano rolls per dataset and route.

Route "reference" reads the published piano rolls (the original pickle when present, since it holds the
original bytes, else the `.mat` copy; both give identical rolls). Route "midi" rebuilds them from the MIDI
archive (gru_bench.data.midi). Either way the split sizes are checked against the registry, so a wrong or
truncated file fails here and not halfway through training.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

from gru_bench.data import processed_path
from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.reference import load_rolls, provenance
from gru_bench.data.registry import Dataset, find_dataset, get_dataset
from gru_bench.errors import UserError
from gru_bench.paths import raw_dir


def reference_file(dataset: Dataset) -> Path:
    """The pickle if downloaded (original bytes), else the `.mat`; UserError says how to download."""
    for kind in ("pickle", "mat"):
        path = raw_dir(dataset.key) / dataset.file(kind).filename
        if path.is_file():
            return path
    raise UserError(
        f"{raw_dir(dataset.key) / dataset.file('mat').filename} not found: run "
        f"'gru-bench data download {dataset.key} [--source DIR]'"
    )


def check_sizes(dataset: Dataset, rolls: PianoRolls, echo: Callable[[str], None] = print) -> None:
    """Sequence counts must match the registry (UserError); frame counts too on the reference route.

    On the MIDI route a frame mismatch is only reported: the rolls are still usable, just not the paper's.
    """
    source = rolls.meta.get("source", "")
    for split, expected in dataset.split_sizes.items():
        got = len(rolls.splits.get(split, []))
        if got != expected:
            raise UserError(
                f"{dataset.key} {split} split of {source}: expected {expected} sequences, got {got}; "
                "the file is not the published dataset, delete it and download it again"
            )
    for split, expected in dataset.split_frames.items():
        got = rolls.frames(split)
        if got != expected:
            msg = f"{dataset.key} {split} split of {source}: expected {expected} frames, got {got}"
            if rolls.meta.get("route") == "reference":
                raise UserError(msg + "; delete the file and download it again")
            echo(f"warning: {msg} (the MIDI route does not reproduce the reference rolls exactly)")


def _midi_rolls(load: Callable[[], PianoRolls], echo: Callable[[str], None]) -> PianoRolls:
    """Run a MIDI loader, printing its warnings (one per skipped corrupt file, then the count) as lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        rolls = load()
    for w in caught:
        if issubclass(w.category, UserWarning):
            echo(f"warning: {w.message}")
    return rolls


def prepare_dataset(
    dataset: Dataset,
    from_midi: bool = False,
    transpose: str = "estimate",
    echo: Callable[[str], None] = print,
) -> Path:
    """One registry dataset -> processed_path(key, "reference" | "midi")."""
    if from_midi:
        from gru_bench.data import midi  # MIDI parsing deps load only for this route

        zip_path = raw_dir(dataset.key) / dataset.file("midi_zip").filename
        if not zip_path.is_file():
            raise UserError(
                f"{zip_path} not found: run 'gru-bench data download {dataset.key} [--source DIR]'"
            )
        try:  # the reference rolls give the pieces their published order and each its reference shift
            reference = load_rolls(dataset, reference_file(dataset))
        except UserError as e:
            echo(f"warning: no reference rolls ({e}); pieces keep file order, reference shifts unknown")
            reference = None
        rolls = _midi_rolls(lambda: midi.rolls_from_zip(dataset, zip_path, transpose, reference), echo)
        rolls.meta.update(provenance(dataset, zip_path))
    else:
        rolls = load_rolls(dataset, reference_file(dataset))
    check_sizes(dataset, rolls, echo)
    out = processed_path(dataset.key, rolls.meta["route"])
    rolls.save(out)
    return out


def prepare_folder(
    folder: str | Path,
    name: str | None = None,
    frame: str = "eighth",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    transpose: str = "estimate",
    echo: Callable[[str], None] = print,
) -> Path:
    """A user's folder of MIDI files -> processed_path(name, "midi").

    Split by train/valid/test subfolders if present, else at random (seeded); see midi.rolls_from_folder.
    """
    from gru_bench.data import midi

    folder = Path(folder)
    name = name or folder.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it becomes a file name)")
    if find_dataset(name) is not None:
        raise UserError(f"--name {name!r} is a built-in dataset; pick another name for your folder")
    rolls = _midi_rolls(
        lambda: midi.rolls_from_folder(folder, frame, valid_ratio, test_ratio, seed, transpose), echo
    )
    if not rolls.splits.get("train"):
        raise UserError(
            f"{folder}: no readable MIDI file went to the train split; add files or lower the ratios"
        )
    rolls.meta.update(dataset=name, route="midi", source=str(folder.resolve()))
    out = processed_path(name, "midi")
    rolls.save(out)
    return out


def prepare(
    name: str,
    from_midi: bool = False,
    transpose: str = "estimate",
    *,
    out_name: str | None = None,
    frame: str | None = None,
    valid_ratio: float | None = None,
    test_ratio: float | None = None,
    seed: int | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Prepare a registry dataset by name, or (with from_midi) a MIDI folder; returns the written `.npz`.

    A registry name wins over a folder of the same name (write `./jsb` to mean the folder). The folder
    options (None = prepare_folder's default) are refused for registry datasets, whose splits are fixed.
    """
    given = {
        "name": out_name,
        "frame": frame,
        "valid_ratio": valid_ratio,
        "test_ratio": test_ratio,
        "seed": seed,
    }
    given = {k: v for k, v in given.items() if v is not None}
    try:
        dataset = get_dataset(name)
    except UserError:
        if not Path(name).is_dir():
            if not any(sep in name for sep in "/\\"):
                raise  # a plain unknown name: the registry's error lists the datasets
            raise UserError(
                f"{name}: no such folder (pass a folder of MIDI files or a dataset name)"
            ) from None
        if not from_midi:
            raise UserError(
                f"{name} is a folder: add --from-midi to build piano rolls from its MIDI files"
            ) from None
        return prepare_folder(name, transpose=transpose, echo=echo, **given)
    if given:
        options = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{options}: only for MIDI folders, not for the dataset {dataset.key!r}")
    return prepare_dataset(dataset, from_midi=from_midi, transpose=transpose, echo=echo)
