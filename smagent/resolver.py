"""Distinct secret references in, one concurrent fetch per provider, values out.

The resolver is why a secret used by ten templates and twenty keys costs one
request: it keeps every result of a pass (`results`), asks each provider only
for the references it has not answered yet, and sends each provider's batch
concurrently with the others. Before that, each reference is put in its
provider's one spelling (`Provider.canonical`): `stage=None` and
`stage="AWSCURRENT"`, a name and its ARN, are one fetch. The result is kept
under the canonical ref AND under every spelling a template wrote, since the
renderer looks values up by the ref it wrote.

A pass has a deadline (`timeout`): a provider that does not answer in time
yields `Unavailable` for its references, so `render --once` never hangs. The
deadline is for the whole pass, however many rounds of references it takes,
not per request; providers see it (`retry.DEADLINE`) so that their retries
never sleep past it.

Each fetched value is registered with the redactor before anyone can log it,
then checked (`values.value_problem`): a value no template could use (text
that is not valid Unicode, JSON nested past the limit) becomes a `BadValue`
for that one secret. Whatever a provider does, its damage stays inside its
own batch: an exception, a missing answer or an answer of the wrong type
fails only the references it was asked for, as `ProviderBug`, which is not
transient (a bug does not go away by asking again).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from smagent.logging import REDACTOR, Redactor, get_logger
from smagent.providers.base import (
    BadValue,
    FetchResult,
    NotFound,
    Provider,
    ProviderBug,
    ProviderError,
    RefreshResult,
    SecretValue,
    Unavailable,
    Unchanged,
)
from smagent.providers.retry import DEADLINE, Health
from smagent.references import SecretRef, spellings
from smagent.values import value_problem

log = get_logger()
R = TypeVar("R")


class Fetcher:
    """One batch of canonical refs to one provider: deadline, crash containment, redactor.

    Shared by the per-pass `Resolver` and the agent's long-lived `SecretCache`,
    so a value is accepted the same way whichever asked for it.
    """

    def __init__(
        self,
        providers: Mapping[str, Provider],
        timeout: float,
        redactor: Redactor = REDACTOR,
    ) -> None:
        self.providers = providers
        self.timeout = timeout
        self.redactor = redactor

    async def fetch(
        self, name: str, refs: list[SecretRef], deadline: float
    ) -> dict[SecretRef, FetchResult]:
        """`provider.fetch(refs)` by loop time `deadline`; an entry for every ref."""
        provider = self.providers.get(name)
        if provider is None:
            return {ref: NotFound(ref, f"no provider named {name!r} is configured") for ref in refs}
        return await self.call(
            name, refs, deadline, lambda: provider.fetch(refs), self.accept, "provider.fetched"
        )

    async def refresh(
        self, name: str, known: Mapping[SecretRef, SecretValue], deadline: float
    ) -> dict[SecretRef, RefreshResult]:
        """`provider.refresh(known)` by `deadline`; an entry for every ref (see `fetch`)."""
        provider = self.providers.get(name)
        refs = list(known)
        if provider is None:
            return {ref: NotFound(ref, f"no provider named {name!r} is configured") for ref in refs}

        def accept(ref: SecretRef, result: object) -> RefreshResult:
            return result if isinstance(result, Unchanged) else self.accept(ref, result)

        return await self.call(
            name, refs, deadline, lambda: provider.refresh(known), accept, "provider.refreshed"
        )

    async def call(
        self,
        name: str,
        refs: list[SecretRef],
        deadline: float,
        request: Callable[[], Awaitable[Mapping[SecretRef, object]]],
        accept: Callable[[SecretRef, object], R],
        event: str,
    ) -> dict[SecretRef, R | ProviderError]:
        started = time.monotonic()
        token = DEADLINE.set(deadline)  # seen by the provider's retries, and its tasks'
        try:
            async with asyncio.timeout_at(deadline):
                found = dict(await request())
        except TimeoutError:
            detail = f"no answer within {self.timeout:g}s (fetch_timeout)"
            # a store that hangs is down: told once, as `provider.unavailable` by its health
            # (which status.json shows), not a warning at every look
            health = getattr(self.providers.get(name), "health", None)
            what = "refresh" if event == "provider.refreshed" else "fetch"
            if isinstance(health, Health):
                health.failed(Unavailable(None, detail), what, first=True)
                health.finished(ok=False, had_failed=True)
            (log.debug if isinstance(health, Health) else log.warning)(
                "provider.timeout", provider=name, references=len(refs), timeout=self.timeout
            )
            return {ref: Unavailable(ref, detail) for ref in refs}
        except Exception as exc:  # a provider bug must fail its refs, not the pass
            # the exception's text may hold values of this very batch, which the redactor
            # has not seen yet: the type and where it was raised, never the message
            log.error("provider.crashed", provider=name, error_type=type(exc).__name__)
            where = "".join(traceback.format_tb(exc.__traceback__))
            log.debug("provider.crashed.traceback", provider=name, traceback=where)
            detail = f"internal error in provider ({type(exc).__name__})"
            return {ref: ProviderBug(ref, detail) for ref in refs}
        finally:
            DEADLINE.reset(token)
        answers: dict[SecretRef, R | ProviderError] = {}
        for ref in refs:  # only what was asked: a stray answer must not fill another's ref
            answers[ref] = accept(ref, found.get(ref))
        log.debug(
            event,
            provider=name,
            references=len(refs),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return answers

    def accept(self, ref: SecretRef, result: object) -> FetchResult:
        if isinstance(result, ProviderError):
            return result
        if not isinstance(result, SecretValue):
            kind = "no answer" if result is None else "an answer of the wrong type"
            return ProviderBug(ref, f"the provider gave {kind} for this secret")
        value = result.reveal()
        self.redactor.add(value)
        problem = value_problem(value)
        return result if problem is None else BadValue(ref, problem)  # refused, still known

    def canonical(self, ref: SecretRef) -> SecretRef | ProviderError:
        """The provider's one spelling of `ref` (it must stay a ref of the same provider)."""
        provider = self.providers.get(ref.provider)
        if provider is None:
            return ref  # fetch reports the unknown provider
        try:
            canonical = provider.canonical(ref)
        except Exception as exc:
            log.error("provider.crashed", provider=ref.provider, error_type=type(exc).__name__)
            return ProviderBug(ref, f"internal error in provider ({type(exc).__name__})")
        if not isinstance(canonical, SecretRef) or canonical.provider != ref.provider:
            return ProviderBug(ref, "the provider gave an invalid spelling for this secret")
        return canonical


