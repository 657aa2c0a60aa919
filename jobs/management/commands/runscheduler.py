"""manage.py runscheduler: the cron loop. Thin: parse options, build a Scheduler, loop."""

import signal
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from bookworm_scheduler.backoff import Backoff
from jobs.scheduler import Scheduler, log_database_error


class Command(BaseCommand):
    help = "Run due jobs: plan occurrences, claim and run them, until SIGTERM or SIGINT."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=settings.SCHEDULER_CONCURRENCY)
        parser.add_argument("--instance-id", default=settings.SCHEDULER_INSTANCE_ID)
        parser.add_argument(
            "--once", action="store_true", help="Plan and run what is due now, then exit (for cron and tests)."
        )
        parser.add_argument("--shutdown-timeout", type=float, default=settings.SCHEDULER_SHUTDOWN_TIMEOUT_SECONDS)

    def handle(self, *args, **options):
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        scheduler = Scheduler(
            instance_id=options["instance_id"],
            concurrency=options["concurrency"],
            lease=timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS),
            grace=timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_SECONDS),
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: scheduler.stop())
        if options["once"]:
            self.run_once(scheduler, options["shutdown_timeout"])
        else:
            self.run_forever(scheduler, options["shutdown_timeout"])

    def run_once(self, scheduler, shutdown_timeout):
        scheduler.register(timezone.now())
        while scheduler.tick(timezone.now()) or scheduler.run_ready():
            pass
        scheduler.shutdown(shutdown_timeout)

    def run_forever(self, scheduler, shutdown_timeout):
        registered, backoff = False, Backoff()
        while not scheduler.stopping:
            try:
                close_old_connections()
                if not registered:
                    scheduler.register(timezone.now())
                    scheduler.start_workers()
                    registered = True
                while scheduler.tick(timezone.now()) and not scheduler.stopping:
                    pass
                backoff.reset()
                scheduler.sleep_until(scheduler.next_wakeup(timezone.now()))
            except DatabaseError as exc:
                delay = backoff.next()
                log_database_error(exc, delay, where="main")
                connection.close()
                scheduler.sleep(delay)
        scheduler.shutdown(shutdown_timeout)
