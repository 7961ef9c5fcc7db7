"""The inference library on small models trained inside the tests."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from resrec.config import preset
from resrec.data import read_ratings
from resrec.data.ratings import WHOLE_STARS
from resrec.errors import ConfigError, DataError, UnknownIdError
from resrec.ids import IdMap
from resrec.inference import TERMS, Recommendations, Recommender, parse_rated, scoring
from resrec.models.residual import MFNet
from resrec.run import load_run, save_run
from resrec.split import Split
from resrec.workflow import fit, predict_indices
from tests.conftest import planted_ratings

UNTRAINED_USER = 61  # one rating, in the test split only
UNTRAINED_MOVIE = 999  # one rating, in the test split only
EVERY_MOVIE_USER = 62  # rated every trained movie in training
METADATA_ONLY_MOVIE = 5000  # listed in movies.csv, never rated
NAMED = {2: "Star Wars (1977)", 5: "Star Trek (1979)", 8: "Alien (1979)"}


def write_dataset(folder: Path) -> Path:
    """ratings.csv and movies.csv of a small planted table plus the special ids above."""
    base = planted_ratings()
    movie_ids = np.unique(base.movie_id)
    rows = [
        (int(u), int(m), float(r))
        for u, m, r in zip(base.user_id, base.movie_id, base.rating, strict=True)
    ]
    rows += [(UNTRAINED_USER, 2, 4.0), (1, UNTRAINED_MOVIE, 3.0)]
    rows += [(EVERY_MOVIE_USER, int(m), float(1 + m % 5)) for m in movie_ids]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ratings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for i, (u, m, r) in enumerate(rows):
            writer.writerow([u, m, f"{r:.1f}", 1_000_000 + i])
    genres = ["Action|Sci-Fi", "Comedy", "Drama|Romance", "(no genres listed)"]
    with open(folder / "movies.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["movieId", "title", "genres"])
        for i, m in enumerate([*movie_ids.tolist(), UNTRAINED_MOVIE, METADATA_ONLY_MOVIE]):
            title = NAMED.get(int(m), f"Movie number {m} ({1950 + i})")
            writer.writerow([m, title, genres[i % len(genres)]])
    return folder / "ratings.csv"


def build_run(folder: Path, model: str = "residual", **config: object) -> Path:
    """Train a tiny model on :func:`write_dataset`'s files and save it as ``folder/run``."""
    ratings = read_ratings(write_dataset(folder / "data"), scale=WHOLE_STARS)
    special = (ratings.user_id == UNTRAINED_USER) | (ratings.movie_id == UNTRAINED_MOVIE)
    rng = np.random.default_rng(0)
    held = special | ((rng.random(len(ratings)) < 0.1) & (ratings.user_id != EVERY_MOVIE_USER))
    split = Split(
        train=np.flatnonzero(~held), valid=np.empty(0, np.int64), test=np.flatnonzero(held)
    )
    settings = {"embedding_dim": 4, "hidden": (16,), "batch_size": 64, "epochs": 4, "threads": 1}
    settings.update(config)
    result = fit(ratings, preset("fast").replace(model=model, **settings), split=split)
    return save_run(result, folder / "run")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def rec(run_dir: Path) -> Recommender:
    return Recommender.load(run_dir)


def trained_ids(rec: Recommender) -> tuple[np.ndarray, np.ndarray]:
    users = rec.user_map.raw_ids[rec.trained_users]
    movies = rec.movie_map.raw_ids[rec.trained_movies]
    return users, movies


# --------------------------------------------------------------------------- predictions


def test_predictions_match_the_model(run_dir: Path, rec: Recommender) -> None:
    run = load_run(run_dir)
    grid = np.meshgrid(np.arange(rec.n_users), np.arange(rec.n_movies))
    users, movies = grid[0].ravel(), grid[1].ravel()
    expected = predict_indices(run.model, run.mu, run.scale, users, movies)
    np.testing.assert_allclose(rec.predict_indices(users, movies), expected, atol=1e-5)


def test_predict_is_clipped_and_matches_the_batch_path(rec: Recommender) -> None:
    users, movies = trained_ids(rec)
    result = rec.predict(int(users[0]), int(movies[2]))
    assert result.estimate == "model" and result.note is None
    assert result.prediction == min(max(result.raw, 1.0), 5.0)
    batch, fallback = rec.predict_ids(users[:1], movies[2:3])
    assert not fallback.any()
    assert batch[0] == pytest.approx(result.prediction, abs=1e-5)
    assert result.movie.title == "Alien (1979)" and result.movie.genres == ("Drama", "Romance")


