"""gru-bench from Python on a tiny budget: JSB, one epoch per cell, then Table 2 and a sample of each model.

    python examples/quickstart.py --source ../shared/datasets --epochs 1 --out /tmp/quickstart

Everything goes under --out (data/ and results/), so it can run anywhere, e.g. in CI or a notebook cell.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="folder or mirror with the dataset files (default: download)")
    parser.add_argument("--out", type=Path, default=Path("quickstart"), help="data/ and results/ go here")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=16, help="hidden units (the paper's sizes are larger)")
    args = parser.parse_args()
    os.environ["GRU_BENCH_DATA"] = str(args.out / "data")  # read at call time: set before any call
    os.environ["GRU_BENCH_RESULTS"] = str(args.out / "results")

    from gru_bench import api

    api.download("jsb", source=args.source)
    api.prepare("jsb")
    print(api.describe("jsb")[["sequences", "frames"]])

    budget = [f"training.max_epochs={args.epochs}", f"model.hidden={args.hidden}", "training.batch_size=16"]
    runs = {cell: api.train(f"jsb/{cell}", budget) for cell in ("tanh", "lstm", "gru")}
    for cell, run in runs.items():
        last = run.metrics.iloc[-1]
        test = api.evaluate(run.dir, "test")["seq"]
        print(f"{cell:5s} valid NLL {last['valid_nll_seq']:.3f}  test NLL {test:.3f} (per sequence)")

    table = api.compare()
    print(table[["dataset", "model", "n_runs", "test_seq_mean", "paper_test"]].to_string(index=False))
    for cell, run in runs.items():
        written = api.sample(run.dir, args.out / "samples" / f"jsb-{cell}.mid", steps=32, audio=True)
        print(cell, ", ".join(str(p) for p in written.values()))


if __name__ == "__main__":
    main()
