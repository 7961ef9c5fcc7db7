"""Benchmark in-process inference at ML-20M scale: top-N latency and batch scoring.

Prints the median latency of a top-10 recommendation for one user over all
movies (target: <= 5 ms) and the throughput of batch scoring, in memory and
from CSV file to CSV file (target: >= 1M pairs/s). Besides wall-clock figures
it prints CPU-time ones, which are what the code costs when other programs
share the cores.

    .venv/bin/python benchmarks/bench_inference.py            # ML-20M shape
    .venv/bin/python benchmarks/bench_inference.py --run runs/ml-1m-tutorial

Top-N is timed on a trained model, because how many movies top-N must score
exactly depends on the weights (see ``SideBounds`` in
``resrec/inference/side.py``): by default a ``tutorial`` model trained for
``--epochs`` on ``--train-ratings`` synthetic ratings of ML-20M's shape
(138,493 users, 26,744 movies), or the run given with ``--run``. It is timed
twice in the same process: scoring every movie for every query, and with the
bounds. Batch scoring costs the same for any weights, so it uses a
tutorial-shaped model with its seeded initial weights, where each user has
``--rated`` random training ratings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resrec.config import preset
from resrec.data.ratings import HALF_STARS
from resrec.ids import IdMap
from resrec.inference import Recommender
from resrec.models.base import build_model


def build(n_users: int, n_movies: int, rated: int, seed: int = 0) -> Recommender:
    config = preset("tutorial")
    model = build_model(config, n_users, n_movies, seed=seed)
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rated)
    movies = rng.integers(0, n_movies, size=users.size)
    movies[:n_movies] = np.arange(n_movies)  # every movie has a training rating
    user_map = IdMap(np.arange(1, n_users + 1), "user")
    movie_map = IdMap(np.arange(1, n_movies + 1) * 5, "movie")
    return Recommender(
        model,
        user_map,
        movie_map,
        3.5,
        HALF_STARS,
        users,
        movies,
        name="random model",
    )


def time_calls(fn: object, args: list[int], repeat: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (this thread) of each call."""
    wall, cpu = [], []
    for i in range(repeat):
        started, started_cpu = time.perf_counter(), time.thread_time()
        fn(args[i % len(args)])  # type: ignore[operator]
        wall.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return wall, cpu


def trained(args: argparse.Namespace) -> Recommender:
    """The run given with ``--run``, or a tutorial model trained on synthetic ratings."""
    if args.run is not None:
        return Recommender.load(args.run)
    from resrec.data.synth import synthesize
    from resrec.run import load_run, save_run
    from resrec.workflow import fit

    ratings = synthesize(args.users, args.movies, args.train_ratings, seed=0)
    result = fit(ratings, preset("tutorial").replace(epochs=args.epochs, threads=1))
    with tempfile.TemporaryDirectory() as tmp:
        return Recommender.from_run(load_run(save_run(result, Path(tmp) / "run")))


def bench_top_n(rec: Recommender, repeat: int) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    user_ids = [int(u) for u in rng.choice(rec.user_map.raw_ids[rec.trained_users], repeat)]
    plain = rec.recommend
    rec._use_bounds = False
    time_calls(lambda u: plain(u, n=10), user_ids, 20)  # warm up
    wall, cpu = time_calls(lambda u: plain(u, n=10), user_ids, repeat)
    report("scoring every movie", rec, wall, cpu, repeat)
    rec._use_bounds = True
    started = time.perf_counter()
    rec.prepare_top_n()
    print(f"bounds built in {time.perf_counter() - started:.2f} s")
    time_calls(lambda u: rec.recommend(u, n=10), user_ids, 20)
    wall, cpu = time_calls(lambda u: rec.recommend(u, n=10), user_ids, repeat)
    report("with bounds", rec, wall, cpu, repeat)


