"""Locate ../shared/corpus. A missing corpus fails under CI=true and skips elsewhere."""

from __future__ import annotations

from pathlib import Path

from tests.support.ci import unavailable
from tests.support.paths import SHARED_DIR

SHARED = SHARED_DIR / "corpus"


def _missing(path: Path, what: str) -> None:
    unavailable(f"corpus not found at {path}: {what} did not run")


def corpus_path() -> Path:
    """The MIME corpus directory (calls pytest.fail/skip when it is missing)."""
    path = SHARED / "mime"
    if not path.is_dir():
        _missing(path, "the MIME corpus tests")
    return path


def corpus_files() -> list[Path]:
    """Every *.eml under the MIME corpus, sorted ([] when missing, for parametrize)."""
    path = SHARED / "mime"
    if not path.is_dir():
        return []
    return sorted(path.rglob("*.eml"))


def xss_path() -> Path:
    """The XSS vector directory (calls pytest.fail/skip when it is missing)."""
    path = SHARED / "xss"
    if not path.is_dir():
        _missing(path, "the XSS corpus tests")
    return path
