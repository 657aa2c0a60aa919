"""One RabbitMQ connection that publishes batches with a window of asynchronous confirms.

pika's BlockingChannel waits for each confirm in basic_publish, one round trip per message.
Here a SelectConnection's I/O loop is stepped by hand instead: the messages of a batch are
written as the caller produces them, confirms are taken in between, and at the end the loop runs
until the broker has acked, nacked or returned every message. The caller stays synchronous; a
caller whose batch spans several database transactions (outbox.relay_pass) can wait, while it
produces the batch, for the broker's answer to its earlier messages (await_outcomes) and read
it from the outcome in progress.

The frames of the messages written between two turns of the loop go to the socket in one
piece (CoalescingConnection), where pika would send each frame with a system call of its own.

Publishes use MassTransit's publish topology: a durable fanout exchange per message type, each
derived type's exchange bound to its base type's, declared once per connection. They are
mandatory, so a message that no queue receives comes back as a return instead of vanishing.
"""

import itertools
import logging
import re
import ssl
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika import frame
from pika.adapters.select_connection import SelectConnection

from bookworm_scheduler.kernel.errors import one_line
from outbox import relay_metrics as metrics

logger = logging.getLogger(__name__)

# How many messages are written between two non-blocking turns of the I/O loop: the socket
# drains and confirms come in while the rest of the batch is serialised.
PUMP_EVERY = 128
# The most messages unconfirmed at once: a sliding window, as publishers with asynchronous
# confirms keep. Enough to keep the broker busy while the relay's database work for a batch
# takes its turn, little enough that a lost connection leaves few messages to send again.
WINDOW = 1000


class CoalescingConnection(SelectConnection):
    """A SelectConnection that writes the messages published between two turns of its I/O loop at once.

    pika hands every frame of a message (method, header, body) to its transport as a chunk of
    its own, and the transport sends each with a send() of its own: three system calls per
    message, more of the publisher's CPU than anything else it does per message. Here the frames
    of published messages are held and handed over joined, as one chunk, by flush(): the Broker
    calls it before every turn of the loop, and any other frame (a heartbeat, a channel method)
    flushes what is held before it, so the bytes on the wire are pika's, in pika's order. The
    Basic.Publish frame, the same for every message to one exchange, is marshaled once per
    channel and exchange.

    It overrides two of pika's internal methods, _send_message and _output_marshaled_frames
    (pika is pinned in requirements.txt); the tests in tests/outbox/test_broker.py fail if a
    new pika stops calling them as 1.4 does.
    """

    def __init__(self, *args, **kwargs):
        self._held: list[bytes] = []
        self._publish_frames: dict[tuple, bytes] = {}
        super().__init__(*args, **kwargs)

    def flush(self) -> None:
        """Hand the frames held to the transport, in one chunk."""
        if self._held:
            held, self._held = self._held, []
            data = b"".join(held)
            self.bytes_sent += len(data)
            self.frames_sent += len(held)
            self._adapter_emit_data(data)

    def _send_message(self, channel_number, method_frame, content) -> None:
        properties, body = content
        key = (
            channel_number,
            method_frame.exchange,
            method_frame.routing_key,
            method_frame.mandatory,
            method_frame.immediate,
        )
        publish = self._publish_frames.get(key)
        if publish is None:
            publish = self._publish_frames[key] = frame.Method(channel_number, method_frame).marshal()
        held = self._held
        held.append(publish)
        held.append(frame.Header(channel_number, len(body), properties).marshal())
        step = self._body_max_length
        for start in range(0, len(body), step):
            held.append(frame.Body(channel_number, body[start : start + step]).marshal())

    def _output_marshaled_frames(self, marshaled_frames) -> None:
        self.flush()
        super()._output_marshaled_frames(marshaled_frames)


class BrokerUnavailable(Exception):
    """The broker could not be reached, or the connection was lost or stalled."""


def connection_parameters(url: str, *, blocked_timeout: float) -> pika.URLParameters:
    """pika parameters for url; amqps:// verifies the broker's certificate against its host name."""
    parameters = pika.URLParameters(url)
    if parameters.ssl_options is not None and parameters.ssl_options.server_hostname is None:
        parameters.ssl_options = pika.SSLOptions(parameters.ssl_options.context, parameters.host)
    # A broker under a resource alarm blocks publishers; give up on the connection after this
    # long rather than hold the batch's row locks forever.
    parameters.blocked_connection_timeout = blocked_timeout
    parameters.connection_attempts = 1
    return parameters


