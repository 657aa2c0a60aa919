"""TLS against real servers: PostgreSQL with `ssl = on`, RabbitMQ behind stunnel (tls_servers.py).

With the right CA and host name every process works end to end over TLS: migrate, runscheduler
(inline and with the Celery executor), a Celery worker, relay_outbox and the web app's /health/.
With a wrong CA, a wrong host name, or a plain-text server where TLS is asked, each one says so in
one line naming the variable and the reason, without a traceback or a password, and retries (or
exits, as for an unreachable server).
"""

import re

import pytest
from django.conf import settings

from tests.bookworm_scheduler.conftest import TLS_DATABASE, good_database_url, good_rabbitmq_url, service_env
from tests.bookworm_scheduler.service_processes import Web, manage, run_manage, worker
from tests.bookworm_scheduler.tls_servers import RABBITMQ_PLAIN, UNNAMED_ADDRESS
from tests.jobs.celery_helpers import delete_queues, unique_queue
from tests.jobs.helpers import wait_for

pytestmark = pytest.mark.slow

EXCHANGE = "BookWorm.Contracts:ResendErrorEmailIntegrationEvent"
ALL_OK = {name: "OK" for name in ("database", "broker", "schedulers", "relays", "outbox_backlog", "migrations")}
# In every DATABASE_URL of the refusal tests; the TLS cluster trusts postgres, so it is never checked.
DATABASE_PASSWORD = "tls-db-password-6021"


def triggered(env) -> int:
    result = run_manage(env, "jobs", "trigger", "ResendErrorEmailJob")
    assert result.returncode == 0, result.stderr
    return int(re.fullmatch(r"triggered ResendErrorEmailJob: occurrence (\d+)\n", result.stdout)[1])


def status_of(servers, occurrence: int) -> str:
    return servers.tls.psql(f"SELECT status FROM jobs_occurrence WHERE id = {occurrence}", database=TLS_DATABASE)


def delivered_ids(servers) -> set[str]:
    """The message ids of the outbox rows delivered from the TLS database, once none is left to deliver."""
    rows = servers.tls.psql("SELECT status, message_id FROM outbox_outboxmessage", database=TLS_DATABASE).split()
    statuses = {row.split("|")[0] for row in rows}
    return {row.split("|")[1] for row in rows} if statuses == {"delivered"} else set()


