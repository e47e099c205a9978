"""pytest fixtures for browser tests: one Chromium per session, a fresh context per test.

Load it with ``pytest_plugins`` in tests/conftest.py (or ``-p tests.support.browser_fixtures``).

- ``browser``: the session's Chromium (`tests.browser.launch_chromium`).
- ``page``: a page in a new context; screenshotted at teardown into
  ``test-artifacts/<test name>.png`` (always, so a failure leaves a picture).
- ``logged_in_page``: ``logged_in_page(live_server, user)`` opens a new context, logs in
  through the real login form and returns the page (screenshotted too).

Tests that use these need ``live_server`` (hence ``transactional_db``) and
``@pytest.mark.browser``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Playwright's sync API keeps an event loop running in the test thread; without this,
# every ORM call in a browser test raises SynchronousOnlyOperation.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser import launch_chromium, log_in, new_page, save_screenshot

LoggedInPage = Callable[[Any, Any], Page]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the item, so fixtures can tell whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


def _close(page: Page, name: str) -> None:
    try:
        if not page.is_closed():
            save_screenshot(page, name)
    except Exception as exc:
        print(f"screenshot {name} failed: {exc}")
    finally:
        page.context.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    tab = new_page(browser)
    yield tab
    suffix = "-FAILED" if _failed(request) else ""
    _close(tab, f"{request.node.name}{suffix}")


@pytest.fixture
def logged_in_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[LoggedInPage]:
    """Factory: ``logged_in_page(live_server, user)`` -> a logged-in page in its own context
    (so one test can have bob and charlie side by side)."""
    pages: list[tuple[Page, str]] = []

    def open_as(live_server: Any, user: Any, password: str | None = None) -> Page:
        # Imported late: this plugin loads before Django is set up.
        from tests.support.personas import PASSWORD

        tab = new_page(browser)
        pages.append((tab, user.get_username()))
        return log_in(tab, live_server.url, user.get_username(), password or PASSWORD)

    yield open_as
    suffix = "-FAILED" if _failed(request) else ""
    for tab, username in pages:
        _close(tab, f"{request.node.name}-{username}{suffix}")
