"""Download, verify and unpack MovieLens releases from GroupLens.

:func:`download` fetches a release's zip from GroupLens (or a mirror), checks it
against a known checksum, and unpacks it into a per-user cache. It returns the
release folder, laid out exactly as unzipping the archive by hand would lay it
out (``ml-20m/ratings.csv``, ``ml-10M100K/ratings.dat`` ...), so a folder
downloaded here and one unpacked by a user read the same way.

Checksums
---------
GroupLens publishes an MD5 digest beside every archive (``<name>.zip.md5``).
The fixed releases (ML-100K, ML-1M, ML-10M, ML-20M, ML-25M) have their digest
written into :data:`RELEASES`; each one appears in several independent public
projects that check the archive, some of which quote GroupLens's sidecar file
line for line (``MD5 (ml-20m.zip) = ...``). The rolling releases
(``ml-latest``, ``ml-latest-small``) are re-published from time to time with
new contents, so no digest can be written down for them: for those,
:func:`download` first fetches the ``.md5`` file GroupLens publishes beside
the zip and verifies the zip against it.

The cache
---------
Releases are kept under :func:`default_cache_dir`: ``$RESREC_CACHE_DIR/movielens``
when that variable is set, else ``movielens`` inside the operating system's
per-user cache folder for resrec (``~/.cache/resrec`` on Linux). Each release
is downloaded and unpacked inside a hidden staging folder and then renamed into
place in one step, with a small ``.resrec-download.json`` record inside, so an
interrupted or failed download never leaves a folder that looks complete; a
second call finds the folder and returns at once without any network access.

Limitations
-----------
A cached rolling release is not refreshed when GroupLens publishes a new
version; delete its folder from the cache to fetch the current one.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resrec.data.ratings import HALF_STARS, WHOLE_STARS, RatingScale
from resrec.errors import DownloadError

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
"""Where GroupLens publishes the MovieLens zips (``<GROUPLENS_URL>/<name>.zip``)."""

CACHE_DIR_ENV = "RESREC_CACHE_DIR"
"""Environment variable naming resrec's cache root (releases go in ``movielens/``)."""

BASE_URL_ENV = "RESREC_MOVIELENS_URL"
"""Environment variable naming a mirror to use instead of :data:`GROUPLENS_URL`."""

MARKER_NAME = ".resrec-download.json"
"""The record written inside a release folder once it is complete."""

_HASH_PATTERN = re.compile(r"^(md5|sha1|sha256|sha512):[0-9a-fA-F]+$")
_MD5_PATTERN = re.compile(r"\b[0-9a-fA-F]{32}\b")


@dataclass(frozen=True)
class Release:
    """One MovieLens release as GroupLens publishes it.

    Attributes
    ----------
    name : str
        The release's name, which is also its zip's name without ``.zip``.
    folder : str
        The top-level folder inside the zip (``ml-10M100K`` for ML-10M).
    ratings_file : str
        The ratings file, relative to ``folder``.
    movies_file : str or None
        The movies file, relative to ``folder``.
    scale : RatingScale
        The rating scale of the release.
    layout : str
        The ``layout`` that :func:`resrec.data.read_ratings` uses for the ratings file.
    known_hash : str or None
        ``"md5:<hex>"``, the digest GroupLens publishes for the zip; ``None`` for
        a rolling release, whose digest is fetched from ``<name>.zip.md5``.
    """

    name: str
    folder: str
    ratings_file: str
    movies_file: str | None
    scale: RatingScale
    layout: str
    known_hash: str | None

    @property
    def rolling(self) -> bool:
        """True for a release GroupLens re-publishes with new contents."""
        return self.known_hash is None

    @property
    def zip_name(self) -> str:
        return f"{self.name}.zip"

    @property
    def ratings_member(self) -> str:
        """The ratings file's path inside the zip."""
        return f"{self.folder}/{self.ratings_file}"

    @property
    def movies_member(self) -> str | None:
        """The movies file's path inside the zip."""
        return None if self.movies_file is None else f"{self.folder}/{self.movies_file}"


