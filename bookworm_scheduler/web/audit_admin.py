"""The console's Audit page: every operator action in one list (bookworm_scheduler.web.audit_log).

Django's admin log holds it; this page lists it for everyone with its view permission
(admin.view_logentry; superusers have it): who, what, on which object, when, and from where
(the dashboard, the API or the command line). Nothing here writes: the entries are written by the
actions themselves, in their own transactions.
"""

from django.contrib import admin
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.utils.html import format_html

from bookworm_scheduler.web import audit_log
from bookworm_scheduler.web.paginator import CappedCountPaginator
from bookworm_scheduler.web.read_only_admin import ReadOnlyAdmin
from bookworm_scheduler.web.times import list_time

FLAG_WORDS = {ADDITION: "Added", CHANGE: "Changed", DELETION: "Deleted"}


class SourceFilter(admin.SimpleListFilter):
    title = "from"
    parameter_name = "from"

    def lookups(self, request, model_admin):
        return [(source, source) for source in (audit_log.DASHBOARD, audit_log.API, audit_log.COMMAND_LINE)]

    def queryset(self, request, queryset):
        if self.value() == audit_log.COMMAND_LINE:
            return queryset.filter(user__username=audit_log.COMMAND_LINE_USER)
        if self.value() == audit_log.API:
            return queryset.filter(change_message__contains=f" {audit_log.FROM_API}")
        if self.value() == audit_log.DASHBOARD:
            return queryset.exclude(user__username=audit_log.COMMAND_LINE_USER).exclude(
                change_message__contains=f" {audit_log.FROM_API}"
            )
        return queryset


class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ["when", "user", "what", "object", "source"]
    list_display_links = ["when"]
    list_filter = [SourceFilter, "action_flag", "content_type", "user"]
    list_select_related = ["user", "content_type"]
    search_fields = ["object_repr", "change_message", "user__username"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    fields = ["action_time", "user", "source", "what", "content_type", "object", "object_id"]
    readonly_fields = fields

    @admin.display(description="When", ordering="action_time")
    def when(self, entry: LogEntry):
        return list_time(entry.action_time)

    @admin.display(description="What")
    def what(self, entry: LogEntry):
        # The dashboard's edits are Django's structured messages ("Changed Enabled."); the others are ours.
        return entry.get_change_message() or FLAG_WORDS.get(entry.action_flag, "")

    @admin.display(description="Object")
    def object(self, entry: LogEntry):
        kind = entry.content_type.name if entry.content_type_id else ""
        url = entry.get_admin_url() if entry.object_id and entry.action_flag != DELETION else ""
        if url:
            return format_html('{} <a href="{}">{}</a>', kind, url, entry.object_repr)
        return format_html("{} {}", kind, entry.object_repr)

    @admin.display(description="From")
    def source(self, entry: LogEntry):
        return audit_log.source(entry)


admin.site.register(LogEntry, AuditLogAdmin)
