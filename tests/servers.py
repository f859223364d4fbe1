"""Real Redis and PostgreSQL servers for the tests, started from the Debian packages.

pytest-postgresql cannot be used as root (``initdb`` refuses to run as root, and CI runs as
root), so these helpers run PostgreSQL as the ``postgres`` system user when we are root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


@dataclass
class RedisServer:
    """A redis-server on a free loopback port, no persistence."""

    process: subprocess.Popen[bytes]
    port: int
    command: list[str]

    @classmethod
    def start(cls, folder: Path, persistent: bool = False) -> RedisServer:
        """Start one (``persistent``: append-only file, as in production).

        Raises FileNotFoundError when redis-server is not installed.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes" if persistent else "no", "--dir", str(folder),
                   "--maxmemory-policy", "noeviction"]
        server = cls(subprocess.Popen(command, stdout=subprocess.DEVNULL), port, command)
        _wait_port(port)
        return server

    def restart(self, down_s: float = 1.0) -> None:
        """Shut down cleanly, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        _wait_port(self.port)

    def url(self, db: int = 0) -> str:
        """The broker URL of database ``db``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """Shut it down."""
        self.process.terminate()
        self.process.wait(timeout=10)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    binary = shutil.which(name)
    if binary is None:
        raise FileNotFoundError(name)
    return binary


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL cluster on a free loopback port (fsync off: tests only)."""

    data_dir: Path
    port: int
    run_as: str | None

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb and start; as root, both run as the ``postgres`` user."""
        run_as = "postgres" if os.geteuid() == 0 else None
        # Its own folder in /tmp: pytest's temporary folders are closed to other users.
        folder = Path(tempfile.mkdtemp(prefix="tuner-test-pg-"))
        data_dir = folder / "pgdata"
        if run_as:
            user = pwd.getpwnam(run_as)
            os.chown(folder, user.pw_uid, user.pw_gid)
        server = cls(data_dir, free_port(), run_as)
        server._run(_pg_bin("initdb"), "-D", str(data_dir), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {server.port} -c listen_addresses=127.0.0.1 -k {folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        server._run(_pg_bin("pg_ctl"), "-D", str(data_dir), "-o", options, "-w",
                    "-l", str(folder / "postgres.log"), "start")
        return server

    def _run(self, *command: str) -> None:
        if self.run_as:
            command = ("runuser", "-u", self.run_as, "--", *command)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of ``database``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self) -> None:
        """Stop and start again (for fault tests)."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "fast", "restart")

    def stop(self) -> None:
        """Shut it down and remove its files."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)
