"""Staff actions reach the server exactly once, and never fight another client."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from mailsync.engine.flags import ANSWERED, DELETED, FLAGGED, SEEN
from mailsync.models import Activity, FlagChange, Folder, Message
from mailsync.outbox import release_stale_claims
from mailsync.runner import push_folder_changes, sync_mailbox
from teaminbox.services import delete_message, purge_message, restore_message, set_flag
from tests.support.mirror import comparable, server_state
from tests.support.rawlog import stores_per_uid
from tests.test_sync import app_state, make_mail

pytestmark = pytest.mark.django_db


def synced_message(mailbox, user, subject="Case"):
    uid = user.append(make_mail(subject))
    sync_mailbox(mailbox)
    return Message.objects.get(folder__mailbox=mailbox, uid=uid, folder__name="INBOX")


def test_it_keeps_both_flags_when_another_client_changed_a_different_one(
    make_mailbox, recorded_user, bob
):
    mailbox = make_mailbox(recorded_user, agents=(bob,))
    message = synced_message(mailbox, recorded_user)
    recorded_user.add_flags([message.uid], ["\\Flagged"])  # after bob saw it: modseq moved

    set_flag(message=message, flag=SEEN, on=True, actor=bob)
    push_folder_changes(message.folder_id)

    assert recorded_user.flags()[message.uid] == {"\\Seen", "\\Flagged"}
    assert FlagChange.objects.get().state == FlagChange.State.DONE
    # The first STORE was refused as MODIFIED (bob's modseq was stale), the retry on the
    # fresh modseq went through.
    conditional = [c for c in recorded_user.rawlog_commands() if "UNCHANGEDSINCE" in c]
    assert len(conditional) == 2, conditional


def test_it_removes_only_its_flag_when_another_client_answered_meanwhile(
    shared_mailbox, mail_user, bob
):
    uid = mail_user.append(make_mail("Unread me"), flags=["\\Seen"])
    sync_mailbox(shared_mailbox)
    message = Message.objects.get(uid=uid)
    mail_user.add_flags([uid], ["\\Answered"])

    set_flag(message=message, flag=SEEN, on=False, actor=bob)
    push_folder_changes(message.folder_id)

    assert mail_user.flags()[uid] == {"\\Answered"}


def test_the_later_of_two_staff_actions_wins_and_both_are_in_the_history(
    shared_mailbox, mail_user, alice, bob
):
    message = synced_message(shared_mailbox, mail_user)
    set_flag(message=message, flag=FLAGGED, on=True, actor=bob)
    push_folder_changes(message.folder_id)
    set_flag(message=message, flag=FLAGGED, on=False, actor=alice)  # on the modseq bob saw
    push_folder_changes(message.folder_id)

    assert "\\Flagged" not in mail_user.flags()[message.uid]
    verbs = list(
        Activity.objects.filter(message=message, source="app")
        .order_by("id")
        .values_list("actor__username", "verb")
    )
    assert verbs == [("bob", "flag_added"), ("alice", "flag_removed")]
    sync_mailbox(shared_mailbox)
    message.refresh_from_db()
    assert not message.flagged


def test_it_moves_a_deleted_message_to_trash_as_the_same_row_and_undo_brings_it_back(
    make_mailbox, mail_user, bob
):
    mailbox = make_mailbox(mail_user, delete_mode="trash", agents=(bob,))
    message = synced_message(mailbox, mail_user, "Delete me")
    conversation_id = message.conversation_id
    trash = Folder.objects.get(mailbox=mailbox, special_use="\\Trash")

    delete_message(message=message, actor=bob)
    message.refresh_from_db()
    assert message.moving_to_id == trash.pk  # hidden from the inbox at once
    push_folder_changes(message.folder_id)

    assert mail_user.uids("INBOX") == []
    trash_uids = mail_user.uids("Trash")
    assert len(trash_uids) == 1
    message.refresh_from_db()
    assert (message.folder_id, message.uid, message.conversation_id) == (
        trash.pk,
        trash_uids[0],
        conversation_id,
    )
    assert message.blob.read() == mail_user.raw(trash_uids[0], folder="Trash")
    assert Message.objects.count() == 1

    restore_message(message=message, actor=bob)
    push_folder_changes(trash.pk)

    assert mail_user.uids("Trash") == []
    message.refresh_from_db()
    assert message.folder.name == "INBOX"
    assert message.uid == mail_user.uids("INBOX")[0]
    assert message.moved_from_id is None
    sync_mailbox(mailbox)
    assert Message.objects.filter(expunged_at__isnull=True).count() == 1
    assert comparable(app_state(mailbox)) == comparable(server_state(mail_user))


def test_it_undoes_a_delete_that_was_not_sent_yet_without_touching_the_server(
    make_mailbox, mail_user, bob
):
    mailbox = make_mailbox(mail_user, delete_mode="trash", agents=(bob,))
    message = synced_message(mailbox, mail_user)
    delete_message(message=message, actor=bob)

    restore_message(message=message, actor=bob)
    push_folder_changes(message.folder_id)

    message.refresh_from_db()
    assert message.moving_to_id is None
    assert mail_user.uids("INBOX") == [message.uid]
    assert mail_user.uids("Trash") == []


@pytest.mark.parametrize("ignored", [[], ["MOVE"]], ids=["move", "copy-and-uid-expunge"])
def test_delete_to_trash_leaves_another_clients_deleted_message_alone(
    ignored, settings, make_mailbox, mail_user, bob
):
    settings.IMAP_IGNORE_CAPABILITIES = ignored
    mailbox = make_mailbox(mail_user, delete_mode="trash", agents=(bob,))
    marked = mail_user.append(make_mail("Outlook only marked this"), flags=["\\Deleted"])
    message = synced_message(mailbox, mail_user)

    delete_message(message=message, actor=bob)
    push_folder_changes(message.folder_id)

    assert mail_user.uids("INBOX") == [marked]
    assert len(mail_user.uids("Trash")) == 1
    message.refresh_from_db()
    assert message.folder.name == "Trash"


def test_purge_expunges_only_our_uid(shared_mailbox, mail_user, bob):
    marked = mail_user.append(make_mail("Outlook only marked this"), flags=["\\Deleted"])
    message = synced_message(shared_mailbox, mail_user)

    delete_message(message=message, actor=bob)  # flag mode: \Deleted
    push_folder_changes(message.folder_id)
    assert DELETED in mail_user.flags()[message.uid]
    purge_message(message=message, actor=bob)
    push_folder_changes(message.folder_id)

    assert mail_user.uids() == [marked]
    message.refresh_from_db()
    assert message.expunged_at is not None


def test_every_change_made_while_no_worker_ran_reaches_the_server_once(
    make_mailbox, recorded_user, bob
):
    user = recorded_user
    user.deliver_bulk(make_mail(f"Change {n}") for n in range(100))
    mailbox = make_mailbox(user, agents=(bob,))
    sync_mailbox(mailbox)
    messages = list(Message.objects.filter(folder__mailbox=mailbox))
    assert len(messages) == 100

    # No worker and no broker task ran: these are only outbox rows.
    for message in messages:
        set_flag(message=message, flag=ANSWERED, on=True, actor=bob)
    # A worker died holding some of them: the sweeper puts those back.
    FlagChange.objects.filter(pk__in=[c.pk for c in FlagChange.objects.all()[:10]]).update(
        state=FlagChange.State.SENDING, claimed_at=timezone.now() - timedelta(minutes=5)
    )
    assert release_stale_claims() == 10
    folder_id = messages[0].folder_id
    push_folder_changes(folder_id)
    push_folder_changes(folder_id)  # a duplicate task finds nothing left to send

    assert all(ANSWERED in flags for flags in user.flags().values())
    assert not FlagChange.objects.exclude(state=FlagChange.State.DONE).exists()
    stored = stores_per_uid(user.rawlog_commands(), "\\Answered")
    assert sorted(stored) == sorted(m.uid for m in messages)
    assert set(stored.values()) == {1}, "some UID was stored more than once"


def test_a_change_the_server_refuses_fails_alone_and_never_blocks_the_folder(
    shared_mailbox, mail_user, bob
):
    message = synced_message(shared_mailbox, mail_user)
    # slipped past the service's checks somehow: Dovecot answers BAD to this keyword
    bad = FlagChange.objects.create(
        message=message, folder=message.folder, uidvalidity=message.uidvalidity,
        uid=message.uid, flag="bad(keyword", add=True,
    )  # fmt: skip
    good = set_flag(message=message, flag=SEEN, on=True, actor=bob)
    assert good is not None

    for _ in range(3):
        sync_mailbox(shared_mailbox)  # pushes first; the sync itself must go on

    assert "\\Seen" in mail_user.flags()[message.uid]
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.state == FlagChange.State.DONE
    assert bad.state == FlagChange.State.FAILED
    assert "refused it 3 times" in bad.last_error


def test_staff_cannot_set_a_keyword_the_protocol_cannot_carry(shared_mailbox, mail_user, bob):
    message = synced_message(shared_mailbox, mail_user)
    for flag in ["two words", "paren(", 'quote"', "back\\slash", "", "x" * 65]:
        with pytest.raises(ValueError):
            set_flag(message=message, flag=flag, on=True, actor=bob)
    assert set_flag(message=message, flag="$Label1", on=True, actor=bob) is not None
