"""JSON for scripts under /tickerq/api/, in the shapes of the command line's --json output (django-ninja).

The rows come from jobs.web.serializers and outbox.serializers, which `manage.py jobs` and
`manage.py outbox` print, so the two never differ; their pydantic schemas are the responses
declared here, which django-ninja checks each answer against and documents in the OpenAPI
description at /tickerq/api/openapi.json. The history's query string is read by django-ninja
into a HistoryFilter, which documents its parameters too.

Authentication: an API token (Authorization: Bearer, jobs.web.tokens, which sets request.user to
its user), or the dashboard's: a staff user's session, or HTTP Basic credentials, which
bookworm_scheduler.web.basic_auth turns into request.user before a view runs (Staff only reads
request.user; its subclasses name the three ways in the OpenAPI description). Each endpoint
asks for the permission of the rows it shows, as the admin page of those rows does (the change
permission implies the view permission there, and here). The views only read, or write an
occurrence row for the scheduler: never the broker.

Every error, from a view, from django-ninja (a parameter that does not validate: 400) or from
the Basic middleware or a token's refusal (401, 403, the lockout's 429), is {"error": {"status": <the HTTP status>,
"message": "<one sentence>"}}: basic_auth.api_error. jobs.web.api_urls adds the 405s and the
404 of an unknown path, in the same shape.
"""

import logging
from collections.abc import Callable
from functools import wraps
from typing import Literal

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from ninja import NinjaAPI, Query, Status
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError
from ninja.security import HttpBearer
from ninja.security.base import AuthBase
from pydantic import BaseModel, Field

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.audit_log import FROM_API
from bookworm_scheduler.web.basic_auth import CHALLENGE, api_error, basic_header
from jobs.engine.oneoff import ScheduleError
from jobs.models import Occurrence
from jobs.web import tokens
from jobs.web.audit import cancel_logged, cancel_refusal, run_now_logged, schedule_logged
from jobs.web.serializers import (
    HistoryFilter,
    HistoryRow,
    JobRow,
    OccurrenceDetail,
    ScheduleRequest,
    history_rows,
    job_rows,
    occurrence_detail,
    occurrence_url,
)
from outbox.serializers import OutboxStatus, outbox_status

logger = logging.getLogger(__name__)

UNAUTHENTICATED = (
    "Authentication required: send an API token (Authorization: Bearer), log in, "
    "or send Basic credentials of a staff user."
)


class ErrorBody(BaseModel):
    status: int
    message: str


class Error(BaseModel):
    """Every error's shape (basic_auth.api_error)."""

    error: ErrorBody


class Triggered(BaseModel):
    occurrence: int
    status: str
    url: str


class Cancelled(OccurrenceDetail):
    """The answer of a cancel: the occurrence, and what the cancel did."""

    cancel: Literal["cancelled", "requested"] = Field(
        description="cancelled: it will not run; requested: it is running, and stops when its job checks or returns"
    )


class Endpoint(BaseModel):
    method: str
    url: str
    command: str | None


class Index(BaseModel):
    endpoints: list[Endpoint]


def may(user, permission: str) -> bool:
    """user has permission; a view permission is also given by the change permission, as in the admin."""
    if user.has_perm(permission):
        return True
    app_label, _, codename = permission.partition(".")
    return codename.startswith("view_") and user.has_perm(f"{app_label}.change_{codename.removeprefix('view_')}")


def check_staff(request: HttpRequest, permission: str = ""):
    """request.user when a staff user with permission ("app_label.codename"; empty: staff status is enough).

    Raises AuthenticationError without credentials (401), AuthorizationError otherwise (403).
    """
    user = request.user
    if not user.is_authenticated:
        raise AuthenticationError(message=UNAUTHENTICATED)
    if not user.is_staff:
        raise AuthorizationError(message="Only staff users may use the API.")
    if permission and not may(user, permission):
        raise AuthorizationError(message=f"Permission required: {permission}.")
    return user


