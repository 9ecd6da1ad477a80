"""The functions behind the command line, for notebooks and scripts: plain values and pandas DataFrames.

    from gru_bench import api

    api.download("jsb", source="../shared/datasets")    # gru-bench data download jsb --source ...
    api.prepare("jsb")                                   # gru-bench data prepare jsb
    api.describe("jsb")                                  # DataFrame, one row per split
    run = api.train("jsb/gru", ["training.max_epochs=1"])  # a Run: config, summary, metrics DataFrame
    api.evaluate(run.dir, "test")                        # {"seq": paper's metric, "frame": pooled} (nats)
    api.compare()                                        # DataFrame: Table 2 of the runs under results/
    api.sample(run.dir, "sample.mid", audio=True)        # paths of the MIDI, piano roll, WAV (+ mp3/ogg)

Folders are the CLI's: $GRU_BENCH_DATA (default ./data) and $GRU_BENCH_RESULTS (default ./results).
Bad input raises gru_bench.errors.UserError with a one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gru_bench import data, paths
from gru_bench.config import CONFIGS_DIR, Config, load_config, parse_override
from gru_bench.data.download import download
from gru_bench.data.pianoroll import PianoRolls
from gru_bench.data.prepare import prepare as _prepare
from gru_bench.data.stats import describe as _describe
from gru_bench.errors import UserError
from gru_bench.training import rundir
from gru_bench.training.trainer import evaluate as _evaluate

__all__ = [
    "Run",
    "UserError",
    "compare",
    "describe",
    "download",
    "evaluate",
    "load_config",
    "load_dataset",
    "load_run",
    "prepare",
    "render_samples",
    "report",
    "sample",
    "train",
]


def evaluate(run_dir: str | Path, split: str = "test", which: str = "best") -> dict[str, float]:
    """NLL per frame of a saved model on a split (`gru-bench evaluate`): {"seq": the mean over sequences
    (the paper's metric), "frame": all frames pooled}."""
    nll = _evaluate(run_dir, split, which)
    return {"seq": nll.seq[0], "frame": nll.frame[0]}


def prepare(name: str, from_midi: bool = False, quiet: bool = True) -> Path:
    """Turn downloaded files into piano rolls (`gru-bench data prepare`); returns the written .npz."""
    return _prepare(name, from_midi=from_midi, echo=(lambda _: None) if quiet else print)


def load_dataset(name: str, route: str | None = None) -> PianoRolls:
    """A prepared dataset: `.splits[split]` is a list of (frames, 88) bool arrays, `.names`, `.meta`.

    `route` None: reference for a registered dataset, the route it was prepared on for a MIDI folder."""
    return data.load(name, route)


def describe(name: str, route: str | None = None) -> pd.DataFrame:
    """Per-split statistics and the independent-Bernoulli baseline NLL (`gru-bench data info`)."""
    return _describe(data.load(name, route))


@dataclass
class Run:
    """A run folder as data: its resolved config, summary.json and metrics.csv (one row per epoch)."""

    dir: Path
    config: Config
    summary: dict[str, Any]
    metrics: pd.DataFrame

    def model(self, which: str = "best") -> Any:
        """The trained model (`best` or `last` checkpoint), on the CPU, in eval mode."""
        return rundir.load_run(self.dir, which)[0]


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder written by `train` or a sweep (finished or not)."""
    run_dir = Path(run_dir)
    config = rundir.run_config(run_dir)
    metrics_csv = run_dir / "metrics.csv"
    metrics = pd.read_csv(metrics_csv) if metrics_csv.is_file() else pd.DataFrame()
    return Run(run_dir, config, rundir.saved_summary(run_dir) or {}, metrics)


def train(
    config: str | Path | Config,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
) -> Run:
    """Train one model (`gru-bench train`): a config file, a shipped `<dataset>/<cell>` such as "jsb/gru",
    or a Config; `overrides` are `--set` strings such as "training.max_epochs=1". Default folder:
    results/runs/<dataset>/<cell>/<run name>."""
    from gru_bench.training.trainer import train as _train

    if isinstance(config, Config):
        cfg = config.replace(**dict(parse_override(o) for o in overrides))
    else:
        cfg = load_config(config, overrides)
    run_dir = Path(run_dir) if run_dir is not None else rundir.default_run_dir(cfg)
    _train(cfg, run_dir, resume=resume, quiet=quiet)
    return load_run(run_dir)


def compare(
    results_dir: str | Path | None = None, configs_dir: str | Path | None = CONFIGS_DIR
) -> pd.DataFrame:
    """Table 2 (mean ± std over seeds per dataset x cell, beside the paper) of the runs under
    `results_dir` (default $GRU_BENCH_RESULTS or ./results); writes nothing (more: report.build_report)."""
    from gru_bench.report.tables import build_report

    return build_report(results_dir or paths.results_dir(), configs_dir).table


def report(results_dir: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """Write the `gru-bench compare` report (tables, figures) into `out_dir` (default RESULTS/report)."""
    from gru_bench.report.tables import compare as _compare

    return _compare(results_dir or paths.results_dir(), out_dir, CONFIGS_DIR)


def sample(
    run_dir: str | Path,
    out: str | Path = "sample.mid",
    steps: int = 200,
    temperature: float = 1.0,
    primer: int = 0,
    seed: int = 0,
    which: str = "best",
    audio: bool = False,
    soundfont: str | Path | None = None,
) -> dict[str, Path]:
    """Let the run's model compose (`gru-bench sample`): returns the paths written, keys midi and png, with
    `audio` also wav and (when an encoder is on PATH) compressed."""
    from gru_bench.report.samples import sample as _sample

    midi = _sample(
        run_dir, steps=steps, out=out, temperature=temperature, primer=primer, seed=seed, which=which
    )
    written = {"midi": midi, "png": midi.with_suffix(".png")}
    if audio:
        from gru_bench.report.audio import render

        sound = render(midi, soundfont=soundfont)
        written["wav"] = sound.wav
        if sound.compressed is not None:
            written["compressed"] = sound.compressed
    return written


def render_samples(
    run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, steps: int = 200, seed: int = 0
) -> list[dict[str, Path]]:
    """One sample per run, for listening side by side (`make samples`): out_dir (default RESULTS/samples)
    gets <dataset>-<cell>-<run name>.mid, .png, .wav and, when an encoder is on PATH, .mp3 or .ogg."""
    out_dir = Path(out_dir) if out_dir is not None else paths.results_dir() / "samples"
    written = []
    for run_dir in map(Path, run_dirs):
        cfg = rundir.run_config(run_dir)
        out = out_dir / f"{cfg.dataset}-{cfg.model.cell}-{run_dir.name}.mid"
        written.append(sample(run_dir, out, steps=steps, seed=seed, audio=True))
    return written