def report(how: str, rec: Recommender, wall: list[float], cpu: list[float], repeat: int) -> None:
    print(
        f"top-10 over {rec.n_movies:,} movies, {how}: "
        f"median {1e3 * statistics.median(wall):.2f} ms "
        f"(min {1e3 * min(wall):.2f} ms, p90 {1e3 * np.percentile(wall, 90):.2f} ms) "
        f"over {repeat} users; CPU time median {1e3 * statistics.median(cpu):.2f} ms"
    )


def bench_pairs(rec: Recommender, n_pairs: int, thread_counts: list[int]) -> None:
    rng = np.random.default_rng(2)
    users = rng.integers(0, rec.n_users, n_pairs)
    movies = rng.integers(0, rec.n_movies, n_pairs)
    for threads in thread_counts:
        torch.set_num_threads(threads)
        rec.predict_indices(users[:10_000], movies[:10_000])
        started, started_cpu = time.perf_counter(), time.process_time()
        rec.predict_indices(users, movies)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        print(
            f"batch scoring in memory, {threads} thread(s): {n_pairs / seconds:,.0f} pairs/s "
            f"({n_pairs:,} pairs in {seconds:.2f} s; {n_pairs / cpu:,.0f} pairs per CPU second)"
        )


def bench_file(rec: Recommender, n_pairs: int, thread_counts: list[int]) -> None:
    rng = np.random.default_rng(3)
    user_ids = rng.choice(rec.user_map.raw_ids, n_pairs)
    movie_ids = rng.choice(rec.movie_map.raw_ids, n_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "pairs.csv", Path(tmp) / "scores.csv"
        body = np.char.add(np.char.add(user_ids.astype(str), ","), movie_ids.astype(str))
        src.write_text("user_id,movie_id\n" + "\n".join(body.tolist()) + "\n")
        for threads in thread_counts:
            torch.set_num_threads(threads)
            started_cpu = time.process_time()
            report = rec.score_file(src, dst)
            cpu = time.process_time() - started_cpu
            print(
                f"batch scoring CSV to CSV, {threads} torch thread(s): "
                f"{report.scored / report.seconds:,.0f} pairs/s ({report.scored:,} pairs in "
                f"{report.seconds:.2f} s, {os.path.getsize(src) / 1e6:.0f} MB in, "
                f"{report.bad} bad rows; {report.scored / cpu:,.0f} pairs per CPU second)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--movies", type=int, default=26_744)
    parser.add_argument("--run", type=Path, help="time top-N on this run instead")
    parser.add_argument("--train-ratings", type=int, default=3_000_000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the top-N model")
    parser.add_argument("--rated", type=int, default=20, help="training ratings per user")
    parser.add_argument("--repeat", type=int, default=300, help="users timed for top-N")
    parser.add_argument("--pairs", type=int, default=2_000_000, help="pairs scored in memory")
    parser.add_argument("--file-pairs", type=int, default=1_000_000, help="pairs in the CSV")
    parser.add_argument(
        "--only", choices=["top-n", "pairs", "file"], help="run one of the three benchmarks"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1], help="torch thread counts to try"
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")

    if args.only in (None, "top-n"):
        started = time.perf_counter()
        rec = trained(args)
        print(
            f"top-N model: {rec.kind}, {rec.n_users:,} users, {rec.n_movies:,} movies "
            f"({'--run ' + str(args.run) if args.run else 'tutorial preset, synthetic ratings'}"
            f"); ready in {time.perf_counter() - started:.1f} s"
        )
        bench_top_n(rec, args.repeat)
    if args.only in (None, "pairs", "file"):
        started = time.perf_counter()
        rec = build(args.users, args.movies, args.rated)
        print(
            f"random tutorial-shaped model: {args.users:,} users, {args.movies:,} movies, "
            f"K=10, 400 ELU units; built in {time.perf_counter() - started:.1f} s"
        )
    if args.only in (None, "pairs"):
        bench_pairs(rec, args.pairs, args.threads)
    if args.only in (None, "file"):
        bench_file(rec, args.file_pairs, args.threads)


if __name__ == "__main__":
    main()
