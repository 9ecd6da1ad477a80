"""Datasets: registry, download, preparation into piano-roll tensors, statistics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gru_bench.data.pianoroll import PITCH_LAYOUTS, Keyboard, PianoRolls
from gru_bench.data.registry import DATASETS, SPLITS, Dataset, find_dataset, get_dataset
from gru_bench.errors import UserError
from gru_bench.paths import processed_dir

ROUTES = ("reference", "midi")


def processed_path(key: str, route: str = "reference") -> Path:
    """The file `prepare` writes and training reads for a registry key or a folder's name on a route."""
    return processed_dir() / (f"{key}.npz" if route == "reference" else f"{key}.{route}.npz")


@dataclass(frozen=True)
class Resolved:
    """A dataset name resolved: registry entry (None for a user's MIDI folder), route and prepared file."""

    key: str  # registry key, or the folder's name
    route: str
    path: Path  # the prepared `.npz`; a registered dataset's may not exist yet
    dataset: Dataset | None

    @property
    def frame_rule(self) -> str:
        """MIDI <-> piano-roll sampling: the registry's, or the one the folder was prepared with."""
        if self.dataset is not None:
            return self.dataset.frame_rule
        return PianoRolls.read_meta(self.path).get("frame_rule", "eighth")


def resolve(name: str, route: str | None = None, where: str = "") -> Resolved:
    """What a dataset name means: a registered dataset (key or title, any case) on `route` (default
    reference), or a folder prepared with `data prepare DIR --from-midi` (default: the route it has).

    One-line UserError, prefixed with `where` if given, for a name that is neither or a folder not prepared
    on `route`.
    """
    dataset = find_dataset(name)
    if dataset is not None:
        route = route or "reference"
        return Resolved(dataset.key, route, processed_path(dataset.key, route), dataset)
    named = re.fullmatch(r"[\w.+-]+", name) and set(name) != {"."}  # a file name, not a path
    prepared = [r for r in ROUTES if named and processed_path(name, r).is_file()]
    if not prepared:
        choices = (
            f"one of {', '.join(DATASETS)} or the name of a folder prepared with "
            "'gru-bench data prepare DIR [--from-midi] --name NAME'"
        )
        if where:
            raise UserError(f"{where}: dataset must be {choices}, got {name!r}")
        raise UserError(f"unknown dataset {name!r}: choose {choices}")
    route = route or prepared[0]
    if route not in prepared:
        raise UserError(
            f"{where + ': ' if where else ''}dataset {name} is prepared for data.route {prepared[0]}, not "
            f"{route}: set data.route: {prepared[0]} (--set data.route={prepared[0]})"
        )
    return Resolved(name, route, processed_path(name, route), None)


def load(name: str, route: str | None = None) -> PianoRolls:
    """Prepared piano rolls of a dataset (see `resolve`); the error names the missing `prepare` command."""
    resolved = resolve(name, route)
    if not resolved.path.is_file():
        raise UserError(
            f"{name} ({resolved.route} route) is not prepared, {resolved.path} is missing: run "
            f"'gru-bench data prepare {name}{' --from-midi' if resolved.route == 'midi' else ''}'"
        )
    return PianoRolls.load(resolved.path)


__all__ = [
    "DATASETS",
    "PITCH_LAYOUTS",
    "ROUTES",
    "SPLITS",
    "Dataset",
    "Keyboard",
    "PianoRolls",
    "Resolved",
    "get_dataset",
    "load",
    "processed_path",
    "resolve",
]
