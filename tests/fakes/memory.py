"""An in-memory store: the Provider face with knobs (latency, failures) and counters.

It stands in for a store in pipeline tests that are about our orchestration
(deduplication, concurrency, rounds, deadlines), not about any wire protocol;
the wire-protocol fakes for AWS, Azure and Vault live beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smagent.providers.base import FetchResult, NotFound, ProviderError, SecretValue
from smagent.references import SecretRef


@dataclass
class MemoryProvider:
    name: str
    values: dict[str, str | bytes] = field(default_factory=dict)
    delay: float = 0.0
    errors: dict[str, ProviderError] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        self.calls.append([r.secret_id for r in refs])
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return {ref: self._one(ref) for ref in refs}
        finally:
            self.in_flight -= 1

    def _one(self, ref: SecretRef) -> FetchResult:
        if ref.secret_id in self.errors:
            return self.errors[ref.secret_id]
        if ref.secret_id not in self.values:
            return NotFound(ref, f"no secret {ref.secret_id!r}")
        return SecretValue(self.values[ref.secret_id])

    @property
    def requested(self) -> list[str]:
        return [secret for call in self.calls for secret in call]

    async def current_version(self, ref: SecretRef) -> str | None:
        return None

    async def test_connection(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
