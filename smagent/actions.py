"""What runs after a pass changed files: signals by pidfile or systemd unit, and commands.

Actions are coalesced: each distinct action runs once per pass, after every
file of that pass is written, so two files that feed one pgbouncer give it
one SIGHUP and the process never reloads half-updated config. A failing
action is reported and never raises: the files are already correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import tempfile
from collections.abc import Iterable

import msgspec

from smagent.config import Action, CommandAction, SignalPidfileAction, SignalUnitAction
from smagent.logging import REDACTOR, get_logger
from smagent.regular_file import NotRegularFile, read_regular

log = get_logger()

SYSTEMCTL_TIMEOUT = 30.0

TRIM_EVERY = 0.1
"""Seconds between looks at the size of a running command's output file."""
OUTPUT_TRIM_AT = 1024 * 1024
"""Bytes of output on disk past which the older part is dropped."""
OUTPUT_WINDOW = 64 * 1024
"""Bytes of a failed command's output read back (and scrubbed as a whole)."""
OUTPUT_SHOWN = 2000
"""Characters of it that reach the debug log."""


class ActionResult(msgspec.Struct, frozen=True):
    action: str
    ok: bool
    detail: str = ""
    output: str = ""
    """The end of a failed command's stdout and stderr, redacted. Logged at debug level
    only: a command may echo a config line holding a derived form of a secret
    (URL-encoded, quoted) that the redactor cannot recognise."""


def action_key(action: Action) -> tuple[object, ...]:
    """A hashable identity: two templates naming the same action share one run."""
    if isinstance(action, CommandAction):
        return ("command", tuple(action.command), float(action.timeout))
    if isinstance(action, SignalUnitAction):
        return ("unit", str(action.signal), action.systemd_unit)
    return ("pidfile", str(action.signal), action.pidfile)


def describe(action: Action) -> str:
    if isinstance(action, CommandAction):
        return "command " + " ".join(action.command)
    if isinstance(action, SignalUnitAction):
        return f"signal {action.signal} to unit {action.systemd_unit}"
    return f"signal {action.signal} to the pid in {action.pidfile}"


def coalesce(actions: Iterable[Action]) -> list[Action]:
    seen: set[tuple[object, ...]] = set()
    unique: list[Action] = []
    for action in actions:
        key = action_key(action)
        if key not in seen:
            seen.add(key)
            unique.append(action)
    return unique


async def run_actions(actions: Iterable[Action]) -> list[ActionResult]:
    """Run each distinct action once, in the order first named."""
    results = []
    for action in coalesce(actions):
        result = await run_action(action)
        if result.ok:
            log.info("action.ran", action=result.action, detail=result.detail)
        else:
            log.error("action.failed", action=result.action, error=result.detail)
            if result.output:
                log.debug("action.output", action=result.action, output=result.output)
        results.append(result)
    return results


async def run_action(action: Action) -> ActionResult:
    label = describe(action)
    try:
        if isinstance(action, CommandAction):
            detail = await _run_command(list(action.command), float(action.timeout))
        elif isinstance(action, SignalUnitAction):
            detail = await _signal_unit(action)
        else:
            detail = await _signal_pidfile(action)
    except ActionFailed as exc:
        return ActionResult(label, False, str(exc), exc.output)
    except OSError as exc:  # the host itself refused (no room for the output file, ...)
        return ActionResult(label, False, f"could not be run: {exc.strerror or type(exc).__name__}")
    return ActionResult(label, True, detail)


class ActionFailed(Exception):
    def __init__(self, detail: str, output: str = "") -> None:
        super().__init__(detail)
        self.output = output


async def _signal_pidfile(action: SignalPidfileAction) -> str:
    try:
        data, _ = await asyncio.to_thread(read_regular, action.pidfile, 64)
    except NotRegularFile:
        raise ActionFailed(f"pidfile {action.pidfile} is not a regular file") from None
    except FileNotFoundError:
        raise ActionFailed(f"pidfile {action.pidfile} not found") from None
    except OSError as exc:
        raise ActionFailed(f"cannot read pidfile {action.pidfile}: {exc.strerror}") from None
    text = data.decode("ascii", errors="replace")
    first = text.strip().split()[0] if text.strip() else ""
    if not first.isdigit() or not 1 < int(first) < 2**31:
        raise ActionFailed(f"pidfile {action.pidfile} holds no usable process id")
    pid = int(first)
    try:
        os.kill(pid, action.signal.number)
    except ProcessLookupError:
        raise ActionFailed(f"no process {pid} (from {action.pidfile})") from None
    except PermissionError:
        raise ActionFailed(f"not allowed to signal process {pid} (from {action.pidfile})") from None
    return f"sent SIG{action.signal} to {pid}"


