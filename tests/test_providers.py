"""Tests for smagent.providers: one contract suite over the embedded providers, then specifics.

Providers are built the way the CLI builds them: a real config file read by
`load_config`, then `create_provider`. The secrets live in a real YAML file or
in the real process environment.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from smagent.config import EnvProviderConfig, ProviderConfig, load_config
from smagent.providers import ProviderSetupError, create_provider
from smagent.providers.base import (
    BadValue,
    NotFound,
    Provider,
    ProviderError,
    SecretValue,
    Throttled,
    Unavailable,
)
from smagent.providers.env import EnvProvider
from smagent.providers.file import MAX_FILE_BYTES
from smagent.references import SecretRef
from tests.conftest import CANARY, CANARY_TOKEN, CANARY_USER, special_file
from tests.leaks import allow_secrets_in

STORE = "store"
PLAIN = "SMAGENT_T_PLAIN"
JSON_ID = "SMAGENT_T_JSON"
UNICODE = "SMAGENT_T_UNICODE"
MISSING = "SMAGENT_T_MISSING"
JSON_TEXT = json.dumps({"username": CANARY_USER, "password": CANARY, "port": 5432})
UNICODE_TEXT = "pässwörd-密码-🔑"

HANG_LIMIT = 5.0
"""How long a read that must not block may take before the test calls it a hang."""

Secrets = Mapping[str, Any]
MakeStore = Callable[[Secrets], Provider]


def ref(secret_id: str, version: str | None = None, stage: str | None = None) -> SecretRef:
    return SecretRef(STORE, secret_id, version, stage)


def provider_config(folder: Path, raw: dict[str, Any]) -> ProviderConfig:
    """Provider `store` as `load_config` reads it from a real smagent.yaml in `folder`."""
    path = folder / "smagent.yaml"
    path.write_text(yaml.safe_dump({"providers": {STORE: raw}}))
    return load_config(path).providers[STORE]


def file_store(folder: Path, text: str | bytes) -> Provider:
    """A `file` provider over secrets.yaml holding exactly `text`."""
    secrets = folder / "secrets.yaml"
    allow_secrets_in(secrets)
    if isinstance(text, bytes):
        secrets.write_bytes(text)
    else:
        secrets.write_text(text, encoding="utf-8")
    return create_provider(STORE, provider_config(folder, {"type": "file", "path": "secrets.yaml"}))


async def fetch_one(provider: Provider, secret: SecretRef) -> SecretValue | ProviderError:
    results = await provider.fetch([secret])
    return results[secret]


async def reveal(provider: Provider, secret_id: str) -> str | bytes:
    result = await fetch_one(provider, ref(secret_id))
    assert isinstance(result, SecretValue), result
    return result.reveal()


@pytest.fixture(params=["file", "env"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> MakeStore:
    """Build a provider of each embedded type holding the given secrets."""

    def make(secrets: Secrets) -> Provider:
        if request.param == "file":
            return file_store(tmp_path, yaml.safe_dump(dict(secrets), allow_unicode=True))
        for name, value in secrets.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv(MISSING, raising=False)
        return create_provider(STORE, provider_config(tmp_path, {"type": "env"}))

    return make


SAMPLE: Secrets = {PLAIN: CANARY, JSON_ID: JSON_TEXT, UNICODE: UNICODE_TEXT}


# -- the contract every provider keeps ------------------------------------------------------


async def test_found_secrets_come_back_as_stored(make_store: MakeStore) -> None:
    """Plain text, JSON text and unicode come back unchanged as text SecretValues."""
    provider = make_store(SAMPLE)

    results = await provider.fetch([ref(PLAIN), ref(JSON_ID), ref(UNICODE)])

    assert [CANARY, JSON_TEXT, UNICODE_TEXT] == [
        r.reveal() for r in results.values() if isinstance(r, SecretValue)
    ]
    assert [False, False, False] == [r.is_binary for r in results.values()]
    assert {"username": CANARY_USER, "password": CANARY, "port": 5432} == json.loads(
        await reveal(provider, JSON_ID)
    )


async def test_missing_secret_is_not_found_naming_the_id(make_store: MakeStore) -> None:
    """An unknown id gives a permanent NotFound naming the id and holding no secret value."""
    provider = make_store(SAMPLE)

    error = await fetch_one(provider, ref(MISSING))

    assert isinstance(error, NotFound)
    assert False is error.transient
    assert ref(MISSING) == error.ref
    assert MISSING in str(error)
    for canary in (CANARY, CANARY_USER, CANARY_TOKEN):
        assert canary not in str(error)
        assert canary not in repr(error)


@pytest.mark.parametrize(("version", "stage"), [("3", None), (None, "AWSPREVIOUS"), ("1", "X")])
async def test_version_or_stage_is_not_found(
    make_store: MakeStore, version: str | None, stage: str | None
) -> None:
    """Asking a one-value store for a version or stage gives NotFound saying why."""
    provider = make_store(SAMPLE)

    error = await fetch_one(provider, ref(PLAIN, version, stage))

    assert isinstance(error, NotFound)
    assert "no version or stage" in error.detail
    assert CANARY not in str(error)


async def test_every_ref_of_a_batch_is_answered(make_store: MakeStore) -> None:
    """fetch answers each ref asked, found or not, and no other."""
    provider = make_store(SAMPLE)
    refs = [ref(PLAIN), ref(MISSING), ref(PLAIN, version="2"), ref(UNICODE), ref(JSON_ID)]

    results = await provider.fetch(refs)

    assert set(refs) == set(results)
    assert [SecretValue, NotFound, NotFound, SecretValue, SecretValue] == [
        type(results[r]) for r in refs
    ]


async def test_empty_batch_gives_empty_answer(make_store: MakeStore) -> None:
    """fetch of no refs answers nothing."""
    provider = make_store(SAMPLE)

    assert {} == await provider.fetch([])


async def test_repr_holds_no_secret(make_store: MakeStore) -> None:
    """repr(provider) names the provider and holds no secret value, before and after a fetch."""
    provider = make_store(SAMPLE)
    before = repr(provider)
    await provider.fetch([ref(PLAIN), ref(JSON_ID)])

    for text in (before, repr(provider)):
        assert STORE in text
        for canary in (CANARY, CANARY_USER):
            assert canary not in text


async def test_connection_check_spelling_and_context_manager(make_store: MakeStore) -> None:
    """test_connection passes, every ref is its own spelling, and the provider opens and closes
    as an async context manager."""
    provider = make_store(SAMPLE)

    async with provider as opened:
        assert provider is opened
        await provider.test_connection()
        assert ref(PLAIN, stage="AWSCURRENT") == provider.canonical(ref(PLAIN, stage="AWSCURRENT"))
    assert STORE == provider.name


# -- file specifics -----------------------------------------------------------------------------


async def test_file_missing_is_unavailable(tmp_path: Path) -> None:
    """A missing secrets file fails test_connection and every fetch with transient Unavailable."""
    provider = file_store(tmp_path, "a: b\n")
    (tmp_path / "secrets.yaml").unlink()

    with pytest.raises(Unavailable, match=r"cannot read .*secrets\.yaml: No such file") as info:
        await provider.test_connection()
    results = await provider.fetch([ref("a"), ref("b")])

    assert True is info.value.transient
    assert [Unavailable, Unavailable] == [type(r) for r in results.values()]
    assert [ref("a"), ref("b")] == [r.ref for r in results.values()]


async def test_a_broken_secrets_file_is_the_provider_down_told_once_then_recovered(
    tmp_path: Path,
) -> None:
    """The whole file unreadable (a FIFO in its place, then too large) is one
    provider.unavailable however many fetches meet it, and the state the agent's status shows;
    a good file again is one provider.recovered. A secret missing from a good file is not."""
    provider = file_store(tmp_path, "a: b\n")
    path = tmp_path / "secrets.yaml"
    with structlog.testing.capture_logs() as events:
        await provider.fetch([ref("a"), ref("nope")])
        path.unlink()
        os.mkfifo(path, 0o600)
        await provider.fetch([ref("a")])
        path.unlink()
        path.write_text("a: " + "x" * (MAX_FILE_BYTES + 1) + "\n")
        await provider.fetch([ref("a")])
        assert "unavailable" == provider.health.state
        path.write_text("a: c\n")
        await provider.fetch([ref("a")])

    assert ["provider.unavailable", "provider.recovered"] == [
        e["event"] for e in events if e["event"].startswith("provider.")
    ]
    assert "is not a regular file" in events[0]["detail"]
    assert "ok" == provider.health.state


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
async def test_file_that_is_not_a_mapping_is_unavailable(tmp_path: Path, text: str) -> None:
    """A secrets file holding a list or a scalar is Unavailable, saying a mapping is needed."""
    provider = file_store(tmp_path, text)

    with pytest.raises(Unavailable, match="must hold a mapping of secret names to values"):
        await provider.test_connection()


@pytest.mark.parametrize(
    "text",
    [
        f"user: ok\npassword: {CANARY}: oops\n",
        f'user: ok\npassword: "{CANARY}\n',
        f"user: ok\npassword: [{CANARY}\n",
    ],
)
async def test_yaml_error_gives_line_and_column_never_the_line(tmp_path: Path, text: str) -> None:
    """A YAML syntax error on a line holding a secret names line/column but not the secret."""
    provider = file_store(tmp_path, text)

    with pytest.raises(Unavailable) as info:
        await provider.test_connection()
    error = await fetch_one(provider, ref("user"))

    assert "is not valid YAML/JSON at line" in str(info.value)
    for message in (str(info.value), repr(info.value), str(error)):
        assert CANARY not in message
        assert CANARY[:12] not in message
    assert isinstance(error, Unavailable)


async def test_yaml_error_position_is_exact(tmp_path: Path) -> None:
    """The reported position is PyYAML's mark, counted from 1."""
    provider = file_store(tmp_path, f"user: ok\npassword: {CANARY}: oops\n")

    with pytest.raises(Unavailable) as info:
        await provider.test_connection()

    column = len(f"password: {CANARY}:")
    assert str(info.value).endswith(f"at line 2, column {column}")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
