"""Django fixtures: named personas and shared mailboxes on the test Dovecot.

alice administers the mailbox, bob is an agent on it, charlie is a user who must not see it.
Loaded from tests/conftest.py as a pytest plugin.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User

from tests.support.dovecot import RAWLOG_CONFIG, MailUser
from tests.support.paths import PROJECT_ROOT

PASSWORD = "correct-horse-battery"


@pytest.fixture
def alice(db: Any) -> User:
    return User.objects.create_user("alice", "alice@example.test", PASSWORD)


@pytest.fixture
def bob(db: Any) -> User:
    return User.objects.create_user("bob", "bob@example.test", PASSWORD)


@pytest.fixture
def charlie(db: Any) -> User:
    return User.objects.create_user("charlie", "charlie@example.test", PASSWORD)


MailboxFactory = Callable[..., Any]


@pytest.fixture
def make_mailbox(db: Any) -> MailboxFactory:
    """Create a Mailbox row pointing at a Dovecot test user (``agents``: its members)."""
    from mailsync.models import Mailbox
    from teaminbox.models import Membership

    def make(
        user: MailUser,
        *,
        name: str = "support",
        folders: list[str] | None = None,
        password: str | None = None,
        delete_mode: str = "flag",
        agents: tuple[User, ...] = (),
    ) -> Mailbox:
        mailbox = Mailbox(
            name=name,
            email_address=user.address,
            protocol=Mailbox.Protocol.IMAP,
            security=Mailbox.Security.PLAIN,
            host=user.server.host,
            port=user.server.imap_port,
            username=user.address,
            folder_names=folders or ["INBOX"],
            delete_mode=delete_mode,
        )
        mailbox.set_password(password if password is not None else user.password)
        mailbox.save()
        for agent in agents:  # the services act only for members (teaminbox.services.access)
            Membership.objects.create(user=agent, mailbox=mailbox, role=Membership.Role.AGENT)
        return mailbox

    return make


@pytest.fixture
def recorded_user(dovecot_factory: Any) -> MailUser:
    """A mail user on a Dovecot that records every command clients send (rawlog), to
    count what we really sent: a flag stored twice looks the same in the mailbox."""
    server = dovecot_factory("rawlog", RAWLOG_CONFIG)
    user: MailUser = server.add_user(
        f"raw-{secrets.token_hex(4)}@example.test", secrets.token_hex(8)
    )
    user.enable_rawlog()
    return user


@pytest.fixture
def shared_mailbox(
    make_mailbox: MailboxFactory, mail_user: MailUser, alice: User, bob: User
) -> Any:
    """The support mailbox on a fresh Dovecot user: alice is its admin, bob an agent."""
    from teaminbox.models import Membership

    mailbox = make_mailbox(mail_user)
    Membership.objects.create(user=alice, mailbox=mailbox, role=Membership.Role.ADMIN)
    Membership.objects.create(user=bob, mailbox=mailbox, role=Membership.Role.AGENT)
    return mailbox


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def child_database_url() -> str:
    """DATABASE_URL of the database pytest-django set up, for a child process."""
    from django.db import connection

    settings = connection.settings_dict
    if settings["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings['NAME']}"
    user = settings.get("USER") or ""
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or "5432"
    return f"postgres://{user}@{host}:{port}/{settings['NAME']}"


@pytest.fixture
def manage() -> Callable[..., CommandResult]:
    """Run ``python manage.py ...`` in a child process against the test database (use
    with ``transaction=True`` so it sees committed rows)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CommandResult:
        child_env = {**os.environ, "DATABASE_URL": child_database_url(), **(env or {})}
        if "MAILBOX_PASSWORD" not in (env or {}):
            child_env.pop("MAILBOX_PASSWORD", None)
        completed = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "manage.py"), *args],
            cwd=PROJECT_ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)

    return run
