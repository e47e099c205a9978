"""The search page in a real Chromium: type a query, see the found words marked, open a
result, come back with the search intact -- under the app's strict CSP."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import ConsoleMessage, expect

from tests.test_search import make_fixture_mailbox

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_search_shows_marked_results_and_survives_opening_one(
    live_server: Any, logged_in_page: Any, alice: User, bob: User, charlie: User
) -> None:
    make_fixture_mailbox(alice, bob, charlie)
    page = logged_in_page(live_server, alice)
    refused: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", on_console)
    page.goto(f"{live_server.url}/m/support/search")
    box = page.get_by_role("searchbox", name="Search")
    box.fill("fevrier OR parcel")
    with page.expect_navigation():
        box.press("Enter")
    assert "q=fevrier+OR+parcel" in page.url  # the search is in the URL, to share
    results = page.locator("li.search-result")
    expect(results).to_have_count(2)
    expect(page.locator("mark", has_text="février")).to_be_visible()
    expect(page.locator("mark", has_text="parcel")).to_be_visible()

    with page.expect_navigation():
        page.get_by_role("link", name="Order shipped").click()
    assert "/c/" in page.url  # the conversation page
    page.go_back()
    expect(page.get_by_role("searchbox", name="Search")).to_have_value("fevrier OR parcel")
    expect(page.locator("li.search-result")).to_have_count(2)
    expect(page.locator("mark", has_text="février")).to_be_visible()
    assert refused == []


def test_a_bad_query_shows_a_sentence_in_the_page(
    live_server: Any, logged_in_page: Any, alice: User, bob: User, charlie: User
) -> None:
    make_fixture_mailbox(alice, bob, charlie)
    page = logged_in_page(live_server, alice)
    page.goto(f"{live_server.url}/m/support/search")
    page.get_by_role("searchbox", name="Search").fill("before:yesterdayish")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("“before:yesterdayish” is not a date")
