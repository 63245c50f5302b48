"""The vault provider against a local fake that speaks Vault's HTTP API (tests/fakes/vault.py)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import hvac.exceptions
import pytest
import trustme
import yaml

from smagent import config as cfg
from smagent.providers.base import (
    AccessDenied,
    NotFound,
    ProviderBug,
    ProviderError,
    SecretValue,
    Throttled,
    Unavailable,
    Unchanged,
)
from smagent.providers.retry import DEADLINE
from smagent.providers.vault import (
    _EXCEPTION_KINDS,
    VaultProvider,
    kind_of_status,
    translate_exception,
)
from smagent.references import SecretRef
from tests import leaks
from tests.conftest import CANARY, CANARY_USER, run_cli
from tests.fakes.vault import VaultFake, running

VAULT_TOKEN = leaks.plant("hvs.canary-vault-token-Qm3", "VAULT_TOKEN")
SECRET_ID = leaks.plant("canary-secret-id-8Kd", "SECRET_ID")
DB_PASSWORD = leaks.plant("canary-dbpass-Lw5", "DB_PASSWORD")
ROLE_ID = "role-1234"


def _fill(fake: VaultFake) -> VaultFake:
    fake.add_token(VAULT_TOKEN)
    fake.put_kv1("kv/app", {"password": CANARY, "user": CANARY_USER})
    fake.put_kv2("app", {"password": "old-not-canary"})
    fake.put_kv2("app", {"password": CANARY, "user": CANARY_USER})
    fake.db_roles["app"] = (30.0, 3600.0)
    fake.approles[ROLE_ID] = (SECRET_ID, "smagent")
    fake.password_prefix = DB_PASSWORD + "-"
    return fake


@pytest.fixture
def fake() -> Iterator[VaultFake]:
    with running(_fill(VaultFake())) as served:
        yield served


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-token"
    path.write_text(VAULT_TOKEN + "\n")
    path.chmod(0o600)
    leaks.allow_secrets_in(path)
    return path


def provider(
    fake: VaultFake, auth: cfg.VaultApproleAuth | cfg.VaultTokenAuth, **extra: Any
) -> VaultProvider:
    extra.setdefault("rate_limit", None)
    config = cfg.VaultProviderConfig(address=fake.url, auth=auth, **extra)
    return VaultProvider("vault", config)


def ref(path: str, version: str | None = None) -> SecretRef:
    return SecretRef("vault", path, version)


def fields(value: object) -> dict[str, Any]:
    assert isinstance(value, SecretValue), value
    text = value.reveal()
    assert isinstance(text, str)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait for something the fake observes (its requests arrive on another thread)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the fake never saw it"
        await asyncio.sleep(0.01)


# --- reads -----------------------------------------------------------------------------------


async def test_kv1_and_kv2_read_with_fields(fake: VaultFake, token_file: Path) -> None:
    """KV v1 and v2 secrets come back as JSON of their fields; KV v2 with its version."""
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app"), ref("secret/data/app")])
    assert {"password": CANARY, "user": CANARY_USER} == fields(found[ref("kv/app")])
    assert VAULT_TOKEN not in repr(vault)
    assert {"password": CANARY, "user": CANARY_USER} == fields(found[ref("secret/data/app")])
    assert "2" == found[ref("secret/data/app")].version  # type: ignore[union-attr]


async def test_kv2_given_version_and_cli_spelling(fake: VaultFake, token_file: Path) -> None:
    """A KV v2 version is read with ?version=N; `secret/app` is the same secret, read once."""
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch(
            [ref("secret/data/app", "1"), ref("secret/app"), ref("secret/data/app")]
        )
    assert {"password": "old-not-canary"} == fields(found[ref("secret/data/app", "1")])
    assert "1" == found[ref("secret/data/app", "1")].version  # type: ignore[union-attr]
    assert CANARY == fields(found[ref("secret/app")])["password"]
    assert found[ref("secret/app")] is found[ref("secret/data/app")]
    reads = fake.seen("secret/data/app")
    assert ["", "version=1"] == sorted(r.query for r in reads)


async def test_one_preflight_per_mount(fake: VaultFake, token_file: Path) -> None:
    """The KV version comes from one mount preflight per mount, not one per secret or pass."""
    for n in range(5):
        fake.put_kv2(f"team/s{n}", {"v": str(n)})
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        refs = [ref(f"secret/data/team/s{n}") for n in range(5)]
        await vault.fetch(refs)
        await vault.fetch([ref("kv/app"), *refs[:2]])
    assert 2 == len(fake.seen("sys/internal/ui/mounts/"))  # secret/ and kv/


async def test_not_found_version_and_stage_fail_clearly(fake: VaultFake, token_file: Path) -> None:
    """A missing path, a version on KV v1 and a stage are permanent errors naming the ref."""
    stage = SecretRef("vault", "secret/data/app", stage="AWSCURRENT")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("secret/data/nope"), ref("kv/app", "3"), stage])
    missing = found[ref("secret/data/nope")]
    assert isinstance(missing, NotFound)
    assert "vault:secret/data/nope: vault read: HTTP 404: no such path" == str(missing)
    assert isinstance(found[ref("kv/app", "3")], NotFound)
    assert "KV v1 keeps no versions" in str(found[ref("kv/app", "3")])
    assert "no staging labels" in str(found[stage])
    assert 1 == len(fake.seen("secret/data/nope"))


def test_canonical_strips_redundant_slashes(tmp_path: Path) -> None:
    """`/secret//data/app/` and `secret/data/app` are one secret."""
    config = cfg.VaultProviderConfig(address="http://127.0.0.1:1", auth=cfg.VaultTokenAuth())
    vault = VaultProvider("vault", config)
    assert ref("secret/data/app", "2") == vault.canonical(ref("/secret//data/app/", "2"))


# --- auth ------------------------------------------------------------------------------------


def approle(tmp_path: Path) -> cfg.VaultApproleAuth:
    secret_id = tmp_path / "secret-id"
    secret_id.write_text(SECRET_ID)
    secret_id.chmod(0o600)
    leaks.allow_secrets_in(secret_id)
    return cfg.VaultApproleAuth(role_id=ROLE_ID, secret_id_file=str(secret_id))


async def test_approle_login_once_and_token_used(fake: VaultFake, tmp_path: Path) -> None:
    """AppRole logs in once per provider; the token it gets reads the secrets."""
    async with provider(fake, approle(tmp_path)) as vault:
        found = await vault.fetch([ref("kv/app"), ref("secret/data/app")])
        await vault.fetch([ref("secret/data/app", "1")])
    assert CANARY == fields(found[ref("kv/app")])["password"]
    assert 1 == len(fake.seen("auth/approle/login"))


async def test_approle_login_takes_its_own_limits_slot(fake: VaultFake, tmp_path: Path) -> None:
    """At max_concurrency 1 the login is a request of its own, never nested in the read's slot
    (which would wait for itself)."""
    async with provider(fake, approle(tmp_path), max_concurrency=1) as vault:
        async with asyncio.timeout(5):
            found = await vault.fetch([ref("kv/app"), ref("secret/data/app")])
    assert CANARY == fields(found[ref("kv/app")])["password"]
    assert CANARY == fields(found[ref("secret/data/app")])["password"]
    assert 1 == len(fake.seen("auth/approle/login"))


async def test_approle_bad_secret_id_is_access_denied(fake: VaultFake, tmp_path: Path) -> None:
    """A refused login fails every reference at once with Vault's words."""
    fake.approles[ROLE_ID] = ("another-secret-id", "smagent")
    async with provider(fake, approle(tmp_path)) as vault:
        found = await vault.fetch([ref("kv/app")])
    assert isinstance(found[ref("kv/app")], AccessDenied)
    assert "invalid role or secret ID" in str(found[ref("kv/app")])


