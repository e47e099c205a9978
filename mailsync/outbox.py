"""Push staff flag changes (the FlagChange outbox) to the server.

Rows are claimed with one conditional UPDATE (pending -> sending, stamped with a token), so
two workers never send the same change. A claim lasts ``OUTBOX_CLAIM_SECONDS`` from its last
renewal (the pusher renews it after every command), so the changes of a pusher that died are
taken over within about half a minute: by the next push or sync of the folder, or by the
sweeper. The dead pusher's STORE may or may not have reached the server, so a change claimed
before is first checked against the server's current flags and MODSEQ: what the server
already has is marked done without a STORE, the rest is sent on the modseq the server
reported just now, not on the one the person saw (which the app's own first STORE moved).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from mailsync import changes
from mailsync.engine.errors import FolderMissing, MailError, ProtocolError
from mailsync.engine.flags import SYSTEM_FLAGS
from mailsync.engine.imap import ImapSession, SelectedFolder
from mailsync.models import Activity, FlagChange, Folder, Message

log = logging.getLogger(__name__)

MODIFIED_RETRIES = 3
MAX_ATTEMPTS = 3  # pushes of a change the server keeps refusing before it is marked failed


@dataclass(frozen=True)
class PushReport:
    sent: int = 0
    superseded: int = 0
    deferred: int = 0
    conflicts: int = 0
    failed: int = 0


def claim_timeout() -> timedelta:
    return timedelta(seconds=settings.OUTBOX_CLAIM_SECONDS)


def _claimable() -> Q:
    """Waiting in the outbox, or claimed by a pusher that stopped renewing its claim."""
    expired = timezone.now() - claim_timeout()
    return Q(state=FlagChange.State.PENDING) | Q(
        Q(claimed_at__lt=expired) | Q(claimed_at__isnull=True), state=FlagChange.State.SENDING
    )


def claim_flag_changes(folder: Folder) -> list[FlagChange]:
    token = secrets.token_hex(16)
    FlagChange.objects.filter(_claimable(), folder=folder).update(
        state=FlagChange.State.SENDING,
        claimed_by=token,
        claimed_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    return list(FlagChange.objects.filter(claimed_by=token, state=FlagChange.State.SENDING))


def renew_claim(changes: list[FlagChange]) -> None:
    """Still alive: push the claim's expiry out again (after every command, so only a
    pusher stuck in one command longer than the claim lasts can be overtaken; the
    overtaking pusher checks the server before it sends anything)."""
    tokens = {c.claimed_by for c in changes if c.claimed_by}
    FlagChange.objects.filter(claimed_by__in=tokens, state=FlagChange.State.SENDING).update(
        claimed_at=timezone.now()
    )


def push_flag_changes(imap: ImapSession, folder: Folder) -> PushReport:
    changes = claim_flag_changes(folder)
    if not changes:
        return PushReport()
    try:
        return _push(imap, folder, changes)
    except (ProtocolError, FolderMissing):
        # The server refused a command (NO/BAD, or a target folder is gone): one change may
        # be at fault. Send them one
        # by one so the others go through and the culprit alone is retried, then failed.
        return _push_one_by_one(imap, folder, changes)
    except MailError as exc:
        _back_to_outbox(changes, exc)
        raise


def _push_one_by_one(imap: ImapSession, folder: Folder, changes: list[FlagChange]) -> PushReport:
    sent = failed = 0
    for change in changes:
        try:
            sent += _push(imap, folder, [change]).sent
        except (ProtocolError, FolderMissing) as exc:
            failed += 1
            if change.attempts >= MAX_ATTEMPTS:
                _not_applied(
                    change,
                    FlagChange.State.FAILED,
                    f"the server refused it {change.attempts} times: {exc}",
                )
            else:
                _back_to_outbox([change], exc)
        except MailError as exc:
            _back_to_outbox([c for c in changes if c.pk >= change.pk], exc)
            raise
    return PushReport(sent=sent, failed=failed)


def _back_to_outbox(changes: list[FlagChange], exc: MailError) -> None:
    """The sweeper or the next sync sends them again."""
    FlagChange.objects.filter(
        pk__in=[c.pk for c in changes], state=FlagChange.State.SENDING
    ).update(state=FlagChange.State.PENDING, last_error=str(exc)[:1000])


def _push(imap: ImapSession, folder: Folder, changes: list[FlagChange]) -> PushReport:
    selected = imap.current_selection(folder.name) or imap.select(folder.name)
    # Aimed at an older numbering: the folder sync will move the change to the message's
    # new UID (matched by content) or cancel it. Until then it is never sent anywhere.
    wrong_location = [c for c in changes if c.uidvalidity != selected.uidvalidity]
    if wrong_location:
        FlagChange.objects.filter(pk__in=[c.pk for c in wrong_location]).update(
            state=FlagChange.State.PENDING,
            last_error=f"waiting: the folder was renumbered (UIDVALIDITY {selected.uidvalidity})",
        )
    current = [c for c in changes if c.uidvalidity == selected.uidvalidity]
    report = _push_flags(imap, selected, [c for c in current if c.kind == FlagChange.Kind.FLAG])
    # Moves and expunges after the flags (a flag set just before a delete travels along),
    # in the order people asked for them.
    relocations = sorted((c for c in current if c.kind != FlagChange.Kind.FLAG), key=lambda c: c.pk)
    for change in relocations:
        if change.kind == FlagChange.Kind.MOVE:
            _push_move(imap, folder, change)
        else:
            _push_expunge(imap, folder, change)
        renew_claim(changes)
    return PushReport(
        sent=report.sent + len(relocations),
        superseded=report.superseded,
        deferred=len(wrong_location),
        conflicts=report.conflicts,
    )


def _push_flags(
    imap: ImapSession, selected: SelectedFolder, changes: list[FlagChange]
) -> PushReport:
    # The latest action on (message, flag) wins; earlier ones need not be sent.
    latest: dict[tuple[int, str], FlagChange] = {}
    for change in sorted(changes, key=lambda c: c.pk):
        latest[(change.uid, change.flag)] = change
    winners = {c.pk for c in latest.values()}
    superseded = [c.pk for c in changes if c.pk not in winners]
    local_only = [
        c for c in latest.values() if c.flag not in SYSTEM_FLAGS and not selected.allows_keywords
    ]
    to_send = [c for c in latest.values() if c not in local_only]
    on_server, fresh_modseq = _check_changes_claimed_before(imap, to_send)
    groups: dict[tuple[str, bool, int | None], list[FlagChange]] = {}
    for change in to_send:
        if change.pk in on_server:
            continue
        base = fresh_modseq.get(change.pk, change.base_modseq) if imap.has_condstore else None
        groups.setdefault((change.flag, change.add, base), []).append(change)
    conflicts: list[FlagChange] = []
    for (flag, add, base), group in groups.items():
        by_uid = {c.uid: c for c in group}
        modified = imap.store_flags(list(by_uid), [flag], add=add, unchangedsince=base)
        renew_claim(changes)
        conflicts += _settle_modified(imap, flag, add, [by_uid[u] for u in modified if u in by_uid])

    now = timezone.now()
    sent = [c.pk for c in to_send if c not in conflicts]
    FlagChange.objects.filter(pk__in=sent).update(
        state=FlagChange.State.DONE, done_at=now, last_error=""
    )
    FlagChange.objects.filter(pk__in=superseded).update(
        state=FlagChange.State.DONE, done_at=now, last_error="superseded"
    )
    if local_only:
        FlagChange.objects.filter(pk__in=[c.pk for c in local_only]).update(
            state=FlagChange.State.CANCELLED,
            done_at=now,
            last_error="the server does not store keywords in this folder; kept in the app only",
        )
    return PushReport(sent=len(sent), superseded=len(superseded), conflicts=len(conflicts))


def _check_changes_claimed_before(
    imap: ImapSession, changes: list[FlagChange]
) -> tuple[set[int], dict[int, int | None]]:
    """A change claimed before was perhaps sent already: its pusher died, or lost the
    connection, after the STORE reached the server. Ask the server (one FETCH of FLAGS
    and MODSEQ) instead of sending it again on the modseq the person saw, which that
    STORE moved (the server would refuse it as [MODIFIED] and cost a second round).

    Returns the pks of changes the server already has (or whose message is gone: the
    sync marks it expunged), and the server's current modseq for the others.
    """
    retried = [c for c in changes if c.attempts > 1]
    if not retried:
        return set(), {}
    states = imap.fetch_flags(sorted({c.uid for c in retried}))
    on_server: set[int] = set()
    fresh_modseq: dict[int, int | None] = {}
    for change in retried:
        state = states.get(change.uid)
        if state is None or (change.flag in state.flags) == change.add:
            on_server.add(change.pk)
        else:
            fresh_modseq[change.pk] = state.modseq
    return on_server, fresh_modseq


def _settle_modified(
    imap: ImapSession, flag: str, add: bool, changes: list[FlagChange]
) -> list[FlagChange]:
    """Another client touched these messages after the person saw them ([MODIFIED]).

    Re-read, drop what is already true, and try again on the fresh modseq a few times;
    what still does not go through is a conflict, recorded on the message's history.
    Returns the conflicts.
    """
    pending = list(changes)
    for _attempt in range(MODIFIED_RETRIES):
        if not pending:
            return []
        states = imap.fetch_flags([c.uid for c in pending])
        retry: list[FlagChange] = []
        for change in pending:
            state = states.get(change.uid)
            if state is None:
                continue  # expunged meanwhile: the sync will mark it
            if (flag in state.flags) == add:
                continue  # already as the person wants it
            modified = imap.store_flags([change.uid], [flag], add=add, unchangedsince=state.modseq)
            if modified:
                retry.append(change)
        pending = retry
    for change in pending:
        _not_applied(
            change,
            FlagChange.State.CONFLICT,
            "another client kept changing this message; the change was not applied",
        )
    return pending


NOT_APPLIED_VERBS = {
    FlagChange.State.FAILED: Activity.Verb.PUSH_FAILED,
    FlagChange.State.CONFLICT: Activity.Verb.CONFLICT,
}


@transaction.atomic
def _not_applied(change: FlagChange, state: FlagChange.State, reason: str) -> None:
    """The outbox gives up on a change: its row says why (the admin's outbox list), and
    the message's history says so where staff look (the message page)."""
    FlagChange.objects.filter(pk=change.pk).update(
        state=state, done_at=timezone.now(), last_error=reason[:1000]
    )
    changes.record(
        mailbox=Folder.objects.values_list("mailbox_id", flat=True).get(pk=change.folder_id),
        message=change.message_id,
        actor=change.actor_id,
        source=Activity.Source.SYSTEM,
        verb=NOT_APPLIED_VERBS[state],
        detail={
            "flag": change.flag,
            "add": change.add,
            "kind": change.kind,
            "error": reason[:1000],
        },
    )
    log.warning("outbox change %s (uid %s) was not applied: %s", change.pk, change.uid, reason)


def _push_move(imap: ImapSession, folder: Folder, change: FlagChange) -> None:
    """MOVE (or COPY + UID EXPUNGE), then the row takes its new location from COPYUID:
    the Trash copy is the same row and conversation, never a second one."""
    target = change.target_folder
    assert target is not None
    target_uidvalidity, mapping = imap.move([change.uid], target.name)
    now = timezone.now()
    message = Message.objects.get(pk=change.message_id)
    new_uid = mapping.get(change.uid)
    going_back = message.moved_from_id == target.pk
    with transaction.atomic():
        if new_uid is None or target_uidvalidity is None:
            # The server did not say where it went: the target's sync will import it
            # (same bytes, so the same conversation); this copy is gone from its folder.
            message.expunged_at = now
        elif Message.objects.filter(
            folder=target, uidvalidity=target_uidvalidity, uid=new_uid
        ).exists():
            message.expunged_at = now  # the target's sync was quicker and imported it
        else:
            message.folder = target
            message.uidvalidity = target_uidvalidity
            message.uid = new_uid
            # a sync of the source may have seen the UID vanish a moment ago
            message.expunged_at = None
        message.moved_from = None if going_back else folder
        message.moving_to = None
        message.save(
            update_fields=["folder", "uidvalidity", "uid", "moved_from", "moving_to", "expunged_at"]
        )
        FlagChange.objects.filter(pk=change.pk).update(
            state=FlagChange.State.DONE, done_at=now, last_error=""
        )
        changes.record(
            mailbox=folder.mailbox_id,
            message=message,
            actor=change.actor_id,
            source=Activity.Source.SYSTEM,
            verb=Activity.Verb.MOVED,
            detail={"from": folder.name, "to": target.name},
        )


def _push_expunge(imap: ImapSession, folder: Folder, change: FlagChange) -> None:
    """Purge: ``UID EXPUNGE`` of exactly this UID (never a bare EXPUNGE)."""
    imap.expunge_uids([change.uid])
    now = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=change.message_id).update(expunged_at=now)
        FlagChange.objects.filter(pk=change.pk).update(
            state=FlagChange.State.DONE, done_at=now, last_error=""
        )


def release_stale_claims() -> int:
    """Put changes claimed by a pusher that stopped renewing its claim back into the
    outbox (a claim expires by itself too; this makes the outbox list say so)."""
    return FlagChange.objects.filter(_claimable(), state=FlagChange.State.SENDING).update(
        state=FlagChange.State.PENDING,
        last_error="the worker sending it stopped; it is checked on the server and resent",
    )


def folders_with_pending_changes() -> list[int]:
    return list(
        FlagChange.objects.filter(_claimable()).values_list("folder_id", flat=True).distinct()
    )
