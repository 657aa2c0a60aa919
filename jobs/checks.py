"""System checks for misconfiguration that can be seen at start-up."""

from datetime import timedelta

from django.conf import settings
from django.core import checks

from bookworm_scheduler.kernel.liveness import scheduler_liveness
from jobs.models import Alert


@checks.register(checks.Tags.compatibility)
def check_scheduler_settings(app_configs, **kwargs):
    errors = []
    if scheduler_liveness().renew_every < timedelta(seconds=1):
        errors.append(
            checks.Error(
                "SCHEDULER_LEASE_SECONDS must be at least 3: leases are renewed every third of it.",
                id="jobs.E001",
            )
        )
    # An alert is sent inside the transaction that locks it (jobs.alerts.delivery.send_due_alerts),
    # on each channel configured: a slow send must not outlast the bound on an idle transaction.
    bound = scheduler_liveness().idle_in_transaction.total_seconds()
    channels = sum(Alert.configured().values())
    if channels and channels * settings.ALERT_TIMEOUT_SECONDS >= bound:
        errors.append(
            checks.Warning(
                f"ALERT_TIMEOUT_SECONDS ({settings.ALERT_TIMEOUT_SECONDS:g}) on {channels} alert channel(s) reaches "
                f"the scheduler's bound on an idle transaction ({bound:g} s, two thirds of SCHEDULER_LEASE_SECONDS): "
                "an alert whose channels time out has its transaction ended by the database and is sent again.",
                hint="Lower ALERT_TIMEOUT_SECONDS below a third of SCHEDULER_LEASE_SECONDS, or raise the lease.",
                id="jobs.W001",
            )
        )
    return errors
