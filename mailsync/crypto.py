"""Mailbox credentials are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).

The key is ``settings.CREDENTIALS_KEY``; ``settings.CREDENTIALS_KEY_SOURCE`` says where this
process found it (a variable or a file), so a password that cannot be decrypted points at
the key to compare with the one the encrypting process used.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialError(Exception):
    """The stored secret cannot be decrypted with this process's credentials key."""


def _source() -> str:
    return str(getattr(settings, "CREDENTIALS_KEY_SOURCE", "the CREDENTIALS_KEY setting"))


def _fernet() -> Fernet:
    if not settings.CREDENTIALS_KEY:
        raise ImproperlyConfigured(
            f"no credentials key: {_source()}. Set CREDENTIALS_KEY, or run "
            "`manage.py ensurekeys` to write one into the var directory"
        )
    try:
        return Fernet(settings.CREDENTIALS_KEY.encode())
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"the credentials key from {_source()} must be 32 url-safe base64-encoded bytes "
            '(python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())")'
        ) from exc


def encrypt_secret(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(token: str) -> str:
    if not token:
        return ""
    try:
        fernet = _fernet()
    except ImproperlyConfigured as exc:
        raise CredentialError(f"the stored password cannot be decrypted: {exc}") from exc
    try:
        return fernet.decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialError(
            "the stored password cannot be decrypted with the credentials key from "
            f"{_source()}: it was encrypted with another key. Give this process the same "
            "key as the one that saved the password, or enter the password again"
        ) from exc
