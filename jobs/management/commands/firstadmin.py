"""manage.py firstadmin: the embedded `make run`'s first login, created once.

There are no default credentials: on a database without an active superuser this creates the
user "admin" with a random password and prints both once; otherwise it prints one line and
changes nothing. Production creates its users with `createsuperuser` (or the DJANGO_SUPERUSER_*
variables of `createsuperuser --noinput`).
"""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

USERNAME = "admin"
PASSWORD_BYTES = 15  # 20 URL-safe characters


class Command(BaseCommand):
    help = 'Create the superuser "admin" with a random password, printed once, when no active superuser exists.'

    def handle(self, *args, **options):
        users = get_user_model()._default_manager
        if users.filter(is_superuser=True, is_active=True).exists():
            self.stdout.write("firstadmin: a superuser exists; nothing to do.")
            return
        if users.filter(username=USERNAME).exists():
            # Someone took the name and its rights away on purpose: do not hand them back.
            self.stdout.write(
                f'firstadmin: no active superuser, but a user "{USERNAME}" exists; '
                "create a login with `manage.py createsuperuser`."
            )
            return
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        users.create_superuser(USERNAME, "", password)
        self.stdout.write(
            box(
                [
                    "First login for the dashboard, shown only this once:",
                    "",
                    f"    username: {USERNAME}",
                    f"    password: {password}",
                    "",
                    "Keep it, or change it at /tickerq/password_change/.",
                ]
            )
        )


def box(lines: list[str]) -> str:
    width = max(len(line) for line in lines)
    rule = "+" + "-" * (width + 4) + "+"
    return "\n".join([rule, *(f"|  {line.ljust(width)}  |" for line in lines), rule])
