"""Write rendered files atomically, with the right mode and owner, only when they change.

This module is the only place that touches destination files, and it does one
thing: make `destination` hold `data` with `mode`/`owner`/`group`, so that a
reader (PostgreSQL, PgBouncer, ...) sees either the old file or the new one,
never a mix, never an empty file, and never a file more permissive than asked.

How one `write_file` goes, and why:

1. Open the destination's folder by walking its path one component at a time
   from `/` (`smagent.folders`), creating missing folders on the way. Every
   later step works on that folder's descriptor (`dir_fd=`), so a folder
   renamed or swapped for a symlink meanwhile cannot split a write between two
   places. A symlink on the path is followed as the kernel would, except one
   in a folder other users can write to that they could have planted: that
   is refused, whatever `fs.protected_symlinks` says on this host.
2. Look at what is at the destination without following it: a symlink counts
   as "changed" and is replaced by a regular file, never followed, so a symlink
   planted there cannot redirect secrets into another file. A directory, FIFO,
   socket or device is an error (never opened: opening a FIFO could hang, a
   device could act). A file with other hard links is rewritten, never changed
   in place, so a link planted at the destination never alters the other file.
3. Same bytes, right metadata -> nothing is touched (same inode, same mtime), so
   reload actions keyed on "file written" do not fire for nothing. Same bytes,
   wrong mode/owner -> fixed in place with `fchmod`/`fchown` on that descriptor.
4. Otherwise write a temporary sibling (same folder, hence same filesystem, so
   the rename is atomic) under an unpredictable name: created
   `O_EXCL|O_NOFOLLOW` with `mode` (the umask can only remove bits), locked
   (`flock`), `fchmod` to exactly `mode`, `fchown`, data, `fsync`, then `rename`
   over the destination and `fsync` the folder so the rename itself survives a
   power cut. Any failure removes the temporary file, and the old destination
   is left exactly as it was. Two writers of one destination each rename a
   complete file: the last one wins, neither sees an error.

A crash (SIGKILL, power loss) between creating and renaming the temporary file
leaves it behind; its name is recognisable (`.NAME.smagent-tmp-<16 hex>`), and
`clean_stale_temp_files` removes those of a pass's destinations at its start.
Only leftovers of dead writers are removed: a writer holds an exclusive `flock`
on its temporary file from creation until the rename, the kernel drops it when
the writer dies however it dies, and the cleaner removes a file only while it
holds that lock itself. So two runs on the same destinations (two `render
--once`, or an agent and a one-shot run) never delete each other's files in
flight. `flock` rather than `fcntl` record locks because a second descriptor conflicts
even inside one process (an agent cleaning while one of its own writes is in
flight); the descriptor is O_CLOEXEC, so an action's process never holds it.

Nothing here logs, and no error message ever holds file content: errors name
the destination and the cause only (`WriteError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import grp
import hashlib
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from smagent.folders import FolderError, NewFolders, open_folder

__all__ = [
    "TEMP_MARKER",
    "FileSpec",
    "Leftovers",
    "UnknownOwnerError",
    "WriteError",
    "WriteOutcome",
    "clean_stale_temp_files",
    "compare",
    "folders_writable_by_others",
    "resolve_group",
    "resolve_owner",
    "temp_path_for",
    "write_file",
    "write_file_async",
]

TEMP_MARKER = ".smagent-tmp-"
"""What every temporary file name holds: `.{destination name}{TEMP_MARKER}{16 hex}`."""

_RANDOM_HEX_CHARS = 16
_HEX_DIGITS = frozenset("0123456789abcdef")
# NAME_MAX is 255 bytes on every Linux filesystem we target; the temporary name
# adds 1 + len(TEMP_MARKER) + 16 = 30 bytes, so longer names are shortened.
_MAX_NAME_BYTES_IN_TEMP = 200
_READ_CHUNK = 1 << 20
_OPEN_EXISTING_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_NAME_ATTEMPTS = 8
"""Fresh names tried when one is taken: 64 random bits collide only if someone planted it."""
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class FileSpec(msgspec.Struct, frozen=True):
    """Where a rendered file goes and who may read it.

    `owner`/`group` are names or ids; None leaves them as the process creates
    the file (root:root when the agent runs as root) and does not check them on
    an existing file.
    """

    destination: Path
    mode: int = 0o600
    owner: str | int | None = None
    group: str | int | None = None

    def __post_init__(self) -> None:
        if not self.destination.is_absolute():
            raise ValueError(f"destination {self.destination}: must be an absolute path")
        if self.destination.name in ("", ".", ".."):
            raise ValueError(f"destination {self.destination}: must name a file")
        if isinstance(self.mode, bool) or not 0 <= self.mode <= 0o7777:
            raise ValueError(f"destination {self.destination}: mode {self.mode!r} is not 0..0o7777")


class WriteOutcome(enum.Enum):
    """What `write_file` did (or, from `compare`, would do)."""

    WRITTEN = "written"
    """Bytes changed, or the file was missing, a symlink or hard-linked: atomically replaced."""
    UNCHANGED = "unchanged"
    """Same bytes and right metadata: the file was not touched at all."""
    METADATA_FIXED = "metadata_fixed"
    """Same bytes, wrong mode/owner/group: fixed in place, content not rewritten."""


class WriteError(Exception):
    """A destination could not be checked or written.

    The old file is then unchanged, with two exceptions the reason spells out:
    the folder fsync after the rename failed (the new file is in place but may
    not survive a power cut), or an in-place fix got only its chown done. The
    message names the destination and the cause, never the content.
    """

    def __init__(self, destination: Path, reason: str) -> None:
        super().__init__(f"cannot write {destination}: {reason}")
        self.destination = destination
        self.reason = reason


class UnknownOwnerError(ValueError):
    """An owner or group name that this host does not know.

    A ValueError (not a WriteError) because it is about configuration, not one
    write: config validation can call `resolve_owner` before any file exists.
    `write_file` wraps it in a WriteError naming the destination.
    """


def resolve_owner(owner: str | int | None) -> int | None:
    """The uid for a user name or id; a digit string counts as an id if no user has that name."""
    return _resolve(owner, "owner", "user", lambda name: pwd.getpwnam(name).pw_uid)


def resolve_group(group: str | int | None) -> int | None:
    """The gid for a group name or id; a digit string counts as an id if no group has that name."""
    return _resolve(group, "group", "group", lambda name: grp.getgrnam(name).gr_gid)


def temp_path_for(destination: Path) -> Path:
    """A fresh, unpredictable temporary path next to `destination`, recognisable by the cleaner."""
    return destination.parent / f"{_temp_prefix(destination.name)}{secrets.token_hex(8)}"


def compare(spec: FileSpec, data: bytes) -> WriteOutcome:
    """What `write_file(spec, data)` would do, without writing or creating anything.

    Raises the WriteError that `write_file` would raise where it can be known
    without writing (unknown owner, a directory at the destination, a file
    where a folder should be). Used by `--dry-run`.
    """
    destination = spec.destination
    uid, gid = _resolve_ids(spec)
    folder_fd = _open_folder(destination)
    if folder_fd is None:
        return WriteOutcome.WRITTEN  # write_file would create the folder
    try:
        existing = _open_existing(folder_fd, destination)
        if existing is None:
            return WriteOutcome.WRITTEN
        try:
            current, same = _examine(existing, destination, data)
        finally:
            os.close(existing)
        return _decide(current, same, spec.mode, uid, gid)
    finally:
        os.close(folder_fd)


def write_file(spec: FileSpec, data: bytes) -> WriteOutcome:
    """Make `spec.destination` hold `data` with the spec's mode and owner; see the module docstring.

    Blocking (it fsyncs): async code calls `write_file_async`.
    """
    destination = spec.destination
    uid, gid = _resolve_ids(spec)
    folder_fd = _open_folder(destination, NewFolders(_folder_mode(spec.mode), uid, gid))
    assert folder_fd is not None  # created when missing
    try:
        existing = _open_existing(folder_fd, destination)
        if existing is not None:
            try:
                current, same = _examine(existing, destination, data)
                outcome = _decide(current, same, spec.mode, uid, gid)
                if outcome is WriteOutcome.METADATA_FIXED:
                    _fix_metadata(existing, destination, spec.mode, uid, gid)
            finally:
                os.close(existing)
            if outcome is not WriteOutcome.WRITTEN:
                return outcome
        _replace_atomically(folder_fd, destination, data, spec.mode, uid, gid)
        return WriteOutcome.WRITTEN
    finally:
        os.close(folder_fd)


async def write_file_async(spec: FileSpec, data: bytes) -> WriteOutcome:
    """`write_file` in a worker thread, so fsync never blocks the event loop."""
    return await asyncio.to_thread(write_file, spec, data)


class Leftovers(msgspec.Struct, frozen=True):
    """What `clean_stale_temp_files` found beside one destination."""

    destination: Path
    removed: tuple[Path, ...] = ()
    """Temporary files of writers that died mid-write: removed."""
    in_use: tuple[Path, ...] = ()
    """Temporary files a live writer (this process or another) is writing: kept."""
    error: WriteError | None = None
    """The folder could not be listed or a leftover not removed; the write reports its own."""


def clean_stale_temp_files(destinations: Iterable[Path]) -> list[Leftovers]:
    """Remove the temporary files that dead writers left beside `destinations`.

    Each folder is listed once, however many destinations it holds. Only
    regular files whose names match one of the destinations' temporary
    pattern exactly are candidates (other files and other destinations'
    temporary files stay), and a candidate is removed only while this call
    holds its `flock`: a writer still alive holds it, so its file is kept.
    One Leftovers per destination, in the order given; a missing folder has
    nothing to clean.
    """
    wanted = list(destinations)
    by_folder: dict[Path, dict[str, Path]] = {}
    for destination in wanted:
        by_folder.setdefault(destination.parent, {})[_temp_prefix(destination.name)] = destination
    found: dict[Path, Leftovers] = {}
    for prefixes in by_folder.values():
        found.update(_clean_folder(prefixes))
    return [found[destination] for destination in dict.fromkeys(wanted)]


def folders_writable_by_others(destinations: Iterable[Path]) -> list[Path]:
    """The folders on the destinations' paths that let other users replace what we write.

    That is a destination's own folder when others may write to it (sticky or
    not: they can plant names before we write), and any folder above it that
    others may write to without the sticky bit (they can swap the folders
    below). Folders that do not exist yet are not looked at; a folder that
    cannot be opened is left to the write to report.
    """
    one_per_folder = {destination.parent: destination for destination in destinations}
    exposed: dict[Path, None] = {}
    for destination in one_per_folder.values():
        seen: list[Path] = []
        with contextlib.suppress(WriteError):
            fd = _open_folder(destination, exposed=seen)
            if fd is not None:
                os.close(fd)
        exposed.update(dict.fromkeys(seen))
    return list(exposed)


# -- the pure decision ---------------------------------------------------------


def _decide(
    current: os.stat_result, same_bytes: bool, mode: int, uid: int | None, gid: int | None
) -> WriteOutcome:
    """Whether an existing regular file needs rewriting, a metadata fix, or nothing.

    A file with other hard links is rewritten (a fresh inode by rename): fixing
    its mode or owner in place would change the other names' file too.
    """
    if not same_bytes or current.st_nlink != 1:
        return WriteOutcome.WRITTEN
    if (
        stat.S_IMODE(current.st_mode) != mode
        or (uid is not None and current.st_uid != uid)
        or (gid is not None and current.st_gid != gid)
    ):
        return WriteOutcome.METADATA_FIXED
    return WriteOutcome.UNCHANGED


# -- names ---------------------------------------------------------------------


def _temp_prefix(name: str) -> str:
    """`.NAME.smagent-tmp-`, with NAME shortened (plus a hash) when the result would not fit."""
    if len(os.fsencode(name)) > _MAX_NAME_BYTES_IN_TEMP:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
        # 40 characters are at most 160 bytes, whatever the encoding.
        name = f"{name[:40]}~{digest}"
    return f".{name}{TEMP_MARKER}"


def _resolve(
    value: str | int | None, what: str, kind: str, lookup_name: Callable[[str], int]
) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise UnknownOwnerError(f"{what} {value!r}: expected a name or a numeric id")
    if isinstance(value, int):
        if value < 0:
            raise UnknownOwnerError(f"{what} {value}: ids cannot be negative")
        return value
    try:
        return lookup_name(value)
    except KeyError:
        if value.isascii() and value.isdigit():
            return int(value)
        raise UnknownOwnerError(f"{what} {value!r}: no such {kind}") from None


def _resolve_ids(spec: FileSpec) -> tuple[int | None, int | None]:
    try:
        return resolve_owner(spec.owner), resolve_group(spec.group)
    except UnknownOwnerError as exc:
        raise WriteError(spec.destination, str(exc)) from exc


# -- folders -------------------------------------------------------------------


def _folder_mode(file_mode: int) -> int:
    """rwx for the owner, plus r-x for group/others only where the file grants them something.

    0600 -> 0700, 0640 -> 0750, 0644 -> 0755: a new folder never shows more than
    its file does, and never hides a file from a reader its mode allows.
    """
    mode = 0o700
    if file_mode & 0o070:
        mode |= 0o050
    if file_mode & 0o007:
        mode |= 0o005
    return mode


def _open_folder(
    destination: Path, make: NewFolders | None = None, exposed: list[Path] | None = None
) -> int | None:
    """`folders.open_folder` on the destination's folder, its errors naming the destination."""
    try:
        return open_folder(destination.parent, make, exposed)
    except FolderError as exc:
        raise WriteError(destination, exc.reason) from exc