def test_explanation_terms_sum_exactly_to_the_unclipped_prediction(
    run_dir: Path, rec: Recommender
) -> None:
    users, movies = trained_ids(rec)
    run = load_run(run_dir)
    for user_id, movie_id in [
        (users[0], movies[0]),
        (users[5], movies[7]),
        (users[-1], movies[-1]),
    ]:
        e = rec.explain(int(user_id), int(movie_id)).explanation
        assert e is not None
        total = e.mu
        for name in TERMS[1:]:
            total += e.terms()[name]
        assert total == e.raw
        assert e.prediction == min(max(e.raw, 1.0), 5.0)

        u = torch.tensor([rec.user_map.index(int(user_id))])
        m = torch.tensor([rec.movie_map.index(int(movie_id))])
        with torch.no_grad():
            parts = run.model.components(u, m)  # type: ignore[operator]
        for name in ("user_bias", "movie_bias", "dot", "side"):
            assert e.terms()[name] == pytest.approx(float(parts[name][0]), abs=1e-5)


def test_unknown_ids_are_refused_unless_the_fallback_is_asked_for(rec: Recommender) -> None:
    users, movies = trained_ids(rec)
    with pytest.raises(UnknownIdError, match="unknown user_id 123456"):
        rec.predict(123456, int(movies[0]))
    with pytest.raises(UnknownIdError, match="unknown movie_id 123456"):
        rec.predict(int(users[0]), 123456)

    result = rec.predict(123456, int(movies[0]), fallback=True)
    movie_bias = float(rec.BM[rec.movie_map.index(int(movies[0]))])
    assert result.estimate == "fallback"
    assert result.note is not None and "bias estimate mu + movie bias" in result.note
    assert result.raw == pytest.approx(rec.mu + movie_bias)

    both = rec.predict(123456, 654321, fallback=True)
    assert both.raw == rec.mu and "mu" in (both.note or "")


def test_ids_with_only_held_out_ratings_count_as_unknown(rec: Recommender) -> None:
    assert UNTRAINED_USER in rec.user_map and UNTRAINED_MOVIE in rec.movie_map
    with pytest.raises(UnknownIdError, match="has no training ratings"):
        rec.predict(UNTRAINED_USER, 2)
    with pytest.raises(UnknownIdError, match="has no training ratings"):
        rec.recommend(UNTRAINED_USER)
    with pytest.raises(UnknownIdError, match="has no training ratings"):
        rec.predict(1, UNTRAINED_MOVIE)
    assert rec.predict(UNTRAINED_USER, 2, fallback=True).estimate == "fallback"


def test_predict_ids_names_the_first_unknown_id(rec: Recommender) -> None:
    with pytest.raises(UnknownIdError, match="user_id 777"):
        rec.predict_ids(np.array([1, 777]), np.array([2, 2]))
    values, fallback = rec.predict_ids(np.array([1, 777]), np.array([2, 2]), fallback=True)
    assert fallback.tolist() == [False, True]
    assert values.min() >= 1 and values.max() <= 5


# --------------------------------------------------------------------------- top-N


def brute_force_top(rec: Recommender, user_id: int, n: int, include_rated: bool) -> list[int]:
    user = rec.user_map.index(user_id)
    movies = np.flatnonzero(rec.trained_movies)
    if not include_rated:
        movies = np.setdiff1d(movies, rec.movie_map.index_of(rec.rated(user_id)))
    raw = [rec.explain(user_id, int(rec.movie_map.raw_ids[m])).raw for m in movies]
    order = sorted(range(len(movies)), key=lambda i: (-raw[i], movies[i]))
    assert user >= 0
    return [int(rec.movie_map.raw_ids[movies[i]]) for i in order[:n]]


@pytest.mark.parametrize("include_rated", [False, True])
def test_recommend_equals_brute_force_ranking(rec: Recommender, include_rated: bool) -> None:
    for user_id in (1, 17, 60):
        result = rec.recommend(user_id, 7, include_rated=include_rated)
        ids = [item.movie.movie_id for item in result.items]
        assert ids == brute_force_top(rec, user_id, 7, include_rated)
        assert [item.rank for item in result.items] == list(range(1, 8))
        raws = [item.raw for item in result.items]
        assert raws == sorted(raws, reverse=True)
        for item in result.items:  # the same to float32 precision (BLAS blocks differ)
            single = rec.predict(user_id, item.movie.movie_id).prediction
            assert item.prediction == pytest.approx(single, abs=1e-6)


def test_recommend_leaves_out_rated_and_untrained_movies(rec: Recommender) -> None:
    rated = set(rec.rated(1).tolist())
    result = rec.recommend(1, 100)
    ids = {item.movie.movie_id for item in result.items}
    assert rated and not ids & rated
    assert UNTRAINED_MOVIE not in ids
    assert result.excluded_rated == len(rated)
    assert len(ids) == result.candidates == rec.trained_movies.sum() - len(rated)
    assert result.reason is not None and "only" in result.reason


