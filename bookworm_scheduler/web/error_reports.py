"""What Django's error reports show (DEBUG's error page, mails to ADMINS): never a password or the secret key.

Django's SafeExceptionReporterFilter hides settings and request variables whose names hold API,
TOKEN, KEY, SECRET, PASS, SIGNATURE or HTTP_COOKIE, and the local variables of a function only when
it is marked @sensitive_variables. Here URL joins the names (RABBITMQ_URL and CELERY_BROKER_URL hold
the broker's password; DATABASE_URL and EMAIL_URL a development server's environment), and every
local variable of the traceback is shown with the secrets the settings hold written over: psycopg's
connection parameters, say, in the frames of a failed connection.
"""

import re
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.template.defaultfilters import pprint
from django.views.debug import SafeExceptionReporterFilter


def secrets() -> set[str]:
    """The secrets among the settings: the databases' passwords, the broker's, the mail server's, the secret key."""
    found = {settings.SECRET_KEY, settings.EMAIL_HOST_PASSWORD, urlsplit(settings.RABBITMQ_URL).password}
    found.update(database.get("PASSWORD") for database in settings.DATABASES.values())
    found |= {unquote(secret) for secret in found if secret}
    return {secret for secret in found if secret}


class Shown:
    """A variable's text as the error page prints it (its repr), secrets already written over."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class SecretsFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL", flags=re.IGNORECASE)

    def get_traceback_frame_variables(self, request, tb_frame):
        hidden = sorted(secrets(), key=len, reverse=True)
        shown = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            try:  # as Django's ExceptionReporter prints it: a repr may fail (a QuerySet's, the database away)
                text = pprint(self.cleanse_setting(name, value))
            except Exception as exc:
                text = f"Error in formatting: {type(exc).__name__}: {exc}"
            for secret in hidden:
                text = text.replace(secret, self.cleansed_substitute)
            shown.append((name, Shown(text)))
        return shown
