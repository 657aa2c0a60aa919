"""The occurrence store's one-off part: one-off runs inserted, any number in one statement.

A one-off run (jobs.engine.oneoff) is an occurrence row with no definition: `job` names its
registered job. insert() writes in the caller's transaction and commits nothing: the rows exist only
if the caller's transaction commits, and the insert's trigger (migration 0003) NOTIFYs the schedulers
at that commit. A key is held by at most one live (scheduled or running) run: the partial unique
index occurrence_key_once_live turns a second insert into nothing (ON CONFLICT DO NOTHING), and that
live run is read back instead. Two transactions inserting one key: the second waits for the first,
then gets its run if it committed, or inserts its own if it rolled back.
"""

import dataclasses
import json
from datetime import datetime

from django.db import router

from bookworm_scheduler.kernel.db import prepared_cursor
from bookworm_scheduler.kernel.dialect import postgresql
from jobs.engine import sql
from jobs.engine.policy import Priority
from jobs.engine.registry import get_job
from jobs.models import OCCURRENCE_LIVE, FollowUpWhen, Occurrence

# A follow-up's `when` (jobs.engine.oneoff.FollowUp, a definition's DefinitionFollowUp): the final statuses of its
# parent that create it.
FOLLOW_UP_WHEN = {
    FollowUpWhen.SUCCEEDED: (Occurrence.Status.SUCCEEDED,),
    FollowUpWhen.FAILED: (Occurrence.Status.FAILED,),
    FollowUpWhen.CANCELLED: (Occurrence.Status.SKIPPED,),
    FollowUpWhen.FINISHED: tuple(Occurrence.FINISHED),
}
# Tries of a key whose live run finished between the insert that found it and the read of it.
KEY_TRIES = 3


class KeyRace(RuntimeError):
    """A key's live run kept finishing between the insert that found it and the read of it."""


@dataclasses.dataclass(frozen=True)
class NewRun:
    """One row to insert, its values checked (jobs.engine.oneoff.Run.checked)."""

    job: str
    payload: dict | None
    key: str
    priority: int
    at: datetime
    expires_at: datetime | None = None
    then: list | None = None
    parent_id: int | None = None


def insert(runs: list[NewRun], *, by: str, now: datetime) -> list[tuple[Occurrence, bool]]:
    """Insert the runs as scheduled occurrences; per run, in order, its occurrence and whether it is new.

    Not new: a live run held its key (or an earlier run of this call did), and that run is returned.
    """
    using = router.db_for_write(Occurrence)
    outcome: list[tuple[Occurrence, bool] | None] = [None] * len(runs)
    pending = list(range(len(runs)))
    for _ in range(KEY_TRIES):
        if not pending:
            break
        inserted = _insert([runs[i] for i in pending], by=by[:150], now=now, using=using)
        taken = iter(inserted)
        row = next(taken, None)
        held = []
        for index in pending:
            if row is not None and row.key == runs[index].key and row.job == runs[index].job:
                outcome[index] = (row, True)
                row = next(taken, None)
            else:
                held.append(index)  # keyed: a live run holds its key
        live = {
            o.key: o for o in Occurrence.objects.filter(key__in={runs[i].key for i in held}, status__in=OCCURRENCE_LIVE)
        }
        pending = []
        for index in held:
            existing = live.get(runs[index].key)
            if existing is None:
                pending.append(index)  # it finished meanwhile: the key is free again
            else:
                outcome[index] = (existing, False)
    if pending:
        raise KeyRace(f"key {runs[pending[0]].key!r}: its live run kept finishing; try again")
    return outcome


def follow_ups(parent: Occurrence) -> list[Occurrence]:
    """Insert the follow-ups (parent.then) whose `when` the parent's final status meets, due at its end.

    The occurrence store calls it in the transaction that records that status (store._ended), so each
    follow-up exists if and only if its parent's end committed: once, whatever dies after.
    """
    wanted = [f for f in parent.then or () if parent.status in FOLLOW_UP_WHEN.get(f.get("when"), ())]
    if not wanted:
        return []
    at = parent.finished_at
    runs = [NewRun(f["job"], f.get("payload"), "", _priority(f["job"]), at, parent_id=parent.id) for f in wanted]
    return [occurrence for occurrence, _ in insert(runs, by=parent.triggered_by, now=at)]


def _priority(job: str) -> int:
    spec = get_job(job)
    return spec.policy.priority if spec is not None else Priority.NORMAL


def _insert(runs: list[NewRun], *, by: str, now: datetime, using: str) -> list[Occurrence]:
    """The rows the database took, in the order given (sql.insert_one_offs; elsewhere one insert each)."""
    if not postgresql(using):
        return _insert_each(runs, by=by, now=now, using=using)
    statement, names, convert = sql.insert_one_offs(using)
    columns = [
        [run.job for run in runs],
        [_json(run.payload) for run in runs],
        [run.key for run in runs],
        [int(run.priority) for run in runs],
        [run.at for run in runs],
        [run.expires_at for run in runs],
        [_json(run.then) for run in runs],
        [run.parent_id for run in runs],
    ]
    with prepared_cursor(using) as cursor:
        cursor.execute(statement, [by, now, *columns])
        rows = cursor.fetchall()
    if convert:
        rows = convert(rows)
    return sorted((Occurrence.from_db(using, names, row) for row in rows), key=lambda o: o.id)


def _insert_each(runs: list[NewRun], *, by: str, now: datetime, using: str) -> list[Occurrence]:
    """SQLite: one writer at a time, so a key is looked up, then inserted if free (created_at: this host's
    clock, which is SQLite's)."""
    inserted, keys = [], set()
    for run in runs:
        if run.key and (run.key in keys or Occurrence.objects.filter(key=run.key, status__in=OCCURRENCE_LIVE).exists()):
            continue
        keys.add(run.key)
        occurrence = Occurrence.objects.using(using).create(
            job=run.job,
            job_name=run.job,
            payload=run.payload,
            key=run.key,
            priority=run.priority,
            scheduled_for=run.at,
            run_after=run.at,
            expires_at=run.expires_at,
            then=run.then,
            parent_id=run.parent_id,
            triggered_by=by,
        )
        inserted.append(occurrence)
    return inserted


def _json(value) -> str | None:
    return None if value is None else json.dumps(value)
