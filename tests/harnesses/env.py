"""The `env` provider's contract harness: variables of this process (via monkeypatch)."""

from __future__ import annotations

from typing import Any

import pytest

from smagent.references import SecretRef
from tests.providers_harness import STORE, StoreHarness


class EnvHarness(StoreHarness):
    kind = "env"
    not_applicable = {  # noqa: RUF012 (a ClassVar by the base class)
        "access_denied": "a process may read all of its environment",
        "server_down": "the process environment is always there",
        "throttled": "the process environment has no rate limit",
        "deadline": "reading the process environment cannot block",
        "canonical": "one spelling per variable (canonical is the identity)",
    }

    def config(self) -> dict[str, Any]:
        return {"type": "env"}

    def ref(self, name: str) -> SecretRef:
        return SecretRef(STORE, self._variable(name))

    @staticmethod
    def _variable(name: str) -> str:
        return "SMAGENT_CONTRACT_" + name.upper().replace("-", "_").replace("/", "_")

    async def put(self, name: str, value: str) -> None:
        monkeypatch: pytest.MonkeyPatch = self.request.getfixturevalue("monkeypatch")
        monkeypatch.setenv(self._variable(name), value)


HARNESS = EnvHarness
