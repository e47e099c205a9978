"""Drive Debian's Chromium through Playwright's sync API (support module, not a test file).

Never downloads a browser: it launches ``/usr/bin/chromium`` directly. The pytest fixtures
built on this live in ``tests/support/browser_fixtures.py``.

Playwright's sync API runs an event loop in the calling thread, so Django's async-safety
check would refuse ORM calls in the same test: the fixtures module sets
``DJANGO_ALLOW_ASYNC_UNSAFE=true``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.support.paths import PROJECT_ROOT

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS_DIR = PROJECT_ROOT / "test-artifacts"
# Generous for a loaded CI machine; every wait in the tests is for a concrete condition.
DEFAULT_TIMEOUT_MS = 10_000


def launch_chromium(playwright: Playwright) -> Browser:
    """Launch the system Chromium, headless, with background networking switched off."""
    if not Path(CHROMIUM_PATH).exists():
        raise FileNotFoundError(
            f"{CHROMIUM_PATH} not found: apt-get install -y chromium (never `playwright install`)"
        )
    return playwright.chromium.launch(
        executable_path=CHROMIUM_PATH, headless=True, args=CHROMIUM_ARGS
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    """A Chromium for as long as the ``with`` block lasts (session-scoped-friendly)."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, **context_options: Any) -> Page:
    """A page in a fresh context (own cookies), with the default timeout set."""
    options: dict[str, Any] = {"viewport": {"width": 1280, "height": 860}, **context_options}
    context = browser.new_context(**options)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return context.new_page()


def artifact_path(name: str) -> Path:
    """``test-artifacts/<name>.png``, with characters unsafe in file names replaced."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "screenshot"
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR / f"{safe}.png"


def save_screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    path = artifact_path(name)
    page.screenshot(path=str(path), full_page=full_page)
    return path


def log_in(page: Page, base_url: str, username: str, password: str) -> Page:
    """Log in through the real login form and wait until the app has redirected away."""
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    if "/login/" in page.url:
        raise AssertionError(f"login as {username!r} failed; still on {page.url}")
    return page


def is_loopback_url(url: str) -> bool:
    """True for URLs that never leave the machine (loopback hosts, data:, blob:, about:)."""
    parts = urlsplit(url)
    if parts.scheme in {"data", "blob", "about", "chrome", "devtools"}:
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
