"""Edges of inference and the HTTP API: one number per pair, strict queries, absurd weights."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from resrec.config import preset
from resrec.data.ratings import WHOLE_STARS
from resrec.errors import ModelFileError
from resrec.ids import IdMap
from resrec.inference import Recommender
from resrec.inference.explain import _unit_rows
from resrec.models.residual import MFNet
from resrec.run import load_run, save_run, sha256_of
from resrec.workflow import fit
from tests.test_api import start_server, stop_server
from tests.test_inference import build_run

COUNTS = (1, 3, 10, 50)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("edges")
    return {kind: build_run(folder / kind, kind) for kind in ("residual", "mf", "deep")}


def some_users(rec: Recommender, count: int = 6) -> list[int]:
    users = rec.user_map.raw_ids[rec.trained_users]
    return [int(u) for u in users[:: max(1, len(users) // count)][:count]]


def assert_items_equal_predict(rec: Recommender, user_id: int, *, fallback: bool = False) -> None:
    """Each recommended movie's numbers are predict's and explain's, to the last bit."""
    for n in COUNTS:
        result = rec.recommend(user_id, n, fallback=fallback, explain=True)
        assert result.items
        for item in result.items:
            movie_id = item.movie.movie_id
            single = rec.predict(user_id, movie_id, fallback=fallback)
            assert (item.raw, item.prediction) == (single.raw, single.prediction), (n, movie_id)
            assert item.explanation == single.explanation


# --------------------------------------------------------------------------- one number per pair


@pytest.mark.parametrize("kind", ["residual", "mf", "deep"])
def test_recommended_scores_equal_predict_exactly_for_every_n(
    runs: dict[str, Path], kind: str
) -> None:
    rec = Recommender.load(runs[kind])
    for user_id in some_users(rec):
        assert_items_equal_predict(rec, user_id)


@pytest.mark.parametrize("kind", ["residual", "deep"])
def test_the_fallback_list_shows_the_fallback_predictions(runs: dict[str, Path], kind: str) -> None:
    rec = Recommender.load(runs[kind])  # deep has no biases: the mean user stands in
    assert_items_equal_predict(rec, 424242, fallback=True)


def test_scores_with_side_bounds_equal_predict_exactly(tmp_path: Path) -> None:
    from resrec.data.synth import synthesize

    ratings = synthesize(200, 1500, 15_000, seed=3)
    config = preset("tutorial").replace(epochs=1, batch_size=512, threads=1)
    rec = Recommender.from_run(load_run(save_run(fit(ratings, config), tmp_path / "run")))
    users = some_users(rec, 5)
    before = {(u, n): rec.recommend(u, n) for u in users for n in COUNTS}
    rec.prepare_top_n()
    assert rec._bounds is not None
    for user_id in users:
        assert_items_equal_predict(rec, user_id)
        for n in COUNTS:  # the same list, to the last bit, with and without the bounds
            assert rec.recommend(user_id, n).items == before[user_id, n].items


def test_a_folded_in_user_gets_the_same_score_in_every_list(runs: dict[str, Path]) -> None:
    rec = Recommender.load(runs["residual"])
    movies = rec.movie_map.raw_ids[rec.trained_movies]
    ratings = {int(movies[0]): 5.0, int(movies[3]): 2.0, int(movies[6]): 4.0}
    seen: dict[int, float] = {}
    for n in COUNTS:
        for item in rec.recommend_for_ratings(ratings, n).items:
            assert seen.setdefault(item.movie.movie_id, item.raw) == item.raw


# --------------------------------------------------------------------------- absurd weights


def _mf_recommender(scale: float) -> Recommender:
    model = MFNet(3, 4, 2)
    with torch.no_grad():
        model.movie_factors.weight.fill_(0.5)
        model.movie_factors.weight[1] *= scale
    return Recommender(
        model,
        IdMap(np.array([10, 20, 30]), "user"),
        IdMap(np.array([1, 2, 3, 4]), "movie"),
        3.0,
        WHOLE_STARS,
        np.array([0, 1, 2, 0]),
        np.array([0, 1, 2, 3]),
    )


def test_huge_but_finite_weights_are_refused_naming_the_tensor() -> None:
    with pytest.raises(ModelFileError, match=r"<memory>: tensor movie_factors.weight holds"):
        _mf_recommender(1e30)
    _mf_recommender(100.0)  # large, but within what a model may hold


