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

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from mailsync.engine.errors import ProtocolError
from mailsync.engine.imap import FetchedMessage, FlagState, ImapSession, SelectedFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderCursor:
    uidvalidity: int | None
    uidnext_done: int
    highestmodseq_done: int | None


@dataclass(frozen=True)
class SyncLimits:
    batch_messages: int = 50
    batch_bytes: int = 20 * 1024 * 1024


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
    notes: list[str] = field(default_factory=list)


class FolderStore(Protocol):
    """What the sync needs from storage, for one folder. Implemented by mailsync.store."""

    def load_cursor(self) -> FolderCursor: ...

    def known_uids(self, uidvalidity: int) -> list[int]:
        """UIDs stored under this UIDVALIDITY and not marked expunged."""
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
        """The server renumbered the folder: old locations are no longer addressable."""
        ...

    def record_dead_letter(self, uidvalidity: int, uid: int, reason: str) -> None: ...

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
    selected = imap.select(folder_name)
    cursor = store.load_cursor()

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

    known = store.known_uids(selected.uidvalidity)
    _refresh_known(imap, store, selected, known, report, clock)
    _fetch_new(imap, store, selected, cursor, set(known), limits, report)

    uidnext = selected.uidnext
    if uidnext <= 0:  # server did not say: everything we saw is done
        uidnext = max([cursor.uidnext_done - 1, *known], default=0) + 1
    store.advance_cursor(
        FolderCursor(
            uidvalidity=selected.uidvalidity,
            uidnext_done=max(cursor.uidnext_done, uidnext),
            highestmodseq_done=selected.highestmodseq,
        )
    )
    return report


def _refresh_known(
    imap: ImapSession,
    store: FolderStore,
    selected: SelectedFolder,
    known: list[int],
    report: SyncReport,
    clock: Callable[[], datetime],
) -> None:
    if not known:
        return
    observed_at = clock()
    states = imap.fetch_flags(known)
    report.flag_updates += store.apply_flags(selected.uidvalidity, states, observed_at)
    gone = [uid for uid in known if uid not in states]
    if gone:
        report.expunged += store.mark_expunged(selected.uidvalidity, gone)


def _fetch_new(
    imap: ImapSession,
    store: FolderStore,
    selected: SelectedFolder,
    cursor: FolderCursor,
    known: set[int],
    limits: SyncLimits,
    report: SyncReport,
) -> None:
    candidates = [uid for uid in imap.uids_from(cursor.uidnext_done) if uid not in known]
    if selected.uidnext > 0:
        # Only what existed at SELECT: the cursor may not pass the snapshot.
        candidates = [uid for uid in candidates if uid < selected.uidnext]
    if not candidates:
        return
    sizes = imap.fetch_sizes(candidates)
    report.vanished_before_fetch += len(candidates) - len(sizes)
    total = len(sizes)
    fetched = 0
    # Newest first, so the top of the inbox is usable while older mail still loads.
    for batch in _batches(sorted(sizes, reverse=True), sizes, limits):
        messages, dead = _fetch_batch(imap, store, selected.uidvalidity, batch)
        report.dead_letters += dead
        report.vanished_before_fetch += len(batch) - len(messages) - dead
        report.new_messages += store.save_messages(selected.uidvalidity, messages)
        fetched += len(batch)
        store.report_progress(SyncProgress(folder=selected.name, fetched=fetched, total=total))


def _fetch_batch(
    imap: ImapSession, store: FolderStore, uidvalidity: int, batch: list[int]
) -> tuple[list[FetchedMessage], int]:
    """Fetch a batch; when the server refuses it, retry UID by UID and dead-letter the
    ones it still refuses, so a single bad message never blocks the folder."""
    try:
        return imap.fetch_messages(batch), 0
    except ProtocolError:
        pass
    messages: list[FetchedMessage] = []
    dead = 0
    for uid in batch:
        try:
            messages.extend(imap.fetch_messages([uid]))
        except ProtocolError as exc:
            store.record_dead_letter(uidvalidity, uid, str(exc))
            dead += 1
    return messages, dead


def _batches(
    uids: Sequence[int], sizes: Mapping[int, int], limits: SyncLimits
) -> Iterator[list[int]]:
    batch: list[int] = []
    batch_bytes = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (
            len(batch) >= limits.batch_messages or batch_bytes + size > limits.batch_bytes
        ):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(uid)
        batch_bytes += size
    if batch:
        yield batch