def test_every_process_works_over_tls_with_the_right_ca_and_host_name(tls_servers, tls_migrated, rabbit):
    env = service_env(tls_servers)
    queue = rabbit.bind_queue(EXCHANGE)
    inline = triggered(env)
    once = run_manage(env, "runscheduler", "--once")
    assert once.returncode == 0, once.stderr
    assert status_of(tls_servers, inline) == "succeeded"

    celery_queue = unique_queue()
    celery_env = dict(env, SCHEDULER_EXECUTOR="celery", SCHEDULER_CELERY_QUEUE=celery_queue)
    processes = {
        "runscheduler": manage(celery_env, "runscheduler", "--instance-id", "tls"),
        "relay_outbox": manage(env, "relay_outbox"),
        "worker": worker(env, celery_queue),
    }
    web = Web(env)
    try:
        processes["worker"].wait_for(" ready.")
        handed_over = triggered(env)
        wait_for(lambda: status_of(tls_servers, handed_over) == "succeeded", timeout=30)
        ids = wait_for(lambda: delivered_ids(tls_servers), timeout=30)
        received = rabbit.receive(queue, 100, timeout=3)
        envelopes = [envelope for _, envelope in received if envelope["messageId"] in ids]
        # Every server session of the database is encrypted (the web app's, the relay's, the scheduler's...).
        sessions = tls_servers.tls.psql(
            "SELECT count(*), bool_and(ssl) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid) "
            f"WHERE datname = '{TLS_DATABASE}' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        health = wait_for(lambda: (reply := web.health()) and reply[0] == 200 and reply, timeout=30)
    finally:
        outputs = {name: process.stop() for name, process in processes.items()}
        outputs["web"] = web.stop()
        delete_queues(celery_queue, settings.RABBITMQ_URL)

    assert len(ids) >= 2 and sorted(envelope["messageId"] for envelope in envelopes) == sorted(ids)
    assert {envelope["destinationAddress"].split("/")[2] for envelope in envelopes} == {
        f"localhost:{tls_servers.stunnel.port}"
    }
    count, encrypted = sessions.strip().split("|")
    assert int(count) >= 3 and encrypted == "t"
    assert health == (200, ALL_OK)
    assert "Connected to amqps://guest:**@" in outputs["worker"]
    assert "jobs.run_occurrence[" in outputs["worker"] and "succeeded in" in outputs["worker"]
    for name, output in outputs.items():
        assert "Traceback" not in output, f"{name}:\n{output}"


# Each wrong setting, and what the processes say of it (libpq's words, Python's ssl module's, /health/'s).
DATABASE_CASES = {
    "wrong CA": ("certificate verify failed", "certificate verify failed"),
    "wrong host name": (f'does not match host name "{UNNAMED_ADDRESS}"', "hostname mismatch"),
    "plain-text server": ("server does not support SSL", "server does not support SSL"),
}
BROKER_CASES = {
    "wrong CA": "certificate verify failed: unable to get local issuer certificate",
    "wrong host name": "certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost'.",
    "plain-text server": "wrong version number: the server does not speak TLS on this port",
}


def wrong_database_url(servers, case: str) -> str:
    url = {
        "wrong CA": good_database_url(servers, ca=servers.certificates.other_ca),
        "wrong host name": good_database_url(servers, host=UNNAMED_ADDRESS),
        "plain-text server": good_database_url(servers, port=servers.plain.port),
    }[case]
    return url.replace("postgres@", f"postgres:{DATABASE_PASSWORD}@")


def wrong_broker_env(servers, case: str) -> dict:
    if case == "wrong CA":
        return {"RABBITMQ_URL": good_rabbitmq_url(servers), "SSL_CERT_FILE": str(servers.certificates.other_ca)}
    port = servers.stunnel.wrong_host_port if case == "wrong host name" else RABBITMQ_PLAIN[1]
    return {"RABBITMQ_URL": good_rabbitmq_url(servers, port=port)}


def lines_naming(output: str, variable: str) -> list[str]:
    return [line for line in output.splitlines() if variable in line]


def assert_refused_in_one_line(output: str, variable: str, reason: str, *, name: str) -> None:
    """Some line names the variable and the reason; every line that names the variable names the reason;
    no traceback, no password."""
    named = lines_naming(output, variable)
    assert named and all(reason in line for line in named), f"{name}:\n{output}"
    assert "Traceback" not in output, f"{name}:\n{output}"
    assert DATABASE_PASSWORD not in output and "guest:guest" not in output, f"{name}:\n{output}"


@pytest.mark.parametrize("case", DATABASE_CASES)
def test_each_process_refuses_a_wrong_database_certificate_in_one_line(tls_servers, tls_migrated, case):
    libpq_words, health_words = DATABASE_CASES[case]
    env = service_env(tls_servers, DATABASE_URL=wrong_database_url(tls_servers, case))
    retrying = {"runscheduler": manage(env, "runscheduler"), "relay_outbox": manage(env, "relay_outbox")}
    migrate = manage(env, "migrate", "--noinput")
    web = Web(env)
    try:
        status, health = web.health()
        outputs = {name: process.wait_for("retrying", "DATABASE_URL") for name, process in retrying.items()}
        assert migrate.exit_code() == 1
    finally:
        outputs = {name: process.stop() for name, process in retrying.items()}
        outputs["web"] = web.stop()
    outputs["migrate"] = migrate.written()

    assert status == 500
    assert health["database"] == f"Unavailable: DATABASE_URL: connection failed: {health_words}"
    said = first_line(outputs["runscheduler"])
    assert outputs["migrate"] == f"cannot connect to the database: DATABASE_URL: {said}\n"
    for name, output in outputs.items():
        assert_refused_in_one_line(output, "DATABASE_URL", health_words if name == "web" else libpq_words, name=name)
    # The daemons kept retrying until stopped, and stopped cleanly.
    assert [retrying[name].process.returncode for name in retrying] == [0, 0]


def first_line(output: str) -> str:
    """What the first database_unavailable line of a scheduler says after "DATABASE_URL: "."""
    line = lines_naming(output, "DATABASE_URL")[0]
    return line.split("DATABASE_URL: ", 1)[1].split("; retrying")[0]


@pytest.mark.parametrize("case", BROKER_CASES)
def test_each_process_refuses_a_wrong_broker_certificate_in_one_line(tls_servers, tls_migrated, case):
    reason = BROKER_CASES[case]
    env = service_env(tls_servers, **wrong_broker_env(tls_servers, case))
    celery_queue = unique_queue()
    celery_env = dict(env, SCHEDULER_EXECUTOR="celery", SCHEDULER_CELERY_QUEUE=celery_queue)
    triggered(env)
    processes = {
        "relay_outbox": manage(env, "relay_outbox"),
        "runscheduler": manage(celery_env, "runscheduler", "--instance-id", "tls-refused"),
        "worker": worker(env, celery_queue),
    }
    once = manage(env, "relay_outbox", "--once")
    web = Web(env)
    try:
        status, health = web.health()
        for process in processes.values():
            process.wait_for("RABBITMQ_URL", timeout=40)
        assert once.exit_code() == 1
    finally:
        outputs = {name: process.stop() for name, process in processes.items()}
        outputs["web"] = web.stop()
    outputs["relay_outbox --once"] = once.written()

    assert status == 500
    said = f"localhost:{port_of(env)} (RABBITMQ_URL): {error_of(case)}: {reason}"
    assert health["broker"] == f"Unavailable: {said}"
    assert outputs["relay_outbox --once"] == f"CommandError: cannot reach the broker at {said}\n"
    for name, output in outputs.items():
        assert_refused_in_one_line(output, "RABBITMQ_URL", reason, name=name)
    assert [process.process.returncode for process in processes.values()] == [0, 0, 0]


def port_of(env) -> int:
    return int(re.search(r":(\d+)/", env["RABBITMQ_URL"])[1])


def error_of(case: str) -> str:
    return "SSLError" if case == "plain-text server" else "SSLCertVerificationError"
