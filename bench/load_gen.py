"""Open-loop HTTP/1.1 load for bench/api_load.py: requests at fixed times, latency measured from
each request's scheduled time, so a slow server shows up as latency, not as a lower rate.

Runs in its own process (standard library only: it starts fast and stays light on the cores it
shares with the server). Reads a plan as JSON on stdin, prints one JSON result on stdout:

    {"host": "127.0.0.1", "port": 8000, "paths": ["/healthz"], "rate": 200, "warmup_s": 2,
     "duration_s": 20, "timeout_s": 5, "max_connections": 64, "token": "tnr_..."}

``token`` (the API's bearer token, or null) goes with every request as ``Authorization: Bearer``
(on stdin, not the command line, so other users of the machine cannot read it).

Every request scheduled in the measured window ends in exactly one way: an HTTP answer, a
``timeout`` (sent, no whole answer within ``timeout_s`` of its scheduled time), ``unsent`` (no
connection came free in time) or ``connection`` (refused, reset, malformed). Timeouts and
unsent requests enter the percentiles at ``timeout_s``: a lower bound, never a flattering gap. A
keep-alive connection the server closed while idle is retried once on a fresh one, as browsers
do (counted in ``retried``). Nothing runs past the last scheduled time plus ``timeout_s`` and a
second.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

MAX_REQUESTS = 2_000_000  # bounded in count as in time
LATE_S = 0.010  # a request sent this long after its scheduled time counts as late
TIMEOUT, UNSENT, CONNECTION = -1, -2, -3
ERROR_NAMES = {TIMEOUT: "timeout", UNSENT: "unsent", CONNECTION: "connection"}


class StaleConnection(Exception):
    """A reused connection was closed by the server before it answered anything."""


@dataclass
class Plan:
    """What to send: paths cycled at ``rate`` per second for warm-up plus measured seconds."""

    host: str
    port: int
    paths: list[str]
    rate: float
    warmup_s: float
    duration_s: float
    timeout_s: float
    max_connections: int
    token: str | None

    def request(self, path: str) -> bytes:
        """A browser-like keep-alive GET, with the bearer token when there is one."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token is not None else ""
        return (f"GET {path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n{auth}"
                "Accept-Encoding: gzip\r\nAccept: */*\r\nUser-Agent: tuner-bench-api-load\r\n"
                "Connection: keep-alive\r\n\r\n").encode("ascii")


class Connection:
    """One keep-alive connection; ``used`` tells a fresh one from a reused one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, False

    def close(self) -> None:
        self.writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """Status, body bytes (as sent: compressed when gzip), and whether the connection stays."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    version, code = status_line.split(b" ", 2)[:2]
    status = int(code)
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    keep = version == b"HTTP/1.1" and headers.get(b"connection") != b"close"
    if status in (204, 304) or status < 200:
        return status, 0, keep
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        return status, await _read_chunked(reader), keep
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        await reader.readexactly(length)
        return status, length, keep
    return status, len(await reader.read()), False  # delimited by the server closing


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return total
        await reader.readexactly(size + 2)
        total += size


