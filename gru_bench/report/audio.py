"""`sample --audio`: render a sample's MIDI to a WAV you can play, and to a compressed file when an encoder is
on PATH (ffmpeg or lame: .mp3; oggenc: .ogg).

With FluidSynth (Debian: `fluidsynth`, with its Python binding `pip install pyfluidsynth`) and a General MIDI
SoundFont (Debian: `fluid-soundfont-gm`; or `--soundfont` / GRU_BENCH_SOUNDFONT) the piano sounds like a
piano; otherwise pretty_midi's built-in synthesis plays every note as a sine wave, which is enough to hear
the harmony and rhythm. See docs/install.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
from scipy.io import wavfile

from gru_bench.errors import UserError
from gru_bench.fsutil import FILE_MODE, atomic_write

SAMPLE_RATE = 44100
SOUNDFONT_ENV = "GRU_BENCH_SOUNDFONT"
# Where Debian/Ubuntu, Fedora, Arch and Homebrew put a General MIDI SoundFont.
SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
# Encoders tried in order: (program, suffix, arguments given the input WAV and the output file).
ENCODERS = (
    ("ffmpeg", ".mp3", lambda i, o: ["-nostdin", "-v", "error", "-y", "-i", i, "-f", "mp3", "-q:a", "4", o]),
    ("lame", ".mp3", lambda i, o: ["--quiet", "-V", "4", i, o]),
    ("oggenc", ".ogg", lambda i, o: ["--quiet", "-q", "4", "-o", o, i]),
)


@dataclass
class Rendered:
    wav: Path
    compressed: Path | None  # None: no encoder on PATH (or every one failed)
    synth: str  # one line: what made the sound


def find_soundfont(soundfont: str | Path | None = None) -> Path | None:
    """The SoundFont to use: `soundfont`, else $GRU_BENCH_SOUNDFONT, else the first of SOUNDFONTS present."""
    given = soundfont or os.environ.get(SOUNDFONT_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            where = "--soundfont" if soundfont else SOUNDFONT_ENV
            raise UserError(f"{where} {path}: no such file; give a .sf2 General MIDI SoundFont")
        return path
    return next((Path(p) for p in SOUNDFONTS if Path(p).is_file()), None)


def _fluidsynth_available() -> bool:
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth; loading it also loads libfluidsynth)
    except (ImportError, OSError):
        return False
    return True


def synthesize(
    pm: pretty_midi.PrettyMIDI, soundfont: str | Path | None = None, fs: int = SAMPLE_RATE
) -> tuple[np.ndarray, str]:
    """(int16 mono samples, one line saying how): FluidSynth with a SoundFont when both exist, else sines."""
    sf2 = find_soundfont(soundfont)
    if sf2 is not None and _fluidsynth_available():
        audio, how = pm.fluidsynth(fs=fs, synthesizer=str(sf2)), f"FluidSynth with {sf2}"
    else:
        missing = "a General MIDI SoundFont" if sf2 is None else "pyfluidsynth + libfluidsynth"
        audio = pm.synthesize(fs=fs)
        how = f"pretty_midi's sine synthesis (for a piano install FluidSynth: {missing} not found)"
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return (audio / (peak or 1.0) * 0.9 * 32767).astype(np.int16), how


def encode(wav: Path) -> Path | None:
    """A compressed copy of `wav` beside it (atomically), by the first encoder on PATH that succeeds."""
    for program, suffix, args in ENCODERS:
        exe = shutil.which(program)
        if exe is None:
            continue
        out = wav.with_suffix(suffix)
        fd, tmp = tempfile.mkstemp(dir=wav.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            done = subprocess.run([exe, *args(str(wav), tmp)], capture_output=True, timeout=600)
            if done.returncode == 0 and os.path.getsize(tmp) > 0:
                os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would make the file private
                os.replace(tmp, out)
                return out
        except (OSError, subprocess.SubprocessError):
            pass  # try the next encoder
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return None


def render(
    midi: str | Path,
    wav: str | Path | None = None,
    soundfont: str | Path | None = None,
    compress: bool = True,
    fs: int = SAMPLE_RATE,
) -> Rendered:
    """Render a MIDI file to `wav` (default: beside it, suffix .wav) and, if `compress`, to .mp3/.ogg."""
    midi = Path(midi)
    wav = Path(wav) if wav is not None else midi.with_suffix(".wav")
    try:
        pm = pretty_midi.PrettyMIDI(str(midi))
    except FileNotFoundError:
        raise UserError(
            f"{midi} not found: give a MIDI file (e.g. one written by gru-bench sample)"
        ) from None
    except Exception as e:  # mido/pretty_midi raise several types for a file that is not MIDI
        raise UserError(f"{midi} is not a readable MIDI file ({type(e).__name__}: {e})") from None
    samples, how = synthesize(pm, soundfont, fs)
    with atomic_write(wav) as f:
        wavfile.write(f, fs, samples)
    return Rendered(wav, encode(wav) if compress else None, how)
