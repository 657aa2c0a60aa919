"""A paginator for the dashboard's big tables: it never counts more than CAP rows."""

from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property

from bookworm_scheduler.kernel.dialect import postgresql


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows, so a filtered list of a million rows costs a bounded query.

    The admin asks every changelist for its count. Unfiltered, the count is PostgreSQL's
    estimate (pg_class.reltuples, kept by autovacuum); filtered, it is the real count up to CAP,
    shown as "CAP" when there are more (the pages stop there: search or filter to go further).
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where and postgresql(queryset.db):
            with connections[queryset.db].cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [queryset.model._meta.db_table]
                )
                estimate = cursor.fetchone()[0]
            if estimate > self.CAP:
                return estimate
        return queryset.order_by()[: self.CAP].count()
