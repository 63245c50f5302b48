"""The face every secret store shows the resolver and the agent, and its small error set.

    ProviderError                 a read failed; carries the ref and the store's own words
    ├── NotFound                  permanent: no such secret / version / stage
    ├── AccessDenied              permanent: the credentials may not read it
    ├── BadValue                  permanent: the stored value is unusable (e.g. not UTF-8)
    ├── ProviderBug               permanent: our provider's own bug, or an answer it cannot read
    ├── Throttled                 transient: the store asked us to slow down (429, throttling)
    └── Unavailable               transient: network error, timeout, 5xx, sealed

Each SDK's exceptions are translated into this set exactly once, at the
store module's boundary, so the resolver and the agent decide retry-or-fail
from the class alone (`transient`) and never parse messages. Errors are
returned as values in the `fetch` / `refresh` mappings (one failed secret
must not hide the others of a batch). `ProviderBug` is permanent on purpose:
a crash in our code will crash again, and an agent that took it for an
outage would retry it forever.

A `SecretValue` cannot leak by accident: its repr, str and structlog form are
`<redacted>`; the bytes come out only through `reveal()`. It also carries the
store's timing facts (`check_after`, a lease's `obtained_at`) so that the
agent's scheduler owns all timing and providers never sleep on their own.

Lifecycle: a provider is an async context manager. `__aenter__` builds what
it needs without contacting the store (the first request logs in, so one
unreachable store never stops the others from opening); `__aexit__` closes
sessions and cancels the provider's background tasks. `BaseProvider` gives
the defaults a store overrides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, Self, TypeVar

import msgspec

from smagent.providers.limits import Limits
from smagent.references import SecretRef

if TYPE_CHECKING:
    from smagent.config import ProviderConfig

T = TypeVar("T")


class Lease(msgspec.Struct, frozen=True):
    """A Vault lease on a dynamic secret (filled by the vault provider)."""

    lease_id: str
    duration_s: float
    """The TTL the store granted, in seconds."""
    renewable: bool
    obtained_at: float
    """`time.time()` when the lease was issued or last renewed."""


class SecretValue(msgspec.Struct, frozen=True):
    """A fetched secret: text or bytes, the version it was read at, its lease and timing."""

    _value: str | bytes
    version: str | None = None
    """The store's version id: AWS VersionId, Azure version, KV v2 version number as text."""
    lease: Lease | None = None
    check_after: float | None = None
    """`time.time()` at which the store says to look again (a lease's 2/3 TTL, Azure
    `expires_on`, AWS `NextRotationDate`); None: the refresh schedule decides."""

    def reveal(self) -> str | bytes:
        return self._value

    @property
    def is_binary(self) -> bool:
        return isinstance(self._value, bytes)

    def same_as(self, other: SecretValue) -> bool:
        """Whether `other` holds the same value at the same version (a refresh's question)."""
        return self._value == other._value and self.version == other.version

    def __repr__(self) -> str:
        return f"SecretValue(<redacted>, version={self.version!r})"

    __str__ = __repr__

    def __structlog__(self) -> str:
        return "<redacted>"


class Unchanged(msgspec.Struct, frozen=True):
    """A refresh answer: the known value is still the current one."""

    check_after: float | None = None
    """As `SecretValue.check_after`, when the store gave a new date to look again."""
    lease: Lease | None = None
    """The lease as renewed (new TTL, `obtained_at` now), when the check renewed one."""


class ProviderError(Exception):
    """A secret could not be read; `transient` says whether a retry may help."""

    transient: ClassVar[bool] = False
    kind: ClassVar[str] = "error"

    def __init__(self, ref: SecretRef | None, detail: str) -> None:
        self.ref = ref
        self.detail = detail
        super().__init__(f"{ref}: {detail}" if ref is not None else detail)

    def for_ref(self, ref: SecretRef) -> ProviderError:
        """The same error, about `ref` (one failure of a whole batch, given to each of its refs)."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        ProviderError.__init__(copy, ref, self.detail)
        return copy


class NotFound(ProviderError):
    kind = "not found"


class AccessDenied(ProviderError):
    kind = "access denied"


class BadValue(ProviderError):
    kind = "bad value"


class ProviderBug(ProviderError):
    """Our provider failed in a way no retry fixes: a crash, or a store's answer it cannot read."""

    kind = "provider error"


