"""Sync a whole mailbox or one folder: the Django-side driver around the engine.

Tasks and management commands call these; they take leases, open one IMAP connection,
push the outbox first (RFC 4549 §3: client-to-server before server-to-client), then run
the engine's folder sync and record the mailbox's health.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from mailsync import changes
from mailsync.crypto import CredentialError
from mailsync.engine.accounts import MailAccount
from mailsync.engine.errors import ConfigurationError, FolderMissing, MailError
from mailsync.engine.imap import ImapSession
from mailsync.engine.sync import SyncLimits, SyncProgress, SyncReport, sync_folder
from mailsync.extract import extract_messages, pending_messages
from mailsync.leases import FolderBusy, folder_lease, write_on_a_working_connection
from mailsync.models import Activity, DeadLetter, Folder, Mailbox
from mailsync.outbox import push_flag_changes
from mailsync.sessions import lent_session
from mailsync.store import DjangoFolderStore

log = logging.getLogger(__name__)

ProgressCallback = Callable[[SyncProgress], None]

# Mailbox.Protocol still offers POP3 for rows saved before this check; nothing syncs it.
POP3_NOT_AVAILABLE = "POP3 sync is not available yet"
POP3_MAILBOX_NOT_SYNCED = (
    f"{POP3_NOT_AVAILABLE}, so this mailbox is not synced; change its protocol to IMAP "
    "in the admin."
)


@dataclass
class MailboxSyncResult:
    reports: list[SyncReport] = field(default_factory=list)
    busy_folders: list[str] = field(default_factory=list)
    missing_folders: list[str] = field(default_factory=list)
    # "N messages could not be fetched yet: <reason>; ..." while dead letters remain
    not_fetched: str = ""


def open_session(mailbox: Mailbox) -> ImapSession:
    return _connect(_imap_account(mailbox))


def _imap_account(mailbox: Mailbox) -> MailAccount:
    if mailbox.protocol != Mailbox.Protocol.IMAP:
        raise ConfigurationError(POP3_MAILBOX_NOT_SYNCED)
    try:
        return mailbox.account()
    except CredentialError as exc:
        raise ConfigurationError(str(exc)) from exc


def _connect(account: MailAccount) -> ImapSession:
    return ImapSession.connect(
        account,
        timeout=settings.IMAP_TIMEOUT_SECONDS,
        ignore_capabilities=settings.IMAP_IGNORE_CAPABILITIES,
    )


@contextmanager
def mailbox_session(mailbox: Mailbox) -> Iterator[ImapSession]:
    """The mailbox's kept IMAP session (``mailsync.sessions``), or a new one."""
    account = _imap_account(mailbox)
    with lent_session(mailbox.pk, account, lambda: _connect(account)) as imap:
        yield imap


def sync_mailbox(
    mailbox: Mailbox,
    *,
    on_progress: ProgressCallback | None = None,
    extract: bool = True,
    wait_for_lease: float = 0,
) -> MailboxSyncResult:
    """Sync every chosen folder. Raises MailError (after recording it) when the server
    cannot be reached or refuses the login; a missing folder is reported, not fatal.

    Messages are listed first (envelope, flags, raw bytes); with ``extract`` their bodies
    and attachments are then extracted here, otherwise the caller arranges it.
    """
    result = MailboxSyncResult()
    Mailbox.objects.filter(pk=mailbox.pk).update(sync_status=Mailbox.SyncStatus.SYNCING)
    try:
        with mailbox_session(mailbox) as imap:
            folders = ensure_folders(imap, mailbox, result)
            for folder in folders:
                try:
                    result.reports.append(
                        sync_one_folder(
                            imap, folder, on_progress=on_progress, wait_for_lease=wait_for_lease
                        )
                    )
                except FolderBusy:
                    result.busy_folders.append(folder.name)
    except MailError as exc:
        _record_failure(mailbox, exc)
        raise
    except BaseException as exc:
        _record_interrupted(mailbox, exc)
        raise
    if extract:
        extract_messages(list(pending_messages(mailbox).values_list("pk", flat=True)))
    if result.missing_folders:
        missing = ", ".join(result.missing_folders)
        _record_failure(mailbox, FolderMissing(f"not on the server: {missing}"))
    elif result.busy_folders:
        # Another worker is syncing those folders: the mailbox is not in step yet, and
        # stays "syncing" (with that worker's progress) until a sync of every folder ends.
        Mailbox.objects.filter(pk=mailbox.pk).update(sync_status=Mailbox.SyncStatus.SYNCING)
    else:
        _record_in_step(mailbox, result)
    return result


def ensure_folders(imap: ImapSession, mailbox: Mailbox, result: MailboxSyncResult) -> list[Folder]:
    remote = {f.name: f for f in imap.list_folders() if f.selectable}
    folders = []
    for name in mailbox.chosen_folder_names():
        remote_folder = remote.get(name)
        if remote_folder is None:
            result.missing_folders.append(name)
            Folder.objects.filter(mailbox=mailbox, name=name).update(
                last_error="this folder does not exist on the server"
            )
            continue
        folder, _ = Folder.objects.get_or_create(
            mailbox=mailbox, name=name, defaults={"special_use": remote_folder.special_use}
        )
        if folder.special_use != remote_folder.special_use:
            folder.special_use = remote_folder.special_use
            folder.save(update_fields=["special_use"])
        folders.append(folder)
    # Trash and Sent are known even when not synced: deletes move there, replies go there.
    for remote_folder in remote.values():
        if remote_folder.special_use in {"\\Trash", "\\Sent"}:
            Folder.objects.get_or_create(
                mailbox=mailbox,
                name=remote_folder.name,
                defaults={"special_use": remote_folder.special_use},
            )
    return folders


