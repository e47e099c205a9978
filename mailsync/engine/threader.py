"""Conversations from Message-ID, References and In-Reply-To, the same in any arrival order.

JWZ's grouping (https://www.jwz.org/doc/threading.html) without the tree: a conversation is
a connected group of messages, and two messages are linked when a rule below says so about
the *pair* alone. Because no rule looks at which message came first, a sync that stores a
reply before its parent (a first sync goes newest first), or a Sent copy before the INBOX
mail it answers, ends with the same groups as one that stores them in date order: each new
message is linked to every stored one a rule names, and two stored conversations a new
message links are merged.

The rules (``link``):

1. the same bytes (a copy in another folder, a refetch after a UIDVALIDITY reset), for
   mail without a Message-ID (copies with one are found by rule 2);
2. the same Message-ID *and* the same normalized subject and sender: Message-ID is never
   identity alone (missing ids are normal; a broken mailer gives one id to unrelated mail);
3. one names the other's Message-ID in its thread headers (References, else In-Reply-To;
   JWZ prefers References, so a broken In-Reply-To beside good References is ignored) and
   they share the normalized subject, or the named message's sender is among the namer's
   participants (a reply goes to, or comes from, the person it answers). A reply whose
   subject was edited still joins; a reply to one of two unrelated messages sharing an id
   joins only the one it answers;
4. both name the same id with the same normalized subject: replies to a parent that is not
   stored (deleted, or in a folder not mirrored) are one conversation;
5. last resort, for a message without thread headers: the same normalized subject from the
   same customer address within ``SUBJECT_WINDOW``. Mail from the mailbox's own address
   has no customer here, and two customers who both write "Question" are two
   conversations.

Known limit: two messages that share a Message-ID *and* their subject (but not the sender)
stay apart, but a reply naming that id cannot tell which it answers when it goes to
neither sender, and joins both.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

# A customer who writes again about the same thing within a week, without replying to
# anything, continues the conversation; after that, the same subject is a new question.
SUBJECT_WINDOW = timedelta(days=7)

# Longest stored lookup key, in UTF-8 bytes: a PostgreSQL btree entry holds about 2,700,
# and an id or subject longer than this is not one a reply could name.
MAX_KEY_BYTES = 900

# Reply and forward prefixes as mail clients write them (English, German, Nordic, Dutch,
# French, Italian, Spanish, Polish, Portuguese, Chinese), with counters ("Re[2]:",
# "Re^2:") and full-width colons. Repeated: "Re: AW: Fwd: x" is "x".
_PREFIX = re.compile(
    r"^(?:\s*(?:re|aw|sv|vs|antw|ref|rif|res|odp|fw|fwd|wg|tr|enc|r|回复|答复|转发)"
    r"\s*(?:\[\d+\]|\^\d+)?\s*[:\uff1a])+",  # (\uff1a: the full-width colon)
    re.IGNORECASE,
)
_SPACE = re.compile(r"\s+")
_ADDRESS = re.compile(r"[^\s<>,;:\"'()\[\]]+@[^\s<>,;:\"'()\[\]]+")


def normalize_subject(subject: str) -> str:
    """The subject without reply and forward prefixes, whitespace collapsed, case folded."""
    text = _PREFIX.sub("", _SPACE.sub(" ", subject)).strip()
    return _fit(text.casefold())


def thread_references(
    references: Sequence[str], in_reply_to: str, message_id: str
) -> tuple[str, ...]:
    """The ids a message names as its ancestors: References, else In-Reply-To (JWZ), never
    its own id, each once, and none too long to look up."""
    chosen = [r for r in references if r] or ([in_reply_to] if in_reply_to else [])
    seen: set[str] = {message_id} if message_id else set()
    result = []
    for reference in chosen:
        if reference not in seen and _fits(reference):
            seen.add(reference)
            result.append(reference)
    return tuple(result)


def addresses_in(*displays: str) -> frozenset[str]:
    """Mail addresses found in address lines as stored for display, lowercased."""
    return frozenset(m.group(0).lower() for text in displays for m in _ADDRESS.finditer(text))


def topic_for(sender: str, subject_key: str, own_addresses: frozenset[str]) -> str:
    """The subject-fallback key (rule 5): customer and normalized subject; "" when there is
    no customer (mail from the mailbox's own addresses, lowercased; no sender) or no
    subject."""
    sender = sender.lower()
    if not sender or not subject_key or sender in own_addresses:
        return ""
    return _fit(f"{sender} {subject_key}")


@dataclass(frozen=True)
class ThreadFacts:
    """What threading knows of one message; ``conversation`` is set for stored ones."""

    key: Hashable
    message_id: str
    references: tuple[str, ...]  # from ``thread_references``
    subject_key: str  # from ``normalize_subject``
    sender: str  # lowercased address
    address_lines: str  # From, To and Cc as stored
    topic: str  # from ``topic_for``
    date: datetime | None
    digest: str
    conversation: int | None = None

    @cached_property
    def participants(self) -> frozenset[str]:
        """From, To and Cc addresses, lowercased (read only when the subjects differ)."""
        return addresses_in(self.address_lines)


@dataclass(frozen=True)
class ThreadGroup:
    """New messages that belong together, and the stored conversations they link.

    With no conversation the messages start a new one; with several, the lowest id (the
    one people have known longest: its URL, its assignee, its history) survives and the
    others are merged into it."""

    new: tuple[Hashable, ...]
    conversations: tuple[int, ...]

    @property
    def survivor(self) -> int | None:
        return self.conversations[0] if self.conversations else None

    @property
    def merged(self) -> tuple[int, ...]:
        return self.conversations[1:]


def link(new: Sequence[ThreadFacts], known: Sequence[ThreadFacts]) -> list[ThreadGroup]:
    """Group new messages, given every stored message that a rule could link to one of them
    (same bytes, an id either names or owns, the same topic): one group per set of new
    messages that end up together, in the order of ``new``."""
    groups = _Groups()
    facts = [*known, *new]
    # one pass: facts sharing a key below belong together (rules 1, 2 and 4, and a stored
    # conversation is already one group); owners of each id (rule 3); topics (rule 5)
    together: dict[tuple[object, ...], list[Hashable]] = defaultdict(list)
    owners: dict[str, list[ThreadFacts]] = defaultdict(list)
    topics: dict[str, list[ThreadFacts]] = defaultdict(list)
    for fact in facts:
        key = fact.key
        if fact.conversation is not None:
            together[("conversation", fact.conversation)].append(key)
        if fact.digest and not fact.message_id:  # (with an id, rule 2 finds its copies)
            together[("bytes", fact.digest)].append(key)
        if fact.message_id:
            together[("id", fact.message_id, fact.subject_key, fact.sender)].append(key)
            owners[fact.message_id].append(fact)
        for reference in fact.references:
            together[("names", reference, fact.subject_key)].append(key)
        if fact.topic and fact.date is not None:
            topics[fact.topic].append(fact)
    for members in together.values():
        if len(members) > 1:
            groups.union_all(members)
    for fact in facts:  # rule 3
        for reference in fact.references:
            for owner in owners.get(reference, ()):
                if owner.subject_key == fact.subject_key or owner.sender in fact.participants:
                    groups.union(owner.key, fact.key)
    _link_topics(topics, groups)  # rule 5

    found: dict[Hashable, list[Hashable]] = {}
    for fact in new:
        found.setdefault(groups.find(fact.key), []).append(fact.key)
    conversations: dict[Hashable, set[int]] = defaultdict(set)
    for fact in known:
        if fact.conversation is not None:
            conversations[groups.find(fact.key)].add(fact.conversation)
    return [
        ThreadGroup(new=tuple(members), conversations=tuple(sorted(conversations[root])))
        for root, members in found.items()
    ]


def _link_topics(topics: dict[str, list[ThreadFacts]], groups: _Groups) -> None:
    """Rule 5 in O(n log n) per topic: a message is linked to every message without thread
    headers within the window of it. Those form a run in date order, so linking it to the
    run's first one and each run member to the next gives the same groups as every pair."""
    for members in topics.values():
        if len(members) < 2:
            continue
        loose = sorted((f for f in members if not f.references), key=_when)
        if not loose:
            continue
        dates = [_when(f) for f in loose]
        joined_to_next = [0] * (len(loose) + 1)  # a difference array over runs
        for fact in members:
            when = _when(fact)
            first = bisect_left(dates, when - SUBJECT_WINDOW)
            last = bisect_right(dates, when + SUBJECT_WINDOW) - 1
            if first > last:
                continue
            groups.union(fact.key, loose[first].key)
            joined_to_next[first] += 1
            joined_to_next[last] -= 1
        running = 0
        for index in range(len(loose) - 1):
            running += joined_to_next[index]
            if running > 0:
                groups.union(loose[index].key, loose[index + 1].key)


def _when(fact: ThreadFacts) -> datetime:
    assert fact.date is not None  # (only dated facts are sorted)
    return fact.date


class _Groups:
    """Union-find over message keys."""

    def __init__(self) -> None:
        self._parent: dict[Hashable, Hashable] = {}  # a key not in it is its own root

    def find(self, key: Hashable) -> Hashable:
        parent = self._parent
        root = key
        while (up := parent.get(root, root)) != root:
            root = up
        while key != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    def union(self, a: Hashable, b: Hashable) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self._parent[root_b] = root_a

    def union_all(self, keys: Sequence[Hashable]) -> None:
        for key in keys[1:]:
            self.union(keys[0], key)


def _fits(text: str) -> bool:
    if len(text) * 4 <= MAX_KEY_BYTES:  # (no code point takes more than 4 bytes)
        return True
    return len(text.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES


def _fit(text: str) -> str:
    """Cut to MAX_KEY_BYTES of UTF-8 (lookup keys are compared, never shown)."""
    if len(text) * 4 <= MAX_KEY_BYTES:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_KEY_BYTES:
        return text
    return data[:MAX_KEY_BYTES].decode("utf-8", "ignore")
