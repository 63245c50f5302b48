"""No action is lost: `smagent render --once` as a real process, killed by real signals.

The danger: a file is renamed into place, then the process dies before the
file's on_change action runs; at the next start the file already holds the
new bytes, looks unchanged, and the service keeps its old password forever.

The kill lands exactly there: the template's first action is a command that,
while a marker file exists, removes the marker and kills its parent (the
smagent process) with SIGKILL or SIGTERM; the second action signals a real
process that counts the SIGHUPs it gets. The next `render --once` must give
that process its SIGHUP, once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import leaks
from tests.conftest import REPO, Run, Workspace, run_cli

NOBODY = 65534

COUNTER = """
import os, signal, sys
pidfile, countfile = sys.argv[1], sys.argv[2]
count = 0
def hup(signum, frame):
    global count
    count += 1
    with open(countfile + ".tmp", "w") as fh:
        fh.write(str(count))
    os.replace(countfile + ".tmp", countfile)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(pidfile + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()}\\n")
os.replace(pidfile + ".tmp", pidfile)
while True:
    signal.pause()
"""

KILLER = """
import os, signal, sys
try:
    os.unlink(sys.argv[1])
except FileNotFoundError:
    sys.exit(0)
os.kill(os.getppid(), getattr(signal, sys.argv[2]))
"""


@dataclass
class HupCounter:
    """A running process that counts the SIGHUPs it gets (pid in `pidfile`)."""

    proc: subprocess.Popen[bytes]
    pidfile: Path
    countfile: Path

    def count(self) -> int:
        try:
            return int(self.countfile.read_text())
        except FileNotFoundError:
            return 0

    def wait_count(self, expected: int, timeout: float = 5.0) -> int:
        """The count once it reaches `expected` (or `timeout` passed), then a short settle so
        that a signal too many would show."""
        deadline = time.monotonic() + timeout
        while self.count() < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        return self.count()


@pytest.fixture
def hup_counter(tmp_path: Path) -> Iterator[HupCounter]:
    pidfile = tmp_path / "service.pid"
    proc = subprocess.Popen(
        [sys.executable, "-c", COUNTER, str(pidfile), str(tmp_path / "hups")], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 10
        while not pidfile.exists():
            assert time.monotonic() < deadline, "the counter did not start"
            time.sleep(0.01)
        yield HupCounter(proc, pidfile, tmp_path / "hups")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def killer(marker: Path, signal_name: str = "SIGKILL") -> dict[str, Any]:
    return {"command": [sys.executable, "-c", KILLER, str(marker), signal_name]}


def appender(log: Path, word: str, *, fail_while: Path | None = None) -> dict[str, Any]:
    """A command action appending `word` to `log`; it fails while `fail_while` exists."""
    check = f"import os, sys; sys.exit(1) if os.path.exists({str(fail_while)!r}) else None; "
    code = (check if fail_while else "") + f"open({str(log)!r}, 'a').write({word!r} + '\\n')"
    return {"command": [sys.executable, "-c", code]}


def lines(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def set_password(ws: Workspace, value: str) -> None:
    ws.secrets["prod/db"]["password"] = value
    ws.write()


def render(ws: Workspace, state: Path, *extra: str) -> Run:
    """`smagent render --once` with its state folder from systemd's STATE_DIRECTORY."""
    return run_cli(
        "--config",
        ws.config_path,
        "--log-format",
        "json",
        "render",
        "--once",
        *extra,
        env={"STATE_DIRECTORY": str(state)},
    )


def events(run: Run, name: str) -> list[dict[str, Any]]:
    return [e for e in run.logs() if e["event"] == name]


def pending(state: Path) -> list[Path]:
    folder = state / "pending"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_death_between_rename_and_action_still_signals_once_at_the_next_start(
    ws: Workspace, hup_counter: HupCounter, tmp_path: Path, signal_name: str
) -> None:
    """Killed after the new file is renamed into place, before its SIGHUP: the next
    `render --once` (which finds the file unchanged) sends that SIGHUP, exactly once, and a
    third run sends none."""
    state = tmp_path / "state"
    marker = tmp_path / "kill-me"
    creds = ws.template(
        "creds.j2",
        "password={{ secrets.db.password }}\n",
        on_change=[killer(marker, signal_name), {"signal": "HUP", "pidfile": "service.pid"}],
    )
    set_password(ws, "first-pw-1111")
    assert 0 == render(ws, state).returncode
    assert 1 == hup_counter.wait_count(1)

    set_password(ws, "rotated-pw-2222")
    marker.touch()
    died = render(ws, state)
    assert -getattr(signal, signal_name) == died.returncode, died.stderr
    assert "password=rotated-pw-2222\n" == creds.read_text()  # renamed before the kill
    assert not marker.exists()
    assert 1 == hup_counter.wait_count(2, timeout=0.3)  # the SIGHUP was lost with the process
    assert 1 == len(pending(state))

    after = render(ws, state)
    assert 0 == after.returncode, after.stderr
    assert 2 == hup_counter.wait_count(2)
    assert [] == events(after, "template.rendered")  # the file looked unchanged...
    assert 1 == len(events(after, "pending.adopted"))  # ...but its action was owed
    assert 2 == len(events(after, "action.ran"))
    assert [] == pending(state)

    again = render(ws, state)
    assert 0 == again.returncode
    assert 2 == hup_counter.wait_count(3, timeout=0.3)
    assert [] == events(again, "action.ran")


