"""The `gru-bench` command line: a thin layer over the library; every command calls one library function."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from gru_bench import paths
from gru_bench.console import console
from gru_bench.errors import UserError
from gru_bench.paper import LR_SEARCH_LOG_RANGE, LR_SEARCH_TRIALS

app = typer.Typer(
    help="Reproduce Chung et al. (2014): tanh-RNN vs LSTM vs GRU on polyphonic music.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Download, prepare and describe the datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def friendly(fn: Callable) -> Callable:
    """Turn UserError into a one-line message and Ctrl-C into a clean exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:  # training's Interrupted says how to continue
            typer.secho(str(e) or "interrupted", fg=typer.colors.YELLOW, err=True)
            sys.exit(130)

    return wrapper


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    data_dir: Path | None = typer.Option(
        None, envvar=paths.DATA_ENV, help="Root of downloads and prepared data (default: ./data)."
    ),
    results_dir: Path | None = typer.Option(
        None, envvar=paths.RESULTS_ENV, help="Root of runs, searches and reports (default: ./results)."
    ),
    show_paths: bool = typer.Option(
        False, "--paths", help="Print the data, results and shipped-configs folders in use, and exit."
    ),
) -> None:
    """Global options; they set the environment variables, so sweep workers use the same folders."""
    from gru_bench.config import exact_mkl

    exact_mkl()  # before any MKL call of this process; sweep workers inherit it
    for env, value in ((paths.DATA_ENV, data_dir), (paths.RESULTS_ENV, results_dir)):
        if value is not None:
            os.environ[env] = str(value.expanduser().resolve())
    if show_paths:
        for what, path in (("data", paths.data_dir()), ("results", paths.results_dir())):
            typer.echo(f"{what:8s} {path.resolve()}")
        typer.echo(f"configs  {paths.configs_dir()}  (sweeps: {paths.configs_dir() / 'sweeps'})")
    elif ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


# --- data (download / prepare / info) -------------------------------------------------------------


@data_app.command("download")
@friendly
def data_download(
    name: str = typer.Argument(..., help="jsb, nottingham, musedata, piano-midi or 'all'."),
    source: str | None = typer.Option(
        None,
        help="Take the files only from this folder (searched recursively by file name) or mirror "
        "base URL, e.g. ../shared/datasets.",
    ),
    allow_unknown_hash: bool = typer.Option(
        False, "--allow-unknown-hash", help="Keep files whose sha256 is not a known one (with a warning)."
    ),
) -> None:
    """Download the dataset files into data/raw/<name>/ (or copy them from --source), checking each sha256."""
    from gru_bench.data.download import download

    download(name, source=source, allow_unknown_hash=allow_unknown_hash)


@data_app.command("prepare")
@friendly
def data_prepare(
    name: str = typer.Argument(..., help="jsb, nottingham, musedata, piano-midi, 'all', or a MIDI folder."),
    from_midi: bool = typer.Option(False, "--from-midi", help="Build the rolls from MIDI (route 'midi')."),
    transpose: str = typer.Option("estimate", help="MIDI route: 'estimate' (key -> C) or 'none'."),
    out_name: str | None = typer.Option(
        None, "--name", help="Folder only: dataset name (default: the folder's name)."
    ),
    frame: str | None = typer.Option(None, help="Folder only: 'eighth' or 'quarter120' (default: eighth)."),
    valid_ratio: float | None = typer.Option(
        None, help="Folder only, without train/valid/test subfolders: share of files for valid (default 0.1)."
    ),
    test_ratio: float | None = typer.Option(
        None, help="Folder only, without train/valid/test subfolders: share of files for test (default 0.1)."
    ),
    seed: int | None = typer.Option(None, help="Folder only: seed of the random split (default 0)."),
) -> None:
    """Turn downloaded files (or a folder of MIDI files) into checked piano rolls under data/processed."""
    from gru_bench.data.prepare import prepare
    from gru_bench.data.registry import DATASETS

    names = list(DATASETS) if name.strip().lower() == "all" else [name]
    for n in names:
        path = prepare(
            n,
            from_midi=from_midi,
            transpose=transpose,
            echo=typer.echo,
            out_name=out_name,
            frame=frame,
            valid_ratio=valid_ratio,
            test_ratio=test_ratio,
            seed=seed,
        )
        typer.echo(f"{n}: wrote {path}")


