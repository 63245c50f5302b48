"""When the agent looks at each secret again.

Every secret has its own clock: its namespace's `refresh` (else
`defaults.refresh`), shortened by up to 10 % of jitter so that a fleet of
hosts started together does not check together, and brought forward to the
store's own date (`check_after`: a known rotation date). A secret with a lease
is on the lease's clock alone (`check_after`: renewal at 2/3 of its TTL),
however short `refresh` is: each check of it is a renewal, a write at the store.
A secret whose last look failed is looked at again sooner, with exponential
backoff capped at the smaller of its refresh and `MAX_BACKOFF`, and never
sooner than a throttling store's Retry-After.

Secrets that fall due close together are taken together (`GROUP_WINDOW`), so
that the cache makes one batched `refresh` call per provider for them rather
than one per secret. Times are `time.monotonic()` (a wall-clock jump must not
stall or storm the checks); a store's dates are wall-clock and converted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable

from smagent.cache import Entry
from smagent.providers.base import Throttled
from smagent.references import SecretRef

JITTER = 0.1
GROUP_WINDOW = 2.0
"""Seconds ahead within which due secrets are taken with the ones due now (at most a tenth
of their own refresh)."""
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0

_random = random.Random()  # noqa: S311  (jitter, not cryptography)


class Scheduler:
    def __init__(self, interval_for: Callable[[SecretRef], float]) -> None:
        self.interval_for = interval_for
        self._due: dict[SecretRef, float] = {}
        self._moved = asyncio.Event()
        """Set when a due time moved earlier than the one being slept for."""

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, ref: object) -> bool:
        return ref in self._due

    def plan(self, ref: SecretRef, entry: Entry) -> float:
        """Set `ref`'s next look from what its entry says; returns the delay in seconds."""
        interval = self.interval_for(ref)
        error = entry.error
        if error is not None and entry.failures:
            if error.transient:
                cap = min(interval, MAX_BACKOFF)
                delay = min(cap, FIRST_BACKOFF * 2.0 ** min(entry.failures - 1, 30))
                delay *= _random.uniform(0.5, 1.0)
            else:  # deleted, denied: someone has to fix it; look at the usual pace
                delay = interval * (1 - JITTER * _random.random())
            if isinstance(error, Throttled) and error.retry_after is not None:
                delay = max(delay, error.retry_after)
        else:
            delay = interval * (1 - JITTER * _random.random())
            check_after = entry.check_after
            if check_after is not None:
                until = check_after - time.time()
                if entry.value is not None and entry.value.lease is not None:
                    # a lease keeps its own clock: a check of it is a renewal (a write at
                    # the store), due at 2/3 of its TTL, not at every refresh
                    delay = max(0.0, until)
                elif until > 0:
                    delay = min(delay, until)
        self.at(ref, time.monotonic() + delay)
        return delay

    def at(self, ref: SecretRef, when: float) -> None:
        """Look at `ref` at monotonic time `when`."""
        earliest = self.next_due()
        self._due[ref] = when
        if earliest is None or when < earliest:
            self._moved.set()

    def now(self, refs: Iterable[SecretRef]) -> None:
        """Look at `refs` at once (a provider's file changed, a reload)."""
        for ref in refs:
            self.at(ref, time.monotonic())

    def forget(self, refs: Iterable[SecretRef]) -> None:
        for ref in refs:
            self._due.pop(ref, None)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def take_due(self) -> list[SecretRef]:
        """Remove and return the refs due now or within their group window."""
        now = time.monotonic()
        taken = [
            ref
            for ref, when in self._due.items()
            if when <= now + min(GROUP_WINDOW, self.interval_for(ref) / 10)
        ]
        for ref in taken:
            del self._due[ref]
        return taken

    async def wait(self) -> None:
        """Return when something is due (or the schedule moved earlier: call again)."""
        self._moved.clear()
        earliest = self.next_due()
        timeout = None if earliest is None else max(0.0, earliest - time.monotonic())
        if timeout == 0.0:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._moved.wait()
        except TimeoutError:
            return
