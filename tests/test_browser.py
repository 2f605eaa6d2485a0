"""A real headless Chromium (Debian's) against `atlas serve` over the tiny index.

Opens the overview, sorts the latent table, opens a latent, searches and submits live text,
saving a screenshot of each page under runs/screenshots/. Playwright's own browser download
does not work offline, so it drives /usr/bin/chromium; `make setup` installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

pytestmark = pytest.mark.browser
SCREENSHOTS = Path(__file__).resolve().parent.parent / "runs" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make setup` (or `make test`)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(app_index: Path) -> Iterator[str]:
    port = free_port()
    atlas = Path(sys.executable).parent / "atlas"
    command = [str(atlas), "serve", "--index", str(app_index), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(
                    f"atlas serve exited: {process.stdout.read() if process.stdout else ''}"
                )
            try:
                if httpx.get(url + "/api/build", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("atlas serve did not answer within 30 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        # A fresh profile folder: Playwright passes it as --user-data-dir itself.
        browser = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=[flag for flag in CHROMIUM_FLAGS if flag != "--headless"],
            viewport={"width": 1280, "height": 900},
        )
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.console_errors = []  # type: ignore[attr-defined]
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        yield page
        browser.close()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_user_browses_sorts_opens_searches_and_runs_live_text(
    server: str, browser_page: Any
) -> None:
    page = browser_page
    print(f"\nscreenshots: {SCREENSHOTS}")
    page.goto(server + "/")
    assert "64 latents" in page.locator("h1").inner_text()
    assert page.locator("#density-histogram svg rect.bar").count() > 0
    assert page.evaluate("typeof window.htmx") == "object", "htmx did not load: run `make setup`"
    shot(page, "1-overview")

    page.click("nav >> text=Latents")
    page.wait_for_selector("#latent-table tbody tr[data-latent]")
    page.click('th a.sort[data-sort="density"]')  # an htmx swap, pushed to the address bar
    page.wait_for_url("**/latents?sort=density*")
    page.wait_for_selector('th a.sort.active[data-sort="density"]')
    expected = httpx.get(server + "/api/latents?sort=density&order=desc&limit=1").json()
    first = page.locator("#latent-table tbody tr[data-latent]").first.get_attribute("data-latent")
    assert first == str(expected["latents"][0]["latent_id"])
    shot(page, "2-latents-by-density")

    page.locator("#latent-table a.latent-link").first.click()
    page.wait_for_url(f"**/latents/{first}")
    page.wait_for_selector("#top-examples span.tok.peak")
    assert page.locator("#activation-histogram svg rect.bar").count() > 0
    shot(page, "3-latent")

    page.goto(server + "/search")
    page.fill("#search-q", "the")
    page.press("#search-q", "Enter")
    page.wait_for_selector("#latent-results li")
    assert "q=the" in page.url
    shot(page, "4-search")

    page.goto(server + "/live")
    page.fill("#live-text", "The os module provides a portable way of using the system.")
    page.click("#live-form button")
    page.wait_for_selector("#live-result li.live-token a.latent-link", timeout=60_000)
    assert page.locator("#live-result li.live-token").count() > 5
    shot(page, "5-live")
    assert page.console_errors == []
