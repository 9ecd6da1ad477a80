"""`sample --audio`: a WAV as long as the MIDI, FluidSynth when installed (else sines, said), compressed
copies by whichever encoder is on PATH, written atomically; bad input is a one-line error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.errors import UserError
from gru_bench.report import audio
from gru_bench.report.samples import roll_to_midi
from gru_bench.training.trainer import train

FS = 8000  # enough to check lengths and loudness, quick to render


@pytest.fixture
def midi(tmp_path: Path) -> Path:
    """Four seconds of chords: 16 quarter-note frames at 120 bpm."""
    roll = np.zeros((16, 88), bool)
    roll[:, [39, 43, 46]] = True  # C major triad (C4 E4 G4), held
    roll[8:, 43] = False
    path = tmp_path / "piece.mid"
    roll_to_midi(roll, 0.25 * 2).write(str(path))
    return path


def _no_soundfont(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(audio.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(audio, "SOUNDFONTS", ())


def test_without_fluidsynth_the_sines_play_and_say_so(
    midi: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_soundfont(monkeypatch)
    out = audio.render(midi, tmp_path / "out" / "piece.wav", compress=False, fs=FS)
    assert "sine" in out.synth and "\n" not in out.synth and out.compressed is None
    fs, samples = wavfile.read(out.wav)
    assert fs == FS and samples.dtype == np.int16
    assert len(samples) == pytest.approx(8 * FS, abs=FS)  # 8 s of notes (+ release)
    assert np.abs(samples).max() > 10000  # loud, not silent
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["piece.wav"]  # no temporary file left


def test_fluidsynth_with_a_general_midi_soundfont(midi: Path, tmp_path: Path) -> None:
    if audio.find_soundfont() is None or not audio._fluidsynth_available():
        pytest.skip("FluidSynth (libfluidsynth + pyfluidsynth) or a GM SoundFont is not installed")
    out = audio.render(midi, compress=False, fs=FS)
    assert out.synth.startswith("FluidSynth with ") and out.wav == midi.with_suffix(".wav")
    _, samples = wavfile.read(out.wav)
    assert len(samples) >= 8 * FS and np.abs(samples).max() > 10000


@pytest.mark.parametrize(("program", "magic"), [("ffmpeg", None), ("lame", None), ("oggenc", b"OggS")])
def test_each_encoder_on_path_writes_its_file(
    program: str, magic: bytes | None, midi: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not on PATH")
    _no_soundfont(monkeypatch)
    monkeypatch.setattr(audio, "ENCODERS", [e for e in audio.ENCODERS if e[0] == program])
    out = audio.render(midi, fs=FS)
    assert out.compressed == midi.with_suffix(".ogg" if program == "oggenc" else ".mp3")
    head = out.compressed.read_bytes()[:4]
    mp3_frame = head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio frame sync (11 bits set)
    assert head.startswith(magic) if magic else (head.startswith(b"ID3") or mp3_frame)
    assert (
        out.compressed.stat().st_mode & 0o777 == midi.stat().st_mode & 0o777
    )  # not private (mkstemp's 0600)


def test_a_failing_encoder_leaves_nothing_behind(midi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("false") is None:
        pytest.skip("no `false` program")
    _no_soundfont(monkeypatch)
    monkeypatch.setattr(audio, "ENCODERS", [("false", ".mp3", lambda i, o: [i, o])])
    assert audio.render(midi, fs=FS).compressed is None
    assert sorted(p.name for p in midi.parent.iterdir()) == ["piece.mid", "piece.wav"]


def test_bad_input_is_a_one_line_error(midi: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"--soundfont .*nope.sf2: no such file"):
        audio.render(midi, soundfont=tmp_path / "nope.sf2")
    monkeypatch.setenv(audio.SOUNDFONT_ENV, str(tmp_path / "gone.sf2"))
    with pytest.raises(UserError, match="GRU_BENCH_SOUNDFONT .*gone.sf2: no such file"):
        audio.render(midi)
    (tmp_path / "text.mid").write_text("not midi")
    with pytest.raises(UserError, match="text.mid is not a readable MIDI file"):
        audio.render(tmp_path / "text.mid")


def test_sample_audio_from_the_command_line(
    tmp_path: Path, jsb_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_soundfont(monkeypatch)
    monkeypatch.setattr(audio, "ENCODERS", ())
    run = tmp_path / "run"
    tiny = ["model.hidden=8", "training.max_epochs=1", "training.batch_size=64"]
    train(load_config(CONFIGS_DIR / "jsb" / "gru.yaml", tiny), run, quiet=True)
    out = tmp_path / "s" / "jsb.mid"
    result = CliRunner().invoke(app, ["sample", str(run), "--steps", "8", "--out", str(out), "--audio"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out.with_suffix('.wav')} (pretty_midi's sine synthesis" in result.output
    assert wavfile.read(out.with_suffix(".wav"))[0] == audio.SAMPLE_RATE
