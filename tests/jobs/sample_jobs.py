"""Jobs the tests run. Subprocess schedulers load them through SCHEDULER_JOB_MODULES."""

import dataclasses
import time

from jobs.registry import JobContext, job
from outbox.events import IntegrationEvent
from outbox.publishing import publish


@dataclasses.dataclass(frozen=True)
class SampleRanEvent(IntegrationEvent):
    message_namespace = "BookWorm.Tests"
    occurrence: int = 0
    attempt: int = 0


@job("test.publish")
def publish_one(context: JobContext) -> None:
    """Publish one event naming the occurrence: the outbox shows how often each one ran."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.fail")
def fail(context: JobContext) -> None:
    """Publish, then raise: the event must roll back with the failed run."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    raise RuntimeError("the sample job failed on purpose")


@job("test.fail_until")
def fail_until(context: JobContext) -> None:
    """Fail every attempt before kwargs["succeed_on"]."""
    if context.attempt < context.kwargs.get("succeed_on", 2):
        raise RuntimeError(f"attempt {context.attempt} fails")
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.sleep")
def sleep(context: JobContext) -> None:
    """Sleep kwargs["seconds"] in short slices (on attempt kwargs["on_attempt"] only, if given)."""
    if context.kwargs.get("on_attempt", context.attempt) == context.attempt:
        deadline = time.monotonic() + context.kwargs.get("seconds", 1)
        while time.monotonic() < deadline:
            time.sleep(0.02)
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
