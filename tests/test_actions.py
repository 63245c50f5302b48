"""Tests for smagent.actions: real child processes, real signals, real commands."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from smagent.actions import (
    OUTPUT_SHOWN,
    ActionResult,
    action_key,
    coalesce,
    run_action,
    run_actions,
)
from smagent.config import (
    Action,
    CommandAction,
    Duration,
    SignalName,
    SignalPidfileAction,
    SignalUnitAction,
    load_config,
)
from smagent.logging import REDACTOR
from tests.conftest import CANARY_ENV, CANARY_ENV_NAME, fake_systemctl, special_file
from tests.leaks import find_leaks

# A child that reports each signal it gets as one line on stdout; it writes its
# pidfile only once its handlers are installed, then says "ready".
SIGNAL_CHILD = """
import os, signal, sys
def report(signum, frame):
    print(signal.Signals(signum).name, flush=True)
for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, report)
pidfile = sys.argv[1]
with open(pidfile + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()}\\n")
os.replace(pidfile + ".tmp", pidfile)
print("ready", flush=True)
while True:
    signal.pause()
"""

LINE_TIMEOUT = 5.0
HANG_LIMIT = 5.0
"""How long a read that must not block may take before the test calls it a hang."""


def load_actions(tmp_path: Path, *on_change: list[dict[str, Any]]) -> list[Action]:
    """The on_change actions of one template per list, in pass order, via a real config file."""
    templates = [
        {"contents": "x", "destination": f"out/file{i}.conf", "on_change": actions}
        for i, actions in enumerate(on_change)
    ]
    path = tmp_path / "smagent.yaml"
    path.write_text(yaml.safe_dump({"templates": templates}, sort_keys=False))
    return [action for t in load_config(path).templates for action in t.on_change]


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(LINE_TIMEOUT):
        line = await proc.stdout.readline()
    return line.decode().strip()


@asynccontextmanager
async def signal_child(pidfile: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A running SIGNAL_CHILD whose pid is in `pidfile`; killed and reaped afterwards."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIGNAL_CHILD, str(pidfile), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert "ready" == await read_line(proc)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# -- signals by pidfile -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [("HUP", "SIGHUP"), ("SIGUSR1", "SIGUSR1")])
async def test_signal_reaches_the_process_in_the_pidfile(
    tmp_path: Path, name: str, expected: str
) -> None:
    """{signal, pidfile} delivers the named signal to the pid the file holds."""
    (action,) = load_actions(tmp_path, [{"signal": name, "pidfile": "run/app.pid"}])
    (tmp_path / "run").mkdir()
    async with signal_child(tmp_path / "run" / "app.pid") as child:
        result = await run_action(action)

        assert expected == await read_line(child)
    assert (
        ActionResult(
            f"signal {name.removeprefix('SIG')} to the pid in {tmp_path / 'run' / 'app.pid'}",
            True,
            f"sent {expected} to {child.pid}",
        )
        == result
    )


async def test_missing_pidfile_is_reported_not_raised(tmp_path: Path) -> None:
    """A pidfile that does not exist gives ok=False naming the file."""
    (action,) = load_actions(tmp_path, [{"signal": "HUP", "pidfile": "nope.pid"}])

    result = await run_action(action)

    assert False is result.ok
    assert f"pidfile {tmp_path / 'nope.pid'} not found" == result.detail


async def test_unreadable_pidfile_is_reported_not_raised(tmp_path: Path) -> None:
    """A pidfile path the OS cannot open (its folder is a file) gives ok=False with the reason."""
    (tmp_path / "run").write_text("a file where the folder should be\n")
    (action,) = load_actions(tmp_path, [{"signal": "HUP", "pidfile": "run/app.pid"}])

    result = await run_action(action)

    assert False is result.ok
    assert f"cannot read pidfile {tmp_path / 'run' / 'app.pid'}: Not a directory" == result.detail


@pytest.mark.parametrize("kind", ["fifo", "folder"])
async def test_pidfile_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO or folder at the pidfile path gives ok=False at once; nothing blocks on it."""
    (action,) = load_actions(tmp_path, [{"signal": "HUP", "pidfile": "app.pid"}])

    started = time.monotonic()
    with special_file(tmp_path / "app.pid", kind):
        async with asyncio.timeout(HANG_LIMIT):
            result = await run_action(action)
    elapsed = time.monotonic() - started

    assert elapsed < 2, f"blocked on the {kind} for {elapsed:.1f}s"

    assert False is result.ok
    assert f"pidfile {tmp_path / 'app.pid'} is not a regular file" == result.detail


