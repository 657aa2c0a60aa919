"""A relay's instance row, kept beating while it runs (Heartbeat): what /health/ and the admin read."""

import socket
import uuid
from collections.abc import Callable
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, DatabaseError

from bookworm_scheduler.kernel.liveness import relay_liveness
from outbox.models import RelayInstance


class Heartbeat:
    """This relay's instance row (outbox.RelayInstance), as jobs.engine.leases.Leases keeps a scheduler's.

    beat() registers the row the first time, then renews it once the relay's renewal period
    (bookworm_scheduler.kernel.liveness.relay_liveness) has passed by the database's clock;
    outbox.relay.run calls it at every turn of its loop and between the slices of its waits, so
    a live relay beats at least that often, plus outbox.waker.Waker.SLICE, outside a batch. Each
    renewal also marks the relays silent for longer than the liveness allows lost and deletes
    the rows of relays stopped or lost long ago (bookworm_scheduler.kernel.instances.KEEP).
    retire() says goodbye at exit.
    """

    def __init__(self, clock: Callable[[], datetime], *, instance_id: str = "", using: str = DEFAULT_DB_ALIAS):
        self.session = uuid.uuid4()
        self.instance_id = instance_id or socket.gethostname()
        self.clock = clock
        self.using = using
        self.liveness = relay_liveness()
        self._beaten_at: datetime | None = None

    def beat(self) -> None:
        now = self.clock()
        if self._beaten_at is not None and now - self._beaten_at < self.liveness.renew_every:
            return
        rows = RelayInstance.objects.using(self.using)
        if not rows.beat(self.session, now):
            rows.register(self.session, self.instance_id, now)
        rows.mark_lost(now, self.liveness.lost_after)
        rows.prune(now)
        self._beaten_at = now

    def retire(self) -> None:
        try:
            RelayInstance.objects.using(self.using).retire(self.session, self.clock())
        except DatabaseError:
            pass  # the row then simply stops beating, and is marked lost
