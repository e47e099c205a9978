"""The conversation page: the thread in order, notes and history by time, the team's controls.

Every write goes through ``teaminbox.services.conversations`` (which checks the role again:
a viewer posting straight to an endpoint is refused there as well as here). An htmx post
answers with the controls and the timeline redrawn in place and a "toast" event (base.html's
toast.js shows it, with an Undo that posts the inverse action where there is one).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, User
from django.db.models import Q
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import trigger_client_event

from mailsync.conversations import resolve
from mailsync.engine.flags import FLAGGED
from mailsync.models import Activity, Conversation, Mailbox, Message
from teaminbox import services
from teaminbox.models import Membership, Note
from teaminbox.queries import get_mailbox_for
from teaminbox.services import conversations as workflow
from teaminbox.services.access import Role, may
from teaminbox.views.types import AuthenticatedHttpRequest

HISTORY_LIMIT = 200
SNOOZE_PRESETS = {"later_today": "Later today", "tomorrow": "Tomorrow", "next_week": "Next week"}


@dataclass
class Entry:
    """One line of the timeline: a message, a note or a history row, at its time."""

    kind: str  # "message" | "note" | "activity"
    at: dt.datetime
    item: Any
    sender: str = ""  # messages: who sent it, in words
    sender_kind: str = ""  # "customer" | "colleague" | "outlook"
    count: int = 1  # history: the same thing done to several messages at once, one line


def _same_act(a: Entry, b: Entry) -> bool:
    x, y = a.item, b.item
    return (
        a.kind == b.kind == "activity"
        and (x.actor_id, x.source, x.verb, x.detail) == (y.actor_id, y.source, y.verb, y.detail)
        and abs((a.at - b.at).total_seconds()) < 60
    )


def _conversation(box: Mailbox, conversation_id: int) -> Conversation:
    conversation = (
        Conversation.objects.select_related("assignee")
        .filter(pk=conversation_id, mailbox=box)
        .first()
    )
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


def _thread(conversation: Conversation) -> list[Message]:
    return list(
        conversation.messages.filter(expunged_at__isnull=True)
        .select_related("folder")
        .prefetch_related("attachments", "outgoing_replies__author")
        .order_by("date", "pk")
    )


def _senders(box: Mailbox, thread: list[Message]) -> dict[int, tuple[str, str]]:
    """Who sent each message: the customer, the colleague who wrote it in the app (matched by
    Message-ID), or the team from outside the app (the shared address, e.g. Outlook)."""
    # A parsed Message-ID is stored bare, the one we generate with its angle brackets.
    ids = [m.message_id.strip("<>") for m in thread if m.message_id]
    found = workflow.app_authors(box.pk, ids + [f"<{i}>" for i in ids])
    authors = {key.strip("<>"): name for key, name in found.items()}
    shared = box.email_address.lower()
    result: dict[int, tuple[str, str]] = {}
    for m in thread:
        author = authors.get(m.message_id.strip("<>")) if m.message_id else None
        if author:
            result[m.pk] = (f"{author} (from the app)", "colleague")
        elif shared and m.from_address.lower() == shared:
            result[m.pk] = ("the team (Outlook)", "outlook")
        else:
            result[m.pk] = (m.sender_display or "(no sender)", "customer")
    return result


def _timeline(box: Mailbox, conversation: Conversation, thread: list[Message]) -> list[Entry]:
    senders = _senders(box, thread)
    epoch = conversation.created_at
    entries = [Entry("message", m.date or m.created_at or epoch, m, *senders[m.pk]) for m in thread]
    notes = Note.objects.filter(conversation=conversation).select_related("author")
    entries += [Entry("note", n.created_at, n) for n in notes]
    history = (
        Activity.objects.filter(
            Q(conversation=conversation) | Q(message__conversation=conversation)
        )
        .select_related("actor")
        .order_by("-created_at", "-pk")[:HISTORY_LIMIT]
    )
    entries += [Entry("activity", a.created_at, a) for a in history]
    # Stable: a message and the history it caused keep the order they were written in.
    order = {"message": 0, "note": 1, "activity": 2}
    entries.sort(key=lambda e: (e.at, order[e.kind], e.item.pk))
    folded: list[Entry] = []
    for entry in entries:  # "bob marked it read" once for the five messages it opened
        if folded and _same_act(folded[-1], entry):
            folded[-1].count += 1
        else:
            folded.append(entry)
    return folded


def _teammates(box: Mailbox) -> list[User]:
    acting = Membership.objects.filter(
        mailbox=box, role__in=[Membership.Role.AGENT, Membership.Role.ADMIN]
    ).values("user_id")
    users = get_user_model().objects.filter(pk__in=acting, is_active=True).order_by("username")
    return list(users)


def _context(
    request: AuthenticatedHttpRequest, box: Mailbox, conversation: Conversation
) -> dict[str, object]:
    thread = _thread(conversation)
    latest = thread[-1] if thread else None
    now = timezone.now()
    return {
        "mailbox": box,
        "conversation": conversation,
        "thread": thread,
        "latest": latest,
        "timeline": _timeline(box, conversation, thread),
        "can_act": may(request.user, box, Role.AGENT),
        "teammates": _teammates(box),
        "statuses": Conversation.Status.choices,
        "snoozed": conversation.snoozed_until is not None and conversation.snoozed_until > now,
        "snooze_presets": SNOOZE_PRESETS,
        "snooze_min": timezone.localtime(now).strftime("%Y-%m-%dT%H:%M"),
        "unread": any(not m.seen for m in thread),
        "flagged": latest is not None and latest.flagged,
    }


@login_required
def conversation_page(
    request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int
) -> HttpResponse:
    box = get_mailbox_for(request.user, mailbox)
    conversation = _conversation(box, conversation_id)
    if conversation.merged_into_id is not None:  # a later message showed it is part of another
        survivor = resolve(conversation)
        return redirect("conversation", mailbox=box.name, conversation_id=survivor.pk)
    if may(request.user, box, Role.AGENT):  # a viewer's look writes nothing
        workflow.open_conversation(conversation=conversation, actor=request.user)
    return render(request, "teaminbox/conversation.html", _context(request, box, conversation))


# --- the team's actions ---------------------------------------------------------------


def _answer(
    request: AuthenticatedHttpRequest,
    box: Mailbox,
    conversation: Conversation,
    said: str,
    undo: dict[str, str] | None = None,
) -> HttpResponse:
    """The redrawn controls and timeline (htmx), or back to the page with a message."""
    if not request.htmx:
        messages.success(request, said)
        return redirect("conversation", mailbox=box.name, conversation_id=conversation.pk)
    conversation.refresh_from_db()
    context = _context(request, box, conversation)
    context["oob"] = True
    body = render_to_string("teaminbox/conversation.html#workflow", context, request)
    body += render_to_string("teaminbox/conversation.html#timeline", context, request)
    response = HttpResponse(body)
    toast: dict[str, object] = {"message": said}
    if undo is not None:
        toast["undo"] = undo
    return trigger_client_event(response, "toast", toast)


def _refuse(sentence: str) -> HttpResponse:
    return HttpResponseBadRequest(sentence, content_type="text/plain")


View = Callable[..., HttpResponse]


def _sentences(view: View) -> View:
    """A service's refusal (a snooze in the past, a message that cannot be flagged now)
    answers 400 with its sentence: toast.js shows it."""

    @functools.wraps(view)
    def wrapped(request: AuthenticatedHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except services.ActionRefused as refused:
            return _refuse(str(refused))

    return wrapped


def _acting(
    request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int
) -> tuple[Mailbox, Conversation]:
    box = get_mailbox_for(request.user, mailbox, role=Role.AGENT)  # 403 for a viewer
    return box, _conversation(box, conversation_id)


def _url(name: str, box: Mailbox, conversation: Conversation) -> str:
    return reverse(name, kwargs={"mailbox": box.name, "conversation_id": conversation.pk})


@login_required
@require_POST
@_sentences
def assign(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    box, conversation = _acting(request, mailbox, conversation_id)
    raw = request.POST.get("assignee", "")
    assignee: AbstractBaseUser | None = None
    if raw == "me":
        assignee = request.user
    elif raw:
        teammate = next((u for u in _teammates(box) if str(u.pk) == raw), None)
        if teammate is None:
            return _refuse("Assign to a teammate of this mailbox who may act in it, or nobody.")
        assignee = teammate
    before = conversation.assignee_id
    workflow.assign_conversation(conversation=conversation, assignee=assignee, actor=request.user)
    said = f"Assigned to {assignee.get_username()}." if assignee else "Unassigned."
    undo = {"url": _url("conversation_assign", box, conversation), "assignee": str(before or "")}
    return _answer(request, box, conversation, said, undo)


@login_required
@require_POST
@_sentences
def status(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    box, conversation = _acting(request, mailbox, conversation_id)
    wanted = request.POST.get("status", "")
    if wanted not in Conversation.Status.values:
        return _refuse("Unknown status: use open, pending or closed.")
    before = conversation.status
    workflow.set_conversation_status(conversation=conversation, status=wanted, actor=request.user)
    said = f"Marked {Conversation.Status(wanted).label.lower()}."
    undo = {"url": _url("conversation_status", box, conversation), "status": before}
    return _answer(request, box, conversation, said, undo)


def _morning(day: dt.datetime) -> dt.datetime:
    return day.replace(hour=8, minute=0, second=0, microsecond=0)


def _snooze_until(request: AuthenticatedHttpRequest) -> dt.datetime | str:
    """The time asked for, or the sentence saying what is wrong with it."""
    now = timezone.localtime()
    preset = request.POST.get("preset", "")
    if preset == "later_today":
        return now + dt.timedelta(hours=3)
    if preset == "tomorrow":
        return _morning(now + dt.timedelta(days=1))
    if preset == "next_week":
        monday = now + dt.timedelta(days=7 - now.weekday())
        return _morning(monday)
    if preset:
        return "Unknown snooze preset: use later today, tomorrow or next week."
    raw = request.POST.get("until", "").strip()
    if not raw:
        return "Choose when to snooze until."
    try:
        until = dt.datetime.fromisoformat(raw)
    except ValueError:
        return f"Not a date and time: {raw!r}."
    if timezone.is_naive(until):
        until = timezone.make_aware(until)
    if until <= timezone.now():
        return "Snooze until a time in the future."
    return until


@login_required
@require_POST
@_sentences
def snooze(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    box, conversation = _acting(request, mailbox, conversation_id)
    until = _snooze_until(request)
    if isinstance(until, str):
        return _refuse(until)
    workflow.snooze_conversation(conversation=conversation, until=until, actor=request.user)
    said = f"Snoozed until {timezone.localtime(until):%a %b %-d, %H:%M}."
    return _answer(request, box, conversation, said)


@login_required
@require_POST
@_sentences
def note(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    box, conversation = _acting(request, mailbox, conversation_id)
    body = request.POST.get("body", "").strip()
    if not body:
        return _refuse("A note needs some text.")
    workflow.add_note(conversation=conversation, body=body, actor=request.user)
    return _answer(request, box, conversation, "Note added.")


def _mark(
    request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int, *, read: bool
) -> HttpResponse:
    box, conversation = _acting(request, mailbox, conversation_id)
    workflow.mark_conversation(conversation=conversation, read=read, actor=request.user)
    inverse = "conversation_unread" if read else "conversation_read"
    undo = {"url": _url(inverse, box, conversation)}
    return _answer(request, box, conversation, "Marked read." if read else "Marked unread.", undo)


@login_required
@require_POST
@_sentences
def read(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    return _mark(request, mailbox, conversation_id, read=True)


@login_required
@require_POST
@_sentences
def unread(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    return _mark(request, mailbox, conversation_id, read=False)


@login_required
@require_POST
@_sentences
def flag(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    """Star (\\Flagged) the latest message, or take the star off: what s does."""
    box, conversation = _acting(request, mailbox, conversation_id)
    thread = _thread(conversation)
    if not thread:
        return _refuse("This conversation has no message to flag.")
    latest = thread[-1]
    on = request.POST.get("on", "1" if not latest.flagged else "0") == "1"
    services.set_flag(message=latest, flag=FLAGGED, on=on, actor=request.user)
    undo = {"url": _url("conversation_flag", box, conversation), "on": "0" if on else "1"}
    return _answer(request, box, conversation, "Flagged." if on else "Flag removed.", undo)


@login_required
@require_POST
@_sentences
def delete(request: AuthenticatedHttpRequest, mailbox: str, conversation_id: int) -> HttpResponse:
    """Every message of the conversation to the trash (or \\Deleted): what # does."""
    box, conversation = _acting(request, mailbox, conversation_id)
    count = workflow.bulk_act(
        conversation_ids=[conversation.pk], mailbox=box, action="delete", actor=request.user
    )
    messages.success(request, f"Deleted {count} conversation{'s' if count != 1 else ''}.")
    target = reverse("inbox", kwargs={"mailbox": box.name})
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = target
        return response
    return redirect(target)
