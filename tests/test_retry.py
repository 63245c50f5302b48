"""Tests for smagent.providers.retry: brief retries within a deadline, state logged once.

The store is a small local script of answers (`Script`): each call of the
attempt takes the next one, an error to raise or a value to return, and the
time of every call is kept. No network; real (short) time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from smagent.config import FileProviderConfig
from smagent.providers.base import (
    AccessDenied,
    BadValue,
    BaseProvider,
    NotFound,
    ProviderBug,
    ProviderError,
    Throttled,
    Unavailable,
)
from smagent.providers.retry import DEADLINE, Health, retrying
from smagent.references import SecretRef
from tests.conftest import CANARY

REF = SecretRef("store", "prod/db")
FAST = {"base_delay": 0.01, "max_delay": 0.02}


class Script:
    """An attempt that raises or returns the scripted answers in turn, timing each call."""

    def __init__(self, answers: Sequence[ProviderError | BaseException | str]) -> None:
        self.answers = list(answers)
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(asyncio.get_running_loop().time())
        answer = self.answers[min(len(self.times), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def calls(self) -> int:
        return len(self.times)


def throttled(retry_after: float | None = None) -> Throttled:
    return Throttled(REF, "Rate exceeded", retry_after=retry_after)


def down() -> Unavailable:
    return Unavailable(REF, "connection refused")


async def test_transient_errors_are_retried_until_an_answer() -> None:
    """Throttled, then Unavailable, then an answer: the answer, after three calls."""
    script = Script([throttled(), down(), "value"])

    assert "value" == await retrying(script, what="GetSecretValue prod/db", **FAST)
    assert 3 == script.calls


@pytest.mark.parametrize("kind", [NotFound, AccessDenied, BadValue, ProviderBug])
async def test_a_permanent_error_is_raised_at_once(kind: type[ProviderError]) -> None:
    """Not found, access denied, bad value and a provider's bug: one call, the error as it was."""
    error = kind(REF, "the store's own words")
    script = Script([error, "value"])

    with pytest.raises(kind) as info:
        await retrying(script, what="GetSecretValue prod/db", **FAST)

    assert error is info.value
    assert 1 == script.calls


async def test_anything_else_goes_up_untouched() -> None:
    """An exception that is no ProviderError (a bug in the attempt) is not retried."""
    script = Script([KeyError("bug"), "value"])

    with pytest.raises(KeyError):
        await retrying(script, what="x", **FAST)
    assert 1 == script.calls


async def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    """Always unavailable: `attempts` calls, then the last error is raised."""
    errors = [down() for _ in range(3)]
    script = Script(errors)

    with pytest.raises(Unavailable) as info:
        await retrying(script, what="x", attempts=3, **FAST)

    assert errors[-1] is info.value
    assert 3 == script.calls


async def test_delays_grow_and_stay_under_the_cap() -> None:
    """Each wait is at most min(max_delay, base_delay * 2**n) (full jitter draws below it)."""
    script = Script([down()] * 5 + ["value"])

    await retrying(script, what="x", attempts=6, base_delay=0.02, max_delay=0.05)

    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    caps = [min(0.05, 0.02 * 2**n) for n in range(5)]
    slack = 0.05  # a loaded 2-core host wakes late, never early
    assert all(gap <= cap + slack for gap, cap in zip(gaps, caps, strict=True)), gaps


async def test_retry_after_is_the_least_wait() -> None:
    """Throttled with Retry-After 0.3 s: the next call comes no sooner than 0.3 s later."""
    script = Script([throttled(retry_after=0.3), "value"])

    assert "value" == await retrying(script, what="x", **FAST)
    assert 0.3 <= script.times[1] - script.times[0]


async def test_a_retry_after_longer_than_max_wait_gives_up_at_once() -> None:
    """A store asking for a minute's pause: no wait inside the pass, the Throttled (with its
    retry_after, for the agent's schedule) is raised after one call."""
    script = Script([throttled(retry_after=60), "value"])

    with pytest.raises(Throttled) as info:
        await retrying(script, what="x", max_wait=10, **FAST)

    assert 60 == info.value.retry_after
    assert 1 == script.calls


async def test_never_sleeps_past_the_deadline() -> None:
    """A Retry-After that ends past the deadline: raised at once, well before it."""
    loop = asyncio.get_running_loop()
    script = Script([throttled(retry_after=0.5), "value"])
    started = loop.time()

    with pytest.raises(Throttled):
        await retrying(script, what="x", deadline=started + 0.2, **FAST)

    assert 1 == script.calls
    assert loop.time() < started + 0.2


