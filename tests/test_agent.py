"""`smagent render`, the long-running agent, end to end: a real subprocess, real signals.

Each test starts the agent (tests/agent_process.py) on a config of real files
(tests/agent_config.py) with the file provider and a short refresh, changes
secrets the way a deploy does (a rename over the secrets file), and watches
what a service would see: the destination files and the SIGHUPs a counter
process receives (tests/sighup_counter.py). Every value the tests write is a
canary: the harness fails a test whose agent logged one.

Nothing here sleeps for an event that can be awaited: log events, SIGHUP
counts, files appearing, and the file provider's own looks at the secrets
file (inotify IN_OPEN, `Opens`), which tell that refresh cycles did happen
when a test checks that they changed nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from smagent.config import CommandAction, Duration
from smagent.pending import MAX_RETRY, Journal, Ledger
from smagent.state import PENDING_DIR, STATUS_FILE
from tests import leaks
from tests.agent_config import AgentWorkspace, hup
from tests.agent_process import AgentFactory, AgentProcess, Mark, pids_alive
from tests.sighup_counter import SighupCounter

REFRESH = "300ms"
REFRESH_S = 0.3
ROTATION_BUDGET = REFRESH_S + 1.0
"""A rotation must reach the file and its service within refresh + 1 s."""
START = 30.0
"""Seconds an agent may take to be ready on two loaded cores."""

IN_OPEN = 0x20
FROM_START = Mark(0, 0.0)
"""`since=FROM_START`: an event logged at any time (order between concurrent steps is free)."""


def fresh(label: str) -> str:
    """A new secret value, planted as a canary: no agent log line may hold it."""
    return leaks.plant(f"canary-{label}-{secrets.token_hex(5)}", f"ROTATED_{label}")


def workspace(tmp_path: Path, refresh: str = REFRESH) -> AgentWorkspace:
    ws = AgentWorkspace.with_canaries(tmp_path, refresh=refresh)
    ws.secrets["other"] = {"key": fresh("other")}
    ws.namespace("other", secret="other")
    return ws


def start(agent: AgentFactory, ws: AgentWorkspace, *args: str) -> AgentProcess:
    """The agent on `ws` (written first), once its first pass is done."""
    ws.write()
    process = agent(ws.config_path, *args)
    process.wait_for("agent.ready", timeout=START)
    return process


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    """argv running a small Python program (an on_change command)."""
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return [sys.executable, "-I", "-S", str(path)]


def command(argv: list[str], timeout: str = "10s") -> dict[str, Any]:
    return {"command": argv, "timeout": timeout}


def is_command(label: str) -> bool:
    """An `action` field naming a command action (not a signal)."""
    return label.startswith("command ")


def signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def pending_records(ws: AgentWorkspace) -> list[str]:
    assert ws.state_dir is not None
    folder = ws.state_dir / PENDING_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def status(ws: AgentWorkspace) -> dict[str, Any]:
    assert ws.state_dir is not None
    data: dict[str, Any] = json.loads((ws.state_dir / STATUS_FILE).read_text())
    return data


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` (a file appearing, a state file saying so) until true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)


class Opens:
    """Counts the opens of one file (inotify IN_OPEN): each is one look of the file provider
    at its secrets file, so a test can await refresh cycles instead of sleeping through them.
    The watch is on the file's inode: make one after the last rename over the file."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(path), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")
        self.seen = 0

    def wait(self, n: int, timeout: float) -> float:
        """Wait until `n` more opens happened; the seconds it took."""
        started = time.monotonic()
        wanted = self.seen + n
        while self.seen < wanted:
            left = started + timeout - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.seen - wanted + n} of {n} looks within {timeout}s")
            if select.select([self.fd], [], [], left)[0]:
                data = os.read(self.fd, 4096)
                offset = 0
                while offset < len(data):
                    _wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                    offset += 16 + size
                    self.seen += bool(mask & IN_OPEN)
        return time.monotonic() - started

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def opens(path: Path) -> Iterator[Opens]:
    watch = Opens(path)
    try:
        yield watch
    finally:
        watch.close()


# --- refresh and rotation ---------------------------------------------------------------------


