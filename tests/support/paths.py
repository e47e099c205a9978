"""Where the project and the shared, read-only material live (no Django import)."""

from __future__ import annotations

from pathlib import Path

from tests.support.ci import unavailable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Shared team material sits beside the checkout; it is referenced in place, never copied.
SHARED_DIR = PROJECT_ROOT.parent / "shared"
CORPUS_MIME_DIR = SHARED_DIR / "corpus" / "mime"
CORPUS_XSS_DIR = SHARED_DIR / "corpus" / "xss"
DOVECOT_TEMPLATE = PROJECT_ROOT / "tests" / "dovecot" / "dovecot.conf.tmpl"


def shared_dir_or_skip(path: Path, what: str) -> Path:
    """``path`` if it is a directory. Otherwise the calling test fails under ``CI=true``
    (CI must not go green by silently running less) and is skipped elsewhere."""
    if path.is_dir():
        return path
    unavailable(f"{what} not found at {path}: the tests that read it did not run")
