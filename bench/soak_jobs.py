"""The jobs `make soak` runs (bench/soak.py); schedulers load them through SCHEDULER_JOB_MODULES.

Every job publishes one of BookWorm's two real integration events through the outbox, in the
run's transaction, with the occurrence and attempt in the envelope's headers: the soak's
consumer can then tie what it receives to the run that committed it, and an event of a run
that rolled back must never reach it.

Failures are a function of the occurrence id and the attempt, not of chance, so that the soak
can tell, from the database alone, which attempts had to fail and check that the retries
followed each definition's policy:

- soak.publish: always succeeds.
- soak.flaky: fails on attempt 1 of every occurrence whose id is divisible by kwargs["every"]
  (default 4), and on every attempt of those divisible by kwargs["always_every"] (default 13).
- soak.slow: waits kwargs["seconds"] (longer than its interval) before publishing. It waits
  with threading.Event().wait(), not time.sleep(): the soak's fast-clock scheduler runs under
  libfaketime with FAKETIME_DONT_FAKE_MONOTONIC=1, where time.sleep() fails with EINVAL
  (wolfcw/libfaketime#426) while a timed lock wait (CLOCK_MONOTONIC) works.
- soak.oneoff: the one-off runs' job (bench/soak_oneoff.py schedules them with jobs.schedule). It
  publishes one event whose headers also carry its payload (so the consumer's record shows that it
  round-tripped) and, for a follow-up, its parent's id and final status (JobContext.parent); it
  fails as oneoff_fails says of payload["fail"], and returns {"marker": ..., "attempt": ...}.
"""

import threading

from jobs.engine.registry import JobContext, job
from jobs.seed.contracts import CleanUpSentEmailIntegrationEvent, ResendErrorEmailIntegrationEvent
from outbox.publishing import publish

EVENTS = {"clean": CleanUpSentEmailIntegrationEvent, "resend": ResendErrorEmailIntegrationEvent}


class PlannedFailure(RuntimeError):
    """A failure the soak planned (see flaky_fails)."""


def flaky_fails(occurrence_id: int, attempt: int, *, every: int, always_every: int) -> bool:
    """Whether soak.flaky fails this attempt: the rule the soak's retry check repeats."""
    if always_every and occurrence_id % always_every == 0:
        return True
    return attempt == 1 and bool(every) and occurrence_id % every == 0


def _publish(context: JobContext) -> None:
    event = EVENTS[context.kwargs.get("event", "clean")]
    publish(
        event(),
        headers={"soakOccurrence": context.occurrence_id, "soakAttempt": context.attempt, "soakJob": context.job_name},
    )


def oneoff_fails(payload: dict, attempt: int) -> bool:
    """Whether soak.oneoff fails this attempt: "first" fails attempt 1, "always" every attempt."""
    rule = payload.get("fail")
    return rule == "always" or (rule == "first" and attempt == 1)


@job("soak.publish")
def soak_publish(context: JobContext) -> None:
    """Publish one event."""
    _publish(context)


@job("soak.flaky")
def soak_flaky(context: JobContext) -> None:
    """Publish one event, then fail on the attempts flaky_fails names (the event rolls back)."""
    _publish(context)
    every, always_every = context.kwargs.get("every", 4), context.kwargs.get("always_every", 13)
    if flaky_fails(context.occurrence_id, context.attempt, every=every, always_every=always_every):
        raise PlannedFailure(f"planned failure of occurrence {context.occurrence_id} attempt {context.attempt}")


@job("soak.slow")
def soak_slow(context: JobContext) -> None:
    """Wait kwargs["seconds"] (longer than the interval), then publish one event."""
    threading.Event().wait(context.kwargs.get("seconds", 3))
    _publish(context)


@job("soak.oneoff", retries=1, retry_intervals=[1])
def soak_oneoff(context: JobContext) -> dict:
    """Publish one event carrying the payload (and the parent), then fail as oneoff_fails says."""
    parent = context.parent
    headers = {
        "soakOccurrence": context.occurrence_id,
        "soakAttempt": context.attempt,
        "soakJob": context.job_name,
        "soakPayload": context.payload,
        "soakParent": parent.id if parent else None,
        "soakParentStatus": parent.status if parent else None,
    }
    publish(EVENTS[context.payload.get("event", "clean")](), headers=headers)
    if oneoff_fails(context.payload, context.attempt):
        raise PlannedFailure(f"planned failure of one-off occurrence {context.occurrence_id} attempt {context.attempt}")
    return {"marker": context.payload.get("marker"), "attempt": context.attempt}
