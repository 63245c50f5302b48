"""When a lease replaced by new credentials is revoked: once nothing on this host uses it.

The vault provider replaces a lease near its max_ttl, or when renewal is
refused, by reading new credentials; the old ones must keep working until
every file that held them is rewritten and the services are told. Revoked the
instant the new ones are read or written, a client that read its file just
before fails; never revoked, each replaced user lives on until its lease ends
(up to a third of the TTL after a replacement near max_ttl, the rest of the
TTL when renewal was refused): database users pile up.

So a replaced lease is revoked when, and only when:

1. every template that uses the secret -- or whose file may still hold it: its
   last successful render used it, though its renders fail now -- rendered
   without error in a pass that began after the replacement (its file holds
   the new credentials);
2. none of those templates' actions is still owed: the SIGHUP or reload ran
   (a failing action holds the revocation back);
3. the provider's `revoke_replaced_after` passed since 1 and 2 first held:
   the grace in which a client that read the old file just before connects.

It is left to end on its own when the secret is no longer used (its template
was removed: the file left behind still holds it), its provider was replaced
by a reload, the agent stops first, or the lease ends before 1-3 hold.

`review` is the decision, pure (the agent passes what it knows as
callables); the agent's retire loop does the I/O (`Provider.revoke`).

Commands that read a dynamic secret only to look at it -- `check --connect`,
`render --dry-run`, `get` without `--reveal` -- write it nowhere: its lease
is revoked before they exit (`revoke_unused`), so a monitoring check run
every minute does not leave a database user behind each time. `get --reveal`
keeps it (its output is the credential), and so does `render --once` (its
files use it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from smagent.logging import REDACTOR, get_logger, shown
from smagent.providers.base import FetchResult, Lease, Provider, ProviderError, SecretValue
from smagent.references import SecretRef

log = get_logger()

RETRY_FIRST = 1.0
RETRY_MAX = 60.0


@dataclass(slots=True)
class Retiring:
    """A lease replaced by new credentials, waiting to be revoked."""

    ref: SecretRef
    lease: Lease
    provider: Provider
    """The instance that holds it: a reload that replaces the provider ends the wait."""
    replaced_at: float
    """`time.monotonic()` when the new credentials took its place (ordered against passes'
    starts on the monotonic clock: a wall clock stepped back must not make an older pass
    look later)."""
    grace: float
    ready_at: float | None = None
    """`time.monotonic()` when conditions 1 and 2 first held."""
    failures: int = 0
    """Revocations refused for a transient reason (Vault unreachable, sealed, throttling)."""
    retry_at: float = 0.0
    """`time.monotonic()` before which it is not tried again."""
    inherited: bool = False
    """Held by an earlier run (or instance): a template not yet rendered by this one may
    have it in its file."""

    @property
    def expires(self) -> float:
        """`time.time()` at which the lease ends by itself."""
        return self.lease.obtained_at + self.lease.duration_s

    def due_at(self) -> float | None:
        return None if self.ready_at is None else max(self.ready_at + self.grace, self.retry_at)

    def retry_in(self) -> float:
        """The wait before the next try after a transient refusal: doubling, 1 s to 60 s."""
        return min(RETRY_MAX, RETRY_FIRST * 2.0**self.failures)


@dataclass(frozen=True, slots=True)
class HostView:
    """What the agent knows, as `review` asks it."""

    still_held: Callable[[Retiring], bool]
    """Its secret is still used and its provider is the same instance."""
    using: Callable[[Retiring], set[str]]
    """The templates whose file may hold the lease: those that use its secret now, those
    whose last successful render used it (a render failing before its `secret(...)` call
    names no secret, but its file still holds the old credentials) and, for an inherited
    lease, those not rendered successfully by this run yet."""
    rendered_since: Callable[[str], float | None]
    """`time.monotonic()` at which the last pass that rendered a template without error began."""
    owes_actions: Callable[[str], bool]
    """Whether an action of a template is still owed (not run, or failing)."""


@dataclass(frozen=True, slots=True)
class Review:
    due: list[Retiring]
    """Revoke these now."""
    dropped: list[tuple[Retiring, str]]
    """Left to end on their own, with why."""


def review(pending: list[Retiring], view: HostView, now: float, mono: float) -> Review:
    """Update `ready_at` of each pending lease; take out those due and those given up."""
    due: list[Retiring] = []
    dropped: list[tuple[Retiring, str]] = []
    for item in list(pending):
        if not view.still_held(item):
            why = "its secret is no longer used, or its provider was reloaded"
            dropped.append((item, why))
        elif item.expires <= now:
            dropped.append((item, "it ended on its own first"))
        elif item.ready_at is None and _ready(item, view):
            item.ready_at = mono
        at = item.due_at()
        if dropped and dropped[-1][0] is item:
            pending.remove(item)
        elif at is not None and at <= mono:
            pending.remove(item)
            due.append(item)
    return Review(due, dropped)


def next_due(pending: list[Retiring]) -> float | None:
    """`time.monotonic()` of the next revocation whose conditions hold."""
    times = [at for item in pending if (at := item.due_at()) is not None]
    return min(times, default=None)


def _ready(item: Retiring, view: HostView) -> bool:
    templates = view.using(item)
    if not templates:
        return False
    for name in templates:
        started = view.rendered_since(name)
        if started is None or started < item.replaced_at or view.owes_actions(name):
            return False
    return True


async def revoke(
    provider: Provider,
    ref: SecretRef,
    lease: Lease,
    retry_in: float | None = None,
    **told: object,
) -> ProviderError | None:
    """Revoke one lease; a refusal is logged (with `told`) and returned (None: revoked). A
    transient one is retried by the caller in `retry_in` s when given; else the lease ends
    on its own at its expiry."""
    try:
        await provider.revoke(ref, lease)
    except ProviderError as exc:
        retrying = exc.transient and retry_in is not None
        log.warning(
            "lease.revoke_failed",
            provider=ref.provider,
            reference=shown(ref),
            error=exc.kind,
            detail=REDACTOR.scrub(exc.detail),
            then=f"retrying in {retry_in} s" if retrying else "it ends on its own",
            **told,
        )
        return exc
    return None


async def revoke_unused(
    providers: Mapping[str, Provider], results: Mapping[SecretRef, FetchResult]
) -> int:
    """Revoke every lease in `results` (a command's reads nothing will use); how many were.

    Only where the provider revokes at all (`revoke_after` not None); a failure is
    logged, and the lease then ends on its own.
    """
    leases: dict[str, tuple[SecretRef, Lease, Provider]] = {}
    for ref, value in results.items():
        provider = providers.get(ref.provider)
        if not isinstance(value, SecretValue) or value.lease is None or provider is None:
            continue
        if provider.revoke_after() is not None:
            leases.setdefault(value.lease.lease_id, (ref, value.lease, provider))

    async def one(ref: SecretRef, lease: Lease, provider: Provider) -> bool:
        if await revoke(provider, ref, lease) is not None:
            return False
        log.info("lease.revoked", provider=ref.provider, reference=shown(ref), reason="unused")
        return True

    done = await asyncio.gather(*(one(*item) for item in leases.values()))
    return sum(done)
