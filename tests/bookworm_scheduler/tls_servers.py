"""Real TLS servers for the TLS and secrets tests: certificates, PostgreSQL clusters of their own, stunnel.

- Certificates made with the openssl command line: a CA, a server certificate for `localhost`
  (and the IP 127.0.0.1) signed by it, a certificate for another host name signed by it, and an
  unrelated CA that signed neither.
- Two PostgreSQL clusters made with pg_createcluster on free ports (the shared cluster `main` is
  never touched): one with `ssl = on` and the server certificate, listening on 127.0.0.1 and on
  127.0.0.2 (an address its certificate does not name), one with `ssl = off`. Both trust the user
  postgres from 127.0.0.0/8 and ask any other user for a password.
- stunnel terminating TLS on free ports in front of the shared RabbitMQ (127.0.0.1:5672): one port
  with the server certificate, one with the certificate for another host name.

Each is made once per test session and removed at its end. A missing program is a failure, never a skip.
"""

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PG_VERSION = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else "15"
TLS_CLUSTER = "bookworm_tls"
PLAIN_CLUSTER = "bookworm_tls_plain"
RABBITMQ_PLAIN = ("127.0.0.1", 5672)
# The address of the TLS cluster that its certificate does not name.
UNNAMED_ADDRESS = "127.0.0.2"
WRONG_HOST = "wrong.example"


def require(program: str) -> str:
    path = shutil.which(program)
    assert path, f"{program} is not installed: `make system-packages` installs it (Makefile SYSTEM_PACKAGES)"
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def _openssl(*args, cwd: Path) -> None:
    subprocess.run([require("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass
class Certificates:
    """Files in one folder: ca.pem, server.pem/.key (localhost, 127.0.0.1), wrong_host.pem/.key, other_ca.pem."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.folder / "other_ca.pem"

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"


def _make_ca(folder: Path, name: str, subject: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
        "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def _make_server(folder: Path, name: str, host: str, extra_san: str = "") -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder,
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(
        f"subjectAltName=DNS:{host}{extra_san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder,
    )  # fmt: skip


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    _make_ca(folder, "ca", "/CN=BookWorm test CA")
    _make_ca(folder, "other_ca", "/CN=Unrelated test CA")
    _make_server(folder, "server", "localhost", ",IP:127.0.0.1")
    _make_server(folder, "wrong_host", WRONG_HOST)
    return Certificates(folder)


def _pg(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert not check or result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result


def _drop_cluster(name: str) -> None:
    if Path(f"/etc/postgresql/{PG_VERSION}/{name}").exists():
        _pg("pg_dropcluster", "--stop", PG_VERSION, name, check=False)


HBA = """\
local all postgres peer
host all postgres 127.0.0.0/8 trust
host all all 127.0.0.0/8 scram-sha-256
"""


@dataclass
class Cluster:
    name: str
    port: int

    def url(self, user: str = "postgres", database: str = "postgres", host: str = "localhost", query: str = "") -> str:
        return f"postgres://{user}@{host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run sql as postgres (trusted from 127.0.0.1); its output, unaligned, without headers."""
        return _pg(
            "psql", "-XqtA", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql
        ).stdout.strip()

    def drop(self) -> None:
        _drop_cluster(self.name)


def create_cluster(name: str, certificates: Certificates | None) -> Cluster:
    """A new cluster on a free port, started; with ssl = on and the server certificate when certificates are given."""
    require("pg_createcluster")
    _drop_cluster(name)  # left over by an aborted run
    port = free_port()
    config = Path(f"/etc/postgresql/{PG_VERSION}/{name}")
    _pg("pg_createcluster", PG_VERSION, name, "-p", str(port))
    settings = [f"listen_addresses = '127.0.0.1,{UNNAMED_ADDRESS}'", "fsync = off"]
    if certificates is None:
        settings.append("ssl = off")
    else:
        settings += ["ssl = on", f"ssl_cert_file = '{config}/server.pem'", f"ssl_key_file = '{config}/server.key'"]
    (config / "conf.d" / "bookworm_tls.conf").write_text("".join(f"{line}\n" for line in settings))
    postgres = pwd.getpwnam("postgres")
    if certificates is not None:
        for suffix in ("pem", "key"):
            target = config / f"server.{suffix}"
            shutil.copyfile(certificates.folder / f"server.{suffix}", target)
            os.chown(target, postgres.pw_uid, postgres.pw_gid)
            target.chmod(0o600)
    (config / "pg_hba.conf").write_text(HBA)
    _pg("pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, name, "start")
    wait_for_port("127.0.0.1", port)
    return Cluster(name, port)


class Stunnel:
    """stunnel in front of the plain RabbitMQ: `port` presents the server certificate, `wrong_host_port`
    the certificate for another host name."""

    def __init__(self, certificates: Certificates, folder: Path):
        program = require("stunnel4")
        self.port, self.wrong_host_port = free_port(), free_port()
        plain = f"{RABBITMQ_PLAIN[0]}:{RABBITMQ_PLAIN[1]}"
        config = folder / "stunnel.conf"
        config.write_text(
            "foreground = yes\npid =\nsyslog = no\ndebug = 3\n"
            f"[amqps]\naccept = 127.0.0.1:{self.port}\nconnect = {plain}\n"
            f"cert = {certificates.cert('server')}\nkey = {certificates.key('server')}\n"
            f"[amqps-wrong-host]\naccept = 127.0.0.1:{self.wrong_host_port}\nconnect = {plain}\n"
            f"cert = {certificates.cert('wrong_host')}\nkey = {certificates.key('wrong_host')}\n"
        )
        self.log = (folder / "stunnel.log").open("w")
        self.process = subprocess.Popen([program, str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port)
        wait_for_port("127.0.0.1", self.wrong_host_port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@dataclass
class TlsServers:
    certificates: Certificates
    tls: Cluster
    plain: Cluster
    stunnel: Stunnel


def start_servers(folder: Path) -> TlsServers:
    certificates = make_certificates(folder / "certs")
    tls = create_cluster(TLS_CLUSTER, certificates)
    try:
        plain = create_cluster(PLAIN_CLUSTER, None)
        stunnel = Stunnel(certificates, folder)
    except BaseException:
        tls.drop()
        _drop_cluster(PLAIN_CLUSTER)
        raise
    return TlsServers(certificates, tls, plain, stunnel)


def stop_servers(servers: TlsServers) -> None:
    servers.stunnel.stop()
    servers.tls.drop()
    servers.plain.drop()
