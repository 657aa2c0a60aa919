"""Integration events and how they are named on the wire.

An event is a frozen dataclass whose fields become the camelCase body of the message.
Its message types are the URNs of its class and of every base class up to
IntegrationEvent, most derived first, as MassTransit lists them:
``urn:message:<Namespace>:<TypeName>``. The exchange of a type is ``<Namespace>:<TypeName>``.
An event's creation date is the database's time, the clock its outbox row is stamped by.
"""

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import ClassVar

import uuid6

from bookworm_scheduler.kernel.clock import default_clock


def utc_now() -> datetime:
    """Now by the database's clock (default_clock), in UTC: a new event's creation date."""
    return default_clock()


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def wire_value(value):
    """A field value as System.Text.Json reads it: GUIDs as strings, UTC instants with Z."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@dataclasses.dataclass(frozen=True)
class IntegrationEvent:
    """BookWorm.Chassis.EventBus.IntegrationEvent: a v7 GUID id and a UTC creation date."""

    message_namespace: ClassVar[str] = "BookWorm.Chassis.EventBus"

    id: uuid.UUID = dataclasses.field(default_factory=uuid6.uuid7)
    creation_date: datetime = dataclasses.field(default_factory=utc_now)

    @classmethod
    def message_type_names(cls) -> list[str]:
        """``Namespace:TypeName`` of this type and its event base types, most derived first."""
        return [
            f"{klass.message_namespace}:{klass.__qualname__.replace('.', '+')}"
            for klass in cls.__mro__
            if isinstance(klass, type) and issubclass(klass, IntegrationEvent)
        ]

    @classmethod
    def message_types(cls) -> list[str]:
        return [f"urn:message:{name}" for name in cls.message_type_names()]

    @classmethod
    def exchange(cls) -> str:
        return cls.message_type_names()[0]

    def to_message(self) -> dict:
        return {camel_case(f.name): wire_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