async def test_file_that_is_not_a_regular_file_is_unavailable_at_once(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO or folder at the secrets path is Unavailable at once; nothing blocks on it."""
    provider = file_store(tmp_path, "a: b\n")
    secrets = tmp_path / "secrets.yaml"
    secrets.unlink()

    with special_file(secrets, kind):
        async with asyncio.timeout(HANG_LIMIT):
            with pytest.raises(Unavailable) as info:
                await provider.test_connection()
            error = await fetch_one(provider, ref("a"))

    assert f"{secrets} is not a regular file" == str(info.value)
    assert isinstance(error, Unavailable)
    assert f"{secrets} is not a regular file" == error.detail


async def test_one_bad_secret_fails_only_its_references(tmp_path: Path) -> None:
    """A secret YAML cannot build is a BadValue naming the key path and line; the rest is served."""
    provider = file_store(
        tmp_path,
        f"user: ok\ndb: {{password: {CANARY}, when: 2001-02-30}}\nloop: &l [*l]\n"
        f"dates: {{2001-01-01: {CANARY}}}\n",
    )

    await provider.test_connection()
    results = await provider.fetch([ref("user"), ref("db"), ref("loop"), ref("dates")])

    assert "ok" == results[ref("user")].reveal()  # type: ignore[union-attr]
    assert {"2001-01-01": CANARY} == json.loads(results[ref("dates")].reveal())  # type: ignore[union-attr,arg-type]
    db, loop = results[ref("db")], results[ref("loop")]
    assert isinstance(db, BadValue)
    assert isinstance(loop, BadValue)
    secrets = tmp_path / "secrets.yaml"
    assert (
        f"in {secrets}: at when: a value YAML cannot read (such as an invalid date) (line 2)"
        == db.detail
    )
    assert f"in {secrets}: at [0]: a value that contains itself (a recursive YAML alias)" == (
        loop.detail
    )
    for message in (str(db), repr(db), str(loop)):
        assert CANARY not in message


async def test_alias_bomb_fails_its_secret_fast(tmp_path: Path) -> None:
    """A billion-laughs secret is a BadValue within a second or so; its neighbours are served."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    provider = file_store(tmp_path, "\n".join(lines) + f"\npw: {CANARY}\n")

    async with asyncio.timeout(HANG_LIMIT):
        results = await provider.fetch([ref("a9"), ref("pw")])

    assert isinstance(results[ref("a9")], BadValue)
    assert "more than 100,000 values once YAML aliases are expanded" in str(results[ref("a9")])
    assert CANARY == results[ref("pw")].reveal()  # type: ignore[union-attr]


async def test_nesting_past_the_parse_limit_refuses_the_file(tmp_path: Path) -> None:
    """100,000 levels of nesting: the file is Unavailable at once, naming position and limit."""
    provider = file_store(tmp_path, f"user: ok\ndeep: {'[' * 100_000}{CANARY}{']' * 100_000}\n")

    async with asyncio.timeout(HANG_LIMIT):
        with pytest.raises(Unavailable) as info:
            await provider.test_connection()

    assert (
        f"{tmp_path / 'secrets.yaml'} is nested more than 1,000 levels deep at line 2, "
        "column 1006 (the limit)"
    ) == str(info.value)
    assert CANARY not in str(info.value)


async def test_top_mapping_that_cannot_be_built_is_unavailable(tmp_path: Path) -> None:
    """A top-level merge key that cannot be applied fails the file, saying so (not "no secret")."""
    provider = file_store(tmp_path, f"base: &b {{x: {CANARY}}}\n<<: 5\na: 1\n")

    with pytest.raises(Unavailable) as info:
        await provider.test_connection()

    assert (
        f"{tmp_path / 'secrets.yaml'} holds a merge key (<<) whose value is not a mapping (line 1)"
    ) == str(info.value)


async def test_file_larger_than_the_cap_is_refused_unread(tmp_path: Path) -> None:
    """A secrets file over MAX_FILE_BYTES is Unavailable at once, naming the limit."""
    provider = file_store(tmp_path, "a: " + "x" * MAX_FILE_BYTES + "\n")

    async with asyncio.timeout(HANG_LIMIT):
        results = await provider.fetch([ref("a")])

    error = results[ref("a")]
    assert isinstance(error, Unavailable)
    assert (
        f"{tmp_path / 'secrets.yaml'} is larger than 4 MiB (the limit for a secrets file); "
        "split it into several file providers"
    ) == error.detail


async def test_file_at_the_cap_is_read(tmp_path: Path) -> None:
    """A secrets file of exactly MAX_FILE_BYTES is read."""
    text = "a: b\n"
    provider = file_store(tmp_path, text + "#" * (MAX_FILE_BYTES - len(text) - 1) + "\n")

    assert "b" == await reveal(provider, "a")


async def test_file_with_nul_is_unavailable_naming_the_line(tmp_path: Path) -> None:
    """A NUL character is refused with its line number, not PyYAML's quote of the line."""
    provider = file_store(tmp_path, f"a: ok\nb: {CANARY}\x00\n")

    with pytest.raises(Unavailable) as info:
        await provider.test_connection()

    assert f"{tmp_path / 'secrets.yaml'} holds a NUL character (line 2)" == str(info.value)


async def test_fetch_runs_in_one_daemon_thread_that_ends_at_close(tmp_path: Path) -> None:
    """Reads run in the provider's own daemon thread (nothing joins it at exit); close ends it."""
    provider = file_store(tmp_path, "a: b\n")
    before = set(threading.enumerate())

    async with provider:
        for _ in range(3):
            assert "b" == await reveal(provider, "a")
        workers = list(set(threading.enumerate()) - before)

    assert 1 == len(workers)
    assert f"smagent-{STORE}" == workers[0].name
    assert True is workers[0].daemon
    workers[0].join(HANG_LIMIT)
    assert False is workers[0].is_alive()


async def test_file_not_utf8_is_unavailable(tmp_path: Path) -> None:
    """A secrets file that is not UTF-8 is Unavailable, naming the line."""
    provider = file_store(tmp_path, b"user: ok\npassword: \xff\xfe\n")

    with pytest.raises(Unavailable, match=r"is not UTF-8 text \(line 2\)$"):
        await provider.test_connection()


async def test_empty_file_is_an_empty_store(tmp_path: Path) -> None:
    """An empty secrets file is valid and holds nothing."""
    provider = file_store(tmp_path, "\n")

    await provider.test_connection()
    assert isinstance(await fetch_one(provider, ref("x")), NotFound)


async def test_file_nested_path_lookup(tmp_path: Path) -> None:
    """`a/b/c` walks nested mappings when there is no top-level key `a/b/c`."""
    provider = file_store(tmp_path, "a:\n  b:\n    c: leaf-value\n    d: other\n")

    assert "leaf-value" == await reveal(provider, "a/b/c")
    assert {"c": "leaf-value", "d": "other"} == json.loads(await reveal(provider, "a/b"))
    for missing in ("a/b/x", "a/b/c/d", "a//b", "x/y"):
        assert isinstance(await fetch_one(provider, ref(missing)), NotFound), missing


async def test_file_top_level_key_with_slash_wins(tmp_path: Path) -> None:
    """A top-level key `prod/db` is served before the nested path prod -> db."""
    provider = file_store(tmp_path, "prod/db: top-level\nprod:\n  db: nested\n")

    assert "top-level" == await reveal(provider, "prod/db")


async def test_file_mapping_and_list_are_json_text(tmp_path: Path) -> None:
    """A nested mapping or list is served as JSON text, unicode kept."""
    secrets = {"db": {"user": "ü-user", "port": 5432, "tls": True}, "hosts": ["a", "b"]}
    provider = file_store(tmp_path, yaml.safe_dump(secrets, allow_unicode=True))

    db = await reveal(provider, "db")

    assert secrets["db"] == json.loads(db)
    assert isinstance(db, str)
    assert "ü-user" in db
    assert ["a", "b"] == json.loads(await reveal(provider, "hosts"))


async def test_file_binary_value_is_bytes(tmp_path: Path) -> None:
    """A YAML !!binary value is a binary SecretValue holding the bytes."""
    provider = file_store(tmp_path, "blob: !!binary AAH/c2VjcmV0\n")

    result = await fetch_one(provider, ref("blob"))

    assert isinstance(result, SecretValue)
    assert True is result.is_binary
    assert b"\x00\x01\xffsecret" == result.reveal()


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("5432", "5432"),
        ("1.5", "1.5"),
        ("true", "true"),
        ("false", "false"),
        ("null", ""),
        ("~", ""),
        ("", ""),
        ("2025-01-31", "2025-01-31"),
        ("2025-01-31 10:00:00", "2025-01-31 10:00:00"),
        ("'0640'", "0640"),
    ],
)
async def test_file_scalars_become_text(tmp_path: Path, yaml_value: str, expected: str) -> None:
    """Numbers, booleans, null and dates are served as their plain text."""
    provider = file_store(tmp_path, f"value: {yaml_value}\n")

    assert expected == await reveal(provider, "value")