def test_user_who_rated_every_movie_gets_an_empty_list_and_a_reason(rec: Recommender) -> None:
    result = rec.recommend(EVERY_MOVIE_USER, 10)
    assert result.items == []
    assert result.reason is not None and "rated every movie" in result.reason
    assert len(rec.recommend(EVERY_MOVIE_USER, 10, include_rated=True).items) == 10


def test_recommend_fallback_ranks_by_movie_bias(rec: Recommender) -> None:
    with pytest.raises(UnknownIdError):
        rec.recommend(424242)
    result = rec.recommend(424242, 5, fallback=True, explain=True)
    assert result.estimate == "fallback" and result.note is not None
    biases = rec.BM.numpy()[rec.trained_movies]
    expected = np.sort(biases)[::-1][:5] + rec.mu
    assert [item.raw for item in result.items] == pytest.approx(expected.tolist(), abs=1e-6)
    for item in result.items:
        assert item.explanation is not None
        assert item.explanation.dot == 0 and item.explanation.side == 0


def test_ties_are_broken_by_ascending_movie_id() -> None:
    model = MFNet(3, 6, 2)
    with torch.no_grad():
        for table in (model.user_factors, model.movie_factors, model.user_bias, model.movie_bias):
            table.weight.zero_()
    rec = Recommender(
        model,
        IdMap(np.array([10, 20, 30]), "user"),
        IdMap(np.array([1, 3, 5, 7, 8, 9]), "movie"),
        3.0,
        WHOLE_STARS,
        np.array([0, 1, 2, 2, 2, 2]),  # user 20 rated movie 9, user 10 movie 1
        np.array([0, 5, 1, 2, 3, 4]),
    )
    ids = [item.movie.movie_id for item in rec.recommend(20, 4).items]
    assert ids == [1, 3, 5, 7]
    assert [item.movie.movie_id for item in rec.recommend(10, 3).items] == [3, 5, 7]


def test_n_must_be_positive(rec: Recommender) -> None:
    with pytest.raises(ConfigError, match="n must be at least 1"):
        rec.recommend(1, 0)


