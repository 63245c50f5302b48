"""A stand-in for a service that re-reads its config on SIGHUP, and the tests' handle on it.

    python -m tests.sighup_counter PIDFILE COUNTFILE

The process writes PIDFILE, then counts every SIGHUP (and SIGUSR1 / SIGUSR2,
so a config that sends those is seen rather than killing it) into COUNTFILE,
and exits 0 on SIGTERM or SIGINT. Stdlib only, so it starts in ~20 ms.

Why it cannot miss or double-count a signal: CPython's own C-level handler
writes one byte (the signal number) to the wakeup fd for each delivery,
while its Python-level handler only runs later and coalesces deliveries that
arrive before it does. So the count comes from those bytes, read in order
from a pipe; the Python handlers do nothing. The signal itself is blocked
only for the few microseconds the C handler runs, so the kernel coalesces
two SIGHUPs only when both are pending before the process is scheduled at
all, which no receiver can see apart. COUNTFILE is rewritten by a rename,
so a reader never sees half of it.

`SIGSYNC` (a real-time signal, which queues) is a barrier: the handle sends
it and waits until COUNTFILE shows it, and since the kernel delivers the
lower-numbered standard signals first, every SIGHUP sent before it is
counted by then. `SighupCounter.count()` does this, so a signal still in
flight cannot make "no SIGHUP" pass.

The process also exits when its parent is gone (a killed pytest), checked
every `PARENT_CHECK` seconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Self

COUNTED = {signal.SIGHUP: "HUP", signal.SIGUSR1: "USR1", signal.SIGUSR2: "USR2"}
EXIT = (signal.SIGTERM, signal.SIGINT)
SIGSYNC = signal.SIGRTMIN + 3
PARENT_CHECK = 1.0
_LIVE: list[SighupCounter] = []
"""Counters started and not yet stopped (the end of each test stops what a test left)."""


# --- the process -------------------------------------------------------------------------------


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """A Python-level handler must exist for the C-level one (and its wakeup byte) to run."""


def serve(pidfile: Path, countfile: Path) -> int:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # set_wakeup_fd insists; 64 KiB of bytes is plenty
    for signum in (*COUNTED, *EXIT, SIGSYNC):
        signal.signal(signum, _ignore)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=True)
    state: dict[str, Any] = {
        "pid": os.getpid(),
        "counts": dict.fromkeys(COUNTED.values(), 0),
        "at": [],
        "syncs": 0,
    }
    _write_atomically(countfile, json.dumps(state))
    _write_atomically(pidfile, f"{os.getpid()}\n")  # last: a signal from now on is counted
    parent = os.getppid()
    while True:
        ready, _, _ = select.select([read_end], [], [], PARENT_CHECK)
        if not ready:
            if os.getppid() != parent:
                return 0
            continue
        stop = False
        now = time.monotonic()
        for signum in os.read(read_end, 4096):
            if signum in COUNTED:
                state["counts"][COUNTED[signal.Signals(signum)]] += 1
                if signum == signal.SIGHUP:
                    state["at"].append(now)
            elif signum == SIGSYNC:
                state["syncs"] += 1
            elif signum in EXIT:
                stop = True
                break  # what came after the stop signal is not counted
        _write_atomically(countfile, json.dumps(state))
        if stop:
            return 0


# --- the tests' handle -------------------------------------------------------------------------


class SighupCounter:
    """One counter process: `pidfile` for an on_change action, and its counts.

    A context manager; `stop()` (SIGTERM, then SIGKILL) runs on exit whatever happened.
    """

    def __init__(self, folder: Path, name: str = "service") -> None:
        self.pidfile = folder / f"{name}.pid"
        self.countfile = folder / f"{name}.count"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the counter was not started"
        return self._proc.pid

    def start(self, timeout: float = 10) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(self.pidfile), str(self.countfile)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the test run is not one of its signals
        )
        _LIVE.append(self)
        deadline = time.monotonic() + timeout
        while not self.pidfile.exists():
            code = self._proc.poll()
            if code is not None:
                raise AssertionError(f"the SIGHUP counter exited with {code} before its pidfile")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the SIGHUP counter wrote no pidfile within {timeout}s")
            time.sleep(0.005)
        assert str(self.pid) == self.pidfile.read_text().strip()
        return self

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.countfile.read_text())
        return state

    def count_now(self, name: str = "HUP") -> int:
        """What the file says now: a signal sent a moment ago may not be in it yet."""
        return int(self._state()["counts"][name])

    def counts(self, timeout: float = 5) -> dict[str, int]:
        """Every counted signal by name, once all signals sent before this call are in."""
        self.sync(timeout)
        return dict(self._state()["counts"])

    def count(self, name: str = "HUP", timeout: float = 5) -> int:
        """SIGHUPs (or `name`) received, once all signals sent before this call are counted."""
        return self.counts(timeout)[name]

    def times(self) -> list[float]:
        """time.monotonic() (the system-wide clock) when each SIGHUP was counted."""
        self.sync()
        return [float(at) for at in self._state()["at"]]

    def sync(self, timeout: float = 5) -> None:
        """Wait until every signal sent to the counter before this call is counted."""
        self._check_alive()
        before = int(self._state()["syncs"])
        os.kill(self.pid, SIGSYNC)
        deadline = time.monotonic() + timeout
        while int(self._state()["syncs"]) <= before:
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"the SIGHUP counter did not answer a sync in {timeout}s")
            time.sleep(0.002)

    def wait_count(self, n: int, timeout: float = 5, name: str = "HUP") -> None:
        """Wait until exactly `n` SIGHUPs (or `name`) were counted; more is a failure at once."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.count_now(name)
            if seen > n:
                raise AssertionError(f"expected {n} SIG{name}, got {seen}")
            if seen == n:
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} SIG{name} within {timeout}s, got {seen}")
            time.sleep(0.005)

    async def wait_count_async(self, n: int, timeout: float = 5, name: str = "HUP") -> None:
        """`wait_count` from an async test, without blocking its event loop."""
        import asyncio  # here: the counter process itself must start fast

        await asyncio.to_thread(self.wait_count, n, timeout, name)

    def _check_alive(self) -> None:
        assert self._proc is not None, "the counter was not started"
        code = self._proc.poll()
        if code is not None:
            raise AssertionError(f"the SIGHUP counter is not running (it exited with {code})")

    def stop(self, timeout: float = 5) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was never started)."""
        proc = self._proc
        if proc is None:
            return None
        if self in _LIVE:
            _LIVE.remove(self)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


def pending(pid: int, signum: int) -> bool:
    """Whether `signum` is pending for process `pid` (sent and not yet delivered)."""
    bit = 1 << (signum - 1)
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
                return True
    return False


def stop_all() -> None:
    """Stop every counter still running (a test that started one outside a `with`)."""
    for counter in list(_LIVE):
        counter.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.sighup_counter PIDFILE COUNTFILE")
    sys.exit(serve(Path(sys.argv[1]), Path(sys.argv[2])))
