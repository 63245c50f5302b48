"""The agent's memory of every secret it uses: one entry per canonical ref, for months.

A `render --once` pass asks the stores for everything; the agent asks once
and then only *checks* (`Provider.refresh`: a version look-up where the
store has one, a lease renewal for Vault). This cache is what it checks
against. Each pass still sees one consistent snapshot: `resolver()` gives a
per-pass `Resolver` whose answers come from here and never change during
the pass, even when a refresh lands in the middle of it.

Single flight: two templates (or a pass and a refresh) asking at once for a
secret nobody has yet make one request; the second waits for the first's
answer.

A failed check never takes a good value away: the templates keep rendering
what they rendered (the last good files stay), the entry records the error
and since when, and the scheduler looks again with backoff. A value that
rotates out is retired from the redactor one generation later (the previous
password may still show up in a reloading service's output for a moment),
so the set of scrubbed values does not grow for the life of the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from smagent.logging import REDACTOR, Redactor, get_logger, shown
from smagent.providers.base import (
    FetchResult,
    Lease,
    Provider,
    ProviderError,
    RefreshResult,
    SecretValue,
    Throttled,
    Unchanged,
)
from smagent.references import SecretRef
from smagent.resolver import Fetcher, Resolver

log = get_logger()


@dataclass(slots=True)
class Entry:
    """What the agent knows of one secret."""

    ref: SecretRef
    value: SecretValue | None = None
    """The last good value: what templates render with, kept through failed checks."""
    error: ProviderError | None = None
    """The last failure; with a value, a failed check; without one, the answer itself."""
    fetched_at: float = 0.0
    """`time.time()` of the first fetch or the last change of value."""
    checked_at: float = 0.0
    """`time.time()` of the last look that succeeded."""
    generation: int = 0
    """Incremented at each change of value."""
    failures: int = 0
    """Consecutive failed looks (for the scheduler's backoff)."""
    failing_since: float | None = None

    @property
    def result(self) -> FetchResult:
        if self.value is not None:
            return self.value
        assert self.error is not None
        return self.error

    @property
    def check_after(self) -> float | None:
        return None if self.value is None else self.value.check_after


@dataclass(slots=True)
class ProviderStats:
    """Counters for metrics: requests made and how they ended, per provider."""

    fetches: int = 0
    errors: int = 0
    throttles: int = 0
    last_error: str | None = None
    last_success: float | None = None
    """`time.time()` of the last answer that was not an error."""


@dataclass(frozen=True, slots=True)
class Look:
    """What one refresh found: the refs whose value changed, and the refs it looked at."""

    changed: frozenset[SecretRef] = frozenset()
    looked: frozenset[SecretRef] = frozenset()


@dataclass(frozen=True, slots=True)
class Replaced:
    """A lease whose credentials a refresh replaced by new ones (for `smagent.retire`)."""

    ref: SecretRef
    lease: Lease
    at: float
    """`time.monotonic()` when the new value took its place."""


@dataclass(slots=True)
class SecretCache:
    fetcher: Fetcher
    entries: dict[SecretRef, Entry] = field(default_factory=dict)
    stats: dict[str, ProviderStats] = field(default_factory=dict)
    _inflight: dict[SecretRef, asyncio.Future[FetchResult | None]] = field(default_factory=dict)
    """Fetches under way; a future's None says its leader was cancelled: ask again."""
    _epochs: dict[str, int] = field(default_factory=dict)
    """Per provider, bumped when it is dropped: an answer that left before is not kept."""
    fetch_count: int = 0
    """Refs sent to the stores by passes (not by checks), for `pass.finished`."""
    _previous: dict[SecretRef, SecretValue] = field(default_factory=dict)
    """The value before the last rotation, retired from the redactor at the next one."""
    replaced: list[Replaced] = field(default_factory=list)
    """Leases replaced by new credentials since the agent last took them (`take_replaced`)."""

    @classmethod
    def create(
        cls, providers: Mapping[str, Provider], timeout: float, redactor: Redactor = REDACTOR
    ) -> SecretCache:
        return cls(Fetcher(providers, timeout, redactor))

    @property
    def redactor(self) -> Redactor:
        return self.fetcher.redactor

    def resolver(self) -> Resolver:
        """A pass's view: answers from this cache, frozen for the pass."""
        return Resolver(
            self.fetcher.providers, self.fetcher.timeout, self.fetcher.redactor, source=self
        )

    # --- a pass asks --------------------------------------------------------------------------

    async def get(
        self, name: str, refs: list[SecretRef], deadline: float
    ) -> Mapping[SecretRef, FetchResult]:
        """Known refs from memory; unknown ones fetched once, however many ask at once."""
        out: dict[SecretRef, FetchResult] = {}
        waiting: dict[SecretRef, asyncio.Future[FetchResult | None]] = {}
        mine: list[SecretRef] = []
        for ref in refs:
            entry = self.entries.get(ref)
            if entry is not None:
                out[ref] = entry.result
            elif ref in self._inflight:
                waiting[ref] = self._inflight[ref]
            else:
                mine.append(ref)
        if mine:
            out.update(await self._fetch_new(name, mine, deadline))
        orphaned: list[SecretRef] = []
        for ref, future in waiting.items():
            result = await asyncio.shield(future)
            if result is None:  # its leader was cancelled, this pass was not: ask ourselves
                orphaned.append(ref)
            else:
                out[ref] = result
        if orphaned:
            out.update(await self.get(name, orphaned, deadline))
        return out

    async def _fetch_new(
        self, name: str, refs: list[SecretRef], deadline: float
    ) -> dict[SecretRef, FetchResult]:
        loop = asyncio.get_running_loop()
        self.fetch_count += len(refs)
        futures: dict[SecretRef, asyncio.Future[FetchResult | None]] = {
            ref: loop.create_future() for ref in refs
        }
        self._inflight.update(futures)
        epoch = self._epochs.get(name, 0)
        found: dict[SecretRef, FetchResult] = {}
        try:
            found = await self.fetcher.fetch(name, refs, deadline)
        finally:
            current = epoch == self._epochs.get(name, 0)
            for ref, future in futures.items():
                if self._inflight.get(ref) is future:
                    del self._inflight[ref]
                result = found.get(ref)
                if result is not None:
                    if current:
                        self._store_first(ref, result)
                    elif isinstance(result, SecretValue):  # the provider was dropped meanwhile
                        self.redactor.retire(result.reveal())
                future.set_result(result)  # None (we were cancelled): whoever waits asks again
        if current:
            self._count(name, found.values())
        return found

    def _store_first(self, ref: SecretRef, result: FetchResult) -> None:
        now = time.time()
        if isinstance(result, SecretValue):
            self.entries[ref] = Entry(ref, value=result, fetched_at=now, checked_at=now)
        else:
            self.entries[ref] = Entry(ref, error=result, failures=1, failing_since=now)

    # --- the scheduler looks again --------------------------------------------------------------

    async def refresh(self, refs: Iterable[SecretRef]) -> Look:
        """One batched check per provider of `refs`; returns the refs whose value changed.

        Refs with a good value are checked (`Provider.refresh`); refs that never
        had one are fetched again. Unknown refs are ignored (dropped meanwhile).
        """
        known: dict[str, dict[SecretRef, SecretValue]] = {}
        missing: dict[str, list[SecretRef]] = {}
        for ref in refs:
            entry = self.entries.get(ref)
            if entry is None or ref in self._inflight:
                continue
            if entry.value is not None:
                known.setdefault(ref.provider, {})[ref] = entry.value
            else:
                missing.setdefault(ref.provider, []).append(ref)
        if not known and not missing:
            return Look()
        deadline = asyncio.get_running_loop().time() + self.fetcher.timeout
        epochs = {name: self._epochs.get(name, 0) for name in known.keys() | missing.keys()}
        calls = [self._check(name, values, deadline) for name, values in known.items()]
        calls += [self._retry(name, batch, deadline) for name, batch in missing.items()]
        answers: dict[SecretRef, RefreshResult] = {}
        for found in await asyncio.gather(*calls):
            answers.update(found)
        changed: set[SecretRef] = set()
        for ref, result in answers.items():
            if epochs[ref.provider] != self._epochs.get(ref.provider, 0):
                # its provider was dropped (reloaded) meanwhile: the old instance's answer
                # must not overwrite what the new one says
                if isinstance(result, SecretValue):
                    self.redactor.retire(result.reveal())
            elif self._apply(ref, result):
                changed.add(ref)
        return Look(frozenset(changed), frozenset(answers))

    async def _check(
        self, name: str, known: dict[SecretRef, SecretValue], deadline: float
    ) -> dict[SecretRef, RefreshResult]:
        found = await self.fetcher.refresh(name, known, deadline)
        self._count(name, found.values())
        return found

    async def _retry(
        self, name: str, refs: list[SecretRef], deadline: float
    ) -> dict[SecretRef, RefreshResult]:
        found = await self.fetcher.fetch(name, refs, deadline)
        self._count(name, found.values())
        return dict(found)

    def _apply(self, ref: SecretRef, result: RefreshResult) -> bool:
        """Fold one answer into the entry; True when the value templates see changed."""
        entry = self.entries.get(ref)
        if entry is None:  # dropped while the check was in flight: forget the answer too
            if isinstance(result, SecretValue):
                self.redactor.retire(result.reveal())
            return False
        now = time.time()
        if isinstance(result, ProviderError):
            self._failed(entry, result, now)
            return False
        self._recovered(entry, now)
        if isinstance(result, Unchanged):
            if entry.value is not None and (result.lease or result.check_after is not None):
                entry.value = msgspec.structs.replace(
                    entry.value,
                    lease=result.lease or entry.value.lease,
                    check_after=result.check_after,
                )
            return False
        old = entry.value
        if old is not None and result.same_as(old):
            self.redactor.retire(result.reveal())  # registered once already, by the old value
            entry.value = msgspec.structs.replace(
                old, lease=result.lease, check_after=result.check_after
            )
            return False
        entry.value = result
        entry.generation += 1
        entry.fetched_at = now
        gone = old.lease if old is not None else None
        if gone is not None and (result.lease is None or result.lease.lease_id != gone.lease_id):
            self.replaced.append(Replaced(ref, gone, time.monotonic()))
        if old is not None:
            earlier = self._previous.pop(ref, None)
            if earlier is not None:
                self.redactor.retire(earlier.reveal())
            self._previous[ref] = old
            log.info("secret.rotated", reference=shown(ref), generation=entry.generation)
        return True

    def _failed(self, entry: Entry, error: ProviderError, now: float) -> None:
        first = entry.failing_since is None
        entry.error = error
        entry.failures += 1
        if first:
            entry.failing_since = now
            if entry.value is not None and not error.transient:
                # transient ones are told once per provider (provider.unavailable); a
                # permanent one (deleted, access revoked) is this secret's own news
                log.warning(
                    "secret.check_failed",
                    reference=shown(entry.ref),
                    error=error.kind,
                    detail=error.detail,
                    keeping="the last good value",
                )

    def _recovered(self, entry: Entry, now: float) -> None:
        error = entry.error
        if entry.value is not None and error is not None and not error.transient:
            log.info("secret.recovered", reference=shown(entry.ref))
        entry.error = None
        entry.failures = 0
        entry.failing_since = None
        entry.checked_at = now

    def _count(self, name: str, results: Iterable[object]) -> None:
        stats = self.stats.setdefault(name, ProviderStats())
        for result in results:
            stats.fetches += 1
            if not isinstance(result, ProviderError):
                stats.last_success = time.time()
            else:
                stats.errors += 1
                # scrubbed now: the value it may quote can be retired before status shows it
                stats.last_error = self.redactor.scrub(f"{result.kind}: {result.detail}")
                if isinstance(result, Throttled):
                    stats.throttles += 1

    def take_replaced(self) -> list[Replaced]:
        taken, self.replaced = self.replaced, []
        return taken

    # --- forgetting -----------------------------------------------------------------------------

    def retain(self, refs: Iterable[SecretRef]) -> set[SecretRef]:
        """Keep only `refs` (what the templates still use); returns the refs dropped."""
        keep = set(refs)
        dropped = {ref for ref in self.entries if ref not in keep}
        self._drop(dropped)
        return dropped

    def drop_provider(self, name: str) -> set[SecretRef]:
        """Forget every secret of provider `name` (its config changed or it is gone)."""
        dropped = {ref for ref in self.entries if ref.provider == name}
        self._drop(dropped)
        self.stats.pop(name, None)
        self._epochs[name] = self._epochs.get(name, 0) + 1
        for ref in [ref for ref in self._inflight if ref.provider == name]:
            del self._inflight[ref]  # a later ask goes to the provider now configured
        return dropped

    def _drop(self, refs: Iterable[SecretRef]) -> None:
        for ref in refs:
            entry = self.entries.pop(ref)
            if entry.value is not None:
                self.redactor.retire(entry.value.reveal())
            earlier = self._previous.pop(ref, None)
            if earlier is not None:
                self.redactor.retire(earlier.reveal())
