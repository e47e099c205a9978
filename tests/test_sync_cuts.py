"""Behind a connection that drops every long download (a flaky middlebox, a proxy with a
small buffer), no message is given up: the sync fetches what it can in pieces, asks again
for the rest for as long as the server lists it, and says plainly what is still missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from django.urls import reverse
from django.utils import timezone

from mailsync.engine.imap import uid_ranges
from mailsync.models import DeadLetter, Mailbox, Message
from mailsync.runner import sync_mailbox
from tests.support.dovecot import MailUser
from tests.support.faultproxy import FaultProxy
from tests.support.mail import client_for
from tests.support.mirror import comparable, server_state
from tests.test_sync import app_state, make_mail

KB = 1024


@pytest.fixture
def proxy(mail_user: MailUser) -> Iterator[FaultProxy]:
    with FaultProxy(mail_user.server.host, mail_user.server.imap_port) as running:
        yield running


@pytest.fixture
def proxied_mailbox(shared_mailbox: Mailbox, proxy: FaultProxy) -> Mailbox:
    """The shared mailbox, reaching Dovecot through the fault proxy."""
    Mailbox.objects.filter(pk=shared_mailbox.pk).update(port=proxy.port)
    shared_mailbox.refresh_from_db()
    return shared_mailbox


def mail_of_size(subject: str, size: int) -> bytes:
    """A message of about ``size`` bytes that no two tests share (random base64)."""
    message = EmailMessage()
    message["From"] = "Customer <customer@example.org>"
    message["To"] = "support@example.test"
    message["Subject"] = subject
    message["Message-ID"] = f"<{os.urandom(8).hex()}@example.org>"
    message.set_content("See the attachment.")
    message.add_attachment(
        os.urandom(size * 3 // 4), maintype="application", subtype="octet-stream"
    )
    return bytes(message)


def deliver_mixed(mail_user: MailUser) -> dict[str, int]:
    """20 messages: 15 small, four of 40-200 KB, one of about 1 MB."""
    sizes = {f"Small {n}": 1 * KB for n in range(15)}
    sizes |= {"Mid 40": 40 * KB, "Mid 80": 80 * KB, "Mid 120": 120 * KB, "Mid 200": 200 * KB}
    sizes["Big 1 MB"] = 1024 * KB
    for subject, size in sizes.items():
        mail_user.append(mail_of_size(subject, size))
    return sizes


def time_passes() -> None:
    """Every dead letter's wait is over (as after hours of syncs)."""
    DeadLetter.objects.update(next_attempt_at=timezone.now())


def in_step_with_server(mailbox: Mailbox, mail_user: MailUser) -> bool:
    return comparable(app_state(mailbox)) == comparable(server_state(mail_user))


@pytest.mark.django_db
@pytest.mark.parametrize("cut", [32 * KB, 512 * KB], ids=["32KB", "512KB"])
def test_a_first_sync_completes_through_a_connection_cut_after_each_download(
    cut, settings, proxied_mailbox, mail_user, proxy
):
    deliver_mixed(mail_user)
    proxy.cut(server_to_client=cut)

    result = sync_mailbox(proxied_mailbox)

    assert proxy.cuts > 0  # the cut did bite
    assert Message.objects.count() == 20
    assert not DeadLetter.objects.exists()
    assert in_step_with_server(proxied_mailbox, mail_user)  # exact bytes, flags, UIDs
    proxied_mailbox.refresh_from_db()
    assert proxied_mailbox.sync_status == Mailbox.SyncStatus.OK
    assert result.not_fetched == ""

    proxy.heal()
    mail_user.append(mail_of_size("After healing", 300 * KB))
    sync_mailbox(proxied_mailbox)
    assert Message.objects.count() == 21
    assert in_step_with_server(proxied_mailbox, mail_user)


