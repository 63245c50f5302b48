"""Tests for smagent.providers.limits: real tasks on the running loop, real (short) time."""

from __future__ import annotations

import asyncio
import time

import pytest

from smagent.providers.limits import Limits


async def acquire_times(limits: Limits, count: int) -> list[float]:
    """Seconds from start at which each of `count` concurrent slot requests got its slot."""
    started = time.monotonic()
    times: list[float] = []

    async def one() -> None:
        async with limits.slot():
            times.append(time.monotonic() - started)

    async with asyncio.timeout(5):
        await asyncio.gather(*(one() for _ in range(count)))
    return sorted(times)


async def test_concurrency_cap_is_never_exceeded() -> None:
    """With max_concurrency=3, ten 50 ms requests never have more than 3 in flight."""
    limits = Limits(rate_limit=None, max_concurrency=3)
    in_flight = peak = finished = 0

    async def request() -> None:
        nonlocal in_flight, peak, finished
        async with limits.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
        finished += 1

    async with asyncio.timeout(5):
        await asyncio.gather(*(request() for _ in range(10)))

    assert 3 == peak
    assert 10 == finished
    assert 0 == in_flight


async def test_slot_is_released_when_the_request_fails() -> None:
    """A request that raises gives its slot back."""
    limits = Limits(rate_limit=None, max_concurrency=1)

    with pytest.raises(RuntimeError, match="store said no"):
        async with limits.slot():
            raise RuntimeError("store said no")

    async with asyncio.timeout(1), limits.slot():
        pass


async def test_rate_limit_allows_a_burst_then_spaces_requests() -> None:
    """At 20/s, 30 requests: the first 20 at once, the other 10 spread over about 0.5 s."""
    limits = Limits(rate_limit=20, max_concurrency=100)

    times = await acquire_times(limits, 30)

    assert 30 == len(times)
    assert times[19] < 0.2
    assert 0.4 <= times[-1] < 1.5


async def test_fractional_rate_above_one_is_accepted() -> None:
    """A rate such as 2.5/s keeps its average: 2 at once, then one every 0.4 s (4th at ~0.6 s)."""
    limits = Limits(rate_limit=2.5, max_concurrency=10)

    times = await acquire_times(limits, 4)

    assert times[1] < 0.2
    assert 0.5 <= times[3] < 1.5


async def test_no_rate_limit_means_no_throttling() -> None:
    """rate_limit=None lets 500 requests through at once."""
    limits = Limits(rate_limit=None, max_concurrency=10)

    times = await acquire_times(limits, 500)

    assert 500 == len(times)
    assert times[-1] < 0.5


async def test_rate_below_one_per_second_spaces_requests_by_its_period() -> None:
    """At 0.5/s one request passes at once and the next waits (about 2 s, not checked fully)."""
    limits = Limits(rate_limit=0.5, max_concurrency=10)

    async with asyncio.timeout(0.5), limits.slot():
        pass
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), limits.slot():
            pass


@pytest.mark.parametrize("max_concurrency", [0, -1])
def test_max_concurrency_below_one_is_refused(max_concurrency: int) -> None:
    """max_concurrency < 1 raises ValueError."""
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        Limits(rate_limit=20, max_concurrency=max_concurrency)


def test_repr_shows_the_numbers() -> None:
    """repr names the rate limit and the concurrency cap."""
    assert "Limits(rate_limit=7.5, max_concurrency=4)" == repr(Limits(7.5, 4))
    assert "Limits(rate_limit=None, max_concurrency=1)" == repr(Limits(None, 1))
