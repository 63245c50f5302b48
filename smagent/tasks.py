"""Steps that must finish once begun, even when the pass around them is cancelled.

SIGTERM cancels the agent's work. Cancelling a pass while it fetches or
renders is right (nothing has changed yet); cancelling it between a file's
rename and that file's action is how a service keeps an old password. The
write-then-action step therefore runs in its own task, shielded: a
cancellation waits for it to finish and is raised afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def finish_even_if_cancelled(step: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True  # finish the step, then let the cancellation through
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