async def _signal_unit(action: SignalUnitAction) -> str:
    argv = [
        "systemctl",
        "kill",
        "--kill-whom=main",
        f"--signal=SIG{action.signal}",
        "--",
        action.systemd_unit,
    ]
    await _run_command(argv, SYSTEMCTL_TIMEOUT)
    return f"sent SIG{action.signal} to {action.systemd_unit}"


CREDENTIAL_VARIABLES = frozenset(
    {
        "VAULT_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AZURE_PASSWORD",
    }
)
"""The stores' credentials smagent may have been given in its environment."""


def child_environment() -> dict[str, str]:
    """smagent's environment minus what a reload command has no business seeing: the
    stores' credentials, and every variable holding a secret smagent has read (the `env`
    provider's values, or any text that contains one). A command is config, run with
    config's arguments; the secrets it needs are in the files it reloads."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in CREDENTIAL_VARIABLES and REDACTOR.scrub(value) == value
    }


async def _run_command(argv: list[str], limit: float) -> str:
    """Run `argv` (no shell) and wait for it to exit, at most `limit` seconds.

    Waiting is for the process, not for its output to close: a reload command
    that starts a daemon (which inherits stdout and stderr) has finished when
    it exits. So both go to one anonymous file, not a pipe (asyncio's wait()
    would also wait for every holder of a pipe to close it, and a daemon that
    outlived us would die of SIGPIPE). The command appends to the file, so
    while it runs the file can be emptied whenever it passes OUTPUT_TRIM_AT
    (its last OUTPUT_WINDOW bytes kept in memory): a command that prints
    without end fills neither the disk nor our memory. Past the limit the
    whole process group is killed, as it is when the wait is cancelled.
    """
    with await asyncio.to_thread(tempfile.TemporaryFile) as output:
        fd = output.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=child_environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ActionFailed(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise ActionFailed(f"command not executable: {argv[0]}") from None
        except OSError as exc:
            raise ActionFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
        earlier = b""
        exited = asyncio.ensure_future(process.wait())
        deadline = asyncio.get_running_loop().time() + limit
        try:
            while not exited.done():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    _kill_group(process.pid)
                    await exited
                    tail = await asyncio.to_thread(_tail, fd, earlier)
                    raise ActionFailed(f"timed out after {limit:g}s and was killed", _show(tail))
                await asyncio.wait({exited}, timeout=min(TRIM_EVERY, remaining))
                if not exited.done():
                    earlier = await asyncio.to_thread(_trim, fd, earlier)
        finally:
            if process.returncode is None:  # cancelled (the agent stops): no orphan left behind
                _kill_group(process.pid)
            exited.cancel()
        if process.returncode == 0:
            return "exited 0"
        tail = await asyncio.to_thread(_tail, fd, earlier)
    raise ActionFailed(_exit_status(process.returncode), _show(tail))


def _trim(fd: int, earlier: bytes) -> bytes:
    """Cut the output file back to nothing once it passes OUTPUT_TRIM_AT, keeping its tail."""
    size = os.fstat(fd).st_size
    if size <= OUTPUT_TRIM_AT:
        return earlier
    tail = os.pread(fd, OUTPUT_WINDOW, size - OUTPUT_WINDOW)
    os.ftruncate(fd, 0)  # the command appends: its next write lands at the new end
    return tail


def _tail(fd: int, earlier: bytes) -> bytes:
    size = os.fstat(fd).st_size
    start = max(0, size - OUTPUT_WINDOW)
    return (earlier + os.pread(fd, size - start, start))[-OUTPUT_WINDOW:]


def _show(output: bytes) -> str:
    """The end of a command's output as it may be logged: scrubbed, printable, short.

    Scrubbed before it is cut, so a secret cut in half by the cut is still
    recognised; control characters are escaped, so the output cannot drive
    the terminal that reads the log.
    """
    text = REDACTOR.scrub(output.decode("utf-8", "replace")).strip()
    text = "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)
    return text if len(text) <= OUTPUT_SHOWN else "[...]" + text[-OUTPUT_SHOWN:]


def _exit_status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
