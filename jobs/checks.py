"""System checks for misconfiguration that can be seen at start-up."""

from datetime import timedelta

from django.core import checks

from bookworm_scheduler.kernel.liveness import scheduler_liveness


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
    return errors