@dataclass(slots=True)
class Outgoing:
    """One message to publish. key is the caller's handle for it, echoed in the Outcome."""

    key: Any
    exchanges: tuple[str, ...]  # the publish exchange first, then its base types' exchanges
    body: bytes
    properties: pika.BasicProperties


@dataclass
class Outcome:
    """What became of a batch. A message in none of the three has no outcome (lost is set)."""

    delivered: list = field(default_factory=list)
    unroutable: dict = field(default_factory=dict)  # key -> the broker's reply
    failed: dict = field(default_factory=dict)  # key -> error, for a retry
    lost: BrokerUnavailable | None = None


def describe(error: BaseException) -> str:
    """The error worth reading: pika wraps a refused socket three exceptions deep; an SSL error by its reason."""
    while True:
        if getattr(error, "exceptions", None):  # AMQPConnectionWorkflowFailed
            error = error.exceptions[-1]
        elif isinstance(getattr(error, "exception", None), BaseException):  # AMQPConnector...Error
            error = error.exception
        elif error.args and isinstance(error.args[0], BaseException):  # AMQPConnectionError
            error = error.args[0]
        elif isinstance(error, ssl.SSLError):
            return f"{type(error).__name__}: {tls_reason(error)}"
        elif isinstance(error.__cause__, ssl.SSLError):  # kombu's OperationalError, raised from it
            error = error.__cause__
        else:
            return one_line(error)


def tls_reason(error: ssl.SSLError) -> str:
    """An SSL error's words without OpenSSL's code and Python's source line; a plain-text server named as such.

    '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate
    (_ssl.c:1006)' becomes 'certificate verify failed: unable to get local issuer certificate'. A server
    that answers TLS in plain AMQP makes OpenSSL read a record of a "wrong version number".
    """
    if error.reason == "WRONG_VERSION_NUMBER":
        return "wrong version number: the server does not speak TLS on this port"
    text = str(error.args[1] if len(error.args) > 1 else error)
    return re.sub(r"^\[SSL: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$", "", text)