async def test_token_renewed_then_relogin_when_refused(fake: VaultFake, tmp_path: Path) -> None:
    """The token is renewed at 2/3 of its TTL; when renewal is refused, AppRole logs in again."""
    fake.approle_token_ttl = 1.0
    async with provider(fake, approle(tmp_path)) as vault:
        await vault.fetch([ref("kv/app")])
        await until(lambda: 1 <= len(fake.seen("auth/token/renew-self")), 3)
        assert 1 == len(fake.seen("auth/approle/login"))
        fake.renew_refused = True
        await until(lambda: 2 <= len(fake.seen("auth/approle/login")), 3)
        found = await vault.fetch([ref("kv/app")])
    assert CANARY == fields(found[ref("kv/app")])["password"]
    logins = [r.at for r in fake.seen("auth/approle/login")]
    renewals = [r.at for r in fake.seen("auth/token/renew-self")]
    assert 0.5 < renewals[0] - logins[0] < 0.9  # 2/3 of a 1 s TTL
    assert 0 < logins[1] - renewals[-1] < 0.2  # at once, not when the token runs out


async def test_given_token_looked_up_then_renewed(tmp_path: Path) -> None:
    """A token from a file: lookup-self learns its TTL, renew-self keeps it at 2/3 of it."""
    with running(_fill(VaultFake())) as fake:
        path = tmp_path / "short-token"
        path.write_text("hvs.short-lived")
        fake.add_token("hvs.short-lived", ttl=1.0)
        async with provider(fake, cfg.VaultTokenAuth(token_file=str(path))) as vault:
            await asyncio.sleep(0.1)  # what a renewal task started at once would have sent
            assert [] == fake.requests  # opening sends nothing
            await vault.fetch([ref("kv/app")])
            await until(lambda: 2 <= len(fake.seen("auth/token/renew-self")), 3)
    lookup = fake.seen("auth/token/lookup-self")
    renewals = [r.at for r in fake.seen("auth/token/renew-self")]
    assert 1 == len(lookup)
    assert 0.5 < renewals[0] - lookup[0].at < 0.9
    assert 0.5 < renewals[1] - renewals[0] < 0.9


