"""Settings come from the environment; bad values stop start-up with a sentence."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from teaminbox.env import database_from_url, envbool, envint
from tests.support.paths import PROJECT_ROOT


def test_it_reads_sqlite_and_postgres_urls():
    sqlite = database_from_url("sqlite:////srv/teaminbox/db.sqlite3")
    assert sqlite["NAME"] == "/srv/teaminbox/db.sqlite3"
    assert sqlite["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in sqlite["OPTIONS"]["init_command"]
    pg = database_from_url("postgres://ti:p%40ss@db.example:5433/teaminbox?sslmode=require")
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "teaminbox",
        "ti",
        "p@ss",
        "db.example",
        "5433",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}


@pytest.mark.parametrize(
    "url", ["mysql://x@y/z", "postgres://x@y", "postgres://x@y:notaport/db", "sqlite://"]
)
def test_it_refuses_a_malformed_database_url(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url(url)


def test_it_refuses_garbage_booleans_and_integers(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe'"):
        envbool("DEBUG", False)
    monkeypatch.setenv("SYNC_INTERVAL_SECONDS", "soon")
    with pytest.raises(ImproperlyConfigured, match="SYNC_INTERVAL_SECONDS"):
        envint("SYNC_INTERVAL_SECONDS", 60)


def run_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # what a deployment has: none of the test run's own switches
    base = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=PROJECT_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_check_deploy():
    result = run_check(
        {"SECURE_HTTPS": "true", "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "false"},
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_typo_in_the_environment_stops_start_up_with_a_sentence():
    result = run_check({"DATABASE_URL": "mysql://nope@localhost/x"})
    assert result.returncode != 0
    assert "unsupported scheme 'mysql'" in result.stderr
