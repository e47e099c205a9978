"""Typed errors: transient ones are retried, permanent ones stop and tell the admin."""

from __future__ import annotations

import socket
import ssl


class MailError(Exception):
    """Base class; ``str(error)`` is one line fit for an admin or a terminal."""

    transient = False


class ConfigurationError(MailError):
    """The account description itself is wrong (bad URL, missing password)."""


class ServerUnreachable(MailError):
    """Connection refused, DNS failure, timeout, dropped connection: try again later."""

    transient = True


class AuthenticationFailed(MailError):
    """The server refused the credentials: retrying will not help until someone fixes them."""


class TlsError(MailError):
    """The certificate could not be verified or the TLS handshake failed."""


class ProtocolError(MailError):
    """The server answered something we cannot work with (NO/BAD to a required command)."""

    transient = True


class FolderMissing(MailError):
    """A folder chosen for sync does not exist on the server."""


def describe_os_error(exc: BaseException) -> str:
    """A network failure in a few words, for a one-line error."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or exc.__class__.__name__


def tls_failure(where: str, exc: ssl.SSLError) -> TlsError:
    """One line for a TLS problem: an untrusted certificate (wrong CA, wrong host name)
    or any other failure of the handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsError(f"{where}: certificate not trusted ({exc.verify_message})")
    return TlsError(f"{where}: TLS failed ({exc.reason or exc})")
