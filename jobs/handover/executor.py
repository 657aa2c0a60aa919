"""The scheduler's side of the hand-over: claimed occurrences run in Celery workers (SCHEDULER_EXECUTOR=celery).

CeleryExecutor is the loop's executor (jobs.engine.loop.Executor) in place of the thread pool.
With it the scheduler still plans and claims (exactly once, jobs.engine.sql.claim);
submit_all() publishes one message per claim, naming (occurrence, session, attempt), a batch at
a time on a channel in confirm mode, then waits for the broker's confirms of the whole batch
(ConfirmedPublisher); a claim whose message was not confirmed is released. A worker
(jobs.handover.worker.run_occurrence) then takes the claim over with a compare-and-set from the
scheduler's session to its own (jobs.engine.store.take_over), renews the lease while the job runs and records
the attempt with jobs.engine.runner.Runner, as the inline executor does. The occurrence row decides,
never the message: a message delivered twice, or one whose claim was released or reaped
meanwhile, finds nothing to take over and does nothing.

A cancel asked while the occurrence runs (jobs.engine.store.cancel) is noticed at a lease
renewal by whoever holds the claim: this scheduler for a hand-over no worker took over yet
(stop_cancelled: the message revoked, the cancel recorded), the worker's LeaseKeeper once it
took it over (the cancel recorded, its own task revoked and its process terminated).
"""

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from celery.utils.nodenames import anon_nodename
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from bookworm_scheduler.celery import app as celery_app
from bookworm_scheduler.celery import job_queues
from bookworm_scheduler.kernel import backoff as backoffs
from bookworm_scheduler.kernel.errors import one_line
from jobs.engine import observer, store
from jobs.engine.definitions import Definition, definition_for
from jobs.engine.planning import apply_misfire_policy
from jobs.engine.policy import Policy, Priority
from jobs.engine.store import LeaseLost
from jobs.models import Occurrence
from outbox.broker import BrokerUnavailable, describe

logger = logging.getLogger(__name__)

TASK_NAME = "jobs.run_occurrence"
# Seconds a batch of hand-overs waits for the broker's confirms (a broker under a resource alarm
# never sends them); the claims not confirmed are then released. A message that arrives after all
# is still judged by the row: one run.
CONFIRM_TIMEOUT = 10.0


