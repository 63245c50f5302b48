"""Tests for smagent.resolver: values registered for redaction, damage kept inside a batch.

The providers are the real file and env providers over real files and the
real environment; a store that misbehaves on purpose (crashes, answers the
wrong thing) is a small fake here, since no real store can be made to.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from smagent.config import load_config
from smagent.logging import REDACTED, Redactor
from smagent.providers import create_provider
from smagent.providers.base import (
    BadValue,
    FetchResult,
    Provider,
    ProviderBug,
    RefreshResult,
    SecretValue,
    Unavailable,
)
from smagent.providers.retry import DEADLINE
from smagent.references import SecretRef
from smagent.resolver import Resolver
from smagent.values import MAX_DEPTH
from tests.conftest import CANARY, CANARY_TOKEN, CANARY_USER, Workspace, assert_no_canary
from tests.fakes.memory import MemoryProvider
from tests.leaks import allow_secrets_in


def file_provider(folder: Path, secrets: str, name: str = "local") -> Provider:
    (folder / "secrets.yaml").write_text(secrets)
    allow_secrets_in(folder / "secrets.yaml")
    config = folder / "smagent.yaml"
    config.write_text(
        yaml.safe_dump({"providers": {name: {"type": "file", "path": "secrets.yaml"}}})
    )
    return create_provider(name, load_config(config).providers[name])


def env_provider(folder: Path, name: str = "env") -> Provider:
    config = folder / "env.yaml"
    config.write_text(yaml.safe_dump({"providers": {name: {"type": "env"}}}))
    return create_provider(name, load_config(config).providers[name])


async def test_every_fetched_value_is_registered_with_the_redactor(tmp_path: Path) -> None:
    """After a fetch, the value and every string of its JSON are scrubbed from text."""
    redactor = Redactor()
    provider = file_provider(
        tmp_path, yaml.safe_dump({"db": {"user": CANARY_USER, "pw": CANARY}, "tok": CANARY_TOKEN})
    )
    resolver = Resolver({"local": provider}, 5.0, redactor)

    await resolver.resolve([SecretRef("local", "db"), SecretRef("local", "tok")])

    text = f"{CANARY} {CANARY_USER} {CANARY_TOKEN}"
    assert f"{REDACTED} {REDACTED} {REDACTED}" == redactor.scrub(text)


def test_values_reach_no_log_line_through_the_real_pipeline(ws: Workspace) -> None:
    """A failing action that prints the rendered secret: its stderr is logged scrubbed.

    Nothing but the resolver registers values, so this fails when the
    resolver stops doing it (checked by removing that line).
    """
    show = "import sys; sys.stderr.write(open(sys.argv[1]).read()); sys.exit(3)"
    dest = ws.template(
        "pw.j2",
        "{{ secrets.db.password }}\n",
        on_change=[{"command": [sys.executable, "-c", show, "out/pw"]}],
    )

    result = ws.run("--log-level", "debug", "render", "--once", cwd=ws.root)

    assert 1 == result.returncode
    assert CANARY + "\n" == dest.read_text()
    events = {line["event"]: line for line in result.logs()}
    assert "exited with status 3" == events["action.failed"]["error"]
    assert REDACTED == events["action.output"]["output"]
    assert_no_canary(result.stdout, result.stderr)


async def test_unusable_value_fails_only_its_own_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text that is not Unicode or JSON past the depth limit is a BadValue for that secret only."""
    deep = '{"a":' * (MAX_DEPTH + 1) + json.dumps(CANARY) + "}" * (MAX_DEPTH + 1)
    monkeypatch.setenv("SMAGENT_T_DEEP", deep)
    monkeypatch.setenv("SMAGENT_T_VERY_DEEP", "[" * 100_000 + "]" * 100_000)
    monkeypatch.setenv("SMAGENT_T_NOT_UTF8", CANARY + "\udcff")  # the byte 0xff in environ
    monkeypatch.setenv("SMAGENT_T_GOOD", json.dumps({"pw": CANARY}))
    refs = [
        SecretRef("env", name)
        for name in (
            "SMAGENT_T_DEEP",
            "SMAGENT_T_VERY_DEEP",
            "SMAGENT_T_NOT_UTF8",
            "SMAGENT_T_GOOD",
        )
    ]
    redactor = Redactor()
    resolver = Resolver({"env": env_provider(tmp_path)}, 5.0, redactor)

    results = await resolver.resolve(refs)

    assert [BadValue, BadValue, BadValue, SecretValue] == [type(results[r]) for r in refs]
    assert f"nested more than {MAX_DEPTH} levels" in str(results[refs[0]])
    assert "not valid Unicode text" in str(results[refs[2]])
    for ref in refs[:3]:
        assert_no_canary(str(results[ref]))
    assert REDACTED == redactor.scrub(deep)  # refused, yet registered: it was fetched