def test_concurrent_requests_give_the_same_answers(rec: Recommender) -> None:
    expected = {u: rec.recommend(u, 5) for u in range(1, 21)}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for u in range(1, 21):
                assert rec.recommend(u, 5) == expected[u]
                rec.recommend_for_ratings({2: 5, 5: 1}, 3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --------------------------------------------------------------------------- similar


def test_similar_is_the_cosine_ranking_without_the_movie_itself(rec: Recommender) -> None:
    result = rec.similar(2, 5)
    q = rec.Q.numpy()
    trained = np.flatnonzero(rec.trained_movies)
    me = rec.movie_map.index(2)
    cos = (q[trained] @ q[me]) / (np.linalg.norm(q[trained], axis=1) * np.linalg.norm(q[me]))
    order = [trained[i] for i in np.lexsort((trained, -cos)) if trained[i] != me][:5]
    assert [item.movie.movie_id for item in result.items] == rec.movie_map.raw_of(order).tolist()
    sims = [item.similarity for item in result.items]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    assert result.movie.title == "Star Wars (1977)"


def test_similar_refuses_an_untrained_movie(rec: Recommender) -> None:
    with pytest.raises(UnknownIdError, match="no training ratings"):
        rec.similar(UNTRAINED_MOVIE)


# --------------------------------------------------------------------------- new users


def test_fold_in_recovers_a_trained_user_from_their_predictions(rec: Recommender) -> None:
    users, movies = trained_ids(rec)
    user_id = int(users[3])
    truth = {int(m): rec.predict(user_id, int(m)).raw for m in movies}
    # Ratings on the scale are required, so compare with a near-prior-free fit instead.
    rounded = {m: float(np.clip(np.round(r), 1, 5)) for m, r in truth.items()}
    folded = rec.fold_in(rounded, prior_weight=1e-3)
    predicted = rec.predict_folded(folded, np.array(list(rounded)))
    error = np.sqrt(np.mean((predicted - np.array(list(rounded.values()))) ** 2))
    bias_only = rec.bias_estimate(np.array(list(rounded)))
    baseline = np.sqrt(np.mean((bias_only - np.array(list(rounded.values()))) ** 2))
    assert folded.fit_rmse == pytest.approx(error, abs=1e-4)
    assert error < baseline


def test_fold_in_with_a_strong_prior_stays_at_the_average_user(rec: Recommender) -> None:
    folded = rec.fold_in({2: 5.0}, prior_weight=1e9)
    np.testing.assert_allclose(folded.factors, rec._prior_mean.numpy(), atol=1e-4)
    assert folded.bias == pytest.approx(rec._prior_bias, abs=1e-4)


def test_recommend_for_ratings_leaves_out_the_rated_movies(rec: Recommender) -> None:
    ratings = {2: 5.0, 5: 4.0, 8: 1.0}
    result = rec.recommend_for_ratings(ratings, 10, explain=True)
    ids = [item.movie.movie_id for item in result.items]
    assert len(ids) == 10 and not set(ids) & set(ratings)
    assert result.estimate == "folded-in" and result.user_id is None
    assert result == rec.recommend_for_ratings(ratings, 10, explain=True)
    included = rec.recommend_for_ratings(ratings, 100, include_rated=True)
    assert set(ratings) <= {item.movie.movie_id for item in included.items}


@pytest.mark.parametrize(
    ("ratings", "error", "message"),
    [
        ({}, ConfigError, "at least one rating"),
        ([(2, 5.0), (2, 4.0)], ConfigError, "rated more than once"),
        ({2: 4.5}, ConfigError, "not on the rating scale"),
        ({2: float("nan")}, ConfigError, "not on the rating scale"),
        ({2: 6.0}, ConfigError, "not on the rating scale"),
        ({2: 5.0, 123456: 4.0}, UnknownIdError, "unknown movie_id 123456"),
        ({UNTRAINED_MOVIE: 4.0}, UnknownIdError, "no training ratings"),
    ],
)
def test_bad_new_user_ratings_are_refused(
    rec: Recommender, ratings: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        rec.recommend_for_ratings(ratings, 5)  # type: ignore[arg-type]


def test_unknown_rated_movies_can_be_ignored(rec: Recommender) -> None:
    result = rec.recommend_for_ratings([(2, 5.0), (123456, 4.0)], 3, unknown="ignore")
    assert result.note is not None and "123456" in result.note
    with pytest.raises(ConfigError, match="none of the rated movies"):
        rec.recommend_for_ratings([(123456, 4.0)], 3, unknown="ignore")


def test_parse_rated() -> None:
    assert parse_rated("50:5, 172:4.5") == [(50, 5.0), (172, 4.5)]
    with pytest.raises(ConfigError, match="item 2 is '172'"):
        parse_rated("50:5,172")


# --------------------------------------------------------------------------- metadata


def test_movies_file_is_found_beside_the_ratings(rec: Recommender, run_dir: Path) -> None:
    assert rec.movies is not None
    assert rec.movie(2).title == "Star Wars (1977)"
    assert rec.movie(METADATA_ONLY_MOVIE).title is not None
    assert not rec.movie(METADATA_ONLY_MOVIE).known
    assert rec.movie(424242).title is None


def test_search_lists_known_movies_first(rec: Recommender) -> None:
    found = rec.search_movies("star", 5)
    assert [m.movie_id for m in found] == [2, 5]
    found = rec.search_movies("movie number", 100)
    assert found[-1].movie_id in (UNTRAINED_MOVIE, METADATA_ONLY_MOVIE)
    assert all(m.known for m in found[:-2])


def test_explicit_movies_file_and_missing_metadata(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "movies.csv"
    other.write_text('movieId,title,genres\n2,"Other, The (2001)",Drama\n')
    rec = Recommender.load(run_dir, movies_path=other)
    assert rec.movie(2).title == "Other, The (2001)" and rec.movie(5).title is None
    bare = Recommender.from_run(load_run(run_dir))
    assert bare.movie(2).title is None
    with pytest.raises(ConfigError, match="no movie metadata"):
        bare.search_movies("star")


# --------------------------------------------------------------------------- model kinds

MOVIE_RATINGS_SIDE = {"side_input": "movie_ratings", "side_units": 6, "side_epochs": 3}


def test_a_side_branch_of_movie_ratings_is_explained_and_folded_in(tmp_path: Path) -> None:
    run_dir = build_run(tmp_path, "residual", epochs=2, **MOVIE_RATINGS_SIDE)
    run = load_run(run_dir)
    rec = Recommender.from_run(run)
    assert run.model.ratings_side is not None and run.model.ratings_side.codes.any()
    users, movies = trained_ids(rec)
    for user_id, movie_id in [(users[0], movies[0]), (users[-1], movies[3])]:
        e = rec.explain(int(user_id), int(movie_id)).explanation
        assert e is not None
        assert e.mu + e.user_bias + e.movie_bias + e.dot + e.side == e.raw
        u = torch.tensor([rec.user_map.index(int(user_id))])
        m = torch.tensor([rec.movie_map.index(int(movie_id))])
        with torch.no_grad():
            parts = run.model.components(u, m)  # type: ignore[operator]
        assert e.side != 0
        for name in ("user_bias", "movie_bias", "dot", "side"):
            assert getattr(e, name) == pytest.approx(float(parts[name][0]), abs=1e-5)
    # Similar movies compare the main branch's embeddings only.
    similar = rec.similar(int(movies[0]), 3)
    q = run.model.movie_factors.weight.detach()
    first = q[rec.movie_map.index(int(similar.items[0].movie.movie_id))]
    own = q[rec.movie_map.index(int(movies[0]))]
    assert similar.items[0].similarity == pytest.approx(
        float(torch.nn.functional.cosine_similarity(first, own, dim=0)), abs=1e-5
    )
    # A new user gets a decoder row too: the fit follows their ratings.
    folded = rec.fold_in({int(movies[0]): 5.0, int(movies[1]): 1.0, int(movies[2]): 5.0})
    assert folded.factors.shape == (rec.P.shape[1],)
    predicted = rec.predict_folded(folded, movies[:3])
    assert predicted[0] > predicted[1] and predicted[2] > predicted[1]


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("mf", {}),
        ("deep", {}),
        ("residual", {"hidden": (8, 4)}),
        ("residual", {"batch_norm": True, "activation": "relu"}),
        ("residual", {"activation": "tanh"}),
        ("residual", MOVIE_RATINGS_SIDE),
        ("residual", {**MOVIE_RATINGS_SIDE, "implicit_feedback": True}),
    ],
)
def test_every_model_kind_scores_like_its_network(
    tmp_path: Path, model: str, extra: dict[str, object]
) -> None:
    run_dir = build_run(tmp_path, model, epochs=2, **extra)
    run = load_run(run_dir)
    rec = Recommender.from_run(run)
    grid = np.meshgrid(np.arange(rec.n_users), np.arange(rec.n_movies))
    users, movies = grid[0].ravel(), grid[1].ravel()
    expected = predict_indices(run.model, run.mu, run.scale, users, movies)
    np.testing.assert_allclose(rec.predict_indices(users, movies), expected, atol=1e-5)
    for user_id in (1, 30):
        ids = [i.movie.movie_id for i in rec.recommend(user_id, 5).items]
        assert ids == brute_force_top(rec, user_id, 5, False)
    fallback = rec.predict(424242, 2, fallback=True)
    e = fallback.explanation
    assert e is not None and e.mu + e.user_bias + e.movie_bias + e.dot + e.side == e.raw
    assert rec.recommend_for_ratings({2: 5.0, 5: 1.0}, 3).items


# --------------------------------------------------------------------------- files


def test_score_file_streams_good_rows_and_reports_bad_ones(
    rec: Recommender, tmp_path: Path
) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text(
        "userId,movieId,rating\n"  # line 1
        "1,2,4\n"  # 2
        "1,5\n"  # 3: too few fields
        "3,8,1\n"  # 4
        "\n"  # 5: empty
        "x,8,2\n"  # 6: not a number
        "424242,8,3\n"  # 7: unknown user
        "4, 11,5\n"  # 8: a space is fine
        "5,123456,1\n"  # 9: unknown movie
        "6,14,2\n"  # 10
    )
    out = tmp_path / "out" / "scores.csv"
    report = rec.score_file(src, out)
    assert report.rows == 9 and report.scored == 4 and report.bad == 5
    assert [line for line, _ in report.bad_rows] == [3, 5, 6, 7, 9]
    reasons = dict(report.bad_rows)
    assert "expected 3 fields, found 2" in reasons[3]
    assert reasons[5] == "empty line"
    assert "userId 'x' is not a whole number" in reasons[6]
    assert reasons[7] == "unknown user_id 424242"
    assert reasons[9] == "unknown movie_id 123456"

    lines = out.read_text().splitlines()
    assert lines[0] == "user_id,movie_id,prediction"
    got = [tuple(line.split(",")) for line in lines[1:]]
    assert [(u, m) for u, m, _ in got] == [("1", "2"), ("3", "8"), ("4", "11"), ("6", "14")]
    expected, _ = rec.predict_ids(np.array([1, 3, 4, 6]), np.array([2, 8, 11, 14]))
    assert [float(p) for *_, p in got] == pytest.approx(expected.tolist(), abs=1e-4)


def test_score_file_fallback_marks_its_rows(rec: Recommender, tmp_path: Path) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text("user_id,movie_id\n1,2\n424242,2\n")
    report = rec.score_file(src, tmp_path / "out.csv", fallback=True)
    assert report.scored == 2 and report.fallback == 1 and report.bad == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "user_id,movie_id,prediction,fallback"
    assert lines[1].endswith(",0") and lines[2].endswith(",1")


def test_score_file_line_numbers_survive_many_blocks(
    rec: Recommender, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "_CSV_BLOCK", 1 << 16)
    src = tmp_path / "pairs.csv"
    n = 300_000  # about 20 blocks of 64 KiB
    body = ["1,2"] * n
    for line in (10, 150_001, 299_999):  # physical line numbers (header is line 1)
        body[line - 2] = "1,2,3,4"
    body[200_000 - 2] = "1,abc"
    src.write_text("user_id,movie_id\n" + "\n".join(body) + "\n")
    report = rec.score_file(src, tmp_path / "out.csv")
    assert [line for line, _ in report.bad_rows] == [10, 150_001, 200_000, 299_999]
    assert report.scored == n - 4


def test_score_file_needs_the_id_columns(rec: Recommender, tmp_path: Path) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="names no user_id column"):
        rec.score_file(src, tmp_path / "out.csv")
    with pytest.raises(DataError, match="no such file"):
        rec.score_file(tmp_path / "missing.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_scores_split_between_threads_equal_one_thread() -> None:
    from resrec.models.base import build_model

    n_users, n_movies = 4, 5000  # enough movies for the split to apply
    model = build_model(preset("tutorial"), n_users, n_movies, seed=3)
    users = np.repeat(np.arange(n_users), 2)
    movies = np.concatenate([np.arange(n_movies), users * 7])
    users = np.concatenate([np.arange(n_movies) % n_users, users])
    args = (
        model,
        IdMap(np.arange(n_users) + 1, "user"),
        IdMap(np.arange(n_movies) + 1, "movie"),
        3.0,
        WHOLE_STARS,
        users,
        movies,
    )
    one, two = Recommender(*args), Recommender(*args, threads=2)
    for user_id in (1, 4):
        np.testing.assert_array_equal(one.scores(user_id), two.scores(user_id))
        assert one.recommend(user_id, 20) == two.recommend(user_id, 20)


@pytest.mark.slow
@pytest.mark.realdata
def test_fold_in_beats_the_bias_fallback_on_ml100k_users_held_out() -> None:
    from tests.conftest import real_data_dir

    path = real_data_dir() / "ml-100k" / "u.data"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    ratings = read_ratings(path)
    rng = np.random.default_rng(0)
    held_out = rng.choice(np.unique(ratings.user_id), size=60, replace=False)
    train = ratings.take(~np.isin(ratings.user_id, held_out))
    every = np.arange(len(train))
    split = Split(train=every, valid=np.empty(0, np.int64), test=np.empty(0, np.int64))
    result = fit(train, preset("fast").replace(epochs=4, threads=1), split=split)
    rec = Recommender(
        result.model,
        result.user_map,
        result.movie_map,
        result.mu,
        result.scale,
        result.train_users,
        result.train_movies,
        noise_variance=0.9,
    )
    folded_errors, fallback_errors = [], []
    known = rec.movie_map.raw_ids[rec.trained_movies]
    for user_id in held_out:
        rows = np.flatnonzero(ratings.user_id == user_id)
        rows = rows[np.isin(ratings.movie_id[rows], known)]
        rows = rows[rng.permutation(rows.size)]
        given, rest = rows[:10], rows[10:]
        given_pairs = zip(
            ratings.movie_id[given].tolist(), ratings.rating[given].tolist(), strict=True
        )
        folded = rec.fold_in(given_pairs)
        truth = ratings.rating[rest]
        folded_errors.append(rec.predict_folded(folded, ratings.movie_id[rest]) - truth)
        fallback_errors.append(rec.bias_estimate(ratings.movie_id[rest]) - truth)
    folded_rmse = np.sqrt(np.mean(np.concatenate(folded_errors) ** 2))
    fallback_rmse = np.sqrt(np.mean(np.concatenate(fallback_errors) ** 2))
    assert folded_rmse < fallback_rmse - 0.03
    assert 0.85 < folded_rmse < 1.1


# --------------------------------------------------------------------------- bounds for top-N


@pytest.fixture(scope="module")
def synthetic_ratings() -> object:
    from resrec.data.synth import synthesize

    return synthesize(400, 3000, 40_000, seed=2)


def _trained_recommender(ratings: object, activation: str) -> Recommender:
    """A tutorial-shaped model trained for two epochs on synthetic ratings."""
    config = preset("tutorial").replace(activation=activation, epochs=2, batch_size=512)
    result = fit(ratings, config)  # type: ignore[arg-type]
    return Recommender.from_run(load_run(save_run(result, _fresh_dir())))


def _fresh_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="resrec-bounds-")) / "run"


