"""An automated accessibility audit (axe-core, through axe-playwright-python) in Chromium:
no serious or critical violation on the conversation list, a conversation and the reply
form, in the light and the dark theme.

The message bodies' frames are left out (``iframes: False``): they hold the customer's
HTML, which we show but do not write, and run no script axe could be injected into.
"""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

from tests.test_browser_conversation import long_thread, page_url

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

OPTIONS = {"resultTypes": ["violations"], "iframes": False}


def serious_violations(page: Page) -> list[str]:
    results = Axe().run(page, options=OPTIONS)
    found: list[dict[str, Any]] = results.response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(str(node["target"]) for node in v["nodes"][:5])
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_list_a_conversation_and_the_reply_form_have_no_serious_violations(
    scheme, shared_mailbox, mail_user, bob, live_server, logged_in_page
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    page = logged_in_page(live_server, bob)
    page.emulate_media(color_scheme=scheme)
    pages = {
        "list": f"{live_server.url}/m/{shared_mailbox.name}/",
        "conversation": page_url(live_server, conversation),
    }
    report: dict[str, list[str]] = {}
    for name, url in pages.items():
        page.goto(url)
        page.wait_for_load_state("load")
        report[name] = serious_violations(page)
    # the reply form, reached the way people do: r on the conversation
    page.goto(pages["conversation"])
    with page.expect_navigation():
        page.keyboard.press("r")
    page.wait_for_load_state("load")
    report["reply form"] = serious_violations(page)
    assert report == {"list": [], "conversation": [], "reply form": []}


def test_the_skip_link_leads_to_the_main_content(shared_mailbox, bob, live_server, logged_in_page):
    page = logged_in_page(live_server, bob)
    page.goto(f"{live_server.url}/m/{shared_mailbox.name}/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    assert skip.evaluate("el => el === document.activeElement")
    box = skip.bounding_box()
    assert box is not None and box["y"] >= 0, "the focused skip link is on screen"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    assert page.locator("header").count() >= 1 and page.locator("main").count() == 1
