"""Mailbox credentials are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class CredentialError(Exception):
    """The stored secret cannot be decrypted (CREDENTIALS_KEY or SECRET_KEY changed)."""


def _fernet() -> Fernet:
    try:
        return Fernet(settings.CREDENTIALS_KEY.encode())
    except ValueError as exc:
        raise ImproperlyConfigured(
            "CREDENTIALS_KEY must be 32 url-safe base64-encoded bytes "
            '(python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())")'
        ) from exc


def encrypt_secret(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialError(
            "the stored password cannot be decrypted: CREDENTIALS_KEY (or SECRET_KEY) changed; "
            "enter the password again"
        ) from exc