@data_app.command("info")
@friendly
def data_info(
    name: str = typer.Argument(..., help="A prepared dataset, or the name of a prepared MIDI folder."),
    from_midi: bool = typer.Option(False, "--from-midi", help="Describe the MIDI route, not the reference."),
) -> None:
    """Per-split statistics of a prepared dataset (or `all` prepared ones) and the independent-Bernoulli
    baseline NLL."""
    from gru_bench.data import DATASETS, resolve
    from gru_bench.data.stats import info

    route = "midi" if from_midi else "reference"
    names = [n for n in DATASETS if resolve(n, route).path.is_file()] if name == "all" else [name]
    if not names:
        raise UserError(
            f"data info all: no dataset is prepared ({route} route); run 'gru-bench data prepare all'"
        )
    for n in names:
        console().print(info(n, from_midi=from_midi))


# --- train / evaluate ---------------------------------------------------------------------------------


@app.command("train")
@friendly
def train_cmd(
    config: str | None = typer.Argument(
        None, help="Config YAML, or <dataset>/<cell> for configs/<dataset>/<cell>.yaml (e.g. jsb/gru)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set training.lr=3e-4 (YAML value; repeatable)."
    ),
    seed: int | None = typer.Option(None, help="training.seed"),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds trained in lockstep, e.g. 1,2,3."),
    lr: float | None = typer.Option(None, help="training.lr"),
    epochs: int | None = typer.Option(None, help="training.max_epochs"),
    device: str | None = typer.Option(None, help="training.device: auto, cpu or cuda."),
    name: str | None = typer.Option(None, help="run.name (default: seed<seed>, or seed<seed>-<hash>)."),
    out: str | None = typer.Option(
        None, help="run.out_dir: runs go to OUT/<dataset>/<cell>/<name> (default: results/runs)."
    ),
    resume: list[Path] = typer.Option(
        [],
        help="Continue the run in this folder where it stopped "
        "(repeatable: a lockstep group resumes together).",
    ),
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Start an unfinished run over (e.g. its last.pt is damaged); never a finished one.",
    ),
    rebuild: Path | None = typer.Option(
        None,
        help="Recreate a finished run's missing best.pt/last.pt (same config and seed; numbers checked).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a model (or a lockstep stack of seeds); checkpoints every epoch, Ctrl-C safe (--resume)."""
    from gru_bench.config import parse_seeds
    from gru_bench.training.trainer import train_command

    if rebuild is not None:
        from gru_bench.training.rundir import rebuild as rebuild_run

        if (
            config
            or set_
            or resume
            or restart
            or any(v is not None for v in (seed, seeds, lr, epochs, name, out))
        ):
            raise UserError("--rebuild RUN_DIR takes no other option (it retrains the run's own config.yaml)")
        rebuild_run(rebuild, quiet=quiet)
        typer.echo(f"{rebuild}: rebuilt best.pt and last.pt (metrics.csv reproduced)")
        return
    if seed is not None and seeds:
        raise UserError(f"--seed {seed} and --seeds {seeds}: give one of them")
    typed = {
        "training.seed": ("--seed", seed),
        "training.lr": ("--lr", lr),
        "training.max_epochs": ("--epochs", epochs),
        "training.device": ("--device", device),
        "run.name": ("--name", name),
        "run.out_dir": ("--out", out),
    }
    labels = {f"{k}={v}": f"{opt} {v}" for k, (opt, v) in typed.items() if v is not None}
    overrides = [*set_, *labels]
    summaries = train_command(
        config,
        overrides,
        parse_seeds(seeds) if seeds else None,
        resume,
        quiet=quiet,
        restart=restart,
        labels=labels,
    )
    for s in summaries:
        test = f"{s['test_nll']:.4f}" if s["test_nll"] is not None else "-"
        typer.echo(
            f"{s['dataset']}/{s['cell']}/{s['run_name']}: {s['status']}, best valid "
            f"{s['best_valid_nll'] or float('nan'):.4f} @ epoch {s['best_epoch']}, test {test} "
            f"({s['params']} params)"
        )


@app.command("evaluate")
@friendly
def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (results/runs/<dataset>/<cell>/<run>)."),
    split: str = typer.Option("test", help="train, valid or test."),
    which: str = typer.Option("best", help="best (best valid NLL) or last checkpoint."),
) -> None:
    """Recompute the NLL per frame (nats) of a saved model on a split."""
    from gru_bench.training.trainer import evaluate

    nll = evaluate(run_dir, split, which)
    typer.echo(
        f"{run_dir} {which} {split} NLL: {nll.seq[0]:.4f} per sequence (the paper's metric), "
        f"{nll.frame[0]:.4f} per frame"
    )