# -- temporary files -----------------------------------------------------------


def _temp_owner(prefixes: dict[str, Path], name: str) -> Path | None:
    """The destination whose temporary pattern `name` matches exactly, if any."""
    random_part = name[-_RANDOM_HEX_CHARS:]
    if len(name) <= _RANDOM_HEX_CHARS or not _HEX_DIGITS.issuperset(random_part):
        return None
    return prefixes.get(name[:-_RANDOM_HEX_CHARS])


def _clean_folder(prefixes: dict[str, Path]) -> dict[Path, Leftovers]:
    """One folder's part of `clean_stale_temp_files`: one listing, then one lock per candidate."""
    any_destination = next(iter(prefixes.values()))
    folder = any_destination.parent
    removed: dict[Path, list[Path]] = {d: [] for d in prefixes.values()}
    in_use: dict[Path, list[Path]] = {d: [] for d in prefixes.values()}
    try:
        folder_fd = _open_folder(any_destination)
    except WriteError as exc:
        return {d: Leftovers(d, error=WriteError(d, exc.reason)) for d in prefixes.values()}
    if folder_fd is None:
        return {d: Leftovers(d) for d in prefixes.values()}
    errors: dict[Path, WriteError] = {}
    try:
        with os.scandir(folder_fd) as entries:
            candidates = sorted(
                (entry.name, owner)
                for entry in entries
                if (owner := _temp_owner(prefixes, entry.name)) is not None
                and entry.is_file(follow_symlinks=False)
            )
        for name, owner in candidates:
            try:
                dead = _remove_if_dead(folder_fd, name)
            except OSError as exc:
                errors.setdefault(owner, WriteError(owner, _reason(f"removing stale {name}", exc)))
                continue
            if dead is not None:
                (removed if dead else in_use)[owner].append(folder / name)
    except OSError as exc:
        error = _reason(f"listing folder {folder}", exc)
        return {d: Leftovers(d, error=WriteError(d, error)) for d in prefixes.values()}
    finally:
        os.close(folder_fd)
    return {
        d: Leftovers(d, tuple(removed[d]), tuple(in_use[d]), errors.get(d))
        for d in prefixes.values()
    }


