"""The web page in headless Chromium (Debian's ``chromium`` driven by Playwright).

Skips with the reason when Playwright or Chromium is missing. The screenshot
of the recommendations goes to ``$RESREC_SCREENSHOT_DIR`` when set, else to the
test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_api import start_server, stop_server
from tests.test_inference import build_run

CHROMIUM = os.environ.get("RESREC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run_dir = build_run(tmp_path_factory.mktemp("web"))
    process, url = start_server(run_dir)
    yield url
    stop_server(process)


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(server)
    page.wait_for_selector("body[data-ready='true']")
    yield page
    context.close()


def screenshot_path(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RESREC_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "web-recommendations.png"


def test_rate_three_movies_and_get_explained_recommendations(page: Any, tmp_path: Path) -> None:
    assert "ResidualNet model" in page.inner_text("#about")
    page.fill("#search", "movie number")
    page.press("#search", "Enter")
    page.wait_for_selector("#search-results li button.rate")

    rated = []
    results = page.locator("#search-results li:has(button.rate)")
    for i, rating in enumerate(["5", "4", "1"]):
        item = results.nth(i)
        rated.append(int(item.get_attribute("data-movie-id")))
        item.locator("select.rating").select_option(rating)
        item.locator("button.rate").click()
    assert page.locator("#rated li").count() == 3
    assert "1 ★" in page.inner_text("#rated")

    page.click("#recommend")
    page.wait_for_selector("#results tbody tr")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 10
    shown = [int(rows.nth(i).get_attribute("data-movie-id")) for i in range(rows.count())]
    assert not set(shown) & set(rated)
    first = rows.nth(0)
    assert first.locator(".title").inner_text().startswith(("Movie number", "Star", "Alien"))
    assert float(first.locator(".prediction").inner_text()) >= float(
        rows.nth(9).locator(".prediction").inner_text()
    )
    assert first.locator(".bar").count() == 4
    assert "= " in first.locator(".sum").inner_text()
    assert page.inner_text("#status") == "Top 10 for your ratings."
    assert "folded in from 3 ratings" in page.inner_text("#results-note")

    path = screenshot_path(tmp_path)
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_existing_user_and_an_unknown_one(page: Any) -> None:
    page.fill("#user-id", "1")
    page.press("#user-id", "Enter")
    page.wait_for_selector("#results tbody tr")
    assert page.inner_text("#status") == "Top 10 for user_id 1."

    page.fill("#user-id", "424242")
    page.press("#user-id", "Enter")
    page.wait_for_function("document.querySelector('#status').classList.contains('error')")
    assert "unknown user_id 424242" in page.inner_text("#status")
    assert page.locator("#results").is_hidden()