@pytest.mark.parametrize("activation", ["elu", "relu"])
def test_side_bounds_hold_for_every_movie(synthetic_ratings: object, activation: str) -> None:
    rec = _trained_recommender(synthetic_ratings, activation)
    rec.prepare_top_n()
    bounds, side = rec._bounds, rec.side
    assert bounds is not None and side is not None
    generator = torch.Generator().manual_seed(1)
    embeddings = [rec.P[i] for i in range(rec.n_users)]
    embeddings += [torch.randn(rec.P.shape[1], generator=generator) * s for s in (0.1, 1, 30)]
    radii = []
    for p in embeddings:
        anchor, shift, radius = bounds.nearest(p)
        gap = (side.all_movies(p) - bounds.table[anchor] - shift).abs().max()
        assert float(gap) <= radius + 1e-4
        # the one-sided bound: half the Lipschitz one, around a shifted centre
        delta = float((bounds.mapped[anchor] - p @ bounds.metric).abs().sum())
        assert radius == pytest.approx(delta / 2)
        radii.append(radius)
    assert min(radii) < 0.05 * max(radii)  # a bound that is not trivially loose


@pytest.mark.parametrize("activation", ["elu", "relu"])
def test_recommend_with_bounds_equals_scoring_every_movie(
    synthetic_ratings: object, activation: str
) -> None:
    rec = _trained_recommender(synthetic_ratings, activation)
    users = range(1, rec.n_users + 1, 7)
    movie_ids = rec.movie_map.raw_ids[rec.trained_movies]
    folded = {int(movie_ids[0]): 5.0, int(movie_ids[5]): 1.0, int(movie_ids[9]): 4.0}

    def answers() -> list[Recommendations]:
        out = [rec.recommend(u, n) for u in users for n in (1, 10, 200)]
        out += [rec.recommend(u, 5, include_rated=True) for u in users]
        return [*out, rec.recommend_for_ratings(folded, 10)]

    plain = answers()
    rec.prepare_top_n()
    full_passes = 0
    all_scores = rec._all_scores

    def counting(p: torch.Tensor | None, bias: float) -> np.ndarray:
        nonlocal full_passes
        full_passes += 1
        return all_scores(p, bias)

    rec._all_scores = counting  # type: ignore[method-assign]
    bounded = answers()
    for one, other in zip(plain, bounded, strict=True):  # equal up to float32 rounding
        assert [i.movie for i in one.items] == [i.movie for i in other.items]
        assert [i.raw for i in one.items] == pytest.approx([i.raw for i in other.items], abs=1e-5)
    assert full_passes < len(plain) / 3  # most queries never scored every movie


