"""manage.py runscheduler: the cron loop. Thin: parse options, build a Scheduler, run it."""

import gc
import logging
import os
import signal
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bookworm_scheduler.kernel import daemon_metrics, tracing
from bookworm_scheduler.kernel.db import bound_idle_transactions
from bookworm_scheduler.kernel.liveness import scheduler_liveness
from bookworm_scheduler.kernel.signals import on_signals
from jobs.engine import scheduler_metrics as metrics
from jobs.engine.loop import Scheduler


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
        if settings.SCHEDULER_METRICS_PORT:
            try:
                daemon_metrics.serve(settings.SCHEDULER_METRICS_PORT, settings.METRICS_ADDRESS, metrics.REGISTRY)
            except OSError as error:
                raise CommandError(f"SCHEDULER_METRICS_PORT: cannot serve metrics: {error}") from None
        # This process's transactions lose their locks once idle for two renewals (a pause, say);
        # not the web app's, whose requests wait on nothing but the database.
        bound_idle_transactions(scheduler_liveness().idle_in_transaction)
        scheduler = Scheduler(
            instance_id=options["instance_id"],
            concurrency=options["concurrency"],
            long_running_concurrency=settings.SCHEDULER_LONG_RUNNING_CONCURRENCY,
            lease=timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS),
            grace=timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_SECONDS),
            history=timedelta(days=settings.SCHEDULER_HISTORY_DAYS),
            executor=settings.SCHEDULER_EXECUTOR,
            group_runs=settings.SCHEDULER_GROUP_RUNS,
            group_seconds=settings.SCHEDULER_GROUP_MILLISECONDS / 1000,
        )
        # Not scheduler.stop() in a handler: it sets an event whose lock the interrupted main thread may hold.
        on_signals(scheduler.stop, (signal.SIGTERM, signal.SIGINT))
        # What start-up made (Django, the apps, the jobs) lives as long as the process: out of the
        # collector's reach, a full collection does not walk it again, with the GIL held.
        gc.freeze()
        still_running = scheduler.run(once=options["once"], shutdown_timeout=options["shutdown_timeout"])
        if still_running:
            # The pool's threads cannot be stopped and Python would wait for them at exit;
            # their leases expire and another scheduler retries what they ran. os._exit skips
            # the atexit hooks: the spans still buffered are exported first.
            tracing.shutdown()
            logging.shutdown()
            os._exit(0)
