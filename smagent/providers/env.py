"""The `env` provider: a secret is an environment variable of the smagent process.

Useful in containers and CI, where secrets arrive as variables. The secret id
is the variable name; its value may be plain text or JSON (then keys work).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from smagent.config import EnvProviderConfig
from smagent.providers.base import FetchResult, NotFound, SecretValue
from smagent.references import SecretRef


class EnvProvider:
    def __init__(
        self, name: str, config: EnvProviderConfig, environ: Mapping[str, str] = os.environ
    ) -> None:
        self.name = name
        self._environ = environ

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        return {ref: self._one(ref) for ref in refs}

    def _one(self, ref: SecretRef) -> FetchResult:
        if ref.version is not None or ref.stage is not None:
            return NotFound(
                ref, "the env provider keeps one value per variable (no version or stage)"
            )
        value = self._environ.get(ref.secret_id)
        if value is None:
            return NotFound(ref, f"environment variable {ref.secret_id!r} is not set")
        return SecretValue(value)

    async def current_version(self, ref: SecretRef) -> str | None:
        return None

    async def test_connection(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"EnvProvider(name={self.name!r})"
