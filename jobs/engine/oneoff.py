"""One-off runs of registered jobs, scheduled from code in the caller's transaction (TickerQ's time tickers).

    from jobs import schedule

    with transaction.atomic():
        order.save()
        schedule("SendOrderReminderJob", at=order.created_at + timedelta(hours=24),
                 payload={"order_id": order.id}, key=f"reminder:{order.id}")

schedule() checks what it is given and writes one occurrence row (jobs.engine.oneoff_store.insert),
committing nothing: the run exists if and only if the caller's transaction commits. The job sees the
payload as JobContext.payload; what it returns is kept as the occurrence's result. The run is claimed,
leased, retried (by its job's policy: JobSpec.policy) and recorded as any other occurrence; found
late (every scheduler was down) it runs as soon as one is back, never missed; with an expiry, a run
not started by then is recorded expired (jobs.engine.runner), never run late. schedule_many() does
the same for many runs in one statement. then=[FollowUp(...)]: runs created when this one ends
(oneoff_store.follow_ups, in the transaction of that end), each seeing it as JobContext.parent.
"""

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from django.conf import settings

from bookworm_scheduler.kernel.clock import default_clock
from jobs.engine import oneoff_store
from jobs.engine.oneoff_store import FOLLOW_UP_WHEN
from jobs.engine.policy import Priority
from jobs.engine.registry import get_job, registered_jobs
from jobs.engine.schedules import did_you_mean
from jobs.models import Occurrence

KEY_MAX_LENGTH = 200  # Occurrence.key
# The deepest nesting of a payload's objects and lists: deeper ones are refused before json.dumps, which
# (like every reader of the payload after it) recurses once per level.
PAYLOAD_MAX_DEPTH = 32
# The most follow-ups one run may have: a handful is the use (a run's children are read whole), and a crafted
# list of thousands would make as many runs at its end.
FOLLOW_UPS_MAX = 20


class ScheduleError(ValueError):
    """A one-off run that cannot be scheduled as asked: the message says why."""


class UnknownJob(ScheduleError):
    """No registered job has that name."""


class PayloadError(ScheduleError):
    """The payload is not a JSON object, or is larger than SCHEDULER_PAYLOAD_MAX_BYTES."""


@dataclasses.dataclass(frozen=True)
class FollowUp:
    """A run of `job` created when its parent ends `when` (succeeded, failed, cancelled or finished)."""

    job: str
    when: str = "succeeded"
    payload: dict | None = None

    def checked(self) -> dict:
        """As the parent's `then` keeps it; ScheduleError if anything is wrong."""
        if self.when not in FOLLOW_UP_WHEN:
            raise ScheduleError(f"a follow-up's when: one of {', '.join(FOLLOW_UP_WHEN)}, not {self.when!r}")
        check_job(self.job)
        check_payload(self.payload)
        return {"job": self.job, "when": self.when, "payload": self.payload}


@dataclasses.dataclass(frozen=True)
class Run:
    """One run for schedule_many: schedule()'s arguments but `by`."""

    job: str
    at: datetime | None = None
    payload: dict | None = None
    key: str | None = None
    priority: int | None = None
    then: Iterable[FollowUp] = ()
    expires: datetime | timedelta | None = None

    def checked(self, now: datetime) -> oneoff_store.NewRun:
        """The row to insert; ScheduleError (UnknownJob, PayloadError) if anything is wrong."""
        spec = check_job(self.job)
        at = now if self.at is None else aware(self.at, "at")
        return oneoff_store.NewRun(
            job=spec.name,
            payload=check_payload(self.payload),
            key=check_key(self.key),
            priority=spec.policy.priority if self.priority is None else check_priority(self.priority),
            at=at,
            expires_at=expiry(self.expires, max(at, now)),
            then=check_follow_ups(self.then),
        )


def check_follow_ups(then: Iterable) -> list[dict] | None:
    """Each follow-up as the parent's `then` keeps it, at most FOLLOW_UPS_MAX of them; None for none."""
    then = list(then)
    if len(then) > FOLLOW_UPS_MAX:
        raise ScheduleError(f"a run has at most {FOLLOW_UPS_MAX} follow-ups, not {len(then)}")
    return [made(FollowUp, f, "a follow-up").checked() for f in then] or None


