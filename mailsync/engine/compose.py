"""Outgoing mail: what staff type, checked and turned into the exact bytes we send.

Pure Python, no Django. Everything a person types into a header (subject, names,
addresses, file names) is refused when it holds CR, LF or another control character, as
typed and once its RFC 2047 encoded words (``=?utf-8?q?...?=``) are decoded the way a mail
client would: a hostile sender can encode line breaks in a subject that we prefill.

We write the header lines ourselves. The stdlib (``policy.SMTP``, Python 3.11) parses every
value it is given, decodes the encoded words in it and writes what they decode to, line
breaks included; so text a person typed is never handed to it. A literal ``=?...?=`` is
sent as an encoded word of its own, so that the recipient's client shows it as typed.
Finally the built bytes are parsed again and compared with what was meant
(``_read_back``): anything else refuses the send. The body is always 7-bit clean
(quoted-printable when it is not ASCII) so no server needs 8BITMIME.
"""

from __future__ import annotations

import base64
import contextlib
import email
import itertools
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import policy
from email.charset import Charset
from email.message import EmailMessage, Message
from email.quoprimime import header_decode
from email.utils import format_datetime, quote
from typing import Any

# The RFC 5322 dot-atom local part and a host name; ASCII only (no SMTPUTF8 yet).
_ADDR_SPEC = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$"
)
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg|tr)\s*:", re.IGNORECASE)
# RFC 2047 §2, found anywhere in a value: lenient clients (Thunderbird) decode encoded words
# inside words and quoted strings too, and the charset may carry an RFC 2231 language.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# Text we write as it is: printable ASCII words of a sane length, one space apart (folding
# happens at those spaces), with nothing a client could take for an encoded word.
_PLAIN = re.compile(r"[!-~]{1,70}( [!-~]{1,70})*")
# A msg-id as we copy it from a received message into In-Reply-To/References: printable ASCII
# without angle brackets or spaces (RFC 5322 §3.6.4, leniently), and no encoded word.
_MSG_ID = re.compile(r"[!-;=?-~]{1,250}")
_MIME_TYPE = re.compile(  # RFC 6838 §4.2: up to 127 characters each side
    r"([A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})/([A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})"
)
# A Unicode noncharacter (reserved for a program's internal use) stands in for "=?" while the
# stdlib reads an address list, so it never decodes an encoded word in a typed name.
_NOT_AN_ENCODED_WORD = "\ufdd0"
_UTF8 = Charset("utf-8")
_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
MAX_SUBJECT = 900  # one 998-octet line, less the header name, even before folding
MAX_REFERENCES = 20  # RFC 5322 §3.6.4 lets a client trim; keep the first and the newest
MAX_DECODING_ROUNDS = 4  # a subject encoded more often than this is refused, not unwrapped


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


# -- checking what people type -----------------------------------------------------------


def decoded_views(text: str) -> tuple[str, ...]:
    """What mail clients may show for ``text`` written raw into a header: the stdlib decodes
    the encoded words between words, a lenient client (Thunderbird) decodes them anywhere."""
    views = [_ENCODED_WORD.sub(_decode_word, text)]
    # the stdlib parser has failed on hostile input before; the first view stays then
    with contextlib.suppress(Exception):
        views.append(str(policy.default.header_factory("subject", text)))
    return tuple(views)


def check_header_text(value: str, what: str) -> str:
    """Refuse line breaks and control characters in a value meant for one header, as typed
    and as a client would show it once the encoded words in it are decoded."""
    if _CONTROL.search(value):
        raise HeaderError(f"{what} must be one line, without control characters.")
    if "=?" in value and any(_CONTROL.search(view) for view in decoded_views(value)):
        raise HeaderError(
            f"{what} must be one line, without control characters, also once the encoded "
            "words in it (=?…?=) are decoded."
        )
    return value.strip()


def check_address(address: str) -> str:
    address = check_header_text(address, "An address")
    if not _ADDR_SPEC.match(address) or "=?" in address:
        raise HeaderError(f"{address!r} is not an e-mail address we can send to.")
    return address


def usable_message_id(value: str) -> bool:
    """Whether a msg-id (without brackets) taken from received mail can be written back into
    In-Reply-To or References exactly as it came; a hostile one is left out of the thread."""
    return bool(_MSG_ID.fullmatch(value)) and "=?" not in value


