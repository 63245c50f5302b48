"""Actions owed to services, kept on disk until they have run: no action is ever lost.

The danger this closes: a file is renamed into place, then the process dies
(SIGKILL, OOM, power loss) before the SIGHUP. On the next start the file
already holds the new bytes, so it looks unchanged and nothing signals the
service: pgbouncer keeps the old password for good. So before the first
rename of a pass, the actions its changed files will owe are recorded in
`state_dir/pending/` (written atomically and fsynced), and a record is
removed only when each of its actions has run. A start (agent or
`render --once`) runs what dead processes left behind.

Telling a dead process's record from a live one's: each record is held under
an exclusive `flock` by the process that wrote it, from before its rename
until it is settled (the lock travels with the file through the rename), and
the kernel drops the lock when the process dies however it dies. A record
whose lock can be taken belongs to nobody. Claiming it takes the lock, so
two starting processes never both run one record.

A record names actions by their identity (`actions.action_key`) and runs
only actions the current config still has: the state folder cannot make
smagent run anything the config does not say, and an action taken out of the
config meanwhile is dropped with a log line. Running an action twice (a
crash after it ran, before its record was settled) is the accepted cost: a
second SIGHUP is harmless, a missing one is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smagent.actions import ActionResult, action_key, describe, run_action
from smagent.config import Action, Config
from smagent.logging import REDACTOR, get_logger
from smagent.state import PENDING_DIR, StateDirError, ensure_state_dir, state_dir_for

log = get_logger()

FORMAT = 1
MAX_RECORD = 1024 * 1024
TEMP_PREFIX = ".tmp-"

ActionKey = str
"""An action's identity as stored: the JSON text of `action_key(action)`."""


def key_of(action: Action) -> ActionKey:
    return json.dumps(action_key(action), separators=(",", ":"))


# --- the journal: records on disk ---------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One pass's owed actions on disk, held (locked) by this process while it lives."""

    path: Path
    fd: int
    keys: list[ActionKey]
    templates: list[str]
    created: float
    config: str
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    """Settles run in worker threads; two actions of one record may finish together."""

    def settle(self, done: Iterable[ActionKey]) -> None:
        """Drop `done` from the record; remove it when nothing is owed. Blocking."""
        finished = set(done)
        with self._lock:
            left = [key for key in self.keys if key not in finished]
            if left == self.keys or self.fd < 0:
                return
            if left:
                fd = _write(self.path, self._document(left))
                os.close(self.fd)
                self.fd = fd
                self.keys = left
            else:
                self.keys = left
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                _fsync_folder(self.path.parent)
                self.release()

    def release(self) -> None:
        """Let go of the record without removing it (what is still owed stays for the next
        start). Idempotent."""
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _document(self, keys: list[ActionKey] | None = None) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "config": self.config,
                "pid": os.getpid(),
                "created": self.created,
                "templates": self.templates,
                "actions": self.keys if keys is None else keys,
            },
            indent=1,
        ).encode()


