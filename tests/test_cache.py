"""Tests for smagent.cache: the agent's memory of every secret, across passes, for months.

The store is `MemoryProvider` (tests/fakes/memory.py): it stands in for a
store and counts what it is asked; the cache, the fetcher and the redactor
are the real ones. Values here are made up for the test, not canaries: the
point is where they are (or are no longer) known, which the redactor says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec
import structlog

from smagent.cache import SecretCache
from smagent.logging import REDACTED, Redactor
from smagent.providers.base import (
    AccessDenied,
    Provider,
    RefreshResult,
    SecretValue,
    Throttled,
    Unavailable,
    Unchanged,
)
from smagent.references import SecretRef
from tests.fakes.memory import MemoryProvider

DB = SecretRef("mem", "db")
API = SecretRef("mem", "api")
TIMEOUT = 5.0


def make(*providers: MemoryProvider, timeout: float = TIMEOUT) -> tuple[SecretCache, Redactor]:
    redactor = Redactor()
    named: Mapping[str, Provider] = {p.name: p for p in providers}
    return SecretCache.create(named, timeout, redactor), redactor


def deadline(seconds: float = TIMEOUT) -> float:
    return asyncio.get_running_loop().time() + seconds


def known(redactor: Redactor, value: str) -> bool:
    """Whether the redactor still masks `value`."""
    return f"x {REDACTED} x" == redactor.scrub(f"x {value} x")


def value_of(cache: SecretCache, ref: SecretRef) -> str | bytes:
    entry = cache.entries[ref]
    assert entry.value is not None
    return entry.value.reveal()


async def test_two_concurrent_asks_for_an_unknown_secret_make_one_call() -> None:
    """Two passes asking at once for a secret nobody has yet make one provider call; both
    get the value."""
    store = MemoryProvider("mem", {"db": "pw-one-1111"}, delay=0.05)
    cache, _ = make(store)
    first, second = await asyncio.gather(
        cache.get("mem", [DB], deadline()), cache.get("mem", [DB, API], deadline())
    )
    assert [["db"], ["api"]] == sorted(store.calls, reverse=True)
    assert 1 == store.requested.count("db")
    assert isinstance(first[DB], SecretValue)
    assert first[DB] is second[DB]


async def test_a_known_secret_is_answered_from_memory() -> None:
    """Once fetched, later passes are answered from the cache: no call to the store."""
    store = MemoryProvider("mem", {"db": "pw-one-1111"})
    cache, _ = make(store)
    await cache.get("mem", [DB], deadline())
    again = await cache.get("mem", [DB], deadline())
    assert 1 == len(store.calls)
    assert "pw-one-1111" == again[DB].reveal()  # type: ignore[union-attr]


async def test_a_pass_resolver_is_a_frozen_view_of_the_cache() -> None:
    """A pass's resolver answers from the cache and keeps its answer for the whole pass, even
    when a refresh changes the value meanwhile; the next pass sees the new value."""
    store = MemoryProvider("mem", {"db": "pw-one-1111"})
    cache, _ = make(store)
    resolver = cache.resolver()
    before = await resolver.resolve([DB])
    store.values["db"] = "pw-two-2222"
    look = await cache.refresh([DB])
    assert {DB} == look.changed
    during = await resolver.resolve([DB])
    assert "pw-one-1111" == before[DB].reveal() == during[DB].reveal()  # type: ignore[union-attr]
    after = await cache.resolver().resolve([DB])
    assert "pw-two-2222" == after[DB].reveal()  # type: ignore[union-attr]
    assert 2 == len(store.calls)


async def test_a_waiter_whose_leader_is_cancelled_still_gets_the_value() -> None:
    """Cancelling the pass that leads a fetch (a reload, SIGTERM of that pass) does not fail
    another pass waiting for the same secret: it fetches the secret itself."""
    store = MemoryProvider("mem", {"db": "pw-one-1111"}, delay=0.2)
    cache, _ = make(store)
    leader = asyncio.create_task(cache.get("mem", [DB], deadline()))
    await asyncio.sleep(0.05)  # the leader's call is in flight
    follower = asyncio.create_task(cache.get("mem", [DB], deadline()))
    await asyncio.sleep(0.05)
    leader.cancel()
    found = await follower
    assert isinstance(found[DB], SecretValue), found[DB]
    assert "pw-one-1111" == value_of(cache, DB)


async def test_a_failed_check_keeps_the_last_good_value() -> None:
    """A store that goes down keeps the value templates render with; the entry records the
    error, since when, and how many looks failed; recovery clears it without a change."""
    store = MemoryProvider("mem", {"db": "pw-one-1111"})
    cache, _ = make(store)
    await cache.get("mem", [DB], deadline())
    store.errors["db"] = Unavailable(DB, "connection refused")
    for _ in range(3):
        look = await cache.refresh([DB])
        assert frozenset() == look.changed
        assert {DB} == look.looked
    entry = cache.entries[DB]
    assert "pw-one-1111" == value_of(cache, DB)
    assert entry.result is entry.value
    assert isinstance(entry.error, Unavailable)
    assert 3 == entry.failures
    assert entry.failing_since is not None
    passed = await cache.resolver().resolve([DB])
    assert "pw-one-1111" == passed[DB].reveal()  # type: ignore[union-attr]
    del store.errors["db"]
    look = await cache.refresh([DB])
    assert frozenset() == look.changed
    assert 0 == cache.entries[DB].failures
    assert cache.entries[DB].error is None
    assert cache.entries[DB].failing_since is None
    assert 0 == entry.generation


async def test_a_permanent_check_failure_is_logged_once_and_its_recovery_once() -> None:
    """A secret deleted or denied after it was fetched is told once (`secret.check_failed`),
    not at every look, and its return once (`secret.recovered`); a transient one is the
    provider's news, not the secret's."""
    store = MemoryProvider("mem", {"db": "pw-one-1111"})
    cache, _ = make(store)
    await cache.get("mem", [DB], deadline())
    with structlog.testing.capture_logs() as events:
        store.errors["db"] = AccessDenied(DB, "not allowed")
        for _ in range(3):
            await cache.refresh([DB])
        del store.errors["db"]
        await cache.refresh([DB])
        store.errors["db"] = Unavailable(DB, "down")
        await cache.refresh([DB])
        del store.errors["db"]
        await cache.refresh([DB])
    names = [e["event"] for e in events if e["event"].startswith("secret.")]
    assert ["secret.check_failed", "secret.recovered"] == names
    assert "pw-one-1111" not in repr(events)


async def test_a_secret_that_never_had_a_value_is_fetched_again_until_it_comes() -> None:
    """A secret missing at the first ask is fetched (not checked) at each refresh; when it
    appears the refresh reports it changed, so its templates are rendered again."""
    store = MemoryProvider("mem", {})
    cache, _ = make(store)
    first = await cache.get("mem", [DB], deadline())
    assert not isinstance(first[DB], SecretValue)
    assert 1 == cache.entries[DB].failures
    assert frozenset() == (await cache.refresh([DB])).changed
    assert 2 == cache.entries[DB].failures
    store.values["db"] = "pw-late-3333"
    look = await cache.refresh([DB])
    assert {DB} == look.changed
    assert "pw-late-3333" == value_of(cache, DB)
    assert 1 == cache.entries[DB].generation
    assert [["db"], ["db"], ["db"]] == store.calls


async def test_rotation_bumps_generation_and_retires_the_value_two_generations_old() -> None:
    """Each rotation bumps the generation; the value just rotated out stays masked (a reloading
    service may still print it), the one before it is retired from the redactor."""
    store = MemoryProvider("mem", {"db": "pw-gen-0000"})
    cache, redactor = make(store)
    await cache.get("mem", [DB], deadline())
    with structlog.testing.capture_logs() as events:
        for generation in range(1, 4):
            store.values["db"] = f"pw-gen-{generation}{generation}{generation}{generation}"
            assert {DB} == (await cache.refresh([DB])).changed
            assert generation == cache.entries[DB].generation
    assert known(redactor, "pw-gen-3333")  # current
    assert known(redactor, "pw-gen-2222")  # rotated out last: kept one generation
    assert not known(redactor, "pw-gen-1111")
    assert not known(redactor, "pw-gen-0000")
    assert 2 == len(redactor)
    rotated = [e for e in events if e["event"] == "secret.rotated"]
    assert [1, 2, 3] == [e["generation"] for e in rotated]
    assert "pw-gen" not in repr(events)


async def test_an_unchanged_value_costs_no_generation_and_no_registration() -> None:
    """Checks that find the same value change nothing: no generation, and the redactor's count
    for the value does not grow (so a single retire at rotation forgets it)."""
    store = MemoryProvider("mem", {"db": "pw-same-4444"})
    cache, redactor = make(store)
    await cache.get("mem", [DB], deadline())
    for _ in range(5):
        assert frozenset() == (await cache.refresh([DB])).changed
    assert 0 == cache.entries[DB].generation
    store.values["db"] = "pw-next-5555"
    await cache.refresh([DB])
    store.values["db"] = "pw-last-6666"
    await cache.refresh([DB])
    assert not known(redactor, "pw-same-4444")


async def test_a_value_that_comes_back_stays_known_while_held() -> None:
    """A rotation back to an earlier value (A -> B -> A) keeps A masked: the redactor counts
    who holds a value, so retiring the old A does not forget the current one."""
    store = MemoryProvider("mem", {"db": "pw-aaaa-7777"})
    cache, redactor = make(store)
    await cache.get("mem", [DB], deadline())
    for value in ("pw-bbbb-8888", "pw-aaaa-7777", "pw-cccc-9999"):
        store.values["db"] = value
        assert {DB} == (await cache.refresh([DB])).changed
    assert known(redactor, "pw-cccc-9999")
    assert known(redactor, "pw-aaaa-7777")  # rotated out last
    assert not known(redactor, "pw-bbbb-8888")


async def test_two_secrets_holding_one_value_keep_it_known_until_both_let_go() -> None:
    """Two secrets with the same password: one rotating away does not unmask the other's."""
    store = MemoryProvider("mem", {"db": "pw-shared-1212", "api": "pw-shared-1212"})
    cache, redactor = make(store)
    await cache.get("mem", [DB, API], deadline())
    for value in ("pw-db-next-3434", "pw-db-last-5656"):
        store.values["db"] = value
        await cache.refresh([DB])
    assert known(redactor, "pw-shared-1212")
    cache.retain([DB])
    assert not known(redactor, "pw-shared-1212")


