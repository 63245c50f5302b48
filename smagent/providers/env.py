"""The `env` provider: a secret is an environment variable of the smagent process.

Useful in containers and CI, where secrets arrive as variables. The secret id
is the variable name; its value may be plain text or JSON (then keys work).
A refresh reads the variables again (`BaseProvider.refresh`): they are read at
fetch time, never cached.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from smagent.config import EnvProviderConfig
from smagent.providers.base import BaseProvider, FetchResult, NotFound, SecretValue
from smagent.references import SecretRef


class EnvProvider(BaseProvider):
    def __init__(
        self, name: str, config: EnvProviderConfig, environ: Mapping[str, str] = os.environ
    ) -> None:
        super().__init__(name, config)
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
