"""Secrets never leak: every process, given passwords in its URLs and its *_FILE variables, failing in
every way the tests know (refused, unreachable, a wrong password, a bad certificate), writes none of
them in a log line, an HTML page, a JSON answer, /metrics or /health/.

The database role and the RabbitMQ user with a password are this module's own (in the TLS tests'
cluster, tls_servers.py, and in a virtual host of its own), removed at its end. DEBUG is on: its error
pages show the most (settings, the traceback's variables: bookworm_scheduler.web.error_reports).
"""

import base64
import secrets
import subprocess

import pytest

from tests.bookworm_scheduler.conftest import TLS_DATABASE, service_env
from tests.bookworm_scheduler.service_processes import Web, manage, run_manage, worker
from tests.jobs.celery_helpers import unique_queue

pytestmark = pytest.mark.slow

ROLE = "bookworm_secret"
VHOST = "bookworm_tls_secret"
ADMIN = "secret-admin"
SECRETS = {
    name: f"{name}-{secrets.token_hex(8)}"
    for name in ("db-password", "mq-password", "wrong-db-password", "wrong-mq-password", "secret-key", "mail", "admin")
}


def rabbitmqctl(*args, check=True):
    subprocess.run(["rabbitmqctl", *args], check=check, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def accounts(tls_servers, tls_migrated):
    """The database role and the broker user (each with its password), and a staff user for /metrics."""
    tls_servers.tls.psql(f"DROP ROLE IF EXISTS {ROLE}")
    tls_servers.tls.psql(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{SECRETS['db-password']}'")
    rabbitmqctl("delete_user", ROLE, check=False)
    rabbitmqctl("delete_vhost", VHOST, check=False)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("add_user", ROLE, SECRETS["mq-password"])
    rabbitmqctl("set_permissions", "-p", VHOST, ROLE, ".*", ".*", ".*")
    created = run_manage(
        dict(service_env(tls_servers), DJANGO_SUPERUSER_PASSWORD=SECRETS["admin"]),
        *("createsuperuser", "--noinput", "--username", ADMIN, "--email", "admin@example.com"),
    )
    try:
        assert created.returncode == 0, created.stderr
        yield
    finally:
        rabbitmqctl("delete_user", ROLE, check=False)
        rabbitmqctl("delete_vhost", VHOST, check=False)
        tls_servers.tls.psql(f"DROP ROLE IF EXISTS {ROLE}")


def urls(servers, case: str) -> tuple[str, str]:
    """DATABASE_URL and RABBITMQ_URL of a case, each with its password."""
    db_password, mq_password = SECRETS["db-password"], SECRETS["mq-password"]
    db_host = mq_host = "localhost"
    db_port, mq_port = servers.tls.port, servers.stunnel.port
    ca = servers.certificates.ca
    if case == "refused":
        db_port = mq_port = 1
    elif case == "unreachable":
        db_host = mq_host = "unreachable.invalid"
    elif case == "wrong password":
        db_password, mq_password = SECRETS["wrong-db-password"], SECRETS["wrong-mq-password"]
    elif case == "bad certificate":
        ca = servers.certificates.other_ca
    elif case == "broker password wrong, database up":
        mq_password = SECRETS["wrong-mq-password"]
    database = (
        f"postgres://{ROLE}:{db_password}@{db_host}:{db_port}/{TLS_DATABASE}?sslmode=verify-full&sslrootcert={ca}"
    )
    return database, f"amqps://{ROLE}:{mq_password}@{mq_host}:{mq_port}/{VHOST}"


CASES = ["refused", "unreachable", "wrong password", "bad certificate", "broker password wrong, database up"]


def case_env(servers, case: str, folder) -> dict:
    """The URLs in variables or in files (alternately), SECRET_KEY and EMAIL_URL in files."""
    database, broker = urls(servers, case)
    files = {
        "SECRET_KEY": SECRETS["secret-key"],
        "EMAIL_URL": f"smtp://alerts:{SECRETS['mail']}@127.0.0.1:1",
        **({"DATABASE_URL": database} if CASES.index(case) % 2 else {"RABBITMQ_URL": broker}),
    }
    env = service_env(servers, DATABASE_URL=database, RABBITMQ_URL=broker, SSL_CERT_FILE=str(servers.certificates.ca))
    if case == "bad certificate":
        env["SSL_CERT_FILE"] = str(servers.certificates.other_ca)
    for name, value in files.items():
        path = folder / name.lower()
        path.write_text(value + "\n")
        env[f"{name}_FILE"] = str(path)
        env.pop(name, None)
    return dict(env, ALERT_EMAILS="ops@example.com", SCHEDULER_EXECUTOR="celery")


def pages(web: Web) -> dict[str, str]:
    """What the web app answers: /health/ in its three forms, /metrics and the API as a staff user, the
    dashboard, the login page, and DEBUG's error page of a Host header not allowed."""
    staff = {"Authorization": "Basic " + base64.b64encode(f"{ADMIN}:{SECRETS['admin']}".encode()).decode()}
    answers = {
        "health json": web.get("/health/", accept="application/json"),
        "health html": web.get("/health/"),
        "health openmetrics": web.get("/health/?format=openmetrics"),
        "metrics": web.get("/metrics", headers=staff),
        "api": web.get("/tickerq/api/outbox/", accept="application/json", headers=staff),
        "overview": web.get("/tickerq/", headers=staff),
        "login": web.get("/tickerq/login/"),
        "bad host": web.get("/tickerq/login/", headers={"Host": "attacker.example"}),
    }
    return {name: f"{status}\n{body}" for name, (status, body) in answers.items()}


@pytest.mark.parametrize("case", CASES)
def test_no_secret_in_any_output_of_any_process(tls_servers, accounts, case, tmp_path):
    env = case_env(tls_servers, case, tmp_path)
    queue = unique_queue()
    if case == "broker password wrong, database up":
        run_manage(env, "jobs", "trigger", "ResendErrorEmailJob")  # for the scheduler to hand over
    processes = {
        "runscheduler": manage(dict(env, SCHEDULER_CELERY_QUEUE=queue), "runscheduler", "--instance-id", "secret"),
        "relay_outbox": manage(env, "relay_outbox"),
        "worker": worker(env, queue),
    }
    migrate = manage(env, "migrate", "--noinput")
    web = Web(env)
    try:
        outputs = pages(web)
        for process in processes.values():
            process.wait_for_any("ERROR", "CRITICAL")
        migrate.exit_code()
    finally:
        outputs.update({name: process.stop() for name, process in [*processes.items(), ("migrate", migrate)]})
        outputs["web"] = web.stop()

    leaks = {(name, secret) for name, output in outputs.items() for secret in SECRETS.values() if secret in output}
    assert not leaks
    for name in processes:
        assert "ERROR" in outputs[name] or "CRITICAL" in outputs[name], f"{name} did not fail:\n{outputs[name]}"
    # DEBUG's error pages, with the settings and the traceback's variables, were among the answers.
    assert outputs["bad host"].startswith("400\n") and "DisallowedHost" in outputs["bad host"]
    if case != "broker password wrong, database up":
        assert outputs["metrics"].startswith("500\n") and "OperationalError" in outputs["metrics"]
    else:
        # The pages that read the database did: the secrets were looked for in real answers.
        assert outputs["metrics"].startswith("200\n") and "bookworm_outbox_messages" in outputs["metrics"]
        assert outputs["overview"].startswith("200\n") and outputs["api"].startswith("200\n")
        assert "ACCESS_REFUSED" in outputs["health json"]
