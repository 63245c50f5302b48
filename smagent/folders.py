"""Reach a folder the way the kernel would, without following what others could plant.

`open_folder` walks a path one component at a time from `/`, each opened
`O_NOFOLLOW` relative to the one before (openat), so what is checked is what is
opened and the caller gets a descriptor it can keep working through
(`dir_fd=`): a folder renamed or swapped for a symlink afterwards cannot move
the caller's later steps elsewhere. A symlink met on the way is read and its
target walked the same way, unless it sits in a folder other users can write
to and could have been planted there (`_trusted_symlink`, the rule of the
kernel's `fs.protected_symlinks`, applied whatever the host's setting).

The same walk notes the folders that let other users replace what is written
below them (`exposed`), for the warning the pipeline logs.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

import msgspec

__all__ = ["FolderError", "NewFolders", "open_folder", "writable_by_others"]

_OPEN_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_SYMLINKS = 40
"""As the kernel's MAXSYMLINKS: more symlinks than this on one path is a loop."""
_MAX_RACES = 16
"""How often a folder may vanish or appear under our feet before we give up."""
_RACES = "it keeps appearing and vanishing while we open it"


class FolderError(Exception):
    """A folder on the way could not be reached or made; `reason` says which and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NewFolders(msgspec.Struct, frozen=True):
    """How `open_folder` makes a missing folder: this exact mode, this owner and group."""

    mode: int
    uid: int | None
    gid: int | None


def writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_IWOTH)


def open_folder(
    folder: Path, make: NewFolders | None = None, exposed: list[Path] | None = None
) -> int | None:
    """A descriptor on the absolute `folder`, reached one component at a time from `/`.

    A missing folder is made when `make` is given (mode set exactly whatever
    the umask, then owner and group, so the service can reach its file;
    existing folders are never changed), else the answer is None. `exposed`
    collects the folders on the way others can write to that matter: the last
    one reached if it is `folder` itself, any other only without the sticky
    bit (with it, others cannot replace entries they do not own).
    """
    todo = list(folder.parts)
    fd, here = -1, Path("/")
    links = races = 0
    traversed: list[tuple[Path, os.stat_result]] = []
    try:
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            there = Path("/") if name == "/" else here.parent if name == ".." else here / name
            try:
                if name == "/":
                    child = os.open("/", _OPEN_FOLDER_FLAGS)
                else:
                    child = os.open(name, _OPEN_FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if make is None:
                    _note_exposed(traversed, exposed, reached=False)
                    return None
                if not _make_folder(fd, name, there, make):
                    races = _count(races, _MAX_RACES, _RACES, there)
                todo.insert(0, name)  # made, by us or by someone else meanwhile: open it
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise FolderError(_reason(f"opening folder {there}", exc)) from exc
                target = _symlink_target(fd, traversed[-1][1], name, there, exc)
                if target is None:
                    races = _count(races, _MAX_RACES, _RACES, there)
                    todo.insert(0, name)  # it changed meanwhile: look again
                else:
                    links = _count(links, _MAX_SYMLINKS, "too many symlinks", there)
                    todo[:0] = target.parts
                continue
            if fd >= 0:
                os.close(fd)
            fd, here = child, there
            traversed.append((here, os.fstat(fd)))
        _note_exposed(traversed, exposed, reached=True)
        opened, fd = fd, -1
        return opened
    finally:
        if fd >= 0:
            os.close(fd)


def _reason(step: str, exc: OSError) -> str:
    """`step: cause`, the cause from the errno text only."""
    cause = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "")
    return f"{step}: {(cause or type(exc).__name__).lower()}"


def _note_exposed(
    traversed: list[tuple[Path, os.stat_result]], exposed: list[Path] | None, reached: bool
) -> None:
    """Add the folders others can write to that matter; `reached`: the last one is the target."""
    if exposed is None:
        return
    for index, (path, st) in enumerate(traversed):
        own = reached and index == len(traversed) - 1
        if writable_by_others(st) and (own or not st.st_mode & stat.S_ISVTX):
            exposed.append(path)


def _count(count: int, limit: int, too_many: str, there: Path) -> int:
    """One more symlink followed or race lost on the way to `there`; over `limit` is an error."""
    if count >= limit:
        raise FolderError(f"opening folder {there}: {too_many}")
    return count + 1


def _make_folder(parent_fd: int, name: str, path: Path, make: NewFolders) -> bool:
    """mkdir with the exact mode and owner; False when someone else made `name` first."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        return False
    except OSError as exc:
        raise FolderError(_reason(f"creating folder {path}", exc)) from exc
    try:
        new_fd = os.open(name, _OPEN_FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        try:
            if make.uid is not None or make.gid is not None:
                uid = -1 if make.uid is None else make.uid
                os.fchown(new_fd, uid, -1 if make.gid is None else make.gid)
            os.fchmod(new_fd, make.mode)
        finally:
            os.close(new_fd)
        os.fsync(parent_fd)
    except OSError as exc:
        raise FolderError(_reason(f"setting up new folder {path}", exc)) from exc
    return True


def _symlink_target(
    parent_fd: int, parent_st: os.stat_result, name: str, path: Path, opening: OSError
) -> PurePosixPath | None:
    """Where the symlink `name` points, if it may be followed; None to look again.

    `opening` is why opening `name` as a folder failed: raised as it is when
    `name` is not a symlink (a file where a folder should be). None when the
    symlink vanished or became a folder meanwhile (someone is swapping them).
    """
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISLNK(st.st_mode):
            raise FolderError(_reason(f"opening folder {path}", opening)) from opening
        if not _trusted_symlink(parent_st, st):
            raise FolderError(
                f"{path} is a symlink in a folder other users can write to: not followed "
                "(write the real folder's path in the config)"
            )
        return PurePosixPath(os.readlink(name, dir_fd=parent_fd))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FolderError(_reason(f"reading symlink {path}", exc)) from exc


def _trusted_symlink(folder: os.stat_result, link: os.stat_result) -> bool:
    """The kernel's `fs.protected_symlinks` rule, applied whatever the host's setting.

    In a folder others can write to, a symlink is followed only if the folder
    is sticky (so others cannot replace entries they do not own) and the link
    belongs to root, to us, or to the folder's owner. Anywhere else the folder's
    owner put it there, and it is followed as usual (/var/run -> /run).
    """
    if not writable_by_others(folder):
        return True
    if not folder.st_mode & stat.S_ISVTX:
        return False
    return link.st_uid in (0, os.geteuid(), folder.st_uid)