class Staff(AuthBase):
    """django-ninja's auth for an endpoint: check_staff with the endpoint's permission."""

    def __init__(self, permission: str = ""):
        self.permission = permission
        super().__init__()

    def __call__(self, request: HttpRequest):
        return check_staff(request, self.permission)


class BearerToken(HttpBearer):
    """An API token of a staff user (jobs.web.tokens), then check_staff with the endpoint's permission."""

    openapi_description = (
        "An API token (manage.py apitoken create, or a user's page in the console): its user's permissions, "
        "read-only tokens may only read. Unknown tokens are throttled as failed logins are."
    )

    def __init__(self, permission: str = ""):
        self.permission = permission
        super().__init__()

    def authenticate(self, request: HttpRequest, token: str):
        tokens.token_user(request, token)
        return check_staff(request, self.permission)


class BasicCredentials(Staff):
    openapi_type = "http"
    openapi_scheme = "basic"
    openapi_description = "A staff user's username and password (django-axes locks a login out after failures)."


class SessionCookie(Staff):
    openapi_type = "apiKey"
    openapi_in = "cookie"
    openapi_name = settings.SESSION_COOKIE_NAME
    openapi_description = "The session of a staff user logged into the console."


def staff(permission: str = "") -> list[AuthBase]:
    # Any way in: the first one that answers decides. A Bearer header is the token's alone (BearerToken
    # answers or refuses); without one, the others read request.user, which the middleware set.
    return [BearerToken(permission), BasicCredentials(permission), SessionCookie(permission)]


def refusing_in_json(view: Callable) -> Callable:
    """A plain view (not an endpoint's) answering only staff users, refusing in the API's error shape."""

    @wraps(view)
    def checked(request, *args, **kwargs):
        try:
            token = tokens.bearer_token(request)
            if token is not None:
                tokens.token_user(request, token)
            check_staff(request)
        except HttpError as exc:
            return http_error(request, exc)
        return view(request, *args, **kwargs)

    return checked


REFUSALS = {401: Error, 403: Error}

api = NinjaAPI(
    title="BookWorm Scheduler",
    version="1",
    description="The command line's --json output over HTTP, for staff users and their scripts.",
    urls_namespace="api",
    # Behind staff credentials like every endpoint: the description is of use to the staff's
    # scripts only, and need not tell anyone else what the service answers.
    openapi_url="/openapi.json",
    docs_decorator=refusing_in_json,
    # The interactive page (Swagger UI) from django-ninja's own copy, served as static files ("ninja" is
    # in INSTALLED_APPS for that): the service loads nothing from other sites.
    docs_url="/docs",
)


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    refused = tokens.token_refused(request, exc)
    if refused is not None:
        return refused
    if isinstance(exc, AuthenticationError):
        response = api_error(401, UNAUTHENTICATED)
        response["WWW-Authenticate"] = CHALLENGE
        return response
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):  # django-ninja could not parse the body
        return api_error(400, f"the body is not JSON: {exc.__cause__}")
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # json.loads gave up on its depth
        return api_error(400, "the body is not JSON this service reads: it nests arrays or objects too deeply")
    return api_error(exc.status_code, exc.message)


@api.exception_handler(ValidationError)
def invalid_parameters(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    # The only parameters are the history's and a schedule's body (an id is matched by its URL's <int:>).
    if any(error["loc"][:1] == ("body",) for error in exc.errors):
        return api_error(400, ScheduleRequest.refusal(exc.errors))
    return api_error(400, HistoryFilter.refusal(exc.errors))


def sentence(text: str) -> str:
    """A message of ours (lower case, as the command line prints it) as the API's: capitalised, a full stop."""
    return f"{text[:1].upper()}{text[1:]}."


@api.exception_handler(Exception)
def failure(request: HttpRequest, exc: Exception) -> HttpResponse:
    if isinstance(exc, RequestDataTooBig):  # API_BODY_MAX_BYTES set above Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return api_error(413, f"The body is more than DATA_UPLOAD_MAX_MEMORY_SIZE ({limit}).")
    logger.exception("API request failed: %s %s", request.method, request.path)
    return api_error(500, "Internal error; the server's log has the details.")


@api.get("/", response={200: Index, **REFUSALS}, auth=staff(), url_name="index")
def endpoints(request):
    """The endpoints, and the command each one mirrors (null: none)."""
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
        (
            "POST",
            reverse("api:schedule", args=["JOB"]),
            "manage.py jobs schedule JOB [--at ISO-8601 | --in 10m] [--payload JSON] [--key KEY]",
        ),
        ("POST", reverse("api:cancel", args=[0]).replace("/0/", "/ID/"), "manage.py jobs cancel ID"),
        ("GET", reverse("api:openapi-json"), None),
        ("GET", reverse("api:openapi-view"), None),
    ]
    return {"endpoints": [{"method": method, "url": url, "command": command} for method, url, command in endpoints]}


