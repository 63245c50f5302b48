"""The face every secret store shows the resolver, and its small error set.

    ProviderError                 a fetch failed; carries the ref and the store's own words
    ├── NotFound                  permanent: no such secret / version / stage
    ├── AccessDenied              permanent: the credentials may not read it
    ├── BadValue                  permanent: the stored value is unusable (e.g. not UTF-8)
    ├── Throttled                 transient: the store asked us to slow down (429, throttling)
    └── Unavailable               transient: network error, timeout, 5xx, sealed

Each SDK's exceptions are translated into this set exactly once, at the
provider boundary, so the resolver and the agent decide retry-or-fail from the
class alone and never parse messages. Errors are returned as values in the
`fetch` mapping (one failed secret must not hide the others of a batch).

A `SecretValue` cannot leak by accident: its repr, str and structlog form are
`<redacted>`; the bytes come out only through `reveal()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from smagent.references import SecretRef


@dataclass(frozen=True, slots=True)
class Lease:
    """A Vault lease on a dynamic secret (filled by the vault provider)."""

    lease_id: str
    duration_s: float
    renewable: bool


@dataclass(frozen=True, slots=True)
class SecretValue:
    """A fetched secret: text or bytes, the version it was read at, its lease."""

    _value: str | bytes = field(repr=False)
    version: str | None = None
    lease: Lease | None = None

    def reveal(self) -> str | bytes:
        return self._value

    @property
    def is_binary(self) -> bool:
        return isinstance(self._value, bytes)

    def __repr__(self) -> str:
        return f"SecretValue(<redacted>, version={self.version!r})"

    __str__ = __repr__

    def __structlog__(self) -> str:
        return "<redacted>"


class ProviderError(Exception):
    """A secret could not be fetched; `transient` says whether a retry may help."""

    transient: ClassVar[bool] = False
    kind: ClassVar[str] = "error"

    def __init__(self, ref: SecretRef | None, detail: str) -> None:
        self.ref = ref
        self.detail = detail
        super().__init__(f"{ref}: {detail}" if ref is not None else detail)


class NotFound(ProviderError):
    kind = "not found"


class AccessDenied(ProviderError):
    kind = "access denied"


class BadValue(ProviderError):
    kind = "bad value"


class Throttled(ProviderError):
    transient = True
    kind = "throttled"


class Unavailable(ProviderError):
    transient = True
    kind = "unavailable"


FetchResult = SecretValue | ProviderError


class Provider(Protocol):
    """One configured store instance, shared by every template of a process."""

    name: str

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        """Fetch distinct secrets; every ref asked for has an entry in the result."""
        ...

    async def current_version(self, ref: SecretRef) -> str | None:
        """A cheap rotation check; None when the store offers none (then re-fetch)."""
        ...

    async def test_connection(self) -> None:
        """Authenticate and make one cheap read-only call; raise ProviderError if not ok."""
        ...

    async def aclose(self) -> None: ...
