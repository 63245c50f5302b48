"""Template files by name: the configured sources, and what `{% include %}` may read.

A configured template is read wherever its path leads: the config names it.
An include resolves against the config folder and the folders of the
configured templates, never outside them (`..`, absolute paths and symlinks
are resolved first), and never to the config file or a file a provider reads
(a secrets file, a token file): a template must not be able to copy those
into a destination. Those are compared by device and inode, so a hard link
to the secrets file inside the template folder is refused too.

When a file cannot be loaded the error says why: not found, outside the
allowed folders, not a regular file, not UTF-8, permission denied, or refused
(the config file, a provider's file). Only "not found" is a
`jinja2.TemplateNotFound`, so `{% include ... ignore missing %}` skips a
missing file but still reports one it may not read. Messages hold the name
and paths only when the caller says the name may be shown (it was written
literally in the template or the config; see messages.py).

What a load looked at is kept per name (`looked_at`): each path tried, in
order, up to the one read, and where a symlink led. A render reports those
files (`RenderOutcome.files`) so the agent can watch them; a missing include
is among them, so creating it later is seen. A loaded template is up to date
while a stat of its path (following symlinks, as the read did) gives the same
device, inode, size, mtime and ctime: a rename-over that keeps the mtime, or a
symlink swapped to another file (a Kubernetes ConfigMap update), is seen
without any watcher.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jinja2

from smagent.regular_file import NotRegularFile, read_regular


class Unloadable:
    """Why the template `asked` cannot be loaded; `describe` builds the message."""

    asked: str
    reason: str
    """Holds neither the name nor a path: safe to show for any name."""
    detail: str
    """The reason with paths, for a name that may be shown."""

    def _set(self, name: str, reason: str, detail: str) -> None:
        self.asked = name
        self.reason = reason
        self.detail = detail

    def describe(self, name_shown: bool) -> str:
        return self.detail if name_shown else self.reason


class TemplateMissing(Unloadable, jinja2.TemplateNotFound):
    def __init__(self, name: str, reason: str, detail: str) -> None:
        super().__init__(name, reason)
        self._set(name, reason, detail)


class TemplateRefused(Unloadable, jinja2.TemplateError):
    def __init__(self, name: str, reason: str, detail: str) -> None:
        super().__init__(reason)
        self._set(name, reason, detail)


_MISSING, _OUTSIDE, _UNREADABLE = 0, 1, 2


class _Failure(Exception):
    """One candidate path that did not load: how telling its reason is, and what to say.

    Of the candidates (the name under each folder), the most telling reason is
    reported: a file inside the folders that cannot be read (2) tells more than
    one outside them (1), which tells more than none at all (0).
    """

    def __init__(self, rank: int, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.rank = rank
        self.reason = reason
        self.detail = detail


class TemplateLoader(jinja2.BaseLoader):
    """Configured templates by name, includes by the rules of the module docstring."""

    def __init__(
        self, roots: Iterable[Path], denied: Mapping[Path, str], sources: Iterable[Path]
    ) -> None:
        self.roots = list(dict.fromkeys(root.resolve() for root in roots))
        self.denied = {Path(os.path.abspath(path)): what for path, what in denied.items()}
        """Path -> what it is ("the config file", "a file provider 'x' reads")."""
        self.sources = {str(source) for source in sources}
        self.inline: dict[str, str] = {}
        self.names: dict[str, str] = {}
        """Each loaded file name -> the name it was asked by (a traceback holds the former)."""
        self.looked_at: dict[str, frozenset[Path]] = {}
        """Each name Jinja last loaded (or failed to) -> the files that load read or looked for."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        paths: dict[Path, None] = {}
        try:
            return self.find(template, paths)
        finally:
            self.looked_at[template] = frozenset(paths)

    def forget(self, paths: Iterable[Path]) -> set[str]:
        """Drop what was looked at for each name that looked at one of `paths`; their names."""
        wanted = set(paths)
        names = {name for name, seen in list(self.looked_at.items()) if seen & wanted}
        for name in names:
            self.looked_at.pop(name, None)
        return names

    def find(
        self, template: str, paths: dict[Path, None]
    ) -> tuple[str, str | None, Callable[[], bool]]:
        """`get_source` without recording; each path looked at is added to `paths`."""
        if template in self.inline:
            return self.inline[template], template, lambda: True
        path = Path(template)
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        worst: _Failure | None = None
        for candidate in candidates:
            paths[candidate] = None
            try:
                source, resolved, signature = self._load(candidate, template in self.sources)
            except _Failure as failure:
                paths[Path(os.path.realpath(candidate))] = None  # a dangling symlink's target
                if worst is None or failure.rank > worst.rank:
                    worst = failure
                continue
            paths[resolved] = None
            self.names[str(candidate)] = template
            return source, str(candidate), functools.partial(_unchanged, candidate, signature)
        assert worst is not None
        if worst.rank == _MISSING:
            where = ", ".join(map(str, self.roots))
            reason = "not found" if path.is_absolute() else f"not found (looked in {where})"
            raise TemplateMissing(template, reason, reason)
        raise TemplateRefused(template, worst.reason, worst.detail)

    def _load(self, candidate: Path, configured: bool) -> tuple[str, Path, _Signature]:
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise _failure(candidate, exc) from None
        if not configured and not any(resolved.is_relative_to(root) for root in self.roots):
            folders = ", ".join(map(str, self.roots))
            reason = f"outside the folders templates may include from ({folders})"
            via = f"{candidate} resolves to {resolved}, " if resolved != candidate else ""
            raise _Failure(_OUTSIDE, reason, f"{via}{reason}")
        try:
            data, info = read_regular(resolved)
        except OSError as exc:
            raise _failure(resolved, exc) from None
        refused = self._refusal(resolved, info)
        if refused is not None:
            raise _Failure(
                _UNREADABLE, f"refused: it is {refused}", f"refused: {resolved} is {refused}"
            )
        try:
            return data.decode("utf-8"), resolved, _signature(info)
        except UnicodeDecodeError:
            reason = "not UTF-8 text"
            raise _Failure(_UNREADABLE, reason, f"{resolved} is {reason}") from None

    def _refusal(self, path: Path, info: os.stat_result) -> str | None:
        """What a denied file is, if `path` (already opened: `info`) is one, by path or inode."""
        for denied, what in self.denied.items():
            if path == denied:
                return what
            try:
                other = os.stat(denied)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return f"the same file as {denied} (a hard link or another name), {what}"
        return None


def _failure(path: Path, exc: BaseException) -> _Failure:
    if isinstance(exc, FileNotFoundError):
        return _Failure(_MISSING, "not found", f"{path} not found")
    if isinstance(exc, NotRegularFile):
        kind = _kind(path)
        return _Failure(
            _UNREADABLE, f"not a regular file ({kind})", f"{path} is {kind}, not a file"
        )
    if isinstance(exc, PermissionError):
        return _Failure(_UNREADABLE, "permission denied", f"{path}: permission denied")
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return _Failure(_UNREADABLE, "a symlink loop", f"{path}: a symlink loop")
    words = getattr(exc, "strerror", None) or type(exc).__name__
    return _Failure(_UNREADABLE, f"cannot read it: {words}", f"{path}: cannot read it: {words}")


def _kind(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "not a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


_Signature = tuple[int, int, int, int, int]


def _signature(info: os.stat_result) -> _Signature:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _unchanged(path: Path, signature: _Signature) -> bool:
    """Whether `path` (symlinks followed, as when it was read) is still the file that was read."""
    try:
        return _signature(os.stat(path)) == signature
    except OSError:
        return False
