"""The test harness itself, against the real Dovecot: what every other test relies on."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.dovecot import (
    RAWLOG_CONFIG,
    DovecotFactory,
    DovecotServer,
    DovecotUnavailable,
    MailUser,
)
from tests.support.paths import shared_dir_or_skip

SPECIAL_USE = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk"}
SPECIAL_USE["Archive"] = "\\Archive"


def message(subject: str, body: str = "Hello.\r\n", newline: str = "\r\n") -> bytes:
    lines = [
        "From: Sender <sender@example.test>",
        "To: Support <support@example.test>",
        f"Subject: {subject}",
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>",
        "Date: Fri, 01 Mar 2024 10:00:00 +0000",
        "",
        body.rstrip("\r\n"),
        "",
    ]
    return newline.join(lines).encode()


def test_it_keeps_two_users_mailboxes_apart(dovecot: DovecotServer, mail_user: MailUser):
    other = dovecot.add_user("someone-else@example.test", "other-secret")
    mail_user.append(message("for the first user"))

    assert len(mail_user.uids()) == 1
    assert other.uids() == []


def test_it_lets_a_new_user_log_in_immediately(dovecot: DovecotServer):
    # Users are created back to back within the same second: a shared passwd-file would
    # not be re-read in time for about half of them.
    for n in range(10):
        user = dovecot.add_user(f"burst{n}@example.test", f"pw-{n}")
        with user.imap() as client:
            assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_it_returns_the_appended_uid_and_lists_it(mail_user: MailUser):
    first = mail_user.append(message("one"))
    second = mail_user.append(message("two"))

    assert second > first
    assert mail_user.uids() == [first, second]


def test_it_reads_back_the_exact_bytes_with_crlf_line_ends(mail_user: MailUser):
    crlf = message("crlf message", body="Line one.\r\nLine two.\r\n")
    lf = message("lf message", body="Bare LF here.\nAnd here.\n", newline="\n")

    crlf_uid = mail_user.append(crlf)
    lf_uid = mail_user.append(lf)

    assert mail_user.raw(crlf_uid) == crlf
    # IMAP literals are sent as-is, but Dovecot serves bare LFs back as CRLF.
    assert mail_user.raw(lf_uid) == lf.replace(b"\n", b"\r\n")


def test_it_does_not_mark_a_message_seen_by_reading_it(mail_user: MailUser):
    uid = mail_user.append(message("unread"))

    mail_user.raw(uid)

    assert mail_user.flags() == {uid: set()}


def test_it_round_trips_added_and_removed_flags(mail_user: MailUser):
    uid = mail_user.append(message("flags"), flags=["\\Seen"])
    assert mail_user.flags() == {uid: {"\\Seen"}}

    mail_user.add_flags([uid], ["\\Flagged", "$Label1"])
    assert mail_user.flags() == {uid: {"\\Seen", "\\Flagged", "$Label1"}}

    mail_user.remove_flags([uid], ["\\Seen", "$Label1"])
    assert mail_user.flags() == {uid: {"\\Flagged"}}


def test_it_expunges_exactly_the_given_uids(mail_user: MailUser):
    uids = [mail_user.append(message(f"message {n}")) for n in range(4)]
    # Another client's \Deleted mark must survive: UID EXPUNGE is not EXPUNGE.
    mail_user.add_flags([uids[0]], ["\\Deleted"])

    mail_user.expunge([uids[1], uids[3]])

    assert mail_user.uids() == [uids[0], uids[2]]
    assert mail_user.flags()[uids[0]] == {"\\Deleted"}


def test_it_creates_the_special_use_folders(mail_user: MailUser):
    folders = mail_user.folders()

    for name, attribute in SPECIAL_USE.items():
        assert attribute in folders[name], folders
    assert "INBOX" in folders


def test_it_creates_folders_and_reports_a_uidvalidity_for_each(mail_user: MailUser):
    mail_user.create_folder("Projects/2024")

    assert "Projects/2024" in mail_user.folders()
    assert mail_user.uidvalidity("Projects/2024") > 0
    uid = mail_user.append(message("filed"), folder="Projects/2024")
    assert mail_user.uids("Projects/2024") == [uid]


def test_it_changes_uidvalidity_through_doveadm(mail_user: MailUser):
    mail_user.append(message("before the rebuild"))
    old = mail_user.uidvalidity()

    mail_user.set_uidvalidity(old + 1000)

    assert mail_user.uidvalidity() == old + 1000


def test_it_saves_through_doveadm_like_local_delivery(mail_user: MailUser):
    raw = message("delivered")

    mail_user.doveadm_save(raw)

    [uid] = mail_user.uids()
    assert mail_user.raw(uid) == raw


def test_it_bulk_loads_a_maildir_that_dovecot_picks_up(mail_user: MailUser):
    mail_user.append(message("already there"))
    raws = [message(f"bulk {n}") for n in range(50)]

    assert mail_user.deliver_bulk(raws, flags=["\\Seen"]) == 50

    uids = mail_user.uids()
    assert len(uids) == 51
    flags = mail_user.flags()
    assert [flags[uid] for uid in uids[1:]] == [{"\\Seen"}] * 50
    assert mail_user.raw(uids[-1]) == raws[-1]


def test_it_answers_pop3_with_ok(dovecot: DovecotServer, mail_user: MailUser):
    mail_user.append(message("for pop3"))
    with socket.create_connection((dovecot.host, dovecot.pop3_port), timeout=5) as sock:
        stream = sock.makefile("rwb")
        assert stream.readline().startswith(b"+OK")
        for command in (f"USER {mail_user.address}", f"PASS {mail_user.password}", "STAT"):
            stream.write(command.encode() + b"\r\n")
            stream.flush()
            reply = stream.readline()
            assert reply.startswith(b"+OK"), (command, reply)
        assert reply.split()[1] == b"1"


def test_it_records_the_commands_a_client_sent_with_rawlog(
    dovecot_factory: DovecotFactory,
):
    server = dovecot_factory("rawlog", RAWLOG_CONFIG)
    user = server.add_user("recorded@example.test", "secret")
    user.enable_rawlog()
    uid = user.append(message("watched"))

    with user.imap() as client:
        client.select_folder("INBOX")
        client.add_flags([uid], ["\\Seen"], silent=True)
        client.add_flags([uid], ["\\Seen"], silent=True)

    stores = [line for line in user.rawlog_commands() if line.startswith("UID STORE")]
    assert stores == [f"UID STORE {uid} +FLAGS.SILENT (\\Seen)"] * 2


def test_it_kicks_a_users_open_sessions(mail_user: MailUser):
    mail_user.kick()  # nobody logged in yet: not an error

    with mail_user.imap() as client:
        client.select_folder("INBOX")
        mail_user.kick()
        # doveadm kick returns once it has signalled the session's process, which may
        # still be closing the connection: the next NOOPs answer until it has.
        deadline = time.monotonic() + 10
        with pytest.raises((OSError, client.AbortError)):
            while time.monotonic() < deadline:
                client.noop()


def test_it_fails_on_a_missing_corpus_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match="did not run"):
        shared_dir_or_skip(tmp_path / "missing", "the MIME corpus")


def test_it_skips_on_a_missing_corpus_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match="the MIME corpus not found"):
        shared_dir_or_skip(tmp_path / "missing", "the MIME corpus")


def test_it_finds_the_shared_corpus_in_place(corpus_dir, xss_dir):
    assert (corpus_dir / "MANIFEST.tsv").is_file()
    assert any(xss_dir.iterdir())


def test_it_refuses_to_start_dovecot_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)

    with pytest.raises(DovecotUnavailable, match="must run as root"):
        DovecotServer.start(tmp_path, "unprivileged")