@pytest.mark.parametrize(
    "content",
    ["", "   \n", "not-a-pid\n", "12abc\n", "-5\n", "0\n", "1\n", "99999999999999999999\n"],
)
async def test_garbage_pidfile_is_reported_not_raised(tmp_path: Path, content: str) -> None:
    """A pidfile without a usable pid (empty, text, <= 1, out of range) gives ok=False."""
    (tmp_path / "app.pid").write_text(content)
    (action,) = load_actions(tmp_path, [{"signal": "HUP", "pidfile": "app.pid"}])

    result = await run_action(action)

    assert False is result.ok
    assert f"pidfile {tmp_path / 'app.pid'} holds no usable process id" == result.detail


async def test_pid_of_a_dead_process_is_reported_not_raised(tmp_path: Path) -> None:
    """A pidfile naming a process that is gone gives ok=False naming the pid."""
    pid = dead_pid()
    (tmp_path / "app.pid").write_text(f"{pid}\n")
    (action,) = load_actions(tmp_path, [{"signal": "HUP", "pidfile": "app.pid"}])

    result = await run_action(action)

    assert False is result.ok
    assert f"no process {pid} (from {tmp_path / 'app.pid'})" == result.detail


# -- signals by systemd unit ------------------------------------------------------------------


async def test_signal_to_a_unit_without_systemctl_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """{signal, systemd_unit} on a host with no systemctl gives ok=False saying so."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (action,) = load_actions(
        tmp_path, [{"signal": "HUP", "systemd_unit": "smagent-test-no-such.service"}]
    )
    assert isinstance(action, SignalUnitAction)

    result = await run_action(action)

    expected = ActionResult(
        "signal HUP to unit smagent-test-no-such.service", False, "command not found: systemctl"
    )
    assert expected == result


def systemctl_on_path(folder: Path, monkeypatch: pytest.MonkeyPatch, status: int = 0) -> Path:
    bin_dir, record = fake_systemctl(folder, status)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize(("name", "signal_arg"), [("HUP", "SIGHUP"), ("SIGUSR2", "SIGUSR2")])
async def test_signal_to_a_unit_runs_systemctl_kill_with_these_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, signal_arg: str
) -> None:
    """A unit signal runs exactly `systemctl kill --kill-whom=main --signal=SIGx -- UNIT`."""
    record = systemctl_on_path(tmp_path, monkeypatch)
    (action,) = load_actions(tmp_path, [{"signal": name, "systemd_unit": "pg@main.service"}])

    result = await run_action(action)

    assert ["kill", "--kill-whom=main", f"--signal={signal_arg}", "--", "pg@main.service"] == (
        record.read_text().splitlines()
    )
    expected = ActionResult(
        f"signal {signal_arg.removeprefix('SIG')} to unit pg@main.service",
        True,
        f"sent {signal_arg} to pg@main.service",
    )
    assert expected == result


async def test_failing_systemctl_is_reported_with_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemctl refusing (unit not loaded) gives ok=False, its status, and its message."""
    systemctl_on_path(tmp_path, monkeypatch, status=5)
    (action,) = load_actions(tmp_path, [{"signal": "HUP", "systemd_unit": "pg.service"}])

    result = await run_action(action)

    expected = ActionResult(
        "signal HUP to unit pg.service",
        False,
        "exited with status 5",
        "Failed to kill unit: Unit pg.service not loaded.",
    )
    assert expected == result


# -- commands -----------------------------------------------------------------------------------


async def test_command_that_succeeds_is_ok(tmp_path: Path) -> None:
    """A command exiting 0 gives ok=True."""
    marker = tmp_path / "ran"
    (action,) = load_actions(
        tmp_path, [{"command": python(f"open({str(marker)!r}, 'w').close()"), "timeout": "5s"}]
    )

    result = await run_action(action)

    assert ActionResult("command " + " ".join(action.command), True, "exited 0") == result
    assert True is marker.exists()


async def test_command_failure_names_status_and_keeps_stderr_tail(tmp_path: Path) -> None:
    """A command exiting 3: the detail names the status; the stderr tail is kept apart."""
    code = (
        "import sys; print('noise', file=sys.stderr); "
        "print('reload refused', file=sys.stderr); sys.exit(3)"
    )
    (action,) = load_actions(tmp_path, [{"command": python(code)}])

    result = await run_action(action)

    assert False is result.ok
    assert "exited with status 3" == result.detail
    assert "noise\nreload refused" == result.output


