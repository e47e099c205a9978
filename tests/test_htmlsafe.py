"""teaminbox.htmlsafe: nh3-based sanitizing of HTML mail bodies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from teaminbox.htmlsafe import SanitizedHtml, sanitize_email_html
from tests.support.corpus import SHARED, xss_path

XSS_FILES = sorted((SHARED / "xss" / "roundcube").glob("*.txt"))
FORBIDDEN_TAGS = ("<script", "<iframe", "<object", "<embed", "<form", "<base", "<meta", "<style")


def clean(html: str, **kwargs: object) -> SanitizedHtml:
    cid_urls = kwargs.pop("cid_urls", {})
    allow = bool(kwargs.pop("allow_remote_images", False))
    return sanitize_email_html(html, cid_urls=cid_urls, allow_remote_images=allow)  # type: ignore[arg-type]


def _assert_safe(html: str) -> None:
    lowered = html.lower()
    for tag in FORBIDDEN_TAGS:
        assert tag not in lowered, tag
    assert not re.search(r"\son\w+\s*=", lowered)
    assert "javascript:" not in lowered
    assert "vbscript:" not in lowered
    assert "expression(" not in lowered


def test_it_finds_the_xss_corpus() -> None:
    assert len(list((xss_path() / "roundcube").glob("*.txt"))) == 4


@pytest.mark.corpus
@pytest.mark.parametrize("path", XSS_FILES, ids=lambda p: p.name)
def test_it_neutralises_every_roundcube_xss_vector(path: Path) -> None:
    raw = path.read_bytes()
    for text in (raw.decode("utf-8", "replace"), raw.decode("latin-1")):
        result = clean(text, cid_urls={"x": "/a/1"})
        _assert_safe(result.html)


@pytest.mark.parametrize(
    "html",
    [
        '<img src=x onerror="alert(1)">',
        "<svg><script>alert(1)</script></svg>",
        '<a href="javascript:alert(1)">x</a>',
        '<a href=" JaVaScRiPt:alert(1)">x</a>',
        '<iframe src="https://evil.example"></iframe>',
        '<object data="x.swf"></object><embed src="x.swf">',
        '<form action="https://evil.example"><input name=p></form>',
        '<base href="https://evil.example/"><meta http-equiv="refresh" content="0;url=x">',
        '<div style="background:url(javascript:alert(1));width:expression(alert(1))">x</div>',
        '<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>',
        '<img src="data:text/html;base64,PHNjcmlwdD4=">',
        '<link rel="stylesheet" href="https://evil.example/x.css">',
        "<body onload=alert(1)>x</body>",
    ],
)
def test_it_removes_active_content(html: str) -> None:
    result = clean(html)
    _assert_safe(result.html)
    assert "data:text" not in result.html


def test_it_keeps_email_formatting_tables_and_safe_css() -> None:
    html = (
        '<table width="100%" cellpadding="4"><tr><td style="color: red; position: fixed; '
        'font-weight: bold">cell</td></tr></table><p align="center"><b>bold</b></p>'
    )
    out = clean(html).html
    assert "<table" in out and "<td" in out and 'cellpadding="4"' in out
    assert "color:red" in out.replace(" ", "") and "font-weight" in out
    assert "position" not in out
    assert "<b>bold</b>" in out


def test_it_rewrites_cid_images_case_insensitively() -> None:
    html = '<img src="cid:Logo@Example"><img src="cid:missing@x"><img src="cid:a%40b">'
    out = clean(html, cid_urls={"logo@example": "/att/7", "a@b": "/att/8"}).html
    assert 'src="/att/7"' in out and 'src="/att/8"' in out
    assert "cid:" not in out


def test_it_resolves_content_location_images_through_the_cid_map() -> None:
    out = clean('<img src="image001.png">', cid_urls={"image001.png": "/att/9"}).html
    assert 'src="/att/9"' in out


def test_it_blocks_and_counts_remote_images() -> None:
    html = '<img src="https://t.example/p.gif"><img src="http://x/y.png"><img src="//z/q.png">'
    result = clean(html)
    assert result.blocked_remote_images == 3
    assert "example" not in result.html and "http" not in result.html


def test_it_allows_remote_images_when_asked() -> None:
    result = clean('<img src="https://t.example/p.gif">', allow_remote_images=True)
    assert result.blocked_remote_images == 0
    assert 'src="https://t.example/p.gif"' in result.html


def test_it_keeps_inline_data_images() -> None:
    out = clean('<img src="data:image/png;base64,iVBORw0KGgo=">').html
    assert "data:image/png" in out


def test_it_opens_links_in_a_new_tab_without_referrer() -> None:
    out = clean('<a href="https://example.com" target="_self">x</a><a href="mailto:a@b">m</a>').html
    assert out.count('target="_blank"') == 2
    assert out.count('rel="noopener noreferrer nofollow"') == 2
    assert "_self" not in out


def test_it_sanitizes_corpus_html_with_a_script_block() -> None:
    from mailsync.engine.mime import parse_message
    from tests.support.corpus import corpus_path

    raw = (corpus_path() / "zimbra/unittest/email/bug_62346.eml").read_bytes()
    parsed = parse_message(raw)
    _assert_safe(clean(parsed.html).html)
