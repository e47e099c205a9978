"""The Django side of the engine's ``FolderStore`` protocol, for one folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from mailsync import changes
from mailsync.conversations import refresh_summaries
from mailsync.engine.flags import split_flags
from mailsync.engine.imap import FetchedMessage, FlagState
from mailsync.engine.sync import FolderCursor, SyncProgress
from mailsync.ingest import store_new_messages
from mailsync.models import (
    Activity,
    DeadLetter,
    FlagChange,
    Folder,
    Message,
)

log = logging.getLogger(__name__)

OPEN_CHANGE_STATES = (FlagChange.State.PENDING, FlagChange.State.SENDING)
# A message the server did not deliver is asked for again at the next sync, then after a
# wait that doubles from a minute up to this: still a few times a day, however long it
# takes (there is no last try).
DEAD_LETTER_LONGEST_WAIT = timedelta(hours=6)


def dead_letter_wait(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failure before asking again."""
    if attempts <= 1:
        return timedelta(0)
    doubled: int = 2 ** min(attempts - 2, 20)
    return min(timedelta(minutes=doubled), DEAD_LETTER_LONGEST_WAIT)


class DjangoFolderStore:
    def __init__(
        self, folder: Folder, *, on_progress: Callable[[SyncProgress], None] | None = None
    ) -> None:
        self.folder = folder
        self._renumbering: bool | None = None
        self._inserted = 0
        self._next_analyze = 500
        self._on_progress = on_progress

    def load_cursor(self) -> FolderCursor:
        self.folder.refresh_from_db(fields=["uidvalidity", "uidnext_done", "highestmodseq_done"])
        return FolderCursor(
            uidvalidity=self.folder.uidvalidity,
            uidnext_done=self.folder.uidnext_done,
            highestmodseq_done=self.folder.highestmodseq_done,
        )

    def _live(self, uidvalidity: int) -> QuerySet[Message]:
        return Message.objects.filter(
            folder=self.folder, uidvalidity=uidvalidity, expunged_at__isnull=True
        )

    def known_uids(self, uidvalidity: int, *, from_uid: int = 1) -> list[int]:
        rows = self._live(uidvalidity)
        if from_uid > 1:
            rows = rows.filter(uid__gte=from_uid)
        return list(rows.order_by("uid").values_list("uid", flat=True))

    def known_count(self, uidvalidity: int) -> int:
        return self._live(uidvalidity).count()

    def save_messages(self, uidvalidity: int, messages: Sequence[FetchedMessage]) -> int:
        if not messages:
            return 0
        fresh = list(messages)
        if self._renumbering is None:  # asked once per sync, not per batch
            self._renumbering = self._rows_of_other_uidvalidity(uidvalidity).exists()
        if self._renumbering:
            with transaction.atomic():
                fresh = [m for m in fresh if not self._remap_by_content(uidvalidity, m)]
        created = store_new_messages(self.folder, uidvalidity, fresh)
        DeadLetter.objects.filter(  # delivered after all
            folder=self.folder, uidvalidity=uidvalidity, uid__in=[m.uid for m in messages]
        ).delete()
        self._refresh_statistics(created)
        return created

    def _refresh_statistics(self, created: int) -> None:
        """A first sync grows the message table from nothing to 100k rows in minutes;
        until autovacuum catches up, PostgreSQL plans with the row count of an empty table
        and scans it whole for each batch's lookups. ANALYZE (sampled, milliseconds) each
        time the rows this sync added have doubled keeps the plans on the indexes."""
        self._inserted += created
        if connection.vendor != "postgresql" or self._inserted < self._next_analyze:
            return
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Message._meta.db_table}")
        self._next_analyze = self._inserted * 2

    def _rows_of_other_uidvalidity(self, uidvalidity: int) -> QuerySet[Message]:
        # Two ranges instead of "<>": both walk the (folder, uidvalidity, uid) index, so
        # the question costs nothing when the answer is no, however big the folder.
        return Message.objects.filter(
            Q(uidvalidity__lt=uidvalidity) | Q(uidvalidity__gt=uidvalidity),
            folder=self.folder,
            expunged_at__isnull=True,
        )

    def _remap_by_content(self, uidvalidity: int, fetched: FetchedMessage) -> bool:
        """After a UIDVALIDITY change, the row that held these exact bytes under the old
        numbering moves to its new UID: same row, same conversation, same history, and its
        pending changes follow it. Content (sha256) is the only safe key; Message-ID can be
        missing or repeated."""
        if Message.objects.filter(
            folder=self.folder, uidvalidity=uidvalidity, uid=fetched.uid
        ).exists():
            return True  # already stored under the new numbering
        digest = fetched.digest()
        old = (
            Message.objects.filter(folder=self.folder, blob_id=digest, expunged_at__isnull=True)
            .exclude(uidvalidity=uidvalidity)
            .order_by("uid")
            .first()
        )
        if old is None:
            return False
        old_location = (old.uidvalidity, old.uid)
        FlagChange.objects.filter(
            message=old, state__in=OPEN_CHANGE_STATES, uidvalidity=old.uidvalidity
        ).update(uidvalidity=uidvalidity, uid=fetched.uid)
        old.uidvalidity = uidvalidity
        old.uid = fetched.uid
        old.modseq = fetched.modseq
        old.save(update_fields=["uidvalidity", "uid", "modseq"])
        self.apply_flags(
            uidvalidity,
            {fetched.uid: FlagState(uid=fetched.uid, flags=fetched.flags, modseq=fetched.modseq)},
            timezone.now(),
        )
        log.info("%s: uid %s/%s is now %s/%s", self.folder, *old_location, uidvalidity, fetched.uid)
        return True

    def apply_flags(
        self, uidvalidity: int, states: Mapping[int, FlagState], observed_at: datetime
    ) -> int:
        changed = 0
        uids = sorted(states)
        for start in range(0, len(uids), 2000):  # a 100k folder's full scan, in slices
            window = uids[start : start + 2000]
            changed += self._apply_flag_window(uidvalidity, window, states, observed_at)
        return changed

    def _apply_flag_window(
        self,
        uidvalidity: int,
        uids: list[int],
        states: Mapping[int, FlagState],
        observed_at: datetime,
    ) -> int:
        flag_fields = list(Message.FLAG_FIELDS.values())
        rows = Message.objects.filter(
            folder=self.folder, uidvalidity=uidvalidity, uid__in=uids
        ).only("pk", "uid", "keywords", "modseq", "conversation", *flag_fields)
        protected = self._flags_with_local_intent(uidvalidity, uids, observed_at)
        changed: list[Message] = []
        modseq_only: list[Message] = []
        entries: list[changes.Entry] = []
        for message in rows:
            state = states[message.uid]
            added, removed = _take_server_flags(message, state, protected.get(message.uid, set()))
            new_modseq = state.modseq if state.modseq is not None else message.modseq
            modseq_moved = new_modseq != message.modseq
            message.modseq = new_modseq
            if added or removed:
                changed.append(message)
                entries.append(
                    changes.Entry(
                        message_id=message.pk,
                        source=Activity.Source.SERVER,
                        verb=Activity.Verb.FLAGS_CHANGED,
                        detail={"added": added, "removed": removed},
                    )
                )
            elif modseq_moved:
                modseq_only.append(message)
        with transaction.atomic():
            _update_rows(changed, [*flag_fields, "keywords", "modseq"])
            _update_rows(modseq_only, ["modseq"])
            refresh_summaries(m.conversation_id for m in changed)  # unread, deleted
            # one change number for the window, however many messages changed
            changes.record_all(
                mailbox=self.folder.mailbox_id,
                entries=entries,
                conversation_ids=[m.conversation_id for m in changed],
            )
        return len(changed)

    def _flags_with_local_intent(
        self, uidvalidity: int, uids: list[int], observed_at: datetime
    ) -> dict[int, set[str]]:
        """Flags a person changed that the server answer may not reflect yet: still in
        the outbox, or pushed after the server's answer was read."""
        rows = FlagChange.objects.filter(
            folder=self.folder, uidvalidity=uidvalidity, uid__in=uids
        ).filter(Q(state__in=OPEN_CHANGE_STATES) | Q(done_at__gte=observed_at))
        protected: dict[int, set[str]] = {}
        for uid, flag in rows.values_list("uid", "flag"):
            protected.setdefault(uid, set()).add(flag)
        return protected

    def mark_expunged(self, uidvalidity: int, uids: Sequence[int]) -> int:
        now = timezone.now()
        with transaction.atomic():
            rows = list(
                Message.objects.filter(
                    folder=self.folder,
                    uidvalidity=uidvalidity,
                    uid__in=list(uids),
                    expunged_at__isnull=True,
                )
            )
            for message in rows:
                message.expunged_at = now
                message.save(update_fields=["expunged_at"])
            refresh_summaries(m.conversation_id for m in rows)
            changes.record_all(
                mailbox=self.folder.mailbox_id,
                entries=[
                    changes.Entry(
                        message_id=message.pk,
                        source=Activity.Source.SERVER,
                        verb=Activity.Verb.EXPUNGED,
                        detail={"folder": self.folder.name, "uid": message.uid},
                    )
                    for message in rows
                ],
                conversation_ids=[m.conversation_id for m in rows],
            )
        return len(rows)

    def reset_uidvalidity(self, old: int, new: int) -> None:
        with transaction.atomic():
            changes.record(
                mailbox=self.folder.mailbox_id,
                source=Activity.Source.SERVER,
                verb=Activity.Verb.UIDVALIDITY_CHANGED,
                detail={"folder": self.folder.name, "old": old, "new": new},
            )
            Folder.objects.filter(pk=self.folder.pk).update(
                uidvalidity=new, uidnext_done=1, highestmodseq_done=None
            )
            # the old numbering's UIDs name nothing now; the refetch covers those messages
            DeadLetter.objects.filter(folder=self.folder).exclude(uidvalidity=new).delete()

    def retire_old_uidvalidities(self, current: int) -> int:
        stale = self._rows_of_other_uidvalidity(current)
        if not stale.exists():
            return 0
        with transaction.atomic():
            # A change aimed at an old UID must never land on whatever has that UID now.
            FlagChange.objects.filter(folder=self.folder, state__in=OPEN_CHANGE_STATES).exclude(
                uidvalidity=current
            ).update(
                state=FlagChange.State.CANCELLED,
                done_at=timezone.now(),
                last_error=(
                    "the server renumbered the folder and this message is no longer in it; "
                    "the change was not applied"
                ),
            )
            uids = list(stale.values_list("uidvalidity", "uid"))
            retired = 0
            for uidvalidity in {u for u, _ in uids}:
                retired += self.mark_expunged(
                    uidvalidity, [uid for u, uid in uids if u == uidvalidity]
                )
            return retired

    def dead_letter_uids(self, uidvalidity: int) -> list[int]:
        return list(
            DeadLetter.objects.filter(folder=self.folder, uidvalidity=uidvalidity)
            .order_by("uid")
            .values_list("uid", flat=True)
        )

    def due_dead_letter_uids(self, uidvalidity: int) -> list[int]:
        return list(
            DeadLetter.objects.filter(
                folder=self.folder, uidvalidity=uidvalidity, next_attempt_at__lte=timezone.now()
            )
            .order_by("uid")
            .values_list("uid", flat=True)
        )

    def forget_dead_letters(self, uidvalidity: int, uids: Sequence[int]) -> None:
        DeadLetter.objects.filter(
            folder=self.folder, uidvalidity=uidvalidity, uid__in=list(uids)
        ).delete()

    def record_dead_letter(self, uidvalidity: int, uid: int, reason: str) -> None:
        now = timezone.now()
        letter, created = DeadLetter.objects.get_or_create(
            folder=self.folder,
            uidvalidity=uidvalidity,
            uid=uid,
            defaults={
                "reason": reason,
                "last_attempt_at": now,
                "next_attempt_at": now + dead_letter_wait(1),
            },
        )
        if not created:
            attempts = letter.attempts + 1
            DeadLetter.objects.filter(pk=letter.pk).update(
                reason=reason,
                attempts=attempts,
                last_attempt_at=now,
                next_attempt_at=now + dead_letter_wait(attempts),
            )

    def advance_cursor(self, cursor: FolderCursor) -> None:
        Folder.objects.filter(pk=self.folder.pk).update(
            uidvalidity=cursor.uidvalidity,
            uidnext_done=cursor.uidnext_done,
            highestmodseq_done=cursor.highestmodseq_done,
            last_synced_at=timezone.now(),
            last_error="",
        )

    def report_progress(self, progress: SyncProgress) -> None:
        if self._on_progress is not None:
            self._on_progress(progress)