# --- compare / sample -----------------------------------------------------------------------------------


@app.command("compare")
@friendly
def compare_cmd(
    results: Path | None = typer.Argument(
        None, help="Folder holding runs/, as written by train/sweep (default: $GRU_BENCH_RESULTS or results)."
    ),
    out: Path | None = typer.Option(None, help="Where the report goes (default: RESULTS/report)."),
    configs: Path | None = typer.Option(
        None,
        help="Folder of cell configs: a cell's table group is its runs "
        "matching <dataset>/<cell>.yaml there (else its largest group) "
        "(default: the repository's configs/).",
    ),
    readme: list[Path] | None = typer.Option(
        None,
        "--readme",
        help="Markdown file (repeatable) whose <!-- gru-bench:NAME --> blocks are rewritten from the "
        "report and RESULTS/bench/bench.csv.",
    ),
) -> None:
    """Table 2 beside the paper (mean ± std over seeds), learning-curve figures, and every left-out run."""
    from gru_bench.paths import results_dir, runs_root

    root = runs_root(results or results_dir())  # a wrong path is refused before the slow imports
    typer.echo(f"reading the runs under {root} ...")

    from rich.markdown import Markdown

    from gru_bench.config import CONFIGS_DIR
    from gru_bench.report.tables import compare

    report_dir = compare(results or results_dir(), out, configs or CONFIGS_DIR)
    console().print(Markdown((report_dir / "table2.md").read_text()))
    typer.echo(f"wrote {report_dir}/")
    if readme:
        from gru_bench.report.readme import update_files

        bench_csv = (results or results_dir()) / "bench" / "bench.csv"
        for path in update_files(readme, report_dir, bench_csv):
            typer.echo(f"updated {path}")


@app.command("sample")
@friendly
def sample_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (results/runs/<dataset>/<cell>/<run>)."),
    steps: int = typer.Option(200, help="Frames to sample (after the primer)."),
    out: Path = typer.Option(Path("sample.mid"), help="MIDI file to write; a piano roll .png goes beside."),
    temperature: float = typer.Option(1.0, help="Divides the logits: <1 safer, >1 wilder, 0 likeliest."),
    primer: int = typer.Option(0, help="Start with this many frames of a test-set piece (chosen by --seed)."),
    seed: int = typer.Option(0, help="Seed of the note draws and of the primer choice."),
    which: str = typer.Option("best", help="Checkpoint: best (best valid NLL) or last."),
    audio: bool = typer.Option(
        False, "--audio", help="Also render a .wav (and .mp3/.ogg if ffmpeg, lame or oggenc is on PATH)."
    ),
    soundfont: Path | None = typer.Option(
        None,
        help="--audio: General MIDI .sf2 for FluidSynth (default: $GRU_BENCH_SOUNDFONT, else the system's).",
    ),
) -> None:
    """Let a trained model compose: Bernoulli draws per note, frame by frame, written as MIDI + piano roll."""
    from gru_bench.report.samples import sample

    path = sample(
        run_dir, steps=steps, out=out, temperature=temperature, primer=primer, seed=seed, which=which
    )
    typer.echo(f"wrote {path} and {path.with_suffix('.png')}")
    if audio:
        from gru_bench.report.audio import render

        sound = render(path, soundfont=soundfont)
        typer.echo(f"wrote {sound.wav}{f' and {sound.compressed}' * bool(sound.compressed)} ({sound.synth})")


# --- bench ------------------------------------------------------------------------------------------------


