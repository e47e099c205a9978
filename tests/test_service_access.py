"""Access in one place: every service checks its actor's role itself, so a caller that is
not one of our views (an API, a command, a script) meets the same rules. alice
administers the mailbox, bob is an agent, dana a viewer, charlie an outsider."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from mailsync import changes
from mailsync.engine.flags import FLAGGED
from mailsync.models import Conversation, Message
from teaminbox.models import Membership, OutgoingMessage
from teaminbox.services import AccessRefused, flags, memberships
from teaminbox.services import conversations as workflow
from teaminbox.services import outgoing as outgoing_mail
from tests.support.mail import INVOICE_WITH_ATTACHMENT, client_for, receive
from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db

PERSONAS = ("charlie", "dana", "bob", "alice")  # outsider, viewer, agent, mailbox admin
AGENTS = {"bob", "alice"}


@dataclass
class World:
    mailbox: Any
    message: Message
    people: dict[str, User]
    bobs_draft: OutgoingMessage
    failed: OutgoingMessage
    erin: Membership


@pytest.fixture
def world(shared_mailbox, mail_user, alice, bob, charlie) -> World:
    dana = User.objects.create_user("dana", "dana@example.test", PASSWORD)
    Membership.objects.create(user=dana, mailbox=shared_mailbox, role=Membership.Role.VIEWER)
    erin = User.objects.create_user("erin", "erin@example.test", PASSWORD)
    message = receive(mail_user, shared_mailbox, INVOICE_WITH_ATTACHMENT)
    draft = outgoing_mail.start_reply(message=message, kind="reply", actor=bob)
    failed = OutgoingMessage.objects.create(
        mailbox=shared_mailbox, in_reply_to=message, author=bob, state="failed"
    )
    return World(
        mailbox=shared_mailbox,
        message=message,
        people={"alice": alice, "bob": bob, "charlie": charlie, "dana": dana},
        bobs_draft=draft,
        failed=failed,
        erin=Membership.objects.create(user=erin, mailbox=shared_mailbox, role="agent"),
    )


Call = Callable[[World, User], object]


def conversation(world: World) -> Conversation:
    return Conversation.objects.get(messages=world.message)


SERVICES: dict[str, tuple[Call, set[str]]] = {
    "set_flag": (
        lambda w, u: flags.set_flag(message=w.message, flag=FLAGGED, on=True, actor=u),
        AGENTS,
    ),
    "act_on_message": (
        lambda w, u: flags.act_on_message(message=w.message, action="read", actor=u),
        AGENTS,
    ),
    "delete_message": (lambda w, u: flags.delete_message(message=w.message, actor=u), AGENTS),
    "restore_message": (lambda w, u: flags.restore_message(message=w.message, actor=u), AGENTS),
    "purge_message": (lambda w, u: flags.purge_message(message=w.message, actor=u), AGENTS),
    "set_membership": (
        lambda w, u: memberships.set_membership(
            user=w.erin.user, mailbox=w.mailbox, role="viewer", actor=u
        ),
        {"alice"},
    ),
    "remove_membership": (
        lambda w, u: memberships.remove_membership(membership=w.erin, actor=u),
        {"alice"},
    ),
    "start_reply": (
        lambda w, u: outgoing_mail.start_reply(message=w.message, kind="forward", actor=u),
        AGENTS,
    ),
    "open_reply": (
        lambda w, u: outgoing_mail.open_reply(message=w.message, kind="reply_all", actor=u),
        AGENTS,
    ),
    "save_draft": (
        lambda w, u: outgoing_mail.save_draft(
            draft=w.bobs_draft,
            to="x@example.org",
            cc="",
            bcc="",
            subject="s",
            body_text="b",
            actor=u,
        ),
        {"bob"},  # a draft is its author's alone, even for a mailbox admin
    ),
    "add_attachment": (
        lambda w, u: outgoing_mail.add_attachment(
            draft=w.bobs_draft, filename="a.txt", content_type="text/plain", data=b"a", actor=u
        ),
        {"bob"},
    ),
    "remove_attachment": (
        lambda w, u: outgoing_mail.remove_attachment(draft=w.bobs_draft, attachment_id=1, actor=u),
        {"bob"},
    ),
    "send_reply": (
        lambda w, u: outgoing_mail.send_reply(draft=w.bobs_draft, actor=u),
        {"bob"},
    ),
    "discard_draft": (
        lambda w, u: outgoing_mail.discard_draft(draft=w.bobs_draft, actor=u),
        {"bob"},
    ),
    "assign_conversation": (
        lambda w, u: workflow.assign_conversation(
            conversation=conversation(w), assignee=w.people["bob"], actor=u
        ),
        AGENTS,
    ),
    "set_conversation_status": (
        lambda w, u: workflow.set_conversation_status(
            conversation=conversation(w), status="closed", actor=u
        ),
        AGENTS,
    ),
    "snooze_conversation": (
        lambda w, u: workflow.snooze_conversation(
            conversation=conversation(w), until=timezone.now() + timedelta(days=1), actor=u
        ),
        AGENTS,
    ),
    "add_note": (
        lambda w, u: workflow.add_note(conversation=conversation(w), body="Hi", actor=u),
        AGENTS,
    ),
    "mark_conversation": (
        lambda w, u: workflow.mark_conversation(conversation=conversation(w), read=True, actor=u),
        AGENTS,
    ),
    "bulk_act": (
        lambda w, u: workflow.bulk_act(
            conversation_ids=[conversation(w).pk], mailbox=w.mailbox, action="unread", actor=u
        ),
        AGENTS,
    ),
    "retry_outgoing": (
        lambda w, u: outgoing_mail.retry_outgoing(outgoing=w.failed, actor=u),
        AGENTS,
    ),
    "save_to_sent": (
        lambda w, u: outgoing_mail.save_to_sent(outgoing=w.failed, actor=u),
        AGENTS,
    ),
}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_refuses_whoever_lacks_the_role_it_needs(service, world):
    call, allowed = SERVICES[service]
    refused = set()
    # whoever may act goes last: some services use up what they act on (a sent draft)
    for name in sorted(PERSONAS, key=lambda n: n in allowed):
        before = changes.current(world.mailbox)
        try:
            call(world, world.people[name])
        except AccessRefused as refusal:
            refused.add(name)
            assert str(refusal).endswith("."), "a refusal is a sentence"
            assert changes.current(world.mailbox) == before, "a refused call changed nothing"
        except Exception:  # allowed, and then stopped by the state (not a draft, ...)
            pass
    assert refused == set(PERSONAS) - allowed


def test_opening_a_conversation_refuses_nobody_but_writes_only_for_who_may_act(world):
    """Opening marks read (the mailbox's default): for an agent or admin; a viewer's or an
    outsider's look writes nothing (the page itself keeps the outsider out)."""
    for name in ("charlie", "dana"):
        before = changes.current(world.mailbox)
        marked = workflow.open_conversation(
            conversation=conversation(world), actor=world.people[name]
        )
        assert (marked, changes.current(world.mailbox)) == (0, before)
    assert workflow.open_conversation(conversation=conversation(world), actor=world.people["bob"])


def test_the_system_itself_may_act_without_a_person(world):
    """``actor=None`` is a worker or the command line: no person to check."""
    flags.set_flag(message=world.message, flag=FLAGGED, on=True, actor=None)
    memberships.set_membership(
        user=world.erin.user, mailbox=world.mailbox, role="admin", actor=None
    )
    world.erin.refresh_from_db()
    assert world.erin.role == "admin"


def test_a_viewer_is_refused_with_a_sentence_htmx_swaps_in(world):
    url = reverse(
        "flag_action", kwargs={"mailbox": world.mailbox.name, "message_id": world.message.pk}
    )
    viewer = client_for(world.people["dana"])

    plain = viewer.post(url, {"action": "read"})
    swapped = viewer.post(url, {"action": "read"}, headers={"HX-Request": "true"})

    assert plain.status_code == swapped.status_code == 403
    assert "Viewers cannot change anything in this mailbox" in plain.content.decode()
    assert swapped.content.decode().startswith('<p class="notice error refused" role="alert">')
    world.message.refresh_from_db()
    assert not world.message.seen


def test_a_colleagues_draft_is_refused_on_the_compose_page(world):
    url = reverse(
        "compose", kwargs={"mailbox": world.mailbox.name, "outgoing_id": world.bobs_draft.pk}
    )
    page = client_for(world.people["alice"]).get(url)
    assert page.status_code == 403
    assert "This draft belongs to a colleague." in page.content.decode()
