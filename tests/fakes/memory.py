"""An in-memory store: the Provider face with knobs (latency, failures) and counters.

It stands in for a store in pipeline tests that are about our orchestration
(deduplication, concurrency, rounds, deadlines), not about any wire protocol;
the wire-protocol fakes for AWS, Azure and Vault live beside it.

Its one spelling rule imitates AWS's: a ref with `stage="AWSCURRENT"` names
the same secret as one with no stage (`canonical` drops it), so resolver
tests can check that two spellings cost one fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

import msgspec

from smagent.providers.base import (
    FetchResult,
    Lease,
    NotFound,
    ProviderError,
    RefreshResult,
    SecretValue,
    Unchanged,
)
from smagent.references import SecretRef

CURRENT = "AWSCURRENT"


@dataclass
class MemoryProvider:
    name: str
    values: dict[str, str | bytes] = field(default_factory=dict)
    delay: float = 0.0
    errors: dict[str, ProviderError] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    asked: list[SecretRef] = field(default_factory=list)
    """Every ref fetch() was given, as given (canonical ones, when the resolver is right)."""
    in_flight: int = 0
    peak_in_flight: int = 0
    opened: int = 0
    closed: int = 0

    def canonical(self, ref: SecretRef) -> SecretRef:
        if ref.stage == CURRENT:
            return msgspec.structs.replace(ref, stage=None)
        return ref

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        self.calls.append([r.secret_id for r in refs])
        self.asked.extend(refs)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return {ref: self._one(ref) for ref in refs}
        finally:
            self.in_flight -= 1

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        found = await self.fetch(list(known))
        answers: dict[SecretRef, RefreshResult] = {}
        for ref, old in known.items():
            new = found[ref]
            same = isinstance(new, SecretValue) and new.same_as(old)
            answers[ref] = Unchanged() if same else new
        return answers

    def _one(self, ref: SecretRef) -> FetchResult:
        if ref.secret_id in self.errors:
            return self.errors[ref.secret_id]
        if ref.secret_id not in self.values:
            return NotFound(ref, f"no secret {ref.secret_id!r}")
        return SecretValue(self.values[ref.secret_id])

    @property
    def requested(self) -> list[str]:
        return [secret for call in self.calls for secret in call]

    async def test_connection(self) -> None:
        return None

    def revoke_after(self) -> float | None:
        return None  # no leases here

    async def revoke(self, ref: SecretRef, lease: Lease) -> None:
        raise NotFound(ref, "a memory store has no leases")

    async def __aenter__(self) -> Self:
        self.opened += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed += 1
