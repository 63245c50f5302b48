"""The long-running `smagent render` (or any command) as a real subprocess a test can drive.

`AgentProcess` starts the command in its own session with a clean
environment, and a background thread reads its stderr as JSON log lines
(and its stdout, which an agent must leave empty). A test waits for events
(`wait_for("pass.finished", template="a")`), asks what was logged since a
`mark()`, sends signals, stops it and reads its CPU time.

Whatever happens, the process does not outlive the test: the context
manager and the `agent` fixture kill it (and every process it started) on
exit, the end of each test kills what a test left running, and `atexit`
covers an interrupted run. Its output goes through the tests' leak checks
line by line; a canary in it fails the test when the process is closed. On
a test failure the report shows each process's last log lines (masked).

Waiting is by cursor: `wait_for` and `events` look after the cursor, which
`mark()` sets to "now" and `wait_for` moves past the event it returns. So an
event logged before a test's step cannot satisfy a wait meant for after it,
and two waits for `pass.finished` are two passes. To count what a step
caused, keep its mark: `m = p.mark(); ...; p.wait_for("pass.finished");
p.events("action.ran", since=m)`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from tests import leaks
from tests.sighup_counter import SighupCounter, stop_all

KILL_WAIT = 10
"""Seconds a SIGKILLed process may take to go."""
TAIL = 40
"""Log lines shown with a failure."""
INHERITED_OUT = ("SMAGENT_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")
"""Variables of the test run's own environment a child must not inherit (a test that wants
one passes it): a run under systemd or with SMAGENT_CONFIG set must not change the agent.
STATE_DIRECTORY is inherited: conftest sets it so no run of the suite uses /var/lib/smagent."""

AgentFactory = Callable[..., "AgentProcess"]
"""The `agent` fixture's type: `agent(config, *render_args, env=, log_level=, cwd=)`."""
_STARTED: list[AgentProcess] = []
"""Processes started during the current test (for the failure report and the clean-up)."""


class AgentFailure(AssertionError):
    """A wait or stop that failed; its text ends with the process's last output lines."""


class Event(dict[str, Any]):
    """One JSON log line; `at` is time.monotonic() when it was read, `index` its position."""

    at: float
    index: int


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in a process's output: queries with `since=` look only after it."""

    index: int
    at: float


@dataclass(frozen=True, slots=True)
class _Line:
    at: float
    stream: str
    text: str
    event: Event | None


def _clean_env(env: Mapping[str, str] | None) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_OUT)}
    full.update(env or {})
    return full


def smagent_argv(config: Path, *args: str, log_level: str | None = None) -> list[str]:
    """`python -m smagent --log-format json [--log-level L] --config C render ARGS`."""
    level = ["--log-level", log_level] if log_level else []
    return [
        sys.executable,
        "-m",
        "smagent",
        "--log-format",
        "json",
        *level,
        "--config",
        str(config),
        "render",
        *args,
    ]