def _side_network(activation: torch.nn.Module, n_movies: int = 3000) -> tuple[object, Tensor]:
    """The side branch of a seeded ``fast``-shaped model with ``activation``, and its movies."""
    from resrec.models.base import build_model

    model = build_model(preset("fast"), 50, n_movies, seed=4)
    layers = model.side.layers  # type: ignore[union-attr]
    layers[1] = activation
    with torch.no_grad():
        layers[0].weight.mul_(3.0)  # pre-activations of both signs, some far below 0
    return model.side, model.movie_factors.weight.detach()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "activation",
    [torch.nn.ELU(), torch.nn.ELU(alpha=0.4), torch.nn.ELU(alpha=1.7), torch.nn.ReLU()],
    ids=["elu", "elu-0.4", "elu-1.7", "relu"],
)
def test_every_all_movies_pass_equals_the_network(activation: torch.nn.Module) -> None:
    from resrec.inference.side import _SideBranch

    network, q = _side_network(activation)
    side = _SideBranch(network, q)  # type: ignore[arg-type]
    assert side.table is not None  # a narrow branch: the precomputed table pass
    generator = torch.Generator().manual_seed(5)
    for scale in (0.05, 1.0, 4.0, 300.0):  # the last is beyond the table pass's exponents
        p = torch.randn(q.shape[1], generator=generator) * scale
        with torch.no_grad():
            expected = network(torch.cat([p.expand(q.shape[0], -1), q], 1))  # type: ignore[operator]
        tolerance = 2e-5 * (1.0 + float(expected.abs().max()))
        table_pass = side.all_movies(p)
        table = side.table
        side.table = None  # the product pass
        product_pass = side.all_movies(p)
        side.table = table
        for got in (table_pass, product_pass, side.one_user(p, q)):
            assert float((got - expected).abs().max()) <= tolerance