def _update_rows(rows: list[Message], fields: list[str]) -> None:
    """Write these fields of these rows. A resync usually brings a handful of changes, and
    for those one plain UPDATE each is cheaper than bulk_update, whose CASE expression
    Django builds and resolves per row and per field (≈6 ms per row); a full scan's
    thousands go through bulk_update."""
    if len(rows) > 50:
        Message.objects.bulk_update(rows, fields, batch_size=500)
        return
    for row in rows:
        Message.objects.filter(pk=row.pk).update(**{f: getattr(row, f) for f in fields})


def _take_server_flags(
    message: Message, state: FlagState, keep: set[str]
) -> tuple[list[str], list[str]]:
    """Set the row's flags to the server's, except those in ``keep`` (a person's change
    the server has not seen yet). Returns the flags added and removed."""
    system, keywords = split_flags(state.flags)
    added: list[str] = []
    removed: list[str] = []
    for flag, field in Message.FLAG_FIELDS.items():
        if flag in keep:
            continue
        want = flag in system
        if getattr(message, field) != want:
            setattr(message, field, want)
            (added if want else removed).append(flag)
    local_keywords = set(message.keywords)
    new_keywords = {k for k in keywords if k not in keep} | {k for k in local_keywords if k in keep}
    added += sorted(new_keywords - local_keywords)
    removed += sorted(local_keywords - new_keywords)
    message.keywords = sorted(new_keywords)
    return added, removed
