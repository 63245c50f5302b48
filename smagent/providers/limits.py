"""The rate limit and concurrency cap that one provider instance shares.

Every template and reference that uses a provider goes through the same
`Limits`, so the store sees at most `max_concurrency` requests in flight and
at most `rate_limit` requests in ANY sliding one-second window, however many
templates ask at once. That is a promise to the store (AWS, Azure and Vault
quotas are counted per second at the server), so it must hold at the start
too, and however long each request takes.

A leaky bucket such as aiolimiter's does not keep it: it starts with a full
burst of `rate_limit` and then drains at `rate_limit` a second, so the first
second admits about twice the limit (measured: 39 of 40 requests at 20/s).
Here each of `rate_limit` tokens is taken when a request starts and comes
back one second after that request ENDS. A request is at the server only
between its start and its end, so any two requests that used the same token
reach the server more than a second apart, whatever the latency: no window
of one second, measured anywhere, holds more than `rate_limit` of them.

A whole number of requests fits a window: a fractional rate above one is
rounded down (2.5 allows 2 a second), and a rate below one allows one
request per `1 / rate_limit` seconds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Limits:
    def __init__(self, rate_limit: float | None, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError("rate_limit must be above 0 (or None for no limit)")
        self.rate_limit = rate_limit
        self.max_concurrency = max_concurrency
        self._in_flight = asyncio.Semaphore(max_concurrency)
        self._tokens: asyncio.Semaphore | None = None
        self._period = 1.0
        if rate_limit is not None:
            if rate_limit >= 1:
                self._tokens = asyncio.Semaphore(math.floor(rate_limit))
            else:
                self._tokens = asyncio.Semaphore(1)
                self._period = 1.0 / rate_limit

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request slot: a concurrency permit, then a rate token (back a period later)."""
        async with self._in_flight:
            tokens = self._tokens
            if tokens is None:
                yield
                return
            await tokens.acquire()
            try:
                yield
            finally:
                asyncio.get_running_loop().call_later(self._period, tokens.release)

    def __repr__(self) -> str:
        return f"Limits(rate_limit={self.rate_limit}, max_concurrency={self.max_concurrency})"