class Broker:
    """A publisher-confirms channel on one connection; connect() again after it is lost."""

    def __init__(self, parameters: pika.ConnectionParameters, *, confirm_timeout: float, window: int = WINDOW):
        self.parameters = parameters
        self.confirm_timeout = confirm_timeout
        self.window = window
        self._connection: SelectConnection | None = None
        self._lost: BaseException | None = None
        self._channel = None
        self._channel_error: BaseException | None = None
        self._declared: set = set()
        self._next_tag = 1
        self._unconfirmed: dict[int, Outgoing] = {}
        self._returned: dict[str, list[str]] = defaultdict(list)
        self._outcome: Outcome | None = None

    @property
    def is_open(self) -> bool:
        return self._connection is not None and self._lost is None and self._channel is not None

    @property
    def endpoint(self) -> str:
        return f"{self.parameters.host}:{self.parameters.port}"

    def connect(self) -> None:
        """Open the connection and a confirm-mode channel, or raise BrokerUnavailable."""
        self.close()
        opened: list = []
        self._lost = None
        self._declared = set()
        self._connection = CoalescingConnection(
            self.parameters,
            on_open_callback=lambda connection: opened.append(True),
            on_open_error_callback=self._on_connection_closed,
            on_close_callback=self._on_connection_closed,
        )
        # IOLoop.start() would do this; the loop is stepped by _run_until instead.
        self._connection.ioloop.activate_poller()
        timeout = (self.parameters.socket_timeout or 10) + (self.parameters.stack_timeout or 15)
        self._run_until(lambda: opened or self._lost, timeout)
        if not opened:
            error = self._lost or TimeoutError(f"no answer within {timeout:.0f}s")
            self.close()
            raise BrokerUnavailable(f"cannot reach the broker at {self.endpoint} (RABBITMQ_URL): {describe(error)}")
        self._open_channel()
        metrics.BROKER_CONNECTED.set(1)

    def close(self) -> None:
        """Close the connection, if any, and release its I/O loop."""
        connection, self._connection, self._channel = self._connection, None, None
        metrics.BROKER_CONNECTED.set(0)
        if connection is None:
            return
        if connection.is_open:
            connection.close()
            expired: list = []
            timer = connection.ioloop.call_later(2, lambda: expired.append(True))
            while not connection.is_closed and not expired:
                connection.ioloop.poll()
                connection.ioloop.process_timeouts()
            connection.ioloop.remove_timeout(timer)
        connection.ioloop.close()

    @property
    def outcome(self) -> Outcome | None:
        """The outcome of the publish_batch in progress, filled in as the broker answers."""
        return self._outcome

    def await_outcomes(self, done: Callable[[], Any]) -> None:
        """Run the I/O loop until done(), from within the batch publish_batch is reading.

        Messages of a channel the broker closed fail then, as at the end of a batch. Raises
        BrokerUnavailable if the connection is lost or no answer comes within confirm_timeout.
        """
        while not done():
            channel = self._channel
            self._run_until(
                lambda channel=channel: done() or self._channel is not channel or self._lost, self.confirm_timeout
            )
            self._raise_if_lost()
            if self._channel is not channel:
                self._open_channel()
            elif not done():
                raise self._stalled()

    def service(self, seconds: float) -> bool:
        """Process I/O (heartbeats) for up to seconds; False if the connection is gone."""
        if not self.is_open:
            return False
        self._run_until(lambda: self._lost, seconds)
        return self.is_open

    def publish_batch(self, batch: Iterable[Outgoing]) -> Outcome:
        """Publish batch in order and wait for the broker's verdict on every message.

        batch may be a generator: each message goes out as soon as it is produced (and fewer
        than window are unconfirmed), so the broker stores and confirms the first ones while the
        caller is still reading the rest.

        A message is delivered when the broker acked it, unroutable when it was returned then
        acked, failed when it was nacked, its channel closed before the ack, or its exchanges
        could not be declared. If the connection is lost or confirms stall for
        confirm_timeout, outcome.lost is set and the rest of the batch has no outcome.
        """
        outcome = self._outcome = Outcome()
        try:
            self._publish(batch, outcome)
        except BrokerUnavailable as error:
            outcome.lost = error
            self.close()
        finally:
            self._outcome = None
            self._unconfirmed = {}
            self._returned.clear()
        return outcome

    def _publish(self, batch: Iterable[Outgoing], outcome: Outcome) -> None:
        chain_errors: dict[tuple, str | None] = {}
        written = 0  # since the last count in metrics.PUBLISHED
        for index, message in enumerate(batch):
            chain = message.exchanges
            if chain not in chain_errors:
                chain_errors[chain] = self._declare_chain(chain)
            if chain_errors[chain] is not None:
                outcome.failed[message.key] = chain_errors[chain]
                continue
            if len(self._unconfirmed) >= self.window:
                self._await_room()
            if self._channel is None:
                # The broker closed the channel (its unconfirmed messages failed): go on in a new one.
                self._open_channel()
            self._unconfirmed[self._next_tag] = message
            self._next_tag += 1
            try:
                self._channel.basic_publish(message.exchanges[0], "", message.body, message.properties, mandatory=True)
            except pika.exceptions.AMQPError as error:
                raise BrokerUnavailable(describe(error)) from error
            written += 1
            if index % PUMP_EVERY == PUMP_EVERY - 1:
                metrics.PUBLISHED.inc(written)
                written = 0
                self._run_until(lambda: self._lost, 0)
                self._raise_if_lost()
        metrics.PUBLISHED.inc(written)
        self._await_confirms()

    def _await_confirms(self) -> None:
        """Wait until every message published on the channel is confirmed (or has failed)."""
        channel = self._channel
        self._run_until(
            lambda: not self._unconfirmed or self._channel is not channel or self._lost, self.confirm_timeout
        )
        self._raise_if_lost()
        if self._channel is not channel:
            self._open_channel()
        elif self._unconfirmed:
            raise self._stalled()

    def _await_room(self) -> None:
        """Wait until fewer than window messages are unconfirmed, or the channel has closed."""
        channel = self._channel
        self._run_until(
            lambda: len(self._unconfirmed) < self.window or self._channel is not channel or self._lost,
            self.confirm_timeout,
        )
        self._raise_if_lost()
        if self._channel is channel and len(self._unconfirmed) >= self.window:
            raise self._stalled()

    # Topology.

    def _declare_chain(self, chain: tuple[str, ...]) -> str | None:
        """Declare the fanout exchanges of chain, each bound to the next; the error, if any."""
        bindings = list(itertools.pairwise(chain))
        if all(name in self._declared for name in chain + tuple(bindings)):
            return None
        # A refused declaration closes the channel: first let what is in flight be confirmed.
        self._await_confirms()
        for name in chain:
            if name not in self._declared:
                error = self._rpc(
                    lambda done, name=name: self._channel.exchange_declare(
                        name, exchange_type="fanout", durable=True, callback=done
                    )
                )
                if error:
                    return f"declaring exchange {name!r}: {error}"
                self._declared.add(name)
        for source, destination in bindings:
            if (source, destination) not in self._declared:
                # MassTransit: messages published to the derived type's exchange flow on to the
                # exchange of its base type, where consumers of the base type are bound.
                error = self._rpc(
                    lambda done, s=source, d=destination: self._channel.exchange_bind(
                        destination=d, source=s, callback=done
                    )
                )
                if error:
                    return f"binding exchange {source!r} to {destination!r}: {error}"
                self._declared.add((source, destination))
        return None

    def _rpc(self, start: Callable[[Callable], None]) -> str | None:
        """Run one synchronous channel method; the broker's error if it closed the channel."""
        done: list = []
        channel = self._channel
        start(lambda frame: done.append(frame))
        self._run_until(lambda: done or self._channel is not channel or self._lost, self.confirm_timeout)
        self._raise_if_lost()
        if done:
            return None
        if self._channel is not channel:
            error = describe(self._channel_error)
            self._open_channel()
            return error
        raise self._stalled()

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if method.multiple:
            # Tags were added in order: the ones acked are a prefix, so stop at the first beyond.
            tags = list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, self._unconfirmed))
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self._unconfirmed else []
        acked = isinstance(method, pika.spec.Basic.Ack)
        for tag in tags:
            message = self._unconfirmed.pop(tag)
            returns = self._returned.get(message.properties.message_id)
            if not acked:
                self._outcome.failed[message.key] = "nacked by the broker"
            elif returns:
                self._outcome.unroutable[message.key] = returns.pop(0)
            else:
                self._outcome.delivered.append(message.key)

    def _on_return(self, channel, method, properties, body) -> None:
        # The broker sends basic.return before the basic.ack of the same message.
        self._returned[properties.message_id].append(f"{method.reply_code} {method.reply_text}")

    # Connection and channel.

    def _open_channel(self) -> None:
        """Open a confirm-mode channel; unconfirmed messages of a closed one have failed."""
        if self._outcome is not None:
            for message in self._unconfirmed.values():
                self._outcome.failed[message.key] = describe(self._channel_error)
        self._unconfirmed = {}
        self._channel = None
        opened: list = []
        self._connection.channel(on_open_callback=opened.append)
        self._run_until(lambda: opened or self._lost, self.confirm_timeout)
        self._raise_if_lost()
        if not opened:
            raise self._stalled()
        channel = opened[0]
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        selected: list = []
        channel.confirm_delivery(self._on_confirm, callback=selected.append)
        self._run_until(lambda: selected or self._lost, self.confirm_timeout)
        self._raise_if_lost()
        if not selected:
            raise self._stalled()
        self._channel = channel
        self._next_tag = 1

    def _on_channel_closed(self, channel, reason) -> None:
        if channel is self._channel:
            logger.warning(
                "broker closed the channel: %s",
                describe(reason),
                extra={"action": "outbox_channel_closed", "error": describe(reason)},
            )
            self._channel_error = reason
            self._channel = None

    def _on_connection_closed(self, connection, reason) -> None:
        if connection is self._connection:
            self._lost = reason
            metrics.BROKER_CONNECTED.set(0)

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise BrokerUnavailable(f"lost the connection to {self.endpoint}: {describe(self._lost)}")

    def _stalled(self) -> BrokerUnavailable:
        return BrokerUnavailable(f"no answer from {self.endpoint} within {self.confirm_timeout:g}s")

    def _run_until(self, done: Callable[[], Any], seconds: float) -> None:
        """Step the I/O loop until done() is true or seconds have passed (0: one turn)."""
        ioloop = self._connection.ioloop
        expired: list = []
        timer = ioloop.call_later(seconds, lambda: expired.append(True))
        try:
            while not done() and not expired:
                self._connection.flush()
                ioloop.poll()
                ioloop.process_timeouts()
        finally:
            ioloop.remove_timeout(timer)