def schedule(
    job: str,
    *,
    at: datetime | None = None,
    payload: dict | None = None,
    key: str | None = None,
    priority: int | None = None,
    then: Iterable["FollowUp"] = (),
    by: str = "",
    expires: datetime | timedelta | None = None,
) -> Occurrence:
    """Schedule one run of the registered job `job`, in the caller's transaction; its occurrence.

    at: an aware datetime (None or past: as soon as possible). payload: a JSON object, at most
    SCHEDULER_PAYLOAD_MAX_BYTES. key: while a run with this key is scheduled or running, that run is
    returned instead of a new one. priority: a Priority (default: the job's). then: FollowUp()s, run
    when this run ends. by: who asked. expires: an aware datetime, or a timedelta after `at` (or now):
    not started by then, it is recorded expired, never run. Raises ScheduleError (UnknownJob,
    PayloadError) with the reason.
    """
    run = Run(job, at=at, payload=payload, key=key, priority=priority, then=tuple(then), expires=expires)
    return schedule_or_get([run], by=by)[0][0]


def schedule_many(runs: Iterable[Run | Mapping], *, by: str = "") -> list[Occurrence]:
    """schedule() for many runs (Run values, or mappings of schedule()'s keywords), one statement; their
    occurrences in the order given. Every run is checked before any is written."""
    return [occurrence for occurrence, _ in schedule_or_get(runs, by=by)]


def schedule_or_get(runs: Iterable[Run | Mapping], *, by: str = "") -> list[tuple[Occurrence, bool]]:
    """schedule_many, with whether each occurrence is new (False: the live run its key already had)."""
    now = default_clock()
    rows = [made(Run, run, "a run").checked(now) for run in runs]
    return oneoff_store.insert(rows, by=by, now=now) if rows else []


# Checks, each raising ScheduleError with what is wrong.


def made(cls, value, what: str):
    """value as a cls (Run, FollowUp): one already, or a mapping of its fields; ScheduleError naming what otherwise."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as exc:
            raise ScheduleError(f"{what} takes {', '.join(f.name for f in dataclasses.fields(cls))}: {exc}") from None
    raise ScheduleError(f"{what} is a {cls.__name__} or a mapping of its fields, not {type(value).__name__}")


def check_job(name):
    spec = get_job(name) if isinstance(name, str) else None
    if spec is None:
        hint = did_you_mean(name, [s.name for s in registered_jobs()])
        raise UnknownJob(f"no registered job is named {name!r}{hint}")
    return spec


def check_payload(payload) -> dict | None:
    """The payload as it will be stored: a JSON object no larger than SCHEDULER_PAYLOAD_MAX_BYTES, or None."""
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise PayloadError(f"the payload must be a JSON object (a dict), not {type(payload).__name__}")
    if too_deep(payload, PAYLOAD_MAX_DEPTH):
        raise PayloadError(f"the payload nests objects and lists more than {PAYLOAD_MAX_DEPTH} levels deep")
    try:
        text = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"the payload is not JSON: {exc}") from None
    size, limit = len(text.encode()), settings.SCHEDULER_PAYLOAD_MAX_BYTES
    if size > limit:
        raise PayloadError(f"the payload is {size} bytes as JSON, more than SCHEDULER_PAYLOAD_MAX_BYTES ({limit})")
    return json.loads(text)  # as it will be read back (keys as strings, tuples as lists)


def too_deep(value, limit: int) -> bool:
    """value nests dicts, lists and tuples more than limit levels deep; read without recursion, and no further
    than limit + 1 levels."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list | tuple)
        ]
        if not level:
            return False
    return True


def check_key(key) -> str:
    if key is None:
        return ""
    if not isinstance(key, str) or len(key) > KEY_MAX_LENGTH:
        raise ScheduleError(f"a key is a string of at most {KEY_MAX_LENGTH} characters")
    return key


def check_priority(priority) -> Priority:
    try:
        return Priority(priority)
    except ValueError:
        names = ", ".join(f"{p.value} ({p.cli_name})" for p in Priority)
        raise ScheduleError(f"priority: one of {names}, not {priority!r}") from None


def aware(value, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise ScheduleError(f"{name}: a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(f"{name}: an aware datetime (with its time zone), not the naive {value.isoformat()}")
    return value


def expiry(expires, start: datetime) -> datetime | None:
    """When a run starting at `start` expires: `expires` itself, or that long after start; after start."""
    if expires is None:
        return None
    at = start + expires if isinstance(expires, timedelta) else aware(expires, "expires")
    if at <= start:
        raise ScheduleError(f"expires: after the run is due ({start.isoformat()}), not {at.isoformat()}")
    return at
