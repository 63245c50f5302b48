"""Brief retries inside a pass: backoff with full jitter, Retry-After, never past the deadline.

A provider retries a transient failure (`Throttled`, `Unavailable`) a few
times within the pass's deadline and gives up with the store's own error
after that; a permanent one (not found, access denied, bad value, a bug)
fails at once. Long outages are the agent's business, not the provider's:
it keeps the last good files and comes back on its own schedule. So once a
request has spent its retries and failed, and until a request succeeds, each
request makes one attempt (a probe): four attempts at every look of the
agent would multiply the load on a store that is down or throttling.

The SDKs' own retries are turned off in each store module (botocore
`total_max_attempts=1`, azure-core `retry_total=0`, our aiohttp client has
none), so that retries are never stacked: three SDK attempts inside each of
four of ours would be twelve requests to a store that asked us to slow down.

Why a small loop of our own and not stamina (STYLE.md's suggestion), after
weighing both:

- the deadline: a pass has one `fetch_timeout` for all its rounds, held by
  the resolver's `asyncio.timeout_at`. A retry must not start a sleep that
  ends past it (the pass would then report "no answer within ..." instead of
  the store's own words). stamina's `timeout` is a separate wall-clock budget
  per call that cannot see that deadline; here the resolver puts it in a
  context variable (`DEADLINE`) that every task of the fetch sees;
- Retry-After: a store's own wait is honoured as the least delay, and one
  longer than the deadline, or than `max_wait`, gives up at once with the
  `Throttled` (carrying `retry_after`, for the agent's scheduler);
- logging: stamina's instrumentation logs every retry scheduled (and would
  have to be switched off process-wide); here a provider's state change is
  logged once (`provider.throttled` ... `provider.recovered`) however many
  requests of a batch hit it, never with a value;
- cost: stamina pulls in tenacity (~57 ms to import, cold) for what is about
  forty lines here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from smagent.logging import get_logger
from smagent.providers.base import ProviderBug, ProviderError, Throttled

log = get_logger()
T = TypeVar("T")

DEADLINE: ContextVar[float | None] = ContextVar("smagent_deadline", default=None)
"""The event-loop time (`loop.time()`) by which the current pass must be done; set by the
resolver around each provider call, seen by every task that call starts."""

ATTEMPTS = 4
BASE_DELAY = 0.1
MAX_DELAY = 2.0
MAX_WAIT = 10.0
"""The longest Retry-After waited for inside a pass; longer, and the pass gives up at once."""

_random = random.Random()  # noqa: S311  (jitter, not cryptography)


class Health:
    """One provider's state as its log tells it: ok, throttled or unavailable, logged on change.

    Many requests of one batch meet the same throttling at once, and come out
    of it one by one: the provider counts as recovered when a request succeeds
    and none is still retrying, so a burst gives one `provider.throttled` and
    one `provider.recovered`, not one pair per request.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.state = "ok"
        self.since: float | None = None
        """`time.time()` of the last change of state (None: ok since the start)."""
        self._retrying = 0

    def failed(self, error: ProviderError, what: str, *, first: bool) -> None:
        if first:
            self._retrying += 1
        state = "throttled" if isinstance(error, Throttled) else "unavailable"
        if state != self.state:
            self.state = state
            self.since = time.time()
            log.warning(
                f"provider.{state}", provider=self.provider, request=what, detail=error.detail
            )

    def known_down(self) -> bool:
        """Throttled or unavailable, and no request is retrying: the last one spent its
        retries and failed (an outage, not a blip)."""
        return self.state != "ok" and self._retrying == 0

    def finished(self, *, ok: bool, had_failed: bool) -> None:
        if had_failed:
            self._retrying -= 1
        if ok and self._retrying == 0 and self.state != "ok":
            log.info("provider.recovered", provider=self.provider, was=self.state)
            self.state = "ok"
            self.since = time.time()

    def __repr__(self) -> str:
        return f"Health(provider={self.provider!r}, state={self.state!r})"


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    health: Health | None = None,
    attempts: int = ATTEMPTS,
    base_delay: float = BASE_DELAY,
    max_delay: float = MAX_DELAY,
    max_wait: float = MAX_WAIT,
    deadline: float | None = None,
) -> T:
    """`await attempt()`, retrying transient ProviderErrors; the last one is raised.

    `what` names the request in logs (an operation and a secret's name, never
    a value). Delays grow as `base_delay * 2**n`, capped at `max_delay`, each
    drawn uniformly below that (full jitter: clients throttled together do
    not come back together); a `Throttled.retry_after` is the least delay.
    `deadline` (a `loop.time()`; default `DEADLINE`) is never slept past.
    Anything not a ProviderError (a bug, a cancellation) goes up untouched.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    loop = asyncio.get_running_loop()
    if health is not None and health.known_down():
        attempts = 1  # a probe: between looks, the agent's scheduler does the backing off
    if deadline is None:
        deadline = DEADLINE.get()
    failures = 0
    try:
        for number in range(1, attempts + 1):
            try:
                result = await attempt()
            except ProviderError as error:
                if not error.transient:
                    if health is not None:
                        # a store that answers "no such secret" or "denied" is up: a provider
                        # throttled or down until then has recovered (a crash of ours says not)
                        up = not isinstance(error, ProviderBug)
                        health.finished(ok=up, had_failed=failures > 0)
                        health = None  # told: not again below
                    raise
                failures += 1
                if health is not None:
                    health.failed(error, what, first=failures == 1)
                if number == attempts:
                    raise
                delay = _random.uniform(0, min(max_delay, base_delay * 2 ** (number - 1)))
                retry_after = error.retry_after if isinstance(error, Throttled) else None
                if retry_after is not None:
                    if retry_after > max_wait:
                        raise
                    delay = max(delay, retry_after)
                if deadline is not None and loop.time() + delay >= deadline:
                    raise
                log.debug("provider.retry", request=what, attempt=number, delay=round(delay, 3))
                await asyncio.sleep(delay)
            else:
                if health is not None:
                    health.finished(ok=True, had_failed=failures > 0)
                return result
    except BaseException:
        if health is not None:
            health.finished(ok=False, had_failed=failures > 0)
        raise
    raise AssertionError("unreachable: the last attempt returns or raises")