def test_a_rotation_reaches_the_file_with_exactly_one_sighup_within_refresh_plus_1s(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """A rotated secret is in the file, and its service got one SIGHUP, within refresh + 1 s."""
    ws = workspace(tmp_path)
    out = ws.contents(
        "out/userlist.txt", '"app" "{{ secrets.db.password }}"\n', on_change=[hup(sighup_counter)]
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    for round_number in (1, 2):
        new = fresh(f"rotation{round_number}")
        rotated_at = time.monotonic()
        ws.rotate("prod/db", new, "password")
        sighup_counter.wait_count(1 + round_number, timeout=10)
        took = sighup_counter.times()[-1] - rotated_at
        assert f'"app" "{new}"\n' == out.read_text()
        assert took < ROTATION_BUDGET, f"the SIGHUP came {took:.2f}s after the rotation"
        with opens(ws.secrets_path) as looks:  # two more checks: no late second SIGHUP
            looks.wait(2, timeout=10 * REFRESH_S)
        assert 1 + round_number == sighup_counter.count()
    assert process.alive()


def test_two_templates_feeding_one_service_give_one_sighup_per_rotation(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """Two files of one service, rewritten in one pass, give it one SIGHUP (the same action)."""
    ws = workspace(tmp_path)
    a = ws.contents("out/a.conf", "pw={{ secrets.db.password }}\n", on_change=[hup(sighup_counter)])
    b = ws.contents(
        "out/b.conf",
        'user={{ secrets.db.username }} token={{ secrets.store["api-token"] }}\n',
        on_change=[hup(sighup_counter)],
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)  # the first pass wrote both: one SIGHUP
    password, user, token = fresh("pw"), fresh("user"), fresh("token")
    steps: list[tuple[str, Callable[[], None], int]] = [
        ("one field of the shared secret", lambda: ws.rotate("prod/db", password, "password"), 1),
        (
            "two fields, one in each file",
            lambda: ws.rotate("prod/db", {**ws.secrets["prod/db"], "username": user}),
            1,
        ),
        ("two secrets, one in each file", lambda: _two_secrets(ws, fresh("pw2"), token), 2),
    ]
    for count, (step, change, written) in enumerate(steps, start=2):
        mark = process.mark()
        change()
        process.wait_for("pass.finished", timeout=10)
        sighup_counter.wait_count(count, timeout=ROTATION_BUDGET)
        process.wait_for("action.ran", since=mark)
        # both written by one pass (b, when it changed too), and no further pass meant for it
        assert count == sighup_counter.count(), step
        assert written <= len(process.events("template.rendered", since=mark)), step
        assert 1 == len(process.events("action.ran", since=mark)), step
    assert f"pw={ws.secrets['prod/db']['password']}\n" == a.read_text()
    assert f"user={user} token={token}\n" == b.read_text()


def _two_secrets(ws: AgentWorkspace, password: str, token: str) -> None:
    """Rotate two secrets with one rename of the secrets file."""
    ws.secrets["prod/db"]["password"] = password
    ws.secrets["api-token"] = token
    ws.write_secrets()


def test_unchanged_values_write_nothing_and_signal_nothing(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """Refresh cycles, a secrets file rewritten with only an unused secret changed, and a
    rotation of a field the template does not read leave the file untouched (same inode,
    mtime and ctime) and send no SIGHUP."""
    ws = workspace(tmp_path)
    out = ws.contents(
        "out/user.conf", "user={{ secrets.db.username }}\n", on_change=[hup(sighup_counter)]
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    before = signature(out)
    mark = process.mark()
    with opens(ws.secrets_path) as looks:
        took = looks.wait(4, timeout=20 * REFRESH_S)  # four refresh cycles
    assert took < 4 * REFRESH_S + 2, f"four refresh checks took {took:.1f}s"
    ws.rotate("api-token", fresh("unused"))  # the file changes; the secret we use does not
    with opens(ws.secrets_path) as looks:
        looks.wait(2, timeout=20 * REFRESH_S)  # seen by the watcher, then at the next refresh
    assert [] == process.events("pass.finished", since=mark)
    assert [] == process.events("secret.rotated", since=mark)
    ws.rotate("prod/db", fresh("unread"), "password")  # the secret changes, the file's text not
    process.wait_for("secret.rotated", timeout=10)
    finished = process.wait_for("pass.finished", timeout=10)
    assert 1 == finished.get("unchanged")
    assert "written" not in finished
    assert before == signature(out)
    assert 1 == sighup_counter.count()


# --- quiescence ---------------------------------------------------------------------------------


def test_two_rotations_inside_wait_min_give_one_write_and_one_sighup(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """`wait.min`: a second change within min of the first is folded into one write, one SIGHUP,
    written no sooner than min after the last change."""
    ws = workspace(tmp_path)
    ws.defaults["wait"] = {"min": "1s", "max": "4s"}
    out = ws.contents(
        "out/db.conf", "pw={{ secrets.db.password }}\n", on_change=[hup(sighup_counter)]
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    mark = process.mark()
    ws.rotate("prod/db", fresh("first"), "password")
    first = process.wait_for("secret.rotated", timeout=10)
    last = fresh("second")
    ws.rotate("prod/db", last, "password")
    second = process.wait_for("secret.rotated", timeout=10)
    written = process.wait_for("template.rendered", timeout=10)
    process.wait_for("pass.finished")
    assert second.at - first.at < 1.0, "the two changes were not inside min; the test is void"
    assert written.at - second.at >= 1.0 - 0.05, "written before min of quiet"
    sighup_counter.wait_count(2)
    with opens(ws.secrets_path) as looks:
        looks.wait(2, timeout=20 * REFRESH_S)
    assert 2 == sighup_counter.count()
    assert 1 == len(process.events("template.rendered", since=mark))
    assert f"pw={last}\n" == out.read_text()


def test_wait_max_bounds_the_delay_under_a_stream_of_changes(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """`wait.max`: changes that never stop for `min` are still written at most max after the
    first one, and each such write gets one SIGHUP."""
    ws = workspace(tmp_path)
    ws.defaults["wait"] = {"min": "1s", "max": "2s"}
    out = ws.contents(
        "out/db.conf", "pw={{ secrets.db.password }}\n", on_change=[hup(sighup_counter)]
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    mark = process.mark()
    first_change = time.monotonic()
    stream_end = first_change + 4.5
    while time.monotonic() < stream_end:  # a change every 0.3 s: never min (1 s) of quiet
        last = fresh("stream")
        ws.rotate("prod/db", last, "password")
        time.sleep(0.3)
    written = process.events("template.rendered", since=mark)
    assert written, "nothing written during 4.5 s of changes: max did not bound the wait"
    delay = written[0].at - first_change
    assert delay < 2.0 + 1.0, f"the first write came {delay:.2f}s after the first change"
    assert delay >= 2.0 - 0.05, f"the first write came after {delay:.2f}s, before max"
    until(lambda: f"pw={last}\n" == out.read_text(), 10, "the last change written, once quiet")
    assert 0 == process.stop()  # all logged; what the last write owes is run before the exit
    rendered = len(process.events("template.rendered", since=mark))
    assert 1 + rendered == sighup_counter.count()  # one SIGHUP per write, no more


# --- actions that fail, hang, or are cut short ----------------------------------------------------

FLAKY = """
import os, sys
marker, runs = sys.argv[1:3]
if not os.path.exists(marker):
    sys.exit(1)
with open(runs, "a") as handle:
    handle.write("ran\\n")
"""


def test_a_failing_command_is_retried_with_backoff_and_holds_up_nothing(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """A command action that exits 1 is logged with its attempt and backoff and retried, while
    other templates and actions go on; once it succeeds it runs once and is no longer owed."""
    ws = workspace(tmp_path)
    marker, runs = tmp_path / "fixed", tmp_path / "runs"
    flaky = [*script(tmp_path, "flaky", FLAKY), str(marker), str(runs)]
    ws.contents("out/a.conf", "pw={{ secrets.db.password }}\n", on_change=[command(flaky)])
    b = ws.contents("out/b.conf", "key={{ secrets.other.key }}\n", on_change=[hup(sighup_counter)])
    ws.write()
    process = agent(ws.config_path)
    failed = [process.wait_for("action.failed", timeout=START)]
    process.wait_for("agent.ready", since=FROM_START)
    sighup_counter.wait_count(1)
    # another template's rotation: written and signalled on time, the failing action aside
    new = fresh("b")
    rotated_at = time.monotonic()
    ws.rotate("other", new, "key")
    sighup_counter.wait_count(2, timeout=10)
    assert sighup_counter.times()[-1] - rotated_at < ROTATION_BUDGET
    assert f"key={new}\n" == b.read_text()
    failed.append(process.wait_for("action.failed", timeout=10, attempt=lambda n: n >= 2))
    for event in failed:
        assert "exited with status 1" == event["error"]
        assert min(MAX_RETRY, 2.0 ** (event["attempt"] - 1)) == event["retry_in"], event
    assert [1, 2] == [event["attempt"] for event in failed]
    marker.touch()
    ran = process.wait_for("action.ran", timeout=10, action=is_command)
    assert ran.at - failed[-1].at >= failed[-1]["retry_in"] - 0.05, "retried before its backoff"
    assert ["ran"] == runs.read_text().split()
    until(lambda: [] == status(ws)["pending_actions"], 5, "the action no longer owed")
    # no longer retried: the next change runs it once more, and only then
    mark = process.mark()
    ws.rotate("prod/db", fresh("a"), "password")
    process.wait_for("action.ran", timeout=10, action=is_command)
    assert ["ran", "ran"] == runs.read_text().split()
    assert [] == process.events("action.failed", since=mark)
    assert process.alive()


async def test_the_backoff_of_a_failing_action_is_capped() -> None:
    """Each failure doubles the wait before the next try, up to MAX_RETRY and no further."""
    ledger = Ledger()
    action = CommandAction(command=["false"], timeout=Duration(5))
    ledger.add([action], None)
    waits = []
    for _ in range(12):
        await ledger.run()
        (owed,) = ledger.owed.values()
        waits.append(round(owed.next_try - time.monotonic()))
    assert [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300] == waits
    assert 300 == MAX_RETRY


async def test_two_runners_of_one_ledger_run_each_action_once_and_settle_its_record(
    tmp_path: Path,
) -> None:
    """A pass and the retry loop running the ledger at once (as at a start with actions left by
    a dead agent): each action runs once, nothing crashes, and the record is removed."""
    (tmp_path / "pending").mkdir()
    journal = Journal(tmp_path / "pending", tmp_path / "smagent.yaml")
    for trial in range(20):
        runs = [tmp_path / f"runs-{trial}-{n}" for n in range(3)]
        actions = [
            CommandAction(command=["sh", "-c", f"echo x >> {path}"], timeout=Duration(5))
            for path in runs
        ]
        record = await journal.record(actions, ["t"])
        assert record is not None
        ledger = Ledger()
        ledger.add(actions, record)
        keys = list(ledger.owed)
        await asyncio.gather(ledger.run(keys), ledger.run(keys[::-1]), ledger.run(keys[1:]))
        assert [["x"]] * 3 == [path.read_text().split() for path in runs], trial
        assert {} == ledger.owed
        assert not record.path.exists()
        assert [] == sorted(os.listdir(tmp_path / "pending"))


HANG = """
import os, subprocess, sys, time
flag, pids = sys.argv[1:3]
if os.path.exists(flag):
    child = subprocess.Popen(["sleep", "60"])  # in the command's process group
    with open(pids, "a") as handle:
        handle.write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(60)
"""


def test_a_hanging_command_is_killed_at_its_timeout_with_its_process_group(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """A command past its timeout is killed with every process of its group (no orphan), the
    other actions of the pass still run, and its retry runs once it no longer hangs."""
    ws = workspace(tmp_path)
    flag, pids = tmp_path / "hang", tmp_path / "pids"
    flag.touch()
    hang = [*script(tmp_path, "hang", HANG), str(flag), str(pids)]
    ws.contents(
        "out/h.conf",
        "pw={{ secrets.db.password }}\n",
        on_change=[command(hang, timeout="1s"), hup(sighup_counter)],
    )
    ws.write()
    process = agent(ws.config_path)
    failed = process.wait_for("action.failed", timeout=START)
    assert "timed out after 1s and was killed" == failed["error"]
    stuck = [int(pid) for pid in pids.read_text().split()]
    assert 2 == len(stuck)
    until(lambda: [] == pids_alive(stuck), 2, f"the command's group {stuck} killed")
    process.wait_for("agent.ready", since=FROM_START)
    sighup_counter.wait_count(1)  # the pass's other action ran all the same
    flag.unlink()
    process.wait_for("action.ran", action=is_command, timeout=10)
    assert 1 == sighup_counter.count()
    assert 2 == len(pids.read_text().split())  # only the first try hung


def test_an_action_that_hangs_does_not_hold_up_other_templates(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """While one file's action hangs (until its timeout), a rotation of another template still
    reaches its file and its service within refresh + 1 s."""
    ws = workspace(tmp_path)
    flag, pids = tmp_path / "hang", tmp_path / "pids"
    hang = [*script(tmp_path, "hang", HANG), str(flag), str(pids)]
    ws.contents(
        "out/h.conf", "pw={{ secrets.db.password }}\n", on_change=[command(hang, timeout="3s")]
    )
    other = ws.contents(
        "out/o.conf", "key={{ secrets.other.key }}\n", on_change=[hup(sighup_counter)]
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    flag.touch()
    ws.rotate("prod/db", fresh("hang"), "password")
    until(pids.exists, 10, "the action hanging")
    new = fresh("other")
    rotated_at = time.monotonic()
    ws.rotate("other", new, "key")
    sighup_counter.wait_count(2, timeout=10)
    took = sighup_counter.times()[-1] - rotated_at
    assert f"key={new}\n" == other.read_text()
    assert took < ROTATION_BUDGET, f"the other service's SIGHUP came {took:.2f}s after"
    flag.unlink()
    process.wait_for("action.failed", timeout=10)


# --- crashes and stops ----------------------------------------------------------------------------

KILLER = """
import os, signal, sys
if os.path.exists(sys.argv[1]):
    os.kill(os.getppid(), signal.SIGKILL)  # the agent dies after the rename, before the SIGHUP
"""


@pytest.mark.parametrize("restart", ["agent", "render --once"])
def test_sigkill_between_the_rename_and_the_action_then_a_restart_runs_it_once(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter, restart: str
) -> None:
    """A file replaced whose action had not run when the agent was SIGKILLed gets its action
    at the next start (agent or render --once), exactly once."""
    ws = workspace(tmp_path)
    marker = tmp_path / "kill"
    killer = [*script(tmp_path, "killer", KILLER), str(marker)]
    out = ws.contents(
        "out/userlist.txt",
        '"app" "{{ secrets.db.password }}"\n',
        on_change=[command(killer), hup(sighup_counter)],
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    marker.touch()
    new = fresh("killed")
    ws.rotate("prod/db", new, "password")
    assert -signal.SIGKILL == process.wait(timeout=10)
    assert f'"app" "{new}"\n' == out.read_text()  # renamed into place ...
    assert 1 == sighup_counter.count()  # ... and its service not told
    assert 1 == len(pending_records(ws))
    marker.unlink()
    if restart == "agent":
        again = start(agent, ws)
        adopted = [e for e in again.all_events() if e["event"] == "pending.adopted"]
        assert [2] == [e["actions"] for e in adopted]
        sighup_counter.wait_count(2, timeout=10)
        for label in ("command ", "signal HUP"):  # both settled before the stop
            again.wait_for(
                "action.ran", since=FROM_START, action=lambda a, x=label: a.startswith(x)
            )
        assert 0 == again.stop()
    else:
        assert 0 == agent(ws.config_path, "--once").wait(timeout=START)
    assert 2 == sighup_counter.count()
    assert [] == pending_records(ws)
    assert f'"app" "{new}"\n' == out.read_text()


SLOW = """
import os, sys, time
flag, started, finished = sys.argv[1:4]
if os.path.exists(flag):
    open(started, "w").close()
    time.sleep(2)
    open(finished, "w").close()
"""


def test_sigterm_during_a_slow_action_finishes_the_step_then_exits_0(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """SIGTERM while an action runs: that action and the rest of its step finish, nothing is
    left owed, then the agent exits 0 at once."""
    ws = workspace(tmp_path)
    flag, began, finished = tmp_path / "slow", tmp_path / "began", tmp_path / "finished"
    slow = [*script(tmp_path, "slow", SLOW), str(flag), str(began), str(finished)]
    ws.contents(
        "out/db.conf",
        "pw={{ secrets.db.password }}\n",
        on_change=[command(slow), hup(sighup_counter)],
    )
    process = start(agent, ws)
    sighup_counter.wait_count(1)
    flag.touch()
    mark = process.mark()
    ws.rotate("prod/db", fresh("slow"), "password")
    until(began.exists, 10, "the slow action started")
    sent = time.monotonic()
    assert 0 == process.stop(signal.SIGTERM, timeout=10)
    took = time.monotonic() - sent
    assert finished.exists(), "the action in progress was cut short"
    assert 2 == sighup_counter.count(), "the step's next action did not run"
    assert [] == pending_records(ws)
    assert took < 2.0 + 1.0, f"exit {took:.2f}s after SIGTERM"
    names = [e["event"] for e in process.events(since=mark)]
    assert names.index("agent.stopping") < names.index("action.ran")
    assert "agent.stopped" == names[-1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_idle_agent_exits_0_within_1s_of_sigterm_or_sigint(
    agent: AgentFactory, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT to an idle agent: exit 0 within a second, its status saying stopped."""
    ws = workspace(tmp_path)
    ws.contents("out/db.conf", "pw={{ secrets.db.password }}\n")
    process = start(agent, ws)
    sent = time.monotonic()
    assert 0 == process.stop(signum, timeout=10)
    took = time.monotonic() - sent
    assert took < 1.0, f"exit {took:.2f}s after {signum.name}"
    assert signum.name == process.events("agent.stopping", since=None)[0]["signal"]
    assert status(ws)["stopped_at"] is not None


# --- idle cost and unwritable folders ------------------------------------------------------------

IDLE_SECONDS = 10.0


def test_an_idle_agent_uses_almost_no_cpu(agent: AgentFactory, tmp_path: Path) -> None:
    """With a few templates and refresh 1h, the agent uses under 2 % of one core while idle."""
    ws = workspace(tmp_path, refresh="1h")
    for number in range(4):
        ws.contents(f"out/t{number}.conf", "{{ secrets.db.password }} {{ secrets.other.key }}\n")
    process = start(agent, ws)
    before, began = process.cpu_seconds(), time.monotonic()
    time.sleep(IDLE_SECONDS)  # the figure is the CPU used over a span of doing nothing
    used, span = process.cpu_seconds() - before, time.monotonic() - began
    share = used / span
    print(f"idle CPU: {used:.2f} s over {span:.1f} s = {100 * share:.2f} % of one core")
    assert share < 0.02
    assert process.alive()


@contextmanager
def unwritable(folder: Path) -> Iterator[Callable[[], None]]:
    """`folder`, which nobody can write to (root too: immutable), until the callable given
    is called (or the block ends)."""
    folder.mkdir()
    immutable = os.geteuid() == 0  # root writes whatever the mode
    if (
        immutable
        and subprocess.run(
            ["chattr", "+i", str(folder)], check=False, capture_output=True
        ).returncode
    ):
        pytest.skip("chattr +i is not available here")
    if not immutable:
        folder.chmod(0o555)

    def undo() -> None:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)

    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            undo()

    try:
        yield release
    finally:
        release()


def test_a_destination_folder_not_writable_at_first_is_retried_until_written(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """A template whose folder cannot be written is retried, and written (and signalled) once
    it can be; the other templates are current all along."""
    ws = workspace(tmp_path)
    locked = ws.contents(
        "locked/app.conf", "pw={{ secrets.db.password }}\n", on_change=[hup(sighup_counter)]
    )
    free = ws.contents("out/free.conf", "key={{ secrets.other.key }}\n")
    with unwritable(tmp_path / "locked") as release:
        process = agent(ws.write())
        process.wait_for("template.failed", template="app.conf", timeout=START)
        process.wait_for("agent.ready")
        assert f"key={ws.secrets['other']['key']}\n" == free.read_text()
        new = fresh("free")
        ws.rotate("other", new, "key")
        until(lambda: f"key={new}\n" == free.read_text(), ROTATION_BUDGET, "the free file current")
        assert not locked.exists()
        mark = process.mark()
        release()
        process.wait_for("template.rendered", template="app.conf", timeout=10)
    sighup_counter.wait_count(1)
    assert f"pw={ws.secrets['prod/db']['password']}\n" == locked.read_text()
    process.wait_for("pass.finished")
    assert 1 == len(process.events("template.rendered", template="app.conf", since=mark))
    assert 1 == sighup_counter.count()
    assert "ok" == {t["name"]: t["state"] for t in status(ws)["templates"]}["app.conf"]


def test_render_once_into_an_unwritable_folder_fails_that_template_only(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """`render --once`: a folder that refuses the temporary file fails its template (exit 1,
    named, no traceback); the others are written."""
    ws = workspace(tmp_path)
    ws.contents("locked/app.conf", "pw={{ secrets.db.password }}\n")
    free = ws.contents("out/free.conf", "key={{ secrets.other.key }}\n")
    with unwritable(tmp_path / "locked"):
        process = agent(ws.write(), "--once")
        assert 1 == process.wait(timeout=START)
    (failed,) = process.events("template.failed", since=None)
    assert "app.conf" == failed["template"]
    assert "creating a temporary file in" in failed["error"]
    assert str(tmp_path / "locked" / "app.conf") in failed["error"]
    assert free.exists()
