"""Search (issue 15): each operator, and combinations, find exactly the expected messages of
a fixture mailbox -- non-English mail, HTML-only mail, attachments, notes, Trash, a message
not extracted yet -- through the real ingest and extraction. The suite runs on PostgreSQL
and on SQLite against the same table, so both databases give the same message ids."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth.models import User

from mailsync.engine.imap import FetchedMessage
from mailsync.extract import extract_messages
from mailsync.ingest import store_new_messages
from mailsync.models import Conversation, Folder, Mailbox, Message
from mailsync.search_index import normalise
from teaminbox.models import Membership, Note
from teaminbox.search import SearchSyntaxError, search_messages
from teaminbox.search_highlight import highlight
from teaminbox.services.access import AccessRefused
from tests.support.mail import client_for

NOW = datetime(2026, 3, 26, 12, 0, tzinfo=UTC)
PHOTOS = base64.encodebytes(b"\x00" * 300_000).decode()

MAIL: dict[str, tuple[str, frozenset[str], bytes]] = {
    "invoice": ("INBOX", frozenset(), b"""\
From: Carol Customer <carol@example.org>
To: support@example.test
Subject: Invoice 42 attached
Date: Tue, 10 Mar 2026 09:00:00 +0000
Message-ID: <invoice-42@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

Please pay the invoice by Friday.
--b1
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b1--
"""),
    "french": ("INBOX", frozenset({"\\Seen", "\\Answered"}), """\
From: =?utf-8?q?=C3=89lodie_Dupr=C3=A9?= <elodie@exemple.fr>
To: support@example.test
Subject: =?utf-8?q?Facture_impay=C3=A9e?=
Date: Thu, 12 Mar 2026 10:00:00 +0000
Message-ID: <facture@exemple.fr>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Bonjour, la facture de février est en retard. Søren
""".encode()),
    "html": ("INBOX", frozenset({"\\Seen", "\\Flagged"}), b"""\
From: Dan <dan@shop.example>
To: orders@example.test
Subject: Order shipped
Date: Sun, 15 Mar 2026 08:00:00 +0000
Message-ID: <shipped@shop.example>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><p>Your <b>parcel</b> is on its way.</p></body></html>
"""),
    "reply": ("INBOX", frozenset(), b"""\
From: Carol Customer <carol@example.org>
To: support@example.test
Cc: Finance <finance@example.org>
Subject: Re: Invoice 42 attached
Date: Fri, 20 Mar 2026 16:00:00 +0000
Message-ID: <invoice-42-re@example.org>
In-Reply-To: <invoice-42@example.org>
References: <invoice-42@example.org>
Content-Type: text/plain

Thanks, paid today.
"""),
    "large": ("INBOX", frozenset({"\\Seen"}), f"""\
From: Bob Example <bob@example.net>
To: support@example.test
Subject: Holiday photos
Date: Sun, 01 Feb 2026 12:00:00 +0000
Message-ID: <photos@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b2"

--b2
Content-Type: text/plain

Some pictures from the trip.
--b2
Content-Type: application/zip; name="photos.zip"
Content-Disposition: attachment; filename="photos.zip"
Content-Transfer-Encoding: base64

{PHOTOS}
--b2--
""".encode()),
    "unextracted": ("INBOX", frozenset(), b"""\
From: Eve <eve@example.com>
To: support@example.test
Subject: Quarterly report
Date: Wed, 25 Mar 2026 07:00:00 +0000
Message-ID: <quarterly@example.com>
Content-Type: text/plain

zebra
"""),
    "deleted": ("INBOX", frozenset({"\\Seen", "\\Deleted"}), b"""\
From: News <news@example.com>
To: support@example.test
Subject: Old newsletter
Date: Mon, 02 Mar 2026 07:00:00 +0000
Message-ID: <news@example.com>
Content-Type: text/plain

Unsubscribe here.
"""),
    "trash": ("Trash", frozenset({"\\Seen"}), b"""\
