"""The `file` provider's contract harness: a real secrets.yaml in the test's folder."""

from __future__ import annotations

import os
from typing import Any

import yaml

from tests.leaks import allow_secrets_in
from tests.providers_harness import StoreHarness


class FileHarness(StoreHarness):
    kind = "file"
    not_applicable = {  # noqa: RUF012 (a ClassVar by the base class)
        "throttled": "a local file has no rate limit",
        "deadline": "a local read: the slow-parse deadline is in test_resolver.py",
        "canonical": "one spelling per secret (canonical is the identity)",
    }
    if os.geteuid() == 0:
        not_applicable = {
            **not_applicable,
            "access_denied": "root reads any file (test_provider_faults.py checks it as a user)",
        }

    def config(self) -> dict[str, Any]:
        return {"type": "file", "path": "store/secrets.yaml"}

    @property
    def _path(self) -> Any:
        return self.root / "store" / "secrets.yaml"

    async def put(self, name: str, value: str) -> None:
        self._path.parent.mkdir(exist_ok=True)
        allow_secrets_in(self._path)
        data = yaml.safe_load(self._path.read_text()) if self._path.exists() else {}
        data[name] = value
        # a new file renamed over the old one: a new inode, as an editor or a deploy tool does
        fresh = self._path.with_suffix(".new")
        allow_secrets_in(fresh)
        fresh.write_text(yaml.safe_dump(data))
        fresh.chmod(0o600)
        fresh.replace(self._path)

    async def deny(self, name: str) -> None:
        self._path.chmod(0)

    async def down(self) -> None:
        self._path.unlink()


HARNESS = FileHarness