class Journal:
    """The `pending/` folder of one config's state folder; disabled when unusable."""

    def __init__(
        self, folder: Path | None, config_path: Path, unusable: Path | None = None
    ) -> None:
        self.folder = folder
        self._unusable = unusable
        """The state folder that could not be used at open: tried again whenever actions
        are owed, so a folder fixed while the agent runs is used from then on."""
        self.config = os.path.realpath(config_path)
        """The config's identity in records: one file however it is named (a symlinked
        /etc/smagent, a relative --config), so no spelling leaves a record behind."""
        self._failing = False

    @classmethod
    async def open(cls, config: Config) -> Journal:
        """The journal of `config`'s state folder; a folder that cannot be used is told once
        and the pass goes on without it (files still written; actions still run now)."""
        state_dir = state_dir_for(config)
        try:
            folder = await asyncio.to_thread(_ensure_pending, state_dir)
        except StateDirError as exc:
            log.warning(
                "state_dir.unavailable",
                error=str(exc),
                hint="actions owed when the process dies before running them will not be "
                "run at the next start; set state_dir to a folder this user owns",
            )
            return cls(None, config.path, unusable=state_dir)
        return cls(folder, config.path)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    async def record(self, actions: Sequence[Action], templates: Sequence[str]) -> Record | None:
        """Write (fsynced, locked) what `actions` owe, before the files are replaced."""
        if not actions or (self.folder is None and not await self._retry_open()):
            return None
        assert self.folder is not None
        record = Record(
            self.folder / f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}.json",
            -1,
            [key_of(action) for action in actions],
            list(templates),
            time.time(),
            self.config,
        )
        try:
            record.fd = await asyncio.to_thread(_write_record, self.folder, record)
        except (OSError, StateDirError) as exc:
            # the folder went away or is no longer ours since it was opened: the files are
            # still written and their actions still run now; only a crash would lose them
            if not self._failing:
                self._failing = True
                log.warning(
                    "state_dir.unavailable",
                    error=str(exc) if isinstance(exc, StateDirError) else _describe(exc),
                    hint="actions owed when the process dies before running them will not "
                    "be run at the next start; check the state folder",
                )
            return None
        if self._failing:
            self._failing = False
            log.info("state_dir.recovered", path=str(self.folder.parent))
        return record

    async def _retry_open(self) -> bool:
        """Whether the folder refused at open can be used now (told once when it can)."""
        if self._unusable is None:
            return False
        try:
            self.folder = await asyncio.to_thread(_ensure_pending, self._unusable)
        except StateDirError:
            return False  # told at open; the same refusal again is no news
        log.info("state_dir.recovered", path=str(self._unusable))
        self._unusable = None
        return True

    async def orphans(self) -> list[Record]:
        """Claim the records of dead processes for this config (locked: now ours)."""
        if self.folder is None:
            return []
        try:
            return await asyncio.to_thread(_claim_orphans, self.folder, self.config)
        except OSError as exc:
            log.warning("pending.unreadable", path=str(self.folder), error=_describe(exc))
            return []


