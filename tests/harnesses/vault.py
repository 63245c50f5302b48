"""The `vault` provider's contract harness: the Vault fake (tests/fakes/vault.py), KV v2 at secret/.

A Vault secret is a mapping of fields: `put` stores the value as the field
`value`, and `value` picks it out of the JSON of the fields the provider gives.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any, Self

from smagent.references import SecretRef
from tests.fakes.vault import VaultFake, running
from tests.providers_harness import STORE, StoreHarness

TOKEN = "hvs.contract-harness-token"


class VaultHarness(StoreHarness):
    kind = "vault"

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

    def value(self, revealed: str | bytes) -> str | bytes:
        fields = json.loads(revealed)
        assert isinstance(fields, dict), fields
        assert ["value"] == list(fields), "the secret holds the one field put wrote"
        picked: str = fields["value"]
        return picked

    def spellings(self, name: str) -> list[SecretRef]:
        return [self.ref(name), SecretRef(STORE, f"/secret//data/{name}/")]

    def requests(self) -> int | None:
        return len(self.fake.seen("secret/data/"))

    def credentials(self) -> list[str]:
        return [TOKEN]


HARNESS = VaultHarness
