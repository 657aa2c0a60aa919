"""The console's headers (Content-Security-Policy, frame denial, nosniff, Referrer-Policy), pages without inline
script, a session that ends after inactivity, and a logout that ends it. The browser's own account of the policy
(no violation on any page): tests/jobs/test_dashboard_browser.py."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from jobs.models import Occurrence
from tests.jobs.helpers import make_definition

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-password"
POLICY = {
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
}


def policy(response) -> set[str]:
    """The response's Content-Security-Policy as its directives (django-csp writes them in no fixed order)."""
    return {directive.strip() for directive in response["Content-Security-Policy"].split(";")}


@pytest.fixture
def operator():
    return User.objects.create_superuser("operator", "operator@example.com", PASSWORD)


@pytest.fixture
def browser(operator) -> Client:
    client = Client()
    client.post("/tickerq/login/", {"username": "operator", "password": PASSWORD})
    return client


def console_pages(operator) -> list[str]:
    task = make_definition("EchoJob", "test.echo", every=3600)
    run = Occurrence.objects.create(job_name="EchoJob", scheduled_for=timezone.now(), run_after=timezone.now())
    return [
        "/tickerq/",
        "/tickerq/overview/",
        "/tickerq/django_celery_beat/periodictask/",
        f"/tickerq/django_celery_beat/periodictask/{task.id}/change/",
        "/tickerq/django_celery_beat/periodictask/add/",
        "/tickerq/jobs/occurrence/",
        f"/tickerq/jobs/occurrence/{run.id}/change/",
        "/tickerq/outbox/outboxmessage/",
        "/tickerq/jobs/schedulerinstance/",
        "/tickerq/admin/logentry/",
        "/tickerq/auth/user/",
        f"/tickerq/auth/user/{operator.id}/change/",
        "/tickerq/password_change/",
    ]


def inline_code(page: str) -> list[str]:
    """<script> elements with code in them (not src=, not JSON data), and on*= handler attributes."""
    scripts = [
        tag
        for tag, body in re.findall(r"(<script\b[^>]*>)(.*?)</script>", page, flags=re.S)
        if "src=" not in tag and "application/json" not in tag and body.strip()
    ]
    handlers = re.findall(r"<[^>]*\son[a-z]+\s*=[^>]*>", page)
    return scripts + handlers + re.findall(r"\bhx-on[:-][^=]*=", page) + re.findall(r"javascript:", page)


def test_every_console_page_sends_the_policy_and_the_other_headers(browser, operator):
    anonymous = Client()
    for client, path in [*((browser, path) for path in console_pages(operator)), (anonymous, "/tickerq/login/")]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert policy(response) == POLICY, path
        assert response["X-Frame-Options"] == "DENY", path
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["Referrer-Policy"] == "same-origin", path


def test_no_console_page_holds_inline_script(browser, operator):
    for path in console_pages(operator):
        assert inline_code(browser.get(path).content.decode()) == [], path
    assert inline_code(Client().get("/tickerq/login/").content.decode()) == []


def test_the_api_answers_carry_the_headers_too(client):
    response = client.get("/tickerq/api/jobs/")
    assert response.status_code == 401
    assert policy(response) == POLICY
    assert response["X-Content-Type-Options"] == "nosniff"


def session_row(client: Client) -> Session:
    return Session.objects.get(session_key=client.cookies["sessionid"].value)


def test_a_page_moves_the_sessions_expiry_and_a_refresh_does_not(browser, settings):
    assert settings.SESSION_COOKIE_AGE == settings.SESSION_IDLE_SECONDS == 3600
    earlier = timezone.now() + timedelta(minutes=10)
    Session.objects.filter(pk=session_row(browser).pk).update(expire_date=earlier)

    browser.get("/tickerq/overview/", HTTP_HX_REQUEST="true")  # the index's refresh every 5 s
    browser.get("/tickerq/jobs/occurrence/", HTTP_HX_REQUEST="true")  # the history's
    assert session_row(browser).expire_date == earlier

    browser.get("/tickerq/jobs/occurrence/")
    assert session_row(browser).expire_date > timezone.now() + timedelta(minutes=59)


def test_an_idle_session_no_longer_opens_a_page(browser):
    Session.objects.filter(pk=session_row(browser).pk).update(expire_date=timezone.now() - timedelta(seconds=1))

    response = browser.get("/tickerq/jobs/occurrence/")
    assert response.status_code == 302
    assert response["Location"].startswith("/tickerq/login/")
    refresh = browser.get("/tickerq/overview/", HTTP_HX_REQUEST="true")
    assert refresh["HX-Redirect"].startswith("/tickerq/login/")


def test_logging_out_ends_the_session_for_its_old_cookie_too(browser):
    cookie = browser.cookies["sessionid"].value
    assert browser.get("/tickerq/").status_code == 200

    assert browser.post("/tickerq/logout/").status_code == 200
    assert not Session.objects.filter(session_key=cookie).exists()
    replay = Client()
    replay.cookies["sessionid"] = cookie
    response = replay.get("/tickerq/")
    assert response.status_code == 302
    assert response["Location"].startswith("/tickerq/login/")
