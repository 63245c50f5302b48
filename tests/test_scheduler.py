"""Tests for smagent.scheduler: when each secret is looked at again.

Entries are built as the cache leaves them (a value, a failure count, the
last error); delays are read from `plan`'s answer and from `take_due` on the
real monotonic clock, over many draws where jitter is involved.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from smagent import scheduler
from smagent.cache import Entry
from smagent.providers.base import (
    AccessDenied,
    Lease,
    ProviderError,
    SecretValue,
    Throttled,
    Unavailable,
)
from smagent.references import SecretRef
from smagent.scheduler import Scheduler

DB = SecretRef("mem", "db")
API = SecretRef("mem", "api")
DRAWS = 200


def good(ref: SecretRef = DB, check_after: float | None = None) -> Entry:
    return Entry(ref, value=SecretValue("pw-sched-1234", check_after=check_after))


def failing(error: ProviderError, failures: int, ref: SecretRef = DB) -> Entry:
    return Entry(
        ref,
        value=SecretValue("pw-sched-1234"),
        error=error,
        failures=failures,
        failing_since=time.time(),
    )


def every(seconds: float) -> Scheduler:
    return Scheduler(lambda ref: seconds)


def test_first_looks_are_jittered_per_host_later_looks_keep_the_refresh() -> None:
    """A secret's first look comes up to 10 % early by the host's own draw (hosts started
    together spread), the same for all its secrets; later looks keep the exact refresh."""
    firsts = [every(300).plan(DB, good()) for _ in range(DRAWS)]
    assert all(270 <= d <= 300 for d in firsts), (min(firsts), max(firsts))
    assert max(firsts) - min(firsts) > 15
    host = every(300)
    first = host.plan(DB, good())
    assert first == pytest.approx(host.plan(API, good(API)), abs=0.01)
    later = []
    for _ in range(5):
        host.now([DB, API])
        assert {DB, API} == set(host.take_due())
        later += [host.plan(DB, good()), host.plan(API, good(API))]
    assert [300.0] * 10 == later


def test_a_hosts_secrets_stay_in_one_batch_cycle_after_cycle() -> None:
    """500 secrets checked together are due together again, every cycle (one batched check,
    not a scatter of per-secret jitter that grows until each check is a call of its own)."""
    plan = every(30)
    refs = [SecretRef("aws", f"app/{i}") for i in range(500)]
    for ref in refs:
        plan.plan(ref, good(ref))
    for _ in range(5):
        plan.now(refs)  # due (as they will be together, asserted below): taken as one
        assert set(refs) == set(plan.take_due())
        for ref in refs:
            plan.plan(ref, good(ref))
        due = [plan._due[ref] for ref in refs]
        assert max(due) - min(due) < scheduler.GROUP_WINDOW / 10


def test_a_secret_planned_apart_joins_its_providers_next_batch() -> None:
    """A secret new after a reload (or back after a failure) is looked at with the next
    batch of its provider at the same refresh, not on a clock of its own; another provider's
    or another refresh's batch is not joined, nor a failing secret's retry."""
    plan = Scheduler(lambda ref: 60.0 if ref.secret_id == "slow" else 30.0)
    batch = [SecretRef("aws", f"app/{i}") for i in range(3)]
    batch_due = time.monotonic() + 10  # the provider's next batch, planned 20 s ago
    for ref in batch:
        plan.at(ref, batch_due, joinable=True)
    new = SecretRef("aws", "new")
    plan.plan(new, good(new))
    assert batch_due == pytest.approx(plan._due[new], abs=0.001)
    back = SecretRef("aws", "back")
    plan.plan(back, failing(Unavailable(back, "down"), 1, back))
    plan.plan(back, good(back))
    assert batch_due == pytest.approx(plan._due[back], abs=0.001)
    other = SecretRef("vault", "app")
    slow = SecretRef("aws", "slow")
    for ref in (other, slow):
        plan.plan(ref, good(ref))
        assert batch_due < plan._due[ref] - 1
    retrying = SecretRef("aws", "retrying")
    plan.forget([*batch, new, back])
    plan.plan(retrying, failing(Unavailable(retrying, "down"), 1, retrying))  # due within 1 s
    late = SecretRef("aws", "late")
    plan.plan(late, good(late))
    assert plan._due[late] > plan._due[retrying] + 20


def test_each_secret_has_its_own_refresh() -> None:
    """The interval is asked per secret (its namespace's refresh, else the default)."""
    plan = Scheduler(lambda ref: 30.0 if ref == DB else 600.0)
    assert 27 <= plan.plan(DB, good()) <= 30
    assert 540 <= plan.plan(API, good(API)) <= 600


def test_check_after_brings_the_next_look_forward() -> None:
    """A store's date earlier than the refresh (a lease's 2/3 TTL) is when it is looked at;
    a later one does not push the look past the refresh."""
    plan = every(300)
    soon = plan.plan(DB, good(check_after=time.time() + 40))
    assert 39 <= soon <= 40
    late = plan.plan(DB, good(check_after=time.time() + 4000))
    assert 270 <= late <= 300


def test_a_lease_keeps_its_own_clock_whatever_the_refresh() -> None:
    """A secret with a lease is looked at (renewed: a write at the store) at its 2/3-TTL date
    only: a refresh shorter than that does not renew it more often, a longer one does not
    let it expire."""
    lease = Lease("database/creds/app/abc", 3600.0, True, obtained_at=time.time())
    leased = Entry(
        DB, value=SecretValue("pw-sched-1234", lease=lease, check_after=time.time() + 2400)
    )
    assert 2399 <= every(1).plan(DB, leased) <= 2400
    assert 2399 <= every(86400).plan(DB, leased) <= 2400


def test_a_short_lease_is_not_renewed_early_by_the_group_window() -> None:
    """A lease renewal due soon (a short TTL) is not taken at once by the 2 s group window (a
    renewal storm: each renewal planned the next one inside the window); at most a tenth of
    its wait early, with its neighbours."""
    plan = every(300)
    lease = Lease("database/creds/app/abc", 0.45, True, obtained_at=time.time())
    due = time.time() + 0.3
    leased = Entry(DB, value=SecretValue("pw-sched-1234", lease=lease, check_after=due))
    assert 0.25 <= plan.plan(DB, leased) <= 0.3
    plan.at(API, time.monotonic())
    assert [API] == plan.take_due()
    time.sleep(max(0.0, due - time.time() - 0.03))
    assert [DB] == plan.take_due()


def test_transient_failures_back_off_exponentially_capped() -> None:
    """Transient failures are retried sooner than the refresh, doubling from 1 s (with jitter
    down to half) up to MAX_BACKOFF, never waiting longer than the refresh."""
    plan = every(3600)
    down = Unavailable(DB, "connection refused")
    for failures, (low, high) in {1: (0.5, 1), 2: (1, 2), 4: (4, 8), 7: (30, 60)}.items():
        delays = [plan.plan(DB, failing(down, failures)) for _ in range(DRAWS)]
        assert all(low <= d <= high for d in delays), (failures, min(delays), max(delays))
    capped = [plan.plan(DB, failing(down, 500)) for _ in range(DRAWS)]
    assert all(scheduler.MAX_BACKOFF / 2 <= d <= scheduler.MAX_BACKOFF for d in capped)
    short = every(10)
    assert all(5 <= short.plan(DB, failing(down, 20)) <= 10 for _ in range(DRAWS))


def test_a_permanent_failure_is_looked_at_on_the_usual_pace() -> None:
    """A secret denied or deleted waits for someone to fix it: no fast retries."""
    plan = every(300)
    denied = AccessDenied(DB, "not allowed")
    assert all(270 <= plan.plan(DB, failing(denied, 5)) <= 300 for _ in range(DRAWS))


def test_a_throttled_stores_retry_after_is_honoured() -> None:
    """A throttling store's Retry-After is a floor: never sooner, even on the first failure,
    and honoured when it is longer than the backoff cap."""
    plan = every(3600)
    for retry_after in (7.0, 45.0, 120.0):
        throttled = Throttled(DB, "rate exceeded", retry_after=retry_after)
        delays = [plan.plan(DB, failing(throttled, 1)) for _ in range(DRAWS)]
        assert all(retry_after <= d <= max(retry_after, 1.0) for d in delays), retry_after
    no_date = Throttled(DB, "rate exceeded")
    assert all(0.5 <= plan.plan(DB, failing(no_date, 1)) <= 1 for _ in range(DRAWS))


def test_plan_sets_the_due_time_on_the_monotonic_clock() -> None:
    """`plan` schedules the ref at now + its delay (monotonic: a wall-clock jump is harmless)."""
    plan = every(300)
    before = time.monotonic()
    delay = plan.plan(DB, good())
    due = plan.next_due()
    assert due is not None
    assert before + delay <= due <= time.monotonic() + delay
    assert DB in plan
    assert 1 == len(plan)


def test_take_due_takes_the_neighbours_in_the_group_window() -> None:
    """Secrets due within GROUP_WINDOW of now are taken together (one batched check), later
    ones are not; the window is at most a tenth of a secret's own refresh."""
    plan = Scheduler(lambda ref: 1.0 if ref.secret_id == "fast" else 300.0)
    now = time.monotonic()
    plan.at(DB, now)
    plan.at(API, now + scheduler.GROUP_WINDOW / 2)
    later = SecretRef("mem", "later")
    plan.at(later, now + scheduler.GROUP_WINDOW + 5)
    fast = SecretRef("mem", "fast")
    plan.at(fast, now + 0.5)  # its window is 0.1 s: not a neighbour yet
    assert {DB, API} == set(plan.take_due())
    assert {later, fast} == {ref for ref in (later, fast) if ref in plan}
    assert [] == plan.take_due()
    assert 2 == len(plan)


def test_now_brings_refs_forward_and_forget_drops_them() -> None:
    """`now` makes refs due at once (a provider's file changed); `forget` drops them."""
    plan = every(300)
    plan.plan(DB, good())
    plan.plan(API, good(API))
    assert [] == plan.take_due()
    plan.now([API])
    assert [API] == plan.take_due()
    plan.forget([DB, SecretRef("mem", "never")])
    assert 0 == len(plan)
    assert plan.next_due() is None


async def test_wait_returns_when_the_earliest_is_due() -> None:
    """`wait` sleeps until the earliest due time, not longer, not much shorter."""
    plan = every(300)
    plan.at(DB, time.monotonic() + 0.15)
    started = time.monotonic()
    await asyncio.wait_for(plan.wait(), 5)
    assert 0.14 <= time.monotonic() - started < 1.0
    assert [DB] == plan.take_due()


async def test_wait_wakes_when_a_look_is_brought_forward() -> None:
    """A look scheduled earlier than the one slept for wakes the waiter at once."""
    plan = every(300)
    plan.at(DB, time.monotonic() + 60)
    waiter = asyncio.create_task(plan.wait())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    plan.now([API])
    await asyncio.wait_for(waiter, 2)
    assert [API] == plan.take_due()


async def test_wait_with_nothing_scheduled_waits_for_a_first_plan() -> None:
    """An empty schedule sleeps (no busy loop) until something is planned."""
    plan = every(300)
    waiter = asyncio.create_task(plan.wait())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    plan.at(DB, time.monotonic() + 0.05)
    await asyncio.wait_for(waiter, 2)


async def test_wait_returns_at_once_when_something_is_overdue() -> None:
    """An overdue look does not sleep at all."""
    plan = every(300)
    plan.at(DB, time.monotonic() - 5)
    await asyncio.wait_for(plan.wait(), 0.5)


@pytest.mark.parametrize("failures", [1, 3, 40])
def test_backoff_is_never_longer_than_the_refresh(failures: int) -> None:
    """However many failures, a transient one is retried within its refresh interval."""
    plan = every(2)
    down = Unavailable(DB, "down")
    assert all(plan.plan(DB, failing(down, failures)) <= 2 for _ in range(DRAWS))