def test_slack_beyond_what_bounds_can_use_scores_every_movie_once(
    synthetic_ratings: object,
) -> None:
    rec = _trained_recommender(synthetic_ratings, "elu")
    users = range(1, rec.n_users + 1, 9)
    plain = [rec.recommend(u, 10) for u in users]
    rec.prepare_top_n()
    assert rec._useful_slack(0, 10) > 0
    calls = 0
    all_scores = rec._all_scores

    def counting(p: torch.Tensor | None, bias: float) -> np.ndarray:
        nonlocal calls
        calls += 1
        return all_scores(p, bias)

    rec._all_scores = counting  # type: ignore[method-assign]
    rec._useful_slack = lambda anchor, n: -1.0  # type: ignore[method-assign]  # all far off
    gated = [rec.recommend(u, 10) for u in users]
    assert calls == len(gated)  # straight to one full pass, no rough one before it
    for one, other in zip(plain, gated, strict=True):
        assert [i.movie for i in one.items] == [i.movie for i in other.items]
        assert [i.raw for i in one.items] == pytest.approx([i.raw for i in other.items], abs=1e-5)


def test_candidates_count_a_movie_rated_twice_once() -> None:
    model = MFNet(2, 4, 2)
    rec = Recommender(
        model,
        IdMap(np.array([10, 20]), "user"),
        IdMap(np.array([1, 2, 3, 4]), "movie"),
        3.0,
        WHOLE_STARS,
        np.array([0, 0, 0, 1, 1, 1]),
        np.array([2, 0, 2, 1, 2, 3]),  # user 10 rated movie 3 twice
    )
    result = rec.recommend(10, 4)
    assert result.candidates == 2 and result.excluded_rated == 3
    assert [i.movie.movie_id for i in result.items] == sorted(
        [2, 4], key=lambda m: -rec.explain(10, m).raw
    )
    folded = rec.recommend_for_ratings({3: 5.0, 1: 2.0}, 4)  # unsorted movie indices
    assert folded.candidates == 2