async def test_missing_token_file_is_a_clear_error(fake: VaultFake, tmp_path: Path) -> None:
    """A token file that cannot be read fails the references, naming the file."""
    auth = cfg.VaultTokenAuth(token_file=str(tmp_path / "missing"))
    async with provider(fake, auth) as vault:
        found = await vault.fetch([ref("kv/app")])
    assert isinstance(found[ref("kv/app")], AccessDenied)
    assert f"auth.token_file {tmp_path / 'missing'}: cannot read it" in str(found[ref("kv/app")])


async def test_fifo_as_token_file_is_refused_without_blocking(
    fake: VaultFake, tmp_path: Path
) -> None:
    """A FIFO at token_file is refused at once (the read is on the event loop), naming it."""
    pipe = tmp_path / "token"
    os.mkfifo(pipe)
    auth = cfg.VaultTokenAuth(token_file=str(pipe))
    started = time.monotonic()
    async with provider(fake, auth) as vault:
        found = await asyncio.wait_for(vault.fetch([ref("kv/app")]), 5)
    assert 2 > time.monotonic() - started
    assert isinstance(found[ref("kv/app")], AccessDenied)
    assert f"auth.token_file {pipe}: cannot read it (not a regular file)" in str(
        found[ref("kv/app")]
    )


async def test_namespace_header_sent(tmp_path: Path, token_file: Path) -> None:
    """`namespace` goes in X-Vault-Namespace on every request; without it Vault denies."""
    with running(_fill(VaultFake(namespace="team-a"))) as fake:
        auth = cfg.VaultTokenAuth(token_file=str(token_file))
        async with provider(fake, auth, namespace="team-a") as vault:
            found = await vault.fetch([ref("kv/app")])
        async with provider(fake, auth) as vault:
            denied = await vault.fetch([ref("kv/app")])
    assert CANARY == fields(found[ref("kv/app")])["password"]
    assert isinstance(denied[ref("kv/app")], AccessDenied)
    assert {"team-a", None} == {r.namespace for r in fake.requests}


# --- dynamic secrets and leases ----------------------------------------------------------


