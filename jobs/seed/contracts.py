"""The integration events of BookWorm.Contracts that the seed jobs publish."""

import dataclasses

from outbox.events import IntegrationEvent


@dataclasses.dataclass(frozen=True)
class CleanUpSentEmailIntegrationEvent(IntegrationEvent):
    message_namespace = "BookWorm.Contracts"


@dataclasses.dataclass(frozen=True)
class ResendErrorEmailIntegrationEvent(IntegrationEvent):
    message_namespace = "BookWorm.Contracts"