# The MD5 digests are GroupLens's own (its <name>.zip.md5 files), each found
# in at least two independent public projects that verify the archive.
RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        Release(
            name="ml-100k",
            folder="ml-100k",
            ratings_file="u.data",
            movies_file="u.item",
            scale=WHOLE_STARS,
            layout="udata",
            known_hash="md5:0e33842e24a9c977be4e0107933c0723",
        ),
        Release(
            name="ml-1m",
            folder="ml-1m",
            ratings_file="ratings.dat",
            movies_file="movies.dat",
            scale=WHOLE_STARS,
            layout="dat",
            known_hash="md5:c4d9eecfca2ab87c1945afe126590906",
        ),
        Release(
            name="ml-10m",
            folder="ml-10M100K",
            ratings_file="ratings.dat",
            movies_file="movies.dat",
            scale=HALF_STARS,
            layout="dat",
            known_hash="md5:ce571fd55effeba0271552578f2648bd",
        ),
        Release(
            name="ml-20m",
            folder="ml-20m",
            ratings_file="ratings.csv",
            movies_file="movies.csv",
            scale=HALF_STARS,
            layout="movielens-csv",
            known_hash="md5:cd245b17a1ae2cc31bb14903e1204af3",
        ),
        Release(
            name="ml-25m",
            folder="ml-25m",
            ratings_file="ratings.csv",
            movies_file="movies.csv",
            scale=HALF_STARS,
            layout="movielens-csv",
            known_hash="md5:6b51fb2759a8657d3bfcbfc42b592ada",
        ),
        Release(
            name="ml-latest-small",
            folder="ml-latest-small",
            ratings_file="ratings.csv",
            movies_file="movies.csv",
            scale=HALF_STARS,
            layout="movielens-csv",
            known_hash=None,  # rolling: verified against <name>.zip.md5
        ),
        Release(
            name="ml-latest",
            folder="ml-latest",
            ratings_file="ratings.csv",
            movies_file="movies.csv",
            scale=HALF_STARS,
            layout="movielens-csv",
            known_hash=None,  # rolling: verified against <name>.zip.md5
        ),
    )
}


def get_release(name: str) -> Release:
    """The registry entry for ``name`` (case-insensitive; ``"20m"`` means ``"ml-20m"``).

    Raises
    ------
    DownloadError
        For a name that is not in :data:`RELEASES`; the message lists the valid
        names and suggests the closest.
    """
    key = name.strip().lower()
    if key in RELEASES:
        return RELEASES[key]
    if f"ml-{key}" in RELEASES:
        return RELEASES[f"ml-{key}"]

    valid = ", ".join(RELEASES)
    close = difflib.get_close_matches(key, list(RELEASES), n=1)
    hint = f"did you mean {close[0]!r}?" if close else None
    raise DownloadError(f"unknown MovieLens release {name!r}; valid releases: {valid}", hint=hint)


def default_cache_dir() -> Path:
    """The folder releases are kept in unless ``cache_dir`` says otherwise."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser() / "movielens"

    import pooch

    return Path(pooch.os_cache("resrec")) / "movielens"


def release_ratings_path(folder: str | Path, name: str) -> Path:
    """The ratings file of release ``name`` unpacked at ``folder``.

    ``folder`` is the release folder :func:`download` returns (or one a user
    unzipped by hand). Only computes the path; it does not check the file exists.
    """
    return Path(folder) / get_release(name).ratings_file


def release_movies_path(folder: str | Path, name: str) -> Path | None:
    """The movies file of release ``name`` unpacked at ``folder``, or None if it has none."""
    movies_file = get_release(name).movies_file
    return None if movies_file is None else Path(folder) / movies_file


def download(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    progress: bool = False,
    known_hash: str | None = None,
) -> Path:
    """Download, verify and unpack a MovieLens release; return its folder.

    Parameters
    ----------
    name : str
        A key of :data:`RELEASES`, such as ``"ml-20m"`` or ``"ml-latest-small"``.
    cache_dir : path, optional
        The folder to keep releases in; default :func:`default_cache_dir`.
    base_url : str, optional
        The URL of the folder holding ``<name>.zip`` (and ``<name>.zip.md5``), for
        a mirror or a test server. Default: ``$RESREC_MOVIELENS_URL``, else
        :data:`GROUPLENS_URL`.
    progress : bool
        Show a progress bar (tqdm) while downloading.
    known_hash : str, optional
        ``"ALGORITHM:HEX"`` (md5, sha1, sha256 or sha512) to verify the zip
        against instead of the registry's digest: for a mirror that repackages
        the archives, or a test serving its own small zip. For a rolling release
        it also skips fetching the ``.md5`` file.

    Returns
    -------
    Path
        The release folder, ``<cache_dir>/<Release.folder>``; pass it with the
        release name to :func:`release_ratings_path`.

    Raises
    ------
    DownloadError
        For an unknown name, an unreachable host or an HTTP error, a checksum
        mismatch, or a zip without the expected ratings file. Nothing that looks
        like a complete release is left in the cache after any of these.
    """
    release = get_release(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / release.folder
    if _is_complete(target):
        logger.debug("%s is already in the cache at %s", release.name, target)
        return target

    if known_hash is not None and not _HASH_PATTERN.match(known_hash):
        raise DownloadError(
            f"known_hash must look like 'md5:<hex>' or 'sha256:<hex>'; got {known_hash!r}"
        )
    url = f"{_base_url(base_url)}/{release.zip_name}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{release.name}-partial-", dir=cache))
    except OSError as exc:
        raise DownloadError(
            f"cannot write to the cache folder {cache} ({exc.strerror or exc})",
            hint=f"pass another cache folder, or set ${CACHE_DIR_ENV} to a writable folder",
        ) from None
    try:
        expected = known_hash or release.known_hash or _published_md5(url, release, staging)
        archive = _fetch(url, expected, release, staging, progress, cache)
        unpacked = _unpack(archive, release, staging / "unpacked")
        _write_marker(unpacked, release, url, expected)
        _publish(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    logger.info("%s is ready at %s", release.name, target)
    return target


def _base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(BASE_URL_ENV) or GROUPLENS_URL
    return url.rstrip("/")


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER_NAME).is_file()


def _manual_hint(url: str, release: Release) -> str:
    return (
        f"download {url} yourself (a browser or curl), unzip it, and pass the ratings "
        f"file with --ratings PATH (it is {release.ratings_member} inside the zip)"
    )


def _network_error(
    exc: requests.RequestException, url: str, release: Release, zip_url: str
) -> DownloadError:
    """A DownloadError for a failed request of ``url``, and how to get ``zip_url`` by hand."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = f"HTTP {exc.response.status_code} {exc.response.reason or ''}".strip()
        message = f"could not download {url}: the server answered {status}"
    else:
        message = f"could not reach the server for {url} ({type(exc).__name__}: {exc})"
    return DownloadError(message, hint=_manual_hint(zip_url, release))