class CeleryExecutor:
    """Hands claimed occurrences to Celery workers through RabbitMQ; runs nothing itself.

    Until a worker takes one over, a handed-over occurrence stays claimed by this scheduler's
    session (status running), and this scheduler renews its lease (running_ids). At most
    max_in_flight of them wait at a time, so a stopped worker fleet does not make a scheduler
    claim everything that falls due. A publish the broker does not confirm releases the claim
    (back to scheduled, the attempt not counted) and pauses handing over with a backoff: the
    occurrence is handed over when the broker is back. A scheduled instant whose first hand-over
    comes later than the misfire grace after it (the broker was down that long, or no worker
    took anything over) is judged by its job's misfire policy, as planning judges the instants
    no scheduler was up for: recorded missed, or handed over late (misfired()).
    """

    def __init__(
        self,
        *,
        session,
        definition_of: Callable[[int | None], Definition | None],
        queue: str,
        max_in_flight: int,
        hard_limit_margin: int,
        grace: timedelta | None = None,
        app=celery_app,
    ):
        self.session = session
        self.grace = grace if grace is not None else timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_SECONDS)
        self.definition_of = definition_of
        self.queues = dict(zip((False, True), job_queues(queue), strict=True))
        self.max_in_flight = max_in_flight
        self.hard_limit_margin = hard_limit_margin
        self.app = app
        self._backoff = backoffs.handover()
        self._paused_until = 0.0  # time.monotonic(): no hand-over before this, after a failed publish
        self._left: list[int] | None = None  # after shutdown(): the claims it could not give back
        self.publisher = ConfirmedPublisher(app, TASK_NAME, timeout=CONFIRM_TIMEOUT)

    @property
    def capacity(self) -> int:
        """At most max_in_flight hand-overs wait at a time."""
        return self.max_in_flight

    def free(self, long_running: bool) -> int:
        if time.monotonic() < self._paused_until:
            return 0
        return max(self.max_in_flight - len(self.running_ids()), 0)

    @property
    def idle(self) -> bool:
        return True  # nothing runs in this process

    def running_ids(self) -> list[int]:
        """The occurrences handed over by this session that no worker has taken over yet."""
        if self._left is not None:
            return self._left
        return list(
            Occurrence.objects.filter(status=Occurrence.Status.RUNNING, session=self.session).values_list(
                "id", flat=True
            )
        )

    def wait(self, timeout: float) -> bool:
        return True

    def stop_cancelled(self, now) -> None:
        """The hand-overs no worker took over yet whose cancel was asked: revoke each message, record the cancel.

        A worker that gets the message all the same finds the claim gone (take_over) and runs nothing.
        """
        requested = Occurrence.objects.filter(status=Occurrence.Status.RUNNING, session=self.session).exclude(
            cancel_requested_at=None
        )
        for occurrence in requested:
            revoke(self.app, self.task_id(occurrence))
            try:
                with transaction.atomic():
                    store.record_cancel(occurrence, session=self.session, started_at=occurrence.started_at, now=now)
            except LeaseLost:
                continue  # a worker took it over meanwhile: its LeaseKeeper stops it
            observer.event(occurrence, "occurrence_skipped", reason=occurrence.reason, status="skipped")

    def submit_all(self, occurrences: list[Occurrence], run=None, *, long_running: bool) -> None:
        """Publish the claims to the workers, releasing those the broker does not confirm."""
        occurrences = [occurrence for occurrence in occurrences if not self.misfired(occurrence)]
        if not occurrences:
            return
        if time.monotonic() < self._paused_until:
            for occurrence in occurrences:
                self._release(occurrence, "released: the broker was unavailable; it is handed over when it returns")
            return
        messages = [self.message(occurrence, long_running=long_running) for occurrence in occurrences]
        errors = self.publisher.publish_all(messages)
        failed = [(occurrence, error) for occurrence, error in zip(occurrences, errors, strict=True) if error]
        if failed:
            delay = self._backoff.next()
            self._paused_until = time.monotonic() + delay
            logger.error(
                "handing %d of %d occurrences over to Celery failed: %s; retrying in %.0f s",
                len(failed),
                len(occurrences),
                failed[0][1],
                delay,
                extra={"action": "handover_failed", "count": len(failed), "error": failed[0][1], "retry_in": delay},
            )
        else:
            self._backoff.reset()
        for occurrence, error in zip(occurrences, errors, strict=True):
            if error:
                self._release(
                    occurrence, f"released: the broker did not take it ({error}); it is handed over when it returns"
                )
                continue
            observer.event(occurrence, "occurrence_handed_over", detail="to Celery")

    def misfired(self, occurrence: Occurrence) -> bool:
        """Record a claimed instant missed if its misfire policy says so (True), rather than hand it over late.

        Only a scheduled instant's first attempt (never a manual or one-off run: it runs however
        late), claimed (started_at) more than the grace after its due time. The rule is
        planning's (apply_misfire_policy), given the instant and the next one of its definition
        already planned: skip misses every late instant, run_once all but the latest (and that
        one too if a later instant is on time), run_all none.
        """
        if occurrence.manual or occurrence.one_off or occurrence.attempts != 1:
            return False
        now, due = occurrence.started_at, occurrence.scheduled_for
        if now - due <= self.grace:
            return False
        definition = self.definition_of(occurrence.task_id)
        policy = definition.policy if definition else Policy()
        later = (
            Occurrence.objects.filter(task_id=occurrence.task_id, manual=False, scheduled_for__gt=due)
            .order_by("scheduled_for")
            .values_list("scheduled_for", flat=True)
            .first()
        )
        instants = [due] if later is None else [due, later]
        verdict = apply_misfire_policy(instants, more_left=False, now=now, grace=self.grace, policy=policy.misfire)[0]
        if not verdict.missed:
            return False
        late = (now - due).total_seconds()
        reason = (
            f"missed: not handed over to Celery until {now.isoformat()}, {late:.0f} s after its due time "
            f"(the broker or the workers were unavailable; misfire policy {policy.misfire})"
        )
        try:
            with transaction.atomic():
                store.miss(occurrence, session=self.session, now=now, reason=reason)
        except LeaseLost:
            return True  # reaped meanwhile: whoever holds it now decides
        observer.event(occurrence, "occurrence_missed", error=reason, status="missed", level=logging.WARNING)
        return True

    def message(self, occurrence: Occurrence, *, long_running: bool) -> dict:
        """send_task's arguments for this claim: one persistent message to its queue."""
        definition = definition_for(occurrence, self.definition_of)
        timeout = definition.policy.timeout if definition else None
        limits = {}
        if timeout:
            limits = {"soft_time_limit": timeout, "time_limit": timeout + self.hard_limit_margin}
        return dict(
            args=[occurrence.id, str(self.session), occurrence.attempts],
            task_id=self.task_id(occurrence),
            queue=self.queues[long_running],
            priority=min(int(occurrence.priority), Priority.HIGH),
            **limits,
        )

    def task_id(self, occurrence: Occurrence) -> str:
        """The Celery task id of this session's hand-over of the occurrence's current attempt."""
        return f"occurrence-{occurrence.id}-{occurrence.attempts}-{self.session}"

    def shutdown(self) -> None:
        """Give back the claims no worker took over: another scheduler hands them over again."""
        self.publisher.close()
        left = []
        try:
            left = self.running_ids()
            for occurrence in Occurrence.objects.filter(id__in=left):
                self._release(occurrence, "released: its scheduler stopped before a worker took it over")
                left.remove(occurrence.id)
        except DatabaseError:
            connection.close()  # their leases expire; another scheduler reaps and retries them
        self._left = left

    def _release(self, occurrence: Occurrence, reason: str) -> None:
        try:
            with transaction.atomic():
                store.release(occurrence, session=self.session, reason=reason)
        except LeaseLost:
            return  # a worker took it over meanwhile: its message had reached the broker
        observer.event(occurrence, "occurrence_released", error=reason, status="scheduled", level=logging.WARNING)