def _remove_if_dead(folder_fd: int, name: str) -> bool | None:
    """Remove `name` if no live writer holds its lock: True removed, False in use, None gone."""
    try:
        fd = os.open(name, _OPEN_EXISTING_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None  # renamed into place or removed meanwhile
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # replaced by a symlink: not a file of ours
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Locked: its writer is dead, or finished (renamed) since we listed it.
        try:
            now = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            return None
        try:
            os.unlink(name, dir_fd=folder_fd)  # under our lock: no writer can be using it
        except FileNotFoundError:
            return None  # its writer gave the name up while we held the lock
        return True
    finally:
        os.close(fd)


def _create_temp(folder_fd: int, destination: Path, mode: int) -> tuple[int, str]:
    """A new, empty, locked temporary file beside `destination`: (descriptor, name).

    `O_EXCL|O_NOFOLLOW`: a name someone planted (a symlink, a file) is never
    opened, only skipped for a fresh one. The lock is taken right after the
    create; a cleaner that got in between holds the lock (we skip the name) or
    has already unlinked the file (`st_nlink` 0: we skip it too).
    """
    for _ in range(_TEMP_NAME_ATTEMPTS):
        name = temp_path_for(destination).name
        # Created with mode & ~umask, a subset of mode: never more permissive.
        try:
            fd = _retry_on_eexist(folder_fd, name, mode)
        except OSError as exc:  # a folder not writable (mode, immutable, read-only), disk full
            where = f"creating a temporary file in {destination.parent}"
            raise WriteError(destination, _reason(where, exc)) from exc
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=folder_fd)
            os.close(fd)
            continue
        except OSError:
            pass  # no locks on this filesystem: write anyway; the cleaner will keep the file
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            continue
        return fd, name
    raise WriteError(
        destination,
        f"creating a temporary file in {destination.parent}: "
        f"{_TEMP_NAME_ATTEMPTS} fresh random names were all taken",
    )


