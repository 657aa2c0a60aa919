"""A console session ends after SESSION_IDLE_SECONDS without a request of its user's own.

Django's database sessions expire SESSION_COOKIE_AGE after they were last saved. Saving on every
request (SESSION_SAVE_EVERY_REQUEST) would count the overview's and the history's refreshes (htmx
polls every 5 s) as activity, and a tab left open would keep its session for ever. This middleware
saves a logged-in session again, and so moves its expiry, on every request but those refreshes
(HX-Request); an expired session is an empty one, and the refreshes send the page to the login.
"""

from django.contrib.auth import SESSION_KEY


class IdleSessionMiddleware:
    """After SessionMiddleware: marks a logged-in session modified, unless the request is an htmx poll."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code >= 500:  # a failed request (the database down, say) moves nothing
            return response
        session = getattr(request, "session", None)
        if session is not None and SESSION_KEY in session and not request.headers.get("HX-Request"):
            session.modified = True  # SessionMiddleware saves it, with a new expiry, and sends the cookie again
        return response
