"""The API server under load for bench/api_load.py: started on the store and stopped, its
loopback address, its CPU time and memory, and waiting until it is idle again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
# The store's running jobs have no workers: keep the API's recovery loop from requeueing them.
STALE_AFTER_S = 365 * 24 * 3600


def http_get(url: str, timeout: float, *, token: str | None) -> tuple[int, bytes]:
    """A GET with no proxy (loopback only), for priming and listing; errors are answers too.
    ``token``: the API token sent as ``Authorization: Bearer`` (None only for /healthz)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout
                         ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def loopback(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL on a loopback address; exits on any other."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    on_loopback = host == "localhost" or _is_loopback_ip(host)
    if parts.scheme != "http" or not on_loopback:
        raise SystemExit(f"--url must be http:// on a loopback address, not {url}")
    # An address, not a name: the load generator then never waits on a resolver.
    return ("127.0.0.1" if host == "localhost" else host), parts.port or 80


def _is_loopback_ip(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    """A loopback port free at the moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(home: Path, database_url: str | None, port: int) -> subprocess.Popen[bytes]:
    """``tuner_service.cli api`` on the store, its log in the store folder; waits for /healthz."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env.update(TUNER_HOME=str(home), TUNER_STALE_AFTER_S=str(STALE_AFTER_S))
    if database_url:
        env["TUNER_DATABASE_URL"] = database_url
    log = home / "api-server.log"
    with open(log, "ab") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "tuner_service.cli", "api", "--port", str(port)],
            env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        with contextlib.suppress(OSError):
            if http_get(f"http://127.0.0.1:{port}/healthz", 2, token=None)[0] == 200:
                return server
        time.sleep(0.2)
    stop_server(server)
    tail = log.read_text(errors="replace")[-2000:]
    raise SystemExit(f"the API server did not become healthy; its log ({log}):\n{tail}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, then kill: uvicorn waits for requests in flight, which may be many and slow."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def settle(server: subprocess.Popen[bytes] | None, limit_s: float) -> tuple[float, bool]:
    """Wait until the server spends under 10 % of a core; returns (seconds waited, idle)."""
    start = time.monotonic()
    if server is None or cpu_s(server.pid) is None:
        time.sleep(1.0)  # an outside server: nothing to watch, a pause is all we can do
        return 1.0, True
    while True:
        before = cpu_s(server.pid) or 0.0
        time.sleep(0.5)
        idle = (cpu_s(server.pid) or 0.0) - before < 0.05
        waited = time.monotonic() - start
        if idle or waited >= limit_s:
            return round(waited, 1), idle


def netloc(host: str, port: int) -> str:
    """``host:port`` for a URL, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
