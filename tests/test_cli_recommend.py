"""``resrec predict / recommend / similar / explain / score`` on a run trained in the test."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from resrec.cli import app
from tests.test_inference import EVERY_MOVIE_USER, UNTRAINED_USER, build_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("cli"))


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def test_predict_prints_the_prediction_with_title(run_dir: Path) -> None:
    result = invoke("predict", run_dir, "--user", "1", "--movie", "2")
    assert result.exit_code == 0, result.output
    assert "movie_id 2 'Star Wars (1977)' [Action|Sci-Fi]: prediction" in result.output
    assert "rating scale 1 to 5" in result.output


def test_predict_json(run_dir: Path) -> None:
    result = invoke("predict", run_dir, "--user", "1", "--movie", "2", "--json")
    data = json.loads(result.output[result.output.index("{") :])
    assert data["user_id"] == 1 and data["movie"]["title"] == "Star Wars (1977)"
    assert 1 <= data["prediction"] <= 5 and data["estimate"] == "model"


def test_unknown_user_is_an_error_unless_fallback(run_dir: Path) -> None:
    result = invoke("predict", run_dir, "--user", "424242", "--movie", "2")
    assert result.exit_code == 1
    assert "error: unknown user_id 424242" in result.output
    assert "hint: ask for the fallback" in result.output

    result = invoke("predict", run_dir, "--user", "424242", "--movie", "2", "--fallback")
    assert result.exit_code == 0, result.output
    assert "note: user_id 424242 is not known: bias estimate mu + movie bias" in result.output


def test_error_boundary_prints_a_message_and_a_hint(run_dir: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resrec",
            "predict",
            str(run_dir),
            "--user",
            "424242",
            "--movie",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "error: unknown user_id 424242" in done.stderr
    assert "hint: ask for the fallback" in done.stderr
    assert "Traceback" not in done.stderr


def test_recommend_lists_titles_without_rated_movies(run_dir: Path) -> None:
    result = invoke("recommend", run_dir, "--user", "1", "-n", "5", "--json")
    data = json.loads(result.output[result.output.index("{") :])
    assert [item["rank"] for item in data["items"]] == [1, 2, 3, 4, 5]
    assert all(item["movie"]["title"] for item in data["items"])
    assert data["excluded_rated"] > 0

    table = invoke("recommend", run_dir, "--user", "1", "-n", "3", "--explain")
    assert table.exit_code == 0, table.output
    assert "top 3 for user_id 1 (model estimate;" in table.output
    assert "user_bias movie_bias" in table.output


def test_recommend_for_a_user_who_rated_everything_says_why(run_dir: Path) -> None:
    result = invoke("recommend", run_dir, "--user", EVERY_MOVIE_USER)
    assert result.exit_code == 0, result.output
    assert "reason: the user has rated every movie" in result.output
    with_rated = invoke("recommend", run_dir, "--user", EVERY_MOVIE_USER, "--include-rated")
    assert "top 10" in with_rated.output


def test_recommend_from_new_ratings(run_dir: Path) -> None:
    result = invoke("recommend", run_dir, "--rated", "2:5,5:4,8:1", "-n", "4")
    assert result.exit_code == 0, result.output
    assert "top 4 for the new user (folded-in estimate; 3 rated movies left out)" in result.output
    assert "Star Wars" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rated", "2:5,5"], "expected MOVIE_ID:RATING"),
        (["--rated", "2:4.5"], "not on the rating scale"),
        (["--user", "1", "--rated", "2:5"], "exactly one of --user"),
        ([], "exactly one of --user"),
    ],
)
def test_recommend_bad_input(run_dir: Path, args: list[str], message: str) -> None:
    result = invoke("recommend", run_dir, *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_untrained_user_needs_the_fallback(run_dir: Path) -> None:
    result = invoke("recommend", run_dir, "--user", UNTRAINED_USER)
    assert result.exit_code == 1 and "no training ratings" in result.output
    result = invoke("recommend", run_dir, "--user", UNTRAINED_USER, "--fallback", "-n", "2")
    assert result.exit_code == 0 and "fallback estimate" in result.output


def test_similar(run_dir: Path) -> None:
    result = invoke("similar", run_dir, "--movie", "2", "-n", "3")
    assert result.exit_code == 0, result.output
    assert "movies closest to movie_id 2 'Star Wars (1977)'" in result.output
    assert len(result.output.strip().splitlines()[-3:]) == 3


def test_explain_shows_terms_that_add_up(run_dir: Path) -> None:
    result = invoke("explain", run_dir, "--user", "1", "--movie", "2")
    assert result.exit_code == 0, result.output
    for term in ("mu", "user bias", "movie bias", "dot product", "side branch", "= sum"):
        assert term in result.output
    data = json.loads(
        invoke("explain", run_dir, "--user", "1", "--movie", "2", "--json").output.split("\n", 1)[1]
    )
    e = data["explanation"]
    assert e["mu"] + e["user_bias"] + e["movie_bias"] + e["dot"] + e["side"] == e["raw"]


def test_score_reports_bad_lines(run_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n1\n424242,2\n3,5\n")
    out = tmp_path / "scores.csv"
    result = invoke("score", run_dir, "--pairs", pairs, "--out", out)
    assert result.exit_code == 0, result.output
    assert "scored 2 of 4 rows" in result.output
    assert f"{pairs}:3: expected 2 fields, found 1" in result.output
    assert f"{pairs}:4: unknown user_id 424242" in result.output
    assert out.read_text().splitlines()[0] == "user_id,movie_id,prediction"

    again = invoke("score", run_dir, "--pairs", pairs, "--out", out)
    assert again.exit_code == 1 and "already exists" in again.output
    strict = invoke(
        "score", run_dir, "--pairs", pairs, "--out", out, "--fail-on-bad", "--overwrite"
    )
    assert strict.exit_code == 1


def test_recommend_for_new_ratings_can_skip_unknown_movies(run_dir: Path) -> None:
    refused = invoke("recommend", run_dir, "--rated", "2:5,424242:4,8:1", "-n", "3")
    assert refused.exit_code == 1 and "--ignore-unknown" in refused.output
    result = invoke(
        "recommend", run_dir, "--rated", "2:5,424242:4,8:1", "-n", "3", "--ignore-unknown"
    )
    assert result.exit_code == 0, result.output
    assert "top 3 for the new user" in result.output and "424242" in result.output


def _pairs_gz(path: Path, rows: int) -> Path:
    lines = "user_id,movie_id\n" + "".join(f"{1 + i % 40},{2 + i % 30}\n" for i in range(rows))
    path.write_bytes(gzip.compress(lines.encode()))
    return path


def test_score_on_a_truncated_gzip_is_a_clean_error(run_dir: Path, tmp_path: Path) -> None:
    whole = _pairs_gz(tmp_path / "pairs.csv.gz", 200_000).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out.csv"
    result = invoke("score", run_dir, "--pairs", cut, "--out", out, "--fallback")
    assert result.exit_code == 1
    assert f"{cut}: cannot be read to its end" in result.output
    assert "no predictions were written" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_score_fail_on_bad_leaves_no_output(run_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\nx,5\n1,5\n")
    out = tmp_path / "out.csv"
    result = invoke("score", run_dir, "--pairs", pairs, "--out", out, "--fail-on-bad")
    assert result.exit_code == 1
    assert "wrote nothing" in result.output and f"{pairs}:3:" in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))
    kept = invoke("score", run_dir, "--pairs", pairs, "--out", out)
    assert kept.exit_code == 0 and len(out.read_text().splitlines()) == 3
