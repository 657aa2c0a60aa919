"""HTTP Basic authentication for the dashboard, and how a locked-out login is told to wait.

Scripts and monitors read the dashboard (the admin, under /tickerq/) with the Basic credentials
of a staff user, as TickerQ's dashboard allowed; a browser without credentials is left to the
admin, which sends it to its login page. Credentials go through django.contrib.auth.authenticate
with the request, so django-axes counts Basic failures with the form's and refuses a locked-out
pair before any password is hashed.

A Basic login is hashed once, not on every request: it logs the user into the session, so a
client that keeps the cookie is known by it from then on; a client without cookies is known for
CACHE_SECONDS by a cache entry keyed by an HMAC of its header, holding the user's id and password
hash (a changed password no longer matches, and a user who lost staff status or was deactivated
is refused at the next request).

Under the JSON API (/tickerq/api/) every refusal, the lockout's included, is the API's one error
shape (api_error); elsewhere it is a line of text, or the lockout page for a browser.

Basic authentication does not exempt a POST from the admin's CSRF protection. Behind reverse
proxies, django-axes knows a client by client_address.
"""

import base64
import binascii
import logging

from axes.helpers import get_cool_off, get_failure_limit, get_lockout_response
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import authenticate, get_user_model, login
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac

logger = logging.getLogger(__name__)

CHALLENGE = 'Basic realm="BookWorm Scheduler", charset="UTF-8"'
CACHE_SECONDS = 300
_CACHE_SALT = "bookworm_scheduler.web.basic_auth"


class BasicAuthMiddleware:
    """Log in the staff user named by an Authorization: Basic header on the dashboard's paths."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        header = basic_header(request)
        if header and request.path.startswith(reverse("admin:index")):
            refusal = authenticate_basic(request, header)
            if refusal is not None:
                return refusal
        return self.get_response(request)


def basic_header(request: HttpRequest) -> str | None:
    """The request's Authorization header when its scheme is Basic."""
    header = request.headers.get("Authorization", "")
    scheme, _, _ = header.partition(" ")
    return header if scheme.lower() == "basic" else None


def authenticate_basic(request: HttpRequest, header: str) -> HttpResponse | None:
    """Attach the header's staff user to the request; a response refusing it otherwise."""
    try:
        username, password = decode_credentials(header)
    except ValueError:
        return unauthorized(request, "Malformed Basic credentials.")

    if request.user.is_authenticated and request.user.get_username() == username:
        return None  # logged into this session earlier: checked then

    key = _cache_key(header)
    user = _cached_user(key)
    if user is not None:
        request.user = user
        return None

    user = authenticate(request=request, username=username, password=password)
    if user is None:
        # No username here: a mistyped one can be a password. django-axes logs the attempt.
        logger.warning("Basic credentials refused", extra={"action": "basic_auth_refused"})
        if getattr(request, "axes_locked_out", False):
            return get_lockout_response(request, None, {"username": username})
        return unauthorized(request, "Wrong username or password.")
    if not (user.is_active and user.is_staff):
        logger.warning(
            "Basic login of a non-staff user", extra={"action": "basic_auth_forbidden", "username": username}
        )
        return refusal(request, 403, "This user may not use the dashboard.")

    login(request, user)
    cache.set(key, (user.pk, user.password), CACHE_SECONDS)
    logger.info("Basic login", extra={"action": "basic_auth_login", "username": username})
    return None


def decode_credentials(header: str) -> tuple[str, str]:
    """(username, password) of a Basic header; ValueError when it is not base64 "user:password" in UTF-8."""
    _, _, encoded = header.partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("malformed Basic credentials") from exc
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ValueError("malformed Basic credentials")
    return username, password


def is_api(request: HttpRequest) -> bool:
    """The request is for the JSON API (jobs.web.api), whose errors all have api_error's shape."""
    return request.path.startswith(reverse("api:index"))


def api_error(status: int, message: str) -> JsonResponse:
    """The one shape of every error the API answers: {"error": {"status": 404, "message": "..."}}.

    Here rather than in jobs.web.api because this middleware's refusals under the API need it too.
    """
    return JsonResponse({"error": {"status": status, "message": message}}, status=status)


def refusal(request: HttpRequest, status: int, message: str) -> HttpResponse:
    """message as the API's JSON error under /tickerq/api/, else as one line of plain text."""
    if is_api(request):
        return api_error(status, message)
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def unauthorized(request: HttpRequest, message: str) -> HttpResponse:
    response = refusal(request, 401, message)
    response["WWW-Authenticate"] = CHALLENGE
    return response


def _cache_key(header: str) -> str:
    # An HMAC, not the header: the cache never holds a password, nor anything that gives one away.
    return "basic-auth:" + salted_hmac(_CACHE_SALT, header, algorithm="sha256").hexdigest()


def _cached_user(key: str):
    """The user a recent Basic login with the same header found, if still staff with the same password."""
    entry = cache.get(key)
    if entry is None:
        return None
    user_id, password_hash = entry
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    if (
        user is None
        or not constant_time_compare(user.password, password_hash)
        or not (user.is_active and user.is_staff)
    ):
        cache.delete(key)
        return None
    return user


def lockout_response(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """django-axes' AXES_LOCKOUT_CALLABLE: the answer to a login refused by a lockout.

    An API request gets the API's JSON error, another request with credentials in its header (Basic, a
    token) a line of text, a browser the lockout page; each says how long to wait, and so does
    Retry-After. django-axes restarts the cool-off at every attempt while locked (its default), so the
    wait is the whole cool-off.
    """
    minutes = int(get_cool_off(request).total_seconds() // 60)
    if is_api(request) or request.headers.get("Authorization"):  # a script's credentials: Basic, or a token
        unit = "minute" if minutes == 1 else "minutes"
        response = refusal(request, 429, f"Account locked: too many failed logins. Try again in {minutes} {unit}.")
    else:
        context = {
            **admin.site.each_context(request),
            "title": "Account locked",
            "minutes": minutes,
            "failure_limit": get_failure_limit(request, credentials),
        }
        response = render(request, "auth/lockout.html", context, status=429)
    response["Retry-After"] = str(minutes * 60)
    return response


def client_address(request: HttpRequest) -> str | None:
    """The client's address as the outermost of TRUSTED_PROXY_COUNT proxies received the request (django-axes').

    Each proxy appends its peer's address to X-Forwarded-For, so that one is the count-th entry
    from the end; the entries before it came from the client and are not trusted. A request with
    fewer entries did not pass through every proxy: it is known by REMOTE_ADDR.
    """
    count = settings.TRUSTED_PROXY_COUNT
    forwarded = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [entry for entry in forwarded if entry]
    if count and len(forwarded) >= count:
        return forwarded[-count]
    return request.META.get("REMOTE_ADDR")