async def test_retries_end_before_the_deadline_whatever_the_jitter() -> None:
    """Always unavailable, many attempts allowed: the store's error is raised by the deadline
    (so the pass reports the store's words, not a bare timeout)."""
    loop = asyncio.get_running_loop()
    script = Script([down()])
    started = loop.time()

    with pytest.raises(Unavailable):
        await retrying(
            script, what="x", attempts=1000, base_delay=0.05, max_delay=0.05, deadline=started + 0.5
        )

    late = 0.1  # a loaded host may wake a sleep late; the retry loop itself never overshoots
    assert loop.time() < started + 0.5 + late
    assert 2 <= script.calls


async def test_the_deadline_comes_from_the_context_when_not_given() -> None:
    """With DEADLINE set (as the resolver does around a fetch), a longer Retry-After gives up."""
    script = Script([throttled(retry_after=0.5), "value"])
    token = DEADLINE.set(asyncio.get_running_loop().time() + 0.2)
    try:
        with pytest.raises(Throttled):
            await retrying(script, what="x", **FAST)
    finally:
        DEADLINE.reset(token)
    assert 1 == script.calls


async def test_a_state_change_is_logged_once_however_many_requests_see_it() -> None:
    """Ten concurrent requests throttled twice each, then answered: one provider.throttled and
    one provider.recovered line, none per retry at info level, and no value in any."""
    health = Health("aws-prod")
    scripts = [Script([throttled(), throttled(), CANARY]) for _ in range(10)]

    with capture_logs() as logs:
        answers = await asyncio.gather(
            *(
                retrying(s, what=f"GetSecretValue s{i}", health=health, **FAST)
                for i, s in enumerate(scripts)
            )
        )

    assert [CANARY] * 10 == answers
    shown = [entry for entry in logs if entry["log_level"] != "debug"]
    assert ["provider.throttled", "provider.recovered"] == [e["event"] for e in shown]
    assert "aws-prod" == shown[0]["provider"]
    assert "Rate exceeded" == shown[0]["detail"]
    assert CANARY not in repr(logs)


async def test_a_new_kind_of_failure_is_a_new_state() -> None:
    """Throttled then unavailable then answered: three lines, one per state change."""
    health = Health("kv")

    with capture_logs() as logs:
        await retrying(Script([throttled(), down(), "v"]), what="x", health=health, **FAST)

    events = [e["event"] for e in logs if e["log_level"] != "debug"]
    assert ["provider.throttled", "provider.unavailable", "provider.recovered"] == events


async def test_a_permanent_answer_after_throttling_is_a_recovery() -> None:
    """Throttled, then the store answers "not found": it is up again (recovered, state ok);
    a crash of ours after throttling says nothing of the store (still throttled)."""
    health = Health("aws-prod")

    with capture_logs() as logs, pytest.raises(NotFound):
        await retrying(
            Script([throttled(), NotFound(REF, "gone")]), what="x", health=health, **FAST
        )

    assert ["provider.throttled", "provider.recovered"] == [
        e["event"] for e in logs if e["log_level"] != "debug"
    ]
    assert "ok" == health.state
    with pytest.raises(ProviderBug):
        await retrying(
            Script([throttled(), ProviderBug(REF, "x")]), what="x", health=health, **FAST
        )
    assert "throttled" == health.state


def test_attempts_below_one_are_refused() -> None:
    """attempts=0 is a programming error, said at once."""
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        asyncio.run(retrying(Script(["v"]), what="x", attempts=0))


class OneSlotStore(BaseProvider):
    """A provider with one request slot, to see what `BaseProvider.request` holds while waiting."""

    def __init__(self) -> None:
        super().__init__(
            "store", FileProviderConfig(path="unused", rate_limit=None, max_concurrency=1)
        )


async def test_request_holds_no_slot_while_it_waits_to_retry() -> None:
    """A request waiting out a Retry-After frees its slot: another request is served meanwhile."""
    store = OneSlotStore()
    order: list[str] = []

    async def flaky() -> str:
        order.append("flaky")
        if order.count("flaky") == 1:
            raise Throttled(REF, "429", retry_after=0.1)
        return "late"

    async def quick() -> str:
        order.append("quick")
        return "early"

    async def second() -> Any:
        await asyncio.sleep(0.01)
        return await store.request(quick, what="quick")

    answers = await asyncio.gather(
        store.request(flaky, what="flaky"),
        second(),
    )

    assert ["late", "early"] == answers
    assert ["flaky", "quick", "flaky"] == order
