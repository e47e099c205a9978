"""A message as the sync stores it, and what a person's browser then receives for it.

`store_fetched` hands raw bytes to the store the sync uses (as if the server had sent them),
`page_problems` reads the message page and its body frame as a browser would parse them and
lists everything that could run script there, `check_stored_and_rendered` does both and
checks the bytes and the parse. Shared by the fuzz and oversized-mail tests.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from mailsync.engine.imap import FetchedMessage
from mailsync.extract import extract_messages
from mailsync.models import Attachment, Folder, Message
from mailsync.store import DjangoFolderStore

# test_htmlsafe's list: none of these may come out of the sanitizer.
FORBIDDEN_IN_BODY = (
    "<script",
    "<iframe",
    "<object",
    "<embed",
    "<form",
    "<base",
    "<meta",
    "<style",
    "<svg",
    "<math",
)
# Browsers drop whitespace and control characters anywhere in a URL's scheme.
_IGNORED_IN_SCHEME = re.compile(r"[\x00-\x20]+")
_SCRIPT_SCHEMES = (
    "javascript:",
    "vbscript:",
    "data:text/html",
    "data:application/",
    "data:image/svg",
)
# Attributes whose value a browser runs or loads as a URL.
_URL_ATTRIBUTES = {
    "href",
    "src",
    "action",
    "formaction",
    "data",
    "background",
    "poster",
    "xlink:href",
}
_STATIC = "/static/"


class _ScriptFinder(HTMLParser):
    """Collects every place of a parsed page that could run script: script elements (other
    than our own from /static/), inline script text, event-handler attributes (``on*``,
    htmx's ``hx-on``), script URLs and CSS expressions."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not (values.get("src") or "").startswith(_STATIC):
                self.problems.append(f"<script src={values.get('src')!r}>")
        for name, value in attrs:
            if name.startswith(("on", "hx-on", "data-hx-on")):
                self.problems.append(f"<{tag} {name}=...>")
            flat = _IGNORED_IN_SCHEME.sub("", value or "").lower()
            if name in _URL_ATTRIBUTES and flat.startswith(_SCRIPT_SCHEMES):
                self.problems.append(f"<{tag} {name}={value!r}>")
            if name == "style" and ("expression(" in flat or "javascript:" in flat):
                self.problems.append(f"<{tag} style={value!r}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_script = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append(f"inline script {data.strip()[:60]!r}")


def script_problems(html: str) -> list[str]:
    """Everything in ``html`` that a browser could run (empty when the page is inert)."""
    finder = _ScriptFinder()
    finder.feed(html)
    finder.close()
    return finder.problems


def body_problems(frame_html: str) -> list[str]:
    """The body frame: inert, and its sanitized part (after our own head) free of the tags
    the sanitizer must remove (test_htmlsafe's assertion)."""
    problems = script_problems(frame_html)
    _, _, body = frame_html.partition("<body>")
    lowered = body.lower()
    problems += [f"{tag} in the sanitized body" for tag in FORBIDDEN_IN_BODY if tag in lowered]
    return problems


def store_fetched(folder: Folder, raw: bytes, *, uid: int) -> Message:
    """Store ``raw`` the way the sync stores a message the server sent (DjangoFolderStore,
    bulk COPY on PostgreSQL) and return its row (text not extracted yet)."""
    assert folder.uidvalidity is not None
    fetched = FetchedMessage(
        uid=uid,
        flags=frozenset(),
        internaldate=timezone.now(),
        size=len(raw),
        raw=raw,
        modseq=None,
    )
    DjangoFolderStore(folder).save_messages(folder.uidvalidity, [fetched])
    return Message.objects.get(folder=folder, uidvalidity=folder.uidvalidity, uid=uid)


def page_problems(client: Client, message: Message) -> list[str]:
    """GET the message page, its body frame, its conversation page and its (first five)
    attachments as a logged-in member; every status other than 200, missing body-frame CSP
    and runnable script, as sentences."""
    mailbox = message.folder.mailbox.name
    problems: list[str] = []
    page: Any = client.get(reverse("message", args=[mailbox, message.pk]))
    if page.status_code != 200:
        problems.append(f"message page answered HTTP {page.status_code}")
    else:
        problems += [f"page: {p}" for p in script_problems(page.content.decode())]
    frame: Any = client.get(reverse("message_body", args=[mailbox, message.pk]))
    if frame.status_code != 200:
        problems.append(f"body frame answered HTTP {frame.status_code}")
    else:
        csp = frame.get("Content-Security-Policy", "")
        if "default-src 'none'" not in csp or "script-src" in csp:
            problems.append(f"body frame without a script-free Content-Security-Policy: {csp!r}")
        problems += [f"frame: {p}" for p in body_problems(frame.content.decode())]
    if message.conversation_id is not None:
        args = [mailbox, message.conversation_id]
        thread: Any = client.get(reverse("conversation", args=args), follow=True)
        if thread.status_code != 200:
            problems.append(f"conversation page answered HTTP {thread.status_code}")
        else:
            problems += [f"conversation: {p}" for p in script_problems(thread.content.decode())]
    for part in message.attachments.order_by("position")[:5]:
        url = reverse("attachment", args=[mailbox, message.pk, part.pk])
        download: Any = client.get(url)
        if download.status_code != 200:
            problems.append(f"attachment {part.filename!r} answered HTTP {download.status_code}")
        elif b"".join(download.streaming_content) != part.blob.read():
            problems.append(f"attachment {part.filename!r} downloads other bytes")
    return problems


# --- the whole path, checked -----------------------------------------------------------------

# The parser's last resort when something raised inside it (the reason is the exception's
# name); "nested too deeply" is a deliberate limit, not a crash.
_CRASH_NOTICE = re.compile(r"could not be read as MIME \((?!it is nested too deeply)")
# (tnefparse logs errors of its own about odd winmail.dat properties: not ours to judge.)
OUR_LOGGERS = ("mailsync", "teaminbox", "django")


def parser_problems(message: Message, caplog: pytest.LogCaptureFixture) -> list[str]:
    """A parse that fell back on an exception, an error we logged, or no text at all."""
    problems = [f"parser fell back: {n}" for n in message.parse_notices if _CRASH_NOTICE.search(n)]
    problems += [
        f"logged: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(OUR_LOGGERS)
    ]
    if message.extracted_at is None:
        problems.append("text not extracted")
    return problems


def byte_problems(message: Message, raw: bytes) -> list[str]:
    """The stored blob is ``raw``, by sha256 (its key) and by content."""
    digest = hashlib.sha256(raw).hexdigest()
    stored = hashlib.sha256()
    for chunk in message.blob.iter_bytes():
        stored.update(chunk)
    if message.blob_id != digest or stored.hexdigest() != digest:
        return [f"stored bytes ({message.blob.size}) differ from the {len(raw)} bytes fetched"]
    return []


@dataclass(frozen=True)
class Stored:
    """A message's rows as they were before the savepoint was rolled back."""

    message: Message
    attachments: list[Attachment]


def check_stored_and_rendered(
    raw: bytes, folder: Folder, client: Client, caplog: pytest.LogCaptureFixture, *, uid: int
) -> Stored:
    """Store ``raw`` as the sync does, extract it, render it, assert that nothing went wrong
    and return its rows as they were; in a savepoint rolled back afterwards, so every
    example starts from the same empty folder."""
    caplog.clear()
    with transaction.atomic():
        message = store_fetched(folder, raw, uid=uid)
        extract_messages([message.pk])
        message.refresh_from_db()
        problems = [
            *byte_problems(message, raw),
            *parser_problems(message, caplog),
            *page_problems(client, message),
        ]
        stored = Stored(message, list(message.attachments.order_by("position")))
        transaction.set_rollback(True)
    assert not problems, problems
    return stored
