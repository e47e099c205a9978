"""Send one message through a submission server (smtplib), with typed errors.

Pure Python, no Django. Security rules, the same as for IMAP:

- ``tls``: implicit TLS; ``starttls``: STARTTLS is required, never a silent fallback (a
  server, or a man in the middle, that does not offer it gets no password and no mail);
  certificates are verified (``ssl.create_default_context()``) unless a caller passes its
  own context.
- ``plain``: no TLS. Credentials are sent only to a loopback host; elsewhere the message
  goes unauthenticated (a trusted relay) or not at all.

Delivery is split at DATA so the caller can tell "certainly not sent" (safe to retry) from
"perhaps sent" (``DeliveryUncertain``: the connection broke after the body went out and
before the server's answer; RFC 5321 §4.1.1.4 / §6.1 — retrying could deliver twice).
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailsync.engine.accounts import MailAccount
from mailsync.engine.errors import (
    AuthenticationFailed,
    ConfigurationError,
    MailError,
    ServerUnreachable,
    TlsError,
    describe_os_error,
    tls_failure,
)
from mailsync.engine.tls import default_context


class MessageRefused(MailError):
    """The server answered MAIL FROM or DATA with an error: 4xx is worth another try."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.transient = 400 <= code < 500


class RecipientsRefused(MailError):
    """Every recipient was refused, so nothing was sent."""

    def __init__(self, message: str, *, refused: dict[str, tuple[int, str]]) -> None:
        super().__init__(message)
        self.refused = refused
        self.transient = all(400 <= code < 500 for code, _ in refused.values())


class DeliveryUncertain(MailError):
    """The body was sent but no answer came back: the mail may or may not have gone out.

    Never retried automatically; a person checks (the recipient, the Sent folder) first."""


@dataclass(frozen=True)
class SmtpResult:
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    reply: str = ""  # the server's answer to the end of DATA (often carries a queue id)


def send_message(
    account: MailAccount,
    *,
    sender: str,
    recipients: Sequence[str],
    raw: bytes,
    timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
) -> SmtpResult:
    """Submit ``raw`` (CRLF line ends, 7-bit clean) for ``recipients``.

    Raises ``MailError`` subclasses: ``ServerUnreachable`` / ``MessageRefused`` (4xx) /
    ``RecipientsRefused`` (all 4xx) are transient and certainly not delivered;
    ``AuthenticationFailed``, ``TlsError``, ``ConfigurationError`` are permanent;
    ``DeliveryUncertain`` means the message may have been delivered.
    """
    if not recipients:
        raise ConfigurationError("no recipients")
    where = f"{account.host}:{account.port}"
    context = ssl_context or default_context()
    client = _connect(account, context, timeout, where)
    try:
        _secure_and_login(client, account, context, where)
        return _transaction(client, sender, recipients, raw, where)
    finally:
        with contextlib.suppress(Exception):
            client.quit()
        with contextlib.suppress(Exception):
            client.close()


def _connect(
    account: MailAccount, context: ssl.SSLContext, timeout: float, where: str
) -> smtplib.SMTP:
    # The host goes to the constructor (which connects): only there does smtplib keep it
    # as the TLS server_hostname, which certificate checks (and STARTTLS) need.
    # local_hostname is given, then replaced by our address literal: smtplib would
    # otherwise call getfqdn(), a reverse DNS lookup that can stall for seconds.
    client: smtplib.SMTP
    try:
        if account.security == "tls":
            client = smtplib.SMTP_SSL(
                account.host,
                account.port,
                local_hostname="localhost",
                timeout=timeout,
                context=context,
            )
        else:
            client = smtplib.SMTP(
                account.host, account.port, local_hostname="localhost", timeout=timeout
            )
    except ssl.SSLError as exc:
        raise tls_failure(where, exc) from exc
    except smtplib.SMTPConnectError as exc:
        raise ServerUnreachable(
            f"{where}: the server is not accepting mail ({exc.smtp_code} {_text(exc.smtp_error)})"
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise ServerUnreachable(f"cannot connect to {where}: {describe_os_error(exc)}") from exc
    client.local_hostname = _address_literal(client)
    return client


def _secure_and_login(
    client: smtplib.SMTP, account: MailAccount, context: ssl.SSLContext, where: str
) -> None:
    try:
        client.ehlo()
        if account.security == "starttls":
            if not client.has_extn("starttls"):
                raise TlsError(
                    f"{where}: the server does not offer STARTTLS; "
                    "refusing to send mail or a password in clear"
                )
            client.starttls(context=context)
            client.ehlo()
        may_send_password = account.security in {"tls", "starttls"} or account.is_loopback
        if client.has_extn("auth") and account.password and may_send_password:
            client.login(account.username, account.password)
    except smtplib.SMTPAuthenticationError as exc:
        answer = f"{exc.smtp_code} {_text(exc.smtp_error)}"
        raise AuthenticationFailed(
            f"{where}: login refused for {account.username!r} ({answer})"
        ) from exc
    except ssl.SSLError as exc:
        raise tls_failure(where, exc) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise TlsError(f"{where}: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        raise ServerUnreachable(
            f"{where}: the server refused the session ({exc.smtp_code} {_text(exc.smtp_error)})"
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise ServerUnreachable(f"{where}: connection lost ({describe_os_error(exc)})") from exc


def _transaction(
    client: smtplib.SMTP, sender: str, recipients: Sequence[str], raw: bytes, where: str
) -> SmtpResult:
    refused: dict[str, tuple[int, str]] = {}
    try:
        code, answer = client.mail(sender)
        if code != 250:
            client.rset()
            raise MessageRefused(
                f"{where}: sender {sender} refused ({code} {_text(answer)})"
                + (" — the server wants a login, sent only over TLS" if code == 530 else ""),
                code=code,
            )
        accepted = []
        for recipient in recipients:
            code, answer = client.rcpt(recipient)
            if code in (250, 251):
                accepted.append(recipient)
            else:
                refused[recipient] = (code, _text(answer))
        if not accepted:
            client.rset()
            listed = "; ".join(f"{r}: {c} {a}" for r, (c, a) in refused.items())
            raise RecipientsRefused(f"{where}: every recipient refused ({listed})", refused=refused)
    except MailError:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        raise ServerUnreachable(
            f"{where}: connection lost before sending ({describe_os_error(exc)})"
        ) from exc
    try:
        code, answer = client.data(raw)
    except smtplib.SMTPDataError as exc:
        # an explicit refusal (of DATA or of the body): certainly not delivered
        raise MessageRefused(
            f"{where}: message refused ({exc.smtp_code} {_text(exc.smtp_error)})",
            code=exc.smtp_code,
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryUncertain(
            f"{where}: the connection broke while sending the message ({describe_os_error(exc)}); "
            "it may have been delivered"
        ) from exc
    if code != 250:  # smtplib's data() returns the final answer rather than raising
        raise MessageRefused(f"{where}: message refused ({code} {_text(answer)})", code=code)
    return SmtpResult(accepted=tuple(accepted), refused=refused, reply=f"{code} {_text(answer)}")


def _address_literal(client: smtplib.SMTP) -> str:
    """EHLO argument: an address literal (RFC 5321 §4.1.3) rather than a guessed name."""
    try:
        host = client.sock.getsockname()[0] if client.sock else "127.0.0.1"
    except OSError:
        return "[127.0.0.1]"
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
