"""Every message of the shared MIME corpus, through Dovecot and the sync, renders as a page.

(a) all of ``../shared/corpus/mime/**/*.eml`` in one mailbox: listed, message page and body
    frame answer 200, and the stored bytes are exactly what Dovecot returns;
(b) in Chromium, the hand-checked files of `tests.corpus_expectations` show the expected
    subject, sender and body text (or the "shown raw" notice).

Each is one test that loops and collects failures, so a report names every broken file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils.html import escape
from playwright.sync_api import Page

from mailsync.models import Folder, Message
from mailsync.runner import sync_mailbox
from teaminbox.queries import inbox_messages
from teaminbox.views.inbox import PAGE_SIZE
from tests.browser import save_screenshot
from tests.support.dovecot import MailUser

SHOWN_RAW_NOTICE = "could not be decoded as MIME"


@dataclass(frozen=True)
class Appended:
    path: str  # relative to the corpus directory
    uid: int


def append_all(mail_user: MailUser, corpus_dir: Path, paths: list[str]) -> list[Appended]:
    """APPEND each file over one IMAP connection (≈150 messages/s); UIDs from APPENDUID."""
    appended = []
    with mail_user.imap() as client:
        for path in paths:
            response = client.append("INBOX", (corpus_dir / path).read_bytes())
            text = response.decode() if isinstance(response, bytes) else response
            match = re.search(r"\[APPENDUID \d+ (\d+)\]", text)
            assert match, f"APPEND of {path} answered without APPENDUID: {text!r}"
            appended.append(Appended(path, int(match.group(1))))
    return appended


def server_bodies(mail_user: MailUser) -> dict[int, bytes]:
    """UID -> BODY.PEEK[] for the whole INBOX, read-only, over one connection."""
    with mail_user.imap() as client:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        answer = client.fetch(uids, ["BODY.PEEK[]"])
    return {int(uid): data[b"BODY[]"] for uid, data in answer.items() if uid in set(uids)}


def report(failures: list[str], total: int) -> str:
    return f"{len(failures)} of {total} corpus messages failed:\n  " + "\n  ".join(failures)


@pytest.mark.django_db
def test_it_lists_and_renders_every_corpus_message_with_the_exact_server_bytes(
    shared_mailbox, mail_user, bob, client, corpus_dir
):
    paths = sorted(str(p.relative_to(corpus_dir)) for p in corpus_dir.rglob("*.eml"))
    assert paths, f"no .eml files under {corpus_dir}"
    appended = append_all(mail_user, corpus_dir, paths)
    sync_mailbox(shared_mailbox)
    bodies = server_bodies(mail_user)
    client.force_login(bob)
    mailbox = shared_mailbox.name
    folder = Folder.objects.get(mailbox=shared_mailbox, name="INBOX")
    failures: list[str] = []

    # The listing, page by page as bob sees it: every message exactly once.
    listed: list[int] = []
    pages = -(-len(appended) // PAGE_SIZE)
    for number in range(1, pages + 1):
        response = client.get(reverse("inbox", args=[mailbox]), {"folder": "INBOX", "page": number})
        if response.status_code != 200:
            failures.append(f"inbox page {number}: HTTP {response.status_code}")
            continue
        listed += [m.pk for m in response.context["page"].object_list]
    assert list(inbox_messages(folder).values_list("pk", flat=True)) == listed
    by_uid = {m.uid: m for m in Message.objects.filter(folder=folder)}
    expected_ids = sorted(m.pk for m in by_uid.values())
    if sorted(listed) != expected_ids:
        failures.append(f"listing has {len(listed)} rows ({len(set(listed))} distinct)")

    for item in appended:
        message = by_uid.get(item.uid)
        if message is None:
            failures.append(f"{item.path}: UID {item.uid} not synced")
            continue
        if message.pk not in listed:
            failures.append(f"{item.path}: not on any inbox page")
        if message.blob.read() != bodies.get(item.uid):
            failures.append(f"{item.path}: stored bytes differ from Dovecot's BODY[]")
        response = client.get(reverse("message", args=[mailbox, message.pk]))
        if response.status_code != 200:
            failures.append(f"{item.path}: message page HTTP {response.status_code}")
            continue
        page = response.content.decode()
        subject = escape(message.subject or "(no subject)")
        if f'<h1 class="subject">{subject}</h1>' not in page:
            failures.append(f"{item.path}: subject {message.subject!r} not shown escaped")
        response = client.get(reverse("message_body", args=[mailbox, message.pk]))
        if response.status_code != 200:
            failures.append(f"{item.path}: body frame HTTP {response.status_code}")
        elif "Content-Security-Policy" not in response:
            failures.append(f"{item.path}: body frame without a Content-Security-Policy")

    assert not failures, report(failures, len(appended))


# --- (b) the hard cases, in Chromium ---------------------------------------------------------


def normalized(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def check_expectation(page: Page, expectation, message: Message) -> list[str]:
    problems = []
    subject = page.locator("h1.subject").text_content() or ""
    wanted_subject = expectation.subject or "(no subject)"
    if subject.strip() != wanted_subject:
        problems.append(f"subject {subject.strip()!r} != {wanted_subject!r}")
    sender = page.locator("dd.from").text_content() or ""
    if expectation.sender not in sender:
        problems.append(f"sender {sender!r} lacks {expectation.sender!r}")
    if expectation.shown_raw and page.get_by_text(SHOWN_RAW_NOTICE).count() != 1:
        problems.append("no 'shown raw' notice")
    if not expectation.shown_raw and page.get_by_text(SHOWN_RAW_NOTICE).count():
        problems.append("unexpected 'shown raw' notice")
    if expectation.body_snippet is not None:
        texts = [t or "" for t in page.locator("pre.text-body").all_text_contents()]
        if page.locator("iframe.body-frame").count():
            body = page.frame_locator("iframe.body-frame").locator("body")
            texts.append(body.inner_text())
        if not any(normalized(expectation.body_snippet) in normalized(t) for t in texts):
            shown = " | ".join(normalized(t)[:120] for t in texts)
            problems.append(f"body lacks {expectation.body_snippet!r}; shows {shown!r}")
    return problems


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_it_shows_the_decoded_subject_sender_and_body_of_the_hard_corpus_messages(
    shared_mailbox, mail_user, bob, corpus_dir, live_server, logged_in_page
):
    from tests.corpus_expectations import EXPECTATIONS

    missing = [e.path for e in EXPECTATIONS if not (corpus_dir / e.path).is_file()]
    assert not missing, f"expectation files missing from the corpus: {missing}"
    appended = append_all(mail_user, corpus_dir, [e.path for e in EXPECTATIONS])
    sync_mailbox(shared_mailbox)
    by_uid = {m.uid: m for m in Message.objects.filter(folder__mailbox=shared_mailbox)}

    page = logged_in_page(live_server, bob)
    failures: list[str] = []
    broken: tuple[int, str] | None = None  # (notices, url) of the most broken message
    for expectation, item in zip(EXPECTATIONS, appended, strict=True):
        message = by_uid.get(item.uid)
        if message is None:
            failures.append(f"{item.path}: not synced")
            continue
        url = f"{live_server.url}{reverse('message', args=[shared_mailbox.name, message.pk])}"
        response = page.goto(url)
        if response is None or response.status != 200:
            failures.append(f"{item.path}: HTTP {response.status if response else None}")
            continue
        failures += [
            f"{item.path}: {problem}" for problem in check_expectation(page, expectation, message)
        ]
        notices = len(message.parse_notices) + message.shown_raw
        if notices and (broken is None or notices > broken[0]):
            broken = (notices, url)

    if broken is not None:
        page.goto(broken[1])
        save_screenshot(page, "screen-corpus-broken")
    assert not failures, report(failures, len(EXPECTATIONS))
