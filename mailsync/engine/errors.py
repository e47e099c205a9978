"""Typed errors: transient ones are retried, permanent ones stop and tell the admin."""

from __future__ import annotations

import ast
import re
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


# imaplib keeps the server's words as bytes and imapclient wraps them with str(), so an
# error's text arrives as "b'[AUTHENTICATIONFAILED] Authentication failed.'".
_BYTES_LITERAL = re.compile(r"""(?<!\w)b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
# RFC 3501 §7.1: a response code in brackets before the human-readable text.
_RESPONSE_CODE = re.compile(r"^\[([A-Za-z][\w.-]*)(?: [^\]]*)?\]\s*(.*)$", re.DOTALL)


def server_sentence(raw: object) -> str:
    """What a server said, as text a person reads: bytes and the Python repr of bytes
    decoded, a leading ``[CODE]`` written as ``CODE: text``, on one line."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = " ".join(_BYTES_LITERAL.sub(_decoded_literal, text).split())
    code = _RESPONSE_CODE.match(text)
    if code is not None:
        word, rest = code.group(1).upper(), code.group(2).strip()
        text = f"{word}: {rest}" if rest else word
    return text


def _decoded_literal(match: re.Match[str]) -> str:
    try:
        value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return match.group(0)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
