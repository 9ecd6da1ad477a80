"""`gru-bench sample`: let a trained model compose, frame by frame, and write the piece as MIDI + piano roll.

Each frame's 88 notes are drawn as independent Bernoulli variables with p = sigmoid(logit / temperature),
the same conditional model the NLL in Table 2 scores; listening to it is a sanity check no number gives.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pretty_midi
import torch

from gru_bench import data
from gru_bench.console import progress
from gru_bench.data.registry import LOWEST_PITCH, N_NOTES
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_write
from gru_bench.training.rundir import load_run

# Seconds per piano-roll frame at 120 bpm: quarter notes for JSB, eighth notes for the others.
SECONDS_PER_FRAME = {"quarter120": 0.5, "eighth": 0.25}


def generate(
    model: torch.nn.Module,
    steps: int,
    temperature: float = 1.0,
    primer: np.ndarray | None = None,
    seed: int = 0,
    quiet: bool = True,
) -> np.ndarray:
    """Bool frames (len(primer) + steps, model.n_in): the primer, then `steps` sampled frames.

    temperature 0 takes the most likely value of every note (deterministic). Without a primer the model is
    started from one silent frame, which is not part of the result. The model steps one frame at a time,
    carrying its state, so time is linear in `steps`; a progress bar shows unless `quiet`.
    """
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(
            f"--temperature {temperature}: use a finite number >= 0 (0: likeliest notes, 1: the model)"
        )
    gen = torch.Generator().manual_seed(seed)
    n = model.n_in
    start = primer if primer is not None and len(primer) else np.zeros((1, n), bool)
    frames = torch.zeros(len(start) + steps, n)
    frames[: len(start)] = torch.as_tensor(start, dtype=torch.float32)
    model.eval()
    with torch.no_grad(), progress(steps, "sampling", quiet) as advance:
        state = None
        for t in range(
            len(start) - 1
        ):  # run the primer through, then one step per new frame: linear in steps
            _, state = model.step(frames[t].reshape(1, 1, n), state)
        for t in range(len(start), len(frames)):
            logits, state = model.step(frames[t - 1].reshape(1, 1, n), state)
            logits = logits[0, 0].float()
            if temperature == 0:
                frames[t] = (logits > 0).float()
            else:
                frames[t] = torch.bernoulli(torch.sigmoid(logits / temperature), generator=gen)
            advance()
    out = frames.numpy().astype(bool)
    return out if primer is not None and len(primer) else out[1:]


def pick_primer(rolls: data.PianoRolls, frames: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """The first `frames` frames of a test sequence chosen with `seed` among those long enough."""
    long = [i for i, s in enumerate(rolls.splits["test"]) if len(s) >= frames]
    if not long:
        raise UserError(f"--primer {frames}: no test sequence has that many frames; use fewer")
    i = int(np.random.default_rng(seed).choice(long))
    name = rolls.names.get("test", [])[i] if rolls.names.get("test") else str(i)
    return rolls.splits["test"][i][:frames], name


def roll_to_midi(roll: np.ndarray, seconds_per_frame: float, velocity: int = 80) -> pretty_midi.PrettyMIDI:
    """One piano; consecutive active frames of a pitch become one held note (pitch = 21 + column)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0, name="piano")
    edges = np.diff(np.pad(roll.astype(np.int8), ((1, 1), (0, 0))), axis=0)  # +1 onset, -1 offset
    for col in range(roll.shape[1]):
        onsets, offsets = np.flatnonzero(edges[:, col] == 1), np.flatnonzero(edges[:, col] == -1)
        for a, b in zip(onsets, offsets, strict=True):
            piano.notes.append(
                pretty_midi.Note(
                    velocity=velocity,
                    pitch=LOWEST_PITCH + col,
                    start=a * seconds_per_frame,
                    end=b * seconds_per_frame,
                )
            )
    piano.notes.sort(key=lambda n: (n.start, n.pitch))
    pm.instruments.append(piano)
    return pm


def plot_roll(roll: np.ndarray, path: Path, primer: int = 0, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, len(roll) / 25), 4))
    ax.imshow(
        roll.T,
        aspect="auto",
        origin="lower",
        cmap="Greys",
        interpolation="nearest",
        extent=(-0.5, len(roll) - 0.5, LOWEST_PITCH - 0.5, LOWEST_PITCH + N_NOTES - 0.5),
    )
    if primer:
        ax.axvline(primer - 0.5, color="tab:red", linewidth=1, label="end of primer")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("frame")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def sample(
    run_dir: str | Path,
    steps: int = 200,
    out: str | Path = "sample.mid",
    temperature: float = 1.0,
    primer: int = 0,
    seed: int = 0,
    which: str = "best",
    quiet: bool = False,
) -> Path:
    """Sample a piece from the run's model into `out` (MIDI) and `out` with suffix .png (piano roll)."""
    if steps < 1 or primer < 0:
        raise UserError(f"--steps {steps} / --primer {primer}: steps must be >= 1 and primer >= 0")
    model, cfg = load_run(run_dir, which)
    dataset = data.resolve(cfg.dataset, cfg.data.route)
    rolls = data.load(cfg.dataset, cfg.data.route) if primer else None
    start, source = pick_primer(rolls, primer, seed) if primer else (None, "")
    keys = data.Keyboard.of_model(cfg.data.pitches, model.n_in)  # notes off the piano are dropped
    frames = generate(
        model, steps, temperature, None if start is None else keys.from_piano(start), seed, quiet
    )
    roll = keys.to_piano(frames)
    out = Path(out)
    pm = roll_to_midi(roll, SECONDS_PER_FRAME[dataset.frame_rule])
    with atomic_write(out) as f:
        pm.write(f)
    title = f"{cfg.dataset} {cfg.model.cell}, T={temperature:g}, seed {seed}" + (
        f", primer: {source}" * bool(primer)
    )
    plot_roll(roll, out.with_suffix(".png"), primer, title)
    return out
