"""The Celery app: workers that run the occurrences a scheduler hands over (SCHEDULER_EXECUTOR=celery).

`celery -A bookworm_scheduler worker` consumes the two queues below; the one task is
jobs.handover.worker.run_occurrence. Schedulers publish to them (jobs.handover.executor.CeleryExecutor).
"""

import logging
import os
from urllib.parse import urlsplit

from celery import Celery, signals
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")

# Message priorities are jobs.engine.policy.Priority values (Low 0, Normal 1, High 2); the queue of
# ordinary jobs is a RabbitMQ priority queue with that many levels.
MAX_PRIORITY = 3


def job_queues(name: str) -> tuple[Queue, Queue]:
    """The durable queues of ordinary jobs (by priority) and of LongRunning ones (name + ".long")."""
    exchange = Exchange(name, type="direct", durable=True)
    return (
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments={"x-max-priority": MAX_PRIORITY}),
        Queue(f"{name}.long", exchange, routing_key=f"{name}.long", durable=True),
    )


# How celery.worker.consumer.consumer.CONNECTION_ERROR begins (not imported: every process imports this module).
CONNECTION_ERROR = "consumer: Cannot connect to %s: %s."


class BrokerConnectionErrors(logging.Filter):
    """A worker's failed connection to the broker in one line that names RABBITMQ_URL and why, as the relay's.

    Celery logs "consumer: Cannot connect to amqps://user:**@host:port//: <error>.\nTrying again ..."
    (its CONNECTION_ERROR) with OpenSSL's code and Python's source line in the error; here it becomes
    "consumer: cannot reach the broker at host:port (RABBITMQ_URL): <outbox.broker.describe>; Trying again ...".
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(CONNECTION_ERROR) and isinstance(record.args, tuple) and len(record.args) == 3:
            from outbox.broker import describe

            uri, error, next_step = record.args
            where = urlsplit(uri)
            record.msg = "consumer: cannot reach the broker at %s:%s (RABBITMQ_URL): %s; %s"
            record.args = (where.hostname, where.port, describe(error), next_step)
        return True


logging.getLogger("celery.worker.consumer.consumer").addFilter(BrokerConnectionErrors())


class BrokerRefusals(logging.Filter):
    """A worker the broker refuses for good (a wrong password, a vhost it may not use) says so in one line.

    Celery logs "Unrecoverable error: AccessRefused(...)" at CRITICAL with its traceback, then exits; here an
    AMQP error becomes "worker: the broker refused it (RABBITMQ_URL): <outbox.broker.describe>; exiting", without
    the traceback. Any other unrecoverable error is left as Celery logs it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if str(record.msg).startswith("Unrecoverable error") and _amqp_error(error):
            from outbox.broker import describe

            record.msg, record.args = "worker: the broker refused it (RABBITMQ_URL): %s; exiting", (describe(error),)
            record.exc_info, record.exc_text = None, None
        return True


def _amqp_error(error: BaseException | None) -> bool:
    from amqp.exceptions import AMQPError

    return isinstance(error, AMQPError)


logging.getLogger("celery.worker").addFilter(BrokerRefusals())  # celery.worker.worker logs as celery.worker

app = Celery("bookworm_scheduler")
app.config_from_object("django.conf:settings", namespace="CELERY")


@signals.worker_init.connect
def _bound_idle_transactions(**kwargs):
    """A worker's sessions are ended once idle in a transaction past a scheduler's bound (kernel.liveness), as a
    scheduler's are: a worker paused inside a job's transaction frees its locks. Set in the worker's main process,
    before its pool's processes are forked (they inherit it)."""
    from bookworm_scheduler.kernel.db import bound_idle_transactions
    from bookworm_scheduler.kernel.liveness import scheduler_liveness

    bound_idle_transactions(scheduler_liveness().idle_in_transaction)


@app.on_after_configure.connect
def _declare_job_queues(sender, **kwargs):
    from django.conf import settings

    sender.conf.task_queues = job_queues(settings.SCHEDULER_CELERY_QUEUE)
    sender.conf.task_default_queue = settings.SCHEDULER_CELERY_QUEUE
    # The tasks: the hand-over's and stock celery beat's (not in a `tasks` module, where autodiscovery looks).
    sender.conf.imports = ("jobs.handover.worker", "jobs.handover.beat")
