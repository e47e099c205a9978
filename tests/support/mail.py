"""Sample mail and small steps that many tests share."""

from __future__ import annotations

from typing import Any

from django.test import Client

from tests.support.personas import PASSWORD

# "SHARED" stands for the shared mailbox's address (see ``receive``).
INVOICE_WITH_ATTACHMENT = b"""\
From: Carol Customer <carol@example.org>
To: SHARED
Subject: Invoice attached
Message-ID: <invoice-1@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

See attachment.
--b1
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b1--
"""


def receive(mail_user: Any, mailbox: Any, raw: bytes) -> Any:
    """Deliver ``raw`` to the mailbox on Dovecot, sync, and return its Message row."""
    from mailsync.models import Message
    from mailsync.runner import sync_mailbox

    uid = mail_user.append(raw.replace(b"SHARED", mailbox.email_address.encode()))
    sync_mailbox(mailbox)
    return Message.objects.get(folder__mailbox=mailbox, folder__name="INBOX", uid=uid)


def client_for(user: Any) -> Client:
    """A test client logged in as ``user`` (a persona)."""
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client
