"""The seed jobs of BookWorm's Scheduler service.

Each publishes its integration event through the outbox inside the run's transaction, so
the event exists if and only if the run committed. The Notification service does the work.
"""

from jobs.engine.policy import Priority
from jobs.engine.registry import JobContext, job
from jobs.seed.contracts import CleanUpSentEmailIntegrationEvent, ResendErrorEmailIntegrationEvent
from outbox.publishing import publish


@job("CleanUpSentEmailJob", cron="0 0 * * *", priority=Priority.NORMAL, retries=3, retry_intervals=(30, 60, 300))
def clean_up_sent_email(context: JobContext) -> None:
    """Ask the Notification service to clean up the emails it has sent."""
    publish(CleanUpSentEmailIntegrationEvent())


@job("ResendErrorEmailJob", cron="0 * * * *", priority=Priority.HIGH, retries=3, retry_intervals=(30, 60, 300))
def resend_error_email(context: JobContext) -> None:
    """Ask the Notification service to resend the emails that failed."""
    publish(ResendErrorEmailIntegrationEvent())
