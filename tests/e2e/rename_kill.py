"""SIGKILL a process the moment a file is renamed into a folder (tests/e2e/dbhost.py: RenameKill).

    python rename_kill.py FOLDER NAME PID

Prints `ready` once the inotify watch is set, then, after the kill, the time
(time.time()) it was sent, and exits 0. Stdlib only (started with -I -S): raw
inotify through ctypes, blocked in read(), so the kill follows the rename by
microseconds, not by a watch library's batching or a busy interpreter's GIL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys
import time

IN_MOVED_TO = 0x80


def main(folder: str, name: str, pid: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, folder.encode(), IN_MOVED_TO) < 0:
        sys.exit(f"inotify: errno {ctypes.get_errno()}")
    print("ready", flush=True)
    wanted = name.encode()
    while True:
        data = os.read(fd, 65536)
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            found = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
            offset += 16 + length
            if mask & IN_MOVED_TO and found == wanted:
                os.kill(pid, signal.SIGKILL)
                print(time.time(), flush=True)
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
