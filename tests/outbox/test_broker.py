"""The Broker's writes: the frames of the messages published between two turns of its loop go out at once."""

import pika
import pytest
from django.conf import settings

from outbox.broker import Broker, Outgoing, connection_parameters
from tests.jobs.helpers import wait_for


@pytest.fixture
def broker():
    broker = Broker(connection_parameters(settings.RABBITMQ_URL, blocked_timeout=10), confirm_timeout=10)
    broker.connect()
    yield broker
    broker.close()


def outgoing(exchange: str, number: int, body: bytes) -> Outgoing:
    properties = pika.BasicProperties(message_id=f"message-{number}", delivery_mode=2, headers={"n": number})
    return Outgoing(key=number, exchanges=(exchange,), body=body, properties=properties)


def received(rabbit, queue: str) -> list[tuple[str, dict, bytes]]:
    """(message id, headers, body) of every message now in queue, the bodies as they arrived."""
    return [(p.message_id, p.headers, body) for p, body in rabbit.drain(queue, decode=bytes)]


def count_writes(connection) -> list[int]:
    """The size of each piece of data the connection hands to its transport from now on."""
    writes = []
    emit = connection._adapter_emit_data

    def counted(data):
        writes.append(len(data))
        emit(data)

    connection._adapter_emit_data = counted
    return writes


def test_a_batch_goes_out_in_a_few_writes_and_arrives_byte_for_byte(rabbit, broker, event_type):
    queue = rabbit.bind_queue(event_type.exchange())
    exchange = event_type.exchange()
    assert broker.publish_batch([outgoing(exchange, 0, b"first")]).delivered == [0]  # declares the exchange
    rabbit.channel.queue_purge(queue)
    # A body larger than the negotiated frame size goes out in several body frames.
    bodies = [f"body {number}".encode() * (number + 1) for number in range(300)] + [b"x" * 300_000, b""]
    writes = count_writes(broker._connection)
    frames_before = broker._connection.frames_sent

    outcome = broker.publish_batch([outgoing(exchange, number, body) for number, body in enumerate(bodies, 1)])

    assert sorted(outcome.delivered) == list(range(1, 303))  # the broker may confirm out of order
    # Three frames a message (method, header, body), two for the empty body, five for the large one
    # (frame_max 131,072): 907 frames, written in one piece per turn of the loop, every 128 messages.
    assert broker._connection.frames_sent - frames_before == 907
    assert len(writes) <= 4
    messages = received(rabbit, queue)
    assert [message_id for message_id, _, _ in messages] == [f"message-{number}" for number in range(1, 303)]
    assert [body for _, _, body in messages] == bodies
    assert [headers for _, headers, _ in messages][-1] == {"n": 302}


def test_messages_held_go_out_before_the_frame_that_closes_their_channel(rabbit, broker, event_type):
    queue = rabbit.bind_queue(event_type.exchange())
    broker.publish_batch([outgoing(event_type.exchange(), 0, b"first")])
    rabbit.channel.queue_purge(queue)
    channel = broker._channel
    for number in range(1, 6):
        channel.basic_publish(event_type.exchange(), "", f"body {number}".encode(), pika.BasicProperties())

    channel.close()  # Channel.Close: the held messages are written first, as pika would have written them
    broker._run_until(lambda: broker._channel is None, 10)

    wait_for(lambda: rabbit.channel.queue_declare(queue, passive=True).method.message_count == 5)
    assert [body for _, _, body in received(rabbit, queue)] == [b"body 1", b"body 2", b"body 3", b"body 4", b"body 5"]
