"""The HTTP API through a real ``resrec serve`` (uvicorn) process on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests.test_inference import UNTRAINED_USER, build_run

schemathesis: Any
try:
    import schemathesis
except ImportError:  # pragma: no cover - depends on the environment
    schemathesis = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run_dir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """``resrec serve`` on a free loopback port; returns the process and its base URL.

    The server's log goes to ``server.log`` beside the run (a pipe could fill and stall it).
    """
    port = free_port()
    command = [sys.executable, "-m", "resrec", "-q", "serve", str(run_dir), "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = run_dir.parent / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, *extra], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"resrec serve exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("resrec serve did not answer within 60 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    process, url = start_server(run_dir)
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def get(client: httpx.Client, path: str, status: int = 200, **params: Any) -> Any:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# --------------------------------------------------------------------------- endpoints


def test_health_describes_the_run(client: httpx.Client, run_dir: Path) -> None:
    health = get(client, "/api/health")
    assert health["status"] == "ok" and health["run"] == str(run_dir)
    assert health["model"] == "ResidualNet" and health["movie_metadata"] is True
    assert health["rating_scale"] == {"low": 1.0, "high": 5.0, "step": 1.0}
    assert health["known_users"] == health["n_users"] - 1  # one user has only held-out ratings


def test_openapi_schema_is_published(client: httpx.Client) -> None:
    schema = get(client, "/openapi.json")
    paths = set(schema["paths"])
    assert {
        "/api/health",
        "/api/predict",
        "/api/explain",
        "/api/users/{user_id}/recommendations",
        "/api/recommendations",
        "/api/movies/search",
        "/api/movies/{movie_id}/similar",
    } <= paths


def test_predict_and_explain(client: httpx.Client) -> None:
    prediction = get(client, "/api/predict", user_id=1, movie_id=2)
    assert prediction["movie"]["title"] == "Star Wars (1977)"
    assert 1 <= prediction["prediction"] <= 5 and prediction["explanation"] is None

    explained = get(client, "/api/explain", user_id=1, movie_id=2)
    e = explained["explanation"]
    assert e["mu"] + e["user_bias"] + e["movie_bias"] + e["dot"] + e["side"] == e["raw"]
    assert explained["prediction"] == prediction["prediction"]


def test_unknown_ids_get_404_with_a_reason(client: httpx.Client) -> None:
    error = get(client, "/api/predict", 404, user_id=424242, movie_id=2)
    assert "unknown user_id 424242" in error["detail"] and "fallback" in error["hint"]
    fallback = get(client, "/api/predict", user_id=424242, movie_id=2, fallback="true")
    assert fallback["estimate"] == "fallback" and "bias estimate" in fallback["note"]
    error = get(client, f"/api/users/{UNTRAINED_USER}/recommendations", 404)
    assert "no training ratings" in error["detail"]
    assert "no training" in get(client, "/api/movies/999/similar", 404)["detail"]
    assert "unknown movie_id" in get(client, "/api/movies/424242", 404)["detail"]


def test_user_recommendations(client: httpx.Client) -> None:
    result = get(client, "/api/users/1/recommendations", n=5, explain="true")
    assert [item["rank"] for item in result["items"]] == [1, 2, 3, 4, 5]
    assert all(item["explanation"] for item in result["items"])
    assert all(item["movie"]["known"] for item in result["items"])
    raws = [item["raw"] for item in result["items"]]
    assert raws == sorted(raws, reverse=True)


def test_new_user_recommendations(client: httpx.Client) -> None:
    body = {"ratings": [{"movie_id": 2, "rating": 5}, {"movie_id": 8, "rating": 1}], "n": 4}
    response = client.post("/api/recommendations", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["estimate"] == "folded-in" and len(result["items"]) == 4
    assert {2, 8}.isdisjoint(item["movie"]["movie_id"] for item in result["items"])


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"ratings": [{"movie_id": 2, "rating": 4.5}]}, 422, "not on the rating scale"),
        (
            {"ratings": [{"movie_id": 2, "rating": 4}, {"movie_id": 2, "rating": 3}]},
            422,
            "more than once",
        ),
        ({"ratings": [{"movie_id": 424242, "rating": 4}]}, 404, "unknown movie_id 424242"),
        ({"ratings": []}, 422, "at least 1 item"),
        ({"ratings": [{"movie_id": 2}]}, 422, "Field required"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "n": 0}, 422, "greater than or equal to 1"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "colour": 1}, 422, "Extra inputs"),
    ],
)
def test_bad_posted_ratings_get_4xx_saying_why(
    client: httpx.Client, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = client.post("/api/recommendations", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.text


@pytest.mark.parametrize(
    ("body", "where", "expected"),
    [
        ({"ratings": [{"movie_id": "2", "rating": 4}]}, "movie_id", "valid integer"),
        ({"ratings": [{"movie_id": 2.0, "rating": 4}]}, "movie_id", "valid integer"),
        ({"ratings": [{"movie_id": True, "rating": 4}]}, "movie_id", "valid integer"),
        ({"ratings": [{"movie_id": 2, "rating": "4"}]}, "rating", "valid number"),
        ({"ratings": [{"movie_id": 2, "rating": True}]}, "rating", "valid number"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "n": "5"}, "n", "valid integer"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "n": 5.0}, "n", "valid integer"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "n": True}, "n", "valid integer"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "explain": 1}, "explain", "valid boolean"),
        ({"ratings": [{"movie_id": 2, "rating": 4}], "explain": "yes"}, "explain", "valid boolean"),
    ],
)
def test_posted_values_are_not_converted_from_other_json_types(
    client: httpx.Client, body: dict[str, Any], where: str, expected: str
) -> None:
    response = client.post("/api/recommendations", json=body)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][-1] == where and expected in error["msg"], error


def test_a_rating_may_be_a_json_integer_or_a_fraction(client: httpx.Client) -> None:
    for rating in (4, 4.0):
        body = {"ratings": [{"movie_id": 2, "rating": rating}], "n": 2}
        response = client.post("/api/recommendations", json=body)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "params", "where"),
    [
        ("/api/predict", {"user_id": "1.0", "movie_id": 2}, "user_id"),
        ("/api/predict", {"user_id": 1, "movie_id": " 2"}, "movie_id"),
        ("/api/predict", {"user_id": "1_0", "movie_id": 2}, "user_id"),
        ("/api/predict", {"user_id": "+1", "movie_id": 2}, "user_id"),
        ("/api/users/1/recommendations", {"n": "5.0"}, "n"),
        ("/api/users", {"limit": "1e1"}, "limit"),
        ("/api/movies/search", {"q": "star", "limit": "2.0"}, "limit"),
    ],
)
def test_query_integers_must_be_written_with_digits_only(
    client: httpx.Client, path: str, params: dict[str, Any], where: str
) -> None:
    response = client.get(path, params=params)

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][-1] == where and "digits only" in error["msg"], error


@pytest.mark.parametrize("flag", ["1", "yes", "on", "True", " true"])
def test_query_flags_must_be_true_or_false(client: httpx.Client, flag: str) -> None:
    response = client.get("/api/predict", params={"user_id": 1, "movie_id": 2, "fallback": flag})

    assert response.status_code == 422, response.text
    assert "expected true or false" in response.text


def test_path_integers_must_be_written_with_digits_only(client: httpx.Client) -> None:
    for path in ("/api/movies/2.0", "/api/users/1.0/recommendations", "/api/movies/2_0/similar"):
        response = client.get(path)
        assert response.status_code == 422, response.text
        assert "digits only" in response.text


def test_non_finite_and_malformed_json_are_refused(client: httpx.Client) -> None:
    raw = '{"ratings": [{"movie_id": 2, "rating": NaN}]}'
    response = client.post(
        "/api/recommendations", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    response = client.post(
        "/api/recommendations", content="{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/predict", {"user_id": "x", "movie_id": 2}),
        ("/api/predict", {"user_id": 2**70, "movie_id": 2}),
        ("/api/users/1/recommendations", {"n": 0}),
        ("/api/users/1/recommendations", {"n": 10**6}),
        ("/api/movies/search", {"q": ""}),
        ("/api/movies/2/similar", {"n": -1}),
    ],
)
def test_bad_query_values_get_422(client: httpx.Client, path: str, params: dict[str, Any]) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_search_and_similar(client: httpx.Client) -> None:
    found = get(client, "/api/movies/search", q="star", limit=5)
    assert [m["movie_id"] for m in found] == [2, 5]
    similar = get(client, "/api/movies/2/similar", n=3)
    assert len(similar["items"]) == 3 and similar["movie"]["title"] == "Star Wars (1977)"
    users = get(client, "/api/users", limit=3)
    assert [u["user_id"] for u in users["items"]] == [1, 2, 3]


def test_web_page_and_its_files_are_served(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>resrec" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_concurrent_requests_get_the_same_answers(client: httpx.Client) -> None:
    paths = [f"/api/users/{u}/recommendations?n=5" for u in range(1, 41)]
    paths += [f"/api/explain?user_id={u}&movie_id=2" for u in range(1, 41)]
    expected = {p: client.get(p).json() for p in paths}

    def fetch(path: str) -> bool:
        return bool(client.get(path).json() == expected[path])  # httpx.Client is thread-safe

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(fetch, paths * 2))


# --------------------------------------------------------------------------- fuzzing

OPERATIONS = [
    "GET /api/health",
    "GET /api/predict",
    "GET /api/explain",
    "GET /api/users",
    "GET /api/users/{user_id}/recommendations",
    "POST /api/recommendations",
    "GET /api/movies/search",
    "GET /api/movies/{movie_id}",
    "GET /api/movies/{movie_id}/similar",
]


FUZZ_CASES = [
    (label, mode)
    for label in OPERATIONS
    for mode in ("positive", "negative")
    if (label, mode) != ("GET /api/health", "negative")  # no input to make invalid
]


@pytest.mark.parametrize(("label", "mode"), FUZZ_CASES)
def test_fuzzing_from_the_openapi_schema_finds_no_server_error(
    server: str, label: str, mode: str
) -> None:
    """Requests generated from the published schema, valid and invalid, never get a 5xx.

    Bounded: 25 generated requests per operation and mode, all to 127.0.0.1.
    """
    if schemathesis is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = {op.ok().label: op.ok() for op in schema.get_all_operations()}
    assert set(OPERATIONS) <= set(operations)
    strategy = operations[label].as_strategy(schemathesis.GenerationMode(mode))

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def call(case: Any) -> None:
        response = case.call(base_url=server, timeout=30)
        assert response.status_code < 500, f"{label} {case.formatted_path}: {response.text}"
        if response.status_code >= 400:
            assert response.json()["detail"], response.text

    call()


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "hint"),
    [
        ("GET", "/api/predict?user_id=1.0&movie_id=2", None, 422, "user_id takes a whole number"),
        ("GET", "/api/predict?user_id=1", None, 422, "movie_id takes a whole number"),
        ("GET", "/api/users/1/recommendations?n=0", None, 422, "n takes a whole number from 1"),
        ("GET", "/api/predict?user_id=1&movie_id=2&fallback=1", None, 422, "true or false"),
        ("GET", "/api/movies/search?q=", None, 422, "q takes 1 to 200 characters"),
        ("POST", "/api/recommendations", {"ratings": []}, 422, "ratings takes a list of 1 to"),
        (
            "POST",
            "/api/recommendations",
            {"ratings": [{"movie_id": 2, "rating": "4"}]},
            422,
            "rating takes a JSON number on the run's rating scale (1 to 5 in steps of 1)",
        ),
        (
            "POST",
            "/api/recommendations",
            {"ratings": [{"movie_id": 2, "rating": 4}], "colour": 1},
            422,
            "colour is not a field of the body",
        ),
        ("POST", "/api/recommendations", "{", 422, '^post a JSON object such as {"ratings"'),
        (
            "POST",
            "/api/recommendations",
            {"ratings": [{"movie_id": 2, "rating": 4.5}]},
            422,
            "/docs",
        ),
        ("GET", "/api/nothing-here", None, 404, "no such endpoint"),
        ("DELETE", "/api/health", None, 405, "another HTTP method"),
    ],
)
def test_every_4xx_answer_has_detail_and_a_hint(
    client: httpx.Client, method: str, path: str, payload: Any, status: int, hint: str
) -> None:
    if isinstance(payload, str):
        headers = {"content-type": "application/json"}
        response = client.request(method, path, content=payload, headers=headers)
    else:
        response = client.request(method, path, json=payload)

    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["detail"], answer
    if hint.startswith("^"):  # the hint begins with these words
        assert answer["hint"].startswith(hint[1:]), answer
    else:
        assert hint in answer["hint"], answer


def test_a_body_over_one_mebibyte_is_refused_unread(client: httpx.Client) -> None:
    ratings = [{"movie_id": 2, "rating": 4}] * 60_000  # about 1.8 MB of JSON
    response = client.post("/api/recommendations", json={"ratings": ratings})

    assert response.status_code == 413, response.text
    answer = response.json()
    assert "larger than 1,048,576 bytes" in answer["detail"] and answer["hint"]


def test_a_chunked_body_over_one_mebibyte_is_refused(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"ratings": ['
        for _ in range(40):
            yield b'{"movie_id": 2, "rating": 4},' * 1000
        yield b'{"movie_id": 2, "rating": 4}]}'

    headers = {"content-type": "application/json"}
    response = client.post("/api/recommendations", content=chunks(), headers=headers)

    assert response.status_code == 413, response.text


def test_a_small_chunked_body_is_answered(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"ratings": [{"movie_id": 2, '
        yield b'"rating": 4}], "n": 2}'

    headers = {"content-type": "application/json"}
    response = client.post("/api/recommendations", content=chunks(), headers=headers)

    assert response.status_code == 200, response.text