async def test_database_creds_with_lease(fake: VaultFake, token_file: Path) -> None:
    """database/creds gives username/password with a lease; look again at 2/3 of its TTL."""
    before = time.time()
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("database/creds/app")])
    value = found[ref("database/creds/app")]
    assert isinstance(value, SecretValue)
    assert {"username", "password"} == set(fields(value))
    assert value.lease is not None
    assert value.lease.renewable
    assert 30.0 == value.lease.duration_s
    assert value.lease.lease_id.startswith("database/creds/app/")
    assert value.check_after is not None
    assert before + 19 < value.check_after < time.time() + 21
    assert 1 == fake.users_created


async def test_lease_renewed_then_replaced_near_max_ttl(fake: VaultFake, token_file: Path) -> None:
    """refresh renews a lease (Unchanged); near max_ttl or when renewal fails, new creds."""
    fake.db_roles["app"] = (30.0, 50.0)
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        first = (await vault.fetch([ref("database/creds/app")]))[ref("database/creds/app")]
        assert isinstance(first, SecretValue)
        renewed = await vault.refresh({ref("database/creds/app"): first})
        assert isinstance(renewed[ref("database/creds/app")], Unchanged)
        assert 1 == fake.users_created
        fake.leases[first.lease.lease_id].max_expires = time.time() + 5  # type: ignore[union-attr]
        replaced = await vault.refresh({ref("database/creds/app"): first})
        second = replaced[ref("database/creds/app")]
        assert isinstance(second, SecretValue)
        assert fields(first)["username"] != fields(second)["username"]
        fake.leases.clear()  # revoked behind our back: renewal fails, replace
        third = (await vault.refresh({ref("database/creds/app"): second}))[
            ref("database/creds/app")
        ]
    assert isinstance(third, SecretValue)
    assert 3 == fake.users_created
    assert 3 == len(fake.seen("sys/leases/renew"))


async def test_kv_refresh_checks_metadata_version(fake: VaultFake, token_file: Path) -> None:
    """KV v2 refresh reads only the metadata while the version holds; a new version is read."""
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        known = await vault.fetch([ref("secret/data/app"), ref("kv/app")])
        values = {r: v for r, v in known.items() if isinstance(v, SecretValue)}
        same = await vault.refresh(values)
        fake.put_kv2("app", {"password": "rotated-not-canary"})
        moved = await vault.refresh(values)
    assert isinstance(same[ref("secret/data/app")], Unchanged)
    assert isinstance(same[ref("kv/app")], Unchanged)
    assert {"password": "rotated-not-canary"} == fields(moved[ref("secret/data/app")])
    assert 2 == len(fake.seen("secret/metadata/app"))
    assert 2 == len(fake.seen("secret/data/app"))  # the first fetch and the rotated one


# --- faults and limits -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_throttled_and_sealed_are_retried(
    fake: VaultFake, token_file: Path, status: int
) -> None:
    """429 (rate-limit quota) and 503 (sealed) are retried with backoff, then succeed."""
    fake.fail_next(status, 2, paths="kv/")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app")])
    assert CANARY == fields(found[ref("kv/app")])["password"]
    assert 3 == len(fake.seen("kv/app"))


async def test_retry_after_honoured_briefly(fake: VaultFake, token_file: Path) -> None:
    """A short Retry-After is waited for; a long one comes back at once with retry_after."""
    fake.fail_next(429, 1, paths="kv/app", retry_after="1")
    fake.fail_next(429, 1, paths="kv/other", retry_after="30")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app"), ref("kv/other")])
    first, second = fake.seen("kv/app")
    assert 1.0 <= second.at - first.at < 1.5
    assert CANARY == fields(found[ref("kv/app")])["password"]
    long_wait = found[ref("kv/other")]
    assert isinstance(long_wait, Throttled)
    assert 30.0 == long_wait.retry_after
    assert 1 == len(fake.seen("kv/other"))


