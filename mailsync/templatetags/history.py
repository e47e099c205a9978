"""The wording of the history: one sentence per ``Activity.Verb``, in one place.

``{% load history %}`` then ``{{ activity|describe }}`` in a template; the admin's history
list calls ``describe`` too. It lives with the ``Activity`` model (mailsync) so the admin
of either app can use it; teaminbox's pages load it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from django import template
from django.utils import timezone

from mailsync.engine.flags import ANSWERED, DELETED, FLAGGED, SEEN
from mailsync.models import Activity

register = template.Library()

Verb = Activity.Verb
Detail = Mapping[str, object]

FLAG_WORDS = {
    (SEEN, True): "marked it read",
    (SEEN, False): "marked it unread",
    (DELETED, True): "deleted it",
    (DELETED, False): "undeleted it",
    (FLAGGED, True): "flagged it",
    (FLAGGED, False): "unflagged it",
    (ANSWERED, True): "marked it replied",
    (ANSWERED, False): "cleared replied",
}


def _flag(on: bool) -> Callable[[Detail], str]:
    def words(detail: Detail) -> str:
        flag = str(detail.get("flag", ""))
        return FLAG_WORDS.get((flag, on)) or f"{'set' if on else 'cleared'} {flag}"

    return words


def _flags_changed(detail: Detail) -> str:
    parts = []
    if detail.get("added"):
        parts.append("added " + _names(detail["added"]))
    if detail.get("removed"):
        parts.append("removed " + _names(detail["removed"]))
    return "flags changed on the server: " + "; ".join(parts)


def _change_not_applied(reason: str) -> Callable[[Detail], str]:
    """An outbox change the server never took: which change, and why."""

    def words(detail: Detail) -> str:
        kind = detail.get("kind")
        if kind == "move":
            what = "the move"
        elif kind == "expunge":
            what = "the purge"
        else:
            flag = str(detail.get("flag", ""))
            verb = "setting" if detail.get("add") else "clearing"
            what = f"{verb} {flag}" if flag else "a change"
        error = str(detail.get("error", "")).rstrip(".")
        return f"{what} {reason}" + (f": {error}" if error else "")

    return words


def _with_error(text: str) -> Callable[[Detail], str]:
    def words(detail: Detail) -> str:
        error = str(detail.get("error", "")).rstrip(".")
        return f"{text}: {error}" if error else text

    return words


def _outgoing(text: str) -> Callable[[Detail], str]:
    def words(detail: Detail) -> str:
        to = detail.get("to")
        return f"{text} to {_names(to)}" if to else text

    return words


def _names(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


WORDING: dict[str, Callable[[Detail], str]] = {
    Verb.FLAG_ADDED: _flag(True),
    Verb.FLAG_REMOVED: _flag(False),
    Verb.DELETED: lambda d: f"deleted it (moving to {d.get('to', 'Trash')})",
    Verb.RESTORED: lambda d: f"restored it to {d['to']}" if d.get("to") else "undid the delete",
    Verb.PURGED: lambda d: "purged it from the server",
    Verb.MEMBER_ADDED: lambda d: f"added {d.get('user')} as {d.get('role')}",
    Verb.MEMBER_ROLE_CHANGED: lambda d: f"made {d.get('user')} {d.get('role')}",
    Verb.MEMBER_REMOVED: lambda d: f"removed {d.get('user')} from the mailbox",
    Verb.REPLIED: _outgoing("replied"),
    Verb.REPLIED_TO_ALL: _outgoing("replied to all"),
    Verb.FORWARDED: _outgoing("forwarded it"),
    Verb.SENT_NEW_MESSAGE: _outgoing("sent a new message"),
    Verb.REPLY_RETRIED: lambda d: "sent the failed reply again",
    Verb.REPLY_FAILED: _with_error("the reply could not be sent"),
    Verb.SENT_COPY_SAVED: lambda d: f"the copy of the reply was saved to {d.get('folder', 'Sent')}",
    Verb.SENT_COPY_FAILED: _with_error("the reply was sent but not saved to Sent"),
    Verb.MOVED: lambda d: f"moved from {d.get('from')} to {d.get('to')}",
    Verb.PUSH_FAILED: _change_not_applied("was refused by the server"),
    Verb.CONFLICT: _change_not_applied("was not applied (another client kept changing it)"),
    Verb.FLAGS_CHANGED: _flags_changed,
    Verb.EXPUNGED: lambda d: f"removed from {d.get('folder', 'the folder')}",
    Verb.UIDVALIDITY_CHANGED: lambda d: f"the server renumbered {d.get('folder', 'a folder')}",
    Verb.SYNC_FAILED: _with_error("sync failed"),
    Verb.CONVERSATIONS_MERGED: lambda d: _merged(d.get("merged")),
    Verb.ASSIGNED: lambda d: (
        "took it" if d.get("to") == d.get("by") else f"assigned it to {d.get('to')}"
    ),
    Verb.UNASSIGNED: lambda d: f"unassigned {d['from']}" if d.get("from") else "unassigned it",
    Verb.STATUS_CHANGED: lambda d: _status_changed(d.get("to")),
    Verb.SNOOZED: lambda d: f"snoozed it until {_when(d.get('until'))}",
    Verb.WOKE: lambda d: "the snooze ended: open again",
    Verb.NOTE_ADDED: lambda d: "added a note",
    Verb.REOPENED: lambda d: f"the customer wrote again: reopened (it was {d.get('was')})",
}

STATUS_WORDS = {"open": "reopened it", "pending": "set it pending", "closed": "closed it"}


def _when(value: object) -> str:
    """An ISO time from a history row, as people read it (in the site's time zone)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return f"{moment:%a %b} {moment.day}, {moment:%H:%M}"


def _status_changed(status: object) -> str:
    return STATUS_WORDS.get(str(status), f"set it {status}")


def _merged(ids: object) -> str:
    numbers = ", ".join(f"#{pk}" for pk in ids) if isinstance(ids, list) else "another"
    return f"a new message joined conversation {numbers} to this one"


@register.filter
def describe(activity: Activity) -> str:
    """A short sentence for the history list."""
    words = WORDING.get(activity.verb)
    if words is None:  # a row from before the vocabulary, or a verb not worded yet
        return activity.verb.replace("_", " ")
    return words(activity.detail or {})
