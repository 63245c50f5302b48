"""Distinct secret references in, one concurrent fetch per provider, values out.

The resolver is why a secret used by ten templates and twenty keys costs one
request: it keeps every result of a pass (`results`), asks each provider only
for the references it has not answered yet, and sends each provider's batch
concurrently with the others. A pass has a deadline (`timeout`): a provider
that does not answer in time yields `Unavailable` for its references, so
`render --once` never hangs. The deadline is for the whole pass, however many
rounds of references it takes, not per request.

Each fetched value is registered with the redactor before anyone can log it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from smagent.logging import REDACTOR, Redactor, get_logger
from smagent.providers.base import FetchResult, NotFound, Provider, SecretValue, Unavailable
from smagent.references import SecretRef

log = get_logger()


class Resolver:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        timeout: float,
        redactor: Redactor = REDACTOR,
    ) -> None:
        self.providers = providers
        self.timeout = timeout
        self.redactor = redactor
        self.results: dict[SecretRef, FetchResult] = {}
        self._deadline: float | None = None
        self.requests = 0
        """How many references were sent to providers (a ref is never sent twice a pass)."""

    async def resolve(self, refs: Iterable[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        """Fetch what is not known yet; return the results for `refs`."""
        wanted = set(refs)
        todo: dict[str, list[SecretRef]] = {}
        for ref in sorted(wanted - self.results.keys(), key=str):
            todo.setdefault(ref.provider, []).append(ref)
        if todo:
            if self._deadline is None:
                self._deadline = asyncio.get_running_loop().time() + self.timeout
            batches = [self._fetch(name, batch) for name, batch in todo.items()]
            for found in await asyncio.gather(*batches):
                self.results.update(found)
        return {ref: self.results[ref] for ref in wanted}

    async def _fetch(self, name: str, refs: list[SecretRef]) -> dict[SecretRef, FetchResult]:
        provider = self.providers.get(name)
        if provider is None:
            return {ref: NotFound(ref, f"no provider named {name!r} is configured") for ref in refs}
        self.requests += len(refs)
        started = time.monotonic()
        try:
            async with asyncio.timeout_at(self._deadline):
                found = dict(await provider.fetch(refs))
        except TimeoutError:
            detail = f"no answer within {self.timeout:g}s (fetch_timeout)"
            log.warning(
                "provider.timeout", provider=name, references=len(refs), timeout=self.timeout
            )
            return {ref: Unavailable(ref, detail) for ref in refs}
        except Exception as exc:  # a provider bug must fail its refs, not the pass
            # the traceback may hold values of this very batch, which the redactor has
            # not seen yet: the error level gets the type only
            log.error("provider.crashed", provider=name, error_type=type(exc).__name__)
            log.debug("provider.crashed.traceback", provider=name, exc_info=True)
            detail = f"internal error in provider ({type(exc).__name__})"
            return {ref: Unavailable(ref, detail) for ref in refs}
        for ref in refs:
            result = found.get(ref)
            if result is None:
                found[ref] = Unavailable(ref, "the provider gave no answer for this secret")
            elif isinstance(result, SecretValue):
                self.redactor.add(result.reveal())
        log.debug(
            "provider.fetched",
            provider=name,
            references=len(refs),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return found