async def test_retain_forgets_and_retires_what_no_template_uses() -> None:
    """`retain` drops the entries not named and retires their values, current and previous."""
    store = MemoryProvider("mem", {"db": "pw-db-1010", "api": "pw-api-2020"})
    cache, redactor = make(store)
    await cache.get("mem", [DB, API], deadline())
    store.values["api"] = "pw-api-3030"
    await cache.refresh([API])
    dropped = cache.retain([DB])
    assert {API} == dropped
    assert {DB} == set(cache.entries)
    assert known(redactor, "pw-db-1010")
    assert not known(redactor, "pw-api-2020")
    assert not known(redactor, "pw-api-3030")
    assert 1 == len(redactor)


async def test_drop_provider_forgets_its_secrets_values_and_stats() -> None:
    """`drop_provider` forgets only that provider's secrets, retires their values and drops its
    counters; the next ask fetches again."""
    mem = MemoryProvider("mem", {"db": "pw-db-4040"})
    other = MemoryProvider("other", {"db": "pw-other-5050"})
    cache, redactor = make(mem, other)
    theirs = SecretRef("other", "db")
    await cache.get("mem", [DB], deadline())
    await cache.get("other", [theirs], deadline())
    assert {DB} == cache.drop_provider("mem")
    assert {theirs} == set(cache.entries)
    assert {"other"} == set(cache.stats)
    assert not known(redactor, "pw-db-4040")
    assert known(redactor, "pw-other-5050")
    await cache.get("mem", [DB], deadline())
    assert 2 == len(mem.calls)


