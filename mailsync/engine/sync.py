"""Per-folder sync: the server is the truth, the store follows it.

Pure logic over an ``ImapSession`` and a ``FolderStore``; no Django, no Celery. Every step
is idempotent, so a crash at any line and a rerun give the same rows:

* new mail is fetched by UID above the stored cursor, in batches bounded by count and
  bytes, newest first; a UID already stored is never fetched again;
* the cursor advances only after all batches committed, and only to the UIDNEXT snapshot
  taken at SELECT (mail arriving meanwhile is picked up by the next run);
* flags of known messages are read back and applied; a known UID the server no longer
  returns is marked expunged (never deleted from history).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from mailsync.engine.errors import ProtocolError, ServerUnreachable
from mailsync.engine.imap import (
    LARGE_CHUNK,
    LARGE_MESSAGE,
    SMALLEST_PIECE,
    FetchedMessage,
    FlagState,
    ImapSession,
    SelectedFolder,
)
from mailsync.engine.mime import parse_envelope

log = logging.getLogger(__name__)


SIZE_WINDOW = 1000

T = TypeVar("T")


@dataclass(frozen=True)
class FolderCursor:
    uidvalidity: int | None
    uidnext_done: int
    highestmodseq_done: int | None


@dataclass(frozen=True)
class SyncLimits:
    """Batches start small, so the newest mail is listed within a second, and double up to
    ``batch_messages``: a large first sync then commits a few dozen times, not thousands."""

    batch_messages: int = 500
    batch_bytes: int = 20 * 1024 * 1024
    first_batch_messages: int = 50


@dataclass(frozen=True)
class SyncProgress:
    folder: str
    fetched: int
    total: int


@dataclass
class SyncReport:
    folder: str
    new_messages: int = 0
    flag_updates: int = 0
    expunged: int = 0
    vanished_before_fetch: int = 0
    dead_letters: int = 0
    uidvalidity_reset: bool = False
    skipped: bool = False
    notes: list[str] = field(default_factory=list)


class FolderStore(Protocol):
    """What the sync needs from storage, for one folder. Implemented by mailsync.store."""

    def load_cursor(self) -> FolderCursor: ...

    def known_uids(self, uidvalidity: int, *, from_uid: int = 1) -> list[int]:
        """UIDs >= from_uid stored under this UIDVALIDITY and not marked expunged."""
        ...

    def known_count(self, uidvalidity: int) -> int:
        """How many messages are stored under this UIDVALIDITY and not marked expunged."""
        ...

    def save_messages(self, uidvalidity: int, messages: Sequence[FetchedMessage]) -> int:
        """Store messages; a UID already stored is left alone. Returns how many were new."""
        ...

    def apply_flags(
        self, uidvalidity: int, states: Mapping[int, FlagState], observed_at: datetime
    ) -> int:
        """Take the server's flags, except where a staff change is pending or was pushed
        after ``observed_at``. Returns how many messages changed."""
        ...

    def mark_expunged(self, uidvalidity: int, uids: Sequence[int]) -> int: ...

    def reset_uidvalidity(self, old: int, new: int) -> None:
        """The server renumbered the folder. Old rows stay until the refetch under the new
        UIDVALIDITY has matched them by content (see ``save_messages``)."""
        ...

    def retire_old_uidvalidities(self, current: int) -> int:
        """Rows of an earlier UIDVALIDITY that no new message matched are gone from the
        server: mark them expunged and cancel changes aimed at them. Returns how many."""
        ...

    def record_dead_letter(self, uidvalidity: int, uid: int, reason: str) -> None:
        """The server would not deliver this message this time: ask again later, after a
        wait that grows with each failure (to hours), never giving up."""
        ...

    def dead_letter_uids(self, uidvalidity: int) -> list[int]:
        """Every UID the server has not delivered yet (under this UIDVALIDITY)."""
        ...

    def due_dead_letter_uids(self, uidvalidity: int) -> list[int]:
        """Those of ``dead_letter_uids`` whose wait is over: to be asked for now."""
        ...

    def forget_dead_letters(self, uidvalidity: int, uids: Sequence[int]) -> None:
        """The server no longer lists these UIDs: nothing is left to fetch."""
        ...

    def advance_cursor(self, cursor: FolderCursor) -> None: ...

    def report_progress(self, progress: SyncProgress) -> None:
        """Called after each committed batch; also the place to renew a lease."""
        ...


def sync_folder(
    imap: ImapSession,
    store: FolderStore,
    folder_name: str,
    *,
    limits: SyncLimits = SyncLimits(),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SyncReport:
    report = SyncReport(folder=folder_name)
    cursor = store.load_cursor()
    if _held_folder_news(imap, store, folder_name, cursor, report, clock):
        return report
    if _nothing_changed(imap, store, folder_name, cursor):
        report.skipped = True
        return report

    selected = imap.select(folder_name)
    if cursor.uidvalidity is not None and cursor.uidvalidity != selected.uidvalidity:
        log.warning(
            "%s: UIDVALIDITY changed %s -> %s",
            folder_name,
            cursor.uidvalidity,
            selected.uidvalidity,
        )
        store.reset_uidvalidity(cursor.uidvalidity, selected.uidvalidity)
        report.uidvalidity_reset = True
        cursor = FolderCursor(selected.uidvalidity, 1, None)

    new_uids = _new_uids(imap, store, selected, cursor)
    retry = [uid for uid in _dead_letters_to_retry(imap, store, selected) if uid not in new_uids]
    _refresh_known(imap, store, selected, cursor, len(new_uids), report, clock)
    _fetch_new(imap, store, selected, sorted([*new_uids, *retry]), limits, report)
    # Runs on every full pass, so a renumbering interrupted by a crash is finished later.
    report.expunged += store.retire_old_uidvalidities(selected.uidvalidity)

    uidnext = selected.uidnext
    if uidnext <= 0:  # the server did not say: everything we saw is done
        uidnext = max([cursor.uidnext_done - 1, *new_uids], default=0) + 1
    store.advance_cursor(
        FolderCursor(
            uidvalidity=selected.uidvalidity,
            uidnext_done=max(cursor.uidnext_done, uidnext),
            highestmodseq_done=selected.highestmodseq,
        )
    )
    imap.hold()
    return report


def _dead_letters_to_retry(
    imap: ImapSession, store: FolderStore, selected: SelectedFolder
) -> list[int]:
    """Messages the server did not deliver before are asked for again as long as it lists
    them (the connection may be healthy again, the message repaired), each after its wait;
    one the server no longer lists is forgotten. They stay below the cursor, so they never
    hold it back."""
    waiting = store.dead_letter_uids(selected.uidvalidity)
    if not waiting:
        return []
    listed = imap.fetch_sizes(waiting)
    gone = [uid for uid in waiting if uid not in listed]
    if gone:
        store.forget_dead_letters(selected.uidvalidity, gone)
    return [uid for uid in store.due_dead_letter_uids(selected.uidvalidity) if uid in listed]


def _held_folder_news(
    imap: ImapSession,
    store: FolderStore,
    folder_name: str,
    cursor: FolderCursor,
    report: SyncReport,
    clock: Callable[[], datetime],
) -> bool:
    """The cheapest check of all, on a connection still holding the folder from its last
    full sync: a NOOP, after which the server has told of every change since (QRESYNC).
    Nothing: done. Flag changes only: taken, done. Anything else: False, sync in full.

    The cursor stays where the full sync left it: a later full sync (another connection,
    STATUS) then reads those flag changes once more, which changes nothing."""
    held = imap.selected
    if held is None or cursor.uidvalidity != held.uidvalidity:
        return False
    observed_at = clock()
    news = imap.poll_held(folder_name)
    if news is None or news.changed or store.due_dead_letter_uids(held.uidvalidity):
        return False
    if news.flags:
        report.flag_updates += store.apply_flags(held.uidvalidity, news.flags, observed_at)
    else:
        report.skipped = True
    return True


def _nothing_changed(
    imap: ImapSession, store: FolderStore, folder_name: str, cursor: FolderCursor
) -> bool:
    """The cheap skip: STATUS says nothing moved since the stored cursor.

    Only with CONDSTORE, where any flag change raises HIGHESTMODSEQ. A QRESYNC server
    raises it on expunge too (it must answer VANISHED); with CONDSTORE alone MESSAGES is
    compared with our count as well.
    """
    if cursor.uidvalidity is None or not cursor.highestmodseq_done or not imap.has_condstore:
        return False
    status = imap.status(folder_name)
    unchanged = (
        status.uidvalidity == cursor.uidvalidity
        and status.uidnext == cursor.uidnext_done
        and status.highestmodseq == cursor.highestmodseq_done
    )
    if not unchanged or store.due_dead_letter_uids(cursor.uidvalidity):
        return False  # (messages not delivered yet are asked for again)
    if "QRESYNC" in imap.capabilities:
        return True
    return status.messages == store.known_count(cursor.uidvalidity)


def _new_uids(
    imap: ImapSession, store: FolderStore, selected: SelectedFolder, cursor: FolderCursor
) -> list[int]:
    """UIDs at or above the cursor that existed at SELECT and are not stored yet (a crash
    after a batch committed but before the cursor moved leaves some stored)."""
    found = imap.uids_from(cursor.uidnext_done)
    if selected.uidnext > 0:
        # Only what existed at SELECT: the cursor may not pass the snapshot.
        found = [uid for uid in found if uid < selected.uidnext]
    if not found:
        return []
    stored = set(store.known_uids(selected.uidvalidity, from_uid=cursor.uidnext_done))
    return [uid for uid in found if uid not in stored]


def _refresh_known(
    imap: ImapSession,
    store: FolderStore,
    selected: SelectedFolder,
    cursor: FolderCursor,
    new_count: int,
    report: SyncReport,
    clock: Callable[[], datetime],
) -> None:
    """Bring flags and expunges of stored messages up to date, the cheapest way the
    server allows: QRESYNC (changes + VANISHED), CONDSTORE (changes + a count check), or
    a windowed FLAGS scan of every stored UID (servers with neither, like Microsoft 365)."""
    if cursor.uidnext_done <= 1:
        return
    observed_at = clock()
    uidvalidity = selected.uidvalidity
    since = cursor.highestmodseq_done
    if since and selected.highestmodseq is not None and imap.has_condstore:
        if since == selected.highestmodseq and "QRESYNC" in imap.capabilities:
            return  # QRESYNC servers raise HIGHESTMODSEQ on expunge too: nothing moved
        qresync = "QRESYNC" in imap.capabilities
        changes, vanished = imap.fetch_changes(
            cursor.uidnext_done, changedsince=since, vanished=qresync
        )
        report.flag_updates += store.apply_flags(uidvalidity, changes, observed_at)
        if qresync:
            if vanished:
                report.expunged += store.mark_expunged(uidvalidity, vanished)
            return
        # CONDSTORE only: if EXISTS adds up, nothing was expunged (IMAP-NOTES §1.6).
        known_count = store.known_count(uidvalidity)
        if selected.exists == known_count + new_count:
            return
        present = {uid for uid in imap.all_uids() if uid < cursor.uidnext_done}
        known = store.known_uids(uidvalidity)
        gone = [uid for uid in known if uid < cursor.uidnext_done and uid not in present]
        if gone:
            report.expunged += store.mark_expunged(uidvalidity, gone)
        return
    known = store.known_uids(uidvalidity)
    states = imap.fetch_flags(known)
    report.flag_updates += store.apply_flags(uidvalidity, states, observed_at)
    gone = [uid for uid in known if uid not in states]
    if gone:
        report.expunged += store.mark_expunged(uidvalidity, gone)


def _fetch_new(
    imap: ImapSession,
    store: FolderStore,
    selected: SelectedFolder,
    candidates: list[int],
    limits: SyncLimits,
    report: SyncReport,
) -> None:
    if not candidates:
        return
    total = len(candidates)
    fetched = 0
    # The next batch is fetched in a thread while this one is stored: the database's work
    # and the server's then overlap instead of taking turns. Only that thread touches the
    # IMAP session until the loop ends; only this one touches the store.
    for fetch in read_ahead(_fetched_batches(imap, candidates, limits)):
        for uid, reason in fetch.dead:
            store.record_dead_letter(selected.uidvalidity, uid, reason)
        report.dead_letters += len(fetch.dead)
        report.vanished_before_fetch += fetch.vanished
        report.new_messages += store.save_messages(selected.uidvalidity, fetch.messages)
        fetched += fetch.asked
        store.report_progress(SyncProgress(folder=selected.name, fetched=fetched, total=total))


@dataclass
class _Fetched:
    """One batch's answer: what arrived, what the server refused (UID, reason), and how
    many UIDs it no longer had."""

    asked: int
    messages: list[FetchedMessage]
    dead: list[tuple[int, str]] = field(default_factory=list)
    vanished: int = 0


def _fetched_batches(
    imap: ImapSession, candidates: list[int], limits: SyncLimits
) -> Iterator[_Fetched]:
    """Newest first, so the top of the inbox is usable while older mail still loads; sizes
    (to bound each batch's bytes) are asked a window at a time, so the first batch does
    not wait for the sizes of a whole 100k folder."""
    newest_first = sorted(candidates, reverse=True)
    first = limits.first_batch_messages
    for start in range(0, len(newest_first), SIZE_WINDOW):
        window = newest_first[start : start + SIZE_WINDOW]
        sizes = imap.fetch_sizes(window)
        gone = len(window) - len(sizes)  # expunged since the UIDs were listed
        if gone:
            yield _Fetched(asked=gone, messages=[], vanished=gone)
        for batch in _batches([uid for uid in window if uid in sizes], sizes, limits, first):
            first = min(len(batch) * 2, limits.batch_messages)
            messages, dead = _fetch_batch(imap, batch, sizes)
            messages = [prepared(m) for m in messages]
            vanished = len(batch) - len(messages) - len(dead)
            yield _Fetched(asked=len(batch), messages=messages, dead=dead, vanished=vanished)


def prepared(message: FetchedMessage) -> FetchedMessage:
    """With its envelope and content digest: the per-message work that needs no database,
    done here in the read-ahead thread while the previous batch is being written."""
    return dataclasses.replace(
        message,
        envelope=message.envelope or parse_envelope(message.raw),
        sha256=message.digest(),
    )


_DONE = object()


def read_ahead(items: Iterator[T]) -> Generator[T, None, None]:
    """Yield ``items`` while a worker thread already produces the next one. Exceptions
    reach the consumer at the item that raised; when the consumer stops early, the item
    in flight is finished (never abandoned mid-command) before this returns."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        future = pool.submit(next, items, _DONE)
        while True:
            item = future.result()
            if item is _DONE:
                return
            future = pool.submit(next, items, _DONE)
            yield item  # type: ignore[misc]


def _fetch_batch(
    imap: ImapSession, batch: list[int], sizes: Mapping[int, int]
) -> tuple[list[FetchedMessage], list[tuple[int, str]]]:
    """Fetch a batch; when that fails, UID by UID, and return the ones that still fail
    (to be dead-lettered: asked for again later), so a single message never blocks the
    folder.

    A message whose download dies with its connection twice is fetched in pieces, which
    reconnect and shrink as long as that helps (``fetch_large_message``): what a middlebox
    that cuts every long download lets through."""
    try:
        return _fetch_some(imap, batch, sizes), []
    except ProtocolError:
        pass  # the server refused the batch (NO): find the message it refuses
    except ServerUnreachable:
        # Dovecot drops the connection (BYE) when it cannot read a message from disk, and
        # a middlebox may cut every connection after so many bytes: either way a lost
        # connection may be about one message, not an outage. Reconnect (this raises if
        # the server is really gone) and go UID by UID.
        imap.reopen()
    messages: list[FetchedMessage] = []
    dead: list[tuple[int, str]] = []
    for uid in batch:
        found, refused = _fetch_whole_or_in_pieces(imap, uid, sizes)
        messages.extend(found)
        if refused is not None:
            dead.append((uid, refused))
    return messages, dead


def _fetch_whole_or_in_pieces(
    imap: ImapSession, uid: int, sizes: Mapping[int, int]
) -> tuple[list[FetchedMessage], str | None]:
    """The message (none if expunged meanwhile), or why the server would not deliver it.
    Every reconnect stands outside the ``except``: when the server is really gone it
    raises, and the sync stops instead of dead-lettering the rest of the batch."""
    for _ in range(2):  # once more on a fresh connection: a blip is not a bad message
        try:
            return _fetch_some(imap, [uid], sizes), None
        except ProtocolError as exc:
            return [], str(exc)
        except ServerUnreachable:
            pass
        imap.reopen()
    size = sizes.get(uid, 0)
    try:
        message = imap.fetch_large_message(uid, size, piece=_first_piece(size))
    except ProtocolError as exc:
        return [], str(exc)
    except ServerUnreachable as exc:
        refused = str(exc)
    else:
        return ([message] if message is not None else []), None
    imap.reopen()  # it was this message (or this connection): the next one goes on
    return [], refused


def _first_piece(size: int) -> int:
    """The largest piece below the size whose whole download just died."""
    piece = LARGE_CHUNK
    while piece >= size and piece > SMALLEST_PIECE:
        piece //= 2
    return piece


def _fetch_some(
    imap: ImapSession, uids: list[int], sizes: Mapping[int, int]
) -> list[FetchedMessage]:
    if len(uids) == 1 and sizes.get(uids[0], 0) > LARGE_MESSAGE:
        large = imap.fetch_large_message(uids[0], sizes[uids[0]])
        return [large] if large is not None else []
    return imap.fetch_messages(uids)


def _batches(
    uids: Sequence[int], sizes: Mapping[int, int], limits: SyncLimits, first: int
) -> Iterator[list[int]]:
    """Batches bounded by count and bytes; the count starts at ``first`` and doubles up to
    the limit. A message too large to share a batch comes alone (it is fetched in chunks)."""
    batch: list[int] = []
    batch_bytes = 0
    count = max(1, min(first, limits.batch_messages))
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (
            len(batch) >= count or batch_bytes + size > limits.batch_bytes or size > LARGE_MESSAGE
        ):
            yield batch
            batch, batch_bytes = [], 0
            count = min(count * 2, limits.batch_messages)
        batch.append(uid)
        batch_bytes += size
    if batch:
        yield batch
