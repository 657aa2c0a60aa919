"""manage.py apitoken: create, list and revoke API tokens (jobs.models.ApiToken), each change in the audit log.

manage.py apitoken create USER [--name NAME] [--read-only] [--expires DAYS]   prints the token once
manage.py apitoken list [--user USER]
manage.py apitoken revoke ID                                                  ID: the id `list` shows
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.audit_log import from_command_line
from jobs.models import ApiToken
from jobs.web.audit import token_issued_logged, token_revoked_logged


def when(instant) -> str:
    return f"{instant:%Y-%m-%d %H:%M} UTC" if instant else "-"


class Command(BaseCommand):
    help = "Create, list and revoke API tokens (Authorization: Bearer) of staff users."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        create = commands.add_parser("create", help="Create a token for a staff user and print it, once.")
        create.add_argument("user", help="The staff user's username: the token acts with their permissions.")
        create.add_argument("--name", default="", help="What the token is for (default: 'token').")
        create.add_argument("--read-only", action="store_true", help="It may read, never act.")
        create.add_argument("--expires", type=int, metavar="DAYS", help="It expires after DAYS days (default: never).")
        listing = commands.add_parser("list", help="The tokens: id, user, name, access, state, times.")
        listing.add_argument("--user", help="Only this user's tokens.")
        revoke = commands.add_parser("revoke", help="Revoke a token: it is refused from now on.")
        revoke.add_argument("token_id", metavar="ID", help="The id `list` shows (after bws_).")

    def handle(self, *args, command, **options):
        getattr(self, command)(**options)

    def create(self, *, user, name, read_only, expires, **_):
        owner = get_user_model()._default_manager.filter(username=user).first()
        if owner is None:
            raise CommandError(f"no such user: {user}")
        if not (owner.is_active and owner.is_staff):
            raise CommandError(f"{user} is not an active staff user: the API would refuse its tokens")
        if expires is not None and expires <= 0:
            raise CommandError(f"--expires is a number of days, at least 1, not {expires}")
        name = name.strip() or "token"
        if len(name) > ApiToken._meta.get_field("name").max_length:
            raise CommandError(f"--name is at most {ApiToken._meta.get_field('name').max_length} characters")
        row, token = token_issued_logged(
            owner, via=from_command_line(), name=name, read_only=read_only, expires_days=expires, now=default_clock()
        )
        access = "read-only" if read_only else "read-write"
        self.stdout.write(
            f"API token {row.key} for {user} ({access}, expires {when(row.expires_at)}), shown only this once:\n\n"
            f"    {token}\n\nSend it as the header  Authorization: Bearer <token>"
        )

    def list(self, *, user, **_):
        rows = ApiToken.objects.select_related("user")
        if user:
            rows = rows.filter(user__username=user)
        now = default_clock()
        self.stdout.write(f"{'id':12}  {'user':16}  {'name':24}  {'access':10}  {'state':7}  expires / last used")
        for row in rows:
            access = "read-only" if row.read_only else "read-write"
            self.stdout.write(
                f"{row.key:12}  {row.user.get_username():16}  {row.name:24}  {access:10}  {row.state(now):7}  "
                f"{when(row.expires_at)} / {when(row.last_used_at)}"
            )

    def revoke(self, *, token_id, **_):
        key = token_id.removeprefix("bws_").split("_")[0]
        row = ApiToken.objects.select_related("user").filter(key=key).first()
        if row is None:
            raise CommandError(f"no such API token: {token_id}")
        if not token_revoked_logged(row, via=from_command_line(), now=default_clock()):
            raise CommandError(f"API token {row.key} was revoked already, at {when(row.revoked_at)}")
        self.stdout.write(f"Revoked API token {row.key} ({row.name}) of {row.user.get_username()}.")
