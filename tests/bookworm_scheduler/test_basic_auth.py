"""The parts of Basic authentication that need no user table: reading the header, the 401, and the client's
address behind reverse proxies. Logins, lockouts and the cache of Basic logins: test_access.py and
test_settings.py."""

import base64

import pytest
from django.test import RequestFactory

from bookworm_scheduler.web.basic_auth import basic_header, client_address, decode_credentials, unauthorized

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


def test_a_refusal_is_a_401_with_the_basic_challenge_and_one_line_of_text():
    response = unauthorized("Wrong username or password.")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="BookWorm Scheduler", charset="UTF-8"'
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == b"Wrong username or password.\n"


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
