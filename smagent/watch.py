"""Tell the agent which of the files it reads (config, templates, includes) changed.

What "changed" means is decided by comparing each watched path's stat signature
(device, inode, size, mtime, ctime, following symlinks; missing is a state too)
with the last one seen, never by interpreting inotify's added/deleted/modified:
an editor's save (write a copy, rename it over), a delete and re-create, and a
Kubernetes ConfigMap update (a new timestamped folder, the `..data` symlink
renamed over, the old folder removed) are each a different storm of events, but
each leaves a different signature behind.

inotify only says *when* to look. It watches the FOLDERS whose entries decide
what a path resolves to, never the file itself (a watch on a file follows the old
inode after a rename-over and goes deaf): the folder holding the file, every
folder holding a symlink met on the way, and, for a path whose folder does not
exist yet, the nearest folder that does, so its creation is seen. After each
batch the folders are worked out again; when they moved (a folder created,
removed, replaced: an event about the folder itself, or another inode under its
name), inotify is re-armed on the new set and every path is looked at once more
after arming, so nothing written in between is missed.

A path added by `set_paths` is first looked at by the thread a little later; a
change in between would become its baseline unseen, so a new path whose file's
ctime (or, missing, whose folder's mtime) is not older than the call counts as
changed. The agent can pass `since=` the time it read the files.

If inotify cannot be used (instances or watches exhausted, a folder it may not
read), the watcher polls the signatures every `poll_s` instead, says so once in
the log, and tries inotify again every `retry_s`. A slow rescan every
`rescan_s` also catches what inotify cannot see (a change made on another NFS
client, an event queue overflow).

All of this runs in one daemon thread of its own: no stat, no inotify call ever
runs on the event loop, and the loop is woken only when a watched path changed.
The thread sleeps in watchfiles' Rust loop, which wakes every `step_ms` to see
whether events arrived (the idle cost: ~10 wake-ups a second at the default;
latency from a write to the batch is one to two steps).

watchfiles' own `watch`/`awatch` generators are not used: they arm inotify and
start waiting in the same call, which leaves no point to look at the files after
arming, and `awatch` waits in a thread that a plain task cancellation does not
stop. Its Rust backend (`RustNotify`, documented by watchfiles) gives both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from watchfiles._rust_notify import RustNotify

from smagent.logging import get_logger

STEP_MS = 100
"""How often watchfiles' loop wakes to see whether events arrived (idle cost vs latency)."""
DEBOUNCE_MS = 400
"""The longest a burst of events is gathered before it is looked at."""
RESCAN_S = 60.0
"""Every path is looked at this often even without an event."""
POLL_S = 1.0
"""How often paths are looked at when inotify cannot be used."""
RETRY_S = 60.0
"""How often inotify is tried again while polling."""
CLOSE_WAIT_S = 1.0
"""The longest `close()` waits for the thread to finish."""
_TICK_NS = 10_000_000
"""File times come from the kernel's coarse clock, up to a tick (4 ms here) behind
time.time(): a file changed just after `set_paths` may carry a time just before it."""
_MAX_HOPS = 40  # symlinks followed in one path, as the kernel's ELOOP limit
_DELETED = 3  # watchfiles.Change.deleted

Signature = tuple[int, ...] | None
"""(dev, ino, size, mtime_ns, ctime_ns) of what a path resolves to; (-1, errno) when it
cannot be looked at; None when it does not exist."""

log = get_logger()


def signature(path: str) -> Signature:
    """What `path` looks like now; two equal signatures mean the file was not touched."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # EACCES, ELOOP, ...: a state of its own, left when it clears
        return (-1, exc.errno or 0)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where to listen for a set of paths."""

    folders: Mapping[str, tuple[int, int]]
    """The folders to watch, each with its (dev, ino): a folder replaced under the same
    name needs a new watch."""
    names: frozenset[str]
    """Every entry looked up in those folders: an event about any other entry is noise."""
    files: Mapping[str, frozenset[str]]
    """The entry each path resolves to (existing or not) -> the watched paths it is."""


