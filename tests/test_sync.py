"""The mirror against a real Dovecot: what the server has, the app shows, exactly once."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from mailsync.engine.flags import SEEN
from mailsync.models import Activity, Blob, FlagChange, Message
from mailsync.runner import push_folder_changes, sync_mailbox
from teaminbox.services import set_flag
from tests.support.mirror import comparable, server_state

pytestmark = pytest.mark.django_db


def make_mail(
    subject: str, *, sender: str = "Customer <customer@example.org>", body: str = "Hello"
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@example.test"
    message["Subject"] = subject
    message["Message-ID"] = f"<{abs(hash(subject))}@example.org>"
    message.set_content(body)
    return bytes(message)


def app_state(mailbox):
    rows = []
    for message in Message.objects.filter(
        folder__mailbox=mailbox, expunged_at__isnull=True
    ).select_related("folder"):
        rows.append(
            {
                "folder": message.folder.name,
                "uidvalidity": message.uidvalidity,
                "uid": message.uid,
                "flags": message.imap_flags(),
                "sha256": message.blob_id,
            }
        )
    return rows


def test_it_lists_appended_messages_after_a_sync(shared_mailbox, mail_user):
    for n in range(3):
        mail_user.append(make_mail(f"Question {n}"))

    sync_mailbox(shared_mailbox)

    subjects = sorted(Message.objects.values_list("subject", flat=True))
    assert subjects == ["Question 0", "Question 1", "Question 2"]
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_it_creates_no_duplicates_on_a_second_sync_and_picks_up_later_mail(
    shared_mailbox, mail_user
):
    mail_user.append(make_mail("First"))
    sync_mailbox(shared_mailbox)
    sync_mailbox(shared_mailbox)
    assert Message.objects.count() == 1

    mail_user.append(make_mail("Second"))
    result = sync_mailbox(shared_mailbox)

    assert [r.new_messages for r in result.reports] == [1]
    assert sorted(Message.objects.values_list("subject", flat=True)) == ["First", "Second"]


def test_it_stores_the_exact_bytes_the_server_returns(shared_mailbox, mail_user):
    raw = b"From: a@example.org\nSubject: bare LF\n\nline one\nline two\n"
    uid = mail_user.append(raw)

    sync_mailbox(shared_mailbox)

    message = Message.objects.get(uid=uid)
    assert message.blob.read() == mail_user.raw(uid)
    assert message.subject == "bare LF"


def test_it_shares_one_blob_between_identical_copies(make_mailbox, mail_user):
    mailbox = make_mailbox(mail_user, folders=["INBOX", "Archive"])
    raw = make_mail("Same everywhere")
    mail_user.append(raw)
    mail_user.append(raw, folder="Archive")

    sync_mailbox(mailbox)

    assert Message.objects.count() == 2
    assert Blob.objects.filter(messages__isnull=False).distinct().count() == 1
    assert Message.objects.values("conversation").distinct().count() == 1


def threaded_mail(subject: str, msgid: str, date: str, *parents: str) -> bytes:
    headers = [
        "From: Customer <customer@example.org>",
        "To: support@example.test",
        f"Subject: {subject}",
        f"Message-ID: <{msgid}>",
        f"Date: {date}",
    ]
    if parents:
        headers.append(f"In-Reply-To: <{parents[-1]}>")
        headers.append("References: " + " ".join(f"<{p}>" for p in parents))
    return ("\r\n".join(headers) + "\r\n\r\nbody\r\n").encode()


def test_every_message_gets_a_conversation_and_replies_join_theirs(shared_mailbox, mail_user):
    mail_user.append(threaded_mail("Printer", "a@x", "Mon, 02 Nov 2026 09:00:00 +0000"))
    mail_user.append(threaded_mail("Re: Printer", "b@x", "Mon, 02 Nov 2026 10:00:00 +0000", "a@x"))
    mail_user.append(threaded_mail("Unrelated", "z@x", "Mon, 02 Nov 2026 11:00:00 +0000"))
    # in the same batch as its parent, and naming only the grandparent's id as well
    mail_user.append(
        threaded_mail("Re: Printer", "c@x", "Tue, 03 Nov 2026 08:00:00 +0000", "a@x", "b@x")
    )
    sync_mailbox(shared_mailbox)
    # a later reply, in a later sync, joins the stored conversation
    mail_user.append(
        threaded_mail("Re: Printer", "d@x", "Wed, 04 Nov 2026 08:00:00 +0000", "a@x", "c@x")
    )
    sync_mailbox(shared_mailbox)

    rows = {m.message_id: m for m in Message.objects.select_related("conversation")}
    assert all(m.conversation is not None for m in rows.values())
    printer = {rows[i].conversation_id for i in ("a@x", "b@x", "c@x", "d@x")}
    assert len(printer) == 1
    assert rows["z@x"].conversation_id not in printer
    conversation = rows["a@x"].conversation
    assert conversation is not None
    assert conversation.subject == "Printer"
    assert conversation.last_message_at == datetime(2026, 11, 4, 8, 0, tzinfo=UTC)


def test_it_takes_flag_changes_and_expunges_made_by_another_client(shared_mailbox, mail_user):
    keep = mail_user.append(make_mail("Keep"))
    gone = mail_user.append(make_mail("Gone"))
    sync_mailbox(shared_mailbox)

    mail_user.add_flags([keep], ["\\Seen", "\\Flagged", "$Forwarded"])
    mail_user.expunge([gone])
    sync_mailbox(shared_mailbox)

    kept = Message.objects.get(uid=keep)
    assert kept.imap_flags() == ["$Forwarded", "\\Flagged", "\\Seen"]
    expunged = Message.objects.get(uid=gone)
    assert expunged.expunged_at is not None  # marked, not dropped from history
    assert Activity.objects.filter(message=expunged, verb="expunged").exists()
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_it_pushes_a_staff_flag_change_to_the_server(shared_mailbox, mail_user, bob):
    uid = mail_user.append(make_mail("Please read me"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(uid=uid)

    change = set_flag(message=message, flag=SEEN, on=True, actor=bob)
    assert change is not None
    push_folder_changes(message.folder_id)

    assert "\\Seen" in mail_user.flags()[uid]
    change.refresh_from_db()
    assert change.state == FlagChange.State.DONE
    assert Activity.objects.filter(message=message, actor=bob, verb="flag_added").exists()


def test_it_keeps_local_intent_while_the_push_is_pending(shared_mailbox, mail_user, bob):
    uid = mail_user.append(make_mail("Intent"))
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(uid=uid)
    set_flag(message=message, flag=SEEN, on=True, actor=bob)

    # The sync pushes the outbox before it reads the server, so the person's value stays
    # and reaches the server.
    sync_mailbox(shared_mailbox)

    message.refresh_from_db()
    assert message.seen
    assert "\\Seen" in mail_user.flags()[uid]


def test_it_moves_a_pending_change_to_the_right_message_after_renumbering(
    make_mailbox, mail_user, bob
):
    mailbox = make_mailbox(mail_user, folders=["Cases"], agents=(bob,))
    mail_user.create_folder("Cases")
    first = make_mail("First case")
    second = make_mail("Second case")
    third = make_mail("Third case")
    mail_user.append(first, folder="Cases")
    second_uid = mail_user.append(second, folder="Cases")
    sync_mailbox(mailbox)
    target = Message.objects.get(uid=second_uid)
    conversation_id = target.conversation_id
    change = set_flag(message=target, flag=SEEN, on=True, actor=bob)
    assert change is not None
    # Another client recreates the folder: the second message now has UID 1, and UID 2
    # belongs to a message the person never saw.
    with mail_user.imap() as client:
        client.delete_folder("Cases")
    mail_user.create_folder("Cases")
    mail_user.set_uidvalidity(mail_user.uidvalidity("Cases") + 1000, folder="Cases")
    new_second_uid = mail_user.append(second, folder="Cases")
    third_uid = mail_user.append(third, folder="Cases")

    result = sync_mailbox(mailbox)

    assert result.reports[0].uidvalidity_reset
    flags = mail_user.flags("Cases")
    assert "\\Seen" in flags[new_second_uid]
    assert "\\Seen" not in flags[third_uid]
    target.refresh_from_db()
    assert (target.uid, target.expunged_at, target.conversation_id) == (
        new_second_uid,
        None,
        conversation_id,
    )
    assert target.activities.filter(verb="flag_added").exists()  # history kept
    change.refresh_from_db()
    assert change.state == FlagChange.State.DONE
    assert Message.objects.get(subject="First case").expunged_at is not None
    assert comparable(app_state(mailbox)) == comparable(server_state(mail_user, ["Cases"]))


def test_it_remaps_by_content_when_only_uidvalidity_changes(shared_mailbox, mail_user):
    uids = [mail_user.append(make_mail(f"Stable {n}")) for n in range(3)]
    sync_mailbox(shared_mailbox)
    ids = sorted(Message.objects.values_list("id", flat=True))
    mail_user.set_uidvalidity(mail_user.uidvalidity() + 7)

    sync_mailbox(shared_mailbox)

    assert (
        sorted(Message.objects.filter(expunged_at__isnull=True).values_list("id", flat=True)) == ids
    )
    assert Message.objects.count() == len(uids)
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_it_records_a_wrong_password_on_the_mailbox(make_mailbox, mail_user):
    from mailsync.engine.errors import AuthenticationFailed

    mailbox = make_mailbox(mail_user, password="wrong")
    with pytest.raises(AuthenticationFailed):
        sync_mailbox(mailbox)
    mailbox.refresh_from_db()
    assert mailbox.sync_status == "error"
    assert "login refused" in mailbox.last_error


def test_it_fetches_and_stores_a_large_message_in_chunks_byte_exact(shared_mailbox, mail_user):
    from mailsync.engine.imap import LARGE_MESSAGE

    payload = os.urandom(LARGE_MESSAGE * 3 // 4 + 1_500_000)  # base64 grows it past the limit
    message = EmailMessage()
    message["From"] = "big@example.org"
    message["Subject"] = "Large scan"
    message.set_content("The scan is attached.")
    message.add_attachment(payload, maintype="application", subtype="pdf", filename="scan.pdf")
    raw = bytes(message)
    assert len(raw) > LARGE_MESSAGE
    uid = mail_user.append(raw)

    sync_mailbox(shared_mailbox)

    stored = Message.objects.get(uid=uid)
    assert stored.blob.chunked and stored.blob.chunks.count() > 8
    assert stored.blob.read() == mail_user.raw(uid)
    assert stored.subject == "Large scan"
    attachment = stored.attachments.get(filename="scan.pdf")
    assert attachment.blob.read() == payload


def test_extraction_is_queued_newest_mail_first(shared_mailbox, mail_user, monkeypatch):
    """A first sync inserts the newest batches first; the text of the newest mail must
    still be prepared first, since that is what people open."""
    from mailsync import tasks

    with mail_user.imap() as client:  # arriving out of date order
        for day in (3, 1, 4, 2):
            when = datetime(2026, 3, day, 9, 0, tzinfo=UTC)
            client.append("INBOX", make_mail(f"Day {day}"), msg_time=when)
    sync_mailbox(shared_mailbox, extract=False)
    queued: list[list[int]] = []
    monkeypatch.setattr(tasks.extract_messages, "delay", queued.append)

    tasks.enqueue_extraction(shared_mailbox)

    order = [Message.objects.get(pk=pk).subject for chunk in queued for pk in chunk]
    assert order == ["Day 4", "Day 3", "Day 2", "Day 1"]