@app.command("bench")
@friendly
def bench_cmd(
    cells: str = typer.Option("gru", help="Comma-separated cells (tanh, lstm, gru)."),
    impls: str = typer.Option("paper,fused", help="Comma-separated implementations (paper, fused)."),
    batch_sizes: str = typer.Option("1,8,32", help="Comma-separated batch sizes."),
    lengths: str = typer.Option("60,250", help="Comma-separated sequence lengths (time steps per update)."),
    hidden: str = typer.Option(
        "", help="Comma-separated hidden sizes, e.g. 46,128,256,512 (default: paper's)."
    ),
    fast: str = typer.Option("on", help="Our update with the numba kernels (on) and/or pure torch (off)."),
    jax: bool = typer.Option(True, "--jax/--no-jax", help="Time the JAX peer (GRU) when JAX is installed."),
    dataset: str | None = typer.Option(
        None,
        help="Time whole epochs of this dataset at batch 1 instead (e.g. jsb; weight noise, evaluation).",
    ),
    repeats: int = typer.Option(
        5, help="Timed updates (epochs with --dataset) per setting; medians reported."
    ),
    warmup: int = typer.Option(
        2, help="Untimed updates first (they also compile the numba kernels and jit)."
    ),
    threads: int = typer.Option(1, help="torch.set_num_threads during the benchmark."),
    k: int = typer.Option(
        1, "--lockstep-k", help="Also time stacks of this many models in lockstep (1: off)."
    ),
    out: Path | None = typer.Option(
        None, help="CSV to write (default: RESULTS/bench/bench.csv, or RESULTS/bench/epoch_<dataset>.csv)."
    ),
    figure: bool = typer.Option(True, help="Also plot the grid (the CSV's name, .png and .svg)."),
) -> None:
    """Training speed of our update against torch.nn and JAX, interleaved; shares of the matmul peak."""
    from gru_bench.config import parse_ints
    from gru_bench.experiments.bench import epoch_table, plot, run_bench, run_epoch_bench, table
    from gru_bench.paths import results_dir

    if dataset:
        out = out or results_dir() / "bench" / f"epoch_{dataset}.csv"
        hs = parse_ints(hidden, "--hidden") if hidden else [46]
        df = run_epoch_bench(dataset, repeats, hs[0], threads=threads, jax=jax, out=out)
        console().print(epoch_table(df))
        typer.echo(f"wrote {out}")
        return
    out = out or results_dir() / "bench" / "bench.csv"
    df = run_bench(
        cells.split(","),
        impls.split(","),
        parse_ints(batch_sizes, "--batch-sizes"),
        parse_ints(lengths, "--lengths"),
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        lockstep_k=k,
        out=out,
        progress=True,
        hidden=parse_ints(hidden, "--hidden") if hidden else (),
        fast=fast.split(","),
        jax=jax,
    )
    console().print(table(df))
    if figure:
        plot(df, out.with_suffix(""))
    typer.echo(f"wrote {out}")


# --- search / sweep -------------------------------------------------------------------------------------

_WORKERS = typer.Option(None, help="Tasks (runs or lockstep groups) at once (default: CPUs; Ray: no limit).")
_BACKEND = typer.Option("local", help="local (worker processes) or ray (needs: pip install ray).")
_ADDRESS = typer.Option(None, help="Ray cluster address, e.g. ray://head:10001 (default: start a local Ray).")


def _print_failures(failed: dict[str, str]) -> None:
    from rich.table import Table

    table = Table("run", "error", title=f"{len(failed)} run(s) not finished (run the command again to retry)")
    for run, error in sorted(failed.items()):
        table.add_row(run, error)
    console(stderr=True).print(table)