class LoadRun:
    """One fixed-rate run over a growing pool of keep-alive connections."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.n_warm = round(plan.rate * plan.warmup_s)
        self.n = self.n_warm + round(plan.rate * plan.duration_s)
        self.requests = [plan.request(p) for p in plan.paths]
        self.scheduled = [0.0] * self.n
        self.sent_at = [math.nan] * self.n
        self.status = [0] * self.n
        self.latency = [0.0] * self.n
        self.nbytes = [0] * self.n
        self.dispatch_lag = [0.0] * self.n
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.idle = 0
        self.workers: list[asyncio.Task[None]] = []
        self.opened = self.retried = 0

    async def run(self) -> None:
        """Dispatch every request at its time, then let the workers drain and stop."""
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        for i in range(self.n):
            at = start + i / self.plan.rate
            if at > loop.time():
                await asyncio.sleep(at - loop.time())
            self.scheduled[i] = at
            self.dispatch_lag[i] = loop.time() - at
            self.queue.put_nowait(i)
            if self.idle < self.queue.qsize() and len(self.workers) < self.plan.max_connections:
                self.workers.append(asyncio.create_task(self._worker()))
        for _ in self.workers:
            self.queue.put_nowait(None)
        # Every request ends by its deadline, so this wait is bounded; the limit is a backstop.
        done, pending = await asyncio.wait(self.workers, timeout=self.plan.timeout_s + 1.0)
        for task in pending:
            task.cancel()
        for i in range(self.n):
            if self.status[i] == 0:
                self._end(i, self._unanswered(i), 0)

    async def _worker(self) -> None:
        conn: Connection | None = None
        while True:
            self.idle += 1
            i = await self.queue.get()
            self.idle -= 1
            if i is None:
                break
            conn = await self._one(i, conn)
        if conn is not None:
            conn.close()

    async def _one(self, i: int, conn: Connection | None) -> Connection | None:
        """Send request ``i`` and read its answer; returns the connection if still usable."""
        deadline = self.scheduled[i] + self.plan.timeout_s
        if asyncio.get_running_loop().time() >= deadline:
            self._end(i, UNSENT, 0)
            return conn
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    return await self._exchange(i, conn)
                except StaleConnection:
                    self.retried += 1
                    return await self._exchange(i, None)
        except TimeoutError:
            self._end(i, self._unanswered(i), 0)
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError, StaleConnection):
            self._end(i, CONNECTION, 0)
        if conn is not None:  # the answer may still arrive: this connection is out of step
            conn.close()
        return None

    async def _exchange(self, i: int, conn: Connection | None) -> Connection | None:
        loop = asyncio.get_running_loop()
        if conn is None:
            conn = Connection(*await asyncio.open_connection(self.plan.host, self.plan.port))
            self.opened += 1
        reused, conn.used = conn.used, True
        try:
            self.sent_at[i] = loop.time()
            conn.writer.write(self.requests[i % len(self.requests)])
            await conn.writer.drain()
            status, nbytes, keep = await read_response(conn.reader)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as error:
            conn.close()
            if reused and not (isinstance(error, asyncio.IncompleteReadError) and error.partial):
                raise StaleConnection from error
            raise
        except BaseException:
            conn.close()
            raise
        self._end(i, status, nbytes)
        if keep:
            return conn
        conn.close()
        return None

    def _unanswered(self, i: int) -> int:
        return UNSENT if math.isnan(self.sent_at[i]) else TIMEOUT

    def _end(self, i: int, status: int, nbytes: int) -> None:
        self.status[i] = status
        self.nbytes[i] = nbytes
        ended = asyncio.get_running_loop().time() - self.scheduled[i]
        self.latency[i] = self.plan.timeout_s if status in (TIMEOUT, UNSENT) else ended

    def summary(self) -> dict[str, Any]:
        """Counts and percentiles over the measured window (warm-up excluded)."""
        window = range(self.n_warm, self.n)
        statuses = [self.status[i] for i in window]
        answered = [i for i in window if self.status[i] > 0]
        ok = sum(1 for s in statuses if 200 <= s < 400)
        errors = Counter(ERROR_NAMES.get(s, str(s)) for s in statuses if not 200 <= s < 400)
        sent = [i for i in window if not math.isnan(self.sent_at[i])]
        delays = [self.sent_at[i] - self.scheduled[i] for i in sent]
        lags = sorted(self.dispatch_lag[i] for i in window)
        latencies = sorted(self.latency[i] for i in window)
        return {
            "scheduled": len(window), "scheduled_with_warmup": self.n, "sent": len(sent),
            "ok": ok,
            "achieved_rps": round(ok / self.plan.duration_s, 2),
            "errors": dict(sorted(errors.items())), "error_count": sum(errors.values()),
            "late": sum(1 for d in delays if d > LATE_S),
            **{f"p{p}_ms": _ms(_percentile(latencies, p)) for p in (50, 95, 99)},
            "max_ms": _ms(latencies[-1] if latencies else None),
            "mean_bytes": round(sum(self.nbytes[i] for i in answered) / len(answered))
            if answered else None,
            "connections": len(self.workers), "connects": self.opened, "retried": self.retried,
            "gen_lag_p99_ms": _ms(_percentile(lags, 99)),
            "gen_lag_max_ms": _ms(lags[-1] if lags else None),
        }


def _percentile(values: list[float], p: float) -> float | None:
    """Nearest rank on sorted values."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def main_async(plan: Plan) -> dict[str, Any]:
    """Run the load; the CPU time this process spent is part of the result."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    run = LoadRun(plan)
    await run.run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**run.summary(), "client_cpu_s": round(cpu, 3)}


def main() -> None:
    plan = Plan(**json.load(sys.stdin))
    count = plan.rate * (plan.warmup_s + plan.duration_s)
    if plan.rate <= 0 or plan.duration_s <= 0 or not plan.paths or count > MAX_REQUESTS:
        raise SystemExit(f"load_gen: need rate, duration > 0, some paths and at most "
                         f"{MAX_REQUESTS} requests")
    print(json.dumps(asyncio.run(main_async(plan))), flush=True)


if __name__ == "__main__":
    main()