From: Mallory <mallory@scam.example>
To: support@example.test
Subject: Invoice scam
Date: Thu, 05 Mar 2026 07:00:00 +0000
Message-ID: <scam@scam.example>
Content-Type: text/plain

Pay this invoice now.
"""),
}  # fmt: skip


@pytest.fixture
def fixture_mailbox(alice: User, bob: User, charlie: User) -> dict[str, Any]:
    return make_fixture_mailbox(alice, bob, charlie)


def make_fixture_mailbox(alice: User, bob: User, charlie: User) -> dict[str, Any]:
    """The mail of MAIL through ingest and extraction (all but "unextracted"); alice and bob
    are members, the invoice's conversation is bob's and has a note, the French one is
    pending; charlie has a mailbox of his own with a copy of the invoice."""
    mailbox = Mailbox.objects.create(name="support", host="localhost", port=143, username="s")
    Membership.objects.create(user=alice, mailbox=mailbox, role=Membership.Role.ADMIN)
    Membership.objects.create(user=bob, mailbox=mailbox, role=Membership.Role.AGENT)
    folders = {
        "INBOX": Folder.objects.create(mailbox=mailbox, name="INBOX", uidvalidity=1),
        "Trash": Folder.objects.create(
            mailbox=mailbox, name="Trash", special_use="\\Trash", uidvalidity=1
        ),
    }
    ids: dict[str, int] = {}
    for uid, (key, (folder, flags, raw)) in enumerate(MAIL.items(), start=1):
        fetched = FetchedMessage(uid, flags, None, len(raw), raw, None)
        store_new_messages(folders[folder], 1, [fetched])
        ids[key] = Message.objects.get(folder=folders[folder], uid=uid).pk
    extract_messages([pk for key, pk in ids.items() if key != "unextracted"])
    invoice = Conversation.objects.get(messages__pk=ids["invoice"])
    Conversation.objects.filter(pk=invoice.pk).update(assignee=bob)
    Conversation.objects.filter(messages__pk=ids["french"]).update(
        status=Conversation.Status.PENDING
    )
    Note.objects.create(conversation=invoice, author=bob, body="Customer will call back Friday")
    # charlie's own mailbox, with mail the first one's searches must never return
    other = Mailbox.objects.create(name="other", host="localhost", port=143, username="o")
    Membership.objects.create(user=charlie, mailbox=other, role=Membership.Role.ADMIN)
    other_inbox = Folder.objects.create(mailbox=other, name="INBOX", uidvalidity=1)
    raw = MAIL["invoice"][2].replace(b"invoice-42@", b"other-42@")
    store_new_messages(other_inbox, 1, [FetchedMessage(1, frozenset(), None, len(raw), raw, None)])
    return {"mailbox": mailbox, "other": other, "ids": ids}


def found(user: User, mailbox: Mailbox, query: str, ids: dict[str, int]) -> set[str]:
    names = {pk: key for key, pk in ids.items()}
    page = search_messages(user=user, mailbox=mailbox, query=query, now=NOW, limit=100)
    return {names.get(m.pk, f"stranger {m.pk}") for m in page.messages}


EVERYTHING_BUT_TRASH = {"invoice", "french", "html", "reply", "large", "unextracted"}

EXPECTED: list[tuple[str, set[str]]] = [
    ("", EVERYTHING_BUT_TRASH),
    ("invoice", {"invoice", "reply"}),
    ("INVOICE", {"invoice", "reply"}),
    ("invoice in:anywhere", {"invoice", "reply", "trash"}),
    ("newsletter", set()),  # deleted: found only when asked for
    ("is:deleted", {"deleted"}),
    ("newsletter in:anywhere", {"deleted"}),
    ("in:trash", {"trash"}),
    ("in:INBOX", EVERYTHING_BUT_TRASH),
    ("from:carol", {"invoice", "reply"}),
    ("from:elodie@exemple.fr", {"french"}),
    ("from:Élodie", {"french"}),
    ("from:dupre", {"french"}),
    ("to:orders", {"html"}),
    ("cc:finance", {"reply"}),
    ("subject:shipped", {"html"}),
    ('subject:"invoice 42"', {"invoice", "reply"}),
    ("facture", {"french"}),
    ("février", {"french"}),
    ("FEVRIER", {"french"}),
    ("impayee", {"french"}),
    ("Søren", {"french"}),
    ("soren", set()),  # NFKD keeps ø: no database folds it further
    ('"la facture"', {"french"}),
    ('"facture la"', set()),
    ("parcel", {"html"}),  # HTML-only mail: its text
    ("-invoice", {"french", "html", "large", "unextracted"}),
    ("invoice OR facture", {"invoice", "reply", "french"}),
    ("carol -paid", {"invoice"}),
    ("(facture OR parcel) is:read", {"french", "html"}),
    ("facture OR parcel is:read", {"french", "html"}),
    ("is:unread", {"invoice", "reply", "unextracted"}),
    ("is:read", {"french", "html", "large"}),
    ("is:replied", {"french"}),
    ("is:unreplied -is:unread", {"html", "large"}),
    ("is:flagged", {"html"}),
    ("has:attachment", {"invoice", "large"}),
    ("filename:invoice.pdf", {"invoice"}),
    ("filename:zip", {"large"}),
    ("photos", {"large"}),
    ("larger:100K", {"large"}),
    ("smaller:100K", EVERYTHING_BUT_TRASH - {"large"}),
    ("before:2026-03-01", {"large"}),
    ("after:2026-03-15", {"html", "reply", "unextracted"}),
    ("on:2026-03-12", {"french"}),
    ("after:7d", {"reply", "unextracted"}),
    ("after:2026-03-01 before:2026-03-15 has:attachment", {"invoice"}),
    ("assignee:bob", {"invoice", "reply"}),
    ("assignee:me", set()),  # alice searches: nothing is hers
    ("assignee:none", {"french", "html", "large", "unextracted"}),
    ("status:pending", {"french"}),
    ("status:open -assignee:none", {"invoice", "reply"}),
    ('note:"call back"', {"invoice", "reply"}),
    ("note:refund", set()),
    ("Re: invoice", {"reply"}),
    ("quarterly", {"unextracted"}),  # not extracted yet: found by its headers
    ("zebra", set()),  # ... but not by its body until it is extracted
    ("--", EVERYTHING_BUT_TRASH),
]


@pytest.mark.parametrize(("query", "expected"), EXPECTED)
def test_each_query_finds_exactly_the_expected_messages(
    fixture_mailbox: dict[str, Any], alice: User, query: str, expected: set[str]
) -> None:
    assert found(alice, fixture_mailbox["mailbox"], query, fixture_mailbox["ids"]) == expected


def test_assignee_me_means_whoever_searches(fixture_mailbox: dict[str, Any], bob: User) -> None:
    ids = fixture_mailbox["ids"]
    assert found(bob, fixture_mailbox["mailbox"], "assignee:me", ids) == {"invoice", "reply"}


def test_it_finds_a_message_by_its_body_once_extracted(
    fixture_mailbox: dict[str, Any], alice: User
) -> None:
    ids = fixture_mailbox["ids"]
    extract_messages([ids["unextracted"]])
    assert found(alice, fixture_mailbox["mailbox"], "zebra", ids) == {"unextracted"}
    assert found(alice, fixture_mailbox["mailbox"], "quarterly zebra", ids) == {"unextracted"}


def test_an_outsider_never_finds_another_mailboxs_mail(
    fixture_mailbox: dict[str, Any], charlie: User
) -> None:
    with pytest.raises(AccessRefused):
        search_messages(user=charlie, mailbox=fixture_mailbox["mailbox"], query="invoice")
    own = search_messages(user=charlie, mailbox=fixture_mailbox["other"], query="invoice")
    assert [m.folder.mailbox_id for m in own.messages] == [fixture_mailbox["other"].pk]


def test_it_pages_by_keyset_visiting_each_message_once(
    fixture_mailbox: dict[str, Any], alice: User
) -> None:
    seen: list[int] = []
    after = None
    while True:
        page = search_messages(
            user=alice, mailbox=fixture_mailbox["mailbox"], query="", after=after, limit=2
        )
        seen += [m.pk for m in page.messages]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    ids = fixture_mailbox["ids"]
    newest_first = ["unextracted", "reply", "html", "french", "invoice", "large"]
    assert seen == [ids[key] for key in newest_first]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("before:yesterdayish", "is not a date"),
        ("in:Archive", "this mailbox has no folder by that name"),
        ("(invoice", "is not closed"),
    ],
)
def test_it_refuses_a_query_it_cannot_run_with_a_sentence(
    fixture_mailbox: dict[str, Any], alice: User, query: str, message: str
) -> None:
    with pytest.raises(SearchSyntaxError, match=message):
        search_messages(user=alice, mailbox=fixture_mailbox["mailbox"], query=query)


def test_it_refuses_a_damaged_page_link(fixture_mailbox: dict[str, Any], alice: User) -> None:
    with pytest.raises(SearchSyntaxError, match="damaged"):
        search_messages(user=alice, mailbox=fixture_mailbox["mailbox"], query="", after="x")


# --- the page -------------------------------------------------------------------------------


def test_the_page_shows_results_with_the_found_words_marked(
    fixture_mailbox: dict[str, Any], alice: User
) -> None:
    response = client_for(alice).get("/m/support/search", {"q": "fevrier OR parcel"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<mark>février</mark>" in html  # marked through the normaliser
    assert "<mark>parcel</mark>" in html  # HTML-only mail: a snippet of its text
    assert 'value="fevrier OR parcel"' in html  # the query stays in the box
    assert html.count('<li class="search-result') == 2


def test_the_page_answers_a_bad_query_with_a_sentence(
    fixture_mailbox: dict[str, Any], alice: User
) -> None:
    response = client_for(alice).get("/m/support/search", {"q": "before:yesterdayish"})
    assert response.status_code == 400
    assert "“before:yesterdayish” is not a date" in response.content.decode()


def test_the_page_links_to_more_results_keeping_the_query(
    fixture_mailbox: dict[str, Any], alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("teaminbox.views.search.PAGE_SIZE", 4)
    client = client_for(alice)
    first = client.get("/m/support/search", {"q": "-zebra"}).content.decode()
    assert first.count('<li class="search-result') == 4
    more = re.search(r'href="(\?q=-zebra&amp;after=[^"]+)" rel="next"', first)
    assert more is not None
    second = client.get("/m/support/search" + more.group(1).replace("&amp;", "&"))
    assert second.content.decode().count('<li class="search-result') == 2


def test_an_outsider_gets_no_search_page_of_another_mailbox(
    fixture_mailbox: dict[str, Any], charlie: User
) -> None:
    assert client_for(charlie).get("/m/support/search", {"q": "invoice"}).status_code == 404


def test_highlighting_escapes_markup_and_marks_whole_words() -> None:
    assert str(highlight("<b>Invoice</b> invoiced", ["invoice"])) == (
        "&lt;b&gt;<mark>Invoice</mark>&lt;/b&gt; invoiced"
    )


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Crème-Brûlée, S.A.", "creme brulee s a"),
        ("INVOICE_42/2026", "invoice 42 2026"),
        ("Straße ﬁne ²", "strasse fine 2"),
        ("Привет, Ελληνικά! 日本語", "привет ελληνικα 日本語"),
        ("  -- ", ""),
    ],
)
def test_the_normaliser_folds_case_accents_and_punctuation(text: str, normalised: str) -> None:
    assert normalise(text) == normalised
