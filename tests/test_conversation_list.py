"""The conversation list's reads and its bulk endpoint, without a browser: views and their
counts, keyset pages (no OFFSET, no COUNT over the folder), and who may act."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from mailsync.models import Conversation, Mailbox
from teaminbox.conversation_queries import list_conversations, view_counts
from teaminbox.models import Membership
from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def mailbox(alice: User, bob: User) -> Mailbox:
    box = Mailbox.objects.create(
        name="support",
        email_address="support@example.test",
        host="127.0.0.1",
        port=993,
        username="x",
    )
    Membership.objects.create(user=alice, mailbox=box, role=Membership.Role.ADMIN)
    Membership.objects.create(user=bob, mailbox=box, role=Membership.Role.AGENT)
    return box


def conversations(mailbox: Mailbox, n: int, **fields: Any) -> list[Conversation]:
    """``n`` listed conversations, one a minute apart (the summaries ingest would write);
    every third one's customer waits, some of them share a timestamp to test the tie."""
    rows = []
    for i in range(n):
        at = START + timedelta(minutes=i // 2)  # pairs share last_message_at: the id breaks ties
        rows.append(
            Conversation(
                mailbox=mailbox,
                subject=f"Question {i}",
                first_message_at=at,
                last_message_at=at,
                message_count=1 + i % 3,
                unread_count=i % 2,
                customer_name=f"Customer {i}",
                customer_address=f"c{i}@example.org",
                latest_sender_name=f"Customer {i}",
                latest_from_customer=True,
                snippet=f"Hello, question {i}",
                waiting_since=at - timedelta(hours=i % 5) if i % 3 == 0 else None,
                **fields,
            )
        )
    return Conversation.objects.bulk_create(rows)


def client_for(user: User) -> Client:
    client = Client()
    assert client.login(username=user.get_username(), password=PASSWORD)
    return client


def all_pages(mailbox: Mailbox, user: User, view: str, sort: str) -> list[int]:
    seen: list[int] = []
    after = None
    for _ in range(100):
        rows, after = list_conversations(
            mailbox=mailbox, user=user, view=view, sort=sort, after=after, limit=7
        )
        seen.extend(row.pk for row in rows)
        if after is None:
            return seen
    raise AssertionError("the pages never ended")


@pytest.mark.parametrize("sort", ["newest", "waiting"])
def test_it_visits_every_conversation_exactly_once_page_by_page(mailbox, bob, sort):
    made = conversations(mailbox, 123)
    Conversation.objects.filter(pk=made[5].pk).update(merged_into=made[6])  # not listed
    Conversation.objects.filter(pk=made[7].pk).update(message_count=0)  # emptied: not listed

    seen = all_pages(mailbox, bob, "open", sort)

    assert len(seen) == len(set(seen)) == 121
    assert set(seen) == {c.pk for c in made} - {made[5].pk, made[7].pk}
    if sort == "waiting":  # the waiting customers first, longest wait first
        waits = [Conversation.objects.get(pk=pk).waiting_since for pk in seen[:41]]
        assert all(w is not None for w in waits) and waits == sorted(waits)  # type: ignore[type-var]


def test_it_draws_a_page_without_offset_or_a_count_of_the_folder(mailbox, bob):
    conversations(mailbox, 60)
    client = client_for(bob)
    first = client.get(reverse("inbox", kwargs={"mailbox": mailbox.name}))
    cursor = first.context["next_cursor"]
    assert cursor

    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("inbox", kwargs={"mailbox": mailbox.name}), {"after": cursor})

    assert page.status_code == 200
    assert len(page.context["rows"]) == 10
    sql = [q["sql"].upper() for q in queries.captured_queries]
    assert not [s for s in sql if "OFFSET" in s], sql
    # The only COUNTs are the sidebar's conditional ones (COUNT(...) FILTER / CASE), never
    # a COUNT(*) of every conversation or message to number the pages.
    assert not [s for s in sql if "COUNT(*)" in s], sql