def parse_address_list(text: str, what: str = "This field") -> tuple[Recipient, ...]:
    """``Name <a@example.org>, b@example.org`` -> recipients, or HeaderError.

    Parsed with the standard library's RFC 5322 parser (not ``getaddresses``, which in
    Python 3.11 accepts ambiguous lists, CVE-2023-27043); any invalid-address defect, a
    group, or an address outside plain ``local@host.domain`` is refused rather than guessed.
    Names are read as typed: a ``=?...?=`` in one is text, not an encoded word.
    """
    check_header_text(text, what)
    if not text.strip():
        return ()
    unreadable = HeaderError(f"{what}: cannot read {text.strip()!r} as a list of addresses.")
    if _NOT_AN_ENCODED_WORD in text:
        raise unreadable
    try:
        header = policy.default.header_factory("to", text.replace("=?", _NOT_AN_ENCODED_WORD))
        groups = list(header.groups)
    except Exception as exc:  # the stdlib parser raises more than ValueError on odd input
        raise unreadable from exc
    invalid = [d for d in header.defects if "invalid" in type(d).__name__.lower()]
    if invalid:
        raise unreadable
    recipients: list[Recipient] = []
    for group in groups:
        if group.display_name is not None:
            raise HeaderError(f"{what}: address groups are not supported.")
        for address in group.addresses:
            name = str(address.display_name).replace(_NOT_AN_ENCODED_WORD, "=?")
            spec = str(address.addr_spec).replace(_NOT_AN_ENCODED_WORD, "=?")
            recipients.append(
                Recipient(name=check_header_text(name, "A name"), address=check_address(spec))
            )
    # A cheap cross-check against parser surprises: every "@" typed is accounted for.
    typed = text.count("@")
    parsed = sum(r.address.count("@") + r.name.count("@") for r in recipients)
    if typed != parsed:
        raise unreadable
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


# -- prefilling from received mail -------------------------------------------------------


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
    """Whitespace (line breaks included) collapsed: for prefilling from received headers.

    Encoded words that a client would decode to control characters (a subject a hostile
    sender encoded twice) are decoded and flattened too, so that sending what was prefilled
    passes ``check_header_text``; a harmless literal ``=?...?=`` stays as it came.
    """
    text = _flatten(text)
    for _ in range(MAX_DECODING_ROUNDS):
        if "=?" not in text:
            break
        hostile = [view for view in decoded_views(text) if _CONTROL.search(view)]
        if not hostile:
            break
        text = _flatten(hostile[0])
    return text


