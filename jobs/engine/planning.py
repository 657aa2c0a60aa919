"""Turning due schedule instants into occurrence rows, exactly once.

Any number of schedulers may plan at the same time: each locks the planning cursors of the
definitions it plans (FOR UPDATE SKIP LOCKED), and the unique (task, scheduled_for)
constraint turns a second insert of the same instant into a no-op. The cursor is the
project's own (PlanningCursor), so every instant after it is accounted for after any
downtime, and none that fell while its definition was disabled is ever planned.
"""

import dataclasses
import heapq
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.kernel.db import prepared_cursor
from bookworm_scheduler.kernel.dialect import postgresql
from jobs.engine import sql
from jobs.engine.definitions import Cursor, Definition, definitions_version, load_definition, load_definitions
from jobs.engine.policy import MisfirePolicy
from jobs.engine.schedules import instants_between
from jobs.models import Occurrence, PlanningCursor

logger = logging.getLogger(__name__)

# At most this many instants of one definition per pass; the rest in the next pass.
MAX_INSTANTS_PER_PASS = 1000
# Rows per INSERT statement on SQLite (PostgreSQL takes them all as arrays in one).
INSERT_BATCH = 500
# At most this many definitions planned per pass (one transaction): a burst's first rows can be
# claimed, here and by the other schedulers, while the rest is planned (10,000 definitions due at
# one instant took 1.3-2 s to plan in one transaction, and nothing was claimed meanwhile).
PLAN_BATCH = 1000


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


def plan_due(definitions: dict[int, Definition], due_ids, *, now: datetime, grace: timedelta) -> dict[int, Cursor]:
    """Insert the occurrences of the given definitions that are due up to now.

    Returns the cursor of each definition this pass could look at (whether or not it had
    instants due): the caller's next due instant follows from it. A definition whose cursor
    another scheduler holds, or that is no longer enabled, is left out.
    """
    batch = _Batch(now=now, grace=grace)
    with transaction.atomic():
        for task_id, cursor in _read_cursors(list(due_ids), lock=True):
            batch.cursors[task_id] = cursor
            batch.add(definitions.get(task_id), cursor, through=now)
        batch.save()
    batch.log_missed()
    return batch.cursors


def _read_cursors(task_ids: list[int], *, lock: bool) -> list[tuple[int, Cursor]]:
    """The definitions' cursors (sql.read_cursors); with lock, of the enabled ones that no other
    scheduler holds, locked until the transaction ends."""
    if postgresql(connection.alias):
        with prepared_cursor(connection.alias) as cursor:
            cursor.execute(sql.read_cursors(connection.alias, lock), [task_ids])
            return [(task_id, Cursor(*values)) for task_id, *values in cursor.fetchall()]
    rows = PlanningCursor.objects.filter(task_id__in=task_ids).order_by("task_id")
    if lock:
        rows = rows.select_for_update(skip_locked=True, of=("self",)).filter(task__enabled=True)
    return [(row.task_id, Cursor.of(row)) for row in rows]


def plan_before_change(task_id: int) -> None:
    """Plan what a definition's current schedule owes up to now, before that schedule is changed.

    A change of schedule restarts the planning cursor from the moment of the change (migration
    0003's triggers). Instants of the old schedule that fell before it but were not planned yet
    (every scheduler down, busy or behind) would be neither run nor recorded: they are planned
    here first (at most MAX_INSTANTS_PER_PASS, the oldest), run or recorded missed by the misfire
    policy. While the definition is disabled
    the old schedule owes nothing after its pause. Waits for a scheduler planning it meanwhile.
    """
    definition = load_definition(task_id)
    if definition is None or definition.schedule is None:
        return
    now = default_clock()
    batch = _Batch(now=now, grace=timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_SECONDS))
    with transaction.atomic():
        row = PlanningCursor.objects.select_for_update().filter(task_id=task_id).first()
        if row is None:
            return
        cursor = Cursor.of(row)
        through = now
        if row.paused_at is not None and row.resumed_at is None:
            through = min(now, row.paused_at)
        batch.add(definition, cursor, through=through)
        batch.save()
    batch.log_missed()


