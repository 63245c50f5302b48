"""Provider instances from their config, opened and closed together.

Importing a cloud SDK costs 100-300 ms, so `render --once` on a host that uses
one store must not pay for the others: a store's module (which imports its
SDK) is imported here, at construction, and only for the types that are
configured. A configured store whose SDK is not installed is a setup error
that names the pip extra to install (`pip install 'smagent[aws]'`).

`open_providers` enters every provider through one `AsyncExitStack`: when
one fails to open, those already open are closed; at the end each is closed
even when another one's close fails (that failure is logged, never raised
over the command's own result).
"""

from __future__ import annotations

import importlib
import importlib.util
import traceback
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec

from smagent.config import ProviderConfig
from smagent.logging import get_logger
from smagent.providers.base import Provider, ProviderError

log = get_logger()


class ProviderSetupError(Exception):
    """A provider cannot be built: an unsupported type, a missing SDK, a bad credentials file."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(f"providers.{name}: {detail}")


class _Store(msgspec.Struct, frozen=True):
    module: str
    cls: str
    sdk: tuple[str, ...] = ()
    """Top-level modules its SDK provides; checked before the store module is imported."""
    extra: str | None = None
    """The pip extra that installs the SDK."""
    label: str = ""


_STORES: dict[str, _Store] = {
    "file": _Store("smagent.providers.file", "FileProvider"),
    "env": _Store("smagent.providers.env", "EnvProvider"),
    "aws": _Store("smagent.providers.aws", "AwsProvider", ("aiobotocore",), "aws", "AWS SDK"),
    "azure": _Store(
        "smagent.providers.azure",
        "AzureProvider",
        ("azure.keyvault.secrets", "azure.identity", "aiohttp"),
        "azure",
        "Azure SDK",
    ),
    "vault": _Store("smagent.providers.vault", "VaultProvider", ("aiohttp",), "vault", "aiohttp"),
    "arcion-aws": _Store(
        "smagent.providers.arcion_aws", "ArcionAwsProvider", ("aiobotocore",), "aws", "AWS SDK"
    ),
    "arcion-azure": _Store(
        "smagent.providers.arcion_azure",
        "ArcionAzureProvider",
        ("azure.keyvault.secrets", "azure.identity", "aiohttp"),
        "azure",
        "Azure SDK",
    ),
}


def create_provider(name: str, config: ProviderConfig) -> Provider:
    """The provider `name` of this config, not opened yet; ProviderSetupError when it cannot be."""
    kind = type(config).__struct_config__.tag
    assert isinstance(kind, str)
    store = _STORES[kind]
    for module in store.sdk:
        if not _installed(module):
            raise ProviderSetupError(
                name,
                f"the {kind} provider needs the {store.label} ({module}), which is not "
                f"installed: pip install 'smagent[{store.extra}]'",
            )
    try:
        loaded = importlib.import_module(store.module)
    except ModuleNotFoundError as exc:
        if exc.name == store.module:
            raise ProviderSetupError(
                name, f"provider type {kind!r} is not available in this version yet"
            ) from None
        if exc.name is not None and store.extra is not None:  # a part of the SDK is missing
            raise ProviderSetupError(
                name,
                f"the {kind} provider cannot import {exc.name} (part of the {store.label}): "
                f"pip install 'smagent[{store.extra}]'",
            ) from None
        raise
    provider: Provider = getattr(loaded, store.cls)(name, config)
    return provider


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        return False


def open_providers(
    configs: Mapping[str, ProviderConfig],
) -> AbstractAsyncContextManager[dict[str, Provider]]:
    """Every configured provider, built and entered; all closed on the way out.

    A provider that cannot be built or opened is a ProviderSetupError (the
    ones opened before it are closed first). Opening must not contact the
    store, so an unreachable store fails its references, not the setup.
    """
    return enter_providers({name: create_provider(name, cfg) for name, cfg in configs.items()})


@asynccontextmanager
async def enter_providers(providers: Mapping[str, Provider]) -> AsyncIterator[dict[str, Provider]]:
    """Enter built providers through one AsyncExitStack (see `open_providers`)."""
    async with AsyncExitStack() as stack:
        opened: dict[str, Provider] = {}
        for name, provider in providers.items():
            try:
                opened[name] = await stack.enter_async_context(_Closing(name, provider))
            except ProviderError as exc:
                raise ProviderSetupError(name, f"cannot be opened: {exc.detail}") from None
            except Exception as exc:
                _log_crash("provider.open_failed", name, exc)
                raise ProviderSetupError(
                    name, f"cannot be opened (internal error: {type(exc).__name__})"
                ) from None
        yield opened


class _Closing:
    """A provider entered as itself, whose failing close is logged and does not stop the rest."""

    def __init__(self, name: str, provider: Provider) -> None:
        self.name = name
        self.provider = provider

    async def __aenter__(self) -> Provider:
        return await self.provider.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.provider.__aexit__(*exc)
        except Exception as error:
            _log_crash("provider.close_failed", self.name, error)


def _log_crash(event: str, name: str, exc: BaseException) -> None:
    # the type and where, never the message: a provider's exception text may hold a value
    log.error(event, provider=name, error_type=type(exc).__name__)
    log.debug(
        f"{event}.traceback",
        provider=name,
        traceback="".join(traceback.format_tb(exc.__traceback__)),
    )
