"""Time to accuracy: how soon the fast preset reaches the tutorial preset's final test RMSE.

Trains the ``tutorial`` preset for its 15 epochs, takes its final test RMSE as
the target, then trains ``fast`` and reports, for each, the wall-clock and CPU
time from the start of :func:`resrec.workflow.fit` to the end of the first
epoch whose test RMSE is at or below the target (each epoch's evaluation
included). Both runs use the same data, split and seed, and the thread count
each preset gets by default.

    .venv/bin/python benchmarks/bench_time_to_accuracy.py            # ML-1M
    .venv/bin/python benchmarks/bench_time_to_accuracy.py --ratings /tmp/ml20m-synth/ratings.csv

ML-1M is read from ``$RESREC_DATA_DIR/ml-1m/`` (never copied anywhere).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import header
from resrec.config import preset
from resrec.data import read_ratings
from resrec.workflow import Encoded, encode_ratings, fit


def curve(encoded: Encoded, name: str, epochs: int | None) -> list[tuple[int, float, float, float]]:
    """(epoch, test RMSE, wall seconds, CPU seconds) after each epoch."""
    config = preset(name)
    if epochs:
        config = config.replace(epochs=epochs)
    points: list[tuple[int, float, float, float]] = []
    wall, cpu = time.perf_counter(), time.process_time()

    def on_epoch(record: dict[str, float]) -> None:
        points.append(
            (
                int(record["epoch"]),
                record["test_rmse"],
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
        )
        print(
            f"  {name} epoch {points[-1][0]:2d}: test RMSE {points[-1][1]:.4f} "
            f"at {points[-1][2]:7.1f} s wall, {points[-1][3]:7.1f} s CPU",
            flush=True,
        )

    fit(encoded, config, on_epoch=on_epoch)
    return points


def first_at(points: list[tuple[int, float, float, float]], target: float) -> tuple | None:
    return next((p for p in points if p[1] <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("RESREC_DATA_DIR", "../shared/data"))
    parser.add_argument(
        "--ratings", type=Path, default=default / "ml-1m" / "ratings_no_timestamps.dat.gz"
    )
    parser.add_argument("--tutorial-epochs", type=int, help="fewer epochs, for a quick look")
    args = parser.parse_args()

    header(f"time to the tutorial preset's final test RMSE on {args.ratings}")
    encoded = encode_ratings(read_ratings(args.ratings))
    print(f"# {len(encoded.ratings):,} ratings")
    fit(encoded, preset("fast").replace(epochs=1))  # warm-up: first calls pay one-off costs

    tutorial = curve(encoded, "tutorial", args.tutorial_epochs)
    target = tutorial[-1][1]
    fast = curve(encoded, "fast", None)

    print(f"target: the tutorial's final test RMSE {target:.4f}")
    print("preset    epoch  test RMSE  seconds (wall)  seconds (CPU)")
    reached = {}
    for name, points in (("tutorial", tutorial), ("fast", fast)):
        hit = first_at(points, target)
        reached[name] = hit
        if hit is None:
            best = min(p[1] for p in points)
            print(f"{name:9s}  never  (best {best:.4f} after {points[-1][2]:.1f} s)")
        else:
            print(f"{name:9s} {hit[0]:5d}  {hit[1]:9.4f}  {hit[2]:14.1f}  {hit[3]:13.1f}")
    if reached["tutorial"] and reached["fast"]:
        wall = reached["tutorial"][2] / reached["fast"][2]
        cpu = reached["tutorial"][3] / reached["fast"][3]
        print(f"fast reaches it {wall:.1f}x sooner by wall clock, {cpu:.1f}x by CPU time")


if __name__ == "__main__":
    main()