def plan(paths: Iterable[str]) -> Plan:
    """The folders whose entries decide what `paths` resolve to (blocking: lstat calls)."""
    folders: dict[str, tuple[int, int]] = {}
    names: set[str] = set()
    files: dict[str, set[str]] = {}
    for path in paths:
        final = _walk(path, folders, names)
        if final is not None:
            files.setdefault(final, set()).add(path)
    return Plan(folders, frozenset(names), {k: frozenset(v) for k, v in files.items()})


def _walk(path: str, folders: dict[str, tuple[int, int]], names: set[str]) -> str | None:
    """Resolve `path` one entry at a time, as the kernel does, noting each folder that
    holds a symlink, the final entry, or the first missing entry. Returns the final entry."""
    parts = deque(path.split("/"))
    current = "/"
    identity = _identity("/")
    if identity is None:
        return None
    hops = 0
    while parts:
        name = parts.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            identity = _identity(current)
            if identity is None:
                return None
            continue
        entry = os.path.join(current, name)
        names.add(entry)
        last = not any(p not in ("", ".") for p in parts)
        try:
            st = os.lstat(entry)
        except OSError:  # missing (or unreadable): watch where it would appear
            folders[current] = identity
            return entry if last else None
        if stat.S_ISLNK(st.st_mode):
            folders[current] = identity
            hops += 1
            try:
                target = os.readlink(entry)
            except OSError:
                return None
            if hops > _MAX_HOPS:
                return None
            if target.startswith("/"):
                current = "/"
                identity = _identity("/")
                if identity is None:
                    return None
            parts.extendleft(reversed(target.split("/")))
            continue
        if last:
            folders[current] = identity
            return entry
        if not stat.S_ISDIR(st.st_mode):  # a file where a folder should be
            folders[current] = identity
            return None
        current, identity = entry, (st.st_dev, st.st_ino)
    return current  # the path names a folder


def _changed_since(path: str, sig: Signature, since_ns: int) -> bool:
    """Whether `path` may have changed at or after `since_ns`: its file's ctime says so; a
    missing file leaves no time of its own, but its removal (or a rename away) touched
    the folder it was in."""
    if sig is not None:
        return sig[0] != -1 and sig[4] >= since_ns - _TICK_NS
    folder = os.path.dirname(path)
    while True:
        try:
            st = os.stat(folder)
        except OSError:
            parent = os.path.dirname(folder)
            if parent == folder:
                return False
            folder = parent
            continue
        return st.st_mtime_ns >= since_ns - _TICK_NS