def test_it_counts_each_view_and_the_counts_follow_assigning_closing_and_snoozing(
    mailbox, alice, bob
):
    made = conversations(mailbox, 10)
    client = client_for(bob)
    url = reverse("inbox", kwargs={"mailbox": mailbox.name})

    def counts() -> dict[str, int]:
        views = client.get(url).context["views"]
        return {name: count for name, _, count in views}

    assert counts() == {
        "unassigned": 10, "mine": 0, "others": 0, "open": 10,
        "pending": 0, "snoozed": 0, "closed": 0,
    }  # fmt: skip
    Conversation.objects.filter(pk__in=[made[0].pk, made[1].pk]).update(assignee=bob)
    Conversation.objects.filter(pk=made[2].pk).update(assignee=alice)
    Conversation.objects.filter(pk=made[3].pk).update(status=Conversation.Status.CLOSED)
    Conversation.objects.filter(pk=made[4].pk).update(status=Conversation.Status.PENDING)
    Conversation.objects.filter(pk=made[5].pk).update(
        snoozed_until=timezone.now() + timedelta(hours=3)
    )
    Conversation.objects.filter(pk=made[6].pk).update(  # woke up: open again
        snoozed_until=timezone.now() - timedelta(minutes=1)
    )

    assert counts() == {
        "unassigned": 4, "mine": 2, "others": 1, "open": 7,
        "pending": 1, "snoozed": 1, "closed": 1,
    }  # fmt: skip
    assert view_counts(mailbox=mailbox, user=alice)["mine"] == 1
    for view, expected in counts().items():
        rows, _ = list_conversations(mailbox=mailbox, user=bob, view=view)
        assert len(rows) == expected, view


def test_it_answers_a_damaged_cursor_or_unknown_view_with_a_sentence(mailbox, bob):
    client = client_for(bob)
    url = reverse("inbox", kwargs={"mailbox": mailbox.name})

    damaged = client.get(url, {"after": "n~yesterday~12"})
    unknown = client.get(url, {"view": "starred"})
    no_folder = client.get(url, {"view": "folder:Nowhere"})

    assert damaged.status_code == 400 and b"damaged" in damaged.content
    assert unknown.status_code == 400 and b"use one of unassigned" in unknown.content
    assert no_folder.status_code == 400 and b"no folder named 'Nowhere'" in no_folder.content


def test_it_refuses_a_viewers_bulk_action_and_shows_them_no_checkboxes(mailbox, charlie):
    made = conversations(mailbox, 3)
    Membership.objects.create(user=charlie, mailbox=mailbox, role=Membership.Role.VIEWER)
    client = client_for(charlie)

    page = client.get(reverse("inbox", kwargs={"mailbox": mailbox.name}))
    refused = client.post(
        reverse("bulk", kwargs={"mailbox": mailbox.name}),
        {"action": "status:closed", "c": [c.pk for c in made]},
    )

    assert page.status_code == 200 and b"Customer 1" in page.content
    assert b'name="c"' not in page.content and b"bulk-bar" not in page.content
    assert refused.status_code == 403
    assert not Conversation.objects.filter(status=Conversation.Status.CLOSED).exists()


def test_it_refuses_an_unknown_bulk_action_or_assignee_with_a_sentence(mailbox, bob, charlie):
    made = conversations(mailbox, 2)
    client = client_for(bob)
    url = reverse("bulk", kwargs={"mailbox": mailbox.name})

    unknown = client.post(url, {"action": "archive", "c": [made[0].pk]})
    stranger = client.post(url, {"action": "assign", "assignee": charlie.pk, "c": [made[0].pk]})

    assert unknown.status_code == 400 and b"Unknown action" in unknown.content
    assert stranger.status_code == 400 and b"agent of this mailbox" in stranger.content
    assert not Conversation.objects.filter(assignee__isnull=False).exists()
