"""Push staff flag changes (the FlagChange outbox) to the server.

Rows are claimed with one conditional UPDATE (pending -> sending, stamped with a token), so
two workers never send the same change. A row that is still "sending" after a crash is put
back to pending by the sweeper; sending a +FLAGS/-FLAGS delta twice is harmless.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import F
from django.utils import timezone

from mailsync.engine.errors import MailError
from mailsync.engine.flags import SYSTEM_FLAGS
from mailsync.engine.imap import ImapSession
from mailsync.models import FlagChange, Folder

log = logging.getLogger(__name__)

STALE_CLAIM = timedelta(minutes=2)


@dataclass(frozen=True)
class PushReport:
    sent: int = 0
    superseded: int = 0
    deferred: int = 0


def claim_flag_changes(folder: Folder) -> list[FlagChange]:
    token = secrets.token_hex(16)
    FlagChange.objects.filter(folder=folder, state=FlagChange.State.PENDING).update(
        state=FlagChange.State.SENDING,
        claimed_by=token,
        claimed_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    return list(FlagChange.objects.filter(claimed_by=token, state=FlagChange.State.SENDING))


def push_flag_changes(imap: ImapSession, folder: Folder) -> PushReport:
    changes = claim_flag_changes(folder)
    if not changes:
        return PushReport()
    try:
        return _push(imap, folder, changes)
    except MailError as exc:
        # Back to the outbox: the sweeper or the next sync sends them again.
        FlagChange.objects.filter(
            pk__in=[c.pk for c in changes], state=FlagChange.State.SENDING
        ).update(state=FlagChange.State.PENDING, last_error=str(exc)[:1000])
        raise


def _push(imap: ImapSession, folder: Folder, changes: list[FlagChange]) -> PushReport:
    selected = imap.selected
    if selected is None or selected.name != folder.name:
        selected = imap.select(folder.name)
    # Aimed at an older numbering: the folder sync will move the change to the message's
    # new UID (matched by content) or cancel it. Until then it is never sent anywhere.
    wrong_location = [c for c in changes if c.uidvalidity != selected.uidvalidity]
    if wrong_location:
        FlagChange.objects.filter(pk__in=[c.pk for c in wrong_location]).update(
            state=FlagChange.State.PENDING,
            last_error=f"waiting: the folder was renumbered (UIDVALIDITY {selected.uidvalidity})",
        )
    # The latest action on (message, flag) wins; earlier ones need not be sent.
    latest: dict[tuple[int, str], FlagChange] = {}
    for change in sorted(changes, key=lambda c: c.pk):
        if change.uidvalidity == selected.uidvalidity:
            latest[(change.uid, change.flag)] = change
    winners = {c.pk for c in latest.values()}
    superseded = [
        c.pk for c in changes if c.pk not in winners and c.uidvalidity == selected.uidvalidity
    ]
    local_only = [
        c for c in latest.values() if c.flag not in SYSTEM_FLAGS and not selected.allows_keywords
    ]
    groups: dict[tuple[str, bool], list[int]] = {}
    for change in latest.values():
        if change in local_only:
            continue
        groups.setdefault((change.flag, change.add), []).append(change.uid)
    for (flag, add), uids in groups.items():
        imap.store_flags(uids, [flag], add=add)

    sent = [c.pk for c in latest.values() if c not in local_only]
    FlagChange.objects.filter(pk__in=sent).update(
        state=FlagChange.State.DONE, done_at=timezone.now(), last_error=""
    )
    FlagChange.objects.filter(pk__in=superseded).update(
        state=FlagChange.State.DONE, done_at=timezone.now(), last_error="superseded"
    )
    if local_only:
        FlagChange.objects.filter(pk__in=[c.pk for c in local_only]).update(
            state=FlagChange.State.CANCELLED,
            done_at=timezone.now(),
            last_error="the server does not store keywords in this folder; kept in the app only",
        )
    return PushReport(sent=len(sent), superseded=len(superseded), deferred=len(wrong_location))


def release_stale_claims() -> int:
    """Put changes claimed by a worker that died back into the outbox."""
    return FlagChange.objects.filter(
        state=FlagChange.State.SENDING, claimed_at__lt=timezone.now() - STALE_CLAIM
    ).update(state=FlagChange.State.PENDING)


def folders_with_pending_changes() -> list[int]:
    return list(
        FlagChange.objects.filter(state=FlagChange.State.PENDING)
        .values_list("folder_id", flat=True)
        .distinct()
    )
