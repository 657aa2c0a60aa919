"""What `manage.py outbox status --json` prints and /tickerq/api/outbox/ answers: one shape for both."""

from datetime import datetime

from outbox.models import OutboxMessage


def outbox_status(now: datetime) -> dict:
    """Messages per status, and the age in seconds of the oldest pending one (0.0 when none)."""
    return OutboxMessage.objects.status_counts(now)