@api.get(
    "/jobs/",
    response={200: list[JobRow], **REFUSALS},
    auth=staff("django_celery_beat.view_periodictask"),
    url_name="jobs",
)
def list_jobs(request):
    """The rows of `jobs list --json`: each definition with its schedule, next run and last status, by name."""
    return job_rows()


@api.get(
    "/history/",
    response={200: list[HistoryRow], 400: Error, **REFUSALS},
    auth=staff("jobs.view_occurrence"),
    url_name="history",
)
def list_history(request, filters: Query[HistoryFilter]):
    """The rows of `jobs history --json`: occurrences, newest first, filtered as the command line's options do."""
    unknown = HistoryFilter.unknown_parameter(request.GET)
    if unknown:
        raise HttpError(400, unknown)
    return history_rows(filters)


@api.get(
    "/occurrences/{int:pk}",
    response={200: OccurrenceDetail, 404: Error, **REFUSALS},
    auth=staff("jobs.view_occurrence"),
    url_name="occurrence",
)
def show_occurrence(request, pk: int):
    """One occurrence, its attempts and the events it published."""
    found = Occurrence.objects.filter(pk=pk).first()
    if found is None:
        raise HttpError(404, f"No such occurrence: {pk}.")
    return occurrence_detail(found)


@api.get(
    "/outbox/",
    response={200: OutboxStatus, **REFUSALS},
    auth=staff("outbox.view_outboxmessage"),
    url_name="outbox",
)
def outbox_counts(request):
    """The object of `outbox status --json`."""
    return outbox_status(default_clock())


@api.post(
    "/jobs/{path:name}/trigger",  # a definition's name is free text: <path:> lets it hold a slash
    response={201: Triggered, 404: Error, **REFUSALS},
    auth=staff("jobs.run_job"),
    url_name="trigger",
)
def trigger_run(request, name: str, response: HttpResponse):
    """A manual run of the definition called name.

    Answers 201 {"occurrence": id, "status": "scheduled", "url": ...}, Location the same URL
    (the occurrence's); the scheduler claims the occurrence as it claims any other. Recorded in
    the admin's log as the dashboard's "Run now" is. 404 when no definition has that name. The
    CSRF rule of every endpoint that writes: check_csrf.
    """
    check_csrf(request)
    task = PeriodicTask.objects.select_related("policy").filter(name=name).first()
    if task is None:
        raise HttpError(404, f"No such job definition: {name}.")
    username = request.user.get_username()
    occurrence = run_now_logged(task, user=request.user, by=username, via=FROM_API)
    logger.info(
        "triggered %s",
        name,
        extra={"action": "job_triggered", "job_name": name, "occurrence": occurrence.id, "by": username},
    )
    url = occurrence_url(occurrence.id)
    response["Location"] = url
    return Status(201, {"occurrence": occurrence.id, "status": occurrence.status, "url": url})


