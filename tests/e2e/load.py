"""Clients that never pause: a load loop through pgbouncer, each connection re-reading its file.

    with LoadLoop(dbhost.conninfo(), clients_file, rate=25) as load:
        ...                      # rotate, crash the agent, ...
    load.failures()              # the attempts that failed, with pgbouncer's / libpq's words
    load.summary()               # "1234 connections, 0 failed, 25.1/s"

Each attempt reads the clients' credentials file the agent renders (a libpq
service file, examples/database-host/templates/pg_service.conf.j2: `user=`
and `password=` under `[SERVICE]`), opens a new connection to pgbouncer with
those credentials (psycopg, over the real libpq), runs `SELECT current_user`
and closes it, as an application that reads its credentials per connection
does. Attempts start on a fixed clock (`rate` a second); one that runs late
does not make the next ones burst.

Each attempt is recorded with its start and end (wall-clock, comparable
with pgbouncer's log and with when a test called put_secret_value), the
user, the outcome and the error text: libpq's message (which never holds
the password) or, for a file that could not be read, the exception's type.
The password is never recorded.

The loop runs in a thread of the test process, each attempt in a thread of
its own (libpq releases the GIL while it waits), so an attempt that pgbouncer
keeps waiting does not stop the others; `stop()` ends the loop, and the
context manager stops it whatever happened.
"""

from __future__ import annotations

import configparser
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

RATE = 25.0
"""Connections a second: the issue asks for at least 20."""
CONNECT_TIMEOUT = 5
ANSWER_WAIT = 20.0
"""At `stop()`, how long an attempt still in flight is waited for (pgbouncer keeps a client
waiting while server logins fail: up to its server_login_retry, 15 s by default)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    start: float
    """time.time() when the attempt began (before reading the file)."""
    end: float
    user: str
    ok: bool
    error: str = ""


def read_service(path: Path, service: str) -> tuple[str, str]:
    """(user, password) of `[service]` in a libpq service file, parsed the way libpq reads it:
    `key=value` lines, the value taken to the end of the line, surrounding blanks dropped."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.read_string(path.read_text())
    section = parser[service]
    return section["user"], section["password"]


class LoadLoop:
    """See the module docstring."""

    def __init__(
        self,
        conninfo: str,
        clients_file: Path,
        *,
        service: str = "app",
        rate: float = RATE,
    ) -> None:
        self.conninfo = conninfo
        self.clients_file = clients_file
        self.service = service
        self.rate = rate
        self._results: dict[int, Attempt] = {}
        self._started: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> Self:
        assert self._thread is None, "already started"
        self._thread = threading.Thread(target=self._run, name="load-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop starting attempts; wait for those in flight, at most ANSWER_WAIT seconds (one
        still waiting then is recorded as failed: a client would have given up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            assert not self._thread.is_alive(), "the load loop did not stop"
        deadline = time.monotonic() + ANSWER_WAIT
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._results) == len(self._started):
                    break
            time.sleep(0.01)
        with self._lock:
            self._closed = True
            for number, start in self._started.items():
                if number not in self._results:
                    self._results[number] = Attempt(
                        start, time.time(), "", False, f"no answer within {ANSWER_WAIT}s"
                    )

    def __enter__(self) -> Self:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        # each attempt in its own thread: one that waits (pgbouncer holding a client until a
        # server login works) does not hold up the clock, as with many application workers
        period = 1 / self.rate
        next_at = time.monotonic()
        for number in itertools.count():
            if self._stop.is_set():
                return
            with self._lock:
                self._started[number] = time.time()
            threading.Thread(target=self._one, args=(number,), daemon=True).start()
            next_at = max(next_at + period, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def _one(self, number: int) -> None:
        attempt = self.attempt()
        with self._lock:
            if not self._closed:
                self._results[number] = attempt

    def attempt(self) -> Attempt:
        """One connection, as a client does it: read the file, connect, query, close."""
        start = time.time()
        user = ""
        try:
            user, password = read_service(self.clients_file, self.service)
        except (OSError, KeyError, configparser.Error) as exc:
            return Attempt(start, time.time(), user, False, f"clients' file: {type(exc).__name__}")
        try:
            with psycopg.connect(
                self.conninfo, user=user, password=password, connect_timeout=CONNECT_TIMEOUT
            ) as conn:
                row = conn.execute("SELECT current_user").fetchone()
            ok = row is not None and row[0] == user
            return Attempt(start, time.time(), user, ok, "" if ok else "wrong current_user")
        except psycopg.Error as exc:
            # libpq's and the server's words; they name the user, never the password
            message = " ".join(str(exc).split())
            return Attempt(start, time.time(), user, False, message[:300])

    # --- what happened ---------------------------------------------------------------------

    def snapshot(self) -> list[Attempt]:
        """The attempts that ended, in the order they started."""
        with self._lock:
            return [self._results[n] for n in sorted(self._results)]

    def failures(self) -> list[Attempt]:
        return [a for a in self.snapshot() if not a.ok]

    def wait_attempts(self, count: int, timeout: float = 10) -> None:
        """Wait until `count` more attempts than now ended (the clients are running)."""
        target = len(self.snapshot()) + count
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < target:
            assert time.monotonic() < deadline, f"the load loop made no {count} attempts"
            time.sleep(0.02)

    def rate_seen(self) -> float:
        attempts = self.snapshot()
        if len(attempts) < 2:
            return 0.0
        return (len(attempts) - 1) / (attempts[-1].start - attempts[0].start)

    def summary(self) -> str:
        attempts = self.snapshot()
        failed = sum(1 for a in attempts if not a.ok)
        users = sorted({a.user for a in attempts if a.ok})
        return (
            f"{len(attempts)} connections, {failed} failed, {self.rate_seen():.1f}/s, "
            f"as {len(users)} users"
        )

    def failure_window(self) -> tuple[int, float]:
        """(failed attempts, seconds from the first failure's start to the last's end)."""
        failed = self.failures()
        if not failed:
            return 0, 0.0
        return len(failed), failed[-1].end - failed[0].start