def _retry_on_eexist(folder_fd: int, name: str, mode: int) -> int | None:
    try:
        return os.open(name, _CREATE_TEMP_FLAGS, mode, dir_fd=folder_fd)
    except FileExistsError:
        return None


# -- the write -----------------------------------------------------------------


def _reason(step: str, exc: OSError) -> str:
    """`step: cause`, the cause from the errno text only (no paths twice, never content)."""
    cause = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "")
    return f"{step}: {(cause or type(exc).__name__).lower()}"


def _open_existing(folder_fd: int, destination: Path) -> int | None:
    """A read descriptor on the regular file at `destination`, or None if missing or a symlink.

    What is there is looked at (lstat) before it is opened: a FIFO, socket or
    device is reported without being opened.
    """
    name = destination.name
    try:
        st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WriteError(destination, _reason("looking at the existing file", exc)) from exc
    if stat.S_ISLNK(st.st_mode):
        return None  # replaced, never followed
    _require_regular(st, destination)
    try:
        fd = os.open(name, _OPEN_EXISTING_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symlink meanwhile: replace it
            return None
        raise WriteError(destination, _reason("opening the existing file", exc)) from exc
    try:
        _require_regular(os.fstat(fd), destination)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_regular(st: os.stat_result, destination: Path) -> None:
    kind = stat.S_IFMT(st.st_mode)
    if kind != stat.S_IFREG:
        what = _KINDS.get(kind, "of an unknown kind")
        raise WriteError(
            destination,
            f"the destination is {what}, not a regular file: remove it or choose another path",
        )


def _examine(fd: int, destination: Path, data: bytes) -> tuple[os.stat_result, bool]:
    """The file's stat and whether its bytes equal `data` (read only if the sizes match)."""
    try:
        current = os.fstat(fd)
        if current.st_size != len(data):
            return current, False
        view = memoryview(data)
        offset = 0
        while chunk := os.read(fd, _READ_CHUNK):
            end = offset + len(chunk)
            if end > len(data) or view[offset:end] != chunk:
                return current, False
            offset = end
        return current, offset == len(data)
    except OSError as exc:
        raise WriteError(destination, _reason("reading the existing file", exc)) from exc


def _fix_metadata(fd: int, destination: Path, mode: int, uid: int | None, gid: int | None) -> None:
    """chown then chmod in place: chown can clear set-id bits, so chmod comes last."""
    try:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise WriteError(destination, _reason("fixing mode/owner in place", exc)) from exc


def _replace_atomically(
    folder_fd: int, destination: Path, data: bytes, mode: int, uid: int | None, gid: int | None
) -> None:
    """Locked temporary sibling -> exact mode -> owner -> data -> fsync -> rename -> fsync folder.

    The temporary file stays open (so locked) until it has been renamed: a
    cleaner never sees it unlocked while it still has its temporary name.
    """
    folder = destination.parent
    fd, temp_name = _create_temp(folder_fd, destination, mode)
    temp_exists = True
    step = "setting the temporary file's mode"
    try:
        os.fchmod(fd, mode)
        if uid is not None or gid is not None:
            step = "setting the temporary file's owner"
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.fchmod(fd, mode)  # chown cleared the set-id bits
        step = f"writing {len(data)} bytes to a temporary file in {folder}"
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        step = "syncing the temporary file"
        os.fsync(fd)
        step = "renaming the temporary file over the destination"
        os.replace(temp_name, destination.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        temp_exists = False
        closing, fd = fd, -1
        with contextlib.suppress(OSError):  # the data are fsynced: close cannot lose them now
            os.close(closing)
        step = f"syncing folder {folder} (the new file is in place)"
        os.fsync(folder_fd)
    except OSError as exc:
        _discard(fd, folder_fd, temp_name if temp_exists else None)
        raise WriteError(destination, _reason(step, exc)) from exc
    except BaseException:
        _discard(fd, folder_fd, temp_name if temp_exists else None)
        raise


def _discard(fd: int, folder_fd: int, temp_name: str | None) -> None:
    """Best-effort clean-up after a failed write; the original error is what matters.

    Unlink before close: the file goes while we still hold its lock.
    """
    if temp_name is not None:
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=folder_fd)
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