@app.command("sweep")
@friendly
def sweep_cmd(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML, e.g. configs/sweeps/reproduce.yaml."),
    workers: int | None = _WORKERS,
    backend: str = _BACKEND,
    address: str | None = _ADDRESS,
    k: int | None = typer.Option(
        None, "--lockstep", help="Runs per stacked model (default: the file's, else 3)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and what would happen to each."),
    datasets: str | None = typer.Option(None, help="Only these of the file's datasets, e.g. jsb,piano-midi."),
) -> None:
    """Train a grid of runs; finished runs are skipped, interrupted ones resumed, failed ones retried."""
    from gru_bench.experiments import sweep

    plan = sweep.load_sweep(sweep_file)
    if datasets:
        plan.datasets = sweep.only_datasets(plan, datasets)
    if dry_run:
        for run, what in sweep.preview(plan):
            typer.echo(f"{run:55s} {what}")
        return
    result = sweep.run_sweep(plan, workers=workers, backend=backend, address=address, k=k)
    for line in result.waiting:
        typer.secho(line, fg=typer.colors.YELLOW, err=True)
    if result.failed:
        _print_failures(result.failed)
    if result.failed or result.waiting:
        sys.exit(1)
    typer.echo(f"sweep complete: {len(result.outcomes)} run(s)")


@app.command("ablation")
@friendly
def ablation_cmd(
    sweep_file: Path = typer.Argument(..., help="A sweep with variants, e.g. configs/sweeps/ablation.yaml."),
    out: Path | None = typer.Option(None, help="Folder for <sweep>.md/.csv (default: results/report)."),
    baseline: str | None = typer.Option(
        None, help="The variant the others are compared with (default: first)."
    ),
) -> None:
    """Each variant of an ablation sweep against the baseline variant, paired over seeds."""
    from rich.markdown import Markdown

    from gru_bench.report.tables import write_ablation

    path = write_ablation(sweep_file, out or paths.results_dir() / "report", baseline)
    console().print(Markdown(path.read_text()))
    typer.echo(f"wrote {path} and {path.with_suffix('.csv')}")


@app.command("search")
@friendly
def search_cmd(
    config: str = typer.Argument(..., help="Config file, or <dataset>/<cell> for a shipped one."),
    trials: int = typer.Option(LR_SEARCH_TRIALS, help="Learning rates to try (the paper's number)."),
    log_lr_range: tuple[float, float] = typer.Option(LR_SEARCH_LOG_RANGE, help="Range of ln(lr)."),
    seed: int = typer.Option(0, help="Seed of the lr draws and of every trial's training."),
    name: str = typer.Option("search", help="Names the trial runs (<name>-lr<lr>-seed<seed>) and record."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for all trials, e.g. training.max_epochs=5"),
    workers: int | None = _WORKERS,
    backend: str = _BACKEND,
    address: str | None = _ADDRESS,
    k: int = typer.Option(LR_SEARCH_TRIALS, "--lockstep", help="Trials per stacked model (without pruning)."),
    prune: bool = typer.Option(True, help="Successive halving: stop the worse trials at the rung epochs."),
    rungs: str = typer.Option("10,30,90", help="Rung epochs of the pruning."),
    eta: int = typer.Option(3, help="At each rung the best 1/eta of the trials go on."),
) -> None:
    """The paper's learning-rate search: train each sampled lr, keep the best validation NLL."""
    from gru_bench.config import parse_ints
    from gru_bench.experiments.search import Halving, search

    rec = search(
        config,
        trials=trials,
        log_lr_range=log_lr_range,
        seed=seed,
        overrides=tuple(set_),
        name=name,
        workers=workers,
        backend=backend,
        address=address,
        k=k,
        prune=Halving(tuple(parse_ints(rungs, "--rungs")), eta) if prune else None,
    )
    for t in rec["trials"]:
        valid = "-" if t["best_valid_nll"] is None else f"{t['best_valid_nll']:.4f}"
        mark = "*" if t["chosen"] else " "
        typer.echo(f"{mark} trial {t['trial']:2d}  lr {t['lr']:.3e}  valid {valid:>8s}  {t['status']}")
    failed = {
        t["run"]: t["error"] or t["status"]
        for t in rec["trials"]
        if t["status"] not in ("complete", "stopped_nan", "pruned")
    }
    if failed:
        _print_failures(failed)
        sys.exit(1)
    chosen = rec["chosen"]
    if chosen:
        typer.echo(
            f"chosen: lr {chosen['lr']:.3e} (trial {chosen['trial']}, "
            f"valid NLL {chosen['best_valid_nll']:.4f})"
        )
    else:
        typer.echo(f"no usable trial: {rec['status']}")


if __name__ == "__main__":
    app()