async def test_an_answer_from_a_dropped_provider_is_not_kept() -> None:
    """A fetch in flight when its provider is dropped (its config changed at a reload) does not
    put the old provider's value back into the cache, and its value is retired."""
    store = MemoryProvider("mem", {"db": "pw-stale-6060"}, delay=0.2)
    cache, redactor = make(store)
    asking = asyncio.create_task(cache.get("mem", [DB], deadline()))
    await asyncio.sleep(0.05)
    cache.drop_provider("mem")
    await asking  # the pass that asked still gets its answer
    assert {} == cache.entries
    assert not known(redactor, "pw-stale-6060")


async def test_a_check_in_flight_when_its_provider_is_replaced_is_not_applied() -> None:
    """A refresh in flight when its provider is replaced (reload: dropped, then the secret
    fetched from the new instance) does not overwrite the new value with the old answer."""
    old = MemoryProvider("mem", {"db": "pw-old-7070"})
    providers: dict[str, Provider] = {"mem": old}
    redactor = Redactor()
    cache = SecretCache.create(providers, TIMEOUT, redactor)
    await cache.get("mem", [DB], deadline())
    old.values["db"] = "pw-old-rotated-8080"
    old.delay = 0.2
    checking = asyncio.create_task(cache.refresh([DB]))
    await asyncio.sleep(0.05)
    cache.drop_provider("mem")
    providers["mem"] = MemoryProvider("mem", {"db": "pw-new-9090"})
    await cache.get("mem", [DB], deadline())
    look = await checking
    assert frozenset() == look.changed
    assert "pw-new-9090" == value_of(cache, DB)
    assert 0 == cache.entries[DB].generation
    assert not known(redactor, "pw-old-rotated-8080")
    assert not known(redactor, "pw-old-7070")