async def test_retry_after_past_the_deadline_goes_back_at_once(
    fake: VaultFake, token_file: Path
) -> None:
    """A Retry-After that ends past the pass's deadline, or a very long one, is not waited
    for: Throttled at once, carrying the store's wait for the agent."""
    fake.fail_next(429, 1, paths="kv/app", retry_after="3")
    fake.fail_next(429, 1, paths="kv/other", retry_after="120")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        started = time.monotonic()
        token = DEADLINE.set(asyncio.get_running_loop().time() + 2.0)
        try:
            found = await vault.fetch([ref("kv/app"), ref("kv/other")])
        finally:
            DEADLINE.reset(token)
        took = time.monotonic() - started
    for path, wait in (("kv/app", 3.0), ("kv/other", 120.0)):
        error = found[ref(path)]
        assert isinstance(error, Throttled), error
        assert wait == error.retry_after
        assert 1 == len(fake.seen(path))
    assert took < 1.5


async def test_unmounted_path_and_sealed_preflight(fake: VaultFake, token_file: Path) -> None:
    """A path under no mount is denied with Vault's preflight words and the ref; a sealed
    Vault is asked about mounts once per pass, not once per secret."""
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("nomount/app")])
        fake.fail_next(503, 1000, paths="sys/internal/ui/mounts/")
        sealed = await vault.fetch([ref(f"other{n}/app") for n in range(5)])
    assert isinstance(found[ref("nomount/app")], AccessDenied)
    assert (
        "vault:nomount/app: vault mount of 'nomount/app': HTTP 403: preflight capability check "
        'returned 403, please ensure client\'s policies grant access to path "nomount/app/"'
    ) == str(found[ref("nomount/app")])
    for n in range(5):
        assert isinstance(sealed[ref(f"other{n}/app")], Unavailable)
        assert str(ref(f"other{n}/app")) in str(sealed[ref(f"other{n}/app")])
    assert 1 + 4 == len(fake.seen("sys/internal/ui/mounts/"))  # nomount, then one sealed try x4


async def test_retries_end_with_the_transient_kind(fake: VaultFake, token_file: Path) -> None:
    """A store that stays sealed yields Unavailable with Vault's words after a few tries."""
    fake.fail_next(503, 100, paths="kv/")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app")])
    assert isinstance(found[ref("kv/app")], Unavailable)
    assert "vault:kv/app: vault read: HTTP 503: Vault is sealed" == str(found[ref("kv/app")])
    assert 4 == len(fake.seen("kv/app"))


async def test_permission_denied_fails_fast(fake: VaultFake, token_file: Path) -> None:
    """403 is permanent: one request, Vault's words and the reference in the error."""
    fake.deny.add("kv/app")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app")])
    error = found[ref("kv/app")]
    assert isinstance(error, AccessDenied)
    assert "vault:kv/app: vault read: HTTP 403: 1 error occurred: * permission denied" == str(error)
    assert 1 == len(fake.seen("kv/app"))


async def test_error_body_that_is_not_json_is_not_quoted(fake: VaultFake, token_file: Path) -> None:
    """A proxy's error page (which could echo anything) is never quoted: status and kind only."""
    fake.fail_next(502, 100, message=f"<html>{CANARY}</html>", paths="kv/", html=True)
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app")])
    assert isinstance(found[ref("kv/app")], Unavailable)
    assert "vault:kv/app: vault read: HTTP 502: no reason given" == str(found[ref("kv/app")])


async def test_redirect_is_not_followed(fake: VaultFake, token_file: Path) -> None:
    """A 307 to another node is not followed: the token goes to `address` only."""
    fake.fail_next(307, 100, paths="kv/")
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app")])
    error = found[ref("kv/app")]
    assert isinstance(error, Unavailable)
    assert "HTTP 307: a redirect, not followed" in str(error)


async def test_rate_limit_holds_at_the_server(fake: VaultFake, token_file: Path) -> None:
    """At most rate_limit requests in any sliding 1 s window, measured at the fake."""
    for n in range(12):
        fake.put_kv1(f"kv/s{n}", {"v": str(n)})
    auth = cfg.VaultTokenAuth(token_file=str(token_file))
    async with provider(fake, auth, rate_limit=8) as vault:
        await vault.fetch([ref(f"kv/s{n}") for n in range(12)])
    times = sorted(r.at for r in fake.requests)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert 14 == len(times)  # lookup-self, one preflight, 12 reads
    assert busiest <= 8