def revoke(app, task_id: str) -> None:
    """Ask every worker to drop the task and terminate the process that runs it (SIGTERM), if one does.

    The occurrence's row, not this message, decides: a revoke lost with a broker away leaves a run
    that finds its claim cancelled when it returns. A broadcast, answered by no one.
    """
    try:
        app.control.revoke(task_id, terminate=True)
    except Exception as exc:  # the broker is away: the row still decides
        logger.warning("revoking task %s failed: %s", task_id, one_line(exc), extra={"error": one_line(exc)})


class ConfirmedPublisher:
    """Sends a batch of Celery task messages, then waits once for the broker's confirms of all of them.

    Celery's own publishing (confirm_publish) waits for each confirm before the next message:
    a round trip per hand-over. Here the messages go out back to back on a channel of a
    connection of its own in confirm mode, and the acks (or nacks) come back together. The
    connection has no heartbeat (it idles between instants; a dead one fails the next batch,
    whose claims are released) and is opened again after any failure.

    Each message is the one app.send_task would send (Celery's as_task_v2 and send_task_message),
    without what send_task redoes per call and a hand-over does not need (its routing, looked
    up once per queue here; its queue declaration, once per connection; the result object):
    about 60 % of its CPU per message.
    """

    def __init__(self, app, task_name: str, *, timeout: float):
        self.app, self.task_name, self.timeout = app, task_name, timeout
        self._connection = None
        self._producer = None
        self._sent = 0  # delivery tags this channel gave so far (confirm mode numbers publishes from 1)
        self._routes: dict[str, dict] = {}  # queue name -> send_task_message's routing options
        self._declared: set[str] = set()  # queues declared on this connection
        self._waiting: dict[int, int] = {}  # delivery tag -> index in the batch
        self._errors: list[str] = []
        self._origin = anon_nodename()  # the "origin" header as_task_v2 would compute per message

    def publish_all(self, messages: list[dict]) -> list[str]:
        """Send each message (args, task_id, queue, priority and the time limits, as send_task takes
        them); per message, "" if confirmed or the error."""
        self._errors = ["" for _ in messages]
        self._waiting = {}
        published = 0
        try:
            producer = self._open()
            for index, message in enumerate(messages):
                self._send(producer, **message)
                self._sent += 1
                self._waiting[self._sent] = index
                published += 1
            deadline = time.monotonic() + self.timeout
            while self._waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no confirm from the broker within {self.timeout:.0f} s")
                self._connection.drain_events(timeout=remaining)
        except Exception as exc:  # whatever kept the broker from confirming: these claims go back
            error = one_line(exc)
            for index in [*self._waiting.values(), *range(published, len(messages))]:
                self._errors[index] = error
            self.close()
        return self._errors

    def _send(self, producer, *, args, task_id, queue, priority, time_limit=None, soft_time_limit=None) -> None:
        amqp = self.app.amqp
        routed = self._routes.get(queue.name)
        if routed is None:
            routed = self._routes[queue.name] = amqp.router.route({"queue": queue}, self.task_name)
        task = amqp.as_task_v2(
            task_id,
            self.task_name,
            args=args,
            reply_to=self.app.thread_oid,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            ignore_result=None,  # as send_task leaves it
            # What as_task_v2 would otherwise work out per message (saferepr, anon_nodename: about
            # half of a hand-over's CPU, docs/benchmarks.md): the saferepr of three plain values is
            # their repr, and the origin is this process.
            argsrepr=repr(args),
            kwargsrepr="{}",
            origin=self._origin,
        )
        declare = [] if queue.name in self._declared else None  # None: Celery declares it
        amqp.send_task_message(
            producer, self.task_name, task, retry=False, declare=declare, priority=priority, **routed
        )
        self._declared.add(queue.name)

    def close(self) -> None:
        self._declared = set()
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # closing what already failed
                pass
        self._connection = self._producer = None

    def _open(self):
        if self._producer is None:
            connection = self.app.connection_for_write(heartbeat=0, transport_options={"confirm_publish": False})
            # One try: kombu's default retries after 2 s, and the scheduler's main thread would wait.
            try:
                channel = connection.ensure_connection(max_retries=0).channel()
            except Exception as exc:  # refused, a certificate refused, a login refused: the relay's words
                connection.release()
                where = f"{connection.hostname}:{connection.port}"
                raise BrokerUnavailable(f"cannot reach the broker at {where} (RABBITMQ_URL): {describe(exc)}") from exc
            channel.confirm_select()
            channel.events["basic_ack"].add(self._acked)
            channel.events["basic_nack"].add(self._nacked)
            self._connection, self._sent = connection, 0
            self._producer = self.app.amqp.Producer(channel)
        return self._producer

    def _acked(self, delivery_tag: int, multiple: bool) -> None:
        for tag in self._settled(delivery_tag, multiple):
            self._waiting.pop(tag)

    def _nacked(self, delivery_tag: int, multiple: bool) -> None:
        for tag in self._settled(delivery_tag, multiple):
            self._errors[self._waiting.pop(tag)] = "the broker refused the message (basic.nack)"

    def _settled(self, delivery_tag: int, multiple: bool) -> list[int]:
        if multiple:
            return [tag for tag in self._waiting if tag <= delivery_tag]
        return [delivery_tag] if delivery_tag in self._waiting else []
