"""Key finding: the shift that moves a piece to C major / C minor, estimated from its notes.

The reference rolls were transposed "to C major or minor" by the original site, with shifts in -5..+6
(tonic pitch class p -> shift s with (p + s) % 12 == 0). Key-signature events are unreliable, so the key
is estimated from the notes: Pearson correlation of the duration-weighted (in ticks) pitch-class histogram
with the 24 rotated Albrecht & Shanahan (2013) major/minor profiles, minor scores lowered by MINOR_BIAS.
That one constant was tuned on the four datasets (it stops relative-minor picks for major tunes):
agreement with the reference shifts is in docs/data.md, section "The MIDI route".
"""

from __future__ import annotations

import numpy as np

MAJOR = np.array([0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081])
MINOR = np.array([0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052])
MINOR_BIAS = 0.08
MODES = ("major", "minor")


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """Total duration per pitch class (0 = C) of notes given as rows (pitch, start, end)."""
    hist = np.zeros(12)
    np.add.at(hist, notes[:, 0] % 12, notes[:, 2] - notes[:, 1])
    return hist


def key_scores(hist: np.ndarray) -> np.ndarray:
    """(2, 12) correlations of a pitch-class histogram with each major (row 0) / minor (row 1) key."""
    h = hist - hist.mean()
    scores = np.zeros((2, 12))
    for m, profile in enumerate((MAJOR, MINOR)):
        rotated = np.stack([np.roll(profile, t) for t in range(12)])
        rotated -= rotated.mean(axis=1, keepdims=True)
        norm = np.sqrt((rotated**2).sum(axis=1) * (h**2).sum())
        scores[m] = rotated @ h / np.where(norm > 0, norm, 1)
    scores[1] -= MINOR_BIAS
    return scores


def estimate_key(notes: np.ndarray) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor") of notes given as rows (pitch, start, end)."""
    mode, tonic = np.unravel_index(np.argmax(key_scores(pitch_class_histogram(notes))), (2, 12))
    return int(tonic), MODES[mode]


def estimate_shift(notes: np.ndarray) -> int:
    """Semitones in -5..+6 that move the estimated tonic to C (0 for a piece without notes)."""
    if not len(notes) or not (notes[:, 2] > notes[:, 1]).any():
        return 0
    tonic, _ = estimate_key(notes)
    return (5 - tonic) % 12 - 5
