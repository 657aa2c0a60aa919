"""/alive and /health/: is the web process up, and is the whole service working?

/alive answers 200 while the process serves requests, and asks nothing else: the container's
HEALTHCHECK restarts a web process that stopped answering. AliveMiddleware answers it before
Django checks the Host header or redirects to HTTPS, since a container's or an orchestrator's
probe asks by address (Host: 127.0.0.1:8000), which ALLOWED_HOSTS rightly refuses.

/health/ is django-health-check's view over CHECKS (HealthView): 200 when every check passes,
500 naming each one that failed; HTML for a person, JSON with `Accept: application/json` or
`?format=json`. A check goes by the name an operator knows it by (Check.name: database, broker,
schedulers, relays, outbox_backlog, migrations), the row of the page, the key of the JSON and the
`check` label of `?format=openmetrics`; these names are stable. A failing check logs one WARNING
line, action health_check_failed, and nothing else does: no traceback, no "Internal Server Error".
The checks run at once, each in a thread of its own with a connection of its own that it closes.
Ages are judged by the database's clock (bookworm_scheduler.kernel.clock), the one that stamped them.
Messages name what failed and how, never a URL, a host's credentials or a database error's text.

This module wires the apps together: outbox knows nothing of jobs, so checks that read both
live here, and so does the name of outbox.health's broker check.
"""

import asyncio
import contextlib
import inspect
import logging
import timeit

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, Error, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse
from django.utils.cache import add_never_cache_headers
from health_check import checks
from health_check.base import HealthCheck, HealthCheckResult
from health_check.exceptions import HealthCheckException, ServiceUnavailable
from health_check.views import HealthCheckView

from bookworm_scheduler.kernel.clock import database_now
from bookworm_scheduler.kernel.db import connect_failure_reason
from bookworm_scheduler.kernel.liveness import health_max_age
from jobs.models import SchedulerInstance
from outbox.health import RabbitMQ
from outbox.models import OutboxMessage, RelayInstance

logger = logging.getLogger(__name__)

CHECKS = [
    "bookworm_scheduler.health.Database",
    "bookworm_scheduler.health.Broker",
    "bookworm_scheduler.health.SchedulerHeartbeat",
    "bookworm_scheduler.health.RelayHeartbeat",
    "bookworm_scheduler.health.OutboxBacklog",
    "bookworm_scheduler.health.Migrations",
]


class AliveMiddleware:
    """Answer GET and HEAD /alive with 200; first in MIDDLEWARE, so nothing before it can refuse."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == "/alive" and request.method in ("GET", "HEAD"):
            response = HttpResponse("alive\n", content_type="text/plain; charset=utf-8")
            add_never_cache_headers(response)
            return response
        return self.get_response(request)


class HealthView(HealthCheckView):
    """/health/: django-health-check's view over CHECKS, whose 500 is not logged a second time."""

    checks = CHECKS

    async def get(self, request, *args, **kwargs):
        response = await super().get(request, *args, **kwargs)
        if response.status_code >= 500:
            # Each failing check has logged its own line (Check.get_result). Django's mark for a
            # response already logged keeps django.request from adding "Internal Server Error:
            # /health/" at ERROR on every poll of a probe.
            response._has_been_logged = True
        return response


class Check(HealthCheck):
    """A django-health-check check under its operator's name, whose failure is one log line.

    The view shows a check by its repr (the page's row, the JSON's key, the text's line) and
    labels its OpenMetrics series with `labels`: both are the name.
    """

    name = ""

    def __repr__(self):
        return self.name

    @property
    def labels(self) -> dict[str, str]:
        return {"check": self.name}

    async def get_result(self, executor=None) -> HealthCheckResult:
        # HealthCheck.get_result (django-health-check 4.8) runs the probe the same way, but logs
        # each failure with its traceback on its own logger: every poll of a failing probe
        # would add a traceback to the log. This one logs a failure once, in one line.
        start = timeit.default_timer()
        bug = None
        try:
            if inspect.iscoroutinefunction(self.run):
                probe = self.run()
            else:
                probe = asyncio.get_running_loop().run_in_executor(executor, self.run)
            # A second more than the budget, for the check's own client timeout to report first.
            await asyncio.wait_for(probe, self.timeout.total_seconds() + 1)
        except HealthCheckException as failure:
            error = failure
        except TimeoutError:
            error = ServiceUnavailable(f"no answer within {self.timeout.total_seconds():g} s")
        except Exception as exception:
            # A fault of the check, not of what it checks: its traceback is worth an ERROR.
            bug = exception
            error = HealthCheckException(type(exception).__name__)
        else:
            error = None
        if error is not None:
            logger.log(
                logging.ERROR if bug else logging.WARNING,
                "health check %s failed: %s",
                self.name,
                error,
                exc_info=bug,
                extra={"action": "health_check_failed", "check": self.name, "error": str(error)},
            )
        return HealthCheckResult(check=self, error=error, time_taken=timeit.default_timer() - start)