def _identity(folder: str) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Control:
    """What the event loop tells the thread: new paths, or stop. `interrupt` wakes it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.interrupt = threading.Event()
        self.wanted: frozenset[str] | None = None
        self.since_ns = 0
        self.closed = False

    def want(self, keys: frozenset[str], since_ns: int) -> None:
        with self.lock:
            # set_paths twice before the thread looked: the earlier time covers both
            self.since_ns = since_ns if self.wanted is None else min(self.since_ns, since_ns)
            self.wanted = keys
            self.interrupt.set()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.interrupt.set()

    def take(self) -> tuple[frozenset[str] | None, int, bool]:
        """(new paths or None, since when, still open); re-arms `interrupt`."""
        with self.lock:
            self.interrupt.clear()
            wanted, self.wanted = self.wanted, None
            return wanted, self.since_ns, not self.closed


class _Unusable(Exception):
    """inotify cannot watch these folders now; the message says why."""


@dataclass(frozen=True, slots=True)
class _Settings:
    step_ms: int
    debounce_ms: int
    rescan_s: float
    poll_s: float
    retry_s: float


class _Engine:
    """The thread's side: signatures, inotify, polling. Touched only by its thread."""

    def __init__(
        self, control: _Control, deliver: Callable[[set[str]], bool], settings: _Settings
    ) -> None:
        self.control = control
        self.deliver = deliver
        self.settings = settings
        self.signatures: dict[str, Signature] = {}
        self.polling: str | None = None  # why, while polling

    def run(self) -> None:
        retry_at = 0.0
        vanished = 0
        while self._take():
            if self.polling is None or time.monotonic() >= retry_at:
                try:
                    if self._inotify():
                        vanished = 0
                        continue
                    # a folder vanished between planning and arming: plan again, but one
                    # that stat keeps seeing and inotify never does means polling
                    vanished += 1
                    if vanished < 3:
                        continue
                    raise _Unusable("a folder to watch vanished each time it was to be watched")
                except _Unusable as exc:
                    vanished = 0
                    retry_at = time.monotonic() + self.settings.retry_s
                    if self.polling != str(exc):
                        log.warning("watch.polling", reason=str(exc), interval=self.settings.poll_s)
                    self.polling = str(exc)
            self._sweep(set())
            self.control.interrupt.wait(self.settings.poll_s)

    def _take(self) -> bool:
        """Apply what the loop asked. A path new to the set starts from how it looks now,
        but counts as changed if its file changed since `set_paths` was called (the
        thread looks a little later; what happened in between must not become the
        baseline unseen)."""
        wanted, since_ns, still_open = self.control.take()
        if wanted is not None:
            kept = {key: self.signatures[key] for key in wanted if key in self.signatures}
            new = {key: signature(key) for key in wanted if key not in self.signatures}
            self.signatures = kept | new
            recent = {key for key, sig in new.items() if _changed_since(key, sig, since_ns)}
            if recent and not self.deliver(recent):
                self.control.close()
                return False
        return still_open

    def _sweep(self, touched: set[str]) -> None:
        """Report every path whose signature moved, and those an event named directly (a
        rewrite within one timestamp tick keeps its signature; the event still saw it)."""
        changed = {key for key in touched if key in self.signatures}
        for key, before in self.signatures.items():
            now = signature(key)
            if now != before:
                self.signatures[key] = now
                changed.add(key)
        if changed and not self.deliver(changed):
            self.control.close()  # nobody left to tell

    def _inotify(self) -> bool:
        """Watch with inotify until the folders to watch change (True), or False when a
        folder vanished before it could be watched; raises _Unusable."""
        armed_for = plan(self.signatures)
        try:
            notify = RustNotify(sorted(armed_for.folders), False, False, 0, False, False)
        except FileNotFoundError:
            return False
        except (OSError, RuntimeError) as exc:  # EMFILE, ENOSPC, EACCES, ...
            raise _Unusable(_describe(exc)) from exc
        if self.polling is not None:
            log.info("watch.inotify", previous=self.polling)
            self.polling = None
        try:
            self._listen(notify, armed_for)
        except RuntimeError as exc:  # WatchfilesRustInternalError: the watcher broke
            raise _Unusable(_describe(exc)) from exc
        finally:
            notify.close()
        return True

    def _listen(self, notify: RustNotify, armed_for: Plan) -> None:
        touched: set[str] = set()
        look = True
        rearm = False
        current = armed_for
        s = self.settings
        while True:
            if look:
                # after arming, and after each batch: what was written before the watch
                # existed, and whether the folders moved
                current = plan(self.signatures)
                self._sweep(touched)
                if rearm or current.folders != armed_for.folders:
                    return
            raw = notify.watch(
                s.debounce_ms, s.step_ms, int(s.rescan_s * 1000), self.control.interrupt
            )
            touched = set()
            if raw == "stop":
                if not self._take():
                    return
                look = True
            elif isinstance(raw, set):
                relevant = {p for _, p in raw if p in current.names or p in current.folders}
                touched = {
                    key
                    for change, p in raw
                    if change != _DELETED
                    for key in current.files.get(p, ())
                }
                look = bool(relevant)
                # an event about a watched folder itself: removed or moved away, its watch is
                # gone, even if a new folder took its name (and, often, its inode number)
                rearm = any(p in armed_for.folders for _, p in raw)
            else:  # "timeout": the slow rescan; "signal": never in this thread
                look = True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Inbox:
    """The loop's side of the hand-over; held by the thread, so it must not hold the Watcher
    (dropping the Watcher is what stops the thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: set[str] = set()
        self.ready = asyncio.Event()
        self.done: asyncio.Future[None] = loop.create_future()

    def deliver(self, keys: set[str]) -> bool:
        """From the thread: False when the loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self._add, keys)
        except RuntimeError:  # event loop closed
            return False
        return True

    def _add(self, keys: set[str]) -> None:
        self.pending |= keys
        self.ready.set()

    def finished(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.ready.set()


class Watcher:
    """Batches of watched paths whose file changed.

    Create it before the first read of the files (its first look is the baseline):
    a change after that is reported, however it was made. Creating it inside a running
    event loop starts watching at once; otherwise at the first `changes()`.
    """

    def __init__(
        self,
        paths: Iterable[Path],
        *,
        step_ms: int = STEP_MS,
        debounce_ms: int = DEBOUNCE_MS,
        rescan_s: float = RESCAN_S,
        poll_s: float = POLL_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self._settings = _Settings(step_ms, debounce_ms, rescan_s, poll_s, retry_s)
        self._control = _Control()
        self._by_key: dict[str, set[Path]] = {}
        self._inbox: _Inbox | None = None
        self._engine: _Engine | None = None
        self._closed = False
        weakref.finalize(self, self._control.close)
        self.set_paths(paths)
        with contextlib.suppress(RuntimeError):  # no running loop: start at changes()
            self._start(asyncio.get_running_loop())

    @property
    def polling(self) -> bool:
        """True while inotify cannot be used and paths are polled instead."""
        return self._engine is not None and self._engine.polling is not None

    def set_paths(self, paths: Iterable[Path], *, since: float | None = None) -> None:
        """Replace the watched set. A path kept keeps its last signature (a change made
        meanwhile is still reported); a new one is reported if its file changed at or after
        `since` (a time.time(); default now: the agent may pass when it read the files)."""
        since_ns = time.time_ns() if since is None else int(since * 1_000_000_000)
        cwd = os.getcwd()
        by_key: dict[str, set[Path]] = {}
        for path in paths:
            by_key.setdefault(os.path.join(cwd, os.fspath(path)), set()).add(path)
        self._by_key = by_key
        self._control.want(frozenset(by_key), since_ns)

    async def changes(self) -> AsyncIterator[set[Path]]:
        """Each batch as it comes; ends at `close()`. Cancelling the iteration is immediate
        and loses nothing: changes keep collecting until the next iteration."""
        inbox = self._start(asyncio.get_running_loop())
        while not self._closed:
            await inbox.ready.wait()
            inbox.ready.clear()
            keys, inbox.pending = inbox.pending, set()
            batch = {path for key in keys for path in self._by_key.get(key, ())}
            if batch and not self._closed:
                yield batch
            elif inbox.done.done():
                return

    async def close(self) -> None:
        """Stop watching; waits for the thread at most `CLOSE_WAIT_S` (it stops within a
        step unless a look at the disk hangs, and then it is a daemon nobody joins)."""
        self._closed = True
        self._control.close()
        if self._inbox is not None:
            self._inbox.ready.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._inbox.done), CLOSE_WAIT_S)

    def _start(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        if self._inbox is not None:
            return self._inbox
        inbox = self._inbox = _Inbox(loop)
        engine = self._engine = _Engine(self._control, inbox.deliver, self._settings)
        threading.Thread(
            target=_serve, args=(engine, inbox), name="smagent-watch", daemon=True
        ).start()
        return inbox


def _serve(engine: _Engine, inbox: _Inbox) -> None:
    try:
        engine.run()
    except Exception as exc:  # a bug: say so, and let changes() end rather than hang
        log.error("watch.failed", error=_describe(exc))
    finally:
        inbox.finished()