def test_a_run_with_huge_weights_and_fresh_checksums_is_refused(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    run = Path(shutil.copytree(runs["residual"], tmp_path / "run"))
    weights = run / "weights.safetensors"
    state = load_file(str(weights))
    state["movie_factors.weight"] = torch.full_like(state["movie_factors.weight"], 1e30)
    save_file(state, str(weights), metadata={"format": "pt"})
    checksums = json.loads((run / "checksums.json").read_text())
    checksums["weights.safetensors"] = sha256_of(weights)
    (run / "checksums.json").write_text(json.dumps(checksums))

    with pytest.raises(ModelFileError) as caught:
        Recommender.load(run)
    message = str(caught.value)
    assert f"{weights}: tensor movie_factors.weight holds a value of magnitude 1e+30" in message
    assert "retrain, or restore the run" in message


def test_cosines_of_huge_vectors_do_not_overflow_to_zero() -> None:
    vectors = torch.tensor([[1e30, 1e30, 0.0], [3e38, 0.0, 0.0], [0.0, 0.0, 0.0]])
    unit = _unit_rows(vectors)
    assert float(unit[0] @ unit[0]) == pytest.approx(1.0)
    assert float(unit[0] @ unit[1]) == pytest.approx(2**-0.5)
    assert float(unit[2].abs().sum()) == 0.0  # a zero row stays zero


def test_similar_shows_real_cosines_for_large_embeddings() -> None:
    rec = _mf_recommender(5000.0)  # movie 2's squares would be large, its cosines still 1
    result = rec.similar(2, 3)
    assert [item.similarity for item in result.items] == pytest.approx([1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- the HTTP API


@pytest.fixture(scope="module")
def client(runs: dict[str, Path]) -> Iterator[httpx.Client]:
    process, url = start_server(runs["residual"])
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            yield c
    finally:
        stop_server(process)


def test_the_api_shows_one_number_per_pair(client: httpx.Client) -> None:
    for user_id in (1, 17, 40):
        for n in COUNTS:
            answer = client.get(f"/api/users/{user_id}/recommendations", params={"n": n})
            for item in answer.json()["items"]:
                params = {"user_id": user_id, "movie_id": item["movie"]["movie_id"]}
                predicted = client.get("/api/predict", params=params).json()
                explained = client.get("/api/explain", params=params).json()
                assert item["raw"] == predicted["raw"] == explained["explanation"]["raw"]
                assert item["prediction"] == predicted["prediction"] == explained["prediction"]


GETS = [
    ("/api/health", {}),
    ("/api/predict", {"user_id": 1, "movie_id": 2}),
    ("/api/explain", {"user_id": 1, "movie_id": 2}),
    ("/api/users", {}),
    ("/api/users/1/recommendations", {"n": 2}),
    ("/api/movies/search", {"q": "star"}),
    ("/api/movies/2", {}),
    ("/api/movies/2/similar", {"n": 2}),
]


@pytest.mark.parametrize(("path", "params"), GETS)
def test_unknown_query_parameters_are_refused_on_every_endpoint(
    client: httpx.Client, path: str, params: dict[str, Any]
) -> None:
    assert client.get(path, params=params).status_code == 200
    response = client.get(path, params={**params, "bogus": "1"})

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["detail"] == [{"loc": ["query", "bogus"], "msg": "unknown query parameter"}]
    assert answer["hint"].startswith("bogus is not a parameter of ")


def test_the_hint_lists_what_the_endpoint_takes(client: httpx.Client) -> None:
    params: dict[str, Any] = {"user_id": 1, "movie_id": 2, "explain": "true"}
    answer = client.get("/api/predict", params=params).json()
    assert answer["hint"] == (
        "explain is not a parameter of /api/predict; it takes user_id, movie_id and fallback"
    )
    answer = client.get("/api/health", params={"verbose": "true"}).json()
    assert answer["hint"].endswith("/api/health; it takes no query parameters")
    body = {"ratings": [{"movie_id": 2, "rating": 4}]}
    response = client.post("/api/recommendations", params={"n": 3}, json=body)
    assert response.status_code == 422
    assert "its values go in the JSON body" in response.json()["hint"]


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("user_id=1&user_id=2&movie_id=2", "user_id"),
        ("user_id=1&movie_id=2&movie_id=2", "movie_id"),
        ("user_id=1&movie_id=2&fallback=true&fallback=false", "fallback"),
    ],
)
def test_a_query_parameter_given_twice_is_refused(
    client: httpx.Client, query: str, name: str
) -> None:
    response = client.get(f"/api/predict?{query}")

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["detail"] == [{"loc": ["query", name], "msg": "given 2 times"}]
    assert answer["hint"].startswith(f"give {name} once; {name} takes ")


def test_the_web_page_takes_any_query(client: httpx.Client) -> None:
    assert client.get("/", params={"utm_source": "mail"}).status_code == 200


def test_head_is_answered_wherever_get_is(client: httpx.Client) -> None:
    get = client.get("/api/health")
    head = client.head("/api/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-type"] == "application/json"
    assert client.head("/api/users/1/recommendations?n=2").status_code == 200
    assert client.head("/api/predict?user_id=1").status_code == 422
    assert client.head("/api/recommendations").status_code == 405  # POST only


def test_a_body_that_is_not_utf8_gets_a_json_422(client: httpx.Client) -> None:
    raw = b'{"ratings": [{"movie_id": 2, "rating": 4}], "note": "caf\xe9"}'
    headers = {"content-type": "application/json"}
    response = client.post("/api/recommendations", content=raw, headers=headers)

    assert response.status_code == 422, response.text
    answer = response.json()
    position = raw.index(b"\xe9")
    assert answer["detail"] == [
        {"loc": ["body", str(position)], "msg": f"not UTF-8 text: byte 0xe9 at position {position}"}
    ]
    assert answer["hint"].startswith('encode the body as UTF-8; post a JSON object such as {"')


def test_a_long_query_within_uvicorns_limit_gets_the_apps_answer(client: httpx.Client) -> None:
    port = int(str(client.base_url).rstrip("/").rsplit(":", 1)[1])
    request = f"GET /api/movies/search?q={'a' * 50_000} HTTP/1.1\r\nHost: x\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"{request}Connection: close\r\n\r\n".encode())
        answer = b"".join(iter(lambda: s.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 422")
    assert b'"hint":"q takes 1 to 200 characters of a title"' in answer


@pytest.mark.parametrize(("path", "what"), [("/docs", "Swagger UI"), ("/redoc", "ReDoc")])
def test_the_docs_pages_say_they_need_internet_access(
    client: httpx.Client, path: str, what: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert f"This page loads {what} from cdn.jsdelivr.net, so it needs internet access" in page.text
    assert '<a href="/openapi.json">/openapi.json</a>' in page.text
