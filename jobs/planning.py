"""Turning due schedule instants into occurrence rows, exactly once.

Any number of schedulers may plan at the same time: each locks the definitions it plans
(FOR UPDATE SKIP LOCKED), and the unique (task, scheduled_for) constraint turns a second
insert of the same instant into a no-op. The cursor is PeriodicTask.last_run_at, the last
instant planned, so every instant after it is accounted for after any downtime.
"""

import dataclasses
import logging
from datetime import datetime, timedelta

from django.db import transaction
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from .definitions import Definition, planned_through
from .models import MisfirePolicy, Occurrence
from .schedules import instants_between

logger = logging.getLogger(__name__)

# At most this many instants of one definition per pass; the rest in the next pass.
MAX_INSTANTS_PER_PASS = 1000


@dataclasses.dataclass(frozen=True)
class Planned:
    instant: datetime
    missed: bool


def apply_misfire_policy(
    instants: list[datetime], *, more_left: bool, now: datetime, grace: timedelta, policy: MisfirePolicy
) -> list[Planned]:
    """Which instants run and which are recorded as missed.

    An instant is late when it fell due more than `grace` before now (no scheduler was
    running). run_all runs every late instant; run_once runs only the latest one, and only
    when no instant is on time and none are left for the next pass; skip runs none.
    """
    late = [i for i in instants if now - i > grace]
    on_time = [i for i in instants if now - i <= grace]
    if policy == MisfirePolicy.RUN_ALL:
        run_late = set(late)
    elif policy == MisfirePolicy.RUN_ONCE and late and not on_time and not more_left:
        run_late = {late[-1]}
    else:
        run_late = set()
    return [Planned(i, missed=i not in run_late) for i in late] + [Planned(i, missed=False) for i in on_time]


def plan_due(definitions: dict[int, Definition], due_ids, *, now: datetime, grace: timedelta) -> dict[int, datetime]:
    """Insert the occurrences of the given definitions that are due up to now.

    A row that another scheduler inserted first is not inserted again (ON CONFLICT DO NOTHING).
    Returns the new cursor (last instant planned) of each definition that had instants due.
    """
    occurrences, cursors, one_offs = [], {}, []
    with transaction.atomic():
        rows = (
            PeriodicTask.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(id__in=list(due_ids), enabled=True)
            .values_list("id", "last_run_at", "date_changed")
        )
        for task_id, last_run_at, date_changed in rows:
            definition = definitions.get(task_id)
            if definition is None:
                continue
            instants, more_left = instants_between(
                definition.instants_after(planned_through(last_run_at, date_changed)), now, MAX_INSTANTS_PER_PASS
            )
            if not instants:
                continue
            if definition.one_off:
                instants, more_left = instants[:1], False
            policy = definition.policy
            for planned in apply_misfire_policy(
                instants, more_left=more_left, now=now, grace=grace, policy=policy.misfire
            ):
                occurrences.append(
                    Occurrence(
                        task_id=task_id,
                        job_name=definition.name,
                        scheduled_for=planned.instant,
                        run_after=planned.instant,
                        priority=policy.priority,
                        status=Occurrence.Status.MISSED if planned.missed else Occurrence.Status.SCHEDULED,
                        finished_at=now if planned.missed else None,
                        detail=(
                            f"missed: no scheduler ran from its due time until {now.isoformat()} "
                            f"(misfire policy {policy.misfire})"
                            if planned.missed
                            else ""
                        ),
                    )
                )
            cursors.setdefault(instants[-1], []).append(task_id)
            if definition.one_off:
                one_offs.append(task_id)
        if not occurrences:
            return {}
        Occurrence.objects.bulk_create(occurrences, ignore_conflicts=True, batch_size=1000)
        for instant, ids in cursors.items():
            PeriodicTask.objects.filter(id__in=ids).update(last_run_at=instant)
        if one_offs:
            PeriodicTask.objects.filter(id__in=one_offs).update(enabled=False)
            PeriodicTasks.update_changed()
    missed = sum(1 for o in occurrences if o.status == Occurrence.Status.MISSED)
    if missed:
        logger.warning(
            "recorded %d missed occurrences", missed, extra={"action": "occurrences_missed", "count": missed}
        )
    return {task_id: instant for instant, ids in cursors.items() for task_id in ids}
