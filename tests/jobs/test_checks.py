"""The scheduler's start-up checks (jobs.checks)."""

import pytest

from jobs.checks import check_scheduler_settings

pytestmark = pytest.mark.unit


def test_a_lease_under_3_s_is_an_error(settings):
    settings.SCHEDULER_LEASE_SECONDS, settings.ALERT_TIMEOUT_SECONDS = 2, 0.1

    assert [check.id for check in check_scheduler_settings(None)] == ["jobs.E001"]


def test_an_alert_timeout_that_reaches_the_idle_transaction_bound_on_both_channels_is_a_warning(settings):
    settings.SCHEDULER_LEASE_SECONDS, settings.ALERT_TIMEOUT_SECONDS = 30, 10.0
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], "https://hooks.example.com/x"

    [warning] = check_scheduler_settings(None)

    assert warning.id == "jobs.W001"
    assert "(10) on 2 alert channel(s)" in warning.msg and "(20 s," in warning.msg


def test_the_default_alert_timeout_and_lease_pass_and_so_does_any_timeout_without_a_channel(settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], "https://hooks.example.com/x"
    settings.SCHEDULER_LEASE_SECONDS, settings.ALERT_TIMEOUT_SECONDS = 30, 5.0
    assert check_scheduler_settings(None) == []

    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], ""
    settings.SCHEDULER_LEASE_SECONDS, settings.ALERT_TIMEOUT_SECONDS = 6, 5.0
    assert check_scheduler_settings(None) == []
