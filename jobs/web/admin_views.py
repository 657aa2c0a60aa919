"""The console's one-click buttons and the job page's runs, beside jobs.web.admin.

A button ("Run now" on a job, "Retry" and "Cancel" on an occurrence) POSTs, with the CSRF
token, to a view that calls the list's own admin action on that one row: the same store call,
LogEntry and message as the action; then it goes back to the page it came from. The occurrence
admin's cancel action is cancel_occurrences (a scheduled occurrence is cancelled, a running one
asked to stop). The job page's runs and totals are bounded look-ups in index occ_task_recent
(task, -scheduled_for, including status), however big the history is.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.redirects import back
from bookworm_scheduler.web.times import list_time
from jobs.engine.store import CancelOutcome
from jobs.models import Occurrence
from jobs.web.audit import cancel_logged

RECENT_RUNS = 10
COUNT_CAP = 10_000  # the totals count at most the latest COUNT_CAP runs of each window, like the history's pages
RETRYABLE = (Occurrence.Status.FAILED, Occurrence.Status.MISSED, Occurrence.Status.SKIPPED)
CANCELLABLE = (Occurrence.Status.SCHEDULED, Occurrence.Status.RUNNING)


def object_action_urls(model_admin, *actions: tuple[str, str]) -> list:
    """URLs <id>/<action>/ for (action, permission) pairs: the action's method applied to that one object."""
    urls = []
    for action, permission in actions:
        view = model_admin.admin_site.admin_view(_object_action_view(model_admin, action, permission))
        name = f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_{action}"
        urls.append(path(f"<path:object_id>/{action}/", view, name=name))
    return urls


def _object_action_view(model_admin, action: str, permission: str):
    def view(request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not getattr(model_admin, f"has_{permission}_permission")(request):
            raise PermissionDenied
        obj = model_admin.get_object(request, object_id)
        if obj is None:
            raise Http404
        rows = model_admin.model._default_manager.filter(pk=obj.pk)
        getattr(model_admin, action)(request, rows)
        change = reverse(f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_change", args=[obj.pk])
        return HttpResponseRedirect(back(request, change))

    return view


def cancel_occurrences(model_admin, request, queryset) -> None:
    """Cancel the scheduled occurrences and ask the running ones to stop (audit.cancel_logged: store.cancel
    and its admin-log record in one transaction, as the API and the command line do); one message for all."""
    by, done = request.user.get_username(), {CancelOutcome.CANCELLED: 0, CancelOutcome.REQUESTED: 0}
    for occurrence in queryset.filter(status__in=CANCELLABLE):
        outcome = cancel_logged(occurrence, user=request.user, by=by, via="", now=default_clock())
        if outcome:
            done[outcome] += 1
    cancelled, requested = done[CancelOutcome.CANCELLED], done[CancelOutcome.REQUESTED]
    said = [f"Cancelled {cancelled} occurrence(s)."] if cancelled or not requested else []
    if requested:
        said.append(
            f"Asked {requested} running occurrence(s) to stop: each stops when its job checks or returns "
            "(a Celery worker's is terminated)."
        )
    model_admin.message_user(request, " ".join(said), messages.SUCCESS)


# The job page.


@dataclass(frozen=True)
class Totals:
    window: str
    succeeded: int
    failed: int
    other: int  # scheduled, running, missed, expired or skipped
    capped: bool  # the window holds more than COUNT_CAP runs: these are the latest COUNT_CAP


def recent_runs(task_id: int, limit: int = RECENT_RUNS) -> list[Occurrence]:
    """The job's latest occurrences, newest first: the first entries of occ_task_recent."""
    fields = ["id", "task_id", "status", "scheduled_for", "started_at", "finished_at", "manual", "attempts"]
    return list(Occurrence.objects.filter(task_id=task_id).order_by("-scheduled_for").only(*fields)[:limit])


def totals(task_id: int, now: datetime) -> list[Totals]:
    """Succeeded, failed and other runs scheduled in the last 24 hours and 7 days (at most COUNT_CAP each)."""
    rows = []
    for window, length in (("24 h", timedelta(hours=24)), ("7 d", timedelta(days=7))):
        latest = Occurrence.objects.filter(task_id=task_id, scheduled_for__gte=now - length).order_by("-scheduled_for")
        counts = latest[:COUNT_CAP].aggregate(
            all=Count("status"),
            succeeded=Count("status", filter=Q(status=Occurrence.Status.SUCCEEDED)),
            failed=Count("status", filter=Q(status=Occurrence.Status.FAILED)),
        )
        other = counts["all"] - counts["succeeded"] - counts["failed"]
        rows.append(Totals(window, counts["succeeded"], counts["failed"], other, counts["all"] >= COUNT_CAP))
    return rows


def runs_url(task_id: int) -> str:
    """The history filtered to this job (jobs.web.filters.JobFilter)."""
    return f"{reverse('admin:jobs_occurrence_changelist')}?job={task_id}"


def occurrence_buttons(model_admin, request, occurrence: Occurrence) -> dict:
    """Which of Retry and Cancel apply to this occurrence and this user, and a running one's pending cancel."""
    pending = occurrence.status == Occurrence.Status.RUNNING and occurrence.cancel_requested_at is not None
    return {
        "can_retry": occurrence.status in RETRYABLE
        and occurrence.task_id is not None
        and model_admin.has_retry_permission(request),
        "can_cancel": occurrence.status in CANCELLABLE and not pending and model_admin.has_cancel_permission(request),
        "cancel_pending": pending,
        "cancel_requested_by": occurrence.cancel_requested_by if pending else "",
        "cancel_requested_at": list_time(occurrence.cancel_requested_at) if pending else "",
    }
