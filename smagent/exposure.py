"""A warning for a file that others can read or change, as ssh gives for a private key.

The config decides what root writes where and which commands run: writable
by someone other than its owner, it is an exposure. A secrets or credentials
file holds secrets: readable by any user is an exposure too. The config holds
no secret (every credential is named by a `*_file` key), so a config readable
by all, as `/etc` files usually are, is not worth a warning on every run.

It is a warning, not an error: the operator may have reasons (a shared demo
host), and refusing to start would turn a weak setup into an outage. The
check looks at the file's mode, its owner, and the folder holding it (whoever
may write there can replace the file). One log line per file, naming it and
its mode; never its content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from smagent.logging import get_logger

log = get_logger()


def exposure(path: Path, info: os.stat_result, *, holds_secrets: bool = True) -> list[str]:
    """What lets others read (when it `holds_secrets`) or change the file `path`, in words."""
    problems: list[str] = []
    mode = info.st_mode
    if holds_secrets and mode & stat.S_IROTH:
        problems.append("readable by every user")
    if mode & stat.S_IWOTH:
        problems.append("writable by every user")
    if mode & stat.S_IWGRP:
        problems.append("writable by its group")
    if info.st_uid not in (0, os.geteuid()):
        problems.append(f"owned by another user (uid {info.st_uid})")
    try:
        folder = os.stat(path.parent)
    except OSError:
        return problems
    open_to_write = folder.st_mode & (stat.S_IWOTH | stat.S_IWGRP)
    if open_to_write and not folder.st_mode & stat.S_ISVTX:
        problems.append(
            f"in a folder others can write to ({path.parent}, mode {_octal(folder.st_mode)}), "
            "so they can replace it"
        )
    return problems


def warn_if_exposed(
    path: Path, info: os.stat_result, role: str, *, holds_secrets: bool = True
) -> None:
    """Log `file.exposed` once for `path` when others can read (secrets) or change it."""
    problems = exposure(path, info, holds_secrets=holds_secrets)
    if problems:
        log.warning(
            "file.exposed",
            path=str(path),
            role=role,
            mode=_octal(info.st_mode),
            problem="; ".join(problems),
        )


def _octal(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"