async def test_command_failure_without_stderr_names_only_the_status(tmp_path: Path) -> None:
    """A silent failing command gives a detail with just the status."""
    (action,) = load_actions(tmp_path, [{"command": python("raise SystemExit(7)")}])

    result = await run_action(action)

    assert ActionResult(result.action, False, "exited with status 7") == result


async def test_command_not_found_is_reported_not_raised(tmp_path: Path) -> None:
    """A command that does not exist gives ok=False naming it."""
    (action,) = load_actions(tmp_path, [{"command": ["smagent-no-such-command-4711", "x"]}])

    result = await run_action(action)

    assert (
        ActionResult(
            "command smagent-no-such-command-4711 x",
            False,
            "command not found: smagent-no-such-command-4711",
        )
        == result
    )


@pytest.mark.parametrize("kind", ["no shebang", "path through a file"])
async def test_command_that_cannot_be_executed_is_reported_not_raised(
    tmp_path: Path, kind: str
) -> None:
    """A command the OS refuses to exec (format error, not a folder) gives ok=False."""
    script = tmp_path / "script"
    script.write_text("just some text, no #! line\n")
    script.chmod(0o755)
    argv = [str(script)] if kind == "no shebang" else [str(script / "x")]
    (action,) = load_actions(tmp_path, [{"command": argv}])

    result = await run_action(action)

    assert False is result.ok
    assert result.detail.startswith(f"cannot run {argv[0]}: ")


async def test_command_past_its_timeout_is_killed_with_its_process_group(
    tmp_path: Path,
) -> None:
    """A command over its timeout is killed, its grandchildren too, and reported as timed out."""
    grandchild_pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 30 & echo $! > {grandchild_pidfile}; wait"
    (action,) = load_actions(tmp_path, [{"command": ["sh", "-c", script], "timeout": "300ms"}])

    started = time.monotonic()
    result = await run_action(action)
    elapsed = time.monotonic() - started

    assert ActionResult(result.action, False, "timed out after 0.3s and was killed") == result
    assert 0.25 <= elapsed < 3
    grandchild = int(grandchild_pidfile.read_text())
    deadline = time.monotonic() + 2
    while alive(grandchild) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert False is alive(grandchild)


def echo_env_secret(stream: str, before: str = "", after: str = "", code: int = 1) -> list[str]:
    """A command that prints the env provider's canary to `stream` and exits `code`.

    The value is in its arguments as reversed hex (a command never gets a secret through
    its environment: see `test_a_command_gets_no_secret_and_no_credential_in_its_env`).
    """
    hidden = CANARY_ENV[::-1].encode().hex()
    return python(
        f"import sys; v = bytes.fromhex({hidden!r}).decode()[::-1]; "
        f"sys.{stream}.write({before!r} + v + {after!r}); sys.exit({code})"
    )


async def test_a_command_gets_no_secret_and_no_credential_in_its_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's environment lacks every variable holding a known secret (alone or inside
    a longer text) and the stores' credential variables; the rest is passed on."""
    REDACTOR.add(CANARY_ENV)
    monkeypatch.setenv("APP_DSN", f"postgres://app:{CANARY_ENV}@db/app")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.not-a-real-token-for-this-test")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    script = (
        "import os, sys; bad = [n for n in "
        f"({CANARY_ENV_NAME!r}, 'APP_DSN', 'VAULT_TOKEN') if n in os.environ]; "
        "sys.exit(3 if bad else 0 if os.environ.get('HARMLESS_SETTING') == 'kept' else 4)"
    )
    (action,) = load_actions(tmp_path, [{"command": python(script)}])

    result = await run_action(action)

    assert (True, "exited 0") == (result.ok, result.detail), result.detail


async def test_secret_in_command_output_is_redacted(tmp_path: Path) -> None:
    """A registered secret in a failing command's stderr or stdout becomes <redacted>."""
    REDACTOR.add(CANARY_ENV)
    for stream in ("stderr", "stdout"):
        (action,) = load_actions(
            tmp_path, [{"command": echo_env_secret(stream, "login failed for ", "\n")}]
        )

        result = await run_action(action)

        assert "login failed for <redacted>" == result.output, stream