class _Batch:
    """The occurrence rows and cursor moves of one planning transaction."""

    def __init__(self, *, now: datetime, grace: timedelta):
        self.now, self.grace = now, grace
        self.rows: list[list] = []
        self.cursors: dict[int, Cursor] = {}
        self.moved: dict[int, Cursor] = {}
        self.one_offs: list[int] = []
        self.statuses: list[str] = []
        # The instants of each (schedule, cursor) pair and the cursor moved past them: the definitions
        # due at one instant mostly share a few crontabs and, once planned, their cursor, so each
        # pair is evaluated once.
        self._instants: dict[tuple, tuple[list[datetime], bool, Cursor]] = {}
        self._verdicts: dict[tuple, list[Planned]] = {}  # and their misfire policy's verdicts

    def add(self, definition: Definition | None, cursor: Cursor, *, through: datetime) -> None:
        """The definition's instants after cursor up to through, under its misfire policy."""
        if definition is None or definition.schedule is None:
            return
        key = (definition.schedule, cursor, through)
        if key not in self._instants:
            unplanned = cursor.unplanned(definition.schedule)
            instants, more_left = instants_between(unplanned, through, MAX_INSTANTS_PER_PASS)
            self._instants[key] = instants, more_left, cursor.moved_to(instants[-1]) if instants else cursor
        instants, more_left, moved = self._instants[key]
        if not instants:
            return
        if definition.one_off:
            instants, more_left, moved = instants[:1], False, cursor.moved_to(instants[0])
            self.one_offs.append(definition.id)
        verdict = (key, definition.one_off, definition.policy.misfire)
        if verdict not in self._verdicts:
            self._verdicts[verdict] = apply_misfire_policy(
                instants, more_left=more_left, now=self.now, grace=self.grace, policy=definition.policy.misfire
            )
        for planned in self._verdicts[verdict]:
            self.rows.append(_occurrence_row(definition, planned, self.now))
        self.moved[definition.id] = self.cursors[definition.id] = moved

    def save(self) -> None:
        if not self.moved:
            return
        self.statuses = _insert(self.rows, self.now)
        _save_cursors(self.moved)
        if self.one_offs:
            PeriodicTask.objects.filter(id__in=self.one_offs).update(enabled=False)

    def log_missed(self) -> None:
        missed = self.statuses.count(Occurrence.Status.MISSED)
        if missed:
            logger.warning(
                "recorded %d missed occurrences", missed, extra={"action": "occurrences_missed", "count": missed}
            )


def _occurrence_row(definition: Definition, planned: Planned, now: datetime) -> list:
    reason = ""
    if planned.missed:
        reason = (
            f"missed: no scheduler ran from its due time until {now.isoformat()} "
            f"(misfire policy {definition.policy.misfire})"
        )
    return [
        definition.id,
        definition.name,
        planned.instant,
        planned.instant,
        definition.policy.priority,
        Occurrence.Status.MISSED if planned.missed else Occurrence.Status.SCHEDULED,
        now if planned.missed else None,
        reason,
        definition.then_json,
    ]


def _insert(rows: list[list], now: datetime) -> list[str]:
    """Insert the rows (sql.insert_occurrence_arrays, or sql.insert_occurrences by batches on
    SQLite); the statuses of those the database took."""
    if not rows:
        return []
    taken = []
    with prepared_cursor(connection.alias) as cursor:
        if postgresql(connection.alias):
            columns = [list(column) for column in zip(*rows, strict=True)]
            cursor.execute(sql.insert_occurrence_arrays(connection.alias), [now, *columns])
            return [status for (status,) in cursor.fetchall()]
        for start in range(0, len(rows), INSERT_BATCH):
            chunk = rows[start : start + INSERT_BATCH]
            params = [value for row in chunk for value in (*row, now)]
            cursor.execute(sql.insert_occurrences(connection.alias, len(chunk)), params)
            taken.extend(status for (status,) in cursor.fetchall())
    return taken


def _save_cursors(moved: dict[int, Cursor]) -> None:
    """One UPDATE on PostgreSQL (sql.move_cursors); elsewhere one per distinct cursor value (a burst
    of definitions due at one instant is one statement)."""
    if postgresql(connection.alias):
        ids, cursors = zip(*moved.items(), strict=True)
        columns = [[getattr(c, name) for c in cursors] for name in ("planned_through", "paused_at", "resumed_at")]
        with prepared_cursor(connection.alias) as cursor:
            cursor.execute(sql.move_cursors(connection.alias), [list(ids), *columns])
        return
    by_value: dict[Cursor, list[int]] = {}
    for task_id, cursor in moved.items():
        by_value.setdefault(cursor, []).append(task_id)
    for cursor, ids in by_value.items():
        PlanningCursor.objects.filter(task_id__in=ids).update(
            planned_through=cursor.planned_through, paused_at=cursor.paused_at, resumed_at=cursor.resumed_at
        )