def quote_body(text: str, *, attribution: str) -> str:
    """``On <date>, <sender> wrote:`` then the original with ``> `` before each line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    # already quoted lines become ">>" (what most clients do), others "> "
    quoted = "\n".join(
        (">" + line if line.startswith(">") else "> " + line).rstrip() for line in lines
    )
    return f"\n\n{attribution}\n{quoted}\n"


def references_for(message_id: str, references: Sequence[str]) -> tuple[str, ...]:
    """RFC 5322 §3.6.4: the parent's References (or In-Reply-To) plus the parent's id;
    ids that cannot be written back as they came are left out."""
    chain = [r for r in references if r and r != message_id and usable_message_id(r)]
    if message_id and usable_message_id(message_id):
        chain.append(message_id)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    return tuple(chain)


# -- building ----------------------------------------------------------------------------


def build_message(mail: OutgoingMail) -> bytes:
    """The exact bytes for SMTP and for the Sent folder (CRLF line ends, 7-bit clean).

    Raises HeaderError when a value cannot be sent as it is (the form should have caught
    it), or when the built bytes do not read back as exactly the headers, body and
    attachments meant: nothing else ever goes out.
    """
    subject = check_header_text(mail.subject, "The subject")
    if len(subject) > MAX_SUBJECT:
        raise HeaderError(f"The subject is too long (at most {MAX_SUBJECT} characters).")
    for msg_id in [mail.in_reply_to, *mail.references]:
        if msg_id and not usable_message_id(msg_id):
            raise HeaderError(f"{msg_id!r} cannot be used as a Message-ID.")
    if not usable_message_id(mail.message_id.removeprefix("<").removesuffix(">")):
        raise HeaderError(f"{mail.message_id!r} cannot be used as a Message-ID.")
    sender = _checked(mail.sender)
    to = tuple(_checked(r) for r in mail.to)
    cc = tuple(_checked(r) for r in mail.cc)
    body = mail.body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    attachments = tuple(_checked_attachment(a) for a in mail.attachments)

    message = EmailMessage(policy=policy.SMTP)
    # set_raw: the stdlib stores these lines as written; it would decode anything we set
    # with message[...] = value and write the result.
    message.set_raw("From", _address_lines("From", (sender,)))
    if to:
        message.set_raw("To", _address_lines("To", to))
    if cc:
        message.set_raw("Cc", _address_lines("Cc", cc))
    message.set_raw("Subject", _text_lines("Subject", subject))
    message.set_raw("Date", format_datetime(mail.date))
    message.set_raw("Message-ID", mail.message_id)
    if mail.in_reply_to:
        message.set_raw("In-Reply-To", f"<{mail.in_reply_to}>")
    if mail.references:
        message.set_raw("References", _fold("References", [f"<{r}>" for r in mail.references]))
    message["MIME-Version"] = "1.0"
    cte = "7bit" if body.isascii() and _short_lines(body) else "quoted-printable"
    message.set_content(body, subtype="plain", charset="utf-8", cte=cte)
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(attachment.payload, maintype=maintype, subtype=subtype)
        part = _parts(message)[-1]
        del part["Content-Disposition"]
        part.set_raw("Content-Disposition", _disposition(attachment.filename))
    # refold_source="none": the lines set above are written as they are, never re-parsed.
    raw = message.as_bytes(policy=policy.SMTP.clone(refold_source="none"))
    _read_back(
        raw,
        message,
        replace(mail, sender=sender, to=to, cc=cc),
        subject=subject,
        body=body,
        attachments=attachments,
    )
    return raw


def _checked(recipient: Recipient) -> Recipient:
    # The stdlib reads a run of spaces in a display name as one, quoted or encoded alike.
    name = re.sub(" +", " ", check_header_text(recipient.name, "A name"))
    return Recipient(name=name, address=check_address(recipient.address))


def _checked_attachment(attachment: OutgoingAttachment) -> OutgoingAttachment:
    filename = check_header_text(attachment.filename, "An attachment's name") or "attachment.bin"
    found = _MIME_TYPE.fullmatch(attachment.content_type.partition(";")[0].strip())
    content_type = found.group(0).lower() if found else "application/octet-stream"
    # A multipart or message type would make the bytes we attach read as MIME structure.
    if content_type.startswith(("multipart/", "message/")):
        content_type = "application/octet-stream"
    return OutgoingAttachment(filename, content_type, attachment.payload)


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, encoded = match.groups()
    try:
        if encoding in "bB":
            data = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        else:
            data = header_decode(encoded).encode("latin-1")
        return data.decode(charset.partition("*")[0], errors="replace")
    except (LookupError, ValueError):  # an unknown charset or broken base64: shown as is
        return match.group(0)


def _flatten(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


def _plain(text: str) -> bool:
    return bool(_PLAIN.fullmatch(text)) and "=?" not in text


def _fold(name: str, words: Sequence[str]) -> str:
    """The words one space apart, a line break before a word that would pass 78 characters
    (RFC 5322 §2.2.3: unfolding removes only the CRLF, so the space stays)."""
    lines = [f"{name}:"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > _LINE and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += " " + word
    return "\r\n".join(lines)[len(name) + 2 :]


def _text_lines(name: str, text: str) -> str:
    """An unstructured header (RFC 5322 §3.2.5): plain text as it is, anything else as
    UTF-8 encoded words, which every decoder joins without the spaces between them."""
    if not text or _plain(text):
        return _fold(name, text.split(" ") if text else [])
    first = _LINE - len(name) - 2
    lengths = itertools.chain([first], itertools.repeat(_LINE - 1))
    return _fold(name, [w for w in _UTF8.header_encode_lines(text, lengths) if w])


def _phrase(name: str) -> list[str]:
    """A display name's words. One encoded word when it needs encoding: the stdlib keeps
    the space between two encoded words of a name (RFC 2047 §6.2 says drop it), so a
    split name would not read back the same everywhere (RFC 2047's 75-character limit for
    one word gives way; the line stays far within RFC 5322's 998)."""
    if _plain(name):
        return (f'"{quote(name)}"' if _SPECIALS.search(name) else name).split(" ")
    word = _UTF8.header_encode(name)
    if len(word) > MAX_SUBJECT:
        raise HeaderError("A name is too long.")
    return [word]


def _address_lines(name: str, recipients: Sequence[Recipient]) -> str:
    words: list[str] = []
    for n, recipient in enumerate(recipients):
        mailbox = [*(_phrase(recipient.name) if recipient.name else []), f"<{recipient.address}>"]
        if n < len(recipients) - 1:
            mailbox[-1] += ","
        words.extend(mailbox)
    return _fold(name, words)


def _disposition(filename: str) -> str:
    """``attachment; filename=...``: plain names quoted, others in RFC 2231's UTF-8 form
    (percent-encoded, in pieces where long), which no client decodes a second time."""
    if _plain(filename) and len(filename) <= 60 and not set(filename) & set('"\\'):
        return f'attachment;\r\n filename="{filename}"'
    encoded = urllib.parse.quote(filename.encode("utf-8"), safe="")
    pieces = re.findall(r"(?:%[0-9A-F]{2}|[^%]){1,60}", encoded)
    if len(pieces) == 1:
        return f"attachment;\r\n filename*=utf-8''{encoded}"
    sections = [f"filename*{n}*={piece}" for n, piece in enumerate(pieces)]
    sections[0] = sections[0].replace("*=", "*=utf-8''", 1)
    return "attachment;\r\n " + ";\r\n ".join(sections)


def _parts(message: Message) -> list[Message]:
    payload = message.get_payload()
    if isinstance(payload, list):
        return [part for part in payload if isinstance(part, Message)]
    return [message]


def _read_back(
    raw: bytes,
    built: EmailMessage,
    mail: OutgoingMail,
    *,
    subject: str,
    body: str,
    attachments: tuple[OutgoingAttachment, ...],
) -> None:
    """Parse the bytes as a recipient's client would (the stdlib, ``policy.default``) and
    compare every header and part with what was meant: one surprise and nothing is sent."""
    parsed: Any = email.message_from_bytes(raw, policy=policy.default)
    problems: list[str] = []

    def expect(what: str, got: object, wanted: object) -> None:
        if got != wanted:
            problems.append(what)

    def names(message: Message) -> list[str]:
        return sorted(key.lower() for key in message)

    def people(header: str) -> list[tuple[str, str]]:
        value = parsed[header]
        return [(a.display_name, a.addr_spec) for a in value.addresses] if value else []

    expect("the header lines", names(parsed), names(built))
    expect("From", people("From"), [(mail.sender.name, mail.sender.address)])
    expect("To", people("To"), [(r.name, r.address) for r in mail.to])
    expect("Cc", people("Cc"), [(r.name, r.address) for r in mail.cc])
    expect("the subject", str(parsed["Subject"]), subject)
    expect("the Message-ID", str(parsed["Message-ID"]), mail.message_id)
    expect(
        "In-Reply-To",
        str(parsed["In-Reply-To"] or ""),
        f"<{mail.in_reply_to}>" * bool(mail.in_reply_to),
    )
    expect(
        "References",
        str(parsed["References"] or "").split(),
        [f"<{r}>" for r in mail.references],
    )
    parts: list[Any] = _parts(parsed)
    built_parts = _parts(built)
    expect("the parts", [names(p) for p in parts], [names(p) for p in built_parts])
    if len(parts) == len(built_parts) == 1 + len(attachments):
        expect("the text", parts[0].get_content_type(), "text/plain")
        expect("the text", parts[0].get_content().replace("\r\n", "\n"), body)
        for part, attachment in zip(parts[1:], attachments, strict=True):
            expect("an attachment's name", part.get_filename(), attachment.filename)
            expect("an attachment's type", part.get_content_type(), attachment.content_type)
            expect("an attachment", part.get_payload(decode=True), attachment.payload)
    if problems:
        raise HeaderError(
            "This message would not arrive as written (" + ", ".join(problems) + "), so it "
            "was not sent. Please simplify the subject, names or file names."
        )


def _short_lines(body: str) -> bool:
    return all(len(line) <= 900 for line in body.split("\n"))
