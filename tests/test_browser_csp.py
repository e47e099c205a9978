"""Every page under its Content-Security-Policy, in a real Chromium: nothing refused, all works.

Each document must arrive with a policy, and the page must raise no
``securitypolicyviolation`` event and log no console error while people use it: htmx
actions, keyboard shortcuts, the sandboxed body frame, autosave, the admin's JavaScript.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import RequestFactory
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect

from mailsync.models import Message
from mailsync.runner import sync_mailbox
from teaminbox.models import Membership
from tests.browser import log_in, new_page
from tests.support.personas import PASSWORD
from tests.test_browser_conversation import long_thread

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} ` +
    `at ${event.sourceFile}:${event.lineNumber} on ${document.location.pathname}`
  );
});
"""


class Watched:
    """A page that records policy violations, console errors and each document's policy."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.documents: list[tuple[str, str | None]] = []
        self.expected_404s: set[str] = set()
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"{error} ({page.url})"))
        page.on("response", self._on_response)

    def _on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        # Chromium logs every 404 it meets: the favicon we do not have, the 404 pages we ask for.
        source = message.location.get("url", "")
        if "status of 404" in message.text and (
            source.endswith("/favicon.ico") or source in self.expected_404s
        ):
            return
        self.errors.append(f"{message.text} ({source or self.page.url})")

    def _on_response(self, response: Any) -> None:
        request = response.request
        document = request.is_navigation_request() and request.frame == self.page.main_frame
        if document and response.status not in (301, 302, 303):
            self.documents.append((response.url, response.headers.get("content-security-policy")))

    def violations(self) -> list[str]:
        found: list[str] = []
        for frame in self.page.frames:
            try:
                found += frame.evaluate("window.__cspViolations || []")
            except Exception:  # a sandboxed frame without scripts: console errors cover it
                continue
        return found

    def check(self) -> None:
        """Fail on anything refused so far on the current document, or any earlier one."""
        assert self.violations() == [], self.violations()
        assert self.errors == [], self.errors
        unprotected = [
            url
            for url, policy in self.documents
            if not policy or "frame-ancestors 'none'" not in policy or "unsafe" in policy
        ]
        assert unprotected == [], f"pages without a strict policy: {unprotected}"

    def visit(self, url: str, *, status: int = 200) -> None:
        if status == 404:
            self.expected_404s.add(url)
        response = self.page.goto(url)
        assert response is not None
        assert response.status == status, url
        self.page.wait_for_load_state("load")
        self.check()


@pytest.fixture
def watched(browser: Browser):
    tab = new_page(browser)
    yield Watched(tab)
    tab.context.close()


def html_mail(subject: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Customer <customer@example.org>"
    message["To"] = "support@example.test"
    message["Subject"] = subject
    message["Message-ID"] = "<csp-test@example.org>"
    message.set_content("Hello, plain.")
    message.add_alternative(
        '<p style="color: #333">Hello from the <b>HTML</b> part.</p>',
        subtype="html",
    )
    return bytes(message)


def test_the_inbox_message_and_compose_pages_work_under_their_policy(
    shared_mailbox, mail_user, bob, live_server, watched
):
    mail_user.append(html_mail("Order 1234"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(folder__mailbox=shared_mailbox, subject="Order 1234")
    page = watched.page

    watched.visit(f"{live_server.url}/login/")
    log_in(page, live_server.url, "bob", PASSWORD)
    watched.check()  # the mailbox list

    # The inbox, and its keyboard shortcuts: j selects the first row, o opens it.
    watched.visit(f"{live_server.url}/m/{shared_mailbox.name}/")
    page.keyboard.press("j")
    expect(page.locator("[data-conversation-row].cursor")).to_have_count(1)
    with page.expect_navigation():
        page.keyboard.press("o")
    assert page.url.endswith(f"/c/{message.conversation_id}/")
    watched.check()
    # the message's own page, from its line in the conversation
    with page.expect_navigation():
        page.get_by_role("link", name="Open message").click()
    assert page.url.endswith(f"/messages/{message.pk}/")
    watched.check()

    # The sandboxed body frame loads under its own policy (framed by our page: 'self').
    body = page.frame_locator("iframe.body-frame").locator("p")
    expect(body).to_have_text("Hello from the HTML part.")

    # htmx swaps the flag actions in place, from a click and from a shortcut.
    page.evaluate("window.__sameDocument = true")
    settled = "document.addEventListener('htmx:afterSettle', () => { window.__settled = true })"
    page.evaluate(settled)
    page.evaluate("window.__settled = false")
    # (opening the conversation marked it read)
    page.get_by_role("button", name="Mark unread", exact=True).click()
    # Settled: htmx has processed the new buttons, so the shortcut's click is htmx's too.
    page.wait_for_function("() => window.__settled === true")
    expect(page.get_by_role("button", name="Mark read", exact=True)).to_be_visible()
    page.evaluate("window.__settled = false")
    page.keyboard.press("Shift+I")
    page.wait_for_function("() => window.__settled === true")
    expect(page.get_by_role("button", name="Mark unread", exact=True)).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True, "an action reloaded the page"
    watched.check()

    # Reply: the compose page, and its htmx autosave.
    with page.expect_navigation():
        page.get_by_role("link", name="Reply", exact=True).click()
    watched.check()
    page.locator("textarea").first.fill("Thanks, it ships today.")
    expect(page.locator("#draft-status")).to_contain_text("Saved")
    watched.check()

    # A page that does not exist, then logging out through the top bar.
    watched.visit(f"{live_server.url}/m/{shared_mailbox.name}/messages/999999/", status=404)
    with page.expect_navigation():
        page.get_by_role("button", name="Log out").click()
    assert "/login/" in page.url
    watched.check()


def test_the_conversation_page_and_its_scripts_work_under_its_policy(
    shared_mailbox, mail_user, bob, live_server, watched
):
    conversation = long_thread(mail_user, shared_mailbox, bob)
    page = watched.page
    watched.visit(f"{live_server.url}/login/")
    log_in(page, live_server.url, "bob", PASSWORD)
    watched.visit(f"{live_server.url}/m/{shared_mailbox.name}/c/{conversation.pk}/")

    # frame.js sized the body frame to its document (it reads it: same origin, no script in it)
    frame = page.locator("iframe.body-frame").last
    page.wait_for_function(
        "f => f.contentDocument && f.contentDocument.readyState === 'complete'"
        " && f.clientHeight >= f.contentDocument.documentElement.scrollHeight",
        arg=frame.element_handle(),
    )
    page.locator("details.thread-message summary").first.click()
    # shortcuts.js: the help dialog; toast.js: the toast after an htmx action, and its Undo
    page.keyboard.press("?")
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Pending", exact=True).click()
    expect(page.locator("#toasts")).to_contain_text("Marked pending.")
    page.locator("#toasts").get_by_role("button", name="Undo").click()
    expect(page.locator("#toasts")).to_contain_text("Marked open.")
    page.get_by_label("Add an internal note").fill("Checked under the policy")
    page.get_by_role("button", name="Add note").click()
    expect(page.locator(".entry-note")).to_contain_text("Checked under the policy")
    watched.check()


def test_every_admin_page_works_under_its_policy(shared_mailbox, mail_user, live_server, watched):
    mail_user.append(html_mail("Order 1234"))
    sync_mailbox(shared_mailbox)
    root = User.objects.create_superuser("root", "root@example.test", PASSWORD)
    Group.objects.create(name="Support staff")
    Membership.objects.create(user=root, mailbox=shared_mailbox, role=Membership.Role.ADMIN)
    page = watched.page

    # A wrong password first: the admin login's error, and an access attempt row to list.
    watched.visit(f"{live_server.url}{reverse('admin:login')}")
    page.fill("#id_username", "root")
    page.fill("#id_password", "not-the-password")
    with page.expect_navigation():
        page.click("input[type=submit]")
    watched.check()
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.url.rstrip("/").endswith("/admin")
    watched.check()

    request = RequestFactory().get("/admin/")
    request.user = root
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        prefix = f"{live_server.url}/admin/{opts.app_label}/{opts.model_name}"
        watched.visit(f"{prefix}/")
        if model_admin.has_add_permission(request):
            watched.visit(f"{prefix}/add/")
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            watched.visit(f"{prefix}/{first.pk}/change/")

    # The admin's JavaScript: the membership form's user autocomplete (select2) and the
    # changelist's select-all checkbox with its action bar.
    watched.visit(f"{live_server.url}/admin/teaminbox/membership/add/")
    page.locator(".select2-selection").first.click()
    page.locator(".select2-search__field").fill("bo")
    expect(page.locator(".select2-results__option", has_text="bob")).to_be_visible()
    watched.check()
    watched.visit(f"{live_server.url}/admin/auth/user/")
    page.locator("#action-toggle").check()
    expect(page.locator(".action-counter")).to_contain_text("3 of 3 selected")
    watched.check()

    watched.visit(f"{live_server.url}/admin/password_change/")
    watched.visit(f"{live_server.url}/admin/no-such-page/", status=404)
    watched.visit(f"{live_server.url}/admin/")
    with page.expect_navigation():
        page.locator("#logout-form button").click()
    watched.check()
