"""Shared pytest fixtures: markers, Dovecot, corpus. Django personas come from pytest_plugins."""

from __future__ import annotations

import io
import itertools
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import DovecotFactory, DovecotServer, MailUser, stop_all
from tests.support.paths import CORPUS_MIME_DIR, CORPUS_XSS_DIR, shared_dir_or_skip

# Django fixtures (personas alice/bob/charlie, mailboxes on the test Dovecot, manage.py runs)
pytest_plugins = ["tests.support.personas", "tests.support.browser_fixtures"]

# --- markers --------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark by fixture use, so `-m "not dovecot"` works without anyone remembering to mark.
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if {"dovecot", "mail_user", "dovecot_factory"} & set(fixtures):
            item.add_marker(pytest.mark.dovecot)
        if {"corpus_dir", "xss_dir"} & set(fixtures):
            item.add_marker(pytest.mark.corpus)


# --- Dovecot --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dovecot_base_dir() -> Iterator[Path]:
    """One directory per test session for every Dovecot it starts; removed at the end
    unless TEAMINBOX_KEEP_TEST_DIRS is set (to read the logs)."""
    base = Path(f"/tmp/teaminbox-tests-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    yield base
    if not os.environ.get("TEAMINBOX_KEEP_TEST_DIRS"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_factory(dovecot_base_dir: Path) -> Iterator[DovecotFactory]:
    """Start an extra instance with its own config, e.g.
    ``dovecot_factory("rawlog", RAWLOG_CONFIG)``. One per name per session (starting one
    costs ≈0.1 s, stopping ≈1.1 s); all are stopped at the end of the session."""
    servers: dict[str, DovecotServer] = {}

    def start(name: str, extra_config: str = "") -> DovecotServer:
        if name not in servers:
            servers[name] = DovecotServer.start(dovecot_base_dir, name, extra_config)
        return servers[name]

    yield start
    stop_all(servers.values())


@pytest.fixture(scope="session")
def dovecot(dovecot_factory: DovecotFactory) -> DovecotServer:
    """The session's plain Dovecot (IMAP + POP3 on loopback). Share it; isolate by user."""
    return dovecot_factory("main")


_user_counter = itertools.count(1)


@pytest.fixture
def mail_user(dovecot: DovecotServer) -> MailUser:
    """A fresh, empty mailbox on the session's Dovecot, with a random password."""
    address = f"t{next(_user_counter)}-{secrets.token_hex(4)}@example.test"
    return dovecot.add_user(address, secrets.token_urlsafe(12))


# --- corpus (read in place from ../shared, never copied) ------------------------------------


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """``shared/corpus/mime``: real-world messages, one ``.eml`` per file (+ MANIFEST.tsv)."""
    return shared_dir_or_skip(CORPUS_MIME_DIR, "the MIME corpus")


@pytest.fixture(scope="session")
def xss_dir() -> Path:
    """``shared/corpus/xss``: hostile HTML mail for the sanitizer and renderer."""
    return shared_dir_or_skip(CORPUS_XSS_DIR, "the XSS corpus")


# --- Django ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: object) -> None:
    """The default hasher costs ≈0.9 s per hash here; tests log in a lot."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def no_kept_imap_sessions() -> Iterator[None]:
    """Each test starts without IMAP sessions kept by an earlier one (mailsync.sessions):
    its Dovecot user, and often its mailbox row, are new."""
    from mailsync import sessions

    sessions.close_all()
    yield
    sessions.close_all()


@pytest.fixture(scope="session", autouse=True)
def install_keys() -> None:
    """The run's var/ gets its key files as scripts/run writes them (settings only read
    them): this process and the manage.py and worker processes tests start share them."""
    from django.core.management import call_command

    call_command("ensurekeys", stdout=io.StringIO())


@pytest.fixture(scope="session", autouse=True)
def throwaway_var_dir() -> Iterator[None]:
    """Remove the per-run var/ that settings.py made for this test run (see there)."""
    yield
    from django.conf import settings

    var_dir = Path(settings.VAR_DIR)
    if var_dir.name.startswith("teaminbox-test-var-") and not os.environ.get(
        "TEAMINBOX_KEEP_TEST_DIRS"
    ):
        shutil.rmtree(var_dir, ignore_errors=True)
