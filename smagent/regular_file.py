"""Reading a file that must be a regular file, without ever blocking on one that is not.

The secrets file, template includes and pidfiles are read in worker threads.
A FIFO (or a device) at such a path would block the read forever, and a
thread cannot be cancelled, so the pass (and `render --once`) would never
end. Every such read goes through `read_regular`: opened non-blocking, then
refused unless fstat says it is a regular file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    """The path exists but is not a regular file (a FIFO, a folder, a device)."""


def read_regular(
    path: str | Path, limit: int | None = None, *, follow_symlinks: bool = True
) -> tuple[bytes, os.stat_result]:
    """The bytes (at most `limit`) and the stat of a regular file; OSError otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read() if limit is None else fh.read(limit)
        return data, info
    finally:
        os.close(fd)