async def test_secret_cut_by_the_output_tail_is_not_half_revealed(tmp_path: Path) -> None:
    """A secret straddling the start of the shown tail leaks none of its characters."""
    REDACTOR.add(CANARY_ENV)
    half = len(CANARY_ENV) // 2
    # the output ends with the second half of the secret at the very start of the shown tail
    padding = OUTPUT_SHOWN - (len(CANARY_ENV) - half)
    (action,) = load_actions(
        tmp_path, [{"command": echo_env_secret("stderr", "x" * 5000, "." * padding)}]
    )

    result = await run_action(action)

    assert "exited with status 1" == result.detail
    assert result.output.startswith("[...]")
    assert OUTPUT_SHOWN + len("[...]") >= len(result.output)
    assert [] == find_leaks(result.output, "the output tail")


async def test_stdout_and_stderr_are_kept_in_order(tmp_path: Path) -> None:
    """A failing command's stdout and stderr lines are kept together, in the order written."""
    code = (
        "import sys\n"
        "for i in range(3):\n"
        "    print(f'out {i}', flush=True); print(f'err {i}', file=sys.stderr, flush=True)\n"
        "sys.exit(2)"
    )
    (action,) = load_actions(tmp_path, [{"command": python(code)}])

    result = await run_action(action)

    assert (
        ActionResult(
            result.action,
            False,
            "exited with status 2",
            "\n".join(f"{stream} {i}" for i in range(3) for stream in ("out", "err")),
        )
        == result
    )


async def test_control_characters_in_output_are_escaped(tmp_path: Path) -> None:
    """Terminal escapes and carriage returns in a command's output reach the log escaped."""
    code = r"import sys; sys.stderr.write('\x1b[31mred\x1b[0m\rover\nnext\tcol'); sys.exit(1)"
    (action,) = load_actions(tmp_path, [{"command": python(code)}])

    result = await run_action(action)

    assert r"\x1b[31mred\x1b[0m\rover" + "\nnext\tcol" == result.output


