"""The job the scheduler benchmark runs: publish one outbox message, as the seed jobs do."""

import dataclasses

from jobs.engine.registry import JobContext, job
from outbox.events import IntegrationEvent
from outbox.publishing import publish


@dataclasses.dataclass(frozen=True)
class BenchRanEvent(IntegrationEvent):
    message_namespace = "BookWorm.Bench"


@job("bench.publish")
def publish_one(context: JobContext) -> None:
    publish(BenchRanEvent())
