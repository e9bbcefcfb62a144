"""A real PostgreSQL (the Debian package) on a free loopback port, in a temp dir, for the test session.

No mocked database: the job store's claims (`FOR UPDATE SKIP LOCKED`),
its races and LISTEN/NOTIFY are Postgres' own. `initdb` and the server run
as the `postgres` user when the tests run as root (Postgres refuses root),
as the current user otherwise. Each test gets a database of its own
(`new_database`). `make test` installs the package; without it the fixture
fails and says how to install it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.redis import free_port


def _binary(name: str) -> str:
    """Debian keeps the server's programs out of PATH, in /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed: `apt-get install postgresql` (`make test` does)")
    return found


class PostgresServer:
    def __init__(self, *, fsync: bool = False):
        self.port = free_port()
        self.fsync = fsync  # off for tests (nothing here survives a power cut); on for benchmarks
        self.user = "postgres"
        self.directory = Path(tempfile.mkdtemp(prefix="modeshift-pg-"))
        self.process: subprocess.Popen | None = None
        self._as: dict = {}
        if os.getuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        data = self.directory / "data"
        if not data.exists():
            subprocess.run(
                [_binary("initdb"), "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True,
                capture_output=True,
                **self._as,
            )
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
        }
        options = [item for name, value in settings.items() for item in ("-c", f"{name}={value}")]
        with open(self.directory / "log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [_binary("postgres"), "-D", str(data), *options], stdout=subprocess.DEVNULL, stderr=log, **self._as
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.directory / 'log').read_text()[-2000:]}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            import psycopg

            with psycopg.connect(self.url(), connect_timeout=1):
                return True
        except (OSError, psycopg.Error):
            return False

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """A clean stop (SIGINT: fast shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            self.process.wait(30)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
