import base64
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.test import Client
from django_celery_beat.models import PeriodicTask

pytestmark = pytest.mark.django_db

CHANGELISTS = [
    "/tickerq/jobs/occurrence/",
    "/tickerq/django_celery_beat/periodictask/",
    "/tickerq/outbox/outboxmessage/",
]
PASSWORD = "a-long-password"


class CountingHasher(MD5PasswordHasher):
    """A fast hasher that counts the passwords it checks."""

    verified = 0

    def verify(self, password, encoded):
        CountingHasher.verified += 1
        return super().verify(password, encoded)


@pytest.fixture(autouse=True)
def access_settings(settings):
    # The defaults, pinned here so the tests do not depend on the environment.
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    CountingHasher.verified = 0
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def superuser():
    return User.objects.create_superuser("admin", "admin@example.com", PASSWORD)


@pytest.fixture
def viewer():
    user = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label__in=["jobs", "django_celery_beat", "outbox"],
            codename__in=["view_occurrence", "view_periodictask", "view_outboxmessage"],
        )
    )
    return user


@pytest.fixture
def reader():
    """A valid user who is not staff."""
    return User.objects.create_user("reader", password=PASSWORD)


def basic(username, password):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def disable_action(task):
    return {"action": "disable", "_selected_action": [task.id], "index": "0"}


def form_login(client, username, password, **extra):
    return client.post("/tickerq/login/", {"username": username, "password": password}, **extra)


# Pages.


def test_the_root_redirects_to_the_dashboard(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/tickerq/"


@pytest.mark.parametrize("path", ["/tickerq/", *CHANGELISTS])
def test_an_anonymous_visitor_is_sent_to_the_login_page(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/tickerq/login/?next=")


def test_the_health_check_needs_no_login(client):
    response = client.get("/health/")
    assert response.status_code not in (301, 302, 401, 403)


def test_a_user_who_is_not_staff_gets_no_page(client, reader):
    client.force_login(reader)
    for path in ["/tickerq/", *CHANGELISTS]:
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/tickerq/login/")


def test_a_view_only_staff_user_reads_the_lists_but_changes_nothing(client, viewer):
    client.force_login(viewer)
    for path in CHANGELISTS:
        assert client.get(path).status_code == 200, path
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    page = client.post(f"/tickerq/django_celery_beat/periodictask/{task.id}/change/", {"name": "renamed"})
    assert page.status_code == 403
    client.post("/tickerq/django_celery_beat/periodictask/", disable_action(task))
    task.refresh_from_db()
    assert task.name == "ResendErrorEmailJob" and task.enabled


def test_a_superuser_reads_and_changes(client, superuser):
    client.force_login(superuser)
    for path in CHANGELISTS:
        assert client.get(path).status_code == 200, path
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    response = client.post("/tickerq/django_celery_beat/periodictask/", disable_action(task))
    assert response.status_code == 302
    task.refresh_from_db()
    assert not task.enabled


def test_the_login_form_logs_a_staff_user_in(client, superuser):
    response = form_login(client, "admin", PASSWORD)
    assert response.status_code == 302
    assert client.get("/tickerq/").status_code == 200


# HTTP Basic.


def test_basic_credentials_of_a_staff_user_open_the_dashboard(client, superuser):
    response = client.get("/tickerq/", **basic("admin", PASSWORD))
    assert response.status_code == 200
    assert CountingHasher.verified == 1


def test_a_basic_login_is_hashed_once_per_session(client, superuser):
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 200
    cache.clear()  # only the session cookie can spare the second hash
    assert client.get("/tickerq/jobs/occurrence/", **basic("admin", PASSWORD)).status_code == 200
    assert CountingHasher.verified == 1


def test_a_client_without_cookies_is_not_hashed_on_every_request(client, superuser):
    for _ in range(3):
        client.cookies.clear()
        assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 200
    assert CountingHasher.verified == 1


def test_a_changed_password_invalidates_a_remembered_basic_login(client, superuser):
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 200
    superuser.set_password("another-long-password")
    superuser.save()
    client.cookies.clear()
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 401


def test_a_remembered_basic_login_ends_when_the_user_loses_staff(client, superuser):
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 200
    User.objects.filter(pk=superuser.pk).update(is_staff=False)
    client.cookies.clear()
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 403


def test_wrong_basic_credentials_get_a_challenge(client, superuser):
    response = client.get("/tickerq/", **basic("admin", "wrong"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="BookWorm Scheduler", charset="UTF-8"'
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("header", ["Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()])
def test_malformed_basic_credentials_get_a_challenge(client, header):
    response = client.get("/tickerq/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401 and "WWW-Authenticate" in response


def test_basic_credentials_of_a_user_who_is_not_staff_are_forbidden(client, reader):
    response = client.get("/tickerq/", **basic("reader", PASSWORD))
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_basic_credentials_are_only_read_on_the_dashboard(client, superuser):
    assert client.get("/", **basic("admin", "wrong")).status_code == 302
    assert CountingHasher.verified == 0


def test_a_session_user_sending_its_own_name_is_not_hashed_again(client, superuser):
    client.force_login(superuser)
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 200
    assert CountingHasher.verified == 0


# Throttling.


def test_the_login_form_locks_after_the_failure_limit_with_a_message(client, superuser):
    for _ in range(5):
        form_login(client, "admin", "wrong")
    response = form_login(client, "admin", PASSWORD)
    assert response.status_code == 429
    page = " ".join(response.content.decode().split())
    assert 'id="lockout"' in page and "locked for 15 minutes" in page
    assert client.get("/tickerq/").status_code == 302


def test_the_form_lock_holds_one_username_from_one_address(client, superuser):
    for _ in range(5):
        form_login(client, "admin", "wrong")
    assert form_login(client, "admin", PASSWORD, REMOTE_ADDR="198.51.100.7").status_code == 302


def test_the_lock_lifts_after_the_cool_off(client, superuser):
    for _ in range(5):
        form_login(client, "admin", "wrong")
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    assert form_login(client, "admin", PASSWORD).status_code == 302


def test_basic_logins_lock_after_the_failure_limit_with_a_message(client, superuser):
    statuses = [client.get("/tickerq/", **basic("admin", "wrong")).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]
    hashed = CountingHasher.verified
    response = client.get("/tickerq/", **basic("admin", PASSWORD))
    assert response.status_code == 429
    assert response.content.decode() == "Account locked: too many failed logins. Try again in 15 minutes.\n"
    assert response["Retry-After"] == "900"
    assert CountingHasher.verified == hashed  # refused before hashing


def test_form_and_basic_failures_count_together(client, superuser):
    for _ in range(3):
        form_login(client, "admin", "wrong")
    for _ in range(2):
        client.get("/tickerq/", **basic("admin", "wrong"))
    assert client.get("/tickerq/", **basic("admin", PASSWORD)).status_code == 429


# CSRF.


def test_an_admin_action_without_the_csrf_token_is_refused(superuser):
    client = Client(enforce_csrf_checks=True)
    client.force_login(superuser)
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    response = client.post("/tickerq/django_celery_beat/periodictask/", disable_action(task))
    assert response.status_code == 403
    task.refresh_from_db()
    assert task.enabled


def test_basic_credentials_do_not_exempt_an_admin_action_from_csrf(superuser):
    client = Client(enforce_csrf_checks=True)
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    response = client.post(
        "/tickerq/django_celery_beat/periodictask/", disable_action(task), **basic("admin", PASSWORD)
    )
    assert response.status_code == 403
    task.refresh_from_db()
    assert task.enabled