async def test_an_ask_after_a_provider_is_replaced_does_not_join_the_old_fetch() -> None:
    """A pass after a reload asking for a secret the old provider is still fetching gets the
    new provider's answer, not the old one's."""
    old = MemoryProvider("mem", {"db": "pw-old-1717"}, delay=0.2)
    providers: dict[str, Provider] = {"mem": old}
    cache = SecretCache.create(providers, TIMEOUT, Redactor())
    asking = asyncio.create_task(cache.get("mem", [DB], deadline()))
    await asyncio.sleep(0.05)
    cache.drop_provider("mem")
    providers["mem"] = new = MemoryProvider("mem", {"db": "pw-new-1818"})
    found = await cache.get("mem", [DB], deadline())
    await asking
    assert "pw-new-1818" == found[DB].reveal()  # type: ignore[union-attr]
    assert "pw-new-1818" == value_of(cache, DB)
    assert 1 == len(new.calls)


async def test_stats_count_requests_errors_and_throttles_per_provider() -> None:
    """Counters per provider: every secret asked or checked is a fetch; errors and throttles
    are counted with the last error's kind (never a value)."""
    store = MemoryProvider("mem", {"db": "pw-db-1313", "api": "pw-api-1414"})
    cache, _ = make(store)
    await cache.get("mem", [DB, API], deadline())
    store.errors["db"] = Throttled(DB, "rate exceeded", retry_after=3)
    store.errors["api"] = Unavailable(API, "connection reset")
    await cache.refresh([DB, API])
    del store.errors["api"]
    await cache.refresh([DB, API])
    stats = cache.stats["mem"]
    assert (6, 3, 2) == (stats.fetches, stats.errors, stats.throttles)
    assert "throttled: rate exceeded" == stats.last_error


