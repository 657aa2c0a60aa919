"""A page the database's absence keeps from being served: 503 and one log line, not a 500 and a traceback.

Django answers an exception no view caught with handler500 (DEBUG off; DEBUG shows its own page) and
logs it on django.request with its traceback. When the exception is a database that cannot be reached
(kernel.db.database_fault says UNAVAILABLE: down, or refused for a reason in DATABASE_URL, such as a
certificate, a host name or a password), server_error answers 503 with Retry-After, in the API's JSON
shape under /tickerq/api/ and as one line of text elsewhere, naming the reason in kernel.db's few words
(connect_failure_reason: no host, user or password); and DatabaseUnavailableRequests, a filter of the
django.request logger, makes its record one WARNING line naming DATABASE_URL and the error
(describe_database_error), without the traceback. Any other exception is Django's 500 as before.
"""

import logging
import sys

from django.views import defaults

from bookworm_scheduler.kernel.db import DatabaseFault, connect_failure_reason, database_fault, describe_database_error

RETRY_AFTER_SECONDS = 5


def unavailable(exc: BaseException | None) -> bool:
    return exc is not None and database_fault(exc) is DatabaseFault.UNAVAILABLE


def server_error(request):
    """handler500: 503 when the database is unreachable, Django's 500 page otherwise."""
    exc = sys.exc_info()[1]
    if not unavailable(exc):
        return defaults.server_error(request)
    from bookworm_scheduler.web.basic_auth import refusal  # it imports the auth models: not at logging's set-up

    reason = connect_failure_reason(exc)
    response = refusal(
        request, 503, f"The database is unreachable{f' ({reason})' if reason else ''}; try again in a few seconds."
    )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableRequests(logging.Filter):
    """django.request's record of a request the unreachable database failed: one WARNING line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if unavailable(exc):
            request = getattr(record, "request", None)
            record.msg = "%s %s: the database is unreachable: %s"
            record.args = (getattr(request, "method", "-"), getattr(request, "path", "-"), describe_database_error(exc))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.action = "request_database_unavailable"
        return True
