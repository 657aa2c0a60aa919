"""The outbox in the admin: read-only, with one action that writes rows, never the broker."""

import uuid

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.utils.functional import cached_property

from bookworm_scheduler.clock import default_clock

from .models import OutboxMessage


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows: an exact count of millions of rows is a scan per page view.

    Pages past the cap are not offered; a message that old is found by its id instead.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list[: self.CAP].count()


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    # Cheap on millions of rows: plain columns, no full count, the filter and ordering served
    # by the index outbox_status_recent, search by exact message id (its own index).
    list_display = ["id", "exchange", "message_id", "status", "attempts", "created_at", "available_at", "delivered_at"]
    list_filter = ["status"]
    search_fields = ["message_id"]
    search_help_text = "Exact message id (a GUID)."
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50
    actions = ["requeue"]

    def get_search_results(self, request, queryset, search_term):
        """Match a message id exactly; anything that is not a GUID matches nothing."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(message_id=uuid.UUID(term)), False
        except ValueError:
            return queryset.none(), False

    @admin.action(
        description="Requeue selected dead or unroutable messages (message ids kept)", permissions=["requeue"]
    )
    def requeue(self, request, queryset):
        count = queryset.requeue(default_clock())
        self.message_user(request, f"Requeued {count} message(s); the relay will send them.", messages.SUCCESS)

    def has_requeue_permission(self, request):
        # The rows are read-only in the admin; requeueing is what "change" allows here.
        return request.user.has_perm("outbox.change_outboxmessage")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
