"""Sanitize HTML email bodies for display. Plain Python (no Django); the sanitizing is nh3's.

Our own code only *rewrites URLs* inside nh3's attribute filter (cid: images, remote images, link
targets); it never decides what markup is safe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import nh3

__all__ = ["SanitizedHtml", "sanitize_email_html"]


@dataclass(frozen=True)
class SanitizedHtml:
    html: str
    blocked_remote_images: int


_TAGS = frozenset(
    [
        "a",
        "abbr",
        "acronym",
        "address",
        "b",
        "bdi",
        "bdo",
        "big",
        "blockquote",
        "br",
        "caption",
        "center",
        "cite",
        "code",
        "col",
        "colgroup",
        "dd",
        "del",
        "dfn",
        "div",
        "dl",
        "dt",
        "em",
        "font",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "ins",
        "kbd",
        "li",
        "mark",
        "ol",
        "p",
        "pre",
        "q",
        "rp",
        "rt",
        "ruby",
        "s",
        "samp",
        "small",
        "span",
        "strike",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "tt",
        "u",
        "ul",
        "var",
        "wbr",
    ]
)

# Removed together with their content (nh3 strips other unknown tags but keeps their text).
_CLEAN_CONTENT = frozenset(
    {
        "script",
        "style",
        "title",
        "head",
        "iframe",
        "object",
        "embed",
        "applet",
        "noscript",
        "template",
        "svg",
        "math",
        "xml",
        "form",
        "select",
        "textarea",
        "button",
    }
)

_GENERIC_ATTRS = frozenset({"style", "title", "dir", "lang", "align", "valign", "class"})
_ATTRS: dict[str, set[str]] = {
    "*": set(_GENERIC_ATTRS),
    "a": {"href", "name", "target"},
    "img": {"src", "alt", "width", "height", "border", "hspace", "vspace"},
    "font": {"color", "face", "size"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": {"width", "height", "colspan", "rowspan", "bgcolor", "nowrap", "scope", "headers"},
    "th": {"width", "height", "colspan", "rowspan", "bgcolor", "nowrap", "scope", "headers"},
    "tr": {"bgcolor", "height"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"cite", "type"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "hr": {"width", "size", "noshade", "color"},
    "div": {"bgcolor"},
    "span": {"bgcolor"},
}

# CSS properties that cannot load resources or escape the message box. No `position`, `behavior`,
# `background-image`, `background` shorthand (url()), `content`, `cursor` (url()), `-moz-binding`.
_CSS = frozenset(
    [
        "color",
        "background-color",
        "border",
        "border-top",
        "border-right",
        "border-bottom",
        "border-left",
        "border-color",
        "border-style",
        "border-width",
        "border-collapse",
        "border-spacing",
        "border-radius",
        "border-top-color",
        "border-right-color",
        "border-bottom-color",
        "border-left-color",
        "border-top-style",
        "border-right-style",
        "border-bottom-style",
        "border-left-style",
        "border-top-width",
        "border-right-width",
        "border-bottom-width",
        "border-left-width",
        "font",
        "font-family",
        "font-size",
        "font-style",
        "font-variant",
        "font-weight",
        "letter-spacing",
        "line-height",
        "list-style-type",
        "margin",
        "margin-top",
        "margin-right",
        "margin-bottom",
        "margin-left",
        "padding",
        "padding-top",
        "padding-right",
        "padding-bottom",
        "padding-left",
        "text-align",
        "text-decoration",
        "text-indent",
        "text-transform",
        "vertical-align",
        "white-space",
        "word-spacing",
        "word-break",
        "word-wrap",
        "overflow-wrap",
        "width",
        "min-width",
        "max-width",
        "height",
        "min-height",
        "max-height",
        "display",
        "table-layout",
        "caption-side",
        "empty-cells",
        "direction",
        "unicode-bidi",
        "float",
        "clear",
    ]
)

_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid", "data"})
_DATA_IMAGE = (
    "data:image/png",
    "data:image/gif",
    "data:image/jpeg",
    "data:image/jpg",
    "data:image/webp",
    "data:image/bmp",
)


_CSS_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.S)
_CSS_DANGER = ("expression", "url(", "javascript", "vbscript", "behavior", "binding", "@import")


def _risky_style(value: str) -> bool:
    """Defence in depth on top of nh3's property filter: refuse values that could load or run
    anything even in legacy engines (comments and CSS escapes removed before checking)."""
    flat = _CSS_COMMENT.sub("", value).replace("\\", "").lower()
    flat = re.sub(r"\s+", "", flat)
    return any(token in flat for token in _CSS_DANGER)


def _lookup_cid(value: str, cid_urls: Mapping[str, str]) -> str | None:
    key = value.strip()
    for candidate in (key, unquote(key)):
        candidate = candidate.strip().strip("<>")
        if candidate in cid_urls:
            return cid_urls[candidate]
    lowered = {k.strip("<>").lower(): v for k, v in cid_urls.items()}
    for candidate in (key, unquote(key)):
        found = lowered.get(candidate.strip().strip("<>").lower())
        if found is not None:
            return found
    return None


def sanitize_email_html(
    html: str, *, cid_urls: Mapping[str, str], allow_remote_images: bool
) -> SanitizedHtml:
    """Return safe HTML for embedding in the message page (never raises for str input).

    - Tags/attributes from an allow-list; `style` filtered to layout/typography CSS properties.
    - <img src="cid:X"> → cid_urls[X] (exact, URL-unquoted, case-insensitive). Other non-remote
      srcs are looked up in cid_urls too (Content-Location keys); unknown ones are dropped.
    - Remote (http/https/protocol-relative) images are dropped and counted unless allowed.
    - data: only for raster images in <img>; javascript:/vbscript:/other schemes are removed.
    - Links open in a new tab with rel="noopener noreferrer nofollow".
    """
    blocked = 0

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        nonlocal blocked
        if tag == "img" and attr == "src":
            src = value.strip()
            lowered = src.lower()
            if lowered.startswith("cid:"):
                return _lookup_cid(src[4:], cid_urls)
            if lowered.startswith(("http://", "https://", "//")):
                if allow_remote_images:
                    return src
                blocked += 1
                return None
            if lowered.startswith("data:"):
                return src if lowered.startswith(_DATA_IMAGE) else None
            return _lookup_cid(src, cid_urls)
        if attr == "href":
            lowered = value.strip().lower()
            if lowered.startswith(("data:", "cid:")):
                return None
            return value
        if attr == "target":
            return "_blank"
        if attr == "style" and _risky_style(value):
            return None
        return value

    try:
        cleaned = nh3.clean(
            html,
            tags=set(_TAGS),
            clean_content_tags=set(_CLEAN_CONTENT),
            attributes={k: set(v) for k, v in _ATTRS.items()},
            attribute_filter=attribute_filter,
            strip_comments=True,
            link_rel="noopener noreferrer nofollow",
            url_schemes=set(_URL_SCHEMES),
            filter_style_properties=set(_CSS),
            set_tag_attribute_values={"a": {"target": "_blank"}},
        )
    except Exception:  # never let odd input break the page
        cleaned = nh3.clean(html, tags=set(), clean_content_tags=set(_CLEAN_CONTENT))
    return SanitizedHtml(html=cleaned, blocked_remote_images=blocked)
