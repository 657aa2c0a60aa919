"""Fixtures of the TLS and secrets tests: real TLS servers (tls_servers.py), made once per session."""

import os

import pytest

from tests.bookworm_scheduler.tls_servers import TlsServers, start_servers, stop_servers

# The database of the TLS tests, in their own PostgreSQL cluster.
TLS_DATABASE = "test_tls"
# Variables of the caller's environment that would change what a service process connects to.
CONNECTION_VARIABLES = (
    "DATABASE_URL",
    "RABBITMQ_URL",
    "SSL_CERT_FILE",
    "SECRET_KEY",
    "EMAIL_URL",
    "TEST_DATABASE_NAME",
)


@pytest.fixture(scope="session")
def tls_servers(tmp_path_factory):
    servers = start_servers(tmp_path_factory.mktemp("tls"))
    try:
        servers.tls.psql(f"CREATE DATABASE {TLS_DATABASE}")
        yield servers
    finally:
        stop_servers(servers)


def good_database_url(servers: TlsServers, *, host: str = "localhost", ca=None, port=None) -> str:
    """DATABASE_URL as the README says: verify-full, the CA in sslrootcert."""
    query = f"sslmode=verify-full&sslrootcert={ca or servers.certificates.ca}"
    return f"postgres://postgres@{host}:{port or servers.tls.port}/{TLS_DATABASE}?{query}"


def good_rabbitmq_url(servers: TlsServers, *, port=None) -> str:
    """RABBITMQ_URL as the README says: amqps:// (the CA in SSL_CERT_FILE)."""
    return f"amqps://guest:guest@localhost:{port or servers.stunnel.port}/%2F"


def service_env(servers: TlsServers, **variables) -> dict:
    """The environment of a service process on the TLS servers; variables (DATABASE_URL=...) override."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in CONNECTION_VARIABLES and not key.endswith("_FILE") and not key.startswith("SCHEDULER_")
    }
    env.update(
        DEBUG="1",
        PYTHONUNBUFFERED="1",
        DATABASE_CONN_MAX_AGE="0",
        DATABASE_URL=good_database_url(servers),
        RABBITMQ_URL=good_rabbitmq_url(servers),
        SSL_CERT_FILE=str(servers.certificates.ca),
    )
    env.update(variables)
    return {key: value for key, value in env.items() if value is not None}


@pytest.fixture(scope="session")
def tls_migrated(tls_servers):
    """The TLS database migrated by `manage.py migrate` over TLS; its result."""
    from tests.bookworm_scheduler.service_processes import run_manage

    result = run_manage(service_env(tls_servers), "migrate", "--noinput")
    assert result.returncode == 0, result.stdout + result.stderr
    return result
