"""/alive and /health/: is the web process up, and is the whole service working?

/alive answers 200 while the process serves requests, and asks nothing else: the container's
HEALTHCHECK restarts a web process that stopped answering. AliveMiddleware answers it before
Django checks the Host header or redirects to HTTPS, since a container's or an orchestrator's
probe asks by address (Host: 127.0.0.1:8000), which ALLOWED_HOSTS rightly refuses.

/health/ is django-health-check's view over CHECKS: 200 when every check passes, 500 naming each
one that failed; HTML for a person, JSON with `Accept: application/json` or `?format=json`. The
checks run at once, each in a thread of its own with a connection of its own that it closes.
Ages are judged by the database's clock (bookworm_scheduler.clock), the one that stamped them.
Messages name what failed and how, never a URL, a host's credentials or a database error's text.

This module wires the apps together: outbox knows nothing of jobs, so checks that read both
live here; outbox.health has the broker's.
"""

import contextlib
import dataclasses
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, Error, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse
from django.utils.cache import add_never_cache_headers
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

from jobs.models import SchedulerInstance
from outbox.models import OutboxMessage, RelayInstance

from .clock import database_now

CHECKS = [
    "health_check.checks.Database",
    "outbox.health.RabbitMQ",
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


@dataclasses.dataclass
class Heartbeat(HealthCheck):
    """At least one running instance of `model` beat within HEALTH_HEARTBEAT_MAX_AGE_SECONDS."""

    model = None  # class attributes, not dataclass fields: the check's repr stays "Name()"
    what = ""

    def run(self):
        max_age = settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS
        with reading() as connection:
            now = database_now(connection.alias)
            instances = self.model.objects.using(connection.alias)
            if instances.alive().filter(last_seen__gte=now - timedelta(seconds=max_age)).exists():
                return
            latest = instances.order_by("-last_seen").values_list("last_seen", flat=True).first()
        if latest is None:
            raise ServiceUnavailable(f"no {self.what} has registered")
        age = (now - latest).total_seconds()
        raise ServiceUnavailable(f"no {self.what} has beaten in the last {max_age} s (the latest beat {age:.0f} s ago)")


@dataclasses.dataclass
class SchedulerHeartbeat(Heartbeat):
    """A runscheduler process is alive (jobs.SchedulerInstance, renewed every third of the lease)."""

    model = SchedulerInstance
    what = "scheduler"


@dataclasses.dataclass
class RelayHeartbeat(Heartbeat):
    """A relay_outbox process is alive (outbox.RelayInstance, renewed every 5 s)."""

    model = RelayInstance
    what = "relay"


@dataclasses.dataclass
class OutboxBacklog(HealthCheck):
    """The oldest pending outbox message is younger than HEALTH_OUTBOX_MAX_AGE_SECONDS: the relays keep up."""

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


@dataclasses.dataclass
class Migrations(HealthCheck):
    """Every migration this code has is applied: a release whose `migrate` has not run is not healthy."""

    def run(self):
        with reading() as connection:
            executor = MigrationExecutor(connection)
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            names = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ServiceUnavailable(f"{len(names)} unapplied: {shown}")
