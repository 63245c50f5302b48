"""sd_notify: messages as systemd reads them, on a real socket the test binds."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from smagent.logging import REDACTOR
from smagent.notify import STATUS_MAX, Notifier
from tests.conftest import CANARY, assert_no_canary
from tests.notify_listener import NotifyListener

ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    with NotifyListener(tmp_path) as listening:
        yield listening


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_each_message_reaches_the_socket_as_systemd_reads_it(
    tmp_path: Path, abstract: bool
) -> None:
    """ready, status, reloading, stopping and ping send their KEY=VALUE lines, from our pid."""
    with NotifyListener(tmp_path, abstract=abstract) as listening:
        notifier = Notifier(listening.path)
        notifier.ready("3 templates current")
        notifier.status("pass finished")
        notifier.reloading()
        notifier.ready("reloaded")
        notifier.ping()
        notifier.stopping()
        listening.wait_for("STOPPING")
        notifier.close()
        records = listening.records()
    fields = [record.fields for record in records]
    assert {"READY": "1", "STATUS": "3 templates current"} == fields[0]
    assert {"STATUS": "pass finished"} == fields[1]
    assert ["RELOADING", "MONOTONIC_USEC"] == list(fields[2])
    assert {"READY": "1", "STATUS": "reloaded"} == fields[3]
    assert [{"WATCHDOG": "1"}, {"STOPPING": "1"}] == fields[4:]
    assert {os.getpid()} == {record.pid for record in records}


def test_reloading_carries_the_monotonic_clock_in_microseconds(listener: NotifyListener) -> None:
    """MONOTONIC_USEC is CLOCK_MONOTONIC at the time of sending, in microseconds."""
    notifier = Notifier(listener.path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.close()
    sent = int(listener.wait_for("RELOADING", "1")["MONOTONIC_USEC"])
    assert before <= sent <= after


def test_status_is_one_line_bounded_and_scrubbed(listener: NotifyListener) -> None:
    """STATUS= holds no newline or control character, is capped, and masks known secrets."""
    REDACTOR.add(CANARY)
    notifier = Notifier(listener.path)
    notifier.status("line one\nline two\r\n\tthree\x1b[31m")
    notifier.status("x" * 10_000)
    notifier.ready(f"token {CANARY} failed")
    notifier.close()
    listener.wait_for("READY")
    statuses = [fields["STATUS"] for _, fields in listener.messages()]
    assert "line one line two   three [31m" == statuses[0]
    assert STATUS_MAX == len(statuses[1])
    assert "token <redacted> failed" == statuses[2]
    assert_no_canary(*(record.raw.decode() for record in listener.records()))


@pytest.mark.parametrize(
    ("env", "enabled", "interval"),
    [
        ({}, False, None),
        ({"NOTIFY_SOCKET": ""}, False, None),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, False, None),
        ({"WATCHDOG_USEC": "2000000"}, False, None),
        ({"NOTIFY_SOCKET": "SOCKET"}, True, None),
        ({"NOTIFY_SOCKET": "SOCKET", "WATCHDOG_USEC": "2000000"}, True, 1.0),
        (
            {"NOTIFY_SOCKET": "SOCKET", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OURS"},
            True,
            15,
        ),
        ({"NOTIFY_SOCKET": "SOCKET", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, True, None),
        ({"NOTIFY_SOCKET": "SOCKET", "WATCHDOG_USEC": "soon"}, True, None),
        ({"NOTIFY_SOCKET": "SOCKET", "WATCHDOG_USEC": "0"}, True, None),
        ({"NOTIFY_SOCKET": "SOCKET", "WATCHDOG_USEC": "-5"}, True, None),
    ],
    ids=[
        "unset",
        "empty socket",
        "vsock",
        "watchdog without socket",
        "no watchdog",
        "watchdog",
        "watchdog for our pid",
        "watchdog for another pid",
        "watchdog not a number",
        "watchdog zero",
        "watchdog negative",
    ],
)
def test_from_environment_follows_sd_watchdog_enabled(
    clean_env: pytest.MonkeyPatch,
    listener: NotifyListener,
    env: dict[str, str],
    enabled: bool,
    interval: float | None,
) -> None:
    """What systemd passed decides enabled and the ping interval (half of WATCHDOG_USEC)."""
    for key, value in env.items():
        value = value.replace("SOCKET", listener.path).replace("OURS", str(os.getpid()))
        clean_env.setenv(key, value)
    notifier = Notifier.from_environment()
    assert enabled == notifier.enabled
    assert interval == notifier.watchdog_interval
    assert [] == [key for key in ENV_KEYS if key in os.environ]
    notifier.close()


async def test_a_disabled_notifier_does_nothing(clean_env: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET every call is a no-op and watchdog() returns at once."""
    notifier = Notifier.from_environment()
    notifier.ready("x")
    notifier.status("x")
    notifier.reloading()
    notifier.ping()
    notifier.stopping()
    await asyncio.wait_for(notifier.watchdog(), timeout=1)
    notifier.close()
    assert not notifier.enabled


