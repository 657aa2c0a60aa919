"""What `manage.py outbox status --json` prints and /tickerq/api/outbox/ answers: one shape for both.

OutboxStatus is that shape's schema, which the API declares as its response (and so documents
in its OpenAPI description): a count per status, from OutboxMessage.Status, and the age.
"""

from datetime import datetime

from pydantic import ConfigDict, Field, create_model

from outbox.models import OutboxMessage

OutboxStatus = create_model(
    "OutboxStatus",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Messages per status, and the age in seconds of the oldest pending one.",
    **{status: (int, Field(description=f"messages {status}")) for status in OutboxMessage.Status.values},
    oldest_pending_age_seconds=(float, Field(description="0.0 when none is pending")),
)


def outbox_status(now: datetime) -> dict:
    """Messages per status, and the age in seconds of the oldest pending one (0.0 when none)."""
    return OutboxMessage.objects.status_counts(now)
