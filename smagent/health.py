"""The agent's status snapshot: what it keeps current, what fails and since when.

The agent writes it as `state_dir/status.json` after each pass and at least
every `HEARTBEAT` seconds, so a reader can tell a live agent from a dead or
hung one by `updated_at` alone; `smagent status` and the metrics textfile are
both made from it. It is a file rather than a socket so that reading it needs
no running agent: after a crash it still says what was failing at the end.

No secret value may be in it. The agent's messages are scrubbed where they
are made; `write_status` scrubs the free-text fields again with the
process-wide redactor (which knows every fetched value) before anything
reaches the disk. Names, paths and action descriptions are config text and
are kept as they are (masking them would only point at which name equals a
secret), as the logs do.

Times are `time.time()` seconds. Unknown keys are ignored when reading, so an
older `smagent status` reads a newer agent's file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import msgspec

HEARTBEAT = 30.0
"""Seconds between two writes of an idle agent's status."""
MAX_STATUS_BYTES = 32 * 1024 * 1024
"""A status of tens of thousands of templates fits; anything larger is not ours."""

TEMPLATE_STATES = ("ok", "failing", "pending")
PROVIDER_STATES = ("ok", "unavailable")


class StatusUnreadable(Exception):
    """The status file exists but cannot be used; the message says which file and why."""


def _check_time(owner: str, field: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{owner}.{field}: expected a time, got {value!r}")


def _check_state(owner: str, state: str, allowed: tuple[str, ...]) -> None:
    if state not in allowed:
        raise ValueError(f"{owner}.state: expected one of {', '.join(allowed)}, got {state!r}")


class TemplateHealth(msgspec.Struct):
    name: str
    destination: str
    state: str
    """ok | failing | pending (never rendered yet)"""
    last_success: float | None = None
    """The last render that succeeded (file written or already current)."""
    failing_since: float | None = None
    error: str | None = None
    renders: int = 0
    failures: int = 0
    last_written: float | None = None
    """The last time the file's bytes changed."""

    def __post_init__(self) -> None:
        _check_state("template", self.state, TEMPLATE_STATES)
        for field in ("last_success", "failing_since", "last_written"):
            _check_time("template", field, getattr(self, field))


class ProviderHealth(msgspec.Struct):
    name: str
    type: str
    state: str
    """ok | unavailable"""
    since: float | None = None
    """When `state` was entered."""
    fetches: int = 0
    errors: int = 0
    throttles: int = 0
    last_error: str | None = None
    last_success: float | None = None
    """The last call the store answered (SPEC: "per provider its last success")."""

    def __post_init__(self) -> None:
        _check_state("provider", self.state, PROVIDER_STATES)
        _check_time("provider", "since", self.since)
        _check_time("provider", "last_success", self.last_success)


class LeaseHealth(msgspec.Struct):
    provider: str
    secret: str
    expires_at: float
    renewable: bool

    def __post_init__(self) -> None:
        _check_time("lease", "expires_at", self.expires_at)


class PendingHealth(msgspec.Struct):
    action: str
    since: float
    attempts: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        _check_time("pending action", "since", self.since)


class AgentStatus(msgspec.Struct):
    pid: int
    started_at: float
    updated_at: float
    heartbeat_s: float
    config: str
    config_loaded_at: float
    config_error: str | None = None
    """Why the last reload was rejected (the agent runs on the config loaded before)."""
    ready: bool = False
    """The first pass has finished."""
    stopped_at: float | None = None
    """Set at a clean exit."""
    templates: list[TemplateHealth] = msgspec.field(default_factory=list)
    providers: list[ProviderHealth] = msgspec.field(default_factory=list)
    leases: list[LeaseHealth] = msgspec.field(default_factory=list)
    pending_actions: list[PendingHealth] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pid <= 0:  # os.kill(0 or -1, 0) would ask about whole process groups
            raise ValueError(f"pid: expected a process id, got {self.pid}")
        if not (math.isfinite(self.heartbeat_s) and self.heartbeat_s > 0):
            raise ValueError(f"heartbeat_s: expected a positive number, got {self.heartbeat_s!r}")
        for field in ("started_at", "updated_at", "config_loaded_at", "stopped_at"):
            _check_time("agent", field, getattr(self, field))

    def to_json(self) -> bytes:
        """Indented: operators read this file with `cat` too."""
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> AgentStatus:
        """Unknown keys are ignored; anything else that does not fit raises ValueError."""
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise ValueError(str(exc)) from None


def scrubbed(status: AgentStatus, scrub: Callable[[str], str]) -> AgentStatus:
    """A copy of `status` with every free-text field (the error messages) passed to `scrub`."""

    def text(value: str | None) -> str | None:
        return None if value is None else scrub(value)

    replace = msgspec.structs.replace
    return replace(
        status,
        config_error=text(status.config_error),
        templates=[replace(t, error=text(t.error)) for t in status.templates],
        providers=[replace(p, last_error=text(p.last_error)) for p in status.providers],
        leases=[replace(lease, secret=scrub(lease.secret)) for lease in status.leases],
        pending_actions=[replace(a, last_error=text(a.last_error)) for a in status.pending_actions],
    )


def write_status(path: Path, status: AgentStatus) -> None:
    """Replace `path` atomically with `status` (mode 0600), its messages scrubbed; blocking."""
    from smagent.logging import REDACTOR
    from smagent.writer import FileSpec, write_file

    write_file(FileSpec(path, mode=0o600), scrubbed(status, REDACTOR.scrub).to_json())


def read_status(path: Path) -> AgentStatus | None:
    """The status at `path`; None when there is none (no agent has written one there).

    StatusUnreadable when it exists but cannot be read or is not a status: the
    caller cannot tell whether an agent runs, which is neither yes nor no.
    """
    from smagent.regular_file import NotRegularFile, read_regular

    try:
        data, _ = read_regular(path, MAX_STATUS_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except NotRegularFile:
        raise StatusUnreadable(f"{path}: not a regular file") from None
    except PermissionError:
        raise StatusUnreadable(
            f"{path}: permission denied; run this as the agent's user (or root)"
        ) from None
    except OSError as exc:
        raise StatusUnreadable(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_STATUS_BYTES:
        raise StatusUnreadable(f"{path}: larger than {MAX_STATUS_BYTES // 2**20} MiB")
    try:
        return AgentStatus.from_json(data)
    except ValueError as exc:
        raise StatusUnreadable(f"{path}: not an smagent status file ({exc})") from None
