"""teaminbox settings: one file, read from the environment, with embedded defaults.

Without any variable set, the product runs on one machine with nothing but Python:
SQLite under ``var/``, Celery's ``filesystem://`` transport under ``var/`` and a database
cache. Set ``DATABASE_URL`` and ``REDIS_URL`` for PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import django_stubs_ext

from teaminbox.env import database_from_url, envbool, envint, envlist, envstr, redis_url

# Lets admin/form classes be subscripted for the type checker (ModelAdmin[Mailbox]).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
if os.environ.get("PYTEST_VERSION") and not os.environ.get("TEAMINBOX_VAR_DIR"):
    # A test run (pytest sets PYTEST_VERSION) gets its own var/: its SQLite files and the
    # tasks it queues on the filesystem broker never mix with a development instance or
    # another test run. Child processes started by tests inherit the same directory.
    os.environ["TEAMINBOX_VAR_DIR"] = tempfile.mkdtemp(prefix="teaminbox-test-var-")
VAR_DIR = Path(envstr("TEAMINBOX_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DEBUG", False)
# The "django-insecure-" prefix makes `manage.py check --deploy` flag a forgotten key.
SECRET_KEY = envstr("SECRET_KEY", "django-insecure-dev-only-key-set-SECRET_KEY-in-production")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

# Mailbox passwords are encrypted at rest with Fernet; the key is derived from SECRET_KEY
# when CREDENTIALS_KEY is unset so a development install works out of the box.
CREDENTIALS_KEY = envstr(
    "CREDENTIALS_KEY",
    base64.urlsafe_b64encode(
        hashlib.sha256(b"teaminbox-credentials:" + SECRET_KEY.encode()).digest()
    ).decode(),
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "mailsync",
    "teaminbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "teaminbox.urls"
WSGI_APPLICATION = "teaminbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'teaminbox.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = redis_url("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# Celery: Redis when configured; otherwise the serverless filesystem transport, which
# polls about once a second (fine on one machine, never used for latency figures).
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL == "filesystem://":
    _queue_dir = VAR_DIR / "celery" / "queue"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
SYNC_INTERVAL_SECONDS = envint("SYNC_INTERVAL_SECONDS", 60, minimum=5)
OUTBOX_SWEEP_SECONDS = envint("OUTBOX_SWEEP_SECONDS", 30, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "sync-all-mailboxes": {
        "task": "mailsync.sync_all_mailboxes",
        "schedule": timedelta(seconds=SYNC_INTERVAL_SECONDS),
    },
    "sweep-extraction": {
        "task": "mailsync.sweep_extraction",
        "schedule": timedelta(minutes=10),
    },
    "sweep-outgoing-mail": {
        "task": "teaminbox.sweep_outgoing",
        "schedule": timedelta(minutes=5),
    },
    "sweep-flag-outbox": {
        "task": "mailsync.sweep_flag_outbox",
        "schedule": timedelta(seconds=OUTBOX_SWEEP_SECONDS),
    },
}

# Sync tuning
# A first sync commits after 50 messages (the newest, listed at once), then in batches
# doubling up to SYNC_BATCH_MESSAGES.
SYNC_BATCH_MESSAGES = envint("SYNC_BATCH_MESSAGES", 500, minimum=1)
SYNC_BATCH_BYTES = envint("SYNC_BATCH_BYTES", 20 * 1024 * 1024, minimum=1024)
# Renewed after every batch; a crashed worker's lease frees the folder after this long.
SYNC_LEASE_SECONDS = envint("SYNC_LEASE_SECONDS", 300, minimum=10)
IMAP_TIMEOUT_SECONDS = envint("IMAP_TIMEOUT_SECONDS", 60, minimum=1)
# Capabilities to disregard, for a server whose CONDSTORE/QRESYNC is known to be broken.
IMAP_IGNORE_CAPABILITIES = envlist("IMAP_IGNORE_CAPABILITIES", [])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Tests and development serve static files straight from the finders.
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
# The message body is a same-origin, sandboxed iframe of our own: SAMEORIGIN, not DENY.
X_FRAME_OPTIONS = "SAMEORIGIN"
SILENCED_SYSTEM_CHECKS = ["security.W019"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Served over HTTPS (directly or behind a proxy that sets X-Forwarded-Proto): secure
# cookies, redirects to HTTPS and HSTS. Production sets it; `check --deploy` then passes.
SECURE_HTTPS = envbool("SECURE_HTTPS", False)
if SECURE_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "mailsync": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
        "teaminbox": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    },
}

# The embedded defaults write under var/ (SQLite, the filesystem broker, the file cache).
VAR_DIR.mkdir(parents=True, exist_ok=True)
STATIC_ROOT.mkdir(exist_ok=True)
for _key in ("data_folder_in", "processed_folder"):
    _folder = CELERY_BROKER_TRANSPORT_OPTIONS.get(_key)
    if isinstance(_folder, str):
        Path(_folder).mkdir(parents=True, exist_ok=True)
