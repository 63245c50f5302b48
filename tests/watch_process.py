"""A process that watches paths and prints each batch: `python -m tests.watch_process MODE PATH...`.

MODE `plain` watches; `no-fds` first uses up every file descriptor it may open (so
inotify cannot be set up), says `polling` once the watcher fell back, and `restore`
on stdin gives the descriptors back. Prints `ready` once watching, then one line
per batch (the sorted paths, tab-separated); exits 0 on SIGTERM/SIGINT, like the agent.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from pathlib import Path

from smagent import logging as smagent_logging
from smagent.watch import Watcher


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _main(mode: str, paths: list[Path]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if mode == "no-fds":
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    watcher = Watcher(paths, retry_s=0.2, poll_s=0.05)
    try:
        if mode == "no-fds":
            while not watcher.polling:
                await asyncio.sleep(0.01)
            _say("polling")
            await loop.run_in_executor(None, sys.stdin.readline)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            while watcher.polling:
                await asyncio.sleep(0.01)
        _say("ready")
        async for batch in watcher.changes():
            _say("\t".join(sorted(str(p) for p in batch)))
    except asyncio.CancelledError:
        _say("stopping")
    finally:
        await watcher.close()


def main() -> None:
    smagent_logging.configure("json", "info")
    mode, *paths = sys.argv[1:]
    asyncio.run(_main(mode, [Path(p) for p in paths]))


if __name__ == "__main__":
    main()
