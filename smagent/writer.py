"""Write rendered files atomically, with the right mode and owner, only when they change.

This module is the only place that touches destination files, and it does one
thing: make `destination` hold `data` with `mode`/`owner`/`group`, so that a
reader (PostgreSQL, PgBouncer, ...) sees either the old file or the new one,
never a mix, never an empty file, and never a file more permissive than asked.

How one `write_file` goes, and why:

1. Look at what is there, through a descriptor opened with `O_NOFOLLOW`: a
   symlink counts as "changed" and is replaced by a regular file, never
   followed, so a symlink planted at the destination cannot redirect secrets
   into another file. A directory or any other non-regular file is an error.
2. Same bytes, right metadata -> nothing is touched (same inode, same mtime), so
   reload actions keyed on "file written" do not fire for nothing. Same bytes,
   wrong mode/owner -> fixed in place with `fchmod`/`fchown` on that descriptor.
3. Otherwise write a temporary sibling (same folder, hence same filesystem, so
   the rename is atomic): created `O_EXCL|O_NOFOLLOW` with `mode` (the umask can
   only remove bits), `fchmod` to exactly `mode`, `fchown`, data, `fsync`, then
   `rename` over the destination and `fsync` the folder so the rename itself
   survives a power cut. Any failure removes the temporary file, and the old
   destination is left exactly as it was.

A crash (SIGKILL, power loss) between creating and renaming the temporary file
leaves it behind; its name is recognisable (`.NAME.smagent-tmp-<16 hex>`), and
`clean_stale_temp_files` removes those of one destination at the next start.
Cleaning is not done inside `write_file`, because another writer of the same
destination could be mid-write at that moment.

Nothing here logs, and no error message ever holds file content: errors name
the destination and the cause only (`WriteError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import grp
import hashlib
import os
import pwd
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TEMP_MARKER",
    "FileSpec",
    "UnknownOwnerError",
    "WriteError",
    "WriteOutcome",
    "clean_stale_temp_files",
    "compare",
    "resolve_group",
    "resolve_owner",
    "temp_path_for",
    "write_file",
    "write_file_async",
]

TEMP_MARKER = ".smagent-tmp-"
"""What every temporary file name holds: `.{destination name}{TEMP_MARKER}{16 hex}`."""

_RANDOM_HEX_CHARS = 16
# NAME_MAX is 255 bytes on every Linux filesystem we target; the temporary name
# adds 1 + len(TEMP_MARKER) + 16 = 30 bytes, so longer names are shortened.
_MAX_NAME_BYTES_IN_TEMP = 200
_READ_CHUNK = 1 << 20
_OPEN_EXISTING_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CREATE_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class FileSpec:
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
    """Bytes changed, or the file was missing or a symlink: atomically replaced."""
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
    """A fresh temporary path next to `destination`, recognisable by `clean_stale_temp_files`."""
    return destination.parent / f"{_temp_prefix(destination.name)}{secrets.token_hex(8)}"


def compare(spec: FileSpec, data: bytes) -> WriteOutcome:
    """What `write_file(spec, data)` would do, without writing or creating anything.

    Raises the WriteError that `write_file` would raise where it can be known
    without writing (unknown owner, a directory at the destination, a file
    where a folder should be). Used by `--dry-run`.
    """
    destination = spec.destination
    uid, gid = _resolve_ids(spec)
    try:
        folder_fd = os.open(destination.parent, _OPEN_FOLDER_FLAGS)
    except FileNotFoundError:
        return WriteOutcome.WRITTEN  # write_file would create the folder
    except OSError as exc:
        raise WriteError(destination, _reason(f"opening folder {destination.parent}", exc)) from exc
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
    folder_fd = _open_or_make_folder(destination, spec.mode, uid, gid)
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


def clean_stale_temp_files(destination: Path) -> list[Path]:
    """Remove temporary files that a crashed run left for `destination`; return them.

    Only regular files in the destination's folder whose names match this
    destination's temporary pattern exactly are removed: other files and other
    destinations' temporary files stay. A missing folder has nothing to clean.
    """
    folder = destination.parent
    pattern = re.compile(
        re.escape(_temp_prefix(destination.name)) + f"[0-9a-f]{{{_RANDOM_HEX_CHARS}}}"
    )
    removed: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            candidates = [
                Path(entry.path)
                for entry in entries
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return removed
    except OSError as exc:
        raise WriteError(destination, _reason(f"listing folder {folder}", exc)) from exc
    for path in sorted(candidates):
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        except OSError as exc:
            raise WriteError(destination, _reason(f"removing stale {path.name}", exc)) from exc
        removed.append(path)
    return removed


# -- the pure decision ---------------------------------------------------------


def _decide(
    current: os.stat_result, same_bytes: bool, mode: int, uid: int | None, gid: int | None
) -> WriteOutcome:
    """Whether an existing regular file needs rewriting, a metadata fix, or nothing."""
    if not same_bytes:
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


# -- I/O -----------------------------------------------------------------------


def _reason(step: str, exc: OSError) -> str:
    """`step: cause`, the cause from the errno text only (no paths twice, never content)."""
    cause = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "")
    return f"{step}: {(cause or type(exc).__name__).lower()}"


def _open_existing(folder_fd: int, destination: Path) -> int | None:
    """A read descriptor on the regular file at `destination`, or None if missing or a symlink."""
    try:
        fd = os.open(destination.name, _OPEN_EXISTING_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink: replace it, never follow it
            return None
        raise WriteError(destination, _reason("opening the existing file", exc)) from exc
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        what = "a directory" if kind == stat.S_IFDIR else "not a regular file"
        raise WriteError(destination, f"the destination is {what}")
    return fd


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


def _open_or_make_folder(
    destination: Path, file_mode: int, uid: int | None, gid: int | None
) -> int:
    """Open the destination's folder, creating missing folders first.

    Creating them saves a deploy step for paths like /etc/pgbouncer/secrets/,
    but a folder made by root with the process umask could be world-listable or
    unreachable for the service. So new folders get a mode derived from the
    file's (`_folder_mode`: 0700 for the default 0600), set exactly whatever the
    umask, and the spec's owner/group, so the service can reach its file.
    Existing folders are never changed.
    """
    folder = destination.parent
    missing: list[Path] = []
    probe = folder
    while True:
        try:
            os.stat(probe)
            break
        except FileNotFoundError:
            missing.append(probe)
            probe = probe.parent
        except OSError as exc:
            raise WriteError(destination, _reason(f"opening folder {probe}", exc)) from exc
    dir_mode = _folder_mode(file_mode)
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, leave it
        except OSError as exc:
            raise WriteError(destination, _reason(f"creating folder {new}", exc)) from exc
        try:
            new_fd = os.open(new, _OPEN_FOLDER_FLAGS | os.O_NOFOLLOW)
            try:
                if uid is not None or gid is not None:
                    os.fchown(new_fd, -1 if uid is None else uid, -1 if gid is None else gid)
                os.fchmod(new_fd, dir_mode)
            finally:
                os.close(new_fd)
            _fsync_folder(new.parent)
        except OSError as exc:
            raise WriteError(destination, _reason(f"setting up new folder {new}", exc)) from exc
    try:
        return os.open(folder, _OPEN_FOLDER_FLAGS)
    except OSError as exc:
        raise WriteError(destination, _reason(f"opening folder {folder}", exc)) from exc


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, _OPEN_FOLDER_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(
    folder_fd: int, destination: Path, data: bytes, mode: int, uid: int | None, gid: int | None
) -> None:
    """Temporary sibling -> exact mode -> owner -> data -> fsync -> rename -> fsync folder."""
    folder = destination.parent
    temp_name = temp_path_for(destination).name
    fd = -1
    temp_exists = False
    step = f"creating a temporary file in {folder}"
    try:
        # Created with mode & ~umask, a subset of mode: never more permissive.
        fd = os.open(temp_name, _CREATE_TEMP_FLAGS, mode, dir_fd=folder_fd)
        temp_exists = True
        step = "setting the temporary file's mode"
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
        step = "closing the temporary file"
        closing, fd = fd, -1
        os.close(closing)
        step = "renaming the temporary file over the destination"
        os.replace(temp_name, destination.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        temp_exists = False
        step = f"syncing folder {folder} (the new file is in place)"
        os.fsync(folder_fd)
    except OSError as exc:
        _discard(fd, folder_fd, temp_name if temp_exists else None)
        raise WriteError(destination, _reason(step, exc)) from exc
    except BaseException:
        _discard(fd, folder_fd, temp_name if temp_exists else None)
        raise


def _discard(fd: int, folder_fd: int, temp_name: str | None) -> None:
    """Best-effort clean-up after a failed write; the original error is what matters."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    if temp_name is not None:
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=folder_fd)