def _describe(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{':' if where else ''}{where}"


def _write_record(folder: Path, record: Record) -> int:
    _ensure_pending(folder.parent)  # made again if removed meanwhile; refused if not ours now
    return _write(record.path, record._document())


def _ensure_pending(state_dir: Path) -> Path:
    ensure_state_dir(state_dir)
    return ensure_state_dir(state_dir / PENDING_DIR)


def _write(path: Path, data: bytes) -> int:
    """Atomically put `data` at `path`; returns an fd of it holding its lock."""
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.rename(temp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(path.parent)
    return fd


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _claim_orphans(folder: Path, config: str) -> list[Record]:
    claimed: list[Record] = []
    for name in sorted(os.listdir(folder)):
        path = folder / name
        fd = _lock_free(path)
        if fd is None:
            continue
        if name.startswith(TEMP_PREFIX):  # a writer died before its rename: nothing was owed
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            continue
        record = _read_record(path, fd, config)
        if record is None:
            os.close(fd)
            continue
        claimed.append(record)
    return claimed


def _lock_free(path: Path) -> int | None:
    """An fd of `path` holding its lock, when no live process holds it and it is ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # gone meanwhile, or a symlink: not a record of ours
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        now = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.ENOENT):
            log.warning("pending.unreadable", path=str(path), error=exc.strerror)
        return None
    if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):  # replaced since we opened it
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        log.warning(
            "pending.refused",
            path=str(path),
            reason="not a regular file of this user, closed to others",
        )
        os.close(fd)
        return None
    return fd


def _read_record(path: Path, fd: int, config: str) -> Record | None:
    try:
        data = os.read(fd, MAX_RECORD + 1)
        document = json.loads(data) if len(data) <= MAX_RECORD else None
    except (OSError, ValueError):
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        log.warning("pending.unreadable", path=str(path), error="not a pending-actions record")
        return None
    if document.get("config") != config:
        return None  # another config's agent shares this folder: its record, not ours
    keys = document.get("actions")
    templates = document.get("templates")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        log.warning("pending.unreadable", path=str(path), error="no list of actions")
        return None
    created = document.get("created")
    return Record(
        path,
        fd,
        keys,
        [str(t) for t in templates] if isinstance(templates, list) else [],
        float(created) if isinstance(created, int | float) else 0.0,
        config,
    )


# --- what is owed now, in memory ------------------------------------------------------------------


@dataclass(slots=True)
class Owed:
    """One distinct action owed, the records that hold it, and how its runs went."""

    action: Action
    records: list[Record] = field(default_factory=list)
    since: float = field(default_factory=time.time)
    attempts: int = 0
    last_error: str | None = None
    next_try: float = 0.0
    """`time.monotonic()` before which it is not tried again (backoff after a failure)."""
    again: bool = False
    """A pass owed it again while it was running: it must run once more."""


FIRST_RETRY = 1.0
MAX_RETRY = 300.0


class Ledger:
    """Every action owed, coalesced: one run settles every record that holds it."""

    def __init__(self) -> None:
        self.owed: dict[ActionKey, Owed] = {}
        self._running: set[ActionKey] = set()

    def __len__(self) -> int:
        return len(self.owed)

    def add(self, actions: Iterable[Action], record: Record | None) -> None:
        for action in actions:
            key = key_of(action)
            owed = self.owed.get(key)
            if owed is None:
                owed = self.owed[key] = Owed(action)
            elif key in self._running:
                owed.again = True
            owed.next_try = 0.0  # a new change is owed now, whatever the backoff said
            if record is not None and record not in owed.records:
                owed.records.append(record)

    async def adopt(self, records: Iterable[Record], config: Config) -> None:
        """Take over dead processes' records: what the config still has is owed again."""
        configured = {key_of(a): a for t in config.templates for a in t.on_change}
        for record in records:
            dropped = [key for key in record.keys if key not in configured]
            for key in dropped:
                log.warning(
                    "action.dropped",
                    action=key,
                    record=record.path.name,
                    reason="owed by an earlier run, but no longer in the config",
                )
            owed = [configured[key] for key in record.keys if key in configured]
            log.info(
                "pending.adopted",
                record=record.path.name,
                actions=len(owed),
                templates=", ".join(record.templates),
            )
            if dropped:
                await asyncio.to_thread(settle, record, dropped)
            if owed:
                self.add(owed, record)
            else:
                record.release()

    def due(self, now: float) -> list[ActionKey]:
        return [k for k, o in self.owed.items() if o.next_try <= now and k not in self._running]

    def next_try(self) -> float | None:
        waiting = [o.next_try for k, o in self.owed.items() if k not in self._running]
        return min(waiting, default=None)

    async def run(self, keys: Iterable[ActionKey] | None = None) -> list[ActionResult]:
        """Run the owed actions (`keys`, default all) once each, in the order owed; settle
        the records of those that succeed, back off the ones that fail."""
        results: list[ActionResult] = []
        for key in list(self.owed if keys is None else keys):
            owed = self.owed.get(key)
            if owed is None or key in self._running:
                continue
            self._running.add(key)
            owed.again = False
            before = list(owed.records)
            try:  # running until settled: a pass owing it meanwhile must see it running
                try:
                    result = await run_action(owed.action)
                except Exception as exc:  # our bug: a failure like any other, with its backoff
                    result = ActionResult(describe(owed.action), False, type(exc).__name__)
                results.append(result)
                owed.attempts += 1
                if result.ok:
                    log.info("action.ran", action=result.action, detail=result.detail)
                    await asyncio.to_thread(_settle, before, key)
            finally:
                self._running.discard(key)
            if result.ok:
                if owed.again:  # owed again while it ran: the newer records wait for one more run
                    owed.records = [r for r in owed.records if r not in before]
                    owed.attempts = 0
                    owed.next_try = 0.0
                else:
                    del self.owed[key]
                continue
            owed.last_error = REDACTOR.scrub(result.detail)
            if len(owed.records) > 1:  # the newest record keeps it owed: one file, one fd
                older, owed.records = owed.records[:-1], owed.records[-1:]
                await asyncio.to_thread(_settle, older, key)
            delay = min(MAX_RETRY, FIRST_RETRY * 2.0 ** min(owed.attempts - 1, 30))
            owed.next_try = time.monotonic() + delay
            log.error(
                "action.failed",
                action=result.action,
                error=result.detail,
                attempt=owed.attempts,
                retry_in=round(delay, 1),
            )
            if result.output:
                log.debug("action.output", action=result.action, output=result.output)
        return results

    def release(self) -> None:
        """At exit: owed actions stay on disk for the next start."""
        for owed in self.owed.values():
            for record in owed.records:
                record.release()

    def describe(self) -> list[tuple[str, Owed]]:
        return [(describe(o.action), o) for o in self.owed.values()]


def settle(record: Record, keys: Iterable[ActionKey]) -> None:
    """`record.settle(keys)`, a failure only logged: the record stays on disk, and the worst
    that comes of it is one more run of an action that already ran. Blocking."""
    try:
        record.settle(keys)
    except OSError as exc:
        log.warning("pending.settle_failed", record=record.path.name, error=_describe(exc))


def _settle(records: Iterable[Record], key: ActionKey) -> None:
    for record in records:
        if record.fd >= 0 and key in record.keys:
            settle(record, [key])
