"""Settings, read from the environment in this one place.

Every variable is listed in the README. A missing or malformed value raises
ImproperlyConfigured naming the variable; manage.py turns that into one line.
"""

import os
import socket
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from environs import Env, EnvError

BASE_DIR = Path(__file__).resolve().parent.parent

_env = Env(eager=True)


def _read(kind, name, *args, **kwargs):
    """Read one variable through environs, turning its errors into ImproperlyConfigured."""
    try:
        return getattr(_env, kind)(name, *args, **kwargs)
    except (EnvError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


def _positive(kind, name, default):
    value = _read(kind, name, default)
    if value <= 0:
        raise ImproperlyConfigured(f"{name}: must be positive, got {value}")
    return value


DEBUG = _read("bool", "DEBUG", False)
if DEBUG:
    SECRET_KEY = _read("str", "SECRET_KEY", "insecure-development-key-do-not-use-in-production")
else:
    SECRET_KEY = _read("str", "SECRET_KEY", None)
    if not SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY: required when DEBUG is off (set DEBUG=1 for development)")
ALLOWED_HOSTS = _read("list", "ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = _read("list", "CSRF_TRUSTED_ORIGINS", [])

DATABASES = {
    "default": _read(
        "dj_db_url",
        "DATABASE_URL",
        f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=_read("int", "DATABASE_CONN_MAX_AGE", 600),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Three processes share the file: WAL lets readers run beside the writer, IMMEDIATE
    # transactions take the write lock up front instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["TEST"] = {"NAME": _read("str", "TEST_DATABASE_NAME", None)}

RABBITMQ_URL = _read("str", "RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F")
if not RABBITMQ_URL.startswith(("amqp://", "amqps://")):
    raise ImproperlyConfigured(f"RABBITMQ_URL: must start with amqp:// or amqps://, got {RABBITMQ_URL!r}")

# The scheduler (jobs/).
SCHEDULER_INSTANCE_ID = _read("str", "SCHEDULER_INSTANCE_ID", socket.gethostname())
SCHEDULER_CONCURRENCY = _positive("int", "SCHEDULER_CONCURRENCY", os.cpu_count() or 1)
SCHEDULER_LEASE_SECONDS = _positive("int", "SCHEDULER_LEASE_SECONDS", 30)
SCHEDULER_MISFIRE_GRACE_SECONDS = _positive("int", "SCHEDULER_MISFIRE_GRACE_SECONDS", 60)
SCHEDULER_SHUTDOWN_TIMEOUT_SECONDS = _positive("int", "SCHEDULER_SHUTDOWN_TIMEOUT_SECONDS", 30)
SCHEDULER_LONG_RUNNING_CONCURRENCY = _positive("int", "SCHEDULER_LONG_RUNNING_CONCURRENCY", os.cpu_count() or 1)
SCHEDULER_HISTORY_DAYS = _positive("int", "SCHEDULER_HISTORY_DAYS", 30)
SCHEDULER_JOB_MODULES = _read("list", "SCHEDULER_JOB_MODULES", [])

# The outbox (outbox/).
OUTBOX_DUPLICATE_WINDOW_SECONDS = _positive("int", "OUTBOX_DUPLICATE_WINDOW_SECONDS", 300)
OUTBOX_POLL_SECONDS = _positive("float", "OUTBOX_POLL_SECONDS", 1.0)
OUTBOX_BATCH_SIZE = _positive("int", "OUTBOX_BATCH_SIZE", 500)
OUTBOX_MAX_ATTEMPTS = _positive("int", "OUTBOX_MAX_ATTEMPTS", 10)
OUTBOX_RETENTION_DAYS = _positive("int", "OUTBOX_RETENTION_DAYS", 7)
# The relay (outbox/relay.py): how long a batch may wait for the broker's confirms before the
# connection is treated as lost, the cap of the retry backoff, how often old rows are purged,
# and how long a connection blocked by a broker resource alarm may stay blocked.
OUTBOX_CONFIRM_TIMEOUT_SECONDS = _positive("float", "OUTBOX_CONFIRM_TIMEOUT_SECONDS", 30.0)
OUTBOX_RETRY_MAX_SECONDS = _positive("int", "OUTBOX_RETRY_MAX_SECONDS", 300)
OUTBOX_RETENTION_INTERVAL_SECONDS = _positive("int", "OUTBOX_RETENTION_INTERVAL_SECONDS", 300)
OUTBOX_BLOCKED_TIMEOUT_SECONDS = _positive("int", "OUTBOX_BLOCKED_TIMEOUT_SECONDS", 60)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "health_check",
    "django_htmx",
    "axes",
    "outbox",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # HTTP Basic for scripts and monitors on the dashboard; after the session's user is known.
    "bookworm_scheduler.basic_auth.BasicAuthMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out form login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

# django-axes throttles failed logins, form and Basic alike: its backend comes first and refuses
# a locked-out (username, address) pair before any password is hashed.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = _positive("int", "AXES_FAILURE_LIMIT", 5)
# Without a cool-off django-axes locks forever. Each attempt while locked starts the wait again
# (its default), so "try again in N minutes" stays true.
AXES_COOLOFF_TIME = timedelta(minutes=_positive("int", "AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "bookworm_scheduler.basic_auth.lockout_response"
# No "AXES: BEGIN" line at every process start; failures and lockouts are still logged.
AXES_VERBOSE = False

if not DEBUG:
    # Serves the admin's static files under gunicorn (collectstatic first; see the Dockerfile).
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "bookworm_scheduler.urls"
WSGI_APPLICATION = "bookworm_scheduler.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
FORMAT_MODULE_PATH = ["bookworm_scheduler.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "admin:login"

# Celery (optional workers): the broker is the same RabbitMQ.
CELERY_BROKER_URL = RABBITMQ_URL
CELERY_TIMEZONE = TIME_ZONE
DJANGO_CELERY_BEAT_TZ_AWARE = True

LOG_LEVEL = _read("str", "LOG_LEVEL", "INFO").upper()
LOG_FORMAT = _read("str", "LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT: must be 'text' or 'json', got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # One line per event in both formats (see bookworm_scheduler/logs.py).
        "text": {
            "()": "bookworm_scheduler.logs.OneLineFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # The relay logs one line per failed broker connection attempt, with its cause; pika's
    # own account of the same failure is seven ERROR lines.
    # django-axes logs every successful login at INFO.
    "loggers": {"pika": {"level": "CRITICAL"}, "axes": {"level": "WARNING"}},
}
