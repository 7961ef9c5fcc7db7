"""Load-test ``resrec serve`` on loopback: recommendation requests per second and latency.

Starts the server as a subprocess on 127.0.0.1 (a free port), then keeps
``--connections`` keep-alive HTTP/1.1 connections busy with
``GET /api/users/{user_id}/recommendations?n=10`` for random users, until
``--requests`` have been answered or ``--seconds`` have passed (both bounded).
Prints requests/s, latency percentiles and the number of errors (target:
>= 500 requests/s with p99 <= 50 ms and no errors, on 2 cores).

    .venv/bin/python benchmarks/bench_api.py                   # a model of ML-100K's shape
    .venv/bin/python benchmarks/bench_api.py --run runs/ml-100k-tutorial --workers 2

Without ``--run`` it trains a one-epoch model on synthetic ratings of the
chosen shape first (a few seconds). The load generator runs on the same
machine as the server, so it takes part of the same cores. The CPU time the
server and the load generator spend per request is printed too: it tells what
the cores could serve when other programs do not share them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from resrec.config import preset
from resrec.data.ratings import WHOLE_STARS, Ratings
from resrec.run import save_run
from resrec.workflow import fit


def synthetic_run(folder: Path, n_users: int, n_movies: int, n_ratings: int) -> Path:
    rng = np.random.default_rng(0)
    pairs = rng.choice(n_users * n_movies, size=n_ratings, replace=False)
    users, movies = pairs // n_movies, pairs % n_movies
    ratings = rng.integers(1, 6, size=n_ratings).astype(np.float32)
    table = Ratings.from_arrays(users + 1, movies + 1, ratings, scale=WHOLE_STARS)
    config = preset("fast").replace(epochs=1, test_fraction=0.1, threads=1)
    return save_run(fit(table, config), folder / "run")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and its descendants (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(run: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "resrec", "-q", "serve", str(run), "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("the server did not start within 120 s")


async def connection(
    port: int, user_ids: list[int], stop_at: float, budget: list[int], out: list[float]
) -> int:
    """One keep-alive connection sending requests one after another; returns its errors."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while budget[0] > 0 and time.perf_counter() < stop_at:
            budget[0] -= 1
            user = random.choice(user_ids)
            request = (
                f"GET /api/users/{user}/recommendations?n=10 HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n\r\n"
            )
            started = time.perf_counter()
            writer.write(request.encode())
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            out.append(time.perf_counter() - started)
            if b" 200 " not in status_line:
                errors += 1
    finally:
        writer.close()
    return errors


async def load(
    port: int, user_ids: list[int], args: argparse.Namespace
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    budget = [args.requests]
    started = time.perf_counter()
    stop_at = started + args.seconds
    tasks = [
        connection(port, user_ids, stop_at, budget, latencies) for _ in range(args.connections)
    ]
    errors = sum(await asyncio.gather(*tasks))
    return latencies, errors, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: a synthetic one)")
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--movies", type=int, default=1682)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--requests", type=int, default=10_000, help="at most this many")
    parser.add_argument("--seconds", type=float, default=30.0, help="at most this long")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or synthetic_run(Path(tmp), args.users, args.movies, args.ratings)
        port = free_port()
        server = start(run, port, args.workers)
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/api/health").json()
            users = httpx.get(f"http://127.0.0.1:{port}/api/users?limit=1000").json()["items"]
            user_ids = [u["user_id"] for u in users]
            warm = argparse.Namespace(**{**vars(args), "requests": 300, "seconds": 10})
            asyncio.run(load(port, user_ids, warm))
            server_cpu = tree_cpu_seconds(server.pid)
            client_cpu = time.process_time()
            latencies, errors, seconds = asyncio.run(load(port, user_ids, args))
            server_cpu = tree_cpu_seconds(server.pid) - server_cpu
            client_cpu = time.process_time() - client_cpu
        finally:
            server.terminate()
            server.wait(timeout=30)

    ms = np.asarray(latencies) * 1e3
    print(
        f"{health['model']} with {health['n_users']:,} users and {health['n_movies']:,} movies; "
        f"{args.workers} server worker(s), {args.connections} connections, {os.cpu_count()} "
        f"CPU cores, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{len(ms):,} recommendation requests in {seconds:.1f} s: {len(ms) / seconds:,.0f} req/s; "
        f"latency p50 {statistics.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms; {errors} errors"
    )
    per_request = 1e3 * server_cpu / len(ms)
    print(
        f"server CPU {per_request:.2f} ms per request, load generator "
        f"{1e3 * client_cpu / len(ms):.2f} ms: {os.cpu_count()} idle cores would serve at most "
        f"{(os.cpu_count() or 1) * 1e3 / (per_request + 1e3 * client_cpu / len(ms)):,.0f} req/s"
    )


if __name__ == "__main__":
    main()
