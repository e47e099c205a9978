"""The IMAP session's TLS against a real Dovecot with trustme certificates: STARTTLS and
implicit TLS work with a trusted CA, an untrusted CA or the wrong host name is refused with
one clear line, and the password never crosses the wire in clear.

Every connection goes through a recording relay (tests/support/tls.py), so the tests read
the bytes the client really sent instead of trusting the session's own account of them."""

from __future__ import annotations

import secrets
import ssl

import pytest
import trustme

from mailsync.engine.accounts import MailAccount
from mailsync.engine.errors import MailError, TlsError
from mailsync.engine.imap import ImapSession
from tests.support.dovecot import DovecotFactory, DovecotServer, MailUser
from tests.support.tls import (
    RecordingRelay,
    TlsDovecot,
    recording_relay,
    start_tls_dovecot,
    write_server_certificate,
)

# The first byte of a TLS record carrying a handshake message (the ClientHello).
TLS_HANDSHAKE_RECORD = b"\x16"


@pytest.fixture(scope="module")
def test_ca() -> trustme.CA:
    return trustme.CA(organization_name="teaminbox test CA")


@pytest.fixture(scope="module")
def tls_dovecot(
    dovecot_factory: DovecotFactory, tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA
) -> TlsDovecot:
    """A Dovecot whose certificate (from `test_ca`) names 127.0.0.1 and localhost."""
    certificate = write_server_certificate(
        test_ca, tmp_path_factory.mktemp("tls-cert"), "127.0.0.1", "localhost"
    )
    return start_tls_dovecot(dovecot_factory, "tls", certificate)


@pytest.fixture(scope="module")
def wrong_host_dovecot(
    dovecot_factory: DovecotFactory, tmp_path_factory: pytest.TempPathFactory, test_ca: trustme.CA
) -> TlsDovecot:
    """A Dovecot on 127.0.0.1 whose certificate (also from `test_ca`) names another host."""
    certificate = write_server_certificate(
        test_ca, tmp_path_factory.mktemp("tls-wrong-host-cert"), "mail.example.org"
    )
    return start_tls_dovecot(dovecot_factory, "tls-wrong-host", certificate)


