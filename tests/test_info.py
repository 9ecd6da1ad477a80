"""Statistics, the independent-Bernoulli baseline and `gru-bench data info`."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.data import PianoRolls, processed_path
from gru_bench.data.prepare import prepare
from gru_bench.data.stats import bernoulli_baseline, describe, shift_agreement
from gru_bench.paths import raw_dir


def _roll(*frames: tuple[int, ...]) -> np.ndarray:
    """Frames given as MIDI pitches -> bool (T, 88)."""
    roll = np.zeros((len(frames), 88), dtype=bool)
    for t, pitches in enumerate(frames):
        roll[t, [p - 21 for p in pitches]] = True
    return roll


def _tiny() -> PianoRolls:
    return PianoRolls(
        splits={
            "train": [_roll((60,), (60, 64), ()), _roll((64, 67), (60,))],
            "valid": [_roll((72,), (60, 72), (108,))],
            "test": [_roll((21,), (21,)), _roll((60,))],  # the second has no predicted frame
        },
        meta={
            "dataset": "tiny",
            "route": "midi",
            "shifts": {"train": [[0, 0], [2, -3]], "valid": [[5, None]]},
        },
    )


def _hand_nll(rolls: PianoRolls, split: str) -> float:
    """Plain-Python reference: Laplace-smoothed train frequencies, frames 2..T, nats per frame."""
    train = [frame for seq in rolls.splits["train"] for frame in seq.tolist()]
    p = [(sum(f[j] for f in train) + 1) / (len(train) + 2) for j in range(88)]
    total, count = 0.0, 0
    for seq in rolls.splits[split]:
        for frame in seq.tolist()[1:]:
            total -= sum(math.log(p[j]) if frame[j] else math.log(1 - p[j]) for j in range(88))
            count += 1
    return total / count


def test_bernoulli_baseline_matches_hand_computation() -> None:
    rolls = _tiny()
    got = bernoulli_baseline(rolls)
    for split in ("train", "valid", "test"):
        assert got[split] == pytest.approx(_hand_nll(rolls, split), rel=1e-12)
    assert np.isfinite(got["valid"])  # pitch 108 never occurs in train: smoothing keeps it finite


def test_describe_and_shift_agreement() -> None:
    df = describe(_tiny())
    assert df.loc["train", ["sequences", "frames", "min_length", "max_length"]].tolist() == [2, 5, 2, 3]
    assert df.loc["train", ["min_pitch", "max_pitch", "silent_frames"]].tolist() == [60, 67, 1]
    assert df.loc["train", "notes_per_frame"] == pytest.approx(6 / 5)
    assert df.loc["test", ["min_pitch", "max_pitch", "mean_length"]].tolist() == [21, 60, 1.5]
    assert df["baseline_nll"].to_dict() == bernoulli_baseline(_tiny())
    assert shift_agreement(_tiny()) == {"train": (1, 2), "valid": (0, 0)}


def test_cli_info_reference(data_home: Path, shared_datasets: Path) -> None:
    raw_dir("jsb").mkdir(parents=True)
    shutil.copy(shared_datasets / "mat" / "JSB_Chorales.mat", raw_dir("jsb"))
    rolls = PianoRolls.load(prepare("jsb"))
    result = CliRunner().invoke(app, ["data", "info", "jsb"])
    assert result.exit_code == 0, result.output
    for text in ("229", "76", "77", "13,807", "4,602", "4,725", "JSB_Chorales.mat", "Bernoulli"):
        assert text in result.output
    for value in bernoulli_baseline(rolls).values():
        assert f"{value:.3f}" in result.output
    assert "shift" not in result.output  # reference route: no transposition to compare


def test_cli_info_midi_folder_shows_shift_agreement(data_home: Path) -> None:
    _tiny().save(processed_path("tiny", "midi"))
    result = CliRunner().invoke(app, ["data", "info", "tiny"])
    assert result.exit_code == 0, result.output
    assert "1/2" in result.output and "0/0" in result.output


def test_cli_info_unprepared(data_home: Path) -> None:
    result = CliRunner().invoke(app, ["data", "info", "nottingham", "--from-midi"])
    assert result.exit_code == 2
    assert (
        "gru-bench data prepare nottingham --from-midi" in result.output and "Traceback" not in result.output
    )
    result = CliRunner().invoke(app, ["data", "info", "nosuch"])
    assert result.exit_code == 2 and "unknown dataset 'nosuch'" in result.output