async def test_command_killed_by_a_signal_names_the_signal(tmp_path: Path) -> None:
    """A command that dies of a signal is reported by the signal's name, not a negative status."""
    (action,) = load_actions(
        tmp_path, [{"command": python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")}]
    )

    result = await run_action(action)

    assert ActionResult(result.action, False, "killed by SIGTERM") == result


async def test_timed_out_command_keeps_its_output(tmp_path: Path) -> None:
    """A command killed at its timeout still shows what it printed before."""
    code = "import time; print('waiting for the lock', flush=True); time.sleep(30)"
    (action,) = load_actions(tmp_path, [{"command": python(code), "timeout": "500ms"}])

    result = await run_action(action)

    expected = ActionResult(
        result.action, False, "timed out after 0.5s and was killed", "waiting for the lock"
    )
    assert expected == result


async def test_output_flood_is_bounded_on_disk_and_in_the_log(tmp_path: Path) -> None:
    """A command printing 32 MiB keeps its output file small while it runs and logs its end."""
    code = (
        "import os, sys, time\n"
        "chunk = b'.' * (1 << 20)\n"
        "largest = 0\n"
        "for _ in range(32):\n"
        "    os.write(1, chunk)\n"
        "    largest = max(largest, os.fstat(1).st_size)\n"
        "    time.sleep(0.02)\n"
        "sys.stderr.write(f'largest {largest}\\nthe real error')\n"
        "sys.exit(1)\n"
    )
    (action,) = load_actions(tmp_path, [{"command": python(code), "timeout": "20s"}])

    result = await run_action(action)

    assert "exited with status 1" == result.detail
    assert result.output.endswith("\nthe real error"), result.output[-200:]
    assert OUTPUT_SHOWN + len("[...]") >= len(result.output)
    largest = int(result.output.rsplit("largest ", 1)[1].split()[0])
    assert largest < 16 << 20, f"the output file grew to {largest} bytes"


async def test_failing_command_that_leaves_a_child_holding_its_output(tmp_path: Path) -> None:
    """A failing command whose background child keeps stdout open is done (and shown) at exit."""
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; echo 'config test failed'; exit 4"
    (action,) = load_actions(tmp_path, [{"command": ["sh", "-c", script], "timeout": "10s"}])

    started = time.monotonic()
    result = await run_action(action)
    elapsed = time.monotonic() - started
    os.kill(int(pidfile.read_text()), signal.SIGKILL)

    assert ActionResult(result.action, False, "exited with status 4", "config test failed") == (
        result
    )
    assert elapsed < 2, f"waited for the child's stdout to close ({elapsed:.1f}s)"


async def test_failed_action_output_is_logged_at_debug_only(tmp_path: Path) -> None:
    """The error event names the action and status; the output goes to a debug event."""
    code = "import sys; print('bad line 3', file=sys.stderr); sys.exit(1)"
    actions = load_actions(tmp_path, [{"command": python(code)}])

    with structlog.testing.capture_logs() as events:
        (result,) = await run_actions(actions)

    assert [
        {"event": "action.failed", "log_level": "error", "action": result.action,
         "error": "exited with status 1"},
        {"event": "action.output", "log_level": "debug", "action": result.action,
         "output": "bad line 3"},
    ] == events  # fmt: skip


# -- coalescing ---------------------------------------------------------------------------------


def test_action_key_normalises_signal_spelling_and_pidfile_path(tmp_path: Path) -> None:
    """HUP/SIGHUP and run/x.pid/./run/x.pid name the same action."""
    first, second = load_actions(
        tmp_path,
        [{"signal": "HUP", "pidfile": "run/x.pid"}],
        [{"signal": "sighup", "pidfile": "./run/../run/x.pid"}],
    )

    assert action_key(first) == action_key(second)


def test_coalesce_keeps_one_of_each_in_order_of_first_mention(tmp_path: Path) -> None:
    """Duplicate signals and commands collapse to one; distinct ones stay, first-mention order."""
    hup = {"signal": "HUP", "pidfile": "pg.pid"}
    usr1 = {"signal": "USR1", "pidfile": "pg.pid"}
    cmd = {"command": ["reload", "pg"], "timeout": "5s"}
    cmd_other_timeout = {"command": ["reload", "pg"], "timeout": "10s"}
    unit = {"signal": "HUP", "systemd_unit": "pg.service"}
    actions = load_actions(
        tmp_path,
        [hup, cmd],
        [
            {"signal": "SIGHUP", "pidfile": "./pg.pid"},
            usr1,
            {"command": ["reload", "pg"], "timeout": "5000ms"},
        ],
        [cmd_other_timeout, unit, hup, unit],
    )

    unique = coalesce(actions)

    assert [actions[i] for i in (0, 1, 3, 5, 6)] == unique
    expected_first = SignalPidfileAction(signal=SignalName("HUP"), pidfile=str(tmp_path / "pg.pid"))
    assert expected_first == unique[0]
    assert [5.0, 10.0] == [float(a.timeout) for a in unique if isinstance(a, CommandAction)]


async def test_run_actions_sends_one_signal_for_duplicate_actions(tmp_path: Path) -> None:
    """Two templates naming the same HUP action make the process get exactly one SIGHUP."""
    actions = load_actions(
        tmp_path,
        [{"signal": "HUP", "pidfile": "app.pid"}],
        [{"signal": "SIGHUP", "pidfile": "./app.pid"}],
    )
    async with signal_child(tmp_path / "app.pid") as child:
        results = await run_actions(actions)
        assert "SIGHUP" == await read_line(child)
        # a later, different signal marks the end: anything before it was a second HUP
        os.kill(child.pid, signal.SIGUSR2)
        assert "SIGUSR2" == await read_line(child)

    assert 1 == len(results)
    assert True is results[0].ok


async def test_run_actions_keeps_going_after_a_failure(tmp_path: Path) -> None:
    """A failing action is reported and the next one still runs."""
    marker = tmp_path / "ran"
    actions = load_actions(
        tmp_path,
        [{"signal": "HUP", "pidfile": "missing.pid"}],
        [{"command": python(f"open({str(marker)!r}, 'w').close()")}],
    )

    results = await run_actions(actions)

    assert [False, True] == [r.ok for r in results]
    assert True is marker.exists()


async def test_command_that_starts_a_daemon_finishes_when_it_exits(tmp_path: Path) -> None:
    """A reload command that leaves a background child holding stderr is done at its exit."""
    marker = tmp_path / "daemon.pid"
    script = f"sleep 30 & echo $! > {marker}; exit 0"
    action = CommandAction(command=["sh", "-c", script], timeout=Duration(5))
    started = time.monotonic()
    result = await run_action(action)
    elapsed = time.monotonic() - started
    os.kill(int(marker.read_text()), signal.SIGKILL)
    assert (True, "exited 0") == (result.ok, result.detail)
    assert elapsed < 2, f"waited for the daemon's stderr ({elapsed:.1f}s)"
