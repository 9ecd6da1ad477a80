"""Dataset statistics and the no-memory baseline every model must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table

from gru_bench.data import load
from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.registry import LOWEST_PITCH, N_NOTES

if TYPE_CHECKING:  # pandas costs a training process ~0.15 s to import; only `describe` needs it
    import pandas as pd


def _stack(seqs: list[np.ndarray], skip_first: bool = False) -> np.ndarray:
    parts = [s[1:] if skip_first else s for s in seqs]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, N_NOTES), bool)


def bernoulli_baseline(rolls: PianoRolls, per_sequence: bool = False) -> dict[str, float]:
    """NLL per frame (nats) of 88 independent Bernoulli notes with probabilities from the training set.

    p_j = (on-count of note j over all train frames + 1) / (train frames + 2): Laplace smoothing keeps a note
    never heard in training from giving an infinite NLL on valid/test. The score uses the frames the models
    predict, frames 2..T of each sequence (frame t predicts t+1), summed over the 88 notes and averaged over
    all predicted frames of the split (or, `per_sequence`, over each sequence's frames and then over the
    sequences: the paper's metric), so it is directly comparable with the models' NLL. NaN for a split with
    no predicted frame.
    """
    train = _stack(rolls.splits["train"])
    p = (train.sum(axis=0, dtype=np.float64) + 1.0) / (len(train) + 2.0)
    log_on, log_off = np.log(p), np.log1p(-p)

    def nll(targets: np.ndarray) -> float:
        on, n = targets.sum(axis=0, dtype=np.float64), len(targets)
        return float(-(on @ log_on + (n - on) @ log_off) / n)

    out = {}
    for split, seqs in rolls.splits.items():
        if per_sequence:
            scores = [nll(s[1:]) for s in seqs if len(s) > 1]
            out[split] = float(np.mean(scores)) if scores else float("nan")
        else:
            targets = _stack(seqs, skip_first=True)
            out[split] = nll(targets) if len(targets) else float("nan")
    return out


def describe(rolls: PianoRolls) -> pd.DataFrame:
    """One row per split: sizes, lengths, pitch range, polyphony, silence and the Bernoulli baseline."""
    import pandas as pd

    baseline, baseline_seq = bernoulli_baseline(rolls), bernoulli_baseline(rolls, per_sequence=True)
    rows = {}
    for split, seqs in rolls.splits.items():
        frames = _stack(seqs)
        lengths = np.array([len(s) for s in seqs])
        used = np.flatnonzero(frames.any(axis=0)) + LOWEST_PITCH
        notes = frames.sum(axis=1)
        rows[split] = {
            "sequences": len(seqs),
            "frames": len(frames),
            "mean_length": float(lengths.mean()) if len(seqs) else float("nan"),
            "min_length": int(lengths.min()) if len(seqs) else 0,
            "max_length": int(lengths.max()) if len(seqs) else 0,
            "min_pitch": int(used.min()) if used.size else None,
            "max_pitch": int(used.max()) if used.size else None,
            "notes_per_frame": float(notes.mean()) if len(frames) else float("nan"),
            "silent_frames": int((notes == 0).sum()),
            "baseline_nll": baseline[split],
            "baseline_nll_seq": baseline_seq[split],
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def shift_agreement(rolls: PianoRolls) -> dict[str, tuple[int, int]]:
    """MIDI route, per split: (pieces whose estimated shift equals the reference one, pieces that have one).

    Reads meta["shifts"][split] = [[estimated, reference or None], ...] written by gru_bench.data.midi.
    """
    out = {}
    for split, pairs in (rolls.meta.get("shifts") or {}).items():
        known = [(est, ref) for est, ref in pairs if ref is not None]
        out[split] = (sum(est == ref for est, ref in known), len(known))
    return out


def info_table(rolls: PianoRolls) -> Table:
    """`gru-bench data info`: describe() with splits as columns (fits 80 columns) and the shift agreement."""
    df = describe(rolls)
    meta = rolls.meta
    title = f"{meta.get('dataset', '?')} ({meta.get('route', '?')} route)"
    caption = f"source {meta.get('source', '?')}"
    if meta.get("sha256"):
        caption += f", sha256 {meta['sha256'][:16]}…" + (
            "" if meta.get("sha256_registered") else " (not registered)"
        )
    if meta.get("transpose"):
        caption += f", transpose {meta['transpose']}"
    table = Table(title=title, caption=caption)
    table.add_column("statistic")
    for split in df.index:
        table.add_column(split, justify="right")

    def row(label: str, cells: list[str]) -> None:
        table.add_row(label, *cells)

    def fmt(v: object, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)

    row("sequences", [fmt(v, ",") for v in df["sequences"]])
    row("frames", [fmt(v, ",") for v in df["frames"]])
    row("length mean", [fmt(v, ".1f") for v in df["mean_length"]])
    row(
        "length min / max",
        [f"{a:,} / {b:,}" for a, b in zip(df["min_length"], df["max_length"], strict=True)],
    )
    row(
        "pitch min / max",
        [f"{fmt(a, 'd')} / {fmt(b, 'd')}" for a, b in zip(df["min_pitch"], df["max_pitch"], strict=True)],
    )
    row("notes per frame", [fmt(v, ".2f") for v in df["notes_per_frame"]])
    row("silent frames", [fmt(v, ",") for v in df["silent_frames"]])
    row("Bernoulli NLL per sequence", [fmt(v, ".3f") for v in df["baseline_nll_seq"]])
    row("Bernoulli NLL per frame", [fmt(v, ".3f") for v in df["baseline_nll"]])
    agree = shift_agreement(rolls)
    if agree:
        row("shift = reference", [f"{agree[s][0]}/{agree[s][1]}" if s in agree else "-" for s in df.index])
    return table


def info(name: str, from_midi: bool = False) -> Table:
    """The info table of a prepared dataset; a user folder's name means the route it was prepared on."""
    return info_table(load(name, "midi" if from_midi else None))
