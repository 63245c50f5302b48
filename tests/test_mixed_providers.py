"""One `smagent render --once` pass reading AWS, Azure Key Vault and Vault at once.

Each store's own suite proves its protocol; this one proves what only a mixed
pass shows: the resolver dedups across templates, spellings and reference
forms before any store is asked (one read per distinct secret, counted at each
fake's server), every provider holds its own rate limit while the three are
served concurrently, and one store's outage fails only the templates that use it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests import leaks
from tests.conftest import CANARY, CANARY_TOKEN, CANARY_USER, Run, Workspace
from tests.fakes.keyvault import KeyVaultFake, running_vault
from tests.fakes.moto_server import REGION, MotoFake, shared_moto
from tests.fakes.vault import VaultFake, running

KV_VALUE = leaks.plant("canary-mixed-kv-Pq61", "KV_VALUE")
VAULT_VALUE = leaks.plant("canary-mixed-vault-Jc08", "VAULT_VALUE")
VAULT_TOKEN = leaks.plant("hvs.canary-mixed-token-Ut4", "VAULT_TOKEN")
CLIENT_SECRET = leaks.plant("canary-mixed-client-secret-Ge9", "CLIENT_SECRET")
TENANT = "tenant-1"
CLIENT_ID = "app-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": REGION,
}
VAULT_SERVICE_PATHS = ("sys/", "auth/")
"""Mount lookups, login and token calls: requests to Vault that read no secret."""


@dataclass
class Stores:
    moto: MotoFake
    kv: KeyVaultFake
    vault: VaultFake


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stores]:
    """The three fakes, empty, with no AWS profile or CA bundle leaking in from the host."""
    moto = shared_moto()
    moto.reset()
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    vault = VaultFake()
    vault.add_token(VAULT_TOKEN)
    with running_vault(tmp_path, tenant=TENANT) as kv, running(vault):
        kv.clients[CLIENT_ID] = CLIENT_SECRET
        yield Stores(moto, kv, vault)


def mixed_workspace(
    ws: Workspace, stores: Stores, *, rate_limit: float | None = None, timeout: str = "10s"
) -> None:
    """All four provider types in one config, every one with `rate_limit`."""
    secret_file = ws.root / "kv-client-secret"
    token_file = ws.root / "vault-token"
    ws.root.mkdir(parents=True, exist_ok=True)
    for path, value in ((secret_file, CLIENT_SECRET), (token_file, VAULT_TOKEN)):
        path.write_text(value + "\n")
        path.chmod(0o600)
        leaks.allow_secrets_in(path)
    limit = {"rate_limit": rate_limit}
    ws.providers["aws"] = {
        "type": "aws",
        "region": REGION,
        "endpoint_url": stores.moto.endpoint,
        **limit,
    }
    ws.providers["kv"] = {
        "type": "azure",
        "vault_url": stores.kv.url,
        "credential": "client_secret",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "authority_host": stores.kv.url,
        "ca_cert": str(stores.kv.ca_path),
        "verify_challenge_resource": False,
        **limit,
    }
    ws.providers["vault"] = {
        "type": "vault",
        "address": stores.vault.url,
        "auth": {"method": "token", "token_file": str(token_file)},
        **limit,
    }
    ws.defaults = {"fetch_timeout": timeout}


def aws_client(moto: MotoFake) -> Any:
    return boto3.client("secretsmanager", endpoint_url=moto.endpoint, region_name=REGION)


def render(ws: Workspace) -> Run:
    return ws.run("--log-format", "json", "render", "--once", env=AWS_ENV)


# --- what each server was asked -----------------------------------------------------------------


def aws_reads(moto: MotoFake) -> Counter[str]:
    """Secret ids asked for, one count per id per call (a batch of 3 ids counts 3)."""
    return Counter([*moto.ids_asked("BatchGetSecretValue"), *moto.ids_asked("GetSecretValue")])


def kv_reads(kv: KeyVaultFake) -> Counter[str]:
    """Authorized GETs per secret name (the challenge's bare request excluded)."""
    return Counter(seen.name.lower() for seen in kv.vault_reads())


def vault_reads(vault: VaultFake) -> Counter[str]:
    return Counter(
        seen.path for seen in vault.requests if not seen.path.startswith(VAULT_SERVICE_PATHS)
    )


def busiest_second(times: list[float]) -> int:
    """The most requests that arrived within any sliding 1 s window."""
    ordered = sorted(times)
    return max(
        (sum(1 for t in ordered if start <= t < start + 1.0) for start in ordered), default=0
    )


# --- the tests ----------------------------------------------------------------------------------


def test_one_read_per_distinct_secret_across_stores(ws: Workspace, stores: Stores) -> None:
    """Ten templates sharing secrets in every reference form and spelling: each distinct secret
    is read exactly once at its store, every file is written with its bytes, exit 0."""
    client = aws_client(stores.moto)
    client.create_secret(
        Name="prod/db", SecretString=f'{{"username": "{CANARY_USER}", "password": "{CANARY}"}}'
    )
    client.create_secret(Name="token", SecretString=CANARY_TOKEN)
    client.create_secret(Name="shared/host", SecretString="db.internal")
    stores.kv.put("DB-Pass", KV_VALUE)
    stores.kv.put("api-key", "kv-api-key-1")
    stores.vault.put_kv2("app", {"password": VAULT_VALUE, "user": "vault-user"})
    stores.vault.put_kv1("kv/app", {"password": "kv1-pass"})
    stores.moto.reset_counters()

    mixed_workspace(ws, stores)
    ws.namespaces.update(
        {
            "awsdb": {"provider": "aws", "secret": "prod/db"},
            # the same secret: no stage and AWSCURRENT are one spelling
            "awsdbcur": {"provider": "aws", "secret": "prod/db", "stage": "AWSCURRENT"},
            "awsstore": {"provider": "aws"},
            "kv": {"provider": "kv"},
            # Azure names are case-insensitive: DB-Pass, db-pass and DB-PASS are one secret
            "kvpass": {"provider": "kv", "secret": "db-pass"},
            "app": {"provider": "vault", "secret": "secret/data/app"},
        }
    )
    texts = {
        "t0.conf": (
            "{{ secrets.awsdb.password }} {{ secrets.kv['DB-Pass'] }} {{ secrets.app.password }}\n",
            f"{CANARY} {KV_VALUE} {VAULT_VALUE}\n",
        ),
        "t1.conf": (
            "{{ secrets.awsdbcur.password }} {{ secrets.kvpass }} {{ secrets.db.password }}\n",
            f"{CANARY} {KV_VALUE} {CANARY}\n",
        ),
        "t2.conf": (
            '{{ secret("aws:token") }} {{ secret("kv:api-key") }}'
            ' {{ secret("vault:secret/app", key="user") }}\n',
            f"{CANARY_TOKEN} kv-api-key-1 vault-user\n",
        ),
        "t3.conf": (
            "pw: arcion-sm://awsdb/password\nkv: arcion-sm://kv/DB-PASS\n",
            f"pw: {CANARY}\nkv: {KV_VALUE}\n",
        ),
        "t4.conf": (
            '{{ secrets.awsstore.token }} {{ secret("awsdb/username") }}'
            ' {{ secrets.awsstore["shared/host"] }}\n',
            f"{CANARY_TOKEN} {CANARY_USER} db.internal\n",
        ),
        "t5.conf": (
            '{{ secret("vault:kv/app", key="password") }} {{ secret("vault://secret/data/app/",'
            ' key="password") }}\n',
            f"kv1-pass {VAULT_VALUE}\n",
        ),
        "t6.conf": (
            '{{ secret("aws:prod/db", key="username", stage="AWSCURRENT") }}'
            " {{ secrets.kv['api-key'] }} {{ secrets.store['api-token'] }}\n",
            f"{CANARY_USER} kv-api-key-1 {CANARY_TOKEN}\n",
        ),
        "t7.conf": (
            "{{ secrets.awsstore['shared/host'] }} {{ secrets.app.user }}"
            " {{ secret('kv/db-pass') }}\n",
            f"db.internal vault-user {KV_VALUE}\n",
        ),
        "t8.conf": (
            "{{ secrets.awsdb.username }} {{ secrets.awsdbcur.username }} {{ secrets.kvpass }}\n",
            f"{CANARY_USER} {CANARY_USER} {KV_VALUE}\n",
        ),
        "t9.conf": (
            "user=arcion-sm://awsdb/username token=arcion-sm://awsstore/token\n",
            f"user={CANARY_USER} token={CANARY_TOKEN}\n",
        ),
    }
    outputs = {name: ws.template(f"{name}.j2", source) for name, (source, _) in texts.items()}

    run = render(ws)

    assert 0 == run.returncode, leaks.mask(run.stderr[-3000:])
    print(  # the figures for the report (pytest -s)
        f"aws {stores.moto.by_operation()} azure {len(stores.kv.requests)} requests "
        f"vault {Counter(seen.path for seen in stores.vault.requests)}"
    )
    for name, (_, expected) in texts.items():
        assert expected == outputs[name].read_text(), name
    assert {"prod/db": 1, "token": 1, "shared/host": 1} == aws_reads(stores.moto)
    assert {"db-pass": 1, "api-key": 1} == kv_reads(stores.kv)
    assert {"secret/data/app": 1, "kv/app": 1} == vault_reads(stores.vault)


def test_rate_limits_held_while_stores_are_served_concurrently(
    ws: Workspace, stores: Stores
) -> None:
    """rate_limit 10 on each provider, 30 secrets in each store: no sliding second at any server
    holds more than 10 requests, and the pass takes about the slowest store, not the sum."""
    rate, count = 10, 30
    client = aws_client(stores.moto)
    for n in range(count):
        client.create_secret(Name=f"aws-{n}", SecretString=f"a{n}")
        stores.kv.put(f"kv-{n}", f"k{n}")
        stores.vault.put_kv2(f"s{n}", {"v": f"v{n}"})
    # a policy without BatchGetSecretValue: one GetSecretValue per secret, so AWS too
    # makes `count` requests and meets its limit
    stores.moto.knobs.deny = {"BatchGetSecretValue"}
    stores.moto.reset_counters()

    mixed_workspace(ws, stores, rate_limit=rate, timeout="30s")
    source = "".join(
        f'{{{{ secret("aws:aws-{n}") }}}} {{{{ secret("kv:kv-{n}") }}}}'
        f' {{{{ secret("vault:secret/s{n}", key="v") }}}}\n'
        for n in range(count)
    )
    out = ws.template("all.conf.j2", source)
    wall_offset = time.time() - time.monotonic()  # moto stamps time.time(), the others monotonic

    run = render(ws)

    assert 0 == run.returncode, leaks.mask(run.stderr[-3000:])
    expected = "".join(f"a{n} k{n} v{n}\n" for n in range(count))
    assert expected == out.read_text()
    at = {
        "aws": [seen.at - wall_offset for seen in stores.moto.calls()],
        "azure": [seen.at for seen in stores.kv.requests],
        "vault": [seen.at for seen in stores.vault.requests],
    }
    spans = {store: max(times) - min(times) for store, times in at.items()}
    busiest = {store: busiest_second(times) for store, times in at.items()}
    union = max(max(t) for t in at.values()) - min(min(t) for t in at.values())
    print(  # the figures for the report (pytest -s)
        f"requests { ({s: len(t) for s, t in at.items()}) } busiest second {busiest} "
        f"(limit {rate}) spans { ({s: round(v, 2) for s, v in spans.items()}) } "
        f"mixed {union:.2f}s sum {sum(spans.values()):.2f}s"
    )
    for store, times in at.items():
        assert len(times) >= count, store
        assert busiest[store] <= rate, f"{store}: {busiest[store]} requests in one second"
        # the limit really bit: at least (count - rate) / rate seconds of requests
        assert spans[store] >= (len(times) - rate) / rate - 0.2, store
    # concurrently: the three spans overlap, so the pass is well under their sum
    assert union < 0.6 * sum(spans.values()), (union, spans)


def test_a_sealed_vault_fails_only_its_templates(ws: Workspace, stores: Stores) -> None:
    """Vault answering 503 throughout: its templates fail, the AWS and Azure ones are written,
    exit 1, and no value is printed."""
    aws_client(stores.moto).create_secret(Name="token", SecretString=CANARY_TOKEN)
    stores.kv.put("db-pass", KV_VALUE)
    stores.vault.put_kv2("app", {"password": VAULT_VALUE})
    stores.vault.fail_next(503, 10_000, message="Vault is sealed")
    mixed_workspace(ws, stores, timeout="2s")
    aws_out = ws.template("aws.conf.j2", '{{ secret("aws:token") }}\n')
    kv_out = ws.template("kv.conf.j2", '{{ secret("kv:db-pass") }}\n')
    vault_out = ws.template("vault.conf.j2", '{{ secret("vault:secret/app", key="password") }}\n')
    both_out = ws.template(
        "both.conf.j2", '{{ secret("aws:token") }} {{ secret("vault:secret/app", key="password") }}'
    )

    started = time.monotonic()
    run = render(ws)
    elapsed = time.monotonic() - started

    assert 1 == run.returncode, leaks.mask(run.stderr[-3000:])
    assert f"{CANARY_TOKEN}\n" == aws_out.read_text()
    assert f"{KV_VALUE}\n" == kv_out.read_text()
    assert not vault_out.exists()
    assert not both_out.exists()
    assert "vault:secret/app" in run.stderr
    assert stores.vault.requests, "Vault was asked"
    assert elapsed < 20, f"the pass took {elapsed:.1f}s with a 2s fetch_timeout"
