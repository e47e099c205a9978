"""Settings come from the environment; bad values stop start-up with a sentence."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from mailsync.crypto import CredentialError, decrypt_secret, encrypt_secret
from teaminbox import keys
from teaminbox.env import database_from_url, envbool, envint, envlist, envstr
from tests.support.paths import PROJECT_ROOT
from tests.support.personas import child_database_url

KEY_VARIABLES = {"SECRET_KEY", "SECRET_KEY_FILE", "CREDENTIALS_KEY", "CREDENTIALS_KEY_FILE"}


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


def test_an_empty_variable_means_unset(monkeypatch):
    # docker-compose renders ${CREDENTIALS_KEY:-} as an empty string
    monkeypatch.setenv("CREDENTIALS_KEY", "")
    monkeypatch.setenv("ALLOWED_HOSTS", " ")
    monkeypatch.setenv("SECURE_HSTS_PRELOAD", "")
    assert envstr("CREDENTIALS_KEY", "the default") == "the default"
    assert envlist("ALLOWED_HOSTS", ["localhost"]) == ["localhost"]
    assert envbool("SECURE_HSTS_PRELOAD", True) is True


# --- keys -----------------------------------------------------------------------------------


def run_python(var_dir: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a new process with Django set up on ``var_dir`` and no key variables:
    what a second terminal has."""
    base = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{code}"],
        cwd=PROJECT_ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "teaminbox.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ensurekeys(var_dir: Path) -> None:
    result = run_python(
        var_dir,
        "from django.core.management import call_command; call_command('ensurekeys')",
        TEAMINBOX_VAR_DIR=str(var_dir),
    )
    assert result.returncode == 0, result.stderr


PRINT_KEYS = "from django.conf import settings as s; print(s.SECRET_KEY, s.CREDENTIALS_KEY)"


def test_settings_create_no_key_and_use_none_when_the_var_directory_has_none(tmp_path):
    result = run_python(
        tmp_path,
        "from django.conf import settings\n"
        "print(repr(settings.CREDENTIALS_KEY), settings.CREDENTIALS_KEY_SOURCE)\n"
        "settings.SECRET_KEY",
        TEAMINBOX_VAR_DIR=str(tmp_path),
    )

    assert "The SECRET_KEY setting must not be empty" in result.stderr
    assert f"'' neither CREDENTIALS_KEY nor the file {tmp_path}/credentials_key exists" in (
        result.stdout
    )
    assert not (tmp_path / "secret_key").exists()
    assert not (tmp_path / "credentials_key").exists()


def test_ensurekeys_writes_key_files_only_this_user_reads_and_every_process_uses_them(tmp_path):
    ensurekeys(tmp_path)

    for name in ("secret_key", "credentials_key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    Fernet((tmp_path / "credentials_key").read_text().strip())  # a valid Fernet key
    first = run_python(tmp_path, PRINT_KEYS, TEAMINBOX_VAR_DIR=str(tmp_path))
    ensurekeys(tmp_path)  # again: nothing is replaced
    second = run_python(tmp_path, PRINT_KEYS, TEAMINBOX_VAR_DIR=str(tmp_path))
    expected = f"{(tmp_path / 'secret_key').read_text().strip()} "
    expected += (tmp_path / "credentials_key").read_text().strip()
    assert first.stdout.strip() == second.stdout.strip() == expected


def test_ensurekeys_writes_no_file_for_a_key_given_by_its_variable(tmp_path):
    result = run_python(
        tmp_path,
        "from django.core.management import call_command; call_command('ensurekeys')",
        TEAMINBOX_VAR_DIR=str(tmp_path),
        SECRET_KEY="from-the-environment",
        CREDENTIALS_KEY=Fernet.generate_key().decode(),
    )

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "secret_key").exists()
    assert not (tmp_path / "credentials_key").exists()


def test_an_install_from_before_credentials_key_files_still_decrypts_its_passwords(tmp_path):
    # What the old scripts/run left behind: var/secret_key, and passwords encrypted with a
    # key derived from it.
    secret = secrets.token_urlsafe(50)
    (tmp_path / "secret_key").write_text(secret + "\n")
    derived = hashlib.sha256(b"teaminbox-credentials:" + secret.encode()).digest()
    token = Fernet(base64.urlsafe_b64encode(derived)).encrypt(b"hunter2").decode()
    decrypt = f"from mailsync.crypto import decrypt_secret; print(decrypt_secret({token!r}))"

    before = run_python(tmp_path, decrypt, TEAMINBOX_VAR_DIR=str(tmp_path))
    ensurekeys(tmp_path)
    after = run_python(tmp_path, decrypt, TEAMINBOX_VAR_DIR=str(tmp_path))

    assert before.stdout.strip() == after.stdout.strip() == "hunter2", before.stderr + after.stderr
    assert (tmp_path / "credentials_key").exists()  # written down: SECRET_KEY may now change


@pytest.mark.django_db(transaction=True)
def test_addmailbox_as_the_first_command_writes_the_keys_that_later_processes_decrypt_with(
    manage, tmp_path
):
    added = manage(
        "addmailbox",
        "support",
        "--url",
        "imap://someone:s3cret@127.0.0.1:1143",
        env={"TEAMINBOX_VAR_DIR": str(tmp_path)},
    )
    later = run_python(
        tmp_path,
        "from mailsync.models import Mailbox\n"
        "print(Mailbox.objects.get(name='support').get_password())",
        TEAMINBOX_VAR_DIR=str(tmp_path),
        DATABASE_URL=child_database_url(),
    )

    assert added.returncode == 0, added.stderr
    assert f"Wrote {tmp_path / 'credentials_key'}" in added.stdout
    assert later.stdout.strip() == "s3cret", later.stderr


@pytest.fixture
def no_key_variables(monkeypatch):
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def use_keys_of(settings, var_dir: Path) -> None:
    key = keys.read_credentials_key(var_dir, keys.read_secret_key(var_dir))
    settings.CREDENTIALS_KEY, settings.CREDENTIALS_KEY_SOURCE = key.value, key.source


def test_a_password_that_cannot_be_decrypted_names_the_key_file_this_process_used(
    settings, tmp_path, no_key_variables
):
    token = encrypt_secret("hunter2")  # by a process with another key
    (tmp_path / "credentials_key").write_text(Fernet.generate_key().decode())
    use_keys_of(settings, tmp_path)

    with pytest.raises(CredentialError) as refused:
        decrypt_secret(token)

    assert str(refused.value).startswith("the stored password cannot be decrypted")
    assert f"the file {tmp_path / 'credentials_key'}" in str(refused.value)


def test_a_password_that_cannot_be_decrypted_names_the_variable_this_process_used(
    settings, tmp_path, no_key_variables, monkeypatch
):
    token = encrypt_secret("hunter2")
    monkeypatch.setenv("CREDENTIALS_KEY", Fernet.generate_key().decode())
    use_keys_of(settings, tmp_path)

    with pytest.raises(CredentialError, match=re.escape("the CREDENTIALS_KEY variable")):
        decrypt_secret(token)


def test_the_filesystem_broker_keeps_its_control_folder_in_the_var_directory(tmp_path):
    result = run_python(
        tmp_path,
        "from django.conf import settings; "
        "print(settings.CELERY_BROKER_TRANSPORT_OPTIONS['control_folder'])",
        TEAMINBOX_VAR_DIR=str(tmp_path),
        REDIS_URL="",  # the filesystem transport
    )

    assert result.stdout.strip() == str(tmp_path / "celery" / "control"), result.stderr
