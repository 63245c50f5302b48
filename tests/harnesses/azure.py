"""The `azure` provider's contract harness: the local HTTPS Key Vault of tests/fakes/keyvault.py,
read with the real SDK and a real ClientSecretCredential against the fake's token endpoint."""

from __future__ import annotations

from typing import Any, Self

from smagent.references import SecretRef
from tests import leaks
from tests.fakes.keyvault import KeyVaultFake
from tests.leaks import allow_secrets_in
from tests.providers_harness import STORE, StoreHarness

CLIENT_ID = "contract-app"
CLIENT_SECRET = leaks.plant("canary-contract-client-secret-Jq7", "AZURE_CONTRACT_SECRET")


class AzureHarness(StoreHarness):
    kind = "azure"

    async def __aenter__(self) -> Self:
        self.fake = KeyVaultFake(self.root)
        self.fake.clients[CLIENT_ID] = CLIENT_SECRET
        secret = self.root / "kv-client-secret"
        secret.write_text(CLIENT_SECRET)
        secret.chmod(0o600)
        allow_secrets_in(secret)
        self.fake.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.fake.stop()

    def config(self) -> dict[str, Any]:
        return {
            "type": "azure",
            "vault_url": self.fake.url,
            "credential": "client_secret",
            "tenant_id": self.fake.tenant,
            "client_id": CLIENT_ID,
            "client_secret_file": "kv-client-secret",
            "authority_host": self.fake.url,
            "ca_cert": str(self.fake.ca_path),
            "verify_challenge_resource": False,
        }

    async def put(self, name: str, value: str) -> None:
        self.fake.put(name, value)

    async def deny(self, name: str) -> None:
        self.fake.denied.add(name.lower())

    async def down(self) -> None:
        self.fake.stop()

    async def throttle(self, times: int) -> None:
        self.fake.fail_next(429, "Throttled", count=times, retry_after="0.05")

    async def stall(self) -> None:
        self.fake.latency = 60.0

    def spellings(self, name: str) -> list[SecretRef]:
        return [SecretRef(STORE, name), SecretRef(STORE, name.upper())]

    def requests(self) -> int:
        """Reads that carried a token: the SDK's bare first request (the 401 challenge that
        tells it the tenant) is once per client, not per secret."""
        return len(self.fake.vault_reads())

    def credentials(self) -> list[str]:
        return [CLIENT_SECRET]


HARNESS = AzureHarness