@pytest.mark.django_db
def test_messages_that_keep_failing_are_asked_for_until_they_arrive(
    proxied_mailbox, mail_user, proxy
):
    """A cut so small that not even 4 KB pieces pass: the two larger messages fail at
    every sync, many more than the five tries that used to be the end of them."""
    for n in range(3):
        mail_user.append(make_mail(f"Short {n}"))
    mail_user.append(mail_of_size("Large one", 40 * KB))
    mail_user.append(mail_of_size("Large two", 60 * KB))
    proxy.cut(server_to_client=3 * KB)

    for _ in range(8):
        sync_mailbox(proxied_mailbox)
        time_passes()

    assert Message.objects.count() == 3
    assert sorted(DeadLetter.objects.values_list("attempts", flat=True)) == [8, 8]

    proxy.heal()
    sync_mailbox(proxied_mailbox)

    assert not DeadLetter.objects.exists()
    assert Message.objects.count() == 5
    assert in_step_with_server(proxied_mailbox, mail_user)


@pytest.mark.django_db
def test_a_message_the_server_cannot_read_is_asked_for_past_five_failures(
    shared_mailbox, mail_user
):
    """Dovecot drops the connection (BYE) when it cannot read a message's file."""
    mail_user.append(make_mail("Readable"))
    mail_user.append(make_mail("Unreadable for a while"))
    with mail_user.imap() as client:  # a read-write SELECT moves new/ to cur/ for good
        client.select_folder("INBOX")
    unreadable = next(
        path
        for path in (mail_user.home / "Maildir").glob("*/*")
        if path.is_file() and b"Subject: Unreadable" in path.read_bytes()
    )
    mode = unreadable.stat().st_mode
    unreadable.chmod(0)
    try:
        for _ in range(7):
            sync_mailbox(shared_mailbox)
            time_passes()
    finally:
        unreadable.chmod(mode)
    assert DeadLetter.objects.get().attempts == 7

    sync_mailbox(shared_mailbox)  # repaired: it arrives

    assert not DeadLetter.objects.exists()
    assert in_step_with_server(shared_mailbox, mail_user)


@pytest.mark.django_db
def test_a_message_not_delivered_waits_longer_after_each_failure(proxied_mailbox, mail_user, proxy):
    mail_user.append(mail_of_size("Large", 40 * KB))
    proxy.cut(server_to_client=3 * KB)
    sync_mailbox(proxied_mailbox)
    sync_mailbox(proxied_mailbox)  # the first retry comes at the next sync
    letter = DeadLetter.objects.get()
    assert letter.attempts == 2
    assert letter.next_attempt_at > timezone.now()  # then the waits begin

    proxy.heal()
    sync_mailbox(proxied_mailbox)  # not due yet: not asked for
    assert DeadLetter.objects.get().attempts == 2
    assert not Message.objects.exists()

    time_passes()
    sync_mailbox(proxied_mailbox)
    assert Message.objects.count() == 1


@pytest.mark.django_db
def test_a_dead_letter_the_server_no_longer_lists_is_dropped(proxied_mailbox, mail_user, proxy):
    mail_user.append(make_mail("Stays"))
    doomed = mail_user.append(mail_of_size("Expunged while failing", 40 * KB))
    proxy.cut(server_to_client=3 * KB)
    sync_mailbox(proxied_mailbox)
    assert DeadLetter.objects.get().uid == doomed

    mail_user.expunge([doomed])
    sync_mailbox(proxied_mailbox)

    assert not DeadLetter.objects.exists()
    proxied_mailbox.refresh_from_db()
    assert proxied_mailbox.sync_status == Mailbox.SyncStatus.OK


@pytest.mark.django_db
def test_staff_and_admins_see_how_many_messages_are_missing_and_why(
    proxied_mailbox, mail_user, proxy, bob, admin_client
):
    mail_user.append(make_mail("Short"))
    for n in range(2):
        mail_user.append(mail_of_size(f"Large {n}", 40 * KB))
    proxy.cut(server_to_client=3 * KB)

    result = sync_mailbox(proxied_mailbox)

    proxied_mailbox.refresh_from_db()
    assert proxied_mailbox.sync_status == Mailbox.SyncStatus.WARNING
    assert result.not_fetched.startswith("2 messages could not be fetched yet: ")
    assert result.not_fetched.endswith("; they will be retried")
    assert "4 KB" in result.not_fetched  # the reason: lost even in the smallest pieces
    assert proxied_mailbox.last_error == result.not_fetched

    status_line = client_for(bob).get(
        reverse("sync_status", kwargs={"mailbox": proxied_mailbox.name})
    )
    text = status_line.content.decode()
    assert "sync-warning" in text
    assert "2 messages could not be fetched yet" in text
    assert "In step" not in text and "Sync error" not in text

    listing = admin_client.get(reverse("admin:mailsync_mailbox_changelist")).content.decode()
    assert "Messages not fetched yet" in listing
    assert "2 messages could not be fetched yet" in listing

    proxy.heal()
    time_passes()
    sync_mailbox(proxied_mailbox)
    proxied_mailbox.refresh_from_db()
    assert proxied_mailbox.sync_status == Mailbox.SyncStatus.OK
    assert proxied_mailbox.last_error == ""
    text = (
        client_for(bob)
        .get(reverse("sync_status", kwargs={"mailbox": proxied_mailbox.name}))
        .content.decode()
    )
    assert "In step" in text