def new_user(server: DovecotServer) -> MailUser:
    return server.add_user(
        f"tls-{secrets.token_hex(4)}@example.test", f"pw-{secrets.token_urlsafe(12)}"
    )


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """The default client context (hostname check on) that also trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def account_via(relay: RecordingRelay, user: MailUser, security: str) -> MailAccount:
    return MailAccount(
        protocol="imap",
        security=security,
        host=relay.host,
        port=relay.port,
        username=user.address,
        password=user.password,
    )


def port_for(server: TlsDovecot, security: str) -> int:
    return server.imaps_port if security == "tls" else server.server.imap_port


def assert_one_clear_line(error: MailError) -> None:
    text = str(error)
    assert "\n" not in text
    assert "Traceback" not in text
    assert len(text) < 300


# --- trusted: login works, and it really is TLS ----------------------------------------------


def test_starttls_with_the_test_ca_trusted_logs_in_over_an_encrypted_connection(
    tls_dovecot: TlsDovecot, test_ca: trustme.CA
):
    user = new_user(tls_dovecot.server)

    with recording_relay(tls_dovecot.server.host, tls_dovecot.server.imap_port) as relay:
        with ImapSession.open(
            account_via(relay, user, "starttls"), ssl_context=trusting(test_ca), timeout=10
        ) as session:
            sock = session._client._imap.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() in {"TLSv1.2", "TLSv1.3"}
            assert sock.cipher() is not None
            assert "INBOX" in {folder.name for folder in session.list_folders()}
        sent = relay.client_bytes

    # In clear: only commands up to STARTTLS; right after it the TLS handshake begins.
    clear, starttls, encrypted = sent.partition(b"STARTTLS\r\n")
    assert starttls, f"no STARTTLS was sent: {sent[:200]!r}"
    assert b"LOGIN" not in clear.upper()
    assert b"AUTHENTICATE" not in clear.upper()
    assert encrypted.startswith(TLS_HANDSHAKE_RECORD)
    assert user.password.encode() not in sent
    assert user.address.encode() not in sent


def test_implicit_tls_with_the_test_ca_trusted_logs_in_over_an_encrypted_connection(
    tls_dovecot: TlsDovecot, test_ca: trustme.CA
):
    user = new_user(tls_dovecot.server)

    with recording_relay(tls_dovecot.server.host, tls_dovecot.imaps_port) as relay:
        with ImapSession.open(
            account_via(relay, user, "tls"), ssl_context=trusting(test_ca), timeout=10
        ) as session:
            sock = session._client._imap.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() in {"TLSv1.2", "TLSv1.3"}
            assert "INBOX" in {folder.name for folder in session.list_folders()}
        sent = relay.client_bytes

    # The very first byte on the wire is the ClientHello: nothing is said in clear.
    assert sent.startswith(TLS_HANDSHAKE_RECORD)
    assert b"STARTTLS" not in sent
    assert user.password.encode() not in sent
    assert user.address.encode() not in sent


# --- untrusted: refused with one clear line, before the password is sent ---------------------


@pytest.mark.parametrize("security", ["starttls", "tls"])
@pytest.mark.parametrize("trust", ["the system CAs", "another CA"])
def test_a_certificate_from_a_ca_the_client_does_not_trust_is_refused(
    tls_dovecot: TlsDovecot, security: str, trust: str
):
    user = new_user(tls_dovecot.server)
    context = None if trust == "the system CAs" else trusting(trustme.CA())

    with recording_relay(tls_dovecot.server.host, port_for(tls_dovecot, security)) as relay:
        with pytest.raises(TlsError) as caught:
            ImapSession.connect(account_via(relay, user, security), ssl_context=context, timeout=10)
        sent = relay.client_bytes

    assert "certificate not trusted" in str(caught.value)
    assert "unable to get local issuer certificate" in str(caught.value)
    assert_one_clear_line(caught.value)
    assert not caught.value.transient
    assert user.password.encode() not in sent


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_a_certificate_for_another_host_name_is_refused(
    wrong_host_dovecot: TlsDovecot, test_ca: trustme.CA, security: str
):
    user = new_user(wrong_host_dovecot.server)

    with recording_relay(
        wrong_host_dovecot.server.host, port_for(wrong_host_dovecot, security)
    ) as relay:
        with pytest.raises(TlsError) as caught:
            ImapSession.connect(
                account_via(relay, user, security), ssl_context=trusting(test_ca), timeout=10
            )
        sent = relay.client_bytes

    assert "certificate not trusted" in str(caught.value)
    assert "mismatch" in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert_one_clear_line(caught.value)
    assert user.password.encode() not in sent


def test_the_wrong_host_certificate_is_otherwise_valid_so_only_the_name_was_refused(
    wrong_host_dovecot: TlsDovecot, test_ca: trustme.CA
):
    # Control for the test above: same server and CA, hostname check off, chain still checked.
    user = new_user(wrong_host_dovecot.server)
    context = trusting(test_ca)
    context.check_hostname = False
    assert context.verify_mode == ssl.CERT_REQUIRED

    server = wrong_host_dovecot.server
    with (
        recording_relay(server.host, wrong_host_dovecot.imaps_port) as relay,
        ImapSession.open(account_via(relay, user, "tls"), ssl_context=context) as session,
    ):
        assert isinstance(session._client._imap.sock, ssl.SSLSocket)


# --- a server (or a man in the middle) that offers no STARTTLS -------------------------------


def test_the_password_never_crosses_in_clear_when_the_server_offers_no_starttls(
    dovecot: DovecotServer, mail_user: MailUser
):
    # The session's plain Dovecot has ssl = no: it does not announce STARTTLS, exactly what
    # a man in the middle stripping STARTTLS would show. Plain LOGIN would succeed there.
    with recording_relay(dovecot.host, dovecot.imap_port) as relay:
        with pytest.raises(MailError) as caught:
            ImapSession.connect(account_via(relay, mail_user, "starttls"), timeout=10)
        sent = relay.client_bytes

    assert mail_user.password.encode() not in sent
    assert b"LOGIN" not in sent.upper()
    assert b"AUTHENTICATE" not in sent.upper()
    assert_one_clear_line(caught.value)


def test_a_server_without_starttls_is_refused_as_a_tls_error_not_a_passing_outage(
    dovecot: DovecotServer, mail_user: MailUser
):
    account = MailAccount(
        protocol="imap",
        security="starttls",
        host=dovecot.host,
        port=dovecot.imap_port,
        username=mail_user.address,
        password=mail_user.password,
    )
    with pytest.raises(MailError) as caught:
        ImapSession.connect(account, timeout=10)

    # Retrying cannot help and an admin must look: a permanent TlsError, saying why.
    assert isinstance(caught.value, TlsError), repr(caught.value)
    assert not caught.value.transient
    assert "STARTTLS" in str(caught.value)
    assert_one_clear_line(caught.value)
