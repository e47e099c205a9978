"""A worker keeps its IMAP connection between syncs, with the folder still selected: the
next sync asks for news with a NOOP. Against Dovecot: nothing is missed, whatever another
client does in between or during a sync."""

from __future__ import annotations

from mailsync import sessions
from mailsync.engine.flags import SEEN
from mailsync.models import Message
from mailsync.runner import sync_mailbox
from teaminbox.services import set_flag
from tests.support.mirror import comparable, server_state
from tests.test_sync import app_state, make_mail


def test_a_kept_connection_asks_with_a_noop_and_opens_nothing(make_mailbox, recorded_user):
    mailbox = make_mailbox(recorded_user)
    recorded_user.append(make_mail("One"))
    sync_mailbox(mailbox)
    second = sync_mailbox(mailbox)
    sessions.close_all()

    assert second.reports[0].skipped
    commands = recorded_user.rawlog_commands()
    assert commands.count("ENABLE QRESYNC") == 1  # one session (one login) for both syncs
    start = commands.index("ENABLE QRESYNC")
    ours = commands[start : commands.index("LOGOUT", start)]
    assert [c for c in ours if c.startswith(("SELECT", "STATUS", "EXAMINE"))] == ['SELECT "INBOX"']
    assert "NOOP" in ours[ours.index('SELECT "INBOX"') :]


def test_flag_changes_by_another_client_arrive_through_the_noop(shared_mailbox, mail_user):
    uid = mail_user.append(make_mail("Flag me"))
    sync_mailbox(shared_mailbox)
    mail_user.add_flags([uid], ["\\Flagged", "\\Seen"])

    report = sync_mailbox(shared_mailbox).reports[0]

    assert report.flag_updates == 1
    message = Message.objects.get(uid=uid)
    assert (message.flagged, message.seen) == (True, True)
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_new_mail_and_expunges_while_held_are_synced_in_full(shared_mailbox, mail_user):
    gone = mail_user.append(make_mail("Gone"))
    sync_mailbox(shared_mailbox)
    mail_user.expunge([gone])
    new = mail_user.append(make_mail("New"))

    report = sync_mailbox(shared_mailbox).reports[0]

    assert (report.new_messages, report.expunged) == (1, 1)
    assert Message.objects.get(uid=new).subject == "New"
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_a_change_made_during_a_sync_is_not_lost_by_the_next_noop(
    shared_mailbox, mail_user, monkeypatch
):
    """Another client flags a stored message while our sync is fetching new mail: the
    server tells us during the sync (and our FETCH drops it); the next sync must still
    see it, since a NOOP will not repeat it."""
    old = mail_user.append(make_mail("Old"))
    sync_mailbox(shared_mailbox)
    for i in range(3):
        mail_user.append(make_mail(f"New {i}"))
    from mailsync import store

    original = store.DjangoFolderStore.save_messages
    flagged: list[int] = []

    def save_then_flag(self, uidvalidity, messages):
        if not flagged:
            mail_user.add_flags([old], ["\\Flagged"])
            flagged.append(old)
        return original(self, uidvalidity, messages)

    monkeypatch.setattr(store.DjangoFolderStore, "save_messages", save_then_flag)
    monkeypatch.setattr("django.conf.settings.SYNC_BATCH_MESSAGES", 1)
    sync_mailbox(shared_mailbox)
    monkeypatch.setattr(store.DjangoFolderStore, "save_messages", original)

    sync_mailbox(shared_mailbox)

    assert Message.objects.get(uid=old).flagged
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_after_a_push_of_ours_the_next_sync_checks_in_full(shared_mailbox, mail_user, bob):
    """Our STORE's answers carry other clients' news too, and are dropped: the folder is
    no longer held, so the next sync asks the server (STATUS) instead of trusting a NOOP."""
    first = mail_user.append(make_mail("First"))
    second = mail_user.append(make_mail("Second"))
    sync_mailbox(shared_mailbox)
    set_flag(message=Message.objects.get(uid=first), flag=SEEN, on=True, actor=bob)
    mail_user.add_flags([second], ["\\Answered"])

    sync_mailbox(shared_mailbox)  # pushes \\Seen, then syncs

    assert Message.objects.get(uid=second).answered
    assert "\\Seen" in mail_user.flags()[first]
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_a_kept_connection_the_server_dropped_is_replaced(shared_mailbox, mail_user):
    mail_user.append(make_mail("One"))
    sync_mailbox(shared_mailbox)
    mail_user.kick()  # the server ends every session of this user
    mail_user.append(make_mail("Two"))

    result = sync_mailbox(shared_mailbox)

    assert result.reports[0].new_messages == 1
    assert comparable(app_state(shared_mailbox)) == comparable(server_state(mail_user))


def test_with_several_folders_an_unchanged_mailbox_selects_nothing(make_mailbox, recorded_user):
    """The folder synced last stays held (NOOP); the others are vouched for by STATUS,
    which leaves the held one selected."""
    mailbox = make_mailbox(recorded_user, folders=["INBOX", "Archive"])
    recorded_user.create_folder("Archive")
    recorded_user.append(make_mail("In the inbox"))
    archived = recorded_user.append(make_mail("Archived"), folder="Archive")
    sync_mailbox(mailbox)
    recorded_user.add_flags([archived], ["\\Flagged"], folder="Archive")

    second = sync_mailbox(mailbox)
    third = sync_mailbox(mailbox)
    sessions.close_all()

    assert {r.folder: r.flag_updates for r in second.reports} == {"INBOX": 0, "Archive": 1}
    assert Message.objects.get(folder__name="Archive", uid=archived).flagged
    assert [(r.folder, r.skipped) for r in third.reports] == [("INBOX", True), ("Archive", True)]
    commands = recorded_user.rawlog_commands()
    start = commands.index("ENABLE QRESYNC")  # our one session (the others are the helper's)
    ours = commands[start : commands.index("LOGOUT", start)]
    assert [c for c in ours if c.startswith("SELECT")] == ['SELECT "INBOX"', 'SELECT "Archive"']
    after_first_sync = ours[ours.index('SELECT "Archive"') :]
    assert after_first_sync.count("NOOP") >= 2


def test_a_kept_connection_that_stopped_answering_is_given_up_within_seconds(
    shared_mailbox, mail_user, monkeypatch
):
    """A NAT or firewall that forgot the connection: the NOOP never gets an answer. The
    next sync waits ALIVE_TIMEOUT for it, not the full read timeout, then connects anew."""
    import contextlib
    import os
    import signal
    import time

    from mailsync.engine.imap import news as imap_module

    monkeypatch.setattr(imap_module, "ALIVE_TIMEOUT", 0.5)
    mail_user.append(make_mail("One"))
    sync_mailbox(shared_mailbox)
    pids = [
        int(pid)
        for line in mail_user.server.doveadm("who", "-1").splitlines()
        if line.startswith(mail_user.address) and " imap " in f" {line} "
        for pid in line.split()[2:3]
    ]
    assert len(pids) == 1, mail_user.server.doveadm("who", "-1")
    os.kill(pids[0], signal.SIGSTOP)  # the server side of our kept session goes silent
    try:
        mail_user.append(make_mail("Two"))
        started = time.monotonic()
        result = sync_mailbox(shared_mailbox)
        elapsed = time.monotonic() - started
    finally:
        os.kill(pids[0], signal.SIGKILL)
        # SIGKILL ends even a stopped process; by now it may be gone, which is the point
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0], signal.SIGCONT)
    assert result.reports[0].new_messages == 1
    assert elapsed < 10, elapsed  # not the 60 s read timeout