@pytest.mark.django_db(transaction=True)
def test_syncmailbox_once_says_what_is_missing_and_exits_non_zero(
    manage, proxied_mailbox, mail_user, proxy
):
    mail_user.append(make_mail("Short"))
    for n in range(2):
        mail_user.append(mail_of_size(f"Large {n}", 40 * KB))
    proxy.cut(server_to_client=3 * KB)

    run = manage("syncmailbox", proxied_mailbox.name, "--once")

    assert run.returncode == 3, run.stderr
    assert "2 messages could not be fetched yet: " in run.stderr
    assert "; they will be retried" in run.stderr
    assert "refused by the server" not in run.stdout + run.stderr
    assert "exit status" in manage("syncmailbox", "--help").stdout

    proxy.heal()
    time_passes()
    run = manage("syncmailbox", proxied_mailbox.name, "--once")
    assert run.returncode == 0, run.stderr
    assert "could not be fetched" not in run.stderr
    assert Message.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    "ignored",
    [[], ["QRESYNC"], ["QRESYNC", "CONDSTORE"]],
    ids=["qresync", "condstore", "neither"],
)
def test_listings_of_many_messages_pass_a_cut_smaller_than_the_whole_listing(
    ignored, settings, monkeypatch, proxied_mailbox, mail_user, proxy
):
    """Another client marks 1,000 messages read and expunges one: the answers naming them
    all (≈50 KB of flags, or every UID) are asked for in UID ranges (UID SEARCH's here
    made smaller than 1,000), each of which passes a connection cut at 32 KB."""
    settings.IMAP_IGNORE_CAPABILITIES = ignored
    monkeypatch.setattr("mailsync.engine.imap.commands.SEARCH_RANGE", 200)
    mail_user.deliver_bulk(make_mail(f"Bulk {n}", body=f"body {n}") for n in range(1000))
    sync_mailbox(proxied_mailbox, extract=False)
    with mail_user.imap() as client:
        client.select_folder("INBOX")
        client.add_flags("1:*", ["\\Seen", "$Important"], silent=True)
    mail_user.expunge([500])
    proxy.cut(server_to_client=32 * KB)

    sync_mailbox(proxied_mailbox, extract=False)

    assert proxy.cuts > 0
    assert Message.objects.filter(seen=True, expunged_at__isnull=True).count() == 999
    assert in_step_with_server(proxied_mailbox, mail_user)


def test_uid_ranges_cover_every_uid_once_and_split_where_told() -> None:
    assert uid_ranges([], 1, 10) == [(1, 10)]
    assert uid_ranges([4, 8], 1, 10) == [(1, 3), (4, 7), (8, 10)]
    # boundaries outside the span, repeated, unsorted, or at its start change nothing wrong
    assert uid_ranges([8, 1, 4, 4, 50], 1, 10) == [(1, 3), (4, 7), (8, 10)]
    assert uid_ranges([5], 5, 5) == [(5, 5)]
    assert uid_ranges([3], 9, 8) == []
    sparse = [1, 2, 3, 1000, 1001, 5000, 5001, 5002, 90000]
    starts = sparse[::2]  # every second message, as FETCH n,2n,... (UID) reports them
    ranges = uid_ranges(starts, 1, 100000)
    covered = [uid for low, high in ranges for uid in range(low, high + 1)]
    assert covered == list(range(1, 100001))  # no gap, no overlap
    assert max(sum(low <= uid <= high for uid in sparse) for low, high in ranges) <= 2