class Misbehaving:
    """A store with a bug: raises, or answers with things that are not answers."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        if self.mode == "raise":
            raise KeyError(CANARY)  # a bug whose text holds a value
        if self.mode == "not-a-mapping":
            return 42  # type: ignore[return-value]
        stray = SecretRef(self.name, "never-asked")
        answers: dict[SecretRef, object] = {stray: SecretValue("stray-value-9z")}
        answers[refs[0]] = CANARY  # a bare str, not a SecretValue
        return answers  # type: ignore[return-value]  # refs[1:] left unanswered

    def canonical(self, ref: SecretRef) -> SecretRef:
        if self.mode == "bad-canonical":
            raise KeyError(CANARY)
        return ref

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        return {}

    async def test_connection(self) -> None:
        return None

    async def __aenter__(self) -> Misbehaving:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("mode", ["raise", "not-a-mapping", "wrong-answers", "bad-canonical"])
async def test_a_misbehaving_provider_fails_only_its_own_batch(tmp_path: Path, mode: str) -> None:
    """A provider that raises or answers wrongly fails its refs as ProviderBug, which is not
    transient (an agent must not retry a bug forever); the other provider's are served."""
    good = file_provider(tmp_path, yaml.safe_dump({"pw": CANARY}))
    resolver = Resolver({"local": good, "bad": Misbehaving("bad", mode)}, 5.0, Redactor())
    asked = [SecretRef("bad", "a"), SecretRef("bad", "b"), SecretRef("local", "pw")]

    results = await resolver.resolve(asked)

    assert [ProviderBug, ProviderBug, SecretValue] == [type(results[r]) for r in asked]
    assert False is results[asked[0]].transient  # type: ignore[union-attr]
    assert set(asked) == set(resolver.results)  # a stray answer fills nothing
    for ref in asked[:2]:
        assert_no_canary(str(results[ref]))


def nested_file(levels: int, size: int) -> str:
    """A valid secrets file that libyaml reads slowly: many secrets nested `levels` deep."""
    one = "[" * levels + "]" * levels
    count = size // (len(one) + 10)
    return "".join(f"s{i:06d}: {one}\n" for i in range(count)) + f"pw: {CANARY}\n"


async def test_deadline_holds_while_the_file_is_parsed_and_the_loop_runs(tmp_path: Path) -> None:
    """A parse longer than fetch_timeout: Unavailable on time, the loop never stalls, and the
    parse, left to finish in the background, serves the next pass at once."""
    provider = file_provider(tmp_path, nested_file(990, 384 * 1024))  # ~1 s to parse
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    first = await Resolver({"local": provider}, 0.1, Redactor()).resolve([SecretRef("local", "pw")])
    elapsed = time.monotonic() - started
    task.cancel()

    assert isinstance(first[SecretRef("local", "pw")], Unavailable)
    assert "no answer within 0.1s (fetch_timeout)" in str(first[SecretRef("local", "pw")])
    assert 1.0 > elapsed
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert 0.5 > max(gaps), "the event loop stalled while the file was parsed"

    second = await Resolver({"local": provider}, 60.0, Redactor()).resolve(
        [SecretRef("local", "pw")]
    )
    value = second[SecretRef("local", "pw")]
    assert isinstance(value, SecretValue)
    assert CANARY == value.reveal()


async def test_two_spellings_of_one_secret_are_one_fetch_and_both_get_the_value() -> None:
    """stage=None and stage="AWSCURRENT" (one secret by the store's `canonical`): one fetch,
    and the result is kept under both spellings, since templates look values up as written."""
    store = MemoryProvider("mem", {"db": CANARY})
    plain, current = SecretRef("mem", "db"), SecretRef("mem", "db", stage="AWSCURRENT")
    resolver = Resolver({"mem": store}, 5.0, Redactor())

    results = await resolver.resolve([plain, current])

    assert [[plain]] == [[ref] for ref in store.asked]
    assert 1 == resolver.requests
    assert CANARY == results[plain].reveal()  # type: ignore[union-attr]
    assert CANARY == results[current].reveal()  # type: ignore[union-attr]
    assert results[plain] is resolver.results[current]


async def test_a_later_round_spelling_of_a_known_secret_is_not_fetched_again() -> None:
    """A spelling first met in a later round of the pass is served from the first fetch."""
    store = MemoryProvider("mem", {"db": CANARY})
    resolver = Resolver({"mem": store}, 5.0, Redactor())

    await resolver.resolve([SecretRef("mem", "db", stage="AWSCURRENT")])
    second = await resolver.resolve([SecretRef("mem", "db")])

    assert 1 == len(store.calls)
    assert CANARY == second[SecretRef("mem", "db")].reveal()  # type: ignore[union-attr]


async def test_distinct_stages_stay_distinct_fetches() -> None:
    """Canonical spelling merges only what the store says is one secret: AWSPREVIOUS is not."""
    store = MemoryProvider("mem", {"db": "x"})
    resolver = Resolver({"mem": store}, 5.0, Redactor())

    await resolver.resolve([SecretRef("mem", "db"), SecretRef("mem", "db", stage="AWSPREVIOUS")])

    assert 2 == resolver.requests
    assert {None, "AWSPREVIOUS"} == {ref.stage for ref in store.asked}


async def test_provider_retries_see_the_pass_deadline() -> None:
    """During fetch, retry.DEADLINE holds the pass's deadline (loop time); after it, nothing."""
    seen: list[float | None] = []

    class Peeking(MemoryProvider):
        async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
            seen.append(DEADLINE.get())
            return await super().fetch(refs)

    resolver = Resolver({"mem": Peeking("mem", {"a": "1"})}, 7.0, Redactor())
    started = asyncio.get_running_loop().time()

    await resolver.resolve([SecretRef("mem", "a")])

    (deadline,) = seen
    assert deadline is not None
    assert started + 7.0 == pytest.approx(deadline, abs=0.5)
    assert None is DEADLINE.get()
