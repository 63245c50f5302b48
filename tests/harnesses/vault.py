"""The `vault` provider's contract harness: the Vault fake (tests/fakes/vault.py), KV v2 at secret/.

Live once tests/providers_harness.py (h5-iface) is on the branch; until then nothing imports it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Self

from tests.providers_harness import STORE, StoreHarness

from smagent.references import SecretRef
from tests.fakes.vault import VaultFake, running

TOKEN = "hvs.contract-harness-token"


class VaultHarness(StoreHarness):
    kind = "vault"
    not_applicable = {  # noqa: RUF012 (a ClassVar by the base class)
        # A Vault secret is a mapping of fields: its value is their JSON, never the bare text
        # these cases compare with. A `value` hook in the contract (identity by default;
        # here json.loads(...)["value"]) would let them run; test_vault.py covers them now.
        "found": "the value is the JSON of the secret's fields (test_vault.py: KV v1/v2 reads)",
        "refresh": "as found (test_vault.py: refresh by KV v2 metadata version, and leases)",
        "throttled": "as found (test_vault.py: 429/503 retried, then the value)",
        "canonical": "as found (test_vault.py: secret/app and secret/data/app, one read)",
    }

    async def __aenter__(self) -> Self:
        self.fake = VaultFake()
        self.fake.add_token(TOKEN)
        self._served: AbstractContextManager[VaultFake] | None = running(self.fake)
        self._served.__enter__()
        token = self.root / "vault-token"
        token.write_text(TOKEN)
        token.chmod(0o600)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    def config(self) -> dict[str, Any]:
        return {
            "type": "vault",
            "address": self.fake.url,
            "auth": {"method": "token", "token_file": "vault-token"},
        }

    def ref(self, name: str) -> SecretRef:
        return SecretRef(STORE, f"secret/data/{name}")

    async def put(self, name: str, value: str) -> None:
        self.fake.put_kv2(name, {"value": value})

    async def deny(self, name: str) -> None:
        self.fake.deny.add(f"secret/data/{name}")

    async def down(self) -> None:
        served, self._served = self._served, None
        if served is not None:
            served.__exit__(None, None, None)

    async def throttle(self, times: int) -> None:
        self.fake.fail_next(429, times, paths="secret/")

    async def stall(self) -> None:
        self.fake.latency = 3 * self.fetch_timeout

    def spellings(self, name: str) -> list[SecretRef]:
        return [self.ref(name), SecretRef(STORE, f"/secret//data/{name}/")]

    def requests(self) -> int | None:
        return len(self.fake.seen("secret/data/"))

    def credentials(self) -> list[str]:
        return [TOKEN]


HARNESS = VaultHarness