class Database(Check, checks.Database):
    """SELECT 1 on the default database: django-health-check's own check, under our name.

    A connection refused for a reason an operator fixes in DATABASE_URL (its certificate, its
    host name, TLS asked of a plain server, its password) says which, in kernel.db's few words.
    """

    name = "database"

    def run(self):
        try:
            super().run()
        except ServiceUnavailable as failure:
            reason = connect_failure_reason(failure)
            if reason is None:
                raise
            raise ServiceUnavailable(f"DATABASE_URL: connection failed: {reason}") from failure.__cause__


class Broker(Check, RabbitMQ):
    """A connection to RABBITMQ_URL opens (outbox.health.RabbitMQ)."""

    name = "broker"


@contextlib.contextmanager
def reading(alias: str = DEFAULT_DB_ALIAS):
    """This thread's connection for a check's queries, closed after them if they opened it.

    A database error fails the check by its kind only: its text may name hosts and users.
    """
    connection = connections[alias]
    try:
        with connection.temporary_connection():
            yield connection
    except Error as error:
        raise ServiceUnavailable(f"cannot read the database ({type(error).__name__})") from error


class Heartbeat(Check):
    """At least one running instance of `model` beat within health_max_age (bookworm_scheduler.kernel.liveness)."""

    model = None
    what = ""

    def run(self):
        max_age = health_max_age()
        with reading() as connection:
            now = database_now(connection.alias)
            instances = self.model.objects.using(connection.alias)
            if instances.alive().filter(last_seen__gte=now - max_age).exists():
                return
            latest = instances.order_by("-last_seen").values_list("last_seen", flat=True).first()
        if latest is None:
            raise ServiceUnavailable(f"no {self.what} has registered")
        age = (now - latest).total_seconds()
        raise ServiceUnavailable(
            f"no {self.what} has beaten in the last {max_age.total_seconds():.0f} s (the latest beat {age:.0f} s ago)"
        )


class SchedulerHeartbeat(Heartbeat):
    """A runscheduler process is alive (jobs.SchedulerInstance, renewed per scheduler_liveness)."""

    name = "schedulers"
    model = SchedulerInstance
    what = "scheduler"


class RelayHeartbeat(Heartbeat):
    """A relay_outbox process is alive (outbox.RelayInstance, renewed per relay_liveness)."""

    name = "relays"
    model = RelayInstance
    what = "relay"


class OutboxBacklog(Check):
    """The oldest pending outbox message is younger than HEALTH_OUTBOX_MAX_AGE_SECONDS: the relays keep up."""

    name = "outbox_backlog"

    def run(self):
        max_age = settings.HEALTH_OUTBOX_MAX_AGE_SECONDS
        with reading() as connection:
            now = database_now(connection.alias)
            # The first pending row in write order, one step into the index outbox_pending (as
            # OutboxQuerySet.status_counts finds it); a row waiting for a retry counts too.
            oldest = (
                OutboxMessage.objects.using(connection.alias)
                .filter(status=OutboxMessage.Status.PENDING)
                .order_by("id")
                .values_list("created_at", flat=True)
                .first()
            )
        if oldest is not None and (age := (now - oldest).total_seconds()) > max_age:
            raise ServiceUnavailable(f"the oldest pending message is {age:.0f} s old (more than {max_age} s)")


class Migrations(Check):
    """Every migration this code has is applied: a release whose `migrate` has not run is not healthy."""

    name = "migrations"

    def run(self):
        with reading() as connection:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            names = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ServiceUnavailable(f"{len(names)} unapplied: {shown}")
