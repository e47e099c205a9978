"""Reads for the conversation list: which conversations a view holds, a page of them by
keyset, and every view's count for the sidebar.

Pages are cut by keyset, never by OFFSET: a cursor names the last row shown, and the next
page starts strictly after it in the sort's order, so page 50 costs what page 1 costs (an
index range scan on ``(mailbox, last_message_at DESC, id DESC)`` or
``(mailbox, waiting_since, id)``) and a conversation that moves while someone pages is
neither shown twice nor skipped because rows above it came or went. No page asks for a
COUNT(*) of its folder; the sidebar's counts are one aggregate over the mailbox's listed
conversations (``view_counts``).

"Longest waiting" lists the conversations whose customer waits (``waiting_since`` set),
oldest wait first, then the ones the team answered last, newest first: two keyset phases,
and the cursor says which phase it is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from mailsync.models import Conversation, Folder, Mailbox, Message

User = AbstractBaseUser | AnonymousUser

VIEWS = ("unassigned", "mine", "others", "open", "pending", "snoozed", "closed")
VIEW_LABELS = {
    "unassigned": "Unassigned",
    "mine": "Mine",
    "others": "Assigned to others",
    "open": "All open",
    "pending": "Pending",
    "snoozed": "Snoozed",
    "closed": "Closed",
}
DEFAULT_VIEW = "open"
SORTS = ("newest", "waiting")
FOLDER_PREFIX = "folder:"
PAGE_SIZE = 50
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)  # a cursor before every row of a phase


class BadListRequest(ValueError):
    """The view, sort or cursor in the URL is not one we know; str() says what to use."""


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row with this sort key and id. ``phase`` is
    ``"w"`` (waiting customers) or ``"n"`` (the rest, newest first)."""

    phase: str
    at: datetime
    id: int

    def encode(self) -> str:
        return f"{self.phase}~{self.at.isoformat()}~{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            phase, at, pk = text.split("~")
            when = datetime.fromisoformat(at)
            if phase not in ("w", "n") or when.tzinfo is None:
                raise ValueError(text)
            return cls(phase=phase, at=when, id=int(pk))
        except ValueError:
            raise BadListRequest(
                "This page link is damaged; start again from the first page."
            ) from None


def listed(mailbox: Mailbox) -> QuerySet[Conversation]:
    """The mailbox's conversations that a list shows: not merged away, not emptied."""
    return Conversation.objects.filter(
        mailbox=mailbox, merged_into__isnull=True, message_count__gt=0
    )


def view_filter(view: str, *, user: User, now: datetime) -> Q:
    """The conversations of a team view. A snoozed conversation (``snoozed_until`` in the
    future) leaves open and pending until it wakes; closed stays closed, snoozed or not."""
    snoozed = Q(snoozed_until__gt=now)
    awake = Q(snoozed_until__isnull=True) | Q(snoozed_until__lte=now)
    is_open = Q(status=Conversation.Status.OPEN) & awake
    me = int(user.pk) if user.is_authenticated else None
    filters = {
        "unassigned": is_open & Q(assignee__isnull=True),
        "mine": is_open & Q(assignee_id=me),
        "others": is_open & Q(assignee__isnull=False) & ~Q(assignee_id=me),
        "open": is_open,
        "pending": Q(status=Conversation.Status.PENDING) & awake,
        "snoozed": snoozed & ~Q(status=Conversation.Status.CLOSED),
        "closed": Q(status=Conversation.Status.CLOSED),
    }
    return filters[view]


def folder_of_view(mailbox: Mailbox, view: str) -> Folder | None:
    """The folder a ``folder:<name>`` view names (None for a team view)."""
    if not view.startswith(FOLDER_PREFIX):
        return None
    name = view.removeprefix(FOLDER_PREFIX)
    folder = mailbox.folders.filter(name=name).first()
    if folder is None:
        raise BadListRequest(f"This mailbox has no folder named {name!r}.")
    return folder


def check_view(view: str, sort: str) -> None:
    if view not in VIEWS and not view.startswith(FOLDER_PREFIX):
        raise BadListRequest(
            f"Unknown view {view!r}: use one of {', '.join(VIEWS)} or folder:<name>."
        )
    if sort not in SORTS:
        raise BadListRequest(f"Unknown sort {sort!r}: use newest or waiting.")


def in_view(
    mailbox: Mailbox, *, user: User, view: str, now: datetime | None = None
) -> QuerySet[Conversation]:
    """Every listed conversation of the view, unordered (the bulk action's "all N")."""
    check_view(view, "newest")
    folder = folder_of_view(mailbox, view)
    conversations = listed(mailbox)
    if folder is None:
        return conversations.filter(view_filter(view, user=user, now=now or timezone.now()))
    # A folder view lists the conversations with a live message in the folder: its
    # messages stay together (a reply in Sent shows its whole conversation).
    live = Message.objects.filter(
        conversation=OuterRef("pk"),
        folder=folder,
        uidvalidity=folder.uidvalidity or 0,
        expunged_at__isnull=True,
        moving_to__isnull=True,
    )
    return conversations.filter(Exists(live))


def list_conversations(
    *,
    mailbox: Mailbox,
    user: User,
    view: str,
    sort: str = "newest",
    after: str | None = None,
    limit: int = PAGE_SIZE,
) -> tuple[list[Conversation], str | None]:
    """One page of the view in the sort's order, starting after the cursor ``after``;
    returns the rows and the cursor of the next page (None on the last page).

    One query per phase and no COUNT: it asks for ``limit + 1`` rows to learn whether there
    is a next page."""
    check_view(view, sort)
    cursor = Cursor.decode(after) if after else None
    # Whole rows (no .only(): its field bookkeeping costs more than the few columns saved)
    base = in_view(mailbox, user=user, view=view).select_related("assignee")
    rows: list[Conversation] = []
    phase = cursor.phase if cursor else ("w" if sort == "waiting" else "n")
    if phase == "w":
        waiting = base.filter(waiting_since__isnull=False)
        if cursor:
            # the plain bound first: it is what the index range starts from (the OR alone
            # makes PostgreSQL walk the index from the top, slower with every page)
            waiting = waiting.filter(waiting_since__gte=cursor.at).filter(
                Q(waiting_since__gt=cursor.at) | Q(id__gt=cursor.id)
            )
        rows = list(waiting.order_by("waiting_since", "id")[: limit + 1])
        if len(rows) > limit:
            return rows[:limit], _cursor_after(rows[limit - 1], "w")
        cursor = None  # the waiting ones are done: the rest follow, newest first
    rest = base if sort == "newest" else base.filter(waiting_since__isnull=True)
    if cursor:
        rest = rest.filter(last_message_at__lte=cursor.at).filter(
            Q(last_message_at__lt=cursor.at) | Q(id__lt=cursor.id)
        )
    room = limit - len(rows)
    more = list(rest.order_by("-last_message_at", "-id")[: room + 1])
    if len(more) <= room:
        return rows + more, None
    if room == 0:  # the waiting ones filled the page exactly: the next starts the rest
        return rows, Cursor(phase="n", at=END_OF_TIME, id=2**62).encode()
    return rows + more[:room], _cursor_after(more[room - 1], "n")


def _cursor_after(row: Conversation, phase: str) -> str:
    at = row.waiting_since if phase == "w" else row.last_message_at
    assert at is not None  # both are set on the rows of their phase
    return Cursor(phase=phase, at=at, id=row.pk).encode()


@dataclass(frozen=True)
class ListRow:
    """What a row of the list shows, worked out once in Python: the template only prints
    it (50 rows of template filters cost more than the page's queries)."""

    pk: int
    url: str
    customer: str
    subject: str
    snippet: str
    latest_by: str
    latest_by_team: bool
    message_count: int
    unread: bool
    has_attachments: bool
    status: str
    badge: str  # "snoozed", "pending", "closed" or "" for open
    badge_title: str
    assignee_name: str
    assignee_initials: str
    when_iso: str
    when_label: str
    when_title: str
    waiting_label: str
    waiting_title: str


def list_rows(rows: list[Conversation], *, url_prefix: str, now: datetime) -> list[ListRow]:
    """The rows for display; ``url_prefix`` is the mailbox's list URL (a conversation is
    at ``<prefix>c/<id>/``, reversed once rather than fifty times)."""
    today = timezone.localtime(now).date()
    shown = []
    for c in rows:
        customer = c.customer_name or c.customer_address or "(unknown sender)"
        when = timezone.localtime(c.last_message_at) if c.last_message_at else None
        snoozed = c.snoozed_until is not None and c.snoozed_until > now
        badge = "snoozed" if snoozed else ("" if c.status == "open" else str(c.status))
        waiting = timezone.localtime(c.waiting_since) if c.waiting_since else None
        shown.append(
            ListRow(
                pk=c.pk,
                url=f"{url_prefix}c/{c.pk}/",
                customer=customer,
                subject=c.subject or "(no subject)",
                snippet=c.snippet,
                latest_by=customer if c.latest_from_customer else c.latest_sender_name or "Team",
                latest_by_team=not c.latest_from_customer,
                message_count=c.message_count,
                unread=c.unread_count > 0,
                has_attachments=c.has_attachments,
                status=str(c.status),
                badge=badge,
                badge_title=(
                    f"Snoozed until {timezone.localtime(c.snoozed_until):%b %d, %H:%M}"
                    if snoozed and c.snoozed_until
                    else ""
                ),
                assignee_name=c.assignee.get_username() if c.assignee else "",
                assignee_initials=initials(c.assignee) if c.assignee else "",
                when_iso=when.isoformat() if when else "",
                when_label=(
                    ""
                    if when is None
                    else f"{when:%H:%M}"
                    if when.date() == today
                    else f"{when:%b} {when.day}"
                    if when.year == today.year
                    else f"{when:%b} {when.day}, {when.year}"
                ),
                when_title=f"{when:%b} {when.day}, {when:%Y %H:%M}" if when else "",
                waiting_label=f"waiting {_span(now - waiting)}" if waiting else "",
                waiting_title=(
                    f"The customer has waited since {waiting:%b} {waiting.day}, {waiting:%H:%M}"
                    if waiting
                    else ""
                ),
            )
        )
    return shown


def _span(delta: timedelta) -> str:
    """A wait in its largest unit: 12 min, 5 h, 3 d, 6 wk."""
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    if minutes < 14 * 24 * 60:
        return f"{minutes // (24 * 60)} d"
    return f"{minutes // (7 * 24 * 60)} wk"


def initials(user: AbstractBaseUser | None) -> str:
    if user is None:
        return ""
    first = str(getattr(user, "first_name", "") or "")
    last = str(getattr(user, "last_name", "") or "")
    if first and last:
        return (first[0] + last[0]).upper()
    return (first or user.get_username())[:2].upper()


def view_counts(*, mailbox: Mailbox, user: User, now: datetime | None = None) -> dict[str, int]:
    """How many conversations each team view holds, from one query: the mailbox's listed
    conversations grouped by (status, assignee), with how many of each group are snoozed
    (a scan of one mailbox's conversation rows, never of its messages; a handful of
    groups come back, and the seven counts are sums of them)."""
    now = now or timezone.now()
    me = int(user.pk) if user.is_authenticated else None
    groups = (
        listed(mailbox)
        .order_by()
        .values("status", "assignee_id")
        .annotate(total=Count("id"), snoozed=Count("id", filter=Q(snoozed_until__gt=now)))
    )
    counts = dict.fromkeys(VIEWS, 0)
    for group in groups:
        status, assignee, snoozed = group["status"], group["assignee_id"], group["snoozed"]
        awake = group["total"] - snoozed
        if status == Conversation.Status.CLOSED:
            counts["closed"] += group["total"]
            continue
        counts["snoozed"] += snoozed
        if status == Conversation.Status.PENDING:
            counts["pending"] += awake
        elif status == Conversation.Status.OPEN:
            counts["open"] += awake
            view = "unassigned" if assignee is None else "mine" if assignee == me else "others"
            counts[view] += awake
    return counts
