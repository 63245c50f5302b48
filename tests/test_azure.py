"""The `azure` provider against a local HTTPS Key Vault, driven by the real azure SDK.

The fake (tests/fakes/keyvault.py) speaks the vault's REST API with its 401
challenge, and Entra ID's and App Service's token endpoints, so the real
`SecretClient`, `ClientSecretCredential` and `ManagedIdentityCredential` run
unchanged. Every secret value in the vault is a canary.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.core.exceptions as azure_exceptions
import msgspec
import pytest
import trustme
import yaml
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets._shared import http_challenge_cache

from smagent.config import AzureProviderConfig, ConfigError, load_config
from smagent.providers import ProviderSetupError, create_provider
from smagent.providers.azure import AzureProvider, _kind_of, translate
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
from smagent.references import SecretRef
from tests import leaks
from tests.conftest import Workspace
from tests.fakes.keyvault import Canned, KeyVaultFake, running_vault

KV_CANARY = leaks.plant("canary-kv-Vb72-value", "KV_CANARY")
KV_CANARY_OLD = leaks.plant("canary-kv-old-Lm30", "KV_CANARY_OLD")
CLIENT_SECRET = leaks.plant("canary-kv-client-secret-Rt55", "CLIENT_SECRET")
TENANT = "tenant-1"
CLIENT_ID = "app-1"


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[KeyVaultFake]:
    # The SDK keeps each vault's challenge per host:port for the whole process: a port an
    # earlier test's fake used would skip the challenge that these tests count.
    http_challenge_cache.clear()
    with running_vault(tmp_path, tenant=TENANT) as fake:
        fake.clients[CLIENT_ID] = CLIENT_SECRET
        yield fake


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "kv-client-secret"
    path.write_text(CLIENT_SECRET + "\n")
    path.chmod(0o600)
    leaks.allow_secrets_in(path)
    return path


def settings(fake: KeyVaultFake, secret_file: Path, **overrides: Any) -> AzureProviderConfig:
    fields: dict[str, Any] = {
        "type": "azure",
        "vault_url": fake.url,
        "credential": "client_secret",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "authority_host": fake.url,
        "ca_cert": str(fake.ca_path),
        "verify_challenge_resource": False,
        "rate_limit": None,
        **overrides,
    }
    return msgspec.convert({k: v for k, v in fields.items() if v is not None}, AzureProviderConfig)


def ref(name: str, version: str | None = None, stage: str | None = None) -> SecretRef:
    return SecretRef("kv", name, version, stage)


async def fetch_one(provider: AzureProvider, wanted: SecretRef) -> Any:
    return (await provider.fetch([wanted]))[wanted]


# --- reading -------------------------------------------------------------------------------------


async def test_challenge_then_token_then_latest_value(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """The bare first request gets the 401 challenge, one token is fetched, the latest is read."""
    vault.put("db-pass", KV_CANARY_OLD)
    latest = vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        first = await fetch_one(provider, ref("db-pass"))
        second = await fetch_one(provider, ref("db-pass"))
    assert isinstance(first, SecretValue)
    assert KV_CANARY == first.reveal()
    assert latest == first.version
    assert latest == second.version
    assert [401, 200, 200] == [seen.status for seen in vault.requests]
    assert [TENANT] == [t["tenant"] for t in vault.token_requests]


async def test_a_given_version(vault: KeyVaultFake, secret_file: Path) -> None:
    """A pinned version reads that version, not the latest."""
    old = vault.put("db-pass", KV_CANARY_OLD)
    vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        value = await fetch_one(provider, ref("db-pass", version=old))
    assert KV_CANARY_OLD == value.reveal()
    assert old == value.version
    assert f"/secrets/db-pass/{old}" == vault.vault_reads()[-1].path


async def test_store_namespace_name_case_is_one_secret(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """Names are case-insensitive: every spelling has one canonical ref, read with one request."""
    vault.put("DB-Pass", KV_CANARY)
    provider = AzureProvider("kv", settings(vault, secret_file))
    spellings = [ref("DB-Pass"), ref("db-pass"), ref("DB-PASS")]
    canonical = {provider.canonical(r) for r in spellings}
    assert {ref("db-pass")} == canonical
    async with provider:
        found = await provider.fetch(sorted(canonical, key=str))
    assert KV_CANARY == found[ref("db-pass")].reveal()  # type: ignore[union-attr]
    assert 1 == len(vault.vault_reads())


async def test_names_the_vault_cannot_hold_are_refused_without_a_request(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """A name with `_` or `/`, or a stage, fails at once with what Key Vault accepts."""
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        found = await provider.fetch(
            [ref("db_pass"), ref("../keys/x"), ref("db-pass", stage="AWSCURRENT")]
        )
    assert "letters, digits and dashes" in str(found[ref("db_pass")])
    assert isinstance(found[ref("../keys/x")], NotFound)
    assert "no staging labels" in str(found[ref("db-pass", stage="AWSCURRENT")])
    assert [] == vault.requests


# --- errors ------------------------------------------------------------------------------------


async def test_not_found_fails_fast_naming_the_reference(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """A missing secret is NotFound at once (no retry), in the vault's words, naming the ref."""
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        error = await fetch_one(provider, ref("missing"))
    assert isinstance(error, NotFound)
    assert str(error).startswith("kv:missing: ")
    assert "404 SecretNotFound: A secret with (name/id) missing was not found" in str(error)
    assert 1 == len(vault.vault_reads())


