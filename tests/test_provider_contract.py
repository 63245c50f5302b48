"""The contract every provider keeps, run over every store in tests/providers_harness.py.

Each case builds the provider the way the CLI does (a real smagent.yaml,
`load_config`, `open_providers`) against the harness's store, and reads
through the real `Resolver` (canonical spelling, the pass deadline, the
redactor). A case a store cannot have is skipped with the harness's reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from smagent.config import load_config
from smagent.logging import Redactor
from smagent.providers import open_providers
from smagent.providers.base import (
    AccessDenied,
    NotFound,
    Provider,
    ProviderError,
    SecretValue,
    Throttled,
    Unavailable,
    Unchanged,
)
from smagent.resolver import Resolver
from tests.conftest import CANARY, CANARY_TOKEN, assert_no_canary
from tests.providers_harness import CASES, HARNESSES, STORE, StoreHarness

SLACK = 1.5
"""Seconds past fetch_timeout a failing case may take on a loaded 2-core host."""


@pytest.fixture(params=sorted(HARNESSES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreHarness]:
    """One running store of each registered type."""
    async with HARNESSES[request.param](tmp_path, request) as harness:
        yield harness


def applies(harness: StoreHarness, case: str) -> None:
    assert case in CASES
    if case in harness.not_applicable:
        pytest.skip(f"not applicable to {harness.kind}: {harness.not_applicable[case]}")


@asynccontextmanager
async def opened(harness: StoreHarness) -> AsyncIterator[Provider]:
    config_path = harness.root / "smagent.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "providers": {STORE: harness.config()},
                "defaults": {"fetch_timeout": f"{harness.fetch_timeout}s"},
            }
        )
    )
    config = load_config(config_path)
    async with open_providers(config.providers) as providers:
        yield providers[STORE]


def resolver(provider: Provider, harness: StoreHarness) -> Resolver:
    return Resolver({STORE: provider}, harness.fetch_timeout, Redactor())


async def read(harness: StoreHarness, name: str) -> SecretValue | ProviderError:
    async with opened(harness) as provider:
        ref = harness.ref(name)
        return (await resolver(provider, harness).resolve([ref]))[ref]


async def test_found(store: StoreHarness) -> None:
    """A stored secret comes back as stored."""
    applies(store, "found")
    await store.put("prod-db", CANARY)

    result = await read(store, "prod-db")

    assert isinstance(result, SecretValue), result
    assert CANARY == store.value(result.reveal())


async def test_not_found(store: StoreHarness) -> None:
    """A missing secret is NotFound at once, naming the reference, holding no value."""
    applies(store, "not_found")
    await store.put("prod-db", CANARY)
    started = time.monotonic()

    result = await read(store, "no-such-secret")

    assert isinstance(result, NotFound), result
    assert False is result.transient
    assert str(store.ref("no-such-secret")) in str(result)
    assert_no_canary(str(result))
    assert time.monotonic() - started < store.fetch_timeout


async def test_access_denied(store: StoreHarness) -> None:
    """A secret the credentials may not read is AccessDenied (permanent), holding no value."""
    applies(store, "access_denied")
    await store.put("prod-db", CANARY)
    await store.deny("prod-db")

    result = await read(store, "prod-db")

    assert isinstance(result, AccessDenied), result
    assert False is result.transient
    assert_no_canary(str(result))


async def test_server_down(store: StoreHarness) -> None:
    """An unreachable store is Unavailable (transient) within the deadline; test_connection
    says so too."""
    applies(store, "server_down")
    await store.put("prod-db", CANARY)
    await store.down()
    started = time.monotonic()

    async with opened(store) as provider:
        ref = store.ref("prod-db")
        result = (await resolver(provider, store).resolve([ref]))[ref]
        with pytest.raises(ProviderError) as info:
            await provider.test_connection()

    assert isinstance(result, Unavailable), result
    assert True is result.transient
    assert_no_canary(str(result), str(info.value))
    assert time.monotonic() - started < 2 * store.fetch_timeout + SLACK


async def test_throttled_briefly_is_retried(store: StoreHarness) -> None:
    """Throttled twice, then served: the value, within the deadline."""
    applies(store, "throttled")
    await store.put("prod-db", CANARY)
    await store.throttle(2)

    result = await read(store, "prod-db")

    assert isinstance(result, SecretValue), result
    assert CANARY == store.value(result.reveal())


async def test_throttled_throughout_is_reported_in_time(store: StoreHarness) -> None:
    """Throttled on every request: Throttled (transient) by the deadline, never a hang."""
    applies(store, "throttled")
    await store.put("prod-db", CANARY)
    await store.throttle(10_000)
    started = time.monotonic()

    result = await read(store, "prod-db")

    assert isinstance(result, Throttled | Unavailable), result
    assert True is result.transient
    assert time.monotonic() - started < store.fetch_timeout + SLACK


async def test_deadline(store: StoreHarness) -> None:
    """A store that does not answer: Unavailable naming fetch_timeout, on time."""
    applies(store, "deadline")
    await store.put("prod-db", CANARY)
    await store.stall()
    started = time.monotonic()

    result = await read(store, "prod-db")

    assert isinstance(result, Unavailable), result
    assert time.monotonic() - started < store.fetch_timeout + SLACK


async def test_spellings_of_one_secret_are_one_fetch(store: StoreHarness) -> None:
    """Every spelling of one secret gets its value from a single fetch (counted at the store
    where it can count)."""
    applies(store, "canonical")
    await store.put("prod-db", CANARY)
    spellings = store.spellings("prod-db")
    assert 2 <= len(set(spellings))

    async with opened(store) as provider:
        before = store.requests()
        pass_ = resolver(provider, store)
        results = await pass_.resolve(spellings)
        after = store.requests()

    assert 1 == pass_.requests
    for ref in spellings:
        assert CANARY == store.value(results[ref].reveal())  # type: ignore[union-attr]
    if before is not None and after is not None:
        assert 1 == after - before


async def test_refresh_says_unchanged_then_gives_the_new_value(store: StoreHarness) -> None:
    """refresh: Unchanged while the secret stays, the new value once it rotated."""
    applies(store, "refresh")
    await store.put("prod-db", CANARY)

    async with opened(store) as provider:
        ref = provider.canonical(store.ref("prod-db"))
        first = (await provider.fetch([ref]))[ref]
        assert isinstance(first, SecretValue), first
        same = await provider.refresh({ref: first})
        await store.put("prod-db", CANARY_TOKEN)
        rotated = await provider.refresh({ref: first})

    assert [ref] == list(same)
    assert isinstance(same[ref], Unchanged), same[ref]
    assert isinstance(rotated[ref], SecretValue), rotated[ref]
    assert CANARY_TOKEN == store.value(rotated[ref].reveal())


async def test_repr_holds_no_credential(store: StoreHarness) -> None:
    """repr(provider) names it, and holds no credential and no value, before and after reads."""
    applies(store, "repr")
    await store.put("prod-db", CANARY)

    async with opened(store) as provider:
        before = repr(provider)
        ref = store.ref("prod-db")
        await resolver(provider, store).resolve([ref])
        after = repr(provider)

    for text in (before, after):
        assert STORE in text
        assert_no_canary(text)
        for credential in store.credentials():
            assert credential not in text
