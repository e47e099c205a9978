"""Outgoing mail: what staff type, checked and turned into the exact bytes we send.

Pure Python, no Django. Everything a person types into a header (subject, names,
addresses) is refused when it holds CR, LF or another control character: folding is the
generator's job (``policy.SMTP``), and a line break typed by a person is never one we keep,
so a header can never be injected. The body is always 7-bit clean (quoted-printable when
it is not ASCII) so no server needs 8BITMIME.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

# The RFC 5322 dot-atom local part and a host name; ASCII only (no SMTPUTF8 yet).
_ADDR_SPEC = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$"
)
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg|tr)\s*:", re.IGNORECASE)
MAX_SUBJECT = 900  # one 998-octet line, less the header name, even before folding
MAX_REFERENCES = 20  # RFC 5322 §3.6.4 lets a client trim; keep the first and the newest


class HeaderError(ValueError):
    """A value typed for a header cannot be used; ``str()`` is a sentence for a form."""


@dataclass(frozen=True)
class Recipient:
    name: str
    address: str

    def display(self) -> str:
        """``Name <a@example.org>`` as a person would type it (quoted where RFC 5322 needs
        it, never RFC 2047-encoded), so it reads back through ``parse_address_list``."""
        if not self.name:
            return self.address
        name = self.name
        if _SPECIALS.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{self.address}>"


@dataclass(frozen=True)
class OutgoingAttachment:
    filename: str
    content_type: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class OutgoingMail:
    """Everything that goes into one message; ``build_message`` turns it into bytes."""

    sender: Recipient
    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...]
    subject: str
    body: str
    message_id: str  # with angle brackets, as make_msgid() returns it
    date: datetime
    in_reply_to: str = ""  # without angle brackets
    references: tuple[str, ...] = ()  # without angle brackets, oldest first
    attachments: tuple[OutgoingAttachment, ...] = ()


def check_header_text(value: str, what: str) -> str:
    """Refuse line breaks and control characters in a value meant for one header."""
    if _CONTROL.search(value):
        raise HeaderError(f"{what} must be one line, without control characters.")
    return value.strip()


def check_address(address: str) -> str:
    address = check_header_text(address, "An address")
    if not _ADDR_SPEC.match(address):
        raise HeaderError(f"{address!r} is not an e-mail address we can send to.")
    return address


def parse_address_list(text: str, what: str = "This field") -> tuple[Recipient, ...]:
    """``Name <a@example.org>, b@example.org`` -> recipients, or HeaderError.

    Parsed with the standard library's RFC 5322 parser (not ``getaddresses``, which in
    Python 3.11 accepts ambiguous lists, CVE-2023-27043); any invalid-address defect, a
    group, or an address outside plain ``local@host.domain`` is refused rather than guessed.
    """
    check_header_text(text, what)
    if not text.strip():
        return ()
    header = policy.default.header_factory("to", text)
    invalid = [d for d in header.defects if "invalid" in type(d).__name__.lower()]
    if invalid:
        raise HeaderError(f"{what}: cannot read {text.strip()!r} as a list of addresses.")
    recipients: list[Recipient] = []
    for group in header.groups:
        if group.display_name is not None:
            raise HeaderError(f"{what}: address groups are not supported.")
        for address in group.addresses:
            name = check_header_text(str(address.display_name), "A name")
            recipients.append(Recipient(name=name, address=check_address(address.addr_spec)))
    # A cheap cross-check against parser surprises: every "@" typed is accounted for.
    typed = text.count("@")
    parsed = sum(r.address.count("@") + r.name.count("@") for r in recipients)
    if typed != parsed:
        raise HeaderError(f"{what}: cannot read {text.strip()!r} as a list of addresses.")
    return tuple(recipients)


def format_address_list(recipients: Iterable[Recipient]) -> str:
    return ", ".join(r.display() for r in recipients)


def unique_recipients(
    recipients: Iterable[Recipient], *, exclude: Iterable[str] = ()
) -> tuple[Recipient, ...]:
    """Drop repeats (addresses compare case-insensitively) and the excluded addresses."""
    seen = {a.lower() for a in exclude if a}
    result = []
    for recipient in recipients:
        key = recipient.address.lower()
        if not key or key in seen:
            continue
        seen.add(key)
        result.append(recipient)
    return tuple(result)


def reply_subject(subject: str) -> str:
    """``Re: `` once: ``Re: Re: AW: x`` and ``x`` both give ``Re: x``."""
    rest = _REPLY_PREFIX.sub("", one_line(subject))
    return f"Re: {rest}".strip()


def forward_subject(subject: str) -> str:
    subject = one_line(subject)
    if _FORWARD_PREFIX.match(subject):
        return subject
    return f"Fwd: {subject}".strip()


def one_line(text: str) -> str:
    """Whitespace (line breaks included) collapsed: for prefilling from received headers."""
    return " ".join(_CONTROL.sub(" ", text).split())


def quote_body(text: str, *, attribution: str) -> str:
    """``On <date>, <sender> wrote:`` then the original with ``> `` before each line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    # already quoted lines become ">>" (what most clients do), others "> "
    quoted = "\n".join(
        (">" + line if line.startswith(">") else "> " + line).rstrip() for line in lines
    )
    return f"\n\n{attribution}\n{quoted}\n"


def references_for(message_id: str, references: Sequence[str]) -> tuple[str, ...]:
    """RFC 5322 §3.6.4: the parent's References (or In-Reply-To) plus the parent's id."""
    chain = [r for r in references if r and r != message_id]
    if message_id:
        chain.append(message_id)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    return tuple(chain)


def build_message(mail: OutgoingMail) -> bytes:
    """The exact bytes for SMTP and for the Sent folder (CRLF line ends, 7-bit clean).

    Raises HeaderError when a header value could still smuggle a line break (the stdlib
    refuses those too: ``policy.header_store_parse``); the form should have caught it.
    """
    subject = check_header_text(mail.subject, "The subject")
    if len(subject) > MAX_SUBJECT:
        raise HeaderError(f"The subject is too long (at most {MAX_SUBJECT} characters).")
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = _address(mail.sender)
    if mail.to:
        message["To"] = [_address(r) for r in mail.to]
    if mail.cc:
        message["Cc"] = [_address(r) for r in mail.cc]
    message["Subject"] = subject
    message["Date"] = format_datetime(mail.date)
    message["Message-ID"] = check_header_text(mail.message_id, "The Message-ID")
    if mail.in_reply_to:
        message["In-Reply-To"] = f"<{check_header_text(mail.in_reply_to, 'In-Reply-To')}>"
    if mail.references:
        message["References"] = " ".join(
            f"<{check_header_text(r, 'References')}>" for r in mail.references
        )
    message["MIME-Version"] = "1.0"
    body = mail.body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    cte = "7bit" if body.isascii() and _short_lines(body) else "quoted-printable"
    message.set_content(body, subtype="plain", charset="utf-8", cte=cte)
    for attachment in mail.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not maintype or not subtype or _CONTROL.search(attachment.content_type):
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(
            attachment.payload,
            maintype=maintype,
            subtype=subtype,
            filename=one_line(attachment.filename) or "attachment.bin",
        )
    return message.as_bytes(policy=policy.SMTP)


def _address(recipient: Recipient) -> Address:
    name = check_header_text(recipient.name, "A name")
    return Address(display_name=name, addr_spec=check_address(recipient.address))


def _short_lines(body: str) -> bool:
    return all(len(line) <= 900 for line in body.split("\n"))