def test_bounds_are_built_after_a_few_queries(rec: Recommender, run_dir: Path) -> None:
    fresh = Recommender.load(run_dir)
    assert fresh._bounds is None
    answers = [fresh.recommend(1 + i % 40, 5) for i in range(20)]
    assert fresh._bounds is not None
    assert answers[-1] == rec.recommend(1 + 19 % 40, 5)
    assert [i.movie.movie_id for i in answers[-1].items] == brute_force_top(fresh, 20, 5, False)


# --------------------------------------------------------------------------- odd pairs files


def test_score_file_reads_signs_and_refuses_hex_and_bad_utf8(
    rec: Recommender, tmp_path: Path
) -> None:
    src = tmp_path / "pairs.csv"
    src.write_bytes(
        b"user_id,movie_id\n"  # line 1
        b"+1,2\n"  # 2: a plus sign is fine
        b"0x10,2\n"  # 3: hexadecimal is not read as 16
        b"\xff\xfe,2\n"  # 4: not UTF-8
        b"1,0X1A\n"  # 5
        b"9223372036854775807,2\n"  # 6: the largest int64, unknown here
        b"9223372036854775808,2\n"  # 7: one beyond
        b"3,8\n"  # 8
    )
    report = rec.score_file(src, tmp_path / "out.csv")
    reasons = dict(report.bad_rows)
    assert report.scored == 2 and sorted(reasons) == [3, 4, 5, 6, 7]
    assert "user_id '0x10' is not a whole number" in reasons[3]
    assert "not valid UTF-8" in reasons[4]
    assert "movie_id '0X1A' is not a whole number" in reasons[5]
    assert reasons[6] == "unknown user_id 9223372036854775807"
    assert "out of range" in reasons[7]
    rows = (tmp_path / "out.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["1", "2"], ["3", "8"]]


def test_score_file_refuses_a_quoted_line_break_at_its_line(
    rec: Recommender, tmp_path: Path
) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text('user_id,movie_id\n1,2\n"3\n",8\n4,11\n')
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match="line break") as error:
        rec.score_file(src, out)
    assert error.value.line == 3
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_score_file_refuses_two_user_columns(rec: Recommender, tmp_path: Path) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text("userId,movieId,user_id\n1,2,3\n")
    with pytest.raises(DataError, match=r"more than one user_id column \(user_id, userId\)"):
        rec.score_file(src, tmp_path / "out.csv")


def test_score_file_reads_gzip_and_names_folders(rec: Recommender, tmp_path: Path) -> None:
    import gzip

    src = tmp_path / "pairs.csv.gz"
    src.write_bytes(gzip.compress(b"user_id,movie_id\n1,2\n3,8\n"))
    report = rec.score_file(src, tmp_path / "out.csv")
    assert report.scored == 2 and report.bad == 0
    with pytest.raises(DataError, match="is a folder"):
        rec.score_file(tmp_path, tmp_path / "o.csv")


def test_score_file_unwritable_output_is_a_clean_error(rec: Recommender, tmp_path: Path) -> None:
    src = tmp_path / "pairs.csv"
    src.write_text("user_id,movie_id\n1,2\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write --out"):
        rec.score_file(src, blocker / "out.csv")
