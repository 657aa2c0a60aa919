"""/tickerq/api/: JSON for scripts (see jobs.web.api), django-ninja's URLs and two of our own answers.

Included before the admin, whose catch-all would take these paths. Every view here answers in
the API's error shape and is never cached: django-ninja's own 405 (a line of HTML) is
replaced by the API's JSON (after the staff check, as before any answer), and any other path
is the API's JSON 404 rather than the admin's page. A HEAD request is answered as a GET is. A body
longer than API_BODY_MAX_BYTES is refused (413) before anything reads it.
"""

from functools import wraps

from django.conf import settings
from django.urls import URLPattern, path
from django.utils.cache import add_never_cache_headers

from bookworm_scheduler.web.basic_auth import api_error
from jobs.web import api

app_name = "api"


def json_answers(view):
    @wraps(view)
    def answered(request, *args, **kwargs):
        if request.method == "HEAD":
            request.method = "GET"  # as Django's View answers HEAD; the server sends no body
        response = too_big(request) or view(request, *args, **kwargs)
        if response.status_code == 405 and response.get("Content-Type", "").startswith("text/"):
            allowed = {method.strip() for method in response["Allow"].split(",")}
            allowed |= {"HEAD"} if "GET" in allowed else set()
            response = api.refusing_in_json(method_not_allowed)(request, ", ".join(sorted(allowed)))
        add_never_cache_headers(response)
        return response

    answered.csrf_exempt = True  # the endpoints that write check the token themselves (api.check_csrf), in JSON
    return answered


def too_big(request):
    """The 413 of a body longer than API_BODY_MAX_BYTES, by its Content-Length; None for any other."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0  # as Django reads it: no body
    limit = settings.API_BODY_MAX_BYTES
    if length <= limit:
        return None
    return api_error(413, f"The body is {length} bytes, more than API_BODY_MAX_BYTES ({limit}).")


def method_not_allowed(request, allowed: str):
    response = api_error(405, f"Method not allowed: {request.META['REQUEST_METHOD']}.")
    response["Allow"] = allowed
    return response


@api.refusing_in_json
def not_found(request, rest: str):
    return api_error(404, "No such endpoint; GET /tickerq/api/ lists them.")


urlpatterns = [
    *[URLPattern(p.pattern, json_answers(p.callback), p.default_args, p.name) for p in api.api.urls[0]],
    path("<path:rest>", json_answers(not_found)),
]