@api.post(
    "/jobs/{path:job}/schedule",  # a registered job's name, as @job gave it: <path:> lets it hold a slash
    response={200: OccurrenceDetail, 201: OccurrenceDetail, 400: Error, **REFUSALS},
    auth=staff("jobs.run_job"),
    url_name="schedule",
)
def schedule_run(request, job: str, response: HttpResponse, body: ScheduleRequest | None = None):
    """A one-off run of the registered job called job (jobs.schedule), at a time, with a payload.

    Answers 201 with the occurrence as GET /tickerq/api/occurrences/<id> shows it, Location its
    URL; 200 with the run that holds the key when a run with that key is scheduled or running (a
    repeated request schedules nothing). Recorded in the admin's log as "Scheduled". 400 for a
    body that is not as documented (a time without its offset, a payload that is not an object or
    is too big) or a job that is not registered (with the nearest name). `job` names a job's code
    (jobs.engine.registry), not a definition. The CSRF rule: check_csrf.
    """
    check_csrf(request)
    by = request.user.get_username()
    body = body or ScheduleRequest()  # no body: as soon as possible, without a payload
    run = body.model_dump(exclude={"then"}) | {"then": [follow_up.model_dump() for follow_up in body.then]}
    try:
        occurrence, new = schedule_logged(job, user=request.user, by=by, via=FROM_API, **run)
    except ScheduleError as exc:
        raise HttpError(400, str(exc)) from None
    response["Location"] = occurrence_url(occurrence.id)
    return Status(201 if new else 200, occurrence_detail(occurrence))


@api.post(
    "/occurrences/{int:pk}/cancel",
    response={200: Cancelled, 404: Error, 409: Error, **REFUSALS},
    auth=staff("jobs.cancel_occurrence"),
    url_name="cancel",
)
def cancel_occurrence(request, pk: int):
    """Cancel a scheduled occurrence, or ask a running one to stop, as the dashboard's Cancel does.

    Answers 200 with the occurrence as GET /tickerq/api/occurrences/<id> shows it and "cancel":
    "cancelled" (it will not run) or "requested" (its runner stops it when its job checks or
    returns; a Celery worker's is terminated). Recorded in the admin's log as the dashboard's
    Cancel is. 404 when no occurrence has that id; 409 when it has finished, or was asked to stop
    already. The CSRF rule: check_csrf.
    """
    check_csrf(request)
    occurrence = Occurrence.objects.filter(pk=pk).first()
    if occurrence is None:
        raise HttpError(404, f"No such occurrence: {pk}.")
    by = request.user.get_username()
    outcome = cancel_logged(occurrence, user=request.user, by=by, via=FROM_API, now=default_clock())
    if not outcome:
        raise HttpError(409, sentence(cancel_refusal(occurrence)))
    occurrence.refresh_from_db()
    return {**occurrence_detail(occurrence), "cancel": outcome.value}


def check_csrf(request: HttpRequest) -> None:
    """Refuse (403) a request that writes without Django's CSRF token, unless a browser could not have sent it.

    A browser attaches the session cookie to any request, a cross-site form's included, so a
    request is accepted without Django's CSRF token (X-CSRFToken header, or the
    csrfmiddlewaretoken field) only when it carries an API token (Bearer), which a browser never
    sends by itself, or its credentials in the Authorization header (Basic) AND has Content-Type:
    application/json. Both are needed: a browser also re-sends
    Basic credentials it remembers for this site on its own, but a cross-site page can send
    neither a JSON content type nor an Authorization header without a CORS preflight, which this
    service never grants. Every other request (a session's, or Basic credentials with a form's
    content type) needs the token, exactly as the admin's forms do. jobs.web.api_urls exempts
    the API's views from the CSRF middleware so that this refusal is in the API's error shape.
    """
    if credentials_in_header(request):
        return
    refused = CsrfViewMiddleware(lambda request: None).process_view(request, None, (), {})
    if refused is not None:
        raise HttpError(
            403,
            "CSRF token missing or incorrect: send the session's X-CSRFToken header, "
            "or Basic credentials with Content-Type: application/json.",
        )


def credentials_in_header(request: HttpRequest) -> bool:
    # The Basic middleware has already checked the header's credentials (or refused the request), and
    # BearerToken its token. A browser never sends a Bearer header on its own: no content type is needed.
    if tokens.bearer_token(request) is not None:
        return True
    return basic_header(request) is not None and request.content_type == "application/json"