def test_status_and_exception_table() -> None:
    """Every status and every aiohttp exception we can meet maps to one of our kinds."""
    assert NotFound is kind_of_status(404)
    assert AccessDenied is kind_of_status(403)
    assert Throttled is kind_of_status(429)
    assert Unavailable is kind_of_status(503)
    assert Unavailable is kind_of_status(599)
    assert ProviderBug is kind_of_status(418)

    def subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
        return {cls}.union(*(subclasses(c) for c in cls.__subclasses__()))

    for cls in subclasses(aiohttp.ClientError):
        if cls.__module__.startswith("aiohttp"):
            assert any(issubclass(cls, known) for known, _, _ in _EXCEPTION_KINDS), cls
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
        ConnectionRefusedError(111, "Connection refused"),
    )
    error = translate_exception(refused, ref("kv/a"), "read")
    assert isinstance(error, Unavailable)
    assert "vault:kv/a: vault read: cannot connect (Connection refused)" == str(error)
    assert isinstance(translate_exception(ValueError("x"), None, "read"), ProviderBug)


async def test_server_down_is_unavailable(token_file: Path) -> None:
    """No server at the address: Unavailable, after brief retries."""
    fake = VaultFake()
    with running(fake):
        url = fake.url
    fake.url = url
    async with provider(fake, cfg.VaultTokenAuth(token_file=str(token_file))) as vault:
        found = await vault.fetch([ref("kv/app")])
    assert isinstance(found[ref("kv/app")], Unavailable)
    assert "cannot connect" in str(found[ref("kv/app")])


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1: (server cert+key PEM, CA PEM)."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    pem = tmp_path / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return pem, ca_pem


async def test_tls_needs_the_configured_ca(tls: tuple[Path, Path], token_file: Path) -> None:
    """Over HTTPS, a CA that is not configured is refused with advice; ca_cert makes it work."""
    pem, ca_pem = tls
    auth = cfg.VaultTokenAuth(token_file=str(token_file))
    with running(_fill(VaultFake()), tls=pem) as fake:
        async with provider(fake, auth) as vault:
            refused = await vault.fetch([ref("kv/app")])
        async with provider(fake, auth, ca_cert=str(ca_pem)) as vault:
            found = await vault.fetch([ref("kv/app")])
    error = refused[ref("kv/app")]
    assert isinstance(error, AccessDenied)
    assert "certificate is not trusted" in str(error)
    assert "set ca_cert" in str(error)
    assert CANARY == fields(found[ref("kv/app")])["password"]


# --- the CLI, end to end -----------------------------------------------------------------


def write_config(tmp_path: Path, fake: VaultFake, token_file: Path, templates: int) -> Path:
    config = {
        "providers": {"vault": {"type": "vault", "address": fake.url, "auth": {"method": "token"}}},
        "namespaces": {
            "app": {"provider": "vault", "secret": "secret/data/app"},
            "pg": {"provider": "vault", "secret": "database/creds/app"},
        },
        "defaults": {"fetch_timeout": "5s"},
        "templates": [],
    }
    config["providers"]["vault"]["auth"]["token_file"] = str(token_file)  # type: ignore[index]
    for n in range(templates):
        source = tmp_path / f"t{n}.j2"
        source.write_text(
            "user={{ secrets.pg.username }} pass={{ secrets.pg.password }}"
            " app={{ secrets.app.password }}\n"
        )
        destination = tmp_path / "out" / f"t{n}.conf"
        leaks.allow_secrets_in(destination)
        config["templates"].append(  # type: ignore[attr-defined]
            {"source": str(source), "destination": str(destination)}
        )
    path = tmp_path / "smagent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_render_once_one_database_user_for_all_templates(
    fake: VaultFake, token_file: Path, tmp_path: Path
) -> None:
    """`render --once` with three templates using dynamic creds creates one database user."""
    created: list[str] = []
    fake.on_user_created = lambda user, _password: created.append(user)
    (tmp_path / "out").mkdir()
    run = run_cli("--config", write_config(tmp_path, fake, token_file, 3), "render", "--once")
    assert 0 == run.returncode, run.stderr
    texts = {(tmp_path / "out" / f"t{n}.conf").read_text() for n in range(3)}
    assert 1 == len(texts)
    assert f"user={created[0]} " in texts.pop()
    assert 1 == len(created)
    assert 1 == len(fake.seen("database/creds/app"))
    assert 1 == len(fake.seen("secret/data/app"))


