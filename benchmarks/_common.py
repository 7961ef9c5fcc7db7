"""Shared helpers of the benchmark scripts: the machine header, timers, test data.

The scripts print what they measured and on what; they are run by hand, not in
CI. On a machine shared with other programs the wall-clock figures drop while
the CPU-time figures (time this process spent on a core) barely move, so both
are printed; compare figures taken within one run.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from resrec.allocator import keep_freed_memory
from resrec.train.trainer import Examples

ML20M_USERS = 138_493
ML20M_MOVIES = 26_744
ML20M_RATINGS = 20_000_263
ML20M_TRAIN = 16_000_210  # 80% of ML-20M, the tutorial's training split


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(title: str) -> None:
    """Print the benchmark's title and the machine it runs on.

    Also applies the allocator settings the ``resrec`` command uses
    (:func:`resrec.allocator.keep_freed_memory`), so figures are the command's.
    """
    kept = keep_freed_memory()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {title}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} cores, load average {load}")
    print(
        f"# python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads by default), numpy {np.__version__}, "
        f"freed memory kept: {'yes' if kept else 'no'}"
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """Measure wall-clock and process CPU seconds of the ``with`` body."""
    timing = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield timing
    finally:
        timing.wall = time.perf_counter() - wall
        timing.cpu = time.process_time() - cpu


def best_of(repeats: int, run: Callable[[], object]) -> Timing:
    """The fastest of ``repeats`` runs, by wall clock (its CPU time alongside)."""
    best = Timing(float("inf"), float("inf"))
    for _ in range(repeats):
        with timed() as t:
            run()
        if t.wall < best.wall:
            best = t
    return best


def synthetic_examples(
    n: int, n_users: int = ML20M_USERS, n_movies: int = ML20M_MOVIES, seed: int = 0
) -> Examples:
    """``n`` random training examples shaped like ML-20M's: uniform users, skewed movies.

    Movie popularity is Zipf-like (a few movies take most ratings), which is
    what makes duplicate rows within a batch common, as in MovieLens.
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n, dtype=np.int64)
    movies = np.minimum((rng.pareto(1.2, n) * 40).astype(np.int64), n_movies - 1)
    ratings = rng.integers(1, 11, n).astype(np.float32) / 2
    return Examples.from_numpy(users, movies, ratings)


def matmul_gflops(k: int, hidden: int, rows: int, seconds: float = 0.5) -> float:
    """float32 GFLOP/s of the side branch's three products for ``rows`` ratings at a time."""
    x = torch.randn(rows, 2 * k + 1)
    w = torch.randn(2 * k + 1, hidden)
    d = torch.randn(rows, hidden)
    h, gw, dx = (
        torch.empty(rows, hidden),
        torch.empty(2 * k + 1, hidden),
        torch.empty(rows, 2 * k + 1),
    )

    def three() -> None:
        torch.mm(x, w, out=h)
        torch.mm(x.t(), d, out=gw)
        torch.mm(d, w.t(), out=dx)

    three()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        three()
        calls += 1
    elapsed = time.perf_counter() - started
    return calls * 3 * 2 * rows * (2 * k + 1) * hidden / elapsed / 1e9


def side_flops_per_rating(k: int, hidden: int) -> int:
    """Multiply-adds x 2 of the side branch's forward and backward matrix products."""
    return 3 * 2 * (2 * k + 1) * max(hidden, 1)
