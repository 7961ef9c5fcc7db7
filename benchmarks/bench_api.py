"""Load-test ``resrec serve`` on loopback: recommendation requests per second and latency.

Starts the server as a subprocess on 127.0.0.1 (a free port), waits until
every worker has started, then keeps ``--connections`` clients busy with
``GET /api/users/{user_id}/recommendations?n=10`` for random users, each on a
keep-alive HTTP/1.1 connection that it replaces with a new one after
``--per-connection`` requests (100), until
``--requests`` have been answered or ``--seconds`` have passed (both bounded).
Prints requests/s, latency percentiles and the number of errors (target:
>= 500 requests/s with p99 <= 50 ms and no errors, on 2 cores).

    .venv/bin/python benchmarks/bench_api.py                   # a model of ML-100K's shape
    .venv/bin/python benchmarks/bench_api.py --run runs/ml-100k-tutorial --workers 2

Without ``--run`` it first trains a ``fast``-preset model on synthetic
ratings of the chosen shape (``--users``, ``--movies``, ``--ratings``; a few
seconds for ML-100K's shape, about half a minute at ML-20M's with 2M ratings).
By default they come from resrec's MovieLens-shaped generator
(:func:`resrec.data.synth.synthesize`, as ``resrec synth``): planted low-rank
structure, long-tailed user activity and movie popularity. How many movies a
query must score exactly depends on the trained weights (see ``SideBounds`` in
``resrec/inference/side.py``), so that is the realistic case;
``--data uniform`` trains on uniformly random ratings instead, which have no
structure at all and are the worst case for the bounds. The requests go to
users drawn at random from all the known ones.

The load generator runs on the same machine as the server, so it takes part
of the same cores. The CPU time the server and the load generator spend per
request is printed too: it tells what the cores could serve when other
programs do not share them.
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
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from resrec.config import preset
from resrec.data.ratings import WHOLE_STARS, Ratings
from resrec.data.synth import synthesize
from resrec.run import save_run
from resrec.workflow import fit


def synthetic_ratings(data: str, n_users: int, n_movies: int, n_ratings: int) -> Ratings:
    """MovieLens-shaped ratings from resrec's generator, or uniformly random ones."""
    if data == "uniform":
        rng = np.random.default_rng(0)
        pairs = rng.choice(n_users * n_movies, size=n_ratings, replace=False)
        users, movies = pairs // n_movies, pairs % n_movies
        ratings = rng.integers(1, 6, size=n_ratings).astype(np.float32)
        return Ratings.from_arrays(users + 1, movies + 1, ratings, scale=WHOLE_STARS)
    # ML-20M's users have at least 20 ratings; with fewer ratings per user than that,
    # the floor drops so that half of them still follow the long-tailed activity.
    floor = max(1, min(20, n_ratings // (2 * n_users)))
    return synthesize(n_users, n_movies, n_ratings, seed=0, min_user_ratings=floor)


def synthetic_run(folder: Path, table: Ratings, epochs: int | None) -> Path:
    config = preset("fast").replace(test_fraction=0.1, threads=1)
    if epochs is not None:
        config = config.replace(epochs=epochs)
    return save_run(fit(table, config), folder / "run")


def describe(data: str, table: Ratings) -> str:
    users, per_user = np.unique(table.user_id, return_counts=True)
    kind = (
        "uniformly random ratings (no structure)"
        if data == "uniform"
        else "MovieLens-shaped synthetic ratings (resrec.data.synth, seed 0)"
    )
    return (
        f"{kind}: {len(table):,} ratings of {users.size:,} users and "
        f"{np.unique(table.movie_id).size:,} movies; ratings per user min {per_user.min()}, "
        f"median {int(np.median(per_user))}, max {per_user.max():,}"
    )


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


def sample_users(port: int, pages: int = 8) -> list[int]:
    """user_ids from ``pages`` pages of 1000 spread over every known user."""
    url = f"http://127.0.0.1:{port}/api/users"
    total = httpx.get(url, params={"limit": 1}).json()["total"]
    step = max(1000, total // pages)
    user_ids = []
    for offset in range(0, total, step):
        items = httpx.get(url, params={"limit": 1000, "offset": offset}).json()["items"]
        user_ids += [u["user_id"] for u in items]
    return user_ids


def breakdown(run: Path, user_ids: list[int], count: int = 1000) -> str:
    """CPU time per request of the server's parts, measured one at a time in this process.

    The top-N computation (:meth:`Recommender.recommend`), the response model
    and its JSON, and the FastAPI app around them (routing, parameter
    validation, the endpoint, the JSON response) with the answers computed
    beforehand, called as uvicorn calls it but without sockets or HTTP parsing.
    """
    import torch

    from resrec.api import RecommendationsOut, create_app
    from resrec.inference import Recommender

    torch.set_num_threads(1)
    rec = Recommender.load(run)
    app = create_app(rec)  # builds the top-N bounds first, as the server does
    chooser = random.Random(1)
    users = [chooser.choice(user_ids) for _ in range(count)]
    for user in users[:50]:
        rec.recommend(user, 10)
    started = time.thread_time()
    answers = [rec.recommend(user, 10) for user in users]
    top_n = (time.thread_time() - started) / count
    started = time.thread_time()
    for answer in answers:
        RecommendationsOut.model_validate(answer).model_dump_json()
    encode = (time.thread_time() - started) / count

    ready = dict(zip(users, answers, strict=True))
    rec.recommend = lambda user_id, n=10, **_: ready[user_id]  # type: ignore[method-assign]

    async def call(user: int) -> None:
        path = f"/api/users/{user}/recommendations"
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"n=10", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        }  # fmt: skip

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"status {message['status']} for user {user}")

        await app(scope, receive, send)

    async def calls() -> float:
        for user in users[:50]:
            await call(user)
        started = time.thread_time()
        for user in users:
            await call(user)
        return (time.thread_time() - started) / count

    framework = asyncio.run(calls())
    return (
        f"in one process, CPU per request: top-N {1e3 * top_n:.2f} ms; the app around it "
        f"{1e3 * framework:.2f} ms (routing, validation, endpoint; of which response model "
        f"and JSON {1e3 * encode:.2f} ms)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(run: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    """Start the server; return once every worker has started and the API answers.

    Waiting for every worker matters: the load generator opens its keep-alive
    connections at once, and a worker still loading the model would get none.
    """
    command = [sys.executable, "-m", "resrec", "-q", "serve", str(run), "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers)], stderr=subprocess.PIPE)
    started = threading.Semaphore(0)

    def relay() -> None:  # the server's log goes on to ours; count the workers started
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.buffer.write(line)
            if b"Application startup complete" in line:
                started.release()

    threading.Thread(target=relay, daemon=True).start()
    deadline = time.monotonic() + 120
    for _ in range(workers):
        if not started.acquire(timeout=max(deadline - time.monotonic(), 0)):
            process.kill()
            sys.exit(f"{workers} server worker(s) did not start within 120 s")
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("the server did not start within 120 s")


async def connection(
    port: int,
    user_ids: list[int],
    stop_at: float,
    budget: list[int],
    out: list[float],
    per_connection: int,
) -> int:
    """One client: requests one after another on a keep-alive connection, opening a new
    connection after ``per_connection`` requests; returns its errors.

    Reconnecting from time to time is what many clients do, and it spreads the
    load over the server's workers: each connection stays with the worker that
    accepted it, and eight connections that never close can all land on one.
    """
    errors = 0
    while budget[0] > 0 and time.perf_counter() < stop_at:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(per_connection):
                if budget[0] <= 0 or time.perf_counter() >= stop_at:
                    break
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
        connection(port, user_ids, stop_at, budget, latencies, args.per_connection)
        for _ in range(args.connections)
    ]
    errors = sum(await asyncio.gather(*tasks))
    return latencies, errors, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: a synthetic one)")
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--movies", type=int, default=1682)
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument(
        "--data",
        choices=["synth", "uniform"],
        default="synth",
        help="training ratings without --run: MovieLens-shaped (default) or uniformly random",
    )
    parser.add_argument(
        "--epochs", type=int, help="training epochs without --run (default: the fast preset's)"
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument(
        "--per-connection",
        type=int,
        default=100,
        help="requests on one connection before the client opens a new one",
    )
    parser.add_argument("--requests", type=int, default=10_000, help="at most this many")
    parser.add_argument("--seconds", type=float, default=30.0, help="at most this long")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the top-N computation and the app around it in this process",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            run, data = args.run, f"run {args.run}"
        else:
            started = time.perf_counter()
            table = synthetic_ratings(args.data, args.users, args.movies, args.ratings)
            data = describe(args.data, table)
            run = synthetic_run(Path(tmp), table, args.epochs)
            data += f"; fast preset, trained in {time.perf_counter() - started:.0f} s"
            del table
        port = free_port()
        server = start(run, port, args.workers)
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/api/health").json()
            user_ids = sample_users(port)
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
        parts = breakdown(run, user_ids) if args.breakdown else None

    ms = np.asarray(latencies) * 1e3
    print(f"model: {data}")
    print(
        f"{health['model']} with {health['n_users']:,} users and {health['n_movies']:,} movies; "
        f"{args.workers} server worker(s), {args.connections} clients ({args.per_connection} "
        f"requests a connection), {os.cpu_count()} "
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
    if parts is not None:
        print(f"{parts}; the rest of the server's CPU is uvicorn, HTTP and sockets")


if __name__ == "__main__":
    main()