def test_test_connection_looks_up_the_token(
    fake: VaultFake, token_file: Path, tmp_path: Path
) -> None:
    """test-connection is ok with a good token and fails (exit 1) with Vault's words otherwise."""
    config = write_config(tmp_path, fake, token_file, 0)
    ok = run_cli("--config", config, "test-connection")
    assert 0 == ok.returncode, ok.stderr
    assert fake.seen("auth/token/lookup-self")
    fake.tokens.clear()
    bad = run_cli("--config", config, "test-connection")
    assert 1 == bad.returncode
    assert "permission denied" in bad.stdout + bad.stderr


def test_unusable_ca_cert_is_a_setup_error(
    fake: VaultFake, token_file: Path, tmp_path: Path
) -> None:
    """A ca_cert that is not a PEM CA stops the run before anything is written (exit 2)."""
    config_path = write_config(tmp_path, fake, token_file, 1)
    config = yaml.safe_load(config_path.read_text())
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    config["providers"]["vault"]["ca_cert"] = str(tmp_path / "ca.pem")
    config_path.write_text(yaml.safe_dump(config))
    run = run_cli("--config", config_path, "render", "--once")
    assert 2 == run.returncode
    assert f"providers.vault: ca_cert {tmp_path / 'ca.pem'}: cannot use it" in run.stderr
    assert [] == fake.requests


# --- the fake answers as Vault does (hvac, test-only) ------------------------------------


def test_fake_speaks_vault_to_hvac(fake: VaultFake) -> None:
    """hvac reads KV v1/v2, logs in with AppRole, gets creds, and sees Vault's errors."""
    client = hvac.Client(url=fake.url, token=VAULT_TOKEN)
    assert client.is_authenticated()
    v2 = client.secrets.kv.v2.read_secret_version(
        "app", mount_point="secret", version=1, raise_on_deleted_version=True
    )
    assert {"password": "old-not-canary"} == v2["data"]["data"]
    assert 1 == v2["data"]["metadata"]["version"]
    meta = client.secrets.kv.v2.read_secret_metadata("app", mount_point="secret")
    assert 2 == meta["data"]["current_version"]
    assert CANARY_USER == client.secrets.kv.v1.read_secret("app", mount_point="kv")["data"]["user"]
    creds = client.secrets.database.generate_credentials("app")
    assert creds["lease_id"]
    assert creds["renewable"]
    assert 30 == creds["lease_duration"]
    renewed = client.sys.renew_lease(creds["lease_id"], increment=10)
    assert 10 == renewed["lease_duration"]
    client.sys.revoke_lease(creds["lease_id"])
    login = hvac.Client(url=fake.url).auth.approle.login(ROLE_ID, SECRET_ID)
    assert login["auth"]["client_token"].startswith("hvs.")
    assert 60 == login["auth"]["lease_duration"]
    assert 3600 == client.auth.token.lookup_self()["data"]["ttl"]
    assert client.auth.token.renew_self()["auth"]["renewable"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role or secret ID"):
        hvac.Client(url=fake.url).auth.approle.login(ROLE_ID, "wrong")
    fake.deny.add("kv/app")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v1.read_secret("app", mount_point="kv")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version(
            "nope", mount_point="secret", raise_on_deleted_version=True
        )
    fake.fail_next(429)
    with pytest.raises(hvac.exceptions.RateLimitExceeded):
        client.secrets.kv.v2.read_secret_metadata("app", mount_point="secret")
    fake.fail_next(503)
    with pytest.raises(hvac.exceptions.VaultDown, match="Vault is sealed"):
        client.secrets.kv.v2.read_secret_metadata("app", mount_point="secret")


def test_provider_error_kinds_are_ours() -> None:
    """The kinds the table yields are the base set's (no aiohttp type escapes the module)."""
    for _, kind, _ in _EXCEPTION_KINDS:
        assert issubclass(kind, ProviderError)