class Throttled(ProviderError):
    transient = True
    kind = "throttled"

    def __init__(
        self, ref: SecretRef | None, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(ref, detail)
        self.retry_after = retry_after
        """Seconds the store asked us to wait (Retry-After), when it said."""


class Unavailable(ProviderError):
    transient = True
    kind = "unavailable"


FetchResult = SecretValue | ProviderError
RefreshResult = Unchanged | SecretValue | ProviderError


class Provider(Protocol):
    """One configured store instance, shared by every template of a process."""

    name: str

    def canonical(self, ref: SecretRef) -> SecretRef:
        """The one spelling of the secret `ref` names; the resolver dedups on it.

        Pure and fast, no I/O: AWS stage None and "AWSCURRENT" are one secret,
        Azure names are case-insensitive, Vault paths lose stray slashes.
        """
        ...

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        """Read distinct canonical secrets; every ref asked for has an entry in the result."""
        ...

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        """One batched, cheapest-possible rotation check of many secrets; an entry per ref."""
        ...

    async def test_connection(self) -> None:
        """Authenticate and make one cheap read-only call; raise ProviderError if not ok."""
        ...

    def revoke_after(self) -> float | None:
        """Seconds of grace before a replaced lease is revoked; None: leases are not revoked
        (left to expire), as for every store without leases."""
        ...

    async def revoke(self, ref: SecretRef, lease: Lease) -> None:
        """End `lease` now (the credentials it holds stop working); raise ProviderError."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class BaseProvider:
    """The defaults a store overrides: identity spelling, refresh by fetching again, no-op hooks.

    Subclasses call `super().__init__(name, config)`, send every request to
    the store through `self.request` (or at least inside
    `async with self.limits.slot():`), and override `open` / `close` to
    create and close their session. `refresh` costs one `fetch` of every
    known secret: right for a local store; a store with a cheaper version
    check overrides it.
    """

    def __init__(self, name: str, config: ProviderConfig) -> None:
        from smagent.providers.retry import Health

        self.name = name
        rate, concurrency = config.rate_limit, config.max_concurrency
        # unset only in an arcion entry, which is never a provider
        assert not isinstance(rate, msgspec.UnsetType)
        assert not isinstance(concurrency, msgspec.UnsetType)
        self.limits = Limits(rate, concurrency)
        self.health = Health(name)

    async def request(self, attempt: Callable[[], Awaitable[T]], *, what: str) -> T:
        """One request to the store: each attempt inside a `limits` slot, transient errors
        retried by `retry.retrying` within the pass's deadline, state changes logged once.

        `attempt` raises ProviderError kinds (the store module translates its SDK's
        exceptions inside it); `what` names the request for logs, never with a value.
        """
        from smagent.providers.retry import retrying

        async def limited() -> T:
            async with self.limits.slot():
                return await attempt()

        return await retrying(limited, what=what, health=self.health)

    def canonical(self, ref: SecretRef) -> SecretRef:
        return ref

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        raise NotImplementedError

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        if not known:
            return {}
        found = await self.fetch(list(known))
        answers: dict[SecretRef, RefreshResult] = {}
        for ref, old in known.items():
            new = found.get(ref)
            if new is None:
                answers[ref] = ProviderBug(ref, "the provider gave no answer for this secret")
            elif isinstance(new, SecretValue) and new.same_as(old):
                answers[ref] = Unchanged(new.check_after)
            else:
                answers[ref] = new
        return answers

    async def test_connection(self) -> None:
        return None

    def revoke_after(self) -> float | None:
        return None

    async def revoke(self, ref: SecretRef, lease: Lease) -> None:
        raise ProviderBug(ref, f"{self.name}: this store has no leases to revoke")

    async def open(self) -> None:
        """Build the session (or leave it to the first request); never contact the store here."""

    async def close(self) -> None:
        """Close the session and cancel background tasks; called once, even after a failure."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
