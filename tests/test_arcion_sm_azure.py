"""Arcion AZURE namespaces against the local HTTPS Key Vault fake (tests/fakes/keyvault.py).

An Arcion namespace's vault is `https://NS.vault.azure.net`; the tests point the derived
provider config at the fake (its vault_url, authority_host and CA), which is the only
change: the credential, the inline client secret and the namespace are the Arcion file's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import yaml
from azure.keyvault.secrets._shared import http_challenge_cache

from smagent.config import load_config
from smagent.config_arcion import ArcionAzureProviderConfig
from smagent.pipeline import Pipeline
from smagent.providers import create_provider, open_providers
from smagent.providers.base import SecretValue
from tests import leaks
from tests.conftest import REPO
from tests.fakes.keyvault import KeyVaultFake, running_vault

KV_VALUE = leaks.plant("canary-arcion-kv-value-Hq4", "ARCION_KV_VALUE")
CLIENT_SECRET = leaks.plant("canary-arcion-kv-client-Zr8", "ARCION_KV_CLIENT_SECRET")
TENANT, CLIENT_ID = "tenant-1", "app-1"


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[KeyVaultFake]:
    http_challenge_cache.clear()
    with running_vault(tmp_path, tenant=TENANT) as fake:
        fake.clients[CLIENT_ID] = CLIENT_SECRET
        yield fake


async def test_inline_client_secret_reaches_entra_id(tmp_path: Path, vault: KeyVaultFake) -> None:
    """An AZURE namespace's tenant-id/client-id/client-secret: the real ClientSecretCredential
    gets a token with the inline secret (no file written), and the secret KEY is read."""
    vault.put("password", KV_VALUE)
    sm = tmp_path / "sm.yaml"
    ns = {"tenant-id": TENANT, "client-id": CLIENT_ID, "client-secret": CLIENT_SECRET}
    sm.write_text(yaml.safe_dump({"type": "AZURE", "namespaces": {"mysqlsrc": ns}}))
    sm.chmod(0o600)
    leaks.allow_secrets_in(sm)
    config_path = tmp_path / "smagent.yaml"
    config_path.write_text(
        yaml.safe_dump({"providers": {"arc": {"type": "arcion", "path": "sm.yaml"}}})
    )
    config = load_config(config_path)
    derived = config.providers["arc.mysqlsrc"]
    assert isinstance(derived, ArcionAzureProviderConfig)
    assert "https://mysqlsrc.vault.azure.net" == derived.vault_url
    # the vault and Entra ID of this host are the fake: point the derived config at it
    local = msgspec.structs.replace(
        derived,
        vault_url=vault.url,
        authority_host=vault.url,
        ca_cert=str(vault.ca_path),
        verify_challenge_resource=False,
        rate_limit=None,
    )
    lookup = config.namespaces["mysqlsrc"].lookup(("password",))

    async with create_provider("arc.mysqlsrc", local) as provider:
        found = (await provider.fetch([lookup.ref]))[lookup.ref]

    assert isinstance(found, SecretValue)
    assert KV_VALUE == found.reveal()
    assert [("client_secret", TENANT, CLIENT_ID)] == [
        (t["kind"], t["tenant"], t["client_id"]) for t in vault.token_requests
    ]
    assert [] == sorted(
        p.name for p in tmp_path.iterdir() if p.name not in {"sm.yaml", "smagent.yaml", "kv-ca.pem"}
    )


async def test_mysql_yaml_from_an_azure_namespace(tmp_path: Path, vault: KeyVaultFake) -> None:
    """The seed connection file (its namespace renamed to a vault name: Azure allows no `_`)
    rendered from an AZURE namespace: each KEY is a secret of that vault; `port` a number."""
    for name, value in (("host", "db.example"), ("port", "3306"), ("username", "repl")):
        vault.put(name, value)
    vault.put("password", KV_VALUE)
    source = tmp_path / "mysql.yaml"
    source.write_text(
        (REPO / "templates" / "mysql.yaml").read_text().replace("mysql_src", "mysqlsrc")
    )
    sm = tmp_path / "sm.yaml"
    ns = {"tenant-id": TENANT, "client-id": CLIENT_ID, "client-secret": CLIENT_SECRET}
    sm.write_text(yaml.safe_dump({"type": "AZURE", "namespaces": {"mysqlsrc": ns}}))
    sm.chmod(0o600)
    leaks.allow_secrets_in(sm, tmp_path / "out" / "mysql.yaml")
    config_path = tmp_path / "smagent.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "providers": {"arc": {"type": "arcion", "path": "sm.yaml"}},
                "templates": [{"source": "mysql.yaml", "destination": "out/mysql.yaml"}],
            }
        )
    )
    config = load_config(config_path)
    local = msgspec.structs.replace(
        config,
        providers={
            "arc.mysqlsrc": msgspec.structs.replace(
                config.providers["arc.mysqlsrc"],
                vault_url=vault.url,
                authority_host=vault.url,
                ca_cert=str(vault.ca_path),
                verify_challenge_resource=False,
            )
        },
    )

    async with open_providers(local.providers) as providers:
        result = await Pipeline(local, providers).run()

    assert result.ok
    written = yaml.safe_load((tmp_path / "out" / "mysql.yaml").read_text())
    assert ("db.example", 3306, "repl", KV_VALUE) == (
        written["host"],
        written["port"],
        written["username"],
        written["password"],
    )
    assert 4 == len(vault.vault_reads())
