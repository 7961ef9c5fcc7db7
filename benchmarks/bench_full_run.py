"""A whole training run on 20M synthetic ratings: ingest, 15 epochs, evaluation; time and memory.

Writes an ML-20M-shaped synthetic ``ratings.csv`` in a child process unless
``--csv`` names one (so the generator's memory is not counted), then in this
process: reads it (a cold parse into a fresh cache folder), and trains with
:func:`resrec.workflow.fit`, which scores the test split after every epoch and
at the end. Prints the time of each phase and the process's peak resident
memory, which covers the whole run.

    .venv/bin/python benchmarks/bench_full_run.py                    # fast, 15 epochs
    .venv/bin/python benchmarks/bench_full_run.py --preset tutorial --epochs 1
    .venv/bin/python benchmarks/bench_full_run.py --csv /tmp/ml20m-synth/ratings.csv
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ML20M_RATINGS, header, peak_rss_mb, timed
from resrec.config import preset
from resrec.data import read_ratings
from resrec.workflow import fit

WRITE = (
    "import sys; from resrec.data.synth import write_synthetic_csv; "
    "write_synthetic_csv(sys.argv[1], n_ratings=int(sys.argv[2]), seed=0)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="an existing ratings.csv")
    parser.add_argument("--ratings", type=int, default=ML20M_RATINGS)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()

    header(f"whole run: {args.preset} preset, {args.epochs} epochs, synthetic ML-20M")
    with tempfile.TemporaryDirectory(prefix="resrec-bench-") as scratch:
        path = args.csv
        if path is None:
            path = Path(scratch) / "ratings.csv"
            subprocess.run([sys.executable, "-c", WRITE, str(path), str(args.ratings)], check=True)
        started = time.perf_counter()
        with timed() as read:
            ratings = read_ratings(path, cache_dir=Path(scratch) / "cache")
        print(f"ingest: {len(ratings):,} ratings in {read.wall:.1f} s", flush=True)

        def on_epoch(record: dict[str, float]) -> None:
            print(
                f"  epoch {int(record['epoch']):2d}: train {record['train_seconds']:6.1f} s, "
                f"with evaluation {record['elapsed_seconds']:6.1f} s, "
                f"test RMSE {record['test_rmse']:.4f}",
                flush=True,
            )

        config = preset(args.preset).replace(epochs=args.epochs)
        with timed() as train:
            result = fit(ratings, config, on_epoch=on_epoch)
        total = time.perf_counter() - started
    print(f"fit (split, {args.epochs} epochs, per-epoch and final evaluation): {train.wall:.1f} s")
    print(f"final test RMSE {result.metrics['test']['rmse']:.4f}")
    print(f"whole run (ingest + fit): {total:.1f} s wall, {read.cpu + train.cpu:.1f} s CPU")
    print(f"peak resident memory: {peak_rss_mb():,.0f} MiB")


if __name__ == "__main__":
    main()
