"""`make samples RUNS="..."`: one sample per run folder, to hear tanh, LSTM and GRU side by side.

    python scripts/samples.py results/runs/jsb/{tanh,lstm,gru}/seed0 [--out results/samples]

writes <out>/<dataset>-<cell>-<run name>.mid, .png (piano roll), .wav and, when ffmpeg, lame or oggenc is on
PATH, .mp3 or .ogg; the runs need their best.pt (checkpoints are not committed: train or copy them first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gru_bench import api
from gru_bench.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results/runs/<dataset>/<cell>/<run> folders")
    parser.add_argument("--out", type=Path, default=None, help="default: $GRU_BENCH_RESULTS/samples")
    parser.add_argument("--steps", type=int, default=200, help="frames to sample per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the note draws")
    args = parser.parse_args()
    try:
        for written in api.render_samples(args.runs, args.out, steps=args.steps, seed=args.seed):
            print("wrote " + ", ".join(str(p) for p in written.values()))
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
