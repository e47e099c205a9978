"""A real SMTP server on loopback (aiosmtpd) that keeps what arrived, for reply tests.

Optionally requires AUTH (allowed over plaintext: loopback only) and offers STARTTLS with a
given certificate context.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"
# AUTH over plaintext is what the loopback tests want: modules using smtp_server() add
# ``pytest.mark.filterwarnings(QUIET_AUTH_WARNING)``.
QUIET_AUTH_WARNING = "ignore:Requiring AUTH while not requiring TLS:UserWarning"
SMTP_USER = "team-smtp"
SMTP_PASSWORD = "smtp-secret-1"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    authenticated: bool

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class SmtpSink:
    """Handler: records every message the server accepted."""

    received: list[Received] = field(default_factory=list)
    refuse_rcpt: set[str] = field(default_factory=set)  # answered 550
    data_answer: str | None = None  # e.g. "451 try later": refuse every message
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.refuse_rcpt:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_answer is not None:
            return self.data_answer
        with self.lock:
            self.received.append(
                Received(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=tuple(str(r) for r in envelope.rcpt_tos),
                    raw=bytes(envelope.original_content or envelope.content),
                    authenticated=bool(session.authenticated),
                )
            )
        return "250 2.0.0 Ok: queued as TEST"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        password = auth_data.password.decode()
        with self.lock:
            self.auth_attempts.append((login, password))
        ok = login == SMTP_USER and password == SMTP_PASSWORD
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningSmtp:
    sink: SmtpSink
    port: int
    host: str = HOST

    @property
    def received(self) -> list[Received]:
        return self.sink.received


@contextlib.contextmanager
def smtp_server(
    *,
    require_auth: bool = True,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    sink: SmtpSink | None = None,
) -> Iterator[RunningSmtp]:
    """``tls_context``: offer (and require) STARTTLS; ``implicit_tls``: TLS from the first
    byte (port 465 style)."""
    sink = sink or SmtpSink()
    port = free_port()
    kwargs: dict[str, Any] = {}
    if require_auth:
        kwargs.update(authenticator=sink.authenticator, auth_required=True, auth_require_tls=False)
    if tls_context is not None:
        kwargs.update(tls_context=tls_context, require_starttls=True, auth_require_tls=True)
    controller = Controller(sink, hostname=HOST, port=port, ssl_context=implicit_tls, **kwargs)
    controller.start()
    try:
        yield RunningSmtp(sink=sink, port=port)
    finally:
        controller.stop()
