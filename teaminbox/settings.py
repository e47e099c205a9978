"""teaminbox settings: one file, read from the environment, with embedded defaults.

Without any variable set, the product runs on one machine with nothing but Python:
SQLite under ``var/``, Celery's ``filesystem://`` transport under ``var/`` and a database
cache. Set ``DATABASE_URL`` and ``REDIS_URL`` for PostgreSQL and Redis.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from teaminbox import keys
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
# Keys are read, never made here (teaminbox/keys.py): from SECRET_KEY / SECRET_KEY_FILE, else
# VAR_DIR/secret_key, which `manage.py ensurekeys` writes (scripts/run runs it). Without one,
# SECRET_KEY stays empty and Django refuses to sign anything, rather than this process
# signing with a key its sibling processes do not share.
_secret_key = keys.read_secret_key(VAR_DIR)
SECRET_KEY = _secret_key.value
SECRET_KEY_SOURCE = _secret_key.source
# The public host name, served over HTTPS by the compose file's proxy (deploy/Caddyfile):
# an allowed host, and SECURE_HTTPS defaults on.
DOMAIN = envstr("DOMAIN", "")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
if DOMAIN:
    ALLOWED_HOSTS.append(DOMAIN)
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

# Mailbox passwords are encrypted at rest with this Fernet key: CREDENTIALS_KEY /
# CREDENTIALS_KEY_FILE, else VAR_DIR/credentials_key, else (an install from before that
# file) derived from SECRET_KEY. The source is named when a password cannot be decrypted.
_credentials_key = keys.read_credentials_key(VAR_DIR, _secret_key)
CREDENTIALS_KEY = _credentials_key.value
CREDENTIALS_KEY_SOURCE = _credentials_key.source

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "axes",
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
    # A service's AccessRefused as 403 with its sentence (a fragment for htmx).
    "teaminbox.refusals.RefusalMiddleware",
    # After XFrameOptionsMiddleware, so it answers first: a page without its own policy
    # gets ours and X-Frame-Options: DENY.
    "teaminbox.csp.ContentSecurityPolicyMiddleware",
    # Last: turns the wrong password that reaches the limit into the lockout page.
    "axes.middleware.AxesMiddleware",
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
        # The broadcast (worker control) exchange tables; kombu's default is ./control,
        # which lands in whatever directory the worker was started from.
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Celery's, with one log line per broker outage instead of a traceback per due task.
CELERY_BEAT_SCHEDULER = "teaminbox.celery:BeatScheduler"
SYNC_INTERVAL_SECONDS = envint("SYNC_INTERVAL_SECONDS", 60, minimum=5)
# A staff change claimed by a pusher is its own for OUTBOX_CLAIM_SECONDS after the pusher's
# last command; the sweeper runs every OUTBOX_SWEEP_SECONDS. Together they bound how long
# the changes of a pusher that died wait: about 30 s.
OUTBOX_CLAIM_SECONDS = envint("OUTBOX_CLAIM_SECONDS", 20, minimum=5)
OUTBOX_SWEEP_SECONDS = envint("OUTBOX_SWEEP_SECONDS", 10, minimum=1)
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
    "wake-snoozed-conversations": {
        "task": "teaminbox.wake_snoozed",
        "schedule": timedelta(minutes=1),
    },
    "sweep-flag-outbox": {
        "task": "mailsync.sweep_flag_outbox",
        "schedule": timedelta(seconds=OUTBOX_SWEEP_SECONDS),
    },
    # A worker that died mid-sync: its folder's lease runs out within SYNC_LEASE_SECONDS and
    # this starts the sync again at once, instead of at the next safety-net sync.
    "resume-abandoned-syncs": {
        "task": "mailsync.resume_abandoned_syncs",
        "schedule": timedelta(seconds=5),
    },
}

# Sync tuning
# A first sync commits after 50 messages (the newest, listed at once), then in batches
# doubling up to SYNC_BATCH_MESSAGES.
SYNC_BATCH_MESSAGES = envint("SYNC_BATCH_MESSAGES", 500, minimum=1)
SYNC_BATCH_BYTES = envint("SYNC_BATCH_BYTES", 20 * 1024 * 1024, minimum=1024)
# A folder's sync lease, renewed by a heartbeat every sixth of it (mailsync/leases.py): a
# crashed worker's folder is free again after this long.
SYNC_LEASE_SECONDS = envint("SYNC_LEASE_SECONDS", 20, minimum=10)
IMAP_TIMEOUT_SECONDS = envint("IMAP_TIMEOUT_SECONDS", 60, minimum=1)
# Capabilities to disregard, for a server whose CONDSTORE/QRESYNC is known to be broken.
IMAP_IGNORE_CAPABILITIES = envlist("IMAP_IGNORE_CAPABILITIES", [])

# The IDLE watcher (manage.py watchmailboxes, mailsync/watcher.py). Its connections count
# toward the server's per-user limit (Dovecot: 10) with the workers' kept sessions: IDLE on
# INBOX and the first other chosen folders up to this many, the rest is beat's.
WATCHER_CONNECTIONS_PER_MAILBOX = envint("WATCHER_CONNECTIONS_PER_MAILBOX", 2, minimum=1)
# IDLE is re-issued this often: well inside RFC 2177's 29 minutes and NAT timeouts.
WATCHER_IDLE_RENEW_SECONDS = envint("WATCHER_IDLE_RENEW_SECONDS", 240, minimum=5)
# A DONE (or the go-ahead for IDLE) not answered in this long: the connection is dead.
WATCHER_ANSWER_SECONDS = envint("WATCHER_ANSWER_SECONDS", 10, minimum=1)
WATCHER_BACKOFF_MAX_SECONDS = envint("WATCHER_BACKOFF_MAX_SECONDS", 300, minimum=1)
# The mailbox table is read this often (added/changed/removed mailboxes are picked up),
# and each watcher renews its mailboxes' leases; a dead watcher's lease runs out after
# WATCHER_LEASE_SECONDS and another watcher takes its mailboxes over.
WATCHER_POLL_SECONDS = envint("WATCHER_POLL_SECONDS", 2, minimum=1)
WATCHER_LEASE_SECONDS = envint("WATCHER_LEASE_SECONDS", 20, minimum=5)

# Outgoing mail: distinct addresses in To, Cc and Bcc together, per message.
MAX_RECIPIENTS = envint("MAX_RECIPIENTS", 100, minimum=1)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Sign-in throttling (teaminbox/throttle.py): django-axes locks an (account, address) pair
# after LOGIN_FAILURE_LIMIT wrong passwords; across addresses an account is only slowed down,
# so nobody can lock the team out. An administrator unlocks a pair under "Access attempts".
AUTHENTICATION_BACKENDS = [
    "teaminbox.throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "teaminbox.throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "teaminbox.throttle.lockout_response"
# Failures are kept (and shown in the admin); a row per successful sign-in is not needed.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False
LOGIN_SLOWDOWN_AFTER = envint("LOGIN_SLOWDOWN_AFTER", 10, minimum=1)
LOGIN_SLOWDOWN_MAX_SECONDS = envint("LOGIN_SLOWDOWN_MAX_SECONDS", 60, minimum=1)
LOGIN_SLOWDOWN_WINDOW_SECONDS = envint("LOGIN_SLOWDOWN_WINDOW_SECONDS", 900, minimum=1)
# Addresses (or networks) of our own reverse proxies: only a request from one of them has
# its X-Forwarded-For believed. Empty: the app is reached directly.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", [])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network"
        ) from _exc

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
# cookies, redirects to HTTPS and HSTS. Production sets it (or DOMAIN); `check --deploy`
# then passes.
SECURE_HTTPS = envbool("SECURE_HTTPS", bool(DOMAIN))
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
for _key in ("data_folder_in", "processed_folder", "control_folder"):
    _folder = CELERY_BROKER_TRANSPORT_OPTIONS.get(_key)
    if isinstance(_folder, str):
        Path(_folder).mkdir(parents=True, exist_ok=True)
