"""When the agent looks at each secret again.

Every secret has its own clock: its namespace's `refresh` (else
`defaults.refresh`), brought forward to the store's own date (`check_after`:
a known rotation date). Jitter is the host's, drawn once: a secret's first
look comes up to 10 % early by this host's own fraction, so a fleet of hosts
started together does not check together; later looks keep the exact refresh
(a per-look draw would cost up to 10 % more calls, and scatter one host's
secrets apart until each check was a batch of its own). A secret with a lease
is on the lease's clock alone (`check_after`: renewal at 2/3 of its TTL),
however short `refresh` is: each check of it is a renewal, a write at the store.
A secret whose last look failed is looked at again sooner, with exponential
backoff capped at the smaller of its refresh and `MAX_BACKOFF`, and never
sooner than a throttling store's Retry-After.

Secrets that fall due close together are taken together (`GROUP_WINDOW`), so
that the cache makes one batched `refresh` call per provider for them rather
than one per secret. A secret planned apart from its provider's others (new in
a reload, back after a failure) joins the latest look of theirs due before its
own (same provider, same refresh): one early check inside a batch already
paid for, and from then on one batch per cycle instead of one more call
(never a retry's or a lease's look: those keep their own pace). Times are
`time.monotonic()` (a wall-clock jump must not stall or storm the checks); a
store's dates are wall-clock and converted.
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
LEASE_EARLY = 0.1
"""A lease's renewal is taken early with its neighbours by at most this share of the wait
before it: a short lease (TTL 3 s: renewal due in 2 s) is not renewed at once by a 2 s window
(and again, and again: a renewal storm), a long one still joins a batch."""
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0

_random = random.Random()  # noqa: S311  (jitter, not cryptography)


class Scheduler:
    def __init__(self, interval_for: Callable[[SecretRef], float]) -> None:
        self.interval_for = interval_for
        self._due: dict[SecretRef, float] = {}
        self._phase = _random.random()
        """This host's jitter: the fraction of JITTER its secrets' first looks come early."""
        self._planned: set[SecretRef] = set()
        """Refs planned once already: their next looks keep the exact refresh."""
        self._groups: dict[tuple[str, float], dict[float, int]] = {}
        """(provider, refresh) -> due time -> how many refs are due then: the looks to join."""
        self._keys: dict[SecretRef, tuple[str, float]] = {}
        """Each due ref's key in `_groups` (its refresh may change in a reload meanwhile)."""
        self._early: dict[SecretRef, float] = {}
        """Refs that may be taken early by less than their refresh's window (leases)."""
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
        early: float | None = None
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
            first = ref not in self._planned
            delay = interval * (1 - JITTER * self._phase) if first else interval
            check_after = entry.check_after
            leased = entry.value is not None and entry.value.lease is not None
            if check_after is not None:
                until = check_after - time.time()
                if leased:
                    # a lease keeps its own clock: a check of it is a renewal (a write at
                    # the store), due at 2/3 of its TTL, not at every refresh
                    delay = max(0.0, until)
                    early = min(GROUP_WINDOW, delay * LEASE_EARLY)
                elif until > 0:
                    delay = min(delay, until)
            if not leased:
                delay = self._joined(ref, interval, delay)
                self._planned.add(ref)
                self.at(ref, time.monotonic() + delay, joinable=True)
                return delay
        self._planned.add(ref)
        self.at(ref, time.monotonic() + delay)
        if early is not None:
            self._early[ref] = early
        return delay

    def _joined(self, ref: SecretRef, interval: float, delay: float) -> float:
        """`delay`, shortened to the latest look of `ref`'s provider at the same refresh due
        before it (and after its group window), if any: one batch instead of two."""
        now = time.monotonic()
        when = now + delay
        window = min(GROUP_WINDOW, interval / 10)
        own = self._due.get(ref)
        times = [
            at
            for at in self._groups.get((ref.provider, interval), {})
            if at != own and now < at < when - window
        ]
        return max(times) - now if times else delay

    def at(self, ref: SecretRef, when: float, *, joinable: bool = False) -> None:
        """Look at `ref` at monotonic time `when`; `joinable`: a regular look (not a retry, a
        lease renewal or an event's), which secrets planned apart may join."""
        earliest = self.next_due()
        self._drop(ref)
        self._due[ref] = when
        if joinable:
            key = self._keys[ref] = (ref.provider, self.interval_for(ref))
            group = self._groups.setdefault(key, {})
            group[when] = group.get(when, 0) + 1
        if earliest is None or when < earliest:
            self._moved.set()

    def _drop(self, ref: SecretRef) -> None:
        self._early.pop(ref, None)
        when = self._due.pop(ref, None)
        if when is None:
            return
        key = self._keys.pop(ref, None)
        if key is None:
            return
        group = self._groups.get(key, {})
        left = group.get(when, 1) - 1
        if left > 0:
            group[when] = left
        else:
            group.pop(when, None)
            if not group:
                self._groups.pop(key, None)

    def now(self, refs: Iterable[SecretRef]) -> None:
        """Look at `refs` at once (a provider's file changed, a reload)."""
        for ref in refs:
            self.at(ref, time.monotonic())

    def forget(self, refs: Iterable[SecretRef]) -> None:
        for ref in refs:
            self._drop(ref)
            self._planned.discard(ref)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def take_due(self) -> list[SecretRef]:
        """Remove and return the refs due now or within their group window."""
        now = time.monotonic()
        taken = [
            ref
            for ref, when in self._due.items()
            if when <= now + self._early.get(ref, min(GROUP_WINDOW, self.interval_for(ref) / 10))
        ]
        for ref in taken:
            self._drop(ref)
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
