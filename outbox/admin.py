"""The outbox in the admin: read-only pages, and two actions that write rows, never the broker.

Messages are listed newest first, filterable by status and by type (the exchange), found by
their exact message id. A message's page shows its envelope as the relay's EnvelopeWriter
builds it (a message not sent yet without sentTime and host: the relay adds its own) and links
the record of what published it. Requeue (dead and unroutable messages, their message ids kept)
and discard (pending, dead and unroutable messages, deleted) each need a permission of their own
and are written to the admin's log with the user.

Fast on millions of rows: nothing is counted (the pages are read with one row of look-ahead),
the status filter and the newest-first order are served by the index outbox_status_recent,
the type filter's choices come from code, not from the table. The type filter itself has no
index of its own: a type with few rows among millions makes its page a scan of the table.
"""

import functools
import json
import logging
import uuid
from typing import NamedTuple

from django.apps import apps
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.paginator import InvalidPage, Paginator
from django.db import transaction
from django.urls import NoReverseMatch, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.read_only_admin import ReadOnlyAdmin
from bookworm_scheduler.web.times import list_time
from outbox.broker import connection_parameters
from outbox.envelope import EnvelopeWriter, broker_address
from outbox.events import IntegrationEvent
from outbox.models import OutboxMessage, RelayInstance

logger = logging.getLogger(__name__)

# Rows one action touches at most. The admin offers no "select all" across pages (it does not
# count them), so a selection is one page; a bigger job is `manage.py outbox requeue`'s.
ACTION_LIMIT = 1000


