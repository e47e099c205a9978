"""Mail account descriptions and the ``imap://user:pass@host:port`` URL form."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from mailsync.engine.errors import ConfigurationError

# scheme -> (protocol, security, default port)
SCHEMES: dict[str, tuple[str, str, int]] = {
    "imap": ("imap", "plain", 143),
    "imaps": ("imap", "tls", 993),
    "imap+starttls": ("imap", "starttls", 143),
    "pop3": ("pop3", "plain", 110),
    "pop3s": ("pop3", "tls", 995),
}


@dataclass(frozen=True)
class MailAccount:
    protocol: str  # "imap" | "pop3" | "smtp"
    security: str  # "tls" | "starttls" | "plain"
    host: str
    port: int
    username: str
    password: str = field(repr=False)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_account_url(url: str, *, password: str | None = None) -> MailAccount:
    """Parse ``scheme://user[:password]@host[:port]``; user and password are percent-encoded.

    ``password`` fills in when the URL carries none. Raises ``ConfigurationError`` with a
    sentence a person can act on.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"not a valid mailbox URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        allowed = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigurationError(f"unsupported scheme {scheme!r}: use one of {allowed}")
    if not parts.hostname:
        raise ConfigurationError("the URL names no host")
    if not parts.username:
        raise ConfigurationError("the URL names no user (scheme://user@host:port)")
    protocol, security, default_port = SCHEMES[scheme]
    url_password = unquote(parts.password) if parts.password is not None else None
    final_password = url_password if url_password is not None else password
    if final_password is None:
        raise ConfigurationError("no password given")
    return MailAccount(
        protocol=protocol,
        security=security,
        host=parts.hostname,
        port=port or default_port,
        username=unquote(parts.username),
        password=final_password,
    )