def _get(url: str, output: Path, release: Release, zip_url: str) -> None:
    """Fetch ``url`` into ``output`` with pooch's HTTP downloader, without a hash check."""
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=False)
    try:
        downloader(url, str(output), None)
    except requests.RequestException as exc:
        raise _network_error(exc, url, release, zip_url) from exc


def _published_md5(url: str, release: Release, staging: Path) -> str:
    """Fetch and parse the ``.md5`` file GroupLens publishes beside a rolling release."""
    md5_url = f"{url}.md5"
    md5_file = staging / f"{release.zip_name}.md5"
    logger.info("%s is a rolling release; fetching its published digest %s", release.name, md5_url)
    _get(md5_url, md5_file, release, zip_url=url)

    digests = set(_MD5_PATTERN.findall(md5_file.read_text(encoding="utf-8", errors="replace")))
    if len(digests) != 1:
        raise DownloadError(
            f"{md5_url} does not hold exactly one MD5 digest, so {release.zip_name} "
            "cannot be verified",
            hint=_manual_hint(url, release),
        )
    return f"md5:{digests.pop().lower()}"


def _fetch(
    url: str, expected: str, release: Release, staging: Path, progress: bool, cache: Path
) -> Path:
    """Download the zip into ``staging`` with pooch, which checks ``expected``."""
    import pooch
    import requests

    logger.info("downloading %s (expected %s)", url, expected)
    started = time.perf_counter()
    try:
        fetched = pooch.retrieve(
            url,
            known_hash=expected,
            fname=release.zip_name,
            path=staging,
            downloader=pooch.HTTPDownloader(progressbar=progress),
        )
    except requests.RequestException as exc:
        raise _network_error(exc, url, release, zip_url=url) from exc
    except ValueError as exc:
        if "does not match the known hash" not in str(exc):
            raise
        got = re.search(r"but got (\w+)", str(exc))
        algorithm = expected.split(":")[0]
        raise DownloadError(
            f"checksum mismatch for {url}: expected {expected}, got "
            f"{algorithm}:{got.group(1) if got else '(unknown)'}; the download was "
            f"deleted and nothing was kept in the cache ({cache})",
            hint="the download was corrupted or the file on the server changed; try "
            "again, and if it keeps failing, " + _manual_hint(url, release),
        ) from None

    logger.debug("downloaded %s in %.1f s", url, time.perf_counter() - started)
    return Path(fetched)


def _unpack(archive: Path, release: Release, destination: Path) -> Path:
    """Unzip ``archive`` into ``destination``; return the release folder inside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = set(zf.namelist())
            if release.ratings_member not in members:
                raise DownloadError(
                    f"{release.zip_name} does not contain {release.ratings_member}, the "
                    f"ratings file of {release.name}; nothing was kept in the cache",
                    hint="the archive on the server is not the expected release; check "
                    "the address (base_url / $RESREC_MOVIELENS_URL)",
                )
            zf.extractall(destination)
    except zipfile.BadZipFile as exc:
        raise DownloadError(
            f"{release.zip_name} passed its checksum but is not a valid zip ({exc})"
        ) from None
    return destination / release.folder


def _write_marker(folder: Path, release: Release, url: str, expected: str) -> None:
    record = {
        "release": release.name,
        "url": url,
        "checksum": expected,
        "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / MARKER_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _publish(unpacked: Path, target: Path) -> None:
    """Rename the finished folder into place in one step."""
    try:
        unpacked.rename(target)
    except OSError:
        if _is_complete(target):  # another process finished the same release first
            logger.debug("%s was completed by another process", target)
            return
        if target.exists():
            raise DownloadError(
                f"{target} exists but was not written by resrec's download, so it was left alone",
                hint=f"remove {target}, or pass another cache_dir",
            ) from None
        raise