def test_without_the_state_folder_the_lost_action_stays_lost(
    ws: Workspace, hup_counter: HupCounter, tmp_path: Path
) -> None:
    """The control: the same kill with the record removed before the restart gives no SIGHUP,
    so the test above sees the journal at work, not a file that changed again."""
    state = tmp_path / "state"
    marker = tmp_path / "kill-me"
    ws.template(
        "creds.j2",
        "password={{ secrets.db.password }}\n",
        on_change=[killer(marker), {"signal": "HUP", "pidfile": "service.pid"}],
    )
    set_password(ws, "first-pw-1111")
    assert 0 == render(ws, state).returncode
    set_password(ws, "rotated-pw-2222")
    marker.touch()
    assert -signal.SIGKILL == render(ws, state).returncode
    for record in pending(state):
        record.unlink()
    assert 0 == render(ws, state).returncode
    assert 1 == hup_counter.wait_count(2, timeout=0.3)


def test_two_starts_together_run_a_dead_processes_action_once(
    ws: Workspace, tmp_path: Path
) -> None:
    """Two `render --once` started at the same instant after a crash: the owed action runs
    once between them (the record is claimed by one; the other sees it held or gone)."""
    state = tmp_path / "state"
    marker = tmp_path / "kill-me"
    log = tmp_path / "actions.log"
    ws.template(
        "creds.j2",
        "password={{ secrets.db.password }}\n",
        on_change=[killer(marker), appender(log, "reloaded")],
    )
    for trial in range(2):
        set_password(ws, f"pw-{trial}-3333")
        marker.touch()
        assert -signal.SIGKILL == render(ws, state).returncode
        assert 1 == len(pending(state))
        before = lines(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMAGENT_")}
        env["STATE_DIRECTORY"] = str(state)
        argv = [sys.executable, "-m", "smagent", "--config", str(ws.config_path), "render"]
        procs = [
            subprocess.Popen([*argv, "--once"], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [proc.communicate(timeout=60)[1] for proc in procs]
        for output in outputs:
            leaks.assert_no_leak(output, "stderr of render --once")
        assert [0, 0] == [proc.returncode for proc in procs], outputs
        assert [*before, "reloaded"] == lines(log), f"trial {trial}"
        assert [] == pending(state)


def test_a_failed_action_is_retried_by_the_next_start(ws: Workspace, tmp_path: Path) -> None:
    """An action that fails in `render --once` (exit 1) stays owed on disk; the next run, with
    nothing changed, runs it again and, now that it succeeds, settles it (exit 0)."""
    state = tmp_path / "state"
    broken = tmp_path / "service-broken"
    log = tmp_path / "actions.log"
    ws.template(
        "creds.j2",
        "password={{ secrets.db.password }}\n",
        on_change=[appender(log, "reloaded", fail_while=broken)],
    )
    ws.write()
    broken.touch()
    failed = render(ws, state)
    assert 1 == failed.returncode
    assert 1 == len(events(failed, "action.failed"))
    assert 1 == len(pending(state))
    assert 1 == render(ws, state).returncode  # still failing: still owed
    broken.unlink()
    fixed = render(ws, state)
    assert 0 == fixed.returncode, fixed.stderr
    assert ["reloaded"] == lines(log)
    assert [] == pending(state)


@pytest.mark.parametrize("problem", ["a file", "mode 0777", "owned by nobody"])
def test_an_unusable_state_folder_warns_once_and_the_pass_still_writes_and_acts(
    ws: Workspace, tmp_path: Path, problem: str
) -> None:
    """`state_dir` unusable (not a folder, writable by others, another user's): one
    `state_dir.unavailable` warning naming it, the files are written, the actions run, exit 0."""
    if problem == "owned by nobody" and os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    state = tmp_path / "state"
    if problem == "a file":
        state.write_text("")
    else:
        state.mkdir(mode=0o700)
        if problem == "mode 0777":
            state.chmod(0o777)
        else:
            os.chown(state, NOBODY, NOBODY)
    log = tmp_path / "actions.log"
    creds = ws.template(
        "creds.j2", "password={{ secrets.db.password }}\n", on_change=[appender(log, "ran")]
    )
    ws.write()
    raw = yaml.safe_load(ws.config_path.read_text())
    raw["state_dir"] = str(state)
    ws.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = render(ws, tmp_path / "not-this-one")
    assert 0 == run.returncode, run.stderr
    assert creds.exists()
    assert ["ran"] == lines(log)
    (warning,) = [e for e in run.logs() if e["level"] == "warning"]
    assert "state_dir.unavailable" == warning["event"]
    assert str(state) in warning["error"]
    assert not (tmp_path / "not-this-one").exists()  # the config's state_dir wins


def test_a_dry_run_neither_runs_nor_claims_what_is_owed(ws: Workspace, tmp_path: Path) -> None:
    """`--dry-run` runs no action, not even one a dead process owed, and leaves its record for
    the next real run."""
    state = tmp_path / "state"
    marker = tmp_path / "kill-me"
    log = tmp_path / "actions.log"
    ws.template(
        "creds.j2",
        "password={{ secrets.db.password }}\n",
        on_change=[killer(marker), appender(log, "reloaded")],
    )
    set_password(ws, "first-pw-1111")
    marker.touch()
    assert -signal.SIGKILL == render(ws, state).returncode
    (record,) = pending(state)
    dry = run_cli(
        "--config", ws.config_path, "render", "--dry-run", env={"STATE_DIRECTORY": str(state)}
    )
    assert 0 == dry.returncode, dry.stderr
    assert [] == lines(log)
    assert [record] == pending(state)
    assert 0 == render(ws, state).returncode
    assert ["reloaded"] == lines(log)
    assert [] == pending(state)
