"""`manage.py outbox status|requeue`: look at the outbox and send failed messages again."""

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.web.audit_log import from_command_line, log_many
from outbox.models import OutboxMessage
from outbox.serializers import outbox_status


class Command(BaseCommand):
    help = "Inspect the outbox, or requeue dead and unroutable messages (their message ids are kept)."

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="command", required=True)
        status = commands.add_parser("status", help="messages per status and the oldest pending age")
        status.add_argument("--json", action="store_true", help="one JSON object instead of lines")
        requeue = commands.add_parser("requeue", help="send dead and unroutable messages again")
        requeue.add_argument("--id", type=int, nargs="+", dest="ids", help="only these rows")
        requeue.add_argument(
            "--status",
            choices=[status.value for status in OutboxMessage.REQUEUEABLE],  # the words, not the enum's names
            help="only rows in this status",
        )

    def handle(self, *args, command: str, **options):
        if command == "status":
            self.status(as_json=options["json"])
        else:
            self.requeue(ids=options["ids"], status=options["status"])

    def status(self, *, as_json: bool) -> None:
        counts = outbox_status(default_clock())
        if as_json:
            self.stdout.write(json.dumps(counts))
        else:
            for name, value in counts.items():
                self.stdout.write(f"{name}: {value:g}" if isinstance(value, float) else f"{name}: {value}")

    def requeue(self, *, ids: list[int] | None, status: str | None) -> None:
        """Requeue what was selected; an id that is no row, or nothing to requeue, is an error (exit 1).

        Recorded in the audit log as one entry for the rows requeued, in the same transaction.
        """
        rows = OutboxMessage.objects.all()
        if ids:
            found = set(rows.filter(id__in=ids).values_list("id", flat=True))
            missing = sorted(set(ids) - found)
            if missing:
                raise CommandError(f"no outbox message with id {', '.join(map(str, missing))}; nothing requeued")
            rows = rows.filter(id__in=ids)
        if status:
            rows = rows.filter(status=status)
        wanted = status or " or ".join(OutboxMessage.REQUEUEABLE)
        among = f" among ids {', '.join(map(str, sorted(set(ids))))}" if ids else ""
        with transaction.atomic():
            count = rows.requeue(default_clock())
            if count:
                log_many(None, OutboxMessage, count, "Requeued", via=from_command_line(), detail=f"{wanted}{among}")
        if count == 0:
            raise CommandError(f"nothing to requeue: no {wanted} message{among}")
        self.stdout.write(f"requeued {count} message{'s' if count != 1 else ''}")