async def test_refresh_makes_one_batched_call_per_provider() -> None:
    """A refresh of many secrets of two providers makes one call to each, concurrently."""
    mem = MemoryProvider("mem", {f"s{i}": f"pw-{i:04}-abcd" for i in range(10)}, delay=0.05)
    other = MemoryProvider("other", {"x": "pw-x-1515"}, delay=0.05)
    cache, _ = make(mem, other)
    refs = [SecretRef("mem", f"s{i}") for i in range(10)]
    await cache.get("mem", refs, deadline())
    await cache.get("other", [SecretRef("other", "x")], deadline())
    loop = asyncio.get_running_loop()
    started = loop.time()
    look = await cache.refresh([*refs, SecretRef("other", "x"), SecretRef("mem", "unknown")])
    assert loop.time() - started < 0.09  # both calls at once, not one after the other
    assert 2 == len(mem.calls)
    assert 2 == len(other.calls)
    assert 11 == len(look.looked)


async def test_a_store_that_does_not_answer_in_time_fails_the_look_not_the_cache() -> None:
    """A check that outlives fetch_timeout is a transient failure; the value stays."""
    store = MemoryProvider("mem", {"db": "pw-slow-1616"})
    cache, _ = make(store, timeout=0.1)
    await cache.get("mem", [DB], deadline(0.1))
    store.delay = 1.0
    look = await cache.refresh([DB])
    assert frozenset() == look.changed
    assert isinstance(cache.entries[DB].error, Unavailable)
    assert "pw-slow-1616" == value_of(cache, DB)


class WholeAnswers(MemoryProvider):
    """A store whose check answers with the whole value each time (no cheaper look), dated:
    as a lease renewal that returns the credentials again."""

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        found = await self.fetch(list(known))
        return {
            ref: msgspec.structs.replace(value, check_after=CHECK_AFTER)
            if isinstance(value, SecretValue)
            else value
            for ref, value in found.items()
        }


class DatedUnchanged(MemoryProvider):
    """A store whose check says "unchanged, look again at CHECK_AFTER" (a renewed lease)."""

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        await self.fetch(list(known))
        return {ref: Unchanged(check_after=CHECK_AFTER) for ref in known}


CHECK_AFTER = 4_000_000_000.0


async def test_a_check_answered_with_the_same_value_changes_nothing_and_keeps_its_date() -> None:
    """A check that returns the same value again is no change: no generation, the store's new
    date is kept, and the value is not registered once more per look (a single retire at the
    rotation after next forgets it)."""
    store = WholeAnswers("mem", {"db": "pw-whole-1919"})
    cache, redactor = make(store)
    await cache.get("mem", [DB], deadline())
    for _ in range(3):
        assert frozenset() == (await cache.refresh([DB])).changed
    assert 0 == cache.entries[DB].generation
    assert CHECK_AFTER == cache.entries[DB].check_after
    for value in ("pw-whole-2020", "pw-whole-2121"):
        store.values["db"] = value
        assert {DB} == (await cache.refresh([DB])).changed
    assert not known(redactor, "pw-whole-1919")


async def test_an_unchanged_answer_with_a_date_moves_the_next_look() -> None:
    """`Unchanged(check_after=...)` keeps the value and records the store's new date."""
    store = DatedUnchanged("mem", {"db": "pw-dated-2222"})
    cache, _ = make(store)
    await cache.get("mem", [DB], deadline())
    assert cache.entries[DB].check_after is None
    assert frozenset() == (await cache.refresh([DB])).changed
    assert CHECK_AFTER == cache.entries[DB].check_after
    assert "pw-dated-2222" == value_of(cache, DB)