def test_children_inherit_none_of_the_variables(
    clean_env: pytest.MonkeyPatch, listener: NotifyListener
) -> None:
    """After from_environment, a command we start cannot speak to systemd in our name."""
    clean_env.setenv("NOTIFY_SOCKET", listener.path)
    clean_env.setenv("WATCHDOG_USEC", "1000000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print([os.environ.get(k) for k in {ENV_KEYS!r}])"],
        capture_output=True,
        text=True,
        check=True,
    )
    notifier.close()
    assert "[None, None, None]" == child.stdout.strip()


async def test_watchdog_pings_at_its_interval(listener: NotifyListener) -> None:
    """watchdog() pings at once, then every watchdog_interval, until cancelled."""
    notifier = Notifier(listener.path, watchdog_usec=100_000)
    assert 0.05 == notifier.watchdog_interval
    started = time.monotonic()
    task = asyncio.create_task(notifier.watchdog())
    pings = await asyncio.to_thread(listener.wait_count, "WATCHDOG", 5, 10.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()
    assert pings[0] - started < 0.5
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert min(gaps) >= 0.04, gaps  # not a busy loop


def test_a_gone_socket_neither_raises_nor_floods_the_log(tmp_path: Path) -> None:
    """Sends to a vanished socket fail quietly, logged once; a socket back is used again."""
    name = "@smagent-test-gone-" + str(os.getpid())
    first = NotifyListener(tmp_path, path=name)
    notifier = Notifier(first.path)
    notifier.status("one")
    first.wait_for("STATUS", "one")
    first.close()
    with capture_logs() as logs:
        for _ in range(5):
            notifier.ping()
            notifier.status("while gone")
        with NotifyListener(tmp_path, path=name) as second:
            notifier.status("back")
            second.wait_for("STATUS", "back")
    notifier.close()
    assert ["notify.failed", "notify.recovered"] == [log["event"] for log in logs]
    assert "debug" == logs[0]["log_level"]


def test_a_full_queue_never_blocks() -> None:
    """A manager that does not read: sends return at once (dropped), one debug line."""
    name = f"smagent-test-deaf-{os.getpid()}"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind("\0" + name)
    notifier = Notifier("@" + name)
    started = time.monotonic()
    with capture_logs() as logs:
        for _ in range(20_000):
            notifier.ping()
    elapsed = time.monotonic() - started
    notifier.close()
    deaf.close()
    assert elapsed < 5, elapsed
    assert ["notify.failed"] == [log["event"] for log in logs]


BLOCKED_LOOP = """
import asyncio, sys, time
from smagent.notify import Notifier

async def main():
    notifier = Notifier.from_environment()
    watchdog = asyncio.create_task(notifier.watchdog())
    await asyncio.sleep(0.4)
    notifier.status("blocking")
    time.sleep(float(sys.argv[1]))  # a blocking call wedges the event loop
    notifier.status("unblocked")
    await asyncio.sleep(0.4)
    notifier.stopping()
    watchdog.cancel()

asyncio.run(main())
"""


def test_pings_stop_while_the_loop_is_blocked_and_resume_after(
    listener: NotifyListener, clean_env: pytest.MonkeyPatch
) -> None:
    """A process whose event loop is blocked sends no WATCHDOG=1 until the loop turns again."""
    blocked = 1.0
    env = {**os.environ, **listener.env, "WATCHDOG_USEC": "100000"}
    child = subprocess.Popen([sys.executable, "-c", BLOCKED_LOOP, str(blocked)], env=env)
    try:
        assert 0 == child.wait(timeout=30)
    finally:
        child.kill()
    listener.wait_for("STOPPING")
    (block_start,) = listener.times("STATUS", "blocking")
    (block_end,) = listener.times("STATUS", "unblocked")
    pings = listener.times("WATCHDOG")
    before = [t for t in pings if t < block_start]
    during = [t for t in pings if block_start <= t < block_end]
    after = [t for t in pings if t >= block_end]
    assert [] == during
    assert block_end - block_start >= blocked * 0.9
    assert len(before) >= 3, pings
    assert len(after) >= 3, pings
    assert after[0] - block_end < 0.2
    assert {child.pid} == {record.pid for record in listener.records()}


def test_no_pings_when_the_watchdog_is_meant_for_another_process(
    listener: NotifyListener, clean_env: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_PID naming another process: the child sends its messages but never WATCHDOG=1."""
    env = {**os.environ, **listener.env, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    subprocess.run([sys.executable, "-c", BLOCKED_LOOP, "0.1"], env=env, check=True, timeout=30)
    listener.wait_for("STOPPING")
    assert [] == listener.times("WATCHDOG")