class AgentProcess:
    """A subprocess whose stderr is JSON log lines; see the module docstring."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        strict: bool = True,
    ) -> None:
        """`strict`: a stderr line that is not JSON (a traceback, a warning) fails the test
        at close; the CLI's own `error: ...` lines are allowed."""
        self.argv = [str(arg) for arg in argv]
        self.env = _clean_env(env)
        self.cwd = cwd
        self.strict = strict
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[_Line] = []
        self._events: list[Event] = []
        self._cursor = 0
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._leaks: list[leaks.Leak] = []
        self._closed = False

    @classmethod
    def render(
        cls,
        config: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        log_level: str | None = None,
        cwd: Path | None = None,
    ) -> Self:
        """The agent, `smagent --log-format json --config CONFIG render ARGS` (not started)."""
        return cls(smagent_argv(config, *args, log_level=log_level), env=env, cwd=cwd)

    # --- life --------------------------------------------------------------------------------

    def start(self) -> Self:
        assert self._proc is None, "already started"
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own group: killed as one, spared a Ctrl-C of pytest
        )
        _STARTED.append(self)
        if "smagent" in self.argv:
            leaks.STATS["subprocess outputs"] += 1
        self._reader = threading.Thread(target=self._read, name=f"agent-{self.pid}", daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any
    ) -> None:
        if exc is not None:
            if not isinstance(exc, AgentFailure):  # which carries the tail already
                exc.add_note(self.tail_text())
            try:
                self.close()
            except AssertionError as problem:  # the test's own failure stays the one raised
                exc.add_note(f"and at close: {str(problem).splitlines()[0]}")
            return
        self.close()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: killed by that signal), None while it runs.

        An exited process is left a zombie until `kill`/`close`: its pid and process
        group cannot be reused meanwhile, so signalling them never hits a stranger.
        """
        proc = self._proc
        assert proc is not None, "not started"
        if proc.returncode is not None:
            return proc.returncode
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def alive(self) -> bool:
        return self.returncode is None

    def send(self, sig: int) -> None:
        """Send `sig`; a process that already exited is a failure (the test expected it up)."""
        code = self.returncode
        if code is not None:
            raise self._with_tail(f"cannot send signal {sig}: exited with {code}")
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 10) -> int:
        """Wait for the process to exit by itself; its exit code (it is not reaped yet)."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() > deadline:
                raise self._with_tail(f"still running after {timeout}s")
            time.sleep(0.005)
        self._join_reader()
        return code

    def _exit_code_soon(self, timeout: float = 5) -> int | None:
        """The exit code of a process that closed its output (it exits a moment later)."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None and time.monotonic() < deadline:
            time.sleep(0.002)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send `sig` and wait for the exit; its code. Not gone in `timeout`: killed, a failure."""
        if self.alive():
            self.send(sig)
        try:
            return self.wait(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the process, its group and every descendant (its own sessions too); reap it."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        # Stopped first, the process cannot reap (and free the pid of) a child it started in
        # a session of its own before that child is killed. Not reaped yet, its pid and group
        # id are still its own, even when it already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGSTOP)
        victims = _descendants(proc.pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:  # stuck in the kernel (D state): say so, do not hang
            raise AgentFailure(f"pid {proc.pid} still there {KILL_WAIT}s after SIGKILL") from None
        # a SIGKILLed process dies when next scheduled: wait, so nothing of it runs on
        deadline = time.monotonic() + KILL_WAIT
        while (left := pids_alive(victims)) and time.monotonic() < deadline:
            time.sleep(0.002)
        if left:
            raise AgentFailure(f"descendants {left} of pid {proc.pid} survived SIGKILL")
        self._join_reader()

    def close(self) -> None:
        """Kill if still running, then fail on a canary in the output or a non-JSON line."""
        if self._closed or self._proc is None:
            return
        self._closed = True
        self.kill()
        if self._leaks:
            raise AgentFailure(leaks.describe(self._leaks) + "\n" + self.tail_text())
        if self.strict:
            stray = [
                line
                for line in self._lines
                if line.stream == "stderr" and line.event is None and not _cli_error(line.text)
            ]
            if stray:
                raise AgentFailure(
                    f"{len(stray)} stderr line(s) of pid {self.pid} are not JSON log lines, "
                    f"the first: {leaks.mask(stray[0].text)!r}\n{self.tail_text()}"
                )

    # --- output ------------------------------------------------------------------------------

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        selector = selectors.DefaultSelector()
        pending: dict[str, bytes] = {}
        for stream, name in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            selector.register(stream, selectors.EVENT_READ, name)
            pending[name] = b""
        while selector.get_map():
            for key, _ in selector.select():
                name = key.data
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    if pending[name]:
                        self._add(name, pending[name])
                    continue
                *whole, pending[name] = (pending[name] + data).split(b"\n")
                for raw in whole:
                    self._add(name, raw)
        selector.close()
        self._proc.stdout.close()
        self._proc.stderr.close()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _add(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        found = leaks.find_leaks(text, f"{stream} of pid {self.pid}")
        event: Event | None = None
        if stream == "stderr":
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                if isinstance(parsed, dict):
                    event = Event(parsed)
        at = time.monotonic()
        with self._changed:
            self._leaks += found
            if event is not None:
                event.at = at
                event.index = len(self._events)
                self._events.append(event)
            self._lines.append(_Line(at, stream, text, event))
            self._changed.notify_all()

    def _join_reader(self, timeout: float = 5) -> None:
        # a grandchild that kept the pipes open must not hang the test: give up after a while
        if self._reader is not None:
            self._reader.join(timeout)

    def mark(self) -> Mark:
        """The position now: it becomes the cursor (see the module docstring)."""
        with self._changed:
            self._cursor = len(self._events)
            return Mark(self._cursor, time.monotonic())

    def events(
        self, name: str | None = None, *, since: Mark | None = None, **fields: Any
    ) -> list[Event]:
        """Events logged after `since` (default: the cursor) named `name`, with `fields`;
        the cursor does not move."""
        with self._changed:
            start = self._cursor if since is None else since.index
            return [e for e in self._events[start:] if _matches(e, name, fields)]

    def all_events(self) -> list[Event]:
        with self._changed:
            return list(self._events)

    def wait_for(
        self,
        name: str,
        /,
        *,
        timeout: float = 10,
        since: Mark | None = None,
        **fields: Any,
    ) -> Event:
        """The first event `name` with `fields` after `since` (default: the cursor).

        The cursor then moves past it, so the next wait finds the next one (two waits for
        `pass.finished` are two passes). A field's expected value may be a predicate
        (`attempt=lambda n: n > 2`). Fails at once when the process exits first, else after
        `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            start = self._cursor if since is None else since.index
            while True:
                for event in self._events[start:]:
                    if _matches(event, name, fields):
                        self._cursor = max(self._cursor, event.index + 1)
                        return event
                start = len(self._events)
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            eof = self._eof
        wanted = f"{name} {_describe(fields)}".strip()
        code = self._exit_code_soon() if eof else self.returncode
        why = f"exited with {code}" if code is not None else f"not within {timeout}s"
        if eof and code is None:
            why = "its output was closed, yet it runs on"
        raise self._with_tail(f"no event {wanted}: {why}")

    async def wait_for_async(
        self, name: str, /, *, timeout: float = 10, since: Mark | None = None, **fields: Any
    ) -> Event:
        """`wait_for` from an async test, without blocking its event loop (a fake served
        on that loop keeps answering the agent meanwhile)."""
        return await asyncio.to_thread(
            lambda: self.wait_for(name, timeout=timeout, since=since, **fields)
        )

    def stdout(self) -> str:
        with self._changed:
            return "\n".join(line.text for line in self._lines if line.stream == "stdout")

    def stderr(self) -> str:
        with self._changed:
            return "\n".join(line.text for line in self._lines if line.stream == "stderr")

    def tail_text(self, count: int = TAIL) -> str:
        """The last `count` lines of output, canaries masked, for a failure message."""
        with self._changed:
            lines = self._lines[-count:]
            total = len(self._lines)
        code = self.returncode if self._proc else None
        state = "running" if code is None else f"exit code {code}"
        head = f"--- {self._label()} ({state}): last {len(lines)} of {total} output lines ---"
        body = [f"{line.stream[3:]}| {leaks.mask(line.text)}" for line in lines]
        return "\n".join([head, *body])

    def _label(self) -> str:
        pid = self._proc.pid if self._proc else "-"
        return f"pid {pid}: {leaks.mask(' '.join(self.argv[-3:]))}"

    def _with_tail(self, message: str) -> AgentFailure:
        return AgentFailure(f"{message}\n{self.tail_text()}")

    # --- measures ----------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far (all its threads, dead ones too;
        not its children), from /proc/PID/stat; the resolution is one clock tick (10 ms)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based)
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


def _cli_error(text: str) -> bool:
    return text.startswith("error: ")


def _matches(event: Event, name: str | None, fields: Mapping[str, Any]) -> bool:
    if name is not None and event.get("event") != name:
        return False
    for key, expected in fields.items():
        if key not in event:
            return False
        if callable(expected):
            if not expected(event[key]):
                return False
        elif event[key] != expected:
            return False
    return True


def _describe(fields: Mapping[str, Any]) -> str:
    return " ".join(f"{k}=<predicate>" if callable(v) else f"{k}={v!r}" for k, v in fields.items())


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root` (by parent pid in /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --- pytest glue (conftest.py imports these) ---------------------------------------------------


def failure_sections() -> list[tuple[str, str]]:
    """Report sections with the last lines of each process the failing test started."""
    return [(f"agent log, {p._label()}", p.tail_text()) for p in _STARTED if p._proc]


def end_of_test() -> None:
    """Kill what the test left running (processes and SIGHUP counters); forget them."""
    for process in _STARTED:
        process.kill()
    _STARTED.clear()
    stop_all()


atexit.register(end_of_test)


@pytest.fixture
def agent() -> Iterator[AgentFactory]:
    """`agent(config, *render_args, env=..., log_level=...)`: the agent started; each one is
    stopped at the end of the test, its output checked for canaries and stray lines."""
    started: list[AgentProcess] = []

    def start(
        config: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        log_level: str | None = None,
        cwd: Path | None = None,
    ) -> AgentProcess:
        process = AgentProcess.render(config, *args, env=env, log_level=log_level, cwd=cwd)
        started.append(process)
        return process.start()

    yield start
    failures = []
    for process in started:
        try:
            process.close()
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def sighup_counter(tmp_path: Path) -> Iterator[SighupCounter]:
    """A started SIGHUP counter (tests/sighup_counter.py) in tmp_path; stopped at the end."""
    with SighupCounter(tmp_path).start() as counter:
        yield counter


def pids_alive(pids: Sequence[int]) -> list[int]:
    """Which of `pids` still exist (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive
