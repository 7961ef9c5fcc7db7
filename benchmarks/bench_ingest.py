"""Ingest of a 20M-row MovieLens-20M-shaped ratings.csv: cold parse and cached load.

Writes a synthetic ``ratings.csv`` (ML-20M's users, movies and 20,000,263
ratings; nothing of MovieLens itself) with :func:`resrec.data.synth.write_synthetic_csv`
unless ``--csv`` names one, then reads it with :func:`resrec.data.read_ratings`
twice into a fresh cache folder: the first read parses, validates and stores
the cache ("cold"); the second loads the cache ("cached"). The file was just
written, so it sits in the operating system's page cache for both reads.

    .venv/bin/python benchmarks/bench_ingest.py                      # 20M rows
    .venv/bin/python benchmarks/bench_ingest.py --ratings 1000000
    .venv/bin/python benchmarks/bench_ingest.py --csv /tmp/ml20m-synth/ratings.csv
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import ML20M_MOVIES, ML20M_RATINGS, ML20M_USERS, header, peak_rss_mb, timed
from resrec.data import read_ratings
from resrec.data.synth import write_synthetic_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=ML20M_RATINGS)
    parser.add_argument("--csv", type=Path, help="an existing ratings.csv to read instead")
    parser.add_argument("--keep", type=Path, help="folder to write the synthetic file into")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    header("ingest of a MovieLens-20M-shaped ratings.csv")
    with tempfile.TemporaryDirectory(prefix="resrec-bench-") as scratch:
        path = args.csv
        if path is None:
            folder = args.keep or Path(scratch)
            # Fewer ratings than ML-20M: fewer users, and fewer movies, in proportion.
            scale = min(1.0, args.ratings / ML20M_RATINGS)
            users, movies = int(ML20M_USERS * scale), int(ML20M_MOVIES * scale**0.5)
            with timed() as t:
                path = write_synthetic_csv(folder, users, movies, args.ratings, seed=0).ratings
            print(f"# wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {t.wall:.1f} s")
        size = path.stat().st_size / 1e6

        print("read     run  seconds (wall)  seconds (CPU)  rows/s       MB/s")
        for run in range(args.repeats):
            cache = Path(scratch) / f"cache-{run}"
            for kind in ("cold", "cached"):
                with timed() as t:
                    ratings = read_ratings(path, cache_dir=cache)
                n = len(ratings)
                print(
                    f"{kind:7s} {run:4d}  {t.wall:14.2f}  {t.cpu:13.2f}  "
                    f"{n / t.wall:11,.0f}  {size / t.wall:6.0f}",
                    flush=True,
                )
                del ratings
        print(f"# {n:,} rows; peak resident memory of this process {peak_rss_mb():,.0f} MiB")


if __name__ == "__main__":
    main()
