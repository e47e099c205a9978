"""The admin command line, run as real child processes against the test database."""

from __future__ import annotations

import socket

import pytest

from mailsync.models import Mailbox, Message
from teaminbox.models import Membership
from tests.support.mirror import comparable, parse_export, server_state
from tests.test_sync import make_mail

pytestmark = pytest.mark.django_db(transaction=True)


def url_for(user, password: str | None = None) -> str:
    from urllib.parse import quote

    secret = f":{quote(password, safe='')}" if password is not None else ""
    return f"imap://{quote(user.address, safe='')}{secret}@127.0.0.1:{user.server.imap_port}"


def test_it_adds_syncs_and_exports_exactly_what_the_server_has(manage, mail_user, bob):
    mail_user.append(make_mail("One"), flags=["\\Seen"])
    mail_user.append(make_mail("Two"), flags=["\\Flagged", "$Forwarded"])
    mail_user.append(make_mail("Filed"), folder="Archive")
    deleted = mail_user.append(make_mail("Marked deleted"))
    mail_user.add_flags([deleted], ["\\Deleted"])

    added = manage(
        "addmailbox",
        "support",
        "--url",
        url_for(mail_user),
        "--folders",
        "INBOX,Archive",
        "--members",
        "bob",
        env={"MAILBOX_PASSWORD": mail_user.password},
    )
    assert added.returncode == 0, added.stderr
    assert "added mailbox support" in added.stdout
    synced = manage("syncmailbox", "support", "--once")
    assert synced.returncode == 0, synced.stderr
    exported = manage("exportmailbox", "support")
    assert exported.returncode == 0, exported.stderr

    rows = parse_export(exported.stdout)
    assert comparable(rows) == comparable(server_state(mail_user, ["Archive", "INBOX"]))
    assert {r["subject"] for r in rows} == {"One", "Two", "Filed", "Marked deleted"}
    assert all(
        set(r)
        == {"folder", "uidvalidity", "uid", "flags", "sha256", "message_id", "subject", "size"}
        for r in rows
    )
    mailbox = Mailbox.objects.get(name="support")
    assert mailbox.password_encrypted and mail_user.password not in mailbox.password_encrypted
    assert Membership.objects.filter(mailbox=mailbox, user=bob).exists()


def test_it_returns_only_when_every_message_is_listed_and_extracted(manage, mail_user):
    # More than one extraction chunk, so the parallel path (a pool of processes) runs.
    raws = [make_mail(f"Bulk {n}", body=f"Body number {n}") for n in range(130)]
    mail_user.deliver_bulk(raws)
    manage("addmailbox", "support", "--url", url_for(mail_user, mail_user.password))

    synced = manage("syncmailbox", "support", "--once")

    assert synced.returncode == 0, synced.stderr
    assert "extracted text of 130 messages" in synced.stdout
    messages = Message.objects.filter(folder__mailbox__name="support")
    assert messages.count() == 130
    assert not messages.filter(extracted_at__isnull=True).exists()
    assert messages.get(subject="Bulk 77").text_body.strip() == "Body number 77"


def test_it_fails_in_one_line_on_a_wrong_password(manage, mail_user):
    manage("addmailbox", "support", "--url", url_for(mail_user, "not-the-password"))

    synced = manage("syncmailbox", "support", "--once")

    assert synced.returncode != 0
    lines = synced.stderr.strip().splitlines()
    assert len(lines) == 1, synced.stderr
    assert "login refused" in lines[0]
    assert "Traceback" not in synced.stderr


def test_it_fails_in_one_line_when_the_server_is_unreachable(manage):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manage("addmailbox", "support", "--url", f"imap://someone:pw@127.0.0.1:{port}")

    synced = manage("syncmailbox", "support", "--once")

    assert synced.returncode != 0
    lines = synced.stderr.strip().splitlines()
    assert len(lines) == 1, synced.stderr
    assert "connection refused" in lines[0]


def test_it_refuses_a_plaintext_url_to_a_remote_host(manage):
    added = manage("addmailbox", "support", "--url", "imap://someone:pw@mail.example.org:143")

    assert added.returncode != 0
    assert "plaintext" in added.stderr
    assert not Mailbox.objects.filter(name="support").exists()


def test_it_explains_a_malformed_url(manage):
    added = manage("addmailbox", "support", "--url", "http://someone:pw@localhost")

    assert added.returncode != 0
    assert "unsupported scheme" in added.stderr
    assert "Traceback" not in added.stderr


def test_it_refuses_a_pop3_url_with_a_sentence(manage):
    added = manage("addmailbox", "support", "--url", "pop3s://someone:pw@pop.example.org")

    assert added.returncode != 0
    assert "POP3 sync is not available yet; use imap://, imaps:// or imap+starttls://" in (
        added.stderr
    )
    assert "Traceback" not in added.stderr
    assert not Mailbox.objects.filter(name="support").exists()


def test_it_adds_a_member_of_staff_with_a_mailbox_and_a_one_time_password(
    manage, shared_mailbox, settings
):
    from django.conf import global_settings
    from django.contrib.auth.models import User

    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS  # the command's hasher

    added = manage("adduser", "dana", "--email", "dana@example.test", "--mailbox", "support")
    again = manage("adduser", "dana", "--mailbox", "support", "--role", "viewer")
    unknown = manage("adduser", "erin", "--mailbox", "sales")

    assert added.returncode == 0, added.stderr
    password = added.stdout.split("with password ")[1].split()[0]
    assert User.objects.get(username="dana").check_password(password)
    assert again.returncode == 0, again.stderr
    assert "the password is unchanged" in again.stdout
    assert Membership.objects.get(user__username="dana", mailbox=shared_mailbox).role == "viewer"
    assert unknown.returncode != 0
    assert "no mailbox named 'sales' (mailboxes: support)" in unknown.stderr
    assert not Membership.objects.filter(user__username="erin").exists()
