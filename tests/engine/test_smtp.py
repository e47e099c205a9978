"""The SMTP transport against a real aiosmtpd on loopback: TLS rules and typed errors."""

from __future__ import annotations

import ssl

import pytest
import trustme

from mailsync.engine.accounts import MailAccount
from mailsync.engine.errors import AuthenticationFailed, ServerUnreachable, TlsError
from mailsync.engine.smtp import MessageRefused, RecipientsRefused, send_message
from tests.support.smtp import (
    HOST,
    QUIET_AUTH_WARNING,
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpSink,
    free_port,
    smtp_server,
)
from tests.support.tls import RecordingRelay

pytestmark = pytest.mark.filterwarnings(QUIET_AUTH_WARNING)

RAW = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def account(port: int, security: str = "plain", password: str = SMTP_PASSWORD) -> MailAccount:
    return MailAccount("smtp", security, HOST, port, SMTP_USER, password)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="teaminbox smtp test CA")


@pytest.fixture(scope="module")
def server_tls(ca) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def send(acct: MailAccount, recipients=("b@example.org",), **kwargs):
    return send_message(
        acct, sender="a@example.org", recipients=list(recipients), raw=RAW, timeout=10, **kwargs
    )


def test_it_logs_in_and_delivers_over_plaintext_on_loopback():
    with smtp_server() as server:
        result = send(account(server.port))
    assert result.accepted == ("b@example.org",)
    [arrived] = server.received
    assert arrived.authenticated and arrived.raw == RAW


def test_a_wrong_password_is_an_authentication_failure():
    failure = pytest.raises(AuthenticationFailed, match="login refused for 'team-smtp'")
    with smtp_server() as server, failure:
        send(account(server.port, password="wrong"))
    assert server.received == []


def test_starttls_protects_the_password_and_verifies_the_certificate(server_tls, client_tls):
    with smtp_server(tls_context=server_tls) as server:
        relay = RecordingRelay(HOST, server.port).start()
        try:
            send(account(relay.port, "starttls"), ssl_context=client_tls)
        finally:
            relay.close()
    assert server.received and server.received[0].authenticated
    assert b"STARTTLS" in relay.client_bytes
    assert b"AUTH" not in relay.client_bytes and b"Subject: hi" not in relay.client_bytes


def test_an_untrusted_certificate_is_a_tls_error(server_tls):
    failure = pytest.raises(TlsError, match="certificate not trusted")
    with smtp_server(tls_context=server_tls) as server, failure:
        send(account(server.port, "starttls"))  # the system trust store
    assert server.received == []


def test_implicit_tls_is_verified_too(server_tls, client_tls):
    with smtp_server(implicit_tls=server_tls) as server:
        send(account(server.port, "tls"), ssl_context=client_tls)
        with pytest.raises(TlsError):
            send(account(server.port, "tls"))
    assert len(server.received) == 1


def test_it_refuses_to_continue_without_starttls_when_it_is_required():
    with smtp_server() as server, pytest.raises(TlsError, match="does not offer STARTTLS"):
        send(account(server.port, "starttls"))
    assert server.received == [] and server.sink.auth_attempts == []


def test_an_unreachable_server_is_transient():
    with pytest.raises(ServerUnreachable, match="connection refused") as caught:
        send(account(free_port()))
    assert caught.value.transient


def test_refused_recipients_are_reported_and_the_rest_delivered():
    sink = SmtpSink(refuse_rcpt={"nobody@example.org"})
    with smtp_server(sink=sink) as server:
        result = send(account(server.port), recipients=("b@example.org", "nobody@example.org"))
        with pytest.raises(RecipientsRefused) as caught:
            send(account(server.port), recipients=("nobody@example.org",))
    assert result.refused["nobody@example.org"][0] == 550
    assert server.received[0].rcpt_tos == ("b@example.org",)
    assert len(server.received) == 1 and not caught.value.transient


def test_a_temporary_refusal_of_the_message_is_transient():
    sink = SmtpSink(data_answer="451 4.3.0 try again later")
    with smtp_server(sink=sink) as server, pytest.raises(MessageRefused) as caught:
        send(account(server.port))
    assert caught.value.transient and caught.value.code == 451
