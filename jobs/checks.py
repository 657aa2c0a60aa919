"""System checks for misconfiguration that can be seen at start-up."""

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def check_scheduler_settings(app_configs, **kwargs):
    errors = []
    heartbeat = settings.SCHEDULER_LEASE_SECONDS / 3
    if heartbeat < 1:
        errors.append(
            checks.Error(
                "SCHEDULER_LEASE_SECONDS must be at least 3: leases are renewed every third of it.",
                id="jobs.E001",
            )
        )
    return errors