class Source(Protocol):
    """Where a pass gets the values it has not seen yet (the agent's cache, or the stores)."""

    fetch_count: int
    """How many refs it has sent to the stores so far (a pass reports its share)."""

    async def get(
        self, name: str, refs: list[SecretRef], deadline: float
    ) -> Mapping[SecretRef, FetchResult]: ...


class Resolver:
    """One pass's view of the secrets: each ref answered once, the same answer all pass."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        timeout: float,
        redactor: Redactor = REDACTOR,
        source: Source | None = None,
    ) -> None:
        self.fetcher = Fetcher(providers, timeout, redactor)
        self.source = source
        """None: fetch from the stores (`render --once`); the agent passes its cache."""
        self.timeout = timeout
        self.results: dict[SecretRef, FetchResult] = {}
        self.canonical_of: dict[SecretRef, SecretRef] = {}
        """Each spelling a template wrote -> the provider's one spelling (for the index)."""
        self._deadline: float | None = None
        self.requests = 0
        """How many references were sent to providers (a ref is never sent twice a pass)."""

    def conceal(self, names: Iterable[str]) -> None:
        """Names a template computed (maybe from a secret) are registered with the redactor,
        in each spelling a store may give them back, before any provider is given them: the
        provider's logs and errors quote them in their own way (Key Vault lowercases)."""
        for name in names:
            for spelling in spellings(name):
                self.fetcher.redactor.add(spelling)

    async def resolve(self, refs: Iterable[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        """Fetch what is not known yet; return the results for `refs`."""
        wanted = set(refs)
        spellings: dict[SecretRef, set[SecretRef]] = {}
        for ref in wanted - self.results.keys():
            canonical = self.fetcher.canonical(ref)
            if isinstance(canonical, ProviderError):
                self.results[ref] = canonical
            else:
                self.canonical_of[ref] = canonical
                spellings.setdefault(canonical, set()).add(ref)
        todo: dict[str, list[SecretRef]] = {}
        for canonical in sorted(spellings.keys() - self.results.keys(), key=str):
            todo.setdefault(canonical.provider, []).append(canonical)
        if todo:
            if self._deadline is None:
                self._deadline = asyncio.get_running_loop().time() + self.timeout
            batches = [self._get(name, batch, self._deadline) for name, batch in todo.items()]
            for found in await asyncio.gather(*batches):
                self.results.update(found)
        for canonical, written in spellings.items():
            for ref in written:
                self.results[ref] = self.results[canonical]
        return {ref: self.results[ref] for ref in wanted}

    async def _get(
        self, name: str, refs: list[SecretRef], deadline: float
    ) -> Mapping[SecretRef, FetchResult]:
        if self.source is not None:
            before = self.source.fetch_count
            try:
                return await self.source.get(name, refs, deadline)
            finally:
                self.requests += self.source.fetch_count - before
        self.requests += len(refs)
        return await self.fetcher.fetch(name, refs, deadline)
