"""Datasets: registry, download, preparation into piano-roll tensors, statistics."""

from __future__ import annotations

from pathlib import Path

from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.registry import DATASETS, SPLITS, Dataset, get_dataset
from gru_bench.errors import UserError
from gru_bench.paths import processed_dir

ROUTES = ("reference", "midi")


def processed_path(name: str, route: str = "reference") -> Path:
    """Where `prepare` writes and training reads a dataset (`name` may also be a user folder's name)."""
    known = {*DATASETS, *(d.title.lower() for d in DATASETS.values())}
    key = get_dataset(name).key if name.lower() in known else name
    return processed_dir() / (f"{key}.npz" if route == "reference" else f"{key}.{route}.npz")


def load(name: str, route: str = "reference") -> PianoRolls:
    """Prepared piano rolls of a dataset; a clear error says which `prepare` command is missing."""
    path = processed_path(name, route)
    if not path.is_file():
        raise UserError(
            f"{name} ({route} route) is not prepared, {path} is missing: run "
            f"'gru-bench data prepare {name}{' --from-midi' if route == 'midi' else ''}'"
        )
    return PianoRolls.load(path)


__all__ = ["DATASETS", "ROUTES", "SPLITS", "Dataset", "PianoRolls", "get_dataset", "load", "processed_path"]
