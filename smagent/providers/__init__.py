"""Provider instances from their config; each store's module is imported only when used.

Importing a cloud SDK costs 100-300 ms, so `render --once` on a host that uses
one store must not pay for the others: the module of a type is imported here,
at construction, and only for the types that are configured.
"""

from __future__ import annotations

from collections.abc import Mapping

from smagent.config import ProviderConfig
from smagent.providers.base import Provider


class ProviderSetupError(Exception):
    """A provider cannot be constructed (an unsupported type, missing SDK, bad credentials file)."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(f"providers.{name}: {detail}")


def create_provider(name: str, config: ProviderConfig) -> Provider:
    from smagent import config as cfg

    if isinstance(config, cfg.FileProviderConfig):
        from smagent.providers.file import FileProvider

        return FileProvider(name, config)
    if isinstance(config, cfg.EnvProviderConfig):
        from smagent.providers.env import EnvProvider

        return EnvProvider(name, config)
    kind = type(config).__struct_config__.tag
    raise ProviderSetupError(
        name, f"provider type {kind!r} is not available in this version yet (file and env are)"
    )


def create_providers(configs: Mapping[str, ProviderConfig]) -> dict[str, Provider]:
    return {name: create_provider(name, cfg) for name, cfg in configs.items()}


async def close_providers(providers: Mapping[str, Provider]) -> None:
    for provider in providers.values():
        await provider.aclose()