async def test_forbidden_is_access_denied(vault: KeyVaultFake, secret_file: Path) -> None:
    """A 403 (no role on the vault) is AccessDenied at once, with the vault's message."""
    vault.put("db-pass", KV_CANARY)
    vault.denied.add("db-pass")
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        error = await fetch_one(provider, ref("db-pass"))
    assert isinstance(error, AccessDenied)
    assert "403 Forbidden: Caller is not authorized" in str(error)
    assert 1 == len(vault.vault_reads())


async def test_disabled_secret_is_access_denied_saying_so(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """A disabled secret fails as AccessDenied naming SecretDisabled."""
    vault.put("db-pass", KV_CANARY, enabled=False)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        error = await fetch_one(provider, ref("db-pass"))
    assert isinstance(error, AccessDenied)
    assert "Forbidden/SecretDisabled: Operation get is not allowed on a disabled secret" in str(
        error
    )


async def test_expiry_sets_check_after_and_an_expired_secret_is_still_served(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """A future expiry is when to look again; an expired secret is served (Key Vault serves it)."""
    soon = time.time() + 3600
    vault.put("future", KV_CANARY, expires=soon)
    vault.put("past", KV_CANARY_OLD, expires=time.time() - 60)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        future = await fetch_one(provider, ref("future"))
        past = await fetch_one(provider, ref("past"))
    assert int(soon) == future.check_after
    assert KV_CANARY_OLD == past.reveal()
    assert None is past.check_after


async def test_throttling_is_retried_honouring_retry_after(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """Two 429s with Retry-After: 0.3 are waited out, then the read succeeds."""
    vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        await fetch_one(provider, ref("db-pass"))  # the challenge, out of the way
        vault.fail_next(429, "Throttled", count=2, retry_after="0.3")
        value = await fetch_one(provider, ref("db-pass"))
    assert KV_CANARY == value.reveal()
    reads = vault.vault_reads()[-3:]
    assert [429, 429, 200] == [seen.status for seen in reads]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(reads)]
    assert all(gap >= 0.28 for gap in gaps), gaps


async def test_throttling_past_the_attempts_is_throttled_with_retry_after(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """A vault that keeps answering 429 gives Throttled carrying its Retry-After."""
    vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        await fetch_one(provider, ref("db-pass"))
        vault.fail_next(429, "Throttled", count=4, retry_after="0.01")
        error = await fetch_one(provider, ref("db-pass"))
    assert isinstance(error, Throttled)
    assert 0.01 == error.retry_after
    assert 4 == sum(1 for seen in vault.requests if seen.status == 429)  # ours only, not stacked
    assert "429 Throttled" in str(error)


async def test_unavailable_is_retried_then_succeeds(vault: KeyVaultFake, secret_file: Path) -> None:
    """A 503 is transient: retried with backoff, no Retry-After needed."""
    vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        await fetch_one(provider, ref("db-pass"))
        vault.fail_next(503, "ServiceUnavailable", count=1)
        value = await fetch_one(provider, ref("db-pass"))
    assert KV_CANARY == value.reveal()


async def test_a_vault_not_listening_is_unavailable(tmp_path: Path, secret_file: Path) -> None:
    """Nothing listening on the vault's port: Unavailable, naming the vault."""
    with running_vault(tmp_path, tenant=TENANT) as fake:
        config = settings(fake, secret_file)
    async with AzureProvider("kv", config) as provider:
        error = await fetch_one(provider, ref("db-pass"))
    assert isinstance(error, Unavailable)
    assert fake.url in str(error)


async def test_tls_certificate_from_another_ca_is_refused(
    tmp_path: Path, secret_file: Path
) -> None:
    """TLS verification is on: a vault whose certificate another CA signed is refused clearly."""
    (tmp_path / "other").mkdir()
    with running_vault(tmp_path / "other", tenant=TENANT, ca=trustme.CA()) as fake:
        ours = trustme.CA()
        ours.cert_pem.write_to_path(str(tmp_path / "ours.pem"))
        fake.put("db-pass", KV_CANARY)
        config = settings(fake, secret_file, ca_cert=str(tmp_path / "ours.pem"))
        async with AzureProvider("kv", config) as provider:
            error = await fetch_one(provider, ref("db-pass"))
        assert [] == [seen for seen in fake.requests if seen.status]
    assert isinstance(error, Unavailable)
    assert "TLS certificate" in str(error)
    assert "not trusted" in str(error)
    assert "set ca_cert" in str(error)


# --- credentials -------------------------------------------------------------------------------


async def test_managed_identity_credential_with_a_client_id(
    vault: KeyVaultFake, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ManagedIdentityCredential gets its token at IDENTITY_ENDPOINT, for the client id."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", vault.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", vault.identity_header)
    vault.put("db-pass", KV_CANARY)
    config = settings(
        vault,
        secret_file,
        credential="managed_identity",
        client_id="user-assigned-1",
        tenant_id=None,
        client_secret_file=None,
        authority_host=None,
    )
    async with AzureProvider("kv", config) as provider:
        value = await fetch_one(provider, ref("db-pass"))
    assert KV_CANARY == value.reveal()
    assert [
        {
            "kind": "managed_identity",
            "resource": "https://vault.azure.net",
            "client_id": "user-assigned-1",
        }
    ] == vault.token_requests


async def test_a_wrong_client_secret_is_access_denied(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """Entra ID refusing the client secret is AccessDenied with its AADSTS code, no secret."""
    vault.clients[CLIENT_ID] = "another-secret"
    vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        error = await fetch_one(provider, ref("db-pass"))
        with pytest.raises(AccessDenied):
            await provider.test_connection()
    assert isinstance(error, AccessDenied)
    assert "AADSTS7000215" in str(error)
    assert [] == vault.vault_reads()


async def test_a_refused_credential_asks_entra_id_once_per_batch(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """Ten secrets and a refused client secret: one token request, ten AccessDenied."""
    vault.clients[CLIENT_ID] = "another-secret"
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        found = await provider.fetch([ref(f"s{i}") for i in range(10)])
    assert all(isinstance(v, AccessDenied) and "AADSTS7000215" in str(v) for v in found.values())
    assert 1 == len(vault.token_requests)


async def test_test_connection_passes_on_a_vault_without_that_name(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """test_connection authenticates and reads one name; not found means the vault works."""
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        await provider.test_connection()
    assert ["smagent-connection-test"] == [seen.name for seen in vault.vault_reads()]


def test_an_unreadable_client_secret_file_is_a_setup_error(tmp_path: Path) -> None:
    """A missing or empty client_secret_file fails at construction, naming the file."""
    config = msgspec.convert(
        {
            "type": "azure",
            "vault_url": "https://kv.vault.azure.net",
            "credential": "client_secret",
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret_file": str(tmp_path / "nope"),
        },
        AzureProviderConfig,
    )
    with pytest.raises(ProviderSetupError, match=r"cannot read client_secret_file .*nope"):
        create_provider("kv", config)
    (tmp_path / "nope").write_text("\n")
    with pytest.raises(ProviderSetupError, match="is empty"):
        create_provider("kv", config)


def test_repr_holds_no_credential(vault: KeyVaultFake, secret_file: Path) -> None:
    """repr(provider) names the vault and credential type, never the client secret."""
    provider = AzureProvider("kv", settings(vault, secret_file))
    text = repr(provider)
    assert vault.url in text
    leaks.assert_no_leak(text, "repr of the provider")


# --- refresh -----------------------------------------------------------------------------------


async def test_refresh_reads_latest_once_each_and_never_a_pinned_version(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """refresh: Unchanged for the same version, the new value once rotated, no read when pinned."""
    first = vault.put("a", KV_CANARY_OLD)
    vault.put("b", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        known = dict(await provider.fetch([ref("a"), ref("b"), ref("a", version=first)]))
        rotated = vault.put("a", KV_CANARY)
        before = len(vault.vault_reads())
        answers = await provider.refresh(known)  # type: ignore[arg-type]
    assert 2 == len(vault.vault_reads()) - before
    assert isinstance(answers[ref("b")], Unchanged)
    assert isinstance(answers[ref("a", version=first)], Unchanged)
    new = answers[ref("a")]
    assert isinstance(new, SecretValue)
    assert rotated == new.version


# --- limits ------------------------------------------------------------------------------------


async def test_rate_limit_holds_at_the_vault(vault: KeyVaultFake, secret_file: Path) -> None:
    """rate_limit 10: no sliding 1 s window at the vault holds more than 10 requests."""
    names = [f"s{i}" for i in range(15)]
    for name in names:
        vault.put(name, KV_CANARY)
    config = settings(vault, secret_file, rate_limit=10.0, max_concurrency=5)
    async with AzureProvider("kv", config) as provider:
        found = await provider.fetch([ref(name) for name in names])
    assert all(isinstance(v, SecretValue) for v in found.values())
    times = sorted(seen.at for seen in vault.requests)
    assert 16 == len(times)  # the challenge's bare request counts too
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 10, busiest


async def test_max_concurrency_holds_at_the_vault(vault: KeyVaultFake, secret_file: Path) -> None:
    """max_concurrency 2: the vault never has more than 2 requests in flight."""
    for i in range(6):
        vault.put(f"s{i}", KV_CANARY)
    vault.latency = 0.05
    config = settings(vault, secret_file, max_concurrency=2)
    async with AzureProvider("kv", config) as provider:
        await fetch_one(provider, ref("s0"))
        started = time.monotonic()
        await provider.fetch([ref(f"s{i}") for i in range(6)])
        elapsed = time.monotonic() - started
    assert elapsed >= 0.14, elapsed  # 6 reads of 50 ms, 2 at a time: 3 rounds


# --- translation -------------------------------------------------------------------------------


class _Response:
    """Just enough of an azure-core response to build its exceptions."""

    def __init__(self, status: int = 500) -> None:
        self.status_code = status
        self.reason = "x"
        self.headers: dict[str, str] = {}
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        return "{}"

    def body(self) -> bytes:
        return b"{}"


def _instance(cls: type[Exception]) -> Exception:
    """One instance of an azure.core exception, however its constructor wants to be called."""
    attempts: list[dict[str, Any]] = [
        {"message": "boom"},
        {"response": _Response()},
        {"history": [], "message": "boom"},
    ]
    for kwargs in attempts:
        try:
            return cls(**kwargs)
        except (TypeError, AttributeError):
            continue
    return cls("boom")


@pytest.mark.parametrize(
    "cls",
    [
        cls
        for _, cls in inspect.getmembers(azure_exceptions, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == "azure.core.exceptions"
    ],
    ids=lambda cls: cls.__name__,
)
def test_every_azure_core_exception_has_a_kind(cls: type[Exception]) -> None:
    """The translation table maps every exception azure.core can raise to one of our kinds."""
    assert None is not _kind_of(_instance(cls))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, NotFound),
        (401, AccessDenied),
        (403, AccessDenied),
        (404, NotFound),
        (409, ProviderBug),
        (429, Throttled),
        (500, Unavailable),
        (503, Unavailable),
        (507, Unavailable),
    ],
)
def test_http_status_kinds(status: int, kind: type[Exception]) -> None:
    """Each HTTP status the vault can answer maps to the kind a caller retries or not."""

    exc = HttpResponseError(message="boom", response=_Response(status))  # type: ignore[arg-type]
    assert kind is type(translate(exc, ref("x"), "https://kv"))


def test_anything_else_the_sdk_raises_is_a_provider_bug_without_its_text() -> None:
    """An SDK tripping over an answer (KeyError, AttributeError...) is a ProviderBug naming the
    exception's type, never its text (which may quote the answer)."""
    error = translate(KeyError(KV_CANARY), ref("x"), "https://kv")
    assert isinstance(error, ProviderBug)
    assert "kv:x: https://kv sent an answer the Key Vault SDK cannot read (KeyError)" == str(error)


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "key", "problem"),
    [
        ("authority_host: http://login", "authority_host", "expected an https:// URL"),
        ("credential: managed_identity, tenant_id: t", "tenant_id", "only used with credential"),
        ("verify_challenge_resource: 'no'", "verify_challenge_resource", "expected true or false"),
    ],
)
def test_config_checks_the_new_fields(tmp_path: Path, fields: str, key: str, problem: str) -> None:
    """authority_host must be https, tenant_id belongs to client_secret, flags are booleans."""
    path = tmp_path / "smagent.yaml"
    path.write_text(
        f"providers: {{kv: {{type: azure, vault_url: 'https://kv.vault.azure.net', {fields}}}}}\n"
        "templates: []\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"providers.kv.{key}" in str(caught.value)
    assert problem in str(caught.value)


def test_config_ca_cert_is_made_absolute(tmp_path: Path) -> None:
    """ca_cert is a path relative to the config's folder, like every other path."""
    path = tmp_path / "smagent.yaml"
    path.write_text(
        "providers: {kv: {type: azure, vault_url: 'https://kv.vault.azure.net', "
        "ca_cert: certs/ca.pem, authority_host: 'https://login.example'}}\ntemplates: []\n"
    )
    config = load_config(path)
    kv = config.providers["kv"]
    assert isinstance(kv, AzureProviderConfig)
    assert str(tmp_path / "certs" / "ca.pem") == kv.ca_cert
    assert kv.verify_challenge_resource is True


# --- end to end: the CLI in a subprocess ---------------------------------------------------------


def azure_workspace(ws: Workspace, fake: KeyVaultFake, secret_file: Path) -> None:
    ws.providers["kv"] = {
        "type": "azure",
        "vault_url": fake.url,
        "credential": "client_secret",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "authority_host": fake.url,
        "ca_cert": str(fake.ca_path),
        "verify_challenge_resource": False,
    }
    ws.namespaces["kv"] = {"provider": "kv"}
    ws.namespaces["dbpass"] = {"provider": "kv", "secret": "DB-Pass"}


def test_render_once_from_the_vault(ws: Workspace, vault: KeyVaultFake, secret_file: Path) -> None:
    """`smagent render --once` reads a store namespace, a secret namespace and an Arcion token."""
    vault.put("db-pass", KV_CANARY)
    azure_workspace(ws, vault, secret_file)
    out = ws.template(
        "app.conf.j2",
        "a={{ secrets.kv['db-pass'] }}\nb={{ secrets.dbpass }}\nc=arcion-sm://kv/db-pass\n",
    )
    run = ws.run("render", "--once")
    assert 0 == run.returncode, leaks.mask(run.stderr)
    assert f"a={KV_CANARY}\nb={KV_CANARY}\nc={KV_CANARY}\n" == out.read_text()


def test_render_once_names_a_missing_secret_and_leaks_nothing(
    ws: Workspace, vault: KeyVaultFake, secret_file: Path
) -> None:
    """A missing secret fails the run (exit 1) naming the reference and the vault's words."""
    vault.put("db-pass", KV_CANARY)
    azure_workspace(ws, vault, secret_file)
    ws.template("app.conf.j2", "{{ secrets.kv['db-pass'] }} {{ secrets.kv['gone'] }}\n")
    run = ws.run("render", "--once")
    assert 1 == run.returncode
    assert "kv:gone" in run.stderr
    assert "SecretNotFound" in run.stderr


def test_render_once_logs_throttling_once_not_per_retry(
    ws: Workspace, vault: KeyVaultFake, secret_file: Path
) -> None:
    """Three 429s on one pass: retried to success, one provider.throttled line, one recovered."""
    for name in ("a", "b"):
        vault.put(name, KV_CANARY)
    azure_workspace(ws, vault, secret_file)
    out = ws.template("app.conf.j2", "{{ secrets.kv.a }} {{ secrets.kv.b }}\n")
    vault.fail_next(429, "Throttled", count=3, retry_after="0.05")
    run = ws.run("render", "--once")
    assert 0 == run.returncode, leaks.mask(run.stderr)
    assert f"{KV_CANARY} {KV_CANARY}\n" == out.read_text()
    events = [line["event"] for line in run.logs()]
    assert 1 == events.count("provider.throttled"), events
    assert 1 == events.count("provider.recovered"), events


async def test_many_concurrent_reads_share_one_token(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """Twenty concurrent first reads: one client, one token, one challenge round."""
    for i in range(20):
        vault.put(f"s{i}", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        found = await asyncio.gather(*(fetch_one(provider, ref(f"s{i}")) for i in range(20)))
    assert all(isinstance(v, SecretValue) for v in found)
    assert 1 == len(vault.token_requests)
    assert 20 == len(vault.vault_reads())
    assert 1 == sum(1 for seen in vault.requests if seen.status == 401)


async def test_first_reads_that_waited_for_the_challenge_then_run_concurrently(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """Ten first reads at once: after the one that learns the challenge, the nine overlap."""
    for i in range(10):
        vault.put(f"s{i}", KV_CANARY)
    vault.latency = 0.3
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        found = await provider.fetch([ref(f"s{i}") for i in range(10)])
    assert all(isinstance(v, SecretValue) for v in found.values())
    later = sorted(seen.at for seen in vault.vault_reads())[1:]
    assert 9 == len(later)
    # one at a time, the nine would arrive 0.3 s apart (2.4 s from first to last)
    assert later[-1] - later[0] < 0.3, later


def test_test_connection_command(ws: Workspace, vault: KeyVaultFake, secret_file: Path) -> None:
    """`smagent test-connection`: ok against the vault; a refused client secret fails, exit 1."""
    azure_workspace(ws, vault, secret_file)
    ok = ws.run("test-connection")
    assert 0 == ok.returncode, leaks.mask(ok.stderr)
    assert "kv (azure): ok" in ok.stdout
    vault.clients[CLIENT_ID] = "another-secret"
    refused = ws.run("test-connection")
    assert 1 == refused.returncode
    assert "kv (azure): failed: access denied: authentication for" in refused.stdout
    assert "AADSTS7000215" in refused.stdout


def test_a_missing_azure_sdk_is_a_setup_error_naming_the_extra(
    ws: Workspace, tmp_path: Path
) -> None:
    """Without the azure SDK, a configured azure provider is exit 2 saying what to install."""
    shadow = tmp_path / "no-azure"
    (shadow / "azure").mkdir(parents=True)
    (shadow / "azure" / "__init__.py").write_text("")  # a plain package hides the SDK's
    ws.providers["kv"] = {"type": "azure", "vault_url": "https://kv.vault.azure.net"}
    ws.namespaces["kv"] = {"provider": "kv"}
    ws.template("app.conf.j2", "{{ secrets.kv['db-pass'] }}\n")
    run = ws.run("render", "--once", env={"PYTHONPATH": str(shadow)})
    assert 2 == run.returncode, run.stderr
    assert "providers.kv: the azure provider needs the Azure SDK" in run.stderr
    assert "pip install 'smagent[azure]'" in run.stderr


async def test_a_vault_outside_its_challenge_domain_is_refused_by_default(
    vault: KeyVaultFake, secret_file: Path
) -> None:
    """verify_challenge_resource stays on by default: no token for a host the challenge does
    not cover, and the message names the option."""
    vault.put("db-pass", KV_CANARY)
    config = settings(vault, secret_file, verify_challenge_resource=True)
    async with AzureProvider("kv", config) as provider:
        error = await fetch_one(provider, ref("db-pass"))
    assert isinstance(error, AccessDenied)
    assert "challenge resource 'vault.azure.net' does not match" in str(error)
    assert "set verify_challenge_resource: false" in str(error)
    assert [] == vault.token_requests
    assert [] == vault.vault_reads()


async def test_default_credential_from_the_environment(
    vault: KeyVaultFake, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credential: default takes the service principal from AZURE_* variables (the SDK's chain)."""
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", CLIENT_SECRET)
    vault.put("db-pass", KV_CANARY)
    config = settings(
        vault,
        secret_file,
        credential="default",
        tenant_id=None,
        client_secret_file=None,
        client_id=None,
    )
    async with AzureProvider("kv", config) as provider:
        value = await fetch_one(provider, ref("db-pass"))
    assert KV_CANARY == value.reveal()
    assert [CLIENT_ID] == [t["client_id"] for t in vault.token_requests]
    assert [] == vault.unknown


SEED = Path(__file__).resolve().parent.parent / "templates" / "mysql.yaml"


def test_arcion_seed_file_from_a_vault_namespace(
    ws: Workspace, vault: KeyVaultFake, secret_file: Path
) -> None:
    """templates/mysql.yaml renders from Azure as Arcion reads it: NAMESPACE is the vault, KEY a
    secret's name; four secrets, four reads and one challenge."""
    password = f"{KV_CANARY} p@ss: w#rd 'q' \"d\" \\ {{x}}"
    for name, value in {"host": "mysql.internal", "port": "3306", "username": "repl"}.items():
        vault.put(name, value)
    vault.put("Password", password)
    azure_workspace(ws, vault, secret_file)
    ws.namespaces["mysql_src"] = {"provider": "kv"}
    out = ws.template("mysql.yaml", SEED.read_text())
    run = ws.run("render", "--once")
    assert 0 == run.returncode, leaks.mask(run.stderr)
    loaded = yaml.safe_load(out.read_text())
    assert {"host": "mysql.internal", "port": 3306, "username": "repl"} == {
        key: loaded[key] for key in ("host", "port", "username")
    }
    assert password == loaded["password"]
    assert ["host", "password", "port", "username"] == sorted(
        seen.name for seen in vault.vault_reads()
    )
    assert 1 == sum(1 for seen in vault.requests if seen.status == 401)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, f'{{"value": "{KV_CANARY}", "id": "{KV_CANARY}"}}'),
        (200, f'{{"value": "{KV_CANARY}", "id": "https://h/secrets/db-pass/1", "attributes": 7}}'),
        (200, f'{{"value": "{KV_CANARY}"'),
        (403, f"denied: {KV_CANARY}"),
        (404, f'{{"value": "{KV_CANARY}"}}'),
        (429, f"<html>{KV_CANARY}</html>"),
        (500, f'{{"error": "{KV_CANARY}"}}'),
    ],
    ids=[
        "bad-id",
        "bad-attributes",
        "cut-short",
        "403-text",
        "404-not-odata",
        "429-html",
        "500-odd-error",
    ],
)
async def test_a_malformed_answer_holding_a_value_never_shows_it(
    vault: KeyVaultFake, secret_file: Path, status: int, body: str
) -> None:
    """An answer the SDK cannot read, or an error body quoting a value, fails naming the ref and
    the status, never quoting the body."""
    vault.put("db-pass", KV_CANARY)
    async with AzureProvider("kv", settings(vault, secret_file)) as provider:
        await fetch_one(provider, ref("db-pass"))
        vault.script.extend(Canned(status, "", "", body=body) for _ in range(4))
        result = await fetch_one(provider, ref("db-pass"))
    assert isinstance(result, ProviderError)
    assert str(ref("db-pass")) in str(result)
    leaks.assert_no_leak(repr(result), "the provider's answer")
    leaks.assert_no_leak(str(result), "the provider's answer")


NAME_CANARY = leaks.plant("Canary-Name-Qz81", "NAME_CANARY")


def test_a_name_computed_from_a_secret_never_shows_in_the_vaults_spelling(
    ws: Workspace, vault: KeyVaultFake, secret_file: Path
) -> None:
    """A Key Vault name computed from another secret is lowercased by the provider, which
    logs its retries with it, and quoted by the vault's answer: no spelling of it reaches
    the log (exit 1, reference masked)."""
    azure_workspace(ws, vault, secret_file)
    vault.fail_next(429, "Throttled", count=2, retry_after="0.05")
    ws.secrets["names"] = {"db": NAME_CANARY}
    ws.namespaces["names"] = {"provider": "local", "secret": "names"}
    ws.template("app.conf.j2", "{{ secrets.kv[secrets.names.db] }}\n")
    run = ws.run("--log-level", "debug", "render", "--once")
    assert 1 == run.returncode
    events = run.logs()
    (failure,) = [e for e in events if e["event"] == "reference.failed"]
    assert "kv:<computed>" == failure["reference"]
    assert 2 == len([e for e in events if e["event"] == "provider.retry"])
