"""`manage.py relay_outbox [--once]`: send committed outbox rows to RabbitMQ."""

import gc
import signal
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from bookworm_scheduler.kernel import daemon_metrics
from bookworm_scheduler.kernel.db import bound_idle_transactions
from bookworm_scheduler.kernel.liveness import relay_liveness
from outbox import relay_metrics as metrics
from outbox.broker import Broker, BrokerUnavailable, connection_parameters
from outbox.envelope import EnvelopeWriter, broker_address
from outbox.heartbeat import Heartbeat
from outbox.relay import Relay, run
from outbox.waker import Waker


class Command(BaseCommand):
    help = (
        "Send committed outbox messages to RabbitMQ and mark them delivered once confirmed. "
        "Runs until SIGTERM/SIGINT, which let the batches in flight finish."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--once",
            action="store_true",
            help="deliver what is pending, then exit; fail at once if the broker cannot be reached",
        )

    def handle(self, *args, once: bool, **options):
        stop_requests = []

        def request_stop(signum, frame):
            stop_requests.append(signum)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        if settings.RELAY_METRICS_PORT:
            try:
                daemon_metrics.serve(settings.RELAY_METRICS_PORT, settings.METRICS_ADDRESS, metrics.REGISTRY)
            except OSError as error:
                raise CommandError(f"RELAY_METRICS_PORT: cannot serve metrics: {error}") from None
            metrics.measure_latency = True
            # Its age is how long the relay has gone without finishing a pass: a relay that has just
            # started has not had time to yet.
            metrics.LAST_BATCH.set_to_current_time()

        # This process's batches lose their locks once idle longer than a live relay waits (a pause, say).
        bound_idle_transactions(relay_liveness().idle_in_transaction)
        parameters = connection_parameters(
            settings.RABBITMQ_URL, blocked_timeout=settings.OUTBOX_BLOCKED_TIMEOUT_SECONDS
        )
        broker = Broker(parameters, confirm_timeout=settings.OUTBOX_CONFIRM_TIMEOUT_SECONDS)
        writer = EnvelopeWriter(
            broker_address(
                parameters.host, parameters.port, parameters.virtual_host, parameters.ssl_options is not None
            )
        )
        relay = Relay(
            broker,
            writer,
            batch_size=settings.OUTBOX_BATCH_SIZE,
            max_attempts=settings.OUTBOX_MAX_ATTEMPTS,
            retry_max_seconds=settings.OUTBOX_RETRY_MAX_SECONDS,
        )
        waker = Waker()
        heartbeat = Heartbeat(relay.clock)  # the instance row: registered at the loop's first turn
        # What start-up made lives as long as the process: out of the collector's reach, a full
        # collection does not walk it again, the relay's publishing held up meanwhile.
        gc.freeze()
        try:
            run(
                relay,
                waker,
                poll_seconds=settings.OUTBOX_POLL_SECONDS,
                purge_every=settings.OUTBOX_RETENTION_INTERVAL_SECONDS,
                retention=timedelta(days=settings.OUTBOX_RETENTION_DAYS),
                duplicate_window=timedelta(seconds=settings.OUTBOX_DUPLICATE_WINDOW_SECONDS),
                stopping=lambda: bool(stop_requests),
                once=once,
                heartbeat=heartbeat.beat,
            )
        except BrokerUnavailable as error:
            raise CommandError(str(error)) from None
        finally:
            heartbeat.retire()
            broker.close()
            relay.close()
            waker.close()
