"""`gru-bench sample`: seeded Bernoulli sampling, temperature, primer, and MIDI that reproduces the roll."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.data import load as load_rolls
from gru_bench.data import processed_path
from gru_bench.errors import UserError
from gru_bench.models import build_model
from gru_bench.report.samples import SECONDS_PER_FRAME, generate, pick_primer, roll_to_midi, sample
from gru_bench.training.rundir import load_run
from gru_bench.training.trainer import train

TINY = ["model.hidden=8", "training.max_epochs=1", "training.batch_size=64", "training.weight_noise=0"]


def midi_to_frames(path: Path, seconds_per_frame: float, frames: int) -> np.ndarray:
    """The inverse of roll_to_midi, independently: each note fills the frames it spans."""
    roll = np.zeros((frames, 88), bool)
    for note in pretty_midi.PrettyMIDI(str(path)).instruments[0].notes:
        a, b = round(note.start / seconds_per_frame), round(note.end / seconds_per_frame)
        assert not roll[a:b, note.pitch - 21].any(), "overlapping notes of one pitch"
        roll[a:b, note.pitch - 21] = True
    return roll


@pytest.fixture
def model() -> torch.nn.Module:
    """An untrained GRU with random weights AND biases (zero biases would give logits of exactly 0)."""
    m = build_model("gru", hidden=16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    return m


@pytest.fixture(scope="module")
def jsb_run(tmp_path_factory: pytest.TempPathFactory, jsb_npz: Path) -> tuple[Path, Path]:
    """(data dir, run dir) of a real one-epoch JSB GRU run."""
    root = tmp_path_factory.mktemp("sample")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRU_BENCH_DATA", str(root / "data"))
        processed_path("jsb").parent.mkdir(parents=True)
        shutil.copy(jsb_npz, processed_path("jsb"))
        run_dir = root / "runs" / "jsb" / "gru" / "tiny"
        train(load_config(CONFIGS_DIR / "jsb" / "gru.yaml", TINY), run_dir, quiet=True)
    return root / "data", run_dir


def test_generate_is_deterministic_for_a_seed(model: torch.nn.Module) -> None:
    a, b = generate(model, 40, seed=3), generate(model, 40, seed=3)
    assert a.shape == (40, 88) and a.dtype == bool
    assert np.array_equal(a, b)
    assert not np.array_equal(a, generate(model, 40, seed=4))


def test_temperature_towards_zero_becomes_the_likeliest_notes(model: torch.nn.Module) -> None:
    greedy = generate(model, 30, temperature=0)
    assert np.array_equal(greedy, generate(model, 30, temperature=0, seed=9))
    for seed in (0, 1, 2):
        assert np.array_equal(generate(model, 30, temperature=1e-8, seed=seed), greedy)
    # at temperature 1 the draws differ from the argmax somewhere (the model is not that sure)
    assert not np.array_equal(generate(model, 30, temperature=1.0), greedy)
    with pytest.raises(UserError, match="temperature"):
        generate(model, 3, temperature=-1)


def test_primer_frames_come_first(model: torch.nn.Module) -> None:
    primer = np.random.default_rng(0).random((12, 88)) < 0.05
    out = generate(model, 20, primer=primer, seed=1)
    assert out.shape == (32, 88)
    assert np.array_equal(out[:12], primer)


def test_roll_to_midi_merges_held_frames(tmp_path: Path) -> None:
    roll = np.zeros((6, 88), bool)
    roll[0:3, 39] = True  # middle C (pitch 60) held three frames
    roll[4, 39] = True  # struck again after a rest
    roll[2:6, 0] = True  # lowest key, to the end
    pm = roll_to_midi(roll, 0.25)
    notes = sorted((n.pitch, n.start, n.end) for n in pm.instruments[0].notes)
    assert notes == [(21, 0.5, 1.5), (60, 0.0, 0.75), (60, 1.0, 1.25)]
    pm.write(str(tmp_path / "x.mid"))
    assert np.array_equal(midi_to_frames(tmp_path / "x.mid", 0.25, 6), roll)


def test_sample_writes_midi_and_png_of_the_sampled_roll(
    jsb_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, run_dir = jsb_run
    monkeypatch.setenv("GRU_BENCH_DATA", str(data_dir))
    out = sample(run_dir, steps=48, out=tmp_path / "piece.mid", primer=16, seed=5)
    assert out == tmp_path / "piece.mid" and out.with_suffix(".png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"

    # the same roll, recomputed: the seeded primer (the start of a test chorale), then the seeded draws
    model, _ = load_run(run_dir, "best")
    primer, name = pick_primer(load_rolls("jsb"), 16, seed=5)
    assert primer.shape == (16, 88) and name
    expected = generate(model, 48, primer=primer, seed=5)
    assert np.array_equal(midi_to_frames(out, SECONDS_PER_FRAME["quarter120"], 64), expected)
    assert expected[16:].any(), "a trained model should play some notes"

    # JSB frames are quarter notes at 120 bpm: every onset lies on the 0.5 s grid
    starts = [n.start for n in pretty_midi.PrettyMIDI(str(out)).instruments[0].notes]
    assert np.allclose(np.remainder(starts, 0.5), 0)


def test_cli_sample(jsb_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, run_dir = jsb_run
    monkeypatch.setenv("GRU_BENCH_DATA", str(data_dir))
    runner = CliRunner()
    res = runner.invoke(app, ["sample", str(run_dir), "--steps", "10", "--out", str(tmp_path / "a.mid"),
                              "--temperature", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.mid").exists() and (tmp_path / "a.png").exists()
    res = runner.invoke(app, ["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b.mid")])
    assert res.exit_code == 2 and "Traceback" not in res.output


@pytest.mark.parametrize("impl", ["paper", "fused"])
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_step_by_step_equals_the_whole_sequence(cell: str, impl: str):
    """`step` (generation, linear time) is the same function as `forward` over the whole prefix."""
    m = build_model(cell, impl, hidden=5, k=2, fast="off")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    x = (torch.rand(2, 3, 7, 88, generator=gen) < 0.2).float()
    whole = m(x)
    state = None
    for t in range(7):
        logits, state = m.step(x[:, :, t], state)
        torch.testing.assert_close(logits, whole[:, :, t], rtol=1e-5, atol=1e-6)


def test_generate_matches_rereading_the_prefix(model: torch.nn.Module):
    """The linear-time sampler draws the same piece as re-running the model over the whole prefix."""
    gen = torch.Generator().manual_seed(5)
    frames = torch.zeros(26, 88)
    with torch.no_grad():
        for t in range(1, 26):
            logits = model(frames[:t].reshape(1, 1, t, 88))[0, 0, -1]
            frames[t] = torch.bernoulli(torch.sigmoid(logits), generator=gen)
    assert np.array_equal(generate(model, 25, seed=5), frames[1:].numpy().astype(bool))
