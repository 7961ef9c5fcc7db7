"""Benchmark data-parallel training: ratings per second with 1 and 2 processes.

Trains the tutorial model on MovieLens-shaped synthetic ratings (or on a file
given with ``--ratings``) and prints, for each global batch size, the
training throughput (training ratings per second of training time, without
evaluation) of:

* 1 process, the normal path (the trainer's fused CPU step where it applies);
* 1 process in a process group of one (the autograd step that distributed
  training uses, with its exchange reduced to a copy);
* N processes over loopback (gloo), each on its share of every global batch.

    .venv/bin/python benchmarks/bench_distributed.py
    .venv/bin/python benchmarks/bench_distributed.py --batch-sizes 1024,8192 --nproc 2,4
    .venv/bin/python benchmarks/bench_distributed.py --ratings ../shared/data/ml-100k/u.data

Every variant trains the same global batches. With the automatic thread
count (``--threads 0``), one process uses one thread for batches under 1,024
and all the machine's cores otherwise, and N processes on one machine share
the cores; ``--threads 1`` gives each process one core, which shows the
scaling alone (and avoids slow, oversubscribed thread pools on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from resrec.config import preset
from resrec.data.ratings import HALF_STARS, Ratings
from resrec.train import distributed


def synthetic(n_users: int, n_movies: int, n: int, seed: int = 0) -> Ratings:
    """Half-star ratings from a rank-8 structure; users and movies have long-tailed activity."""
    rng = np.random.default_rng(seed)
    p_user = 1.0 / np.arange(1, n_users + 1) ** 0.6
    p_movie = 1.0 / np.arange(1, n_movies + 1) ** 0.9
    users = rng.choice(n_users, size=2 * n, p=p_user / p_user.sum())
    movies = rng.choice(n_movies, size=2 * n, p=p_movie / p_movie.sum())
    pairs = np.unique(users.astype(np.int64) * n_movies + movies)
    pairs = rng.permutation(pairs)[:n]
    users, movies = pairs // n_movies, pairs % n_movies
    u_f, m_f = rng.normal(size=(n_users, 8)) / 3, rng.normal(size=(n_movies, 8)) / 3
    score = 3.5 + (u_f[users] * m_f[movies]).sum(1) + rng.normal(0, 0.5, users.size)
    rating = np.clip(np.round(score * 2) / 2, 0.5, 5.0)
    return Ratings.from_arrays(users + 1, movies + 1, rating, scale=HALF_STARS)


def train_once(
    data: Path, batch_size: int, epochs: int, threads: int, out: Path, group: bool
) -> None:
    """One rank's training; rank 0 writes its throughput to ``out``."""
    from resrec.workflow import fit

    process = distributed.init_process_group() if group else None
    try:
        with np.load(data) as arrays:
            ratings = Ratings.from_arrays(
                arrays["user_id"], arrays["movie_id"], arrays["rating"], scale=HALF_STARS
            )
        config = preset("tutorial").replace(
            batch_size=batch_size, epochs=epochs, threads=threads, test_fraction=0.1
        )
        result = fit(ratings, config, process=process)
        seconds = sum(row["train_seconds"] for row in result.history)
        n_train = result.metrics["split"]["sizes"]["train"]
        if process is None or process.is_main:
            out.write_text(
                json.dumps(
                    {
                        "ratings_per_s": n_train * epochs / seconds,
                        "seconds": seconds,
                        "threads": result.metrics["threads"],
                        "test_rmse": result.metrics["test"]["rmse"],
                    }
                )
            )
    finally:
        distributed.shutdown()


def measure(args: argparse.Namespace, data: Path, batch_size: int, nproc: int, group: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--worker", str(data), str(batch_size)]
        command += [str(args.epochs), str(args.threads), str(out), "group" if group else "plain"]
        status = distributed.launch_local(command, nproc) if nproc > 1 else _single(command)
        if status != 0:
            raise SystemExit(f"benchmark run failed with status {status}")
        return dict(json.loads(out.read_text()))


def _single(command: list[str]) -> int:
    import subprocess

    env = dict(os.environ)
    if "group" in command:  # a process group of one
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(distributed.free_port()))
    return subprocess.run(command, env=env).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=Path, help="a ratings file (default: synthetic)")
    parser.add_argument("--users", type=int, default=6000)
    parser.add_argument("--movies", type=int, default=4000)
    parser.add_argument("--n", type=int, default=200_000, help="synthetic ratings")
    parser.add_argument("--batch-sizes", default="128,1024,8192")
    parser.add_argument("--nproc", default="2", help="process counts besides 1, e.g. 2,4")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: automatic)"
    )
    args = parser.parse_args()

    if args.ratings is not None:
        from resrec.data import read_ratings

        ratings = read_ratings(args.ratings)
    else:
        ratings = synthetic(args.users, args.movies, args.n)
    print(
        f"{len(ratings):,} ratings, {ratings.n_users:,} users, {ratings.n_movies:,} movies; "
        f"{os.cpu_count()} CPU cores; {args.epochs} epoch(s), 90% of the ratings trained on"
    )
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "ratings.npz"
        np.savez(data, user_id=ratings.user_id, movie_id=ratings.movie_id, rating=ratings.rating)
        variants = [("1 process", 1, False), ("1 process, autograd step", 1, True)]
        variants += [(f"{n} processes", n, True) for n in map(int, args.nproc.split(","))]

        print(f"{'batch':>6}  {'variant':<26}{'ratings/s':>12}{'threads':>9}{'test RMSE':>11}")
        for batch_size in map(int, args.batch_sizes.split(",")):
            for name, nproc, group in variants:
                started = time.perf_counter()
                r = measure(args, data, batch_size, nproc, group)
                wall = time.perf_counter() - started
                print(
                    f"{batch_size:>6}  {name:<26}{r['ratings_per_s']:>12,.0f}"
                    f"{r['threads']:>9}{r['test_rmse']:>11.4f}   ({wall:.0f} s with start-up)",
                    flush=True,
                )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        data, batch, epochs, threads, out, mode = sys.argv[2:8]
        train_once(Path(data), int(batch), int(epochs), int(threads), Path(out), mode == "group")
    else:
        main()
