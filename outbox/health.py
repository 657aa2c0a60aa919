"""Health check of the message bus, for /health/ (django-health-check).

bookworm_scheduler.health lists it under the name `broker`, with the other checks' names and the
way a failure is logged.
"""

import dataclasses
import datetime

import pika
import pika.exceptions
from django.conf import settings
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

from outbox.broker import connection_parameters, describe


@dataclasses.dataclass
class RabbitMQ(HealthCheck):
    """Open and close a connection to RABBITMQ_URL: the relay's broker is reachable."""

    timeout = datetime.timedelta(seconds=5)

    def run(self):
        parameters = connection_parameters(
            settings.RABBITMQ_URL, blocked_timeout=settings.OUTBOX_BLOCKED_TIMEOUT_SECONDS
        )
        parameters.socket_timeout = parameters.stack_timeout = 3
        try:
            pika.BlockingConnection(parameters).close()
        except (pika.exceptions.AMQPError, OSError) as error:  # OSError: a TLS handshake refused (ssl.SSLError)
            # The host and port only: the URL may carry credentials.
            where = f"{parameters.host}:{parameters.port} (RABBITMQ_URL)"
            raise ServiceUnavailable(f"{where}: {describe(error)}") from error