class LookAheadPaginator(Paginator):
    """Counts nothing: reads the requested page with one row more, to know whether another follows.

    Its count is the rows before the page plus those read for it, so a page and whether a next
    one exists cost one query with LIMIT per_page + 1, however many rows match. It needs the
    page number up front (OutboxMessageAdmin.get_paginator passes it); the pagination block of
    outbox/change_list.html shows newer and older links instead of page numbers and a total.
    """

    def __init__(self, object_list, per_page, *, number: int = 1, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.number = max(number, 1)

    @cached_property
    def _window(self) -> tuple[int, list]:
        offset = (self.number - 1) * self.per_page
        return offset, list(self.object_list[offset : offset + self.per_page + 1])

    @cached_property
    def count(self) -> int:
        offset, rows = self._window
        return offset + len(rows)

    def page(self, number):
        number = self.validate_number(number)
        if number != self.number:
            return super().page(number)
        offset, rows = self._window
        return self._get_page(rows[: self.per_page], number, self)


class OutboxChangeList(ChangeList):
    """A changelist read through LookAheadPaginator: one query per page, never the whole list.

    ChangeList.get_results would read every matching row when the count says one page holds
    them all, and offers "show all"; here the page read is always the one shown.
    """

    def get_results(self, request):
        paginator = self.model_admin.get_paginator(request, self.queryset, self.list_per_page)
        try:
            page = paginator.page(self.page_num)
        except InvalidPage:
            raise IncorrectLookupParameters from None
        # The attributes ChangeList.get_results sets, for the templates.
        self.paginator = paginator
        self.result_list = page.object_list
        self.result_count = paginator.count  # exact when all rows fit one page, else a lower bound
        self.show_full_result_count = False
        self.show_admin_actions = True
        self.can_show_all = False
        self.multi_page = page.has_other_pages()
        # The search form says "N results" when result_count differs from full_result_count:
        # only when N is exact.
        self.full_result_count = None if not self.multi_page else self.result_count

    @property
    def newer_page_query(self) -> str | None:
        return self.get_query_string({PAGE_VAR: self.page_num - 1}) if self.page_num > 1 else None

    @property
    def older_page_query(self) -> str | None:
        if self.paginator.num_pages > self.page_num:
            return self.get_query_string({PAGE_VAR: self.page_num + 1})
        return None


def event_exchanges() -> list[str]:
    """The exchanges of the event types this process has imported, sorted.

    A row's exchange is the exchange of the event class that published it (publish() writes
    event.exchange()), so the types in code are the types in the table; a SELECT DISTINCT over
    millions of rows would be a full scan on every page view. A type since removed from the code
    is still found by its exchange in the URL (?exchange=...).
    """
    exchanges, pending = set(), list(IntegrationEvent.__subclasses__())
    while pending:
        event_type = pending.pop()
        exchanges.add(event_type.exchange())
        pending.extend(event_type.__subclasses__())
    return sorted(exchanges)


class MessageTypeFilter(admin.SimpleListFilter):
    title = "type"
    parameter_name = "exchange"

    def lookups(self, request, model_admin):
        exchanges = event_exchanges()
        if self.value() and self.value() not in exchanges:
            exchanges.append(self.value())
        return [(exchange, exchange) for exchange in exchanges]

    def queryset(self, request, queryset):
        return queryset.filter(exchange=self.value()) if self.value() else queryset


class WireRow(NamedTuple):
    """A row as the relay claims it (outbox.sql.claim), for EnvelopeWriter.body."""

    message_id: uuid.UUID
    correlation_id: uuid.UUID | None
    exchange: str
    types_json: str
    body_json: str
    headers_json: str

    @classmethod
    def of(cls, message: OutboxMessage) -> "WireRow":
        # The JSON columns come back in the database's key order, which the relay's text keeps too.
        return cls(
            message.message_id,
            message.correlation_id,
            message.exchange,
            json.dumps(message.message_types),
            json.dumps(message.body),
            json.dumps(message.headers),
        )


@functools.cache
def envelope_writer() -> EnvelopeWriter:
    """An EnvelopeWriter for the configured broker, built as `manage.py relay_outbox` builds its own."""
    parameters = connection_parameters(settings.RABBITMQ_URL, blocked_timeout=settings.OUTBOX_BLOCKED_TIMEOUT_SECONDS)
    return EnvelopeWriter(
        broker_address(parameters.host, parameters.port, parameters.virtual_host, parameters.ssl_options is not None)
    )


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "exchange", "message_id", "status", "attempts", "created", "available", "delivered"]
    list_filter = ["status", MessageTypeFilter]
    search_fields = ["message_id"]
    search_help_text = "Exact message id (a GUID)."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per choice over the filtered rows
    list_per_page = 50
    actions = ["requeue", "discard"]
    actions_selection_counter = False  # its "select all N" needs the count this admin never makes
    change_list_template = "outbox/change_list.html"
    fields = [
        "message_id",
        "exchange",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "available_at",
        "delivered_at",
        "origin_link",
        "envelope",
    ]
    readonly_fields = fields

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        try:
            number = int(request.GET.get(PAGE_VAR, 1))  # read as ChangeList reads it
        except ValueError:
            number = 1
        return LookAheadPaginator(
            queryset, per_page, orphans=orphans, allow_empty_first_page=allow_empty_first_page, number=number
        )

    def get_changelist(self, request, **kwargs):
        return OutboxChangeList

    def get_search_results(self, request, queryset, search_term):
        """Match a message id exactly; anything that is not a GUID matches nothing."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(message_id=uuid.UUID(term)), False
        except ValueError:
            return queryset.none(), False

    # The list's times: one line each, UTC with its zone (jobs/lists.css keeps a .list-time unwrapped);
    # available and delivered as the time alone on the day of the creation.

    @admin.display(description="Created at", ordering="created_at")
    def created(self, message: OutboxMessage):
        return list_time(message.created_at)

    @admin.display(description="Available at", ordering="available_at")
    def available(self, message: OutboxMessage):
        return list_time(message.available_at, day_of=message.created_at)

    @admin.display(description="Delivered at", ordering="delivered_at")
    def delivered(self, message: OutboxMessage):
        return list_time(message.delivered_at, day_of=message.created_at)

    @admin.display(description="Origin")
    def origin_link(self, message: OutboxMessage):
        """What published the message: "occurrence:42" links that occurrence's admin page."""
        url = self.origin_url(message.origin)
        if url is None:
            return message.origin or "-"
        return format_html('<a href="{}">{}</a>', url, message.origin)

    def origin_url(self, origin: str) -> str | None:
        # "<model name>:<primary key>" of any model this admin site shows; the outbox names no other app.
        model_name, _, pk = origin.partition(":")
        for model in apps.get_models():
            if model._meta.model_name == model_name and self.admin_site.is_registered(model):
                try:
                    return reverse(f"{self.admin_site.name}:{model._meta.app_label}_{model_name}_change", args=[pk])
                except NoReverseMatch:
                    return None
        return None

    @admin.display(description="Envelope")
    def envelope(self, message: OutboxMessage):
        """The body the relay publishes for this row, indented.

        A delivered message shows its delivery's sentTime. One not delivered yet has no send time
        and no sender: its envelope is shown without sentTime and host (the host here would be
        this web process's, not the relay's), with a note saying so.
        """
        if message.delivered_at is not None:
            body = envelope_writer().body(WireRow.of(message), message.delivered_at)
            return format_html("<pre>{}</pre>", json.dumps(json.loads(body), indent=2, ensure_ascii=False))
        envelope = json.loads(envelope_writer().body(WireRow.of(message), default_clock()))
        del envelope["sentTime"], envelope["host"]
        return format_html(
            '<p class="help envelope-unsent">{}</p><pre>{}</pre>',
            "not sent yet: the relay adds the send time and its host",
            json.dumps(envelope, indent=2, ensure_ascii=False),
        )

    @admin.action(
        description="Requeue selected dead or unroutable messages (message ids kept)", permissions=["requeue"]
    )
    def requeue(self, request, queryset):
        with transaction.atomic():
            rows = queryset.requeue_selected(default_clock(), limit=ACTION_LIMIT)
            for status in OutboxMessage.REQUEUEABLE:
                was = [row for row in rows if row.status == status]
                if was:
                    LogEntry.objects.log_actions(request.user.pk, was, CHANGE, f"Requeued (was {status}).")
        self.log_event("requeued", request, rows)
        self.message_user(request, f"Requeued {len(rows)} message(s); the relay will send them.", messages.SUCCESS)

    @admin.action(
        description="Discard selected pending, dead or unroutable messages (deleted)", permissions=["discard"]
    )
    def discard(self, request, queryset):
        """Deletes the rows (a status of their own would need a column of its own); the log keeps
        each one's exchange and message id, and who discarded it."""
        with transaction.atomic():
            rows = queryset.discard(limit=ACTION_LIMIT)
            self.log_deletions(request, rows)
        self.log_event("discarded", request, rows)
        self.message_user(request, f"Discarded {len(rows)} message(s).", messages.SUCCESS)

    @staticmethod
    def log_event(what: str, request, rows: list[OutboxMessage]) -> None:
        logger.info(
            "%s %d outbox message(s)",
            what,
            len(rows),
            extra={
                "action": f"outbox_{what}",
                "user": request.user.get_username(),
                "message_ids": [str(row.message_id) for row in rows],
            },
        )

    def has_requeue_permission(self, request):
        return request.user.has_perm("outbox.requeue_outboxmessage")

    def has_discard_permission(self, request):
        return request.user.has_perm("outbox.discard_outboxmessage")


# Relays: their heartbeats, read-only (outbox.heartbeat.Heartbeat writes them).


@admin.register(RelayInstance)
class RelayInstanceAdmin(ReadOnlyAdmin):
    list_display = ["instance_id", "host", "pid", "version", "state", "started_at", "last_seen", "stopped_at"]
    list_filter = ["state"]