def sync_one_folder(
    imap: ImapSession,
    folder: Folder,
    *,
    on_progress: ProgressCallback | None = None,
    wait_for_lease: float = 0,
) -> SyncReport:
    with folder_lease(folder.pk, wait=wait_for_lease) as lease:

        def progress(step: SyncProgress) -> None:
            lease.record_progress(step.fetched, step.total)
            if on_progress is not None:
                on_progress(step)

        push_flag_changes(imap, folder)
        store = DjangoFolderStore(folder, on_progress=progress)
        limits = SyncLimits(
            batch_messages=settings.SYNC_BATCH_MESSAGES, batch_bytes=settings.SYNC_BATCH_BYTES
        )
        try:
            report = sync_folder(imap, store, folder.name, limits=limits)
        except MailError as exc:
            Folder.objects.filter(pk=folder.pk).update(last_error=str(exc)[:2000])
            raise
        # (releasing the lease clears the fetch progress)
        if report.uidvalidity_reset:
            # changes that waited for the renumbering now name their message's new UID
            push_flag_changes(imap, folder)
        return report


def sync_folder_by_id(folder_id: int) -> SyncReport | None:
    folder = Folder.objects.select_related("mailbox").get(pk=folder_id)
    with mailbox_session(folder.mailbox) as imap:
        return sync_one_folder(imap, folder)


def push_folder_changes(folder_id: int) -> int:
    folder = Folder.objects.select_related("mailbox").get(pk=folder_id)
    with mailbox_session(folder.mailbox) as imap:
        return push_flag_changes(imap, folder).sent


def record_not_synced(mailbox: Mailbox) -> None:
    """A mailbox nothing can sync (POP3, for now): its status says so instead of the
    mailbox staying "not synced yet" in silence."""
    _record_failure(mailbox, ConfigurationError(POP3_MAILBOX_NOT_SYNCED))


def _record_interrupted(mailbox: Mailbox, exc: BaseException) -> None:
    """A sync that stopped half-way for another reason than the mail server (the database
    connection lost, Ctrl-C, a bug) says so rather than leaving "syncing" behind: on a new
    connection if the old one broke. If the database is down, nothing can be written; the
    next sync (beat's, within a minute) records what it finds."""
    if lost_database_connection(exc):
        reason = f"the sync stopped: the database connection was lost ({one_line(exc)})"
    elif isinstance(exc, KeyboardInterrupt):
        reason = "the sync was interrupted before it finished"
    else:
        reason = f"the sync stopped: {type(exc).__name__}: {one_line(exc)}"
    write_on_a_working_connection(
        lambda: Mailbox.objects.filter(
            pk=mailbox.pk, sync_status=Mailbox.SyncStatus.SYNCING
        ).update(sync_status=Mailbox.SyncStatus.ERROR, last_error=reason[:2000])
    )


def lost_database_connection(exc: BaseException) -> bool:
    """What a lost connection raises (PostgreSQL restarted, the backend terminated, a
    failover): Django's errors, or the driver's own where a raw cursor is used (COPY)."""
    driver = connection.Database  # type: ignore[attr-defined]  # the DB-API module; unstubbed
    return isinstance(
        exc,
        OperationalError | InterfaceError | driver.OperationalError | driver.InterfaceError,
    )


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (psycopg's span several, with hints)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _record_in_step(mailbox: Mailbox, result: MailboxSyncResult) -> None:
    """Every folder synced: "ok", or "warning" while messages the server lists have not
    been delivered yet (dead letters, asked for again until they arrive): how many, and
    the latest reason, for the status line, the admin and ``syncmailbox``."""
    letters = DeadLetter.objects.filter(
        folder__mailbox=mailbox,
        folder__name__in=mailbox.chosen_folder_names(),  # not of a folder no longer synced
        uidvalidity=F("folder__uidvalidity"),
    )
    latest = letters.order_by("-last_attempt_at").first()
    status = Mailbox.SyncStatus.OK
    if latest is not None:
        status = Mailbox.SyncStatus.WARNING
        result.not_fetched = not_fetched_sentence(letters.count(), latest.reason)
    Mailbox.objects.filter(pk=mailbox.pk).update(
        sync_status=status, last_error=result.not_fetched[:2000], last_synced_at=timezone.now()
    )


def not_fetched_sentence(count: int, reason: str) -> str:
    reason = " ".join(reason.split()).rstrip(".")
    if count == 1:
        return f"1 message could not be fetched yet: {reason}; it will be retried"
    return f"{count} messages could not be fetched yet: {reason}; they will be retried"


@transaction.atomic
def _record_failure(mailbox: Mailbox, exc: MailError) -> None:
    message = str(exc)[:2000]
    changed = Mailbox.objects.filter(pk=mailbox.pk).exclude(last_error=message).exists()
    Mailbox.objects.filter(pk=mailbox.pk).update(
        sync_status=Mailbox.SyncStatus.ERROR, last_error=message
    )
    if changed:  # one audit row per distinct problem, not one per retry
        changes.record(
            mailbox=mailbox,
            source=Activity.Source.SYSTEM,
            verb=Activity.Verb.SYNC_FAILED,
            detail={"error": message, "transient": exc.transient},
        )
