"""Settings, read from the environment in this one place.

Every variable is listed in the README. A missing or malformed value raises
ImproperlyConfigured naming the variable; manage.py turns that into one line.
"""

import re
import socket
import ssl
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
import dj_email_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured
from environs import Env, EnvError

from bookworm_scheduler.kernel.cpus import available_cpus

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


def _secret(name, default=None):
    """A secret from the variable NAME, or from the file that NAME_FILE names (Docker and Kubernetes
    secrets), its surrounding whitespace stripped. Errors never show the value."""
    value, path = _read("str", name, None), _read("str", f"{name}_FILE", None)
    if path is None:
        return value or default
    if value is not None:
        raise ImproperlyConfigured(f"{name} and {name}_FILE: set one of them, not both")
    try:
        return Path(path).read_text().strip() or default
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ImproperlyConfigured(f"{name}_FILE: {path} is not UTF-8 text") from None


DEBUG = _read("bool", "DEBUG", False)
# Error pages and reports hide settings whose names say URL too: RABBITMQ_URL holds a password.
DEFAULT_EXCEPTION_REPORTER_FILTER = "bookworm_scheduler.web.error_reports.SecretsFilter"
SECRET_KEY = _secret("SECRET_KEY", "insecure-development-key-do-not-use-in-production" if DEBUG else None)
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY: required when DEBUG is off (or SECRET_KEY_FILE; DEBUG=1 for development)")
# Earlier keys, separated by spaces or newlines: what they signed (sessions) stays valid while they are listed, so
# SECRET_KEY can be rotated without logging everyone out.
SECRET_KEY_FALLBACKS = (_secret("SECRET_KEY_FALLBACKS") or "").split()
ALLOWED_HOSTS = _read("list", "ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = _read("list", "CSRF_TRUSTED_ORIGINS", [])

# Query parameters become connection options: postgres://...?sslmode=verify-full&sslrootcert=/path/ca.pem
_conn_max_age = _read("int", "DATABASE_CONN_MAX_AGE", 600)
try:
    DATABASES = {
        "default": dj_database_url.parse(
            _secret("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"), conn_max_age=_conn_max_age
        )
    }
except ValueError as exc:  # the message names the scheme at most, never the URL
    raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Three processes share the file: WAL lets readers run beside the writer, IMMEDIATE
    # transactions take the write lock up front instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    # Not None, so that psycopg prepares the statements the hot paths mark for it
    # (bookworm_scheduler.kernel.db.prepared_cursor); Django's own cursors bind parameters on the
    # client and never prepare, whatever this says. 5 is psycopg's default.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 5)
DATABASES["default"]["TEST"] = {"NAME": _read("str", "TEST_DATABASE_NAME", None)}

# amqps:// for TLS: the broker's certificate is verified against its host name (outbox.broker).
RABBITMQ_URL = _secret("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F")
if not RABBITMQ_URL.startswith(("amqp://", "amqps://")):
    raise ImproperlyConfigured("RABBITMQ_URL: must start with amqp:// or amqps://")  # not echoed: it holds a password

# The scheduler (jobs/).
SCHEDULER_INSTANCE_ID = _read("str", "SCHEDULER_INSTANCE_ID", socket.gethostname())
# Both concurrencies default to the CPUs this process may use: its container's CPU quota, if any.
SCHEDULER_CONCURRENCY = _positive("int", "SCHEDULER_CONCURRENCY", available_cpus())
SCHEDULER_LEASE_SECONDS = _positive("int", "SCHEDULER_LEASE_SECONDS", 30)
SCHEDULER_MISFIRE_GRACE_SECONDS = _positive("int", "SCHEDULER_MISFIRE_GRACE_SECONDS", 60)
SCHEDULER_SHUTDOWN_TIMEOUT_SECONDS = _positive("int", "SCHEDULER_SHUTDOWN_TIMEOUT_SECONDS", 30)
SCHEDULER_LONG_RUNNING_CONCURRENCY = _positive("int", "SCHEDULER_LONG_RUNNING_CONCURRENCY", available_cpus())
SCHEDULER_HISTORY_DAYS = _positive("int", "SCHEDULER_HISTORY_DAYS", 30)
# Runs of short jobs grouped in one transaction (jobs.engine.groups.GroupRunner.run_group): at most this many, and
# none started once its thread spent this much CPU time in the group or it has been open ten times as
# long; a job that takes five times as long runs on its own. SCHEDULER_GROUP_RUNS=1: no groups.
SCHEDULER_GROUP_RUNS = _positive("int", "SCHEDULER_GROUP_RUNS", 20)
SCHEDULER_GROUP_MILLISECONDS = _positive("int", "SCHEDULER_GROUP_MILLISECONDS", 10)
SCHEDULER_JOB_MODULES = _read("list", "SCHEDULER_JOB_MODULES", [])
# The largest payload of a one-off run (jobs.engine.oneoff.schedule), in bytes of its JSON.
SCHEDULER_PAYLOAD_MAX_BYTES = _positive("int", "SCHEDULER_PAYLOAD_MAX_BYTES", 65536)
# Where claimed occurrences run (jobs/handover/executor.py): "inline", in the scheduler's own threads, or
# "celery", handed over through RabbitMQ to `celery -A bookworm_scheduler worker` processes.
SCHEDULER_EXECUTOR = _read("str", "SCHEDULER_EXECUTOR", "inline")
if SCHEDULER_EXECUTOR not in ("inline", "celery"):
    raise ImproperlyConfigured(f"SCHEDULER_EXECUTOR: must be 'inline' or 'celery', got {SCHEDULER_EXECUTOR!r}")
# With the celery executor: the queue of ordinary jobs (a priority queue; LongRunning jobs go to
# its name + ".long"), the most occurrences one scheduler keeps handed over but not yet started by
# a worker, and how long after the soft time limit (the job's timeout) a worker process is killed.
SCHEDULER_CELERY_QUEUE = _read("str", "SCHEDULER_CELERY_QUEUE", "bookworm.jobs")
SCHEDULER_CELERY_MAX_IN_FLIGHT = _positive("int", "SCHEDULER_CELERY_MAX_IN_FLIGHT", 1000)
SCHEDULER_CELERY_HARD_LIMIT_MARGIN_SECONDS = _positive("int", "SCHEDULER_CELERY_HARD_LIMIT_MARGIN_SECONDS", 10)

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

# /health/ (bookworm_scheduler/health.py), judged by the database's clock: a scheduler or relay is
# alive while its heartbeat is younger than HEALTH_HEARTBEAT_MAX_AGE_SECONDS; the outbox keeps up
# while its oldest pending message is younger than HEALTH_OUTBOX_MAX_AGE_SECONDS.
HEALTH_HEARTBEAT_MAX_AGE_SECONDS = _positive("int", "HEALTH_HEARTBEAT_MAX_AGE_SECONDS", 60)
HEALTH_OUTBOX_MAX_AGE_SECONDS = _positive("int", "HEALTH_OUTBOX_MAX_AGE_SECONDS", 300)
# Three heartbeats: a scheduler's come every third of its lease (jobs.engine.leases), a relay's every
# 5 s (outbox.heartbeat.Heartbeat). A shorter age would report live ones dead between two beats.
if HEALTH_HEARTBEAT_MAX_AGE_SECONDS < max(SCHEDULER_LEASE_SECONDS, 15):
    raise ImproperlyConfigured(
        f"HEALTH_HEARTBEAT_MAX_AGE_SECONDS: must be at least SCHEDULER_LEASE_SECONDS ({SCHEDULER_LEASE_SECONDS}) "
        f"and 15, got {HEALTH_HEARTBEAT_MAX_AGE_SECONDS}"
    )

# Alerts (jobs/alerts/delivery.py): by email to ALERT_EMAILS and/or by a JSON POST to ALERT_WEBHOOK_URL
# (a Slack or Microsoft Teams incoming webhook). With neither set, no alert is written or sent.
ALERT_EMAILS = _read("list", "ALERT_EMAILS", [])
for _address in ALERT_EMAILS:
    if "@" not in _address:
        raise ImproperlyConfigured(f"ALERT_EMAILS: not an email address: {_address!r}")
ALERT_WEBHOOK_URL = _read("str", "ALERT_WEBHOOK_URL", "")
ALERT_DASHBOARD_URL = _read("str", "ALERT_DASHBOARD_URL", "").rstrip("/")
for _name, _url in (("ALERT_WEBHOOK_URL", ALERT_WEBHOOK_URL), ("ALERT_DASHBOARD_URL", ALERT_DASHBOARD_URL)):
    if _url and not _url.startswith(("https://", "http://")):
        raise ImproperlyConfigured(f"{_name}: must start with https:// or http://")
# A channel's timeout (the webhook's and, unless EMAIL_URL sets one, SMTP's): alerts are sent
# from the scheduler's main thread, so a dead channel must not hold it for long.
ALERT_TIMEOUT_SECONDS = _positive("float", "ALERT_TIMEOUT_SECONDS", 5.0)
ALERT_MAX_ATTEMPTS = _positive("int", "ALERT_MAX_ATTEMPTS", 10)
# One alert when more than this share of the runs finished within the window failed for good
# (with at least ALERT_FAILURE_RATE_MIN_RUNS of them), then none for the cool-down.
ALERT_FAILURE_RATE_THRESHOLD = _read("float", "ALERT_FAILURE_RATE_THRESHOLD", 0.5)
if not 0 <= ALERT_FAILURE_RATE_THRESHOLD <= 1:
    raise ImproperlyConfigured(
        f"ALERT_FAILURE_RATE_THRESHOLD: a share between 0 and 1 (1 turns it off), got {ALERT_FAILURE_RATE_THRESHOLD}"
    )
ALERT_FAILURE_RATE_WINDOW_MINUTES = _positive("int", "ALERT_FAILURE_RATE_WINDOW_MINUTES", 15)
ALERT_FAILURE_RATE_MIN_RUNS = _positive("int", "ALERT_FAILURE_RATE_MIN_RUNS", 10)
ALERT_COOLDOWN_MINUTES = _positive("int", "ALERT_COOLDOWN_MINUTES", 60)

# Mail, for the alerts: EMAIL_URL such as submission://user:password@smtp.example.com:587
# (STARTTLS), smtp://localhost:25 (the default) or console:// (print them); see dj-email-url.
# It holds the SMTP password: a secret, so it may come from the file EMAIL_URL_FILE names.
try:
    _email = dj_email_url.parse(_secret("EMAIL_URL", "smtp://localhost:25"))
except ValueError:  # a port or a timeout that is not a number; the URL is not echoed
    raise ImproperlyConfigured("EMAIL_URL: not a valid email URL") from None
if "EMAIL_BACKEND" not in _email:
    raise ImproperlyConfigured("EMAIL_URL: unknown scheme; use smtp://, submission://, console:// or dummy://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_HOST = _email["EMAIL_HOST"] or "localhost"
EMAIL_PORT = _email["EMAIL_PORT"] or 25
EMAIL_HOST_USER = _email["EMAIL_HOST_USER"] or ""
EMAIL_HOST_PASSWORD = _email["EMAIL_HOST_PASSWORD"] or ""
EMAIL_USE_TLS = _email["EMAIL_USE_TLS"]
EMAIL_USE_SSL = _email["EMAIL_USE_SSL"]
EMAIL_TIMEOUT = _email["EMAIL_TIMEOUT"] or ALERT_TIMEOUT_SECONDS
EMAIL_FILE_PATH = _email["EMAIL_FILE_PATH"] or None
DEFAULT_FROM_EMAIL = _read("str", "DEFAULT_FROM_EMAIL", _email.get("DEFAULT_FROM_EMAIL", "scheduler@localhost"))


# Prometheus (bookworm_scheduler/metrics.py): the port on which `runscheduler` and `relay_outbox`
# serve their own process's metrics (0: not served), and the address they listen on. The web
# app's /metrics needs no setting. Traces are configured by the standard OTEL_* variables alone
# (bookworm_scheduler/kernel/tracing.py).
def _port(name):
    port = _read("int", name, 0)
    if not 0 <= port <= 65535:
        raise ImproperlyConfigured(f"{name}: a TCP port (1-65535), or 0 for none, got {port}")
    return port


SCHEDULER_METRICS_PORT = _port("SCHEDULER_METRICS_PORT")
RELAY_METRICS_PORT = _port("RELAY_METRICS_PORT")
METRICS_ADDRESS = _read("str", "METRICS_ADDRESS", "0.0.0.0")

INSTALLED_APPS = [
    # django.contrib.admin, whose site is the console (bookworm_scheduler/web/admin_site.py).
    "bookworm_scheduler.web.apps.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # django_celery_beat, its PeriodicTask named "job" (bookworm_scheduler/web/apps.py).
    "bookworm_scheduler.web.apps.ConsoleBeatConfig",
    "health_check",
    "django_htmx",
    # django-ninja's Swagger UI for /tickerq/api/docs, from its own static files (jobs/web/api.py).
    "ninja",
    "axes",
    "outbox",
    "jobs",
    # Starts OpenTelemetry when the OTEL_* variables ask for it, before middleware and connections.
    "bookworm_scheduler.kernel.tracing.TracingConfig",
]

MIDDLEWARE = [
    # First: answers /alive before the host check and the HTTPS redirect (bookworm_scheduler/health.py).
    "bookworm_scheduler.health.AliveMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # The Content-Security-Policy header of every answer (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The viewer's display zone (a cookie; UTC by default) for every time shown: bookworm_scheduler/web/display_zone.py.
    "bookworm_scheduler.web.display_zone.DisplayZoneMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # A session ends SESSION_IDLE_SECONDS after its own last request (bookworm_scheduler/web/sessions.py).
    "bookworm_scheduler.web.sessions.IdleSessionMiddleware",
    # HTTP Basic for scripts and monitors on the dashboard; after the session's user is known.
    "bookworm_scheduler.web.basic_auth.BasicAuthMiddleware",
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
AXES_LOCKOUT_CALLABLE = "bookworm_scheduler.web.basic_auth.lockout_response"
# Behind reverse proxies every request comes from the nearest proxy's address (REMOTE_ADDR), and
# throttling by address would count every client of a username as one: TRUSTED_PROXY_COUNT is the
# number of proxies in front of the web app, each appending its peer's address to X-Forwarded-For
# (basic_auth.client_address). django-ipware's proxy count, which django-axes would use, counts
# the proxies listed in that header instead, a number easy to get wrong by one. 0: REMOTE_ADDR.
TRUSTED_PROXY_COUNT = _read("int", "TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT: a number of proxies, or 0, got {TRUSTED_PROXY_COUNT}")
AXES_CLIENT_IP_CALLABLE = "bookworm_scheduler.web.basic_auth.client_address"
# No "AXES: BEGIN" line at every process start; failures and lockouts are still logged.
AXES_VERBOSE = False

# Headers. Scripts only from the service's own static files (no inline script, no eval: the templates
# load theirs from jobs/static/jobs/), and no page in a frame. Styles may be inline: Django's admin
# writes style attributes, and htmx adds its indicator's <style>.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# A console session ends SESSION_IDLE_SECONDS after its user's last request (the pages' own refreshes
# do not count: bookworm_scheduler.web.sessions.IdleSessionMiddleware). Logging out deletes it.
SESSION_IDLE_SECONDS = _positive("int", "SESSION_IDLE_SECONDS", 3600)
SESSION_COOKIE_AGE = SESSION_IDLE_SECONDS
SESSION_COOKIE_HTTPONLY = True

# The largest request body the API reads (jobs.web.api_urls): a bigger one is refused (413) unread. It
# holds a payload of up to SCHEDULER_PAYLOAD_MAX_BYTES and its follow-ups'.
API_BODY_MAX_BYTES = _positive("int", "API_BODY_MAX_BYTES", 262144)
if API_BODY_MAX_BYTES < SCHEDULER_PAYLOAD_MAX_BYTES:
    raise ImproperlyConfigured(
        f"API_BODY_MAX_BYTES: at least SCHEDULER_PAYLOAD_MAX_BYTES ({SCHEDULER_PAYLOAD_MAX_BYTES}), "
        f"got {API_BODY_MAX_BYTES}"
    )

if not DEBUG:
    # Serves the admin's static files under gunicorn, right after SecurityMiddleware as whitenoise
    # asks: hashed, compressed copies made by collectstatic (the Dockerfile runs it).
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
        "whitenoise.middleware.WhiteNoiseMiddleware",
    )
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }

    # HTTPS. gunicorn speaks plain HTTP: TLS ends at a proxy in front of it, which tells Django the
    # original scheme in the header SECURE_PROXY_SSL_HEADER names (e.g. X-Forwarded-Proto). Set it
    # only when every request comes through that proxy, which must overwrite the header.
    SECURE_SSL_REDIRECT = _read("bool", "SECURE_SSL_REDIRECT", True)
    _proxy_header = _read("str", "SECURE_PROXY_SSL_HEADER", "")
    if _proxy_header:
        if not re.fullmatch(r"[A-Za-z0-9-]+", _proxy_header):
            raise ImproperlyConfigured(
                f"SECURE_PROXY_SSL_HEADER: a header name like X-Forwarded-Proto, not {_proxy_header!r}"
            )
        SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
    # Monitors inside the network ask over plain HTTP (/alive never reaches this middleware).
    SECURE_REDIRECT_EXEMPT = [r"^health/$"]
    SECURE_HSTS_SECONDS = _read("int", "SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _read("bool", "SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _read("bool", "SECURE_HSTS_PRELOAD", False)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

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
if RABBITMQ_URL.startswith("amqps://"):
    # kombu verifies the certificate with amqps:// (against the system's CAs, or the file SSL_CERT_FILE
    # names), but checks the host name only when given it, as pika is (outbox.broker.connection_parameters).
    CELERY_BROKER_USE_SSL = {"server_hostname": urlsplit(RABBITMQ_URL).hostname, "cert_reqs": ssl.CERT_REQUIRED}
# The worker's behaviour (jobs/handover/worker.py; its queues: bookworm_scheduler/celery.py): a message is
# acknowledged after its run (a killed worker's message is delivered again), a worker holds no more
# messages than it runs (so priorities decide what runs next), and a publish waits for the broker's
# confirm.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
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
        # One line per event in both formats (see bookworm_scheduler/kernel/logs.py).
        "text": {
            "()": "bookworm_scheduler.kernel.logs.OneLineFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "filters": {"database_unavailable": {"()": "bookworm_scheduler.web.database_down.DatabaseUnavailableRequests"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # The relay logs one line per failed broker connection attempt, with its cause; pika's
    # own account of the same failure is seven ERROR lines.
    # django-axes logs every successful login at INFO.
    # A request the unreachable database failed is one line, not a traceback (bookworm_scheduler/web/database_down.py).
    "loggers": {
        "pika": {"level": "CRITICAL"},
        "axes": {"level": "WARNING"},
        "django.request": {"filters": ["database_unavailable"]},
    },
}
