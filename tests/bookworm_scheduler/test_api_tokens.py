"""API tokens (jobs.models.ApiToken, jobs.web.tokens): created by `manage.py apitoken` and on a user's page, shown
once, stored as a hash, sent as Authorization: Bearer; read-only ones never act; revoked and expired ones get 401;
unknown ones are throttled by django-axes as failed passwords are."""

import hashlib
import io
import re
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client

from jobs.models import ApiToken, Occurrence
from jobs.models.tokens import LAST_USED_EVERY_SECONDS
from tests.jobs.api_helpers import PASSWORD, basic, staff

pytestmark = pytest.mark.django_db

JOBS = "/tickerq/api/jobs/"
TRIGGER = "/tickerq/api/jobs/ResendErrorEmailJob/trigger"
TOKEN = re.compile(r"bws_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
RUNNER = ("django_celery_beat.view_periodictask", "jobs.run_job")


@pytest.fixture(autouse=True)
def access_settings(settings):
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    cache.clear()
    yield
    cache.clear()


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def create(*args: str) -> str:
    """`manage.py apitoken create ...`; the token it printed."""
    out = io.StringIO()
    call_command("apitoken", "create", *args, stdout=out)
    [token] = TOKEN.findall(out.getvalue())
    return token


def row_of(token: str) -> ApiToken:
    return ApiToken.objects.get(key=token[4:16])


# The command line.


def test_create_prints_the_token_once_and_stores_only_its_hash():
    staff(*RUNNER)
    token = create("script", "--name", "nightly report")

    row = row_of(token)
    assert (row.user.username, row.name, row.read_only, row.expires_at) == ("script", "nightly report", False, None)
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM jobs_apitoken")
        assert token not in repr(cursor.fetchall())
    listed = io.StringIO()
    call_command("apitoken", "list", stdout=listed)
    assert row.key in listed.getvalue() and "nightly report" in listed.getvalue()
    assert token not in listed.getvalue()


def test_create_refuses_an_unknown_or_non_staff_user():
    User.objects.create_user("reader", password=PASSWORD)
    with pytest.raises(CommandError, match="no such user: nobody"):
        call_command("apitoken", "create", "nobody")
    with pytest.raises(CommandError, match="reader is not an active staff user"):
        call_command("apitoken", "create", "reader")
    staff()
    with pytest.raises(CommandError, match="--expires is a number of days, at least 1, not 0"):
        call_command("apitoken", "create", "script", "--expires", "0")
    assert not ApiToken.objects.exists()


def test_create_and_revoke_are_in_the_audit_log():
    staff(*RUNNER)
    token = create("script", "--name", "ci", "--read-only", "--expires", "30")
    out = io.StringIO()
    call_command("apitoken", "revoke", row_of(token).key, stdout=out)

    row = row_of(token)
    assert row.revoked_at is not None
    assert out.getvalue().startswith(f"Revoked API token {row.key} (ci) of script.")
    entries = LogEntry.objects.filter(object_id=str(row.pk)).order_by("id")
    messages = [entry.get_change_message() for entry in entries]
    assert messages[0].startswith("Created API token from the command line by OS user ")
    assert messages[0].endswith(f"for script, read-only, expires {row.expires_at:%Y-%m-%d %H:%M} UTC")
    assert re.fullmatch(r"Revoked API token from the command line by OS user .+: of script", messages[1])
    with pytest.raises(CommandError, match=f"API token {row.key} was revoked already"):
        call_command("apitoken", "revoke", row.key)


# The API.


def test_a_token_reads_and_acts_with_its_users_permissions(client):
    staff(*RUNNER)
    token = create("script")

    assert client.get(JOBS, **bearer(token)).status_code == 200
    triggered = client.post(TRIGGER, **bearer(token))  # no CSRF token, no JSON: a browser never sends Bearer
    assert triggered.status_code == 201
    occurrence = Occurrence.objects.get(pk=triggered.json()["occurrence"])
    assert occurrence.triggered_by == "script"
    assert client.get("/tickerq/api/outbox/", **bearer(token)).json() == {
        "error": {"status": 403, "message": "Permission required: outbox.view_outboxmessage."}
    }


def test_a_read_only_token_reads_and_can_never_trigger_whatever_its_user_may_do(client):
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    token = create("root", "--read-only")

    assert client.get(JOBS, **bearer(token)).status_code == 200
    refused = client.post(TRIGGER, content_type="application/json", **bearer(token))
    assert refused.status_code == 403
    assert refused.json() == {
        "error": {"status": 403, "message": "This API token is read-only: it may read, never act."}
    }
    assert client.post("/tickerq/api/occurrences/1/cancel", **bearer(token)).status_code == 403
    assert client.post("/tickerq/api/jobs/test.echo/schedule", **bearer(token)).status_code == 403
    assert not Occurrence.objects.exists()


def test_a_revoked_token_gets_401(client):
    staff(*RUNNER)
    token = create("script")
    call_command("apitoken", "revoke", row_of(token).key, stdout=io.StringIO())

    response = client.get(JOBS, **bearer(token))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="BookWorm Scheduler"'
    assert response.json() == {"error": {"status": 401, "message": "This API token was revoked."}}


def test_an_expired_token_gets_401(client):
    staff(*RUNNER)
    token = create("script", "--expires", "1")
    row = row_of(token)
    ApiToken.objects.filter(pk=row.pk).update(
        created_at=row.created_at - timedelta(days=2), expires_at=row.created_at - timedelta(days=1)
    )

    response = client.get(JOBS, **bearer(token))
    assert response.status_code == 401
    assert response.json() == {"error": {"status": 401, "message": "This API token has expired."}}


def test_a_token_of_a_deactivated_or_demoted_user_is_refused(client):
    user = staff(*RUNNER)
    token = create("script")
    user.is_staff = False
    user.save()
    assert client.get(JOBS, **bearer(token)).status_code == 403
    user.is_active = False
    user.save()
    assert client.get(JOBS, **bearer(token)).json() == {
        "error": {"status": 401, "message": "This API token's user is inactive."}
    }


def test_every_use_records_the_last_used_time_at_most_once_a_minute(client):
    staff(*RUNNER)
    token = create("script")
    assert row_of(token).last_used_at is None

    client.get(JOBS, **bearer(token))
    first = row_of(token).last_used_at
    assert first is not None
    client.get(JOBS, **bearer(token))
    assert row_of(token).last_used_at == first  # within the minute: not written again
    ApiToken.objects.filter(pk=row_of(token).pk).update(
        last_used_at=first - timedelta(seconds=LAST_USED_EVERY_SECONDS + 1)
    )
    client.get(JOBS, **bearer(token))
    assert row_of(token).last_used_at > first


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer ", "bearer bws_000000000000_" + "A" * 43])
def test_an_unknown_or_malformed_token_gets_401(client, header):
    response = client.get(JOBS, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json() == {"error": {"status": 401, "message": "Unknown API token."}}


def test_unknown_tokens_lock_the_address_out_after_the_failure_limit_even_for_a_good_token(client):
    staff(*RUNNER)
    token = create("script")
    guess = token[:-4] + "AAAA"

    statuses = [client.get(JOBS, **bearer(guess)).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    locked = client.get(JOBS, **bearer(token))
    assert locked.status_code == 429
    assert locked["Retry-After"] == "900"
    assert locked.json()["error"]["message"] == ("Account locked: too many failed logins. Try again in 15 minutes.")
    # Another address is not locked; the lock lifts after the cool-off.
    assert client.get(JOBS, REMOTE_ADDR="198.51.100.7", **bearer(token)).status_code == 200
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    assert client.get(JOBS, **bearer(token)).status_code == 200


def test_the_lockout_of_unknown_tokens_is_lifted_by_axes_reset_username(client):
    staff(*RUNNER)
    token = create("script")
    for _ in range(5):
        client.get(JOBS, **bearer(token[:-4] + "AAAA"))
    assert client.get(JOBS, **bearer(token)).status_code == 429

    call_command("axes_reset_username", "(API token)", stdout=io.StringIO())
    assert client.get(JOBS, **bearer(token)).status_code == 200


def test_revoked_tokens_are_refused_without_counting_as_guesses(client):
    staff(*RUNNER)
    old, good = create("script"), create("script")
    call_command("apitoken", "revoke", row_of(old).key, stdout=io.StringIO())

    assert [client.get(JOBS, **bearer(old)).status_code for _ in range(6)] == [401] * 6
    assert client.get(JOBS, **bearer(good)).status_code == 200


def test_the_openapi_description_is_open_to_a_token(client):
    staff()
    token = create("script", "--read-only")
    assert client.get("/tickerq/api/openapi.json", **bearer(token)).status_code == 200
    assert client.get("/tickerq/api/openapi.json", **bearer("bws_x")).status_code == 401


def test_basic_credentials_still_work_beside_tokens(client):
    staff(*RUNNER)
    create("script")
    assert client.get(JOBS, **basic()).status_code == 200


# The user's page in the dashboard.


def test_a_user_page_creates_a_token_shown_once_lists_and_revokes_it():
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    owner = staff(*RUNNER)
    browser = Client()
    browser.force_login(User.objects.get(username="admin"))
    page = f"/tickerq/auth/user/{owner.pk}/change/"

    assert 'id="api-tokens"' in browser.get(page).content.decode()
    created = browser.post(
        f"/tickerq/auth/user/{owner.pk}/api-tokens/", {"name": "deploy hook", "read_only": "on", "expires_days": "7"}
    )
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    [token] = TOKEN.findall(created.content.decode())
    row = row_of(token)
    assert (row.user, row.name, row.read_only) == (owner, "deploy hook", True)
    assert row.expires_at - row.created_at == timedelta(days=7)

    listed = browser.get(page).content.decode()
    assert f'id="api-token-{row.key}"' in listed and "deploy hook" in listed
    assert token not in listed  # shown once
    assert Client().get(JOBS, **bearer(token)).status_code == 200

    revoked = browser.post(f"/tickerq/auth/user/{owner.pk}/api-tokens/{row.pk}/revoke/")
    assert revoked.status_code == 302
    assert row_of(token).revoked_at is not None
    assert Client().get(JOBS, **bearer(token)).status_code == 401
    messages = [e.get_change_message() for e in LogEntry.objects.filter(object_id=str(row.pk)).order_by("id")]
    expires = f"{row.expires_at:%Y-%m-%d %H:%M} UTC"
    assert messages == [f"Created API token: for script, read-only, expires {expires}", "Revoked API token: of script"]


def test_a_user_page_token_form_with_errors_creates_nothing():
    admin_user = User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    browser = Client()
    browser.force_login(admin_user)

    response = browser.post(f"/tickerq/auth/user/{admin_user.pk}/api-tokens/", {"name": "", "expires_days": "-3"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "This field is required." in page and "greater than or equal to 1" in page
    assert not ApiToken.objects.exists()


def test_only_who_may_change_users_sees_or_manages_tokens():
    owner = staff(*RUNNER)
    viewer = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_user"))
    browser = Client()
    browser.force_login(viewer)

    assert 'id="api-tokens"' not in browser.get(f"/tickerq/auth/user/{owner.pk}/change/").content.decode()
    assert browser.post(f"/tickerq/auth/user/{owner.pk}/api-tokens/", {"name": "x"}).status_code == 403
    assert browser.get(f"/tickerq/auth/user/{owner.pk}/api-tokens/").status_code == 405
    assert not ApiToken.objects.exists()
