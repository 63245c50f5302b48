"""Tests for smagent.providers.limits: real tasks on the running loop, real (short) time."""

from __future__ import annotations

import asyncio
import bisect
import time

import pytest

from smagent.providers.limits import Limits


async def acquire_times(limits: Limits, count: int, budget: float = 5) -> list[float]:
    """Seconds from start at which each of `count` concurrent slot requests got its slot."""
    started = time.monotonic()
    times: list[float] = []

    async def one() -> None:
        async with limits.slot():
            times.append(time.monotonic() - started)

    async with asyncio.timeout(budget):
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


def busiest_window(times: list[float], width: float = 1.0) -> int:
    """The most timestamps in any half-open window [t, t + width) (it suffices to start at each)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )


async def test_rate_limit_allows_a_burst_then_waits_a_full_second() -> None:
    """At 20/s, 30 requests: the first 20 at once, the other 10 one second later, not sooner."""
    limits = Limits(rate_limit=20, max_concurrency=100)

    times = await acquire_times(limits, 30)

    assert 30 == len(times)
    assert times[19] < 0.2
    assert 0.99 <= times[20] < 1.5


async def test_no_sliding_second_holds_more_than_the_rate_limit_from_the_start() -> None:
    """Rate 20, 60 requests as fast as allowed: no 1 s window, including the first one, holds
    more than 20 starts (a leaky bucket that starts full allows ~39 in the first second)."""
    limits = Limits(rate_limit=20, max_concurrency=100)

    times = await acquire_times(limits, 60, budget=6)

    assert 60 == len(times)
    assert 20 == busiest_window(times)
    assert 20 == sum(1 for t in times if t < 1.0)


async def test_the_window_is_counted_from_the_end_of_slow_requests() -> None:
    """A token comes back a second after its request ENDS: with 300 ms requests, the requests
    that reuse a token start at ~1.3 s, so even at the server no second holds more than 5."""
    limits = Limits(rate_limit=5, max_concurrency=100)
    started = time.monotonic()
    spans: list[tuple[float, float]] = []

    async def request() -> None:
        async with limits.slot():
            begin = time.monotonic() - started
            await asyncio.sleep(0.3)
            spans.append((begin, time.monotonic() - started))

    async with asyncio.timeout(5):
        await asyncio.gather(*(request() for _ in range(10)))

    ends = sorted(end for _, end in spans)
    begins = sorted(begin for begin, _ in spans)
    assert begins[5] >= ends[0] + 0.99  # the second wave waits a second after the first's end
    assert 5 == busiest_window(begins)
    assert 5 == busiest_window(ends)


async def test_rate_and_concurrency_caps_hold_together() -> None:
    """Rate 20, max_concurrency 3, 30 requests of 20 ms: never more than 3 in flight, and no
    second holds more than 20 starts."""
    limits = Limits(rate_limit=20, max_concurrency=3)
    started = time.monotonic()
    begins: list[float] = []
    in_flight = peak = 0

    async def request() -> None:
        nonlocal in_flight, peak
        async with limits.slot():
            begins.append(time.monotonic() - started)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1

    async with asyncio.timeout(5):
        await asyncio.gather(*(request() for _ in range(30)))

    assert 3 == peak
    assert 20 >= busiest_window(begins)
    assert 30 == len(begins)


async def test_a_cancelled_request_gives_its_slot_back() -> None:
    """A request cancelled while it holds a slot (a deadline) frees its concurrency permit."""
    limits = Limits(rate_limit=None, max_concurrency=1)
    holding = asyncio.Event()

    async def hang() -> None:
        async with limits.slot():
            holding.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with asyncio.timeout(1), limits.slot():
        pass


async def test_fractional_rate_above_one_is_rounded_down() -> None:
    """A rate such as 2.5/s allows 2 requests in any second: 2 at once, the 3rd a second later."""
    limits = Limits(rate_limit=2.5, max_concurrency=10)

    times = await acquire_times(limits, 4)

    assert times[1] < 0.2
    assert 0.99 <= times[2] < 1.5
    assert 2 == busiest_window(times)


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


@pytest.mark.parametrize("rate_limit", [0, -1, float("nan")])
def test_rate_limit_at_or_below_zero_is_refused(rate_limit: float) -> None:
    """rate_limit <= 0 (or NaN) raises ValueError; None is the way to say unlimited."""
    with pytest.raises(ValueError, match="rate_limit must be above 0"):
        Limits(rate_limit=rate_limit, max_concurrency=1)


@pytest.mark.parametrize("max_concurrency", [0, -1])
def test_max_concurrency_below_one_is_refused(max_concurrency: int) -> None:
    """max_concurrency < 1 raises ValueError."""
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        Limits(rate_limit=20, max_concurrency=max_concurrency)


def test_repr_shows_the_numbers() -> None:
    """repr names the rate limit and the concurrency cap."""
    assert "Limits(rate_limit=7.5, max_concurrency=4)" == repr(Limits(7.5, 4))
    assert "Limits(rate_limit=None, max_concurrency=1)" == repr(Limits(None, 1))
