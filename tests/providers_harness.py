"""The registry of store harnesses that tests/test_provider_contract.py runs its suite over.

A harness knows how to run one provider type's store for a test (a file, the
environment, or a local fake server), how to configure smagent against it,
and how to break it in each way the contract names. Each store adds its own
module to tests/harnesses/ defining `HARNESS = <its StoreHarness subclass>`;
the registry finds it there, so no shared list has to be edited (and merged).

A case a store cannot have is listed in `not_applicable` with the reason, so
the skipped cases say what is not covered and why.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest

from smagent.references import SecretRef

CASES = (
    "found",
    "not_found",
    "access_denied",
    "server_down",
    "throttled",
    "deadline",
    "canonical",
    "refresh",
    "repr",
)
STORE = "store"
"""The provider's name in every contract config."""


class StoreHarness:
    """One running store for one test; override what the store supports."""

    kind: ClassVar[str] = ""
    not_applicable: ClassVar[dict[str, str]] = {}
    """Case name -> why this store cannot have it."""
    fetch_timeout: ClassVar[float] = 2.0
    """The pass deadline the contract configs use; a stalled store must fail within it."""

    def __init__(self, root: Path, request: pytest.FixtureRequest) -> None:
        self.root = root
        self.request = request
        """For session fixtures (a shared server): `request.getfixturevalue(...)`."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def config(self) -> dict[str, Any]:
        """This provider's block of smagent.yaml (relative paths: against `root`)."""
        raise NotImplementedError

    def ref(self, name: str) -> SecretRef:
        """The reference a template would write for the secret `name`."""
        return SecretRef(STORE, name)

    async def put(self, name: str, value: str) -> None:
        """Create the secret `name`, or give it a new current value (a rotation)."""
        raise NotImplementedError

    async def deny(self, name: str) -> None:
        """Make reading `name` fail with the store's access-denied answer."""
        raise NotImplementedError

    async def down(self) -> None:
        """Make the store unreachable (connection refused, 503, a missing file)."""
        raise NotImplementedError

    async def throttle(self, times: int) -> None:
        """Make the next `times` requests fail with the store's throttling answer."""
        raise NotImplementedError

    async def stall(self) -> None:
        """Make the store answer later than `fetch_timeout` (or never)."""
        raise NotImplementedError

    def value(self, revealed: str | bytes) -> str | bytes:
        """The value `put` stored, from what the provider revealed: the same, unless the
        store keeps a secret as a mapping of fields (Vault: the JSON of its fields)."""
        return revealed

    def spellings(self, name: str) -> list[SecretRef]:
        """Two or more spellings of the one secret `name` (for the canonical-dedup case)."""
        raise NotImplementedError

    def requests(self) -> int | None:
        """Requests the store has received so far, or None when it cannot count them."""
        return None

    def credentials(self) -> list[str]:
        """Credential strings configured for this provider: never in `repr(provider)`."""
        return []


def _discover() -> dict[str, type[StoreHarness]]:
    import tests.harnesses

    found: dict[str, type[StoreHarness]] = {}
    for info in pkgutil.iter_modules(tests.harnesses.__path__):
        module = importlib.import_module(f"tests.harnesses.{info.name}")
        harness: type[StoreHarness] = module.HARNESS
        found[harness.kind] = harness
    return dict(sorted(found.items()))


HARNESSES = _discover()
