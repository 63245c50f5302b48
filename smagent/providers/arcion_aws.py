"""An aws provider with an Arcion namespace's own credentials (see `config_arcion`).

Replicant's three AWS auth methods per namespace, one session each:

- `access-key` + `secret-key` (+ `role-arn`): the IAM user's keys, set on this
  provider's own botocore session, never in the environment of the process;
- `role-arn` (+ `session-name`): the role assumed through STS AssumeRole with
  the source credentials (the keys above, else the default chain), refreshed
  by botocore before they expire (DeferredRefreshableCredentials: the first
  request assumes the role, not the opening);
- `region` only: the default chain, as a plain aws provider.

The STS client retries nothing (`total_max_attempts=1`), as the Secrets
Manager client: the request that needed the credentials is retried by
`BaseProvider.request`, STS call included. A refused AssumeRole surfaces as
the request's AccessDenied, with STS's own words (the role's ARN, no key).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import botocore.exceptions as bce
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from botocore.config import Config as BotoConfig

from smagent.config_arcion import ArcionAwsProviderConfig
from smagent.providers.aws import AwsProvider

# A refused AssumeRole is logged by the SDK as a warning with a traceback, on stdlib logging
# (no handler: printed raw to stderr). The same failure reaches the reference that needed the
# credentials, translated, with STS's own words: the SDK's copy is noise.
for _name in ("aiobotocore.credentials", "botocore.credentials"):
    logging.getLogger(_name).addHandler(logging.NullHandler())
    logging.getLogger(_name).propagate = False


class ArcionAwsProvider(AwsProvider):
    def __init__(self, name: str, config: ArcionAwsProviderConfig) -> None:
        super().__init__(name, config)
        self.arcion = config
        if config.access_key is not None and config.secret_key is not None:
            self._session.set_credentials(config.access_key.reveal(), config.secret_key.reveal())
        self._role_ready = config.role_arn is None
        self._assuming = asyncio.Lock()

    async def _connected(self) -> Any:
        if not self._role_ready:
            async with self._assuming:
                if not self._role_ready:
                    await self._assume_role()
                    self._role_ready = True
        return await super()._connected()

    async def _assume_role(self) -> None:
        """Swap the session's credentials for the role's (refreshed by botocore on expiry)."""
        assert self.arcion.role_arn is not None
        source = await self._session.get_credentials()
        if source is None:
            raise bce.NoCredentialsError()
        sts = functools.partial(
            self._session.create_client,
            region_name=self.region,
            config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=sts,
            source_credentials=source,
            role_arn=self.arcion.role_arn,
            extra_args={"RoleSessionName": self.arcion.session_name or "smagent"},
        )
        # botocore has no public setter for refreshable credentials on a session
        self._session._credentials = AioDeferredRefreshableCredentials(
            refresh_using=fetcher.fetch_credentials, method="assume-role"
        )

    def __repr__(self) -> str:
        auth = "access-key" if self.arcion.access_key is not None else "default chain"
        role = f", role_arn={self.arcion.role_arn!r}" if self.arcion.role_arn else ""
        return f"ArcionAwsProvider(name={self.name!r}, region={self.region!r}, {auth}{role})"
