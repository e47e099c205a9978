"""Running a search: the parsed query (``teaminbox.search_parser``) as one queryset.

Field operators match the normalised columns of the message's search document
(``mailsync.search_index``) as substrings, free text goes through the full-text index
(PostgreSQL tsvector or SQLite FTS5); the rest are plain column filters. Every word is
normalised by the same function on both databases, so a query finds the same ids on both.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import DateTimeField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from mailsync.models import Folder, Mailbox, Message
from mailsync.search_index import normalise, text_filter_sql, words
from teaminbox.models import Note
from teaminbox.search_parser import (
    And,
    Assignee,
    HasAttachment,
    Header,
    In,
    Node,
    Not,
    Or,
    SearchSyntaxError,
    Size,
    State,
    Status,
    Text,
    When,
    parse,
)
from teaminbox.services.access import REFUSALS, AccessRefused, Role, may

__all__ = ["SearchPage", "SearchSyntaxError", "search_messages", "terms_of"]

TRASH, JUNK = "\\Trash", "\\Junk"
_SPECIAL_NAMES = {"trash": (TRASH, ("trash", "deleted items", "deleted messages")),
                  "junk": (JUNK, ("junk", "spam", "junk e-mail", "junk email")),
                  "spam": (JUNK, ("junk", "spam", "junk e-mail", "junk email"))}  # fmt: skip

_STATES = {
    "unread": Q(seen=False),
    "read": Q(seen=True),
    "replied": Q(answered=True),
    "unreplied": Q(answered=False),
    "flagged": Q(flagged=True),
    "deleted": Q(deleted=True),
}
_HEADER_COLUMNS = {
    "from": "search__sender",
    "to": "search__recipients_to",
    "cc": "search__recipients_cc",
    "subject": "search__subject",
    "filename": "search__filenames",
}


@dataclass(frozen=True)
class SearchPage:
    messages: list[Message]
    next_cursor: str | None  # the ``after`` of the next page; None on the last one


class _Compiler:
    def __init__(self, *, user: AbstractBaseUser, mailbox: Mailbox, now: datetime) -> None:
        self.user = user
        self.mailbox = mailbox
        self.now = now
        self.zone = zoneinfo.ZoneInfo(settings.TIME_ZONE)

    def q(self, node: Node) -> Q:
        match node:
            case And(items):
                result = Q()
                for item in items:
                    result &= self.q(item)
                return result
            case Or(items):
                result = self.q(items[0])
                for item in items[1:]:
                    result |= self.q(item)
                return result
            case Not(item):
                return ~self.q(item)
            case Text(text, phrase):
                return self.text(text, phrase=phrase)
            case Header("note", text):
                notes = Note.objects.filter(
                    conversation__mailbox=self.mailbox, body__icontains=text.strip()
                )
                return Q(conversation__in=notes.values("conversation"))
            case Header(field, text):
                return Q(**{f"{_HEADER_COLUMNS[field]}__contains": normalise(text)})
            case State(state):
                return _STATES[state]
            case HasAttachment():
                return Q(has_attachments=True)
            case Size(op, size):
                return Q(size__gt=size) if op == ">" else Q(size__lt=size)
            case When(op, day, age):
                return self.when(op, day, age)
            case In(folder):
                return self.folder(folder)
            case Assignee(who):
                return self.assignee(who)
            case Status(status):
                return Q(conversation__status=status)
        raise AssertionError(node)  # pragma: no cover

    def text(self, text: str, *, phrase: bool) -> Q:
        tokens = words(text)
        if not tokens:  # punctuation only ("Re:" is the word "re"; "--" is nothing)
            return Q()
        sql, params = text_filter_sql(tokens, phrase=phrase)
        return Q(pk__in=RawSQL(sql, params))

    def when(self, op: str, day: date | None, age: timedelta | None) -> Q:
        if age is not None:
            moment = self.now - age
            return Q(sort_at__lt=moment) if op == "before" else Q(sort_at__gte=moment)
        assert day is not None
        start = datetime.combine(day, time.min, tzinfo=self.zone)
        end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=self.zone)
        if op == "before":
            return Q(sort_at__lt=start)
        if op == "after":  # the day itself included, as in Gmail
            return Q(sort_at__gte=start)
        return Q(sort_at__gte=start, sort_at__lt=end)

    def folder(self, name: str) -> Q:
        if name == "anywhere":
            return Q()
        if name in _SPECIAL_NAMES:
            special, names = _SPECIAL_NAMES[name]
            return Q(folder__special_use=special) | Q(
                folder__special_use="", folder__name__iregex=_names_regex(names)
            )
        folders = Folder.objects.filter(mailbox=self.mailbox, name__iexact=name)
        if not folders.exists():
            raise SearchSyntaxError(f"“in:{name}”: this mailbox has no folder by that name.")
        return Q(folder__in=folders)

    def assignee(self, who: str) -> Q:
        if who == "me":
            return Q(conversation__assignee_id=int(self.user.pk))
        if who == "none":
            return Q(conversation__assignee__isnull=True)
        return (
            Q(conversation__assignee__username__iexact=who)
            | Q(conversation__assignee__first_name__iexact=who)
            | Q(conversation__assignee__email__iexact=who)
        )


def _names_regex(names: tuple[str, ...]) -> str:
    return "^(" + "|".join(n.replace(" ", "[ ]") for n in names) + ")$"


def _mentions_folder(node: Node | None) -> bool:
    match node:
        case In():
            return True
        case And(items) | Or(items):
            return any(_mentions_folder(item) for item in items)
        case Not(item):
            return _mentions_folder(item)
    return False


def _mentions(node: Node | None, wanted: Node) -> bool:
    match node:
        case And(items) | Or(items):
            return any(_mentions(item, wanted) for item in items)
        case Not(item):
            return _mentions(item, wanted)
    return node == wanted


def _default_folders() -> Q:
    """Every mirrored folder but Trash and Junk (by SPECIAL-USE, else by their usual names)."""
    unwanted = Q(folder__special_use__in=[TRASH, JUNK]) | Q(
        folder__special_use="",
        folder__name__iregex=_names_regex(_SPECIAL_NAMES["trash"][1] + _SPECIAL_NAMES["junk"][1]),
    )
    return ~unwanted


def _cursor(value: str) -> tuple[datetime, int]:
    try:
        micros, pk = value.split("_")
        moment = datetime(1970, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")) + timedelta(
            microseconds=int(micros)
        )
        return moment, int(pk)
    except (ValueError, OverflowError):
        raise SearchSyntaxError("The link to this page of results is damaged.") from None


def _cursor_of(message: Message) -> str:
    epoch = datetime(1970, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC"))
    delta = message.sort_at - epoch  # type: ignore[attr-defined]
    return f"{delta // timedelta(microseconds=1)}_{message.pk}"


def search_messages(
    *,
    user: AbstractBaseUser | AnonymousUser,
    mailbox: Mailbox,
    query: str,
    after: str | None = None,
    limit: int = 50,
    now: datetime | None = None,
) -> SearchPage:
    """The messages of ``mailbox`` that ``query`` finds, newest first, a page at a time
    (keyset on (date, id): ``after`` is the previous page's ``next_cursor``).

    Raises ``AccessRefused`` for someone who is not a member of the mailbox and
    ``SearchSyntaxError`` (a sentence) for a query that cannot be run."""
    if not user.is_authenticated or not may(user, mailbox, Role.VIEWER):
        raise AccessRefused(REFUSALS[Role.VIEWER])
    assert isinstance(user, AbstractBaseUser)
    tree = parse(query)
    compiler = _Compiler(user=user, mailbox=mailbox, now=now or timezone.now())
    rows: QuerySet[Message] = Message.objects.annotate(
        sort_at=Coalesce("date", "internaldate", "created_at", output_field=DateTimeField())
    ).filter(folder__mailbox=mailbox, expunged_at__isnull=True)
    if not _mentions_folder(tree):
        rows = rows.filter(_default_folders())
    if not (_mentions(tree, State("deleted")) or _mentions(tree, In("anywhere"))):
        rows = rows.filter(deleted=False)  # deleted mail is found by asking for it
    if tree is not None:
        rows = rows.filter(compiler.q(tree))
    if after:
        moment, pk = _cursor(after)
        rows = rows.filter(Q(sort_at__lt=moment) | Q(sort_at=moment, pk__lt=pk))
    page = list(rows.select_related("folder", "search").order_by("-sort_at", "-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return SearchPage(page, _cursor_of(page[-1]) if more and page else None)


def terms_of(query: str) -> list[str]:
    """The normalised words a query looks for in text (for highlighting); [] if it cannot
    be parsed."""
    try:
        tree = parse(query)
    except SearchSyntaxError:
        return []
    found: list[str] = []

    def walk(node: Node | None) -> None:
        match node:
            case Text(text) | Header(_, text):
                found.extend(words(text))
            case And(items) | Or(items):
                for item in items:
                    walk(item)

    walk(tree)  # (negated words are not highlighted: they are not there)
    return found
