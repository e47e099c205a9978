"""Flag changes and expunges by another client arrive the same way whatever the server
offers: QRESYNC, CONDSTORE only, or neither (a windowed FLAGS scan, as on Microsoft 365)."""

from __future__ import annotations

import pytest

from mailsync.engine.imap import parse_uid_set
from mailsync.models import Message
from mailsync.runner import sync_mailbox
from tests.support.mirror import comparable, server_state
from tests.test_sync import app_state, make_mail

pytestmark = pytest.mark.django_db

MODES = {
    "qresync": [],
    "condstore-only": ["QRESYNC"],
    "neither": ["QRESYNC", "CONDSTORE"],
}


@pytest.mark.parametrize("mode", MODES)
def test_it_picks_up_external_flag_changes_and_expunges(mode, settings, shared_mailbox, mail_user):
    settings.IMAP_IGNORE_CAPABILITIES = MODES[mode]
    uids = [mail_user.append(make_mail(f"Message {n}")) for n in range(6)]
    sync_mailbox(shared_mailbox)

    mail_user.add_flags(uids[:2], ["\\Seen", "$Label1"])
    mail_user.remove_flags(uids[:1], ["$Label1"])
    mail_user.expunge([uids[3]])
    late = mail_user.append(make_mail("Late arrival"))
    result = sync_mailbox(shared_mailbox)

    report = result.reports[0]
    assert report.expunged == 1
    assert report.new_messages == 1
    assert Message.objects.get(uid=uids[0]).imap_flags() == ["\\Seen"]
    assert Message.objects.get(uid=uids[1]).imap_flags() == ["$Label1", "\\Seen"]
    assert Message.objects.get(uid=uids[3]).expunged_at is not None
    assert Message.objects.filter(uid=late, expunged_at__isnull=True).exists()
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


@pytest.mark.parametrize("mode", MODES)
def test_it_changes_nothing_when_nothing_changed(mode, settings, shared_mailbox, mail_user):
    settings.IMAP_IGNORE_CAPABILITIES = MODES[mode]
    for n in range(3):
        mail_user.append(make_mail(f"Quiet {n}"))
    sync_mailbox(shared_mailbox)
    before = comparable(app_state(shared_mailbox))

    report = sync_mailbox(shared_mailbox).reports[0]

    assert (report.new_messages, report.flag_updates, report.expunged) == (0, 0, 0)
    assert report.skipped == (mode != "neither")  # STATUS can only vouch with modseqs
    assert comparable(app_state(shared_mailbox)) == before


def test_it_notices_an_expunge_that_left_highestmodseq_alone_on_a_condstore_server(
    settings, shared_mailbox, mail_user
):
    settings.IMAP_IGNORE_CAPABILITIES = ["QRESYNC"]
    uids = [mail_user.append(make_mail(f"Count {n}")) for n in range(3)]
    sync_mailbox(shared_mailbox)
    mail_user.expunge([uids[0]])

    sync_mailbox(shared_mailbox)

    assert Message.objects.get(uid=uids[0]).expunged_at is not None
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_it_reads_uid_sets_in_either_order():
    assert parse_uid_set("1:3,7,10:9") == [1, 2, 3, 7, 9, 10]
    assert parse_uid_set("") == []
