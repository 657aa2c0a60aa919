"""The admin of a history or heartbeat table: rows are written by the daemons, never by hand."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable with the view permission; no add, save or delete (explicit actions only)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
