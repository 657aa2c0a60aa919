"""JSON for scripts under /tickerq/api/, in the shapes of the command line's --json output.

The rows come from jobs.web.serializers and outbox.serializers, which `manage.py jobs` and
`manage.py outbox` print, so the two never differ. Authentication is the dashboard's: a staff
user's session, or HTTP Basic credentials, which bookworm_scheduler.web.basic_auth turns into
request.user before a view runs. Each endpoint asks for the permission of the rows it shows, as
the admin page of those rows does (the change permission implies the view permission there,
and here). The views only read, or write an occurrence row for the scheduler: never the broker.

Every error, from a view or from the Basic middleware (401, 403, the lockout's 429), is
{"error": {"status": <the HTTP status>, "message": "<one sentence>"}}: basic_auth.api_error.
"""

import logging

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.basic_auth import CHALLENGE, api_error, basic_header
from jobs.models import Occurrence
from jobs.web.audit import run_now_logged
from jobs.web.serializers import BadFilter, HistoryFilter, history_rows, job_rows, occurrence_detail, occurrence_url
from outbox.serializers import outbox_status

logger = logging.getLogger(__name__)


error = api_error


def may(user, permission: str) -> bool:
    """user has permission; a view permission is also given by the change permission, as in the admin."""
    if user.has_perm(permission):
        return True
    app_label, _, codename = permission.partition(".")
    return codename.startswith("view_") and user.has_perm(f"{app_label}.change_{codename.removeprefix('view_')}")


class ApiView(View):
    """A staff user's JSON endpoint: 401 without credentials, 403 without staff status or permission."""

    http_method_names = ["get", "head"]
    permission = ""  # "app_label.codename" the user needs; empty: staff status is enough

    @classmethod
    def as_view(cls, **initkwargs):
        # Exempt from CsrfViewMiddleware, whose refusal is an HTML page: a view that writes checks
        # the token itself (TriggerView.post) and refuses in JSON; the others only read, and
        # answer any other method 405.
        return csrf_exempt(super().as_view(**initkwargs))

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        response = self.refusal(request) or super().dispatch(request, *args, **kwargs)
        add_never_cache_headers(response)
        return response

    def refusal(self, request: HttpRequest) -> JsonResponse | None:
        user = request.user
        if not user.is_authenticated:
            response = error(401, "Authentication required: log in, or send Basic credentials of a staff user.")
            response["WWW-Authenticate"] = CHALLENGE
            return response
        if not user.is_staff:
            return error(403, "Only staff users may use the API.")
        if self.permission and not may(user, self.permission):
            return error(403, f"Permission required: {self.permission}.")
        return None

    def http_method_not_allowed(self, request, *args, **kwargs):
        response = error(405, f"Method not allowed: {request.method}.")
        response["Allow"] = ", ".join(method.upper() for method in self.http_method_names)
        return response


class IndexView(ApiView):
    """GET /tickerq/api/: the endpoints, and the command each one mirrors (null: none)."""

    def get(self, request):
        endpoints = [
            ("GET", reverse("api:jobs"), "manage.py jobs list --json"),
            (
                "GET",
                reverse("api:history") + "?job=NAME&status=STATUS&manual=true|false&limit=N",
                "manage.py jobs history [--job NAME] [--status STATUS] [--manual|--no-manual] [--limit N] --json",
            ),
            ("GET", reverse("api:occurrence", args=[0]).removesuffix("0") + "ID", None),
            ("GET", reverse("api:outbox"), "manage.py outbox status --json"),
            ("POST", reverse("api:trigger", args=["NAME"]), "manage.py jobs trigger NAME"),
        ]
        return JsonResponse(
            {"endpoints": [{"method": method, "url": url, "command": command} for method, url, command in endpoints]}
        )


class JobsView(ApiView):
    """GET /tickerq/api/jobs/: the rows of `jobs list --json`."""

    permission = "django_celery_beat.view_periodictask"

    def get(self, request):
        return JsonResponse(job_rows(), safe=False)


class HistoryView(ApiView):
    """GET /tickerq/api/history/?job=&status=&manual=&limit=: the rows of `jobs history --json`."""

    permission = "jobs.view_occurrence"

    def get(self, request):
        try:
            history = HistoryFilter.from_query(request.GET)
        except BadFilter as exc:
            return error(400, str(exc))
        return JsonResponse(history_rows(history), safe=False)


class OccurrenceView(ApiView):
    """GET /tickerq/api/occurrences/<id>: one occurrence, its attempts and the events it published."""

    permission = "jobs.view_occurrence"

    def get(self, request, pk: int):
        occurrence = Occurrence.objects.filter(pk=pk).first()
        if occurrence is None:
            return error(404, f"No such occurrence: {pk}.")
        return JsonResponse(occurrence_detail(occurrence))


class OutboxView(ApiView):
    """GET /tickerq/api/outbox/: the object of `outbox status --json`."""

    permission = "outbox.view_outboxmessage"

    def get(self, request):
        return JsonResponse(outbox_status(default_clock()))


class TriggerView(ApiView):
    """POST /tickerq/api/jobs/<name>/trigger: a manual run of the definition called name.

    Answers 201 {"occurrence": id, "status": "scheduled", "url": ...}, Location the same URL
    (OccurrenceView's); the scheduler claims the occurrence as it claims any other. Recorded in
    the admin's log as the dashboard's "Run now" is. 404 when no definition has that name.

    CSRF. A browser attaches the session cookie to any request, a cross-site form's included,
    so a request is accepted without Django's CSRF token (X-CSRFToken header, or the
    csrfmiddlewaretoken field) only when it carries its credentials in the Authorization
    header (Basic) AND has Content-Type: application/json. Both are needed: a browser also
    re-sends Basic credentials it remembers for this site on its own, but a cross-site page
    can send neither a JSON content type nor an Authorization header without a CORS preflight,
    which this service never grants. Every other request (a session's, or Basic credentials
    with a form's content type) needs the token, exactly as the admin's forms do.
    """

    http_method_names = ["post"]
    permission = "jobs.run_job"

    def post(self, request, name: str):
        if not self.credentials_in_header(request):
            refused = CsrfViewMiddleware(lambda request: None).process_view(request, None, (), {})
            if refused is not None:
                return error(
                    403,
                    "CSRF token missing or incorrect: send the session's X-CSRFToken header, "
                    "or Basic credentials with Content-Type: application/json.",
                )
        task = PeriodicTask.objects.select_related("policy").filter(name=name).first()
        if task is None:
            return error(404, f"No such job definition: {name}.")
        username = request.user.get_username()
        occurrence = run_now_logged(task, user=request.user, by=username, via="from the API")
        logger.info(
            "triggered %s",
            name,
            extra={"action": "job_triggered", "job_name": name, "occurrence": occurrence.id, "by": username},
        )
        url = occurrence_url(occurrence.id)
        response = JsonResponse({"occurrence": occurrence.id, "status": occurrence.status, "url": url}, status=201)
        response["Location"] = url
        return response

    @staticmethod
    def credentials_in_header(request: HttpRequest) -> bool:
        # The Basic middleware has already checked the header's credentials (or refused the request).
        return basic_header(request) is not None and request.content_type == "application/json"


class NotFoundView(ApiView):
    """Any other path under /tickerq/api/: a JSON 404 rather than the admin's page."""

    http_method_names = ["get", "head", "post", "put", "patch", "delete"]

    def dispatch(self, request, *args, **kwargs):
        return self.refusal(request) or error(404, "No such endpoint; GET /tickerq/api/ lists them.")
