"""What runs after a pass changed files: signals by pidfile or systemd unit, and commands.

Actions are coalesced: each distinct action runs once per pass, after every
file of that pass is written, so two files that feed one pgbouncer give it
one SIGHUP and the process never reloads half-updated config. A failing
action is reported and never raises: the files are already correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from smagent.config import Action, CommandAction, SignalPidfileAction, SignalUnitAction
from smagent.logging import REDACTOR, get_logger
from smagent.regular_file import NotRegularFile, read_regular

log = get_logger()

SYSTEMCTL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ActionResult:
    action: str
    ok: bool
    detail: str = ""
    output: str = ""
    """The end of a failed command's stderr, redacted. Logged at debug level only: a
    command may echo a config line holding a derived form of a secret (URL-encoded,
    quoted) that the redactor cannot recognise."""


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
                log.debug("action.stderr", action=result.action, stderr=result.output)
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


async def _run_command(argv: list[str], limit: float) -> str:
    """Run `argv` (no shell) and wait for it to exit, at most `limit` seconds.

    Waiting is for the process, not for its output to close: a reload command
    that starts a daemon (which inherits stderr) has finished when it exits.
    So stderr goes to an anonymous file, not a pipe (asyncio's wait() would
    also wait for every holder of a pipe to close it). Past the limit the whole
    process group is killed.
    """
    with tempfile.TemporaryFile() as errors:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ActionFailed(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise ActionFailed(f"command not executable: {argv[0]}") from None
        except OSError as exc:
            raise ActionFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            async with asyncio.timeout(limit):
                await process.wait()
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            raise ActionFailed(f"timed out after {limit:g}s and was killed") from None
        if process.returncode == 0:
            return "exited 0"
        stderr = await asyncio.to_thread(_tail, errors, 65536)
    # scrub before cutting: a secret cut in half by the tail would no longer match
    tail = REDACTOR.scrub(stderr.decode("utf-8", "replace").strip())[-300:]
    raise ActionFailed(f"exited with status {process.returncode}", tail)


def _tail(file: IO[bytes], size: int) -> bytes:
    end = file.seek(0, os.SEEK_END)
    file.seek(max(0, end - size))
    return file.read()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
