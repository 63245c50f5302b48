"""Where the agent keeps what must outlive the process: pending actions and its status.

The folder is chosen once per config, in this order: `state_dir` from the
config; `$STATE_DIRECTORY` (systemd sets it from `StateDirectory=`); the
system folder `/var/lib/smagent` when running as root; else the user's
`$XDG_STATE_HOME/smagent` (`~/.local/state/smagent`), so `render --once` by
an unprivileged user in a build still records its actions somewhere it may
write.

Anything in this folder can make the agent act (run a configured action),
so it must be ours and closed to others: it is created 0700, and a folder
that another user owns or may write to is refused rather than trusted. A
symlink to it is followed only when root or this user made it (systemd's
`DynamicUser=` links /var/lib/NAME to /var/lib/private/NAME).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from smagent.config import Config

SYSTEM_STATE_DIR = Path("/var/lib/smagent")
STATUS_FILE = "status.json"
PENDING_DIR = "pending"


class StateDirError(Exception):
    """The state folder cannot be used; the message says which and why."""


def state_dir_for(config: Config) -> Path:
    """The state folder this config's agent and one-shot runs use (not created here)."""
    return state_dir_from(config.state_dir)


def state_dir_from(configured: Path | None) -> Path:
    """`state_dir` as configured, else the folder chosen for this process (see the module)."""
    if configured is not None:
        return configured
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if from_systemd:
        return Path(from_systemd)
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "smagent"


def ensure_state_dir(path: Path) -> Path:
    """Create `path` (0700) if needed and check that it is ours alone; blocking."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        link = os.stat(path, follow_symlinks=False)
        st = os.stat(path)
    except OSError as exc:
        raise StateDirError(f"state_dir {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
        # systemd's DynamicUser= makes the state folder a symlink (root's) into
        # /var/lib/private; one another user made may lead anywhere that user likes
        raise StateDirError(
            f"state_dir {path}: a symlink owned by uid {link.st_uid}, not by root or this user"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state_dir {path}: not a folder")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"state_dir {path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(
            f"state_dir {path}: others may write to it (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod 700 it"
        )
    return path
