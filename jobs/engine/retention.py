"""The occurrence store's deletions: finished history older than its retention, a batch per transaction.

Part of the occurrence store (jobs.engine.store names prune too), kept apart because it deletes
rows rather than moving a state.
"""

from datetime import datetime, timedelta

from django.db import connections, router, transaction

from bookworm_scheduler.kernel.dialect import postgresql, try_advisory_lock
from jobs.engine import sql
from jobs.models import Occurrence, SchedulerInstance


def prune(now: datetime, *, keep: timedelta, batch: int, batches: int) -> tuple[int, bool]:
    """Delete up to batches x batch finished occurrences older than keep, and old instance rows.

    Each batch is its own short transaction. On PostgreSQL an advisory lock lets one scheduler
    prune at a time (the others skip). Returns (occurrences deleted, more left?).
    """
    deleted = 0
    for _ in range(batches):
        with transaction.atomic():
            if not try_advisory_lock("jobs.prune_history"):
                return deleted, False
            count = _prune_batch(now - keep, batch)
            if deleted == 0:
                SchedulerInstance.objects.prune(now)
        deleted += count
        if count < batch:
            return deleted, False
    return deleted, True


def _prune_batch(cutoff: datetime, size: int) -> int:
    """Delete one batch of occurrences finished before cutoff, with their attempts; the count.

    One statement on PostgreSQL (sql.prune_occurrences); elsewhere Django's delete.
    """
    using = router.db_for_write(Occurrence)
    if postgresql(using):
        with connections[using].cursor() as cursor:
            cursor.execute(sql.prune_occurrences(using), [list(Occurrence.FINISHED), cutoff, size])
            return cursor.fetchone()[0]
    finished = Occurrence.objects.finished_before(cutoff)
    ids = list(finished.order_by("finished_at").values_list("id", flat=True)[:size])
    if ids:
        Occurrence.objects.filter(id__in=ids).delete()
    return len(ids)