class Planner:
    """The definitions this scheduler plans, the next instant each is due, and the planning pass.

    What is held here is a cache: it is reloaded whenever DefinitionsVersion moves, and the
    cursors in the database decide what is planned.
    """

    # A definition whose cursor another scheduler held is looked at again this soon.
    RETRY_LOCKED = timedelta(seconds=1)

    def __init__(self, *, grace: timedelta):
        self.grace = grace
        self.definitions: dict[int, Definition] = {}
        self.invalid: dict[int, str] = {}
        self.next_due: dict[int, datetime] = {}
        # min(next_due.values()), kept because the main loop asks at every pass (O(n) to compute);
        # stale (_earliest_known False) once next_due changed, recomputed when next asked.
        self._earliest: datetime | None = None
        self._earliest_known = True
        self._version: int | None = None
        self._loaded = False
        # Definitions whose cursor another scheduler held, and the instant they were due then.
        self._held: dict[int, datetime] = {}

    def refresh(self) -> bool:
        """Reload the definitions if any changed since the last load; True if reloaded."""
        version = definitions_version()
        if self._loaded and version == self._version:
            return False
        definitions, invalid = load_definitions()
        for task_id, reason in invalid.items():
            if self.invalid.get(task_id) != reason:
                logger.error(
                    "definition not scheduled: %s",
                    reason,
                    extra={"action": "definition_invalid", "definition": task_id, "error": reason},
                )
        self.definitions, self.invalid = definitions, invalid
        self.next_due, self._held = {}, {}
        for task_id, definition in definitions.items():
            instant = definition.next_instant()
            if instant is not None:
                self.next_due[task_id] = instant
        self._earliest_known = False
        self._version, self._loaded = version, True
        return True

    def plan(self, now: datetime) -> int:
        """Plan the definitions whose next instant is due, at most PLAN_BATCH of them (the longest due,
        then the highest priority, first; the rest at the next pass); how many had some."""
        if not self.due(now):
            return 0
        due = [task_id for task_id, instant in self.next_due.items() if instant <= now]
        if len(due) > PLAN_BATCH:
            due = heapq.nsmallest(PLAN_BATCH, due, key=self._planning_order)
        self._earliest_known = False  # their next instants move
        due = self._planned_elsewhere(due)
        cursors = plan_due(self.definitions, due, now=now, grace=self.grace)
        planned = 0
        for task_id in due:
            cursor = cursors.get(task_id)
            if cursor is None:  # held by another scheduler, or disabled meanwhile
                self._held.setdefault(task_id, self.next_due[task_id])
                self.next_due[task_id] = now + self.RETRY_LOCKED
                continue
            self._held.pop(task_id, None)
            if cursor.planned_through >= self.next_due[task_id]:
                planned += 1
            self._due_after(task_id, cursor)
        return planned

    def _planning_order(self, task_id: int) -> tuple:
        return self.next_due[task_id], -self.definitions[task_id].policy.priority, task_id

    def _due_after(self, task_id: int, cursor: Cursor) -> None:
        """The definition's next instant after what cursor planned (none: it is done)."""
        instant = self.definitions[task_id].next_instant(cursor)
        if instant is None:
            self.next_due.pop(task_id, None)
        else:
            self.next_due[task_id] = instant

    def _planned_elsewhere(self, due: list[int]) -> list[int]:
        """Of the due definitions, those still to plan: a cursor another scheduler held when this one
        last looked has usually been moved past that instant since. Read without a lock: only the
        ones it has not are locked again (with several schedulers, a burst's losers would otherwise
        lock every row the winner just planned)."""
        held = [task_id for task_id in due if task_id in self._held]
        if not held:
            return due
        done = set()
        for task_id, cursor in _read_cursors(held, lock=False):
            if cursor.planned_through < self._held[task_id]:
                continue
            done.add(task_id)
            del self._held[task_id]
            self._due_after(task_id, cursor)
        return [task_id for task_id in due if task_id not in done]

    def due(self, now: datetime) -> bool:
        next_due = self.next_due_at()
        return next_due is not None and next_due <= now

    def next_due_at(self) -> datetime | None:
        if not self._earliest_known:
            self._earliest, self._earliest_known = min(self.next_due.values(), default=None), True
        return self._earliest


def hand_over_through(task_id: int, instant: datetime) -> None:
    """The definition's instants up to instant were run by something else (stock celery beat): move its cursor.

    So that a runscheduler started in beat's place plans from beat's last run, not from when
    the definition was created (which would record every instant since as missed). A pause the
    cursor has passed is forgotten, as in planning. Call inside a transaction.
    """
    row = PlanningCursor.objects.select_for_update().filter(task_id=task_id).first()
    if row is None or row.planned_through >= instant:
        return
    moved = Cursor.of(row).moved_to(instant)
    PlanningCursor.objects.filter(task_id=task_id).update(
        planned_through=moved.planned_through, paused_at=moved.paused_at, resumed_at=moved.resumed_at
    )