async def test_file_change_is_picked_up(tmp_path: Path) -> None:
    """After the file changes (new size/mtime) the next fetch serves the new value."""
    provider = file_store(tmp_path, "token: first\n")
    assert "first" == await reveal(provider, "token")

    (tmp_path / "secrets.yaml").write_text("token: second-and-longer\n")

    assert "second-and-longer" == await reveal(provider, "token")


async def test_file_with_unchanged_stamp_is_not_reread(tmp_path: Path) -> None:
    """A file whose size and mtime are unchanged is served from the last parse."""
    secrets = tmp_path / "secrets.yaml"
    provider = file_store(tmp_path, "token: aaaa\n")
    assert "aaaa" == await reveal(provider, "token")
    before = secrets.stat()

    secrets.write_text("token: bbbb\n")
    os.utime(secrets, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert "aaaa" == await reveal(provider, "token")


# -- env specifics ------------------------------------------------------------------------------


async def test_env_reads_the_mapping_it_was_given() -> None:
    """EnvProvider with an explicit environ reads only that mapping."""
    provider = EnvProvider(STORE, EnvProviderConfig(), environ={"API_TOKEN": CANARY_TOKEN})

    assert CANARY_TOKEN == await reveal(provider, "API_TOKEN")
    assert isinstance(await fetch_one(provider, ref("PATH")), NotFound)


async def test_env_sees_later_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable set or changed after the provider was built is read at fetch time."""
    monkeypatch.delenv(PLAIN, raising=False)
    provider = create_provider(STORE, provider_config(tmp_path, {"type": "env"}))
    assert isinstance(await fetch_one(provider, ref(PLAIN)), NotFound)

    monkeypatch.setenv(PLAIN, "now-set")

    assert "now-set" == await reveal(provider, PLAIN)


async def test_env_empty_variable_is_found_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable set to the empty string is found, with an empty value."""
    monkeypatch.setenv(PLAIN, "")
    provider = EnvProvider(STORE, EnvProviderConfig())

    assert "" == await reveal(provider, PLAIN)


# -- types whose store module has not landed yet -----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "aws", "region": "eu-west-1"},
        {"type": "azure", "vault_url": "https://example.vault.azure.net"},
        {"type": "vault", "address": "https://vault:8200", "auth": {"method": "token"}},
    ],
    ids=["aws", "azure", "vault"],
)
def test_cloud_provider_types_not_built_yet_are_named(tmp_path: Path, raw: dict[str, Any]) -> None:
    """A store type whose module is not in this version raises ProviderSetupError naming it
    (skipped once the type's module exists)."""
    if importlib.util.find_spec(f"smagent.providers.{raw['type']}") is not None:
        pytest.skip(f"the {raw['type']} provider exists")
    config = provider_config(tmp_path, raw)

    with pytest.raises(ProviderSetupError) as info:
        create_provider(STORE, config)

    assert STORE == info.value.name
    assert (
        f"providers.{STORE}: provider type {raw['type']!r} is not available in this version yet"
    ) == str(info.value)


