"""The parts of Basic authentication that need no user table: reading the header, the 401 and the lockout's
429 (JSON under the API, text elsewhere), and the client's address behind reverse proxies. Logins, lockouts
and the cache of Basic logins: test_access.py and test_settings.py; the API's refusals: tests/jobs/test_api.py."""

import base64
import json
from datetime import timedelta

import pytest
from django.test import RequestFactory

from bookworm_scheduler.web.basic_auth import (
    basic_header,
    client_address,
    decode_credentials,
    is_api,
    lockout_response,
    unauthorized,
)

pytestmark = pytest.mark.unit

PROXY = "10.0.0.2"  # the reverse proxy, as gunicorn sees every request


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    "header, credentials",
    [
        (basic(b"monitor:a-long-password"), ("monitor", "a-long-password")),
        (basic(b"monitor:a:b"), ("monitor", "a:b")),
        (basic(b"monitor:"), ("monitor", "")),
        ("Basic  eDp5 ", ("x", "y")),
    ],
    ids=["plain", "colon in the password", "empty password", "spaces around"],
)
def test_the_credentials_are_the_username_before_the_first_colon_and_the_password_after(header, credentials):
    assert decode_credentials(header) == credentials


@pytest.mark.parametrize(
    "header",
    [basic(b":a-long-password"), basic(b"monitor"), "Basic !!!", basic(b"\xff:\xfe"), "Basic"],
    ids=["no username", "no colon", "not base64", "not utf-8", "nothing"],
)
def test_malformed_credentials_are_a_value_error(header):
    with pytest.raises(ValueError, match="malformed Basic credentials"):
        decode_credentials(header)


def test_only_a_basic_authorization_header_is_taken_whatever_the_case_of_its_scheme():
    factory = RequestFactory()

    assert basic_header(factory.get("/", HTTP_AUTHORIZATION="basic bW9uaXRvcjpwdw==")) == "basic bW9uaXRvcjpwdw=="
    assert basic_header(factory.get("/", HTTP_AUTHORIZATION="Bearer a-token")) is None
    assert basic_header(factory.get("/")) is None


def test_a_refusal_on_the_dashboard_is_a_401_with_the_basic_challenge_and_one_line_of_text():
    response = unauthorized(RequestFactory().get("/tickerq/jobs/occurrence/"), "Wrong username or password.")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="BookWorm Scheduler", charset="UTF-8"'
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == b"Wrong username or password.\n"


def test_a_refusal_under_the_api_is_its_json_error_with_the_basic_challenge():
    response = unauthorized(RequestFactory().get("/tickerq/api/jobs/"), "Wrong username or password.")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="BookWorm Scheduler", charset="UTF-8"'
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"error": {"status": 401, "message": "Wrong username or password."}}


@pytest.mark.parametrize(
    "path, api", [("/tickerq/api/", True), ("/tickerq/api/history/", True), ("/tickerq/", False), ("/api/", False)]
)
def test_only_paths_under_tickerq_api_are_the_apis(path, api):
    assert is_api(RequestFactory().get(path)) is api


def test_a_lockout_under_the_api_is_a_json_429_with_retry_after(settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=1)

    response = lockout_response(RequestFactory().get("/tickerq/api/jobs/"))

    assert response.status_code == 429 and response["Retry-After"] == "60"
    assert json.loads(response.content) == {
        "error": {"status": 429, "message": "Account locked: too many failed logins. Try again in 1 minute."}
    }


def test_a_basic_lockout_on_the_dashboard_is_a_line_of_text(settings):
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    request = RequestFactory().get("/tickerq/", HTTP_AUTHORIZATION=basic(b"monitor:pw"))

    response = lockout_response(request)

    assert response.status_code == 429 and response["Retry-After"] == "900"
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == b"Account locked: too many failed logins. Try again in 15 minutes.\n"


@pytest.mark.parametrize(
    "proxies, forwarded_for, address",
    [
        (0, "198.51.100.7", PROXY),
        (1, "198.51.100.7", "198.51.100.7"),
        (1, "192.0.2.1, 198.51.100.7", "198.51.100.7"),
        (2, "192.0.2.1, 198.51.100.7, 10.0.0.1", "198.51.100.7"),
        (2, "198.51.100.7", PROXY),
        (1, "", PROXY),
        (1, " , 198.51.100.7 ,", "198.51.100.7"),
    ],
    ids=[
        "no proxy trusted",
        "one proxy",
        "a forged entry before the proxy's",
        "two proxies",
        "fewer entries than proxies",
        "no header",
        "empty entries",
    ],
)
def test_the_client_is_the_entry_the_outermost_trusted_proxy_appended(settings, proxies, forwarded_for, address):
    settings.TRUSTED_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded_for)

    assert client_address(request) == address
