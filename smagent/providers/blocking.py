"""Blocking provider work (file reads, parsing) off the event loop, in a thread nobody waits for.

`asyncio.to_thread` is the wrong tool for work that may outlive a pass's
deadline. The deadline cancels the await, not the thread; the thread then
keeps the default executor busy, `asyncio.run` joins that executor when it
shuts down, and `concurrent.futures` joins every pool thread at interpreter
exit, so one slow read (a hung network mount) or one long parse keeps
`render --once` from exiting on time. A `BlockingWorker` runs its jobs in one
daemon thread of its own: an abandoned job runs on or is dropped when the
process exits, and nothing joins it.

One thread per provider, jobs in order: if a job is still running past its
deadline, the next pass's job waits behind it and times out too (the store
is slow, and that is what the pass reports), instead of starting a second
copy of the same slow work. The thread ends at `close()`, or when its worker
is garbage-collected (it holds no reference to the worker, only to the queue).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class BlockingWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        weakref.finalize(self, self._jobs.put, None)

    async def run(self, job: Callable[[], T]) -> T:
        """`job()` in the worker thread; cancelling the await abandons the job, never blocks."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_serve, args=(self._jobs,), name=f"smagent-{self.name}", daemon=True
                )
                self._thread.start()
            self._jobs.put((job, future))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Let the thread end once the jobs queued before this are done."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    def __repr__(self) -> str:
        return f"BlockingWorker(name={self.name!r})"


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while True:
        item = jobs.get()
        if item is None:
            return
        _run(*item)
        # hold nothing while idle: a job refers to its provider, and so to the worker,
        # whose collection is what ends this thread
        item = None


def _run(job: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():  # its awaiter gave up before it began
        return
    try:
        result = job()
    except BaseException as exc:  # handed to the awaiter, as any executor does
        future.set_exception(exc)
    else:
        future.set_result(result)
