"""The install's two keys: where each is read from, and writing the files that are missing.

Every process of one install must hold the same keys, or what one process wrote another
cannot read: ``SECRET_KEY`` signs sessions and CSRF tokens, ``CREDENTIALS_KEY`` (a Fernet
key) encrypts mailbox passwords at rest. Each is read from its variable, else the file
named by ``NAME_FILE``, else a file in the var directory (``secret_key``,
``credentials_key``). Settings only read; ``manage.py ensurekeys`` writes the missing files
(``scripts/run`` runs it first, ``addmailbox`` before it encrypts). A process that finds no
key gets none, rather than inventing one that its siblings do not share.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from teaminbox.env import envstr

SECRET_KEY_FILENAME = "secret_key"
CREDENTIALS_KEY_FILENAME = "credentials_key"


@dataclass(frozen=True)
class Key:
    value: str  # "" when there is none
    source: str  # where it came from (or why there is none), for error messages


def read_secret_key(var_dir: Path) -> Key:
    return _read("SECRET_KEY", var_dir / SECRET_KEY_FILENAME)


def read_credentials_key(var_dir: Path, secret_key: Key) -> Key:
    key = _read("CREDENTIALS_KEY", var_dir / CREDENTIALS_KEY_FILENAME)
    if key.value or not secret_key.value:
        return key
    # Installs from before the credentials_key file derived the key from SECRET_KEY; they
    # keep decrypting the passwords they stored (ensurekeys writes the derived key down).
    return Key(
        derive_credentials_key(secret_key.value), f"SECRET_KEY ({secret_key.source}) by derivation"
    )


def derive_credentials_key(secret_key: str) -> str:
    digest = hashlib.sha256(b"teaminbox-credentials:" + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


def write_missing_keys(var_dir: Path) -> list[Path]:
    """Write the key files this install lacks (mode 600) and return their paths.

    A key given by its variable is never written to a file. A new install (no secret key
    anywhere) gets a random credentials key; an older one gets the key it has been using,
    derived from its secret key. Several processes may run this at once: each file appears
    whole or not at all, the first writer wins and the others read its key.
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    secret = read_secret_key(var_dir)
    new_install = not secret.value
    if new_install and _create(var_dir / SECRET_KEY_FILENAME, secrets.token_urlsafe(50)):
        written.append(var_dir / SECRET_KEY_FILENAME)
    if not _read("CREDENTIALS_KEY", var_dir / CREDENTIALS_KEY_FILENAME).value:
        if new_install:
            credentials = Fernet.generate_key().decode()
        else:
            credentials = derive_credentials_key(secret.value)
        if _create(var_dir / CREDENTIALS_KEY_FILENAME, credentials):
            written.append(var_dir / CREDENTIALS_KEY_FILENAME)
    return written


def _read(name: str, path: Path) -> Key:
    value = envstr(name, "")
    file_variable = os.environ.get(f"{name}_FILE", "").strip()
    if file_variable:
        if not value:
            raise ImproperlyConfigured(f"{name}_FILE={file_variable!r} is an empty file")
        return Key(value, f"the file {file_variable} named by {name}_FILE")
    if value:
        return Key(value, f"the {name} variable")
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return Key("", f"neither {name} nor the file {path} exists")
    except OSError as exc:
        raise ImproperlyConfigured(f"{path} cannot be read: {exc}") from exc
    if not value:
        raise ImproperlyConfigured(f"{path} is empty: restore the key it held")
    return Key(value, f"the file {path}")


def _create(path: Path, value: str) -> bool:
    """Create ``path`` holding ``value``, readable by this user only; False if it exists."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as draft_file:
            draft_file.write(value + "\n")
        # link() refuses an existing name, so a key another process wrote is never replaced
        os.link(draft, path)
    except FileExistsError:
        return False
    finally:
        draft.unlink(missing_ok=True)
    return True