# -- SecretValue --------------------------------------------------------------------------------


def test_secret_value_hides_its_value_everywhere_but_reveal() -> None:
    """repr, str and __structlog__ are redacted; reveal() returns the value."""
    value = SecretValue(CANARY, version="v7")

    assert "SecretValue(<redacted>, version='v7')" == repr(value)
    assert "SecretValue(<redacted>, version='v7')" == str(value)
    assert f"{value}" == str(value)
    assert "<redacted>" == value.__structlog__()
    assert CANARY not in repr([value, {"k": value}])
    assert CANARY == value.reveal()
    assert False is value.is_binary


def test_binary_secret_value_hides_its_bytes() -> None:
    """A bytes SecretValue is binary, redacted in repr, and revealed as bytes."""
    value = SecretValue(CANARY.encode())

    assert "SecretValue(<redacted>, version=None)" == repr(value)
    assert True is value.is_binary
    assert CANARY.encode() == value.reveal()


def test_a_batch_error_given_to_each_ref_keeps_its_kind_and_retry_after() -> None:
    """for_ref: the same kind, words and retry_after, about another reference."""
    batch = Throttled(None, "Rate exceeded", retry_after=1.5)

    one = batch.for_ref(ref("prod/db"))

    assert isinstance(one, Throttled)
    assert (ref("prod/db"), "Rate exceeded", 1.5) == (one.ref, one.detail, one.retry_after)
    assert f"{STORE}:prod/db: Rate exceeded" == str(one)
    assert None is batch.ref


def test_secret_values_are_the_same_only_with_value_and_version() -> None:
    """same_as compares value and version (a refresh's question), never by repr."""
    assert SecretValue("a", "v1").same_as(SecretValue("a", "v1"))
    assert not SecretValue("a", "v1").same_as(SecretValue("a", "v2"))
    assert not SecretValue("a").same_as(SecretValue(b"a"))
