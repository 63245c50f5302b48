"""The rate limit and concurrency cap that one provider instance shares.

Every template and reference that uses a provider goes through the same
`Limits`, so the store sees at most `rate_limit` requests a second and
`max_concurrency` in flight, however many templates ask at once. That is what
keeps a host with hundreds of references under AWS/Azure/Vault quotas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter


class Limits:
    def __init__(self, rate_limit: float | None, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be above 0 (or None for no limit)")
        self.rate_limit = rate_limit
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._limiter: AsyncLimiter | None = None
        if rate_limit is not None:
            # aiolimiter needs a whole-request budget; below 1/s, stretch the period instead.
            if rate_limit >= 1:
                self._limiter = AsyncLimiter(rate_limit, 1.0)
            else:
                self._limiter = AsyncLimiter(1, 1.0 / rate_limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request slot: a concurrency permit, then a rate-limit token."""
        async with self._semaphore:
            if self._limiter is not None:
                await self._limiter.acquire()
            yield

    def __repr__(self) -> str:
        return f"Limits(rate_limit={self.rate_limit}, max_concurrency={self.max_concurrency})"
