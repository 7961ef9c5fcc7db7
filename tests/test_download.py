"""Tests for resrec.data.download against a local HTTP server (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from resrec.data.download import (
    MARKER_NAME,
    RELEASES,
    default_cache_dir,
    download,
    get_release,
    release_movies_path,
    release_ratings_path,
)
from resrec.errors import DownloadError

U_DATA = "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n"
U_ITEM = "10|Film A (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


def md5_of(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


ML100K_ZIP = make_zip({"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM})


@dataclass
class FakeGroupLens:
    """A tiny static file server: ``files`` maps a URL path to the bytes served."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    truncated: set[str] = field(default_factory=set)  # paths cut off half way


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy between the tests and 127.0.0.1, and no mirror or cache from the caller."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("RESREC_MOVIELENS_URL", raising=False)
    monkeypatch.delenv("RESREC_CACHE_DIR", raising=False)


@pytest.fixture
def server() -> Iterator[FakeGroupLens]:
    state = FakeGroupLens(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in state.truncated:
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/movielens"


def test_download_extracts_release_and_returns_folder(
    server: FakeGroupLens, tmp_path: Path
) -> None:
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP

    folder = download(
        "ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP)
    )

    assert folder == tmp_path / "ml-100k"
    assert release_ratings_path(folder, "ml-100k").read_text() == U_DATA
    assert release_movies_path(folder, "ml-100k") == folder / "u.item"
    record = json.loads((folder / MARKER_NAME).read_text())
    assert record["checksum"] == md5_of(ML100K_ZIP)
    assert record["url"] == f"{server.url}/ml-100k.zip"
    # Only the finished release folder is left; the staging folder is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]


def test_second_download_is_served_from_the_cache(server: FakeGroupLens, tmp_path: Path) -> None:
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP
    first = download(
        "ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP)
    )
    assert len(server.requests) == 1

    second = download(
        "ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP)
    )

    assert second == first
    assert len(server.requests) == 1


def test_base_url_and_cache_dir_come_from_environment(
    server: FakeGroupLens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP
    monkeypatch.setenv("RESREC_MOVIELENS_URL", server.url + "/")
    monkeypatch.setenv("RESREC_CACHE_DIR", str(tmp_path))

    folder = download("ml-100k", known_hash=md5_of(ML100K_ZIP), progress=True)

    assert default_cache_dir() == tmp_path / "movielens"
    assert folder == tmp_path / "movielens" / "ml-100k"


def test_checksum_mismatch_raises_and_keeps_nothing(server: FakeGroupLens, tmp_path: Path) -> None:
    corrupted = bytearray(ML100K_ZIP)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.files["/movielens/ml-100k.zip"] = bytes(corrupted)

    with pytest.raises(DownloadError) as info:
        download("ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP))

    text = str(info.value)
    assert "checksum mismatch" in text
    assert md5_of(ML100K_ZIP) in text
    assert md5_of(bytes(corrupted)) in text
    assert "nothing was kept" in text
    assert list(tmp_path.iterdir()) == []


def test_connection_dropped_mid_download_keeps_nothing(
    server: FakeGroupLens, tmp_path: Path
) -> None:
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP
    server.truncated.add("/movielens/ml-100k.zip")

    with pytest.raises(DownloadError, match="--ratings"):
        download("ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP))

    assert list(tmp_path.iterdir()) == []


def test_interrupted_extraction_leaves_nothing_that_looks_complete(
    server: FakeGroupLens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP

    def interrupted(self: zipfile.ZipFile, path: object = None, *args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(zipfile.ZipFile, "extractall", interrupted)
        download("ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP))
    assert list(tmp_path.iterdir()) == []

    folder = download(
        "ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP)
    )
    assert (folder / "u.data").is_file()
    assert len(server.requests) == 2


def test_registry_checksum_is_used_by_default(server: FakeGroupLens, tmp_path: Path) -> None:
    # Our little zip is not the real ML-100K, so the registry's MD5 rejects it.
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP

    with pytest.raises(DownloadError, match=RELEASES["ml-100k"].known_hash or "?"):
        download("ml-100k", cache_dir=tmp_path, base_url=server.url)

    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_suggests_ratings_option(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download("ml-20m", cache_dir=tmp_path, base_url=closed_port_url())

    text = str(info.value)
    assert "could not reach" in text
    assert "--ratings" in text
    assert "ml-20m/ratings.csv" in text
    assert list(tmp_path.iterdir()) == []


def test_http_404_names_status_and_suggests_ratings_option(
    server: FakeGroupLens, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError) as info:
        download("ml-1m", cache_dir=tmp_path, base_url=server.url)

    text = str(info.value)
    assert "HTTP 404" in text
    assert f"{server.url}/ml-1m.zip" in text
    assert "--ratings" in text
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_not_written_by_resrec_is_left_alone(
    server: FakeGroupLens, tmp_path: Path
) -> None:
    server.files["/movielens/ml-100k.zip"] = ML100K_ZIP
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "notes.txt").write_text("mine")

    with pytest.raises(DownloadError, match="was not written by resrec"):
        download("ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(ML100K_ZIP))

    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]
    assert [p.name for p in (tmp_path / "ml-100k").iterdir()] == ["notes.txt"]


def test_unwritable_cache_dir_is_a_download_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(DownloadError, match="cannot write to the cache folder"):
        download("ml-100k", cache_dir=blocker / "cache")


def test_unknown_name_lists_valid_releases_and_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download("ml-20", cache_dir=tmp_path)

    text = str(info.value)
    for name in RELEASES:
        assert name in text
    assert info.value.hint == "did you mean 'ml-20m'?"
    assert list(tmp_path.iterdir()) == []


def test_short_and_upper_case_names_are_accepted() -> None:
    assert get_release("20M").name == "ml-20m"
    assert get_release("ML-10M").folder == "ml-10M100K"


def test_zip_without_ratings_file_is_rejected(server: FakeGroupLens, tmp_path: Path) -> None:
    archive = make_zip({"ml-100k/u.item": U_ITEM})
    server.files["/movielens/ml-100k.zip"] = archive

    with pytest.raises(DownloadError, match=r"does not contain ml-100k/u\.data"):
        download("ml-100k", cache_dir=tmp_path, base_url=server.url, known_hash=md5_of(archive))

    assert list(tmp_path.iterdir()) == []


def rolling_zip() -> bytes:
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n"
    movies = "movieId,title,genres\n1,Toy Story (1995),Animation\n3,Film (1995),Comedy\n"
    return make_zip({"ml-latest-small/ratings.csv": ratings, "ml-latest-small/movies.csv": movies})


def test_rolling_release_is_verified_against_published_md5(
    server: FakeGroupLens, tmp_path: Path
) -> None:
    archive = rolling_zip()
    digest = hashlib.md5(archive).hexdigest()
    server.files["/movielens/ml-latest-small.zip"] = archive
    server.files["/movielens/ml-latest-small.zip.md5"] = (
        f"MD5 (ml-latest-small.zip) = {digest}\n".encode()
    )

    folder = download("ml-latest-small", cache_dir=tmp_path, base_url=server.url)

    assert server.requests == [
        "/movielens/ml-latest-small.zip.md5",
        "/movielens/ml-latest-small.zip",
    ]
    assert release_ratings_path(folder, "ml-latest-small").is_file()
    assert json.loads((folder / MARKER_NAME).read_text())["checksum"] == f"md5:{digest}"


def test_rolling_release_with_stale_md5_is_rejected(server: FakeGroupLens, tmp_path: Path) -> None:
    server.files["/movielens/ml-latest.zip"] = make_zip({"ml-latest/ratings.csv": "x\n"})
    server.files["/movielens/ml-latest.zip.md5"] = (
        b"0123456789abcdef0123456789abcdef  ml-latest.zip\n"
    )

    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("ml-latest", cache_dir=tmp_path, base_url=server.url)

    assert list(tmp_path.iterdir()) == []


def test_rolling_release_without_md5_file_fails_clearly(
    server: FakeGroupLens, tmp_path: Path
) -> None:
    server.files["/movielens/ml-latest.zip"] = make_zip({"ml-latest/ratings.csv": "x\n"})

    with pytest.raises(DownloadError) as info:
        download("ml-latest", cache_dir=tmp_path, base_url=server.url)

    assert "ml-latest.zip.md5: the server answered HTTP 404" in info.value.message
    assert info.value.hint is not None
    assert f"download {server.url}/ml-latest.zip yourself" in info.value.hint

    assert server.requests == ["/movielens/ml-latest.zip.md5"]
    assert list(tmp_path.iterdir()) == []


def test_malformed_known_hash_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="known_hash"):
        download("ml-100k", cache_dir=tmp_path, known_hash="0e33842e")


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_registry_entries_are_consistent(name: str) -> None:
    release = RELEASES[name]
    assert release.name == name
    assert release.ratings_member.startswith(release.folder + "/")
    assert release.rolling == name.startswith("ml-latest")
    if not release.rolling:
        assert release.known_hash is not None
        algorithm, digest = release.known_hash.split(":")
        assert algorithm == "md5"
        assert len(digest) == 32
    assert release_ratings_path("/x", name) == Path("/x") / release.ratings_file
