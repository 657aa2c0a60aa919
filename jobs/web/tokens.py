"""Who an `Authorization: Bearer <token>` header names (jobs.models.ApiToken), throttled as failed passwords are.

django-axes counts a token that matches no issued token as a failed login of the made-up
username TOKEN_USERNAME from the client's address (django-axes forgets the count once
AXES_COOLOFF_MINUTES pass without a failure): after AXES_FAILURE_LIMIT of them, every token from that
address is refused with the lockout's 429
(basic_auth.lockout_response, Retry-After included) until the cool-off has passed, the right
ones too, as a locked-out password is. A revoked or expired token is refused (401) but not
counted: whoever sends it once held the real token, and a forgotten cron job that sends an
old one every minute must not lock out the other scripts on its host.

A read-only token is refused (403) any method but GET, HEAD and OPTIONS, whatever its user may
do: the one rule that keeps it from acting, for every endpoint at once.
"""

import logging

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest, HttpResponse
from ninja.errors import AuthenticationError, AuthorizationError, HttpError

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.basic_auth import lockout_response, refusal
from jobs.models import ApiToken

logger = logging.getLogger(__name__)

TOKEN_USERNAME = "(API token)"  # no username has parentheses and a space: Django's validator refuses both
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CHALLENGE = 'Bearer realm="BookWorm Scheduler"'


class TokenRefused(AuthenticationError):
    """A 401 whose message says why the token was refused."""


class TokensLocked(HttpError):
    """The address sent too many unknown tokens: answered by django-axes' lockout response."""

    def __init__(self):
        super().__init__(429, "Locked out: too many unknown API tokens.")


def token_user(request: HttpRequest, token: str):
    """The user of token, set as request.user; raises TokenRefused, TokensLocked or AuthorizationError."""
    credentials = {"username": TOKEN_USERNAME}
    if AxesProxyHandler.is_locked(request, credentials):
        raise TokensLocked()
    row = ApiToken.objects.matching(token.strip())
    if row is None:
        logger.warning("unknown API token refused", extra={"action": "api_token_refused"})
        user_login_failed.send(sender=__name__, credentials=credentials, request=request)
        if getattr(request, "axes_locked_out", False):
            raise TokensLocked()
        raise TokenRefused(message="Unknown API token.")
    now = default_clock()
    why = row.refusal(now)
    if why is not None:
        logger.warning(
            "API token refused: %s",
            row.state(now),
            extra={"action": "api_token_refused", "token": row.key, "username": row.user.get_username()},
        )
        raise TokenRefused(message=why)
    if row.read_only and request.method not in SAFE_METHODS:
        raise AuthorizationError(message="This API token is read-only: it may read, never act.")
    row.used(now)
    request.user = row.user
    request.api_token = row
    return row.user


def bearer_token(request: HttpRequest) -> str | None:
    """The token of the request's Authorization header when its scheme is Bearer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def bearer_refusal(request: HttpRequest) -> HttpResponse | None:
    """For a view outside the API (/metrics): a Bearer token's user made request.user (token_user), or the answer
    that refuses it: the lockout's 429, 401 for an unknown, revoked or expired token, 403 for a read-only one acting.
    None without a Bearer header."""
    token = bearer_token(request)
    if token is None:
        return None
    try:
        token_user(request, token)
    except (TokensLocked, TokenRefused) as exc:
        return token_refused(request, exc)
    except AuthorizationError as exc:
        return refusal(request, 403, exc.message)
    return None


def token_refused(request: HttpRequest, exc: HttpError) -> HttpResponse | None:
    """The answer to a token token_user refused (the lockout's 429; 401 with the Bearer challenge, in the API's
    JSON shape under /tickerq/api/), for the API's error handler and bearer_refusal alike; None for another error."""
    if isinstance(exc, TokensLocked):
        return lockout_response(request)
    if isinstance(exc, TokenRefused):
        response = refusal(request, 401, exc.message)
        response["WWW-Authenticate"] = CHALLENGE
        return response
    return None
