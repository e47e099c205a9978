"""Charset handling for :mod:`mailsync.engine.mime`: aliases, decoding and guessing.

Pure Python, no Django. Nothing here raises for any input bytes or charset name.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

# Names seen in real mail mapped to the Python codec that decodes them best. Supersets are preferred
# (WHATWG does the same): Microsoft mail labelled gb2312/ks_c_5601-1987/shift_jis is really
# gb18030/cp949/cp932, and "iso-8859-1" is in practice windows-1252.
_ALIASES: dict[str, str] = {
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-8-e": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6",
    "logical": "iso-8859-8",
    "visual": "iso-8859-8",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601-1989": "cp949",
    "ksc5601": "cp949",
    "ksc_5601": "cp949",
    "euc-kr": "cp949",
    "euc_kr": "cp949",
    "x-euc-kr": "cp949",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "x-gbk": "gb18030",
    "gbk": "gb18030",
    "cn-gb": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "cn-big5": "big5hkscs",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "x-euc-jp": "euc_jp",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "iso_8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "x-mac-cyrillic": "mac_cyrillic",
    "x-mac-greek": "mac_greek",
    "x-mac-turkish": "mac_turkish",
    "x-mac-ce": "mac_latin2",
    "x-mac-centraleurroman": "mac_latin2",
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "ansi_x3.4-1968": "us-ascii",
    "ascii": "us-ascii",
    "us_ascii": "us-ascii",
    "646": "us-ascii",
    "cp-850": "cp850",
    "x-cp1250": "cp1250",
    "x-cp1251": "cp1251",
    "koi8": "koi8-r",
}

# Labels that say "we don't know" rather than naming a charset.
_UNKNOWN = frozenset(
    {"unknown-8bit", "x-unknown", "unknown", "x-user-defined", "default", "none", "charset"}
)

# Codecs Python knows but that are not text charsets a mail part may legitimately declare.
_REFUSED_CODECS = frozenset(
    {
        "undefined",
        "unicode_escape",
        "raw_unicode_escape",
        "unicode_internal",
        "idna",
        "punycode",
        "mbcs",
        "oem",
        "palmos",
    }
)

_JIS_FALLBACKS = ("iso2022_jp_2", "iso2022_jp_ext", "iso2022_jp_3", "iso2022_jp_2004")
_NAME_CLEAN = re.compile(r"[^a-z0-9_.:()+\-]")
HUMAN_NAMES = {"cp1252": "windows-1252", "utf-8": "UTF-8"}


@dataclass(frozen=True)
class Decoded:
    text: str
    # The codec actually used (Python name), for notices.
    codec: str
    # A human sentence describing a problem, without the "Part N" prefix; "" if clean.
    problem: str


def normalize_label(label: str | None) -> str:
    """Lower-cased, trimmed charset label ("" for none). Keeps it short and printable."""
    if not label:
        return ""
    text = str(label).strip().strip("\"'").strip().lower()
    # `charset=3Diso-8859-1` (quoted-printable leaked into the header) is common in spam.
    if text.startswith("3d") and len(text) > 2 and not text[2].isdigit():
        text = text[2:]
    text = text.split("*", 1)[0]  # RFC 2231 language suffix in encoded words: utf-8*en
    return _NAME_CLEAN.sub("", text)[:40]


def resolve(label: str | None) -> str | None:
    """The Python codec name for a charset label, or None when it is missing/unknown/refused."""
    name = normalize_label(label)
    if not name or name in _UNKNOWN:
        return None
    name = _ALIASES.get(name, name)
    if name == "us-ascii":
        return "us-ascii"
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    # (codecs spells some names with hyphens: "unicode-escape")
    refused = info.name.replace("-", "_") in _REFUSED_CODECS
    if refused or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def human(codec: str) -> str:
    return HUMAN_NAMES.get(codec, codec)


def guess(data: bytes) -> str:
    """Best-effort codec name for bytes of unknown charset (UTF-8 first, then a detector)."""
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:65536]).best()
        if best is not None and best.encoding:
            found = resolve(best.encoding)
            if found:
                return found
    except Exception:  # a detector failure must never break parsing
        pass
    return "cp1252"


def _lenient(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec, "replace")
    except Exception:  # e.g. codec state bugs on hostile bytes
        return data.decode("cp1252", "replace")


def decode_8bit(data: bytes, hint: str | None = None) -> str:
    """Bytes with no declared charset (raw 8-bit headers).

    UTF-8; else mostly-UTF-8 (a few broken sequences, e.g. a truncated name) with replacements;
    else the charset hint (the message body's charset), else windows-1252, else latin-1.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    loose = data.decode("utf-8", "replace")
    non_ascii = sum(1 for ch in loose if ord(ch) > 127)
    if non_ascii and loose.count("\ufffd") * 5 <= non_ascii:
        return loose
    codec = resolve(hint) if hint else None
    if codec and codec not in ("us-ascii", "utf-8", "utf-7"):
        try:
            return data.decode(codec)
        except Exception:
            pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode(data: bytes, label: str | None, *, guess_unknown: bool = True) -> Decoded:
    """Decode `data` declared as `label`. Never raises.

    - No label or US-ASCII: ASCII, else UTF-8, else windows-1252, silently (very common).
    - Known label: strict decode, else the same codec with replacements (problem reported).
    - Unknown label: a guess (charset-normalizer only here), with replacements (problem reported).
    """
    name = normalize_label(label)
    codec = resolve(name)
    if codec is None and name in ("", "us-ascii", "ascii"):
        codec = "us-ascii"
    if codec == "us-ascii":
        try:
            return Decoded(data.decode("ascii"), "us-ascii", "")
        except UnicodeDecodeError:
            return Decoded(decode_8bit(data), "utf-8", "")
    if codec is None:
        chosen = guess(data) if guess_unknown else "cp1252"
        text = _lenient(data, chosen)
        shown = (label or "").strip()[:40]
        problem = f"declares the unknown charset '{shown}'; decoded as {human(chosen)}" + (
            " with replacements." if "\ufffd" in text else "."
        )
        return Decoded(text, chosen, problem)
    try:
        return Decoded(data.decode(codec), codec, "")
    except UnicodeDecodeError:
        pass
    except Exception:
        return Decoded(data.decode("cp1252", "replace"), "cp1252", "could not be decoded.")
    if codec.startswith("iso2022_jp"):
        for alt in _JIS_FALLBACKS:
            try:
                return Decoded(data.decode(alt), alt, "")
            except Exception:
                continue
    if codec == "utf-8":
        # Mislabelled windows-1252 is far more common than corrupted UTF-8.
        try:
            text = data.decode("cp1252")
            return Decoded(text, "cp1252", "is labelled UTF-8 but is not; decoded as windows-1252.")
        except UnicodeDecodeError:
            pass
    if codec not in ("utf-8", "utf-7") and not codec.startswith("iso2022"):
        try:
            text = data.decode("utf-8")
            return Decoded(
                text, "utf-8", f"is labelled {human(codec)} but is UTF-8; decoded as UTF-8."
            )
        except UnicodeDecodeError:
            pass
    if codec == "cp1252":
        # WHATWG maps the five undefined windows-1252 bytes to C1 controls, as latin-1 does.
        return Decoded(data.decode("latin-1"), "cp1252", "")
    text = _lenient(data, codec)
    return Decoded(text, codec, f"is not valid {human(codec)}; undecodable bytes were replaced.")
