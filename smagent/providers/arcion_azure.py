"""An azure provider for one Arcion namespace's key vault (see `config_arcion`).

The Arcion file writes the client secret inline; smagent's own config names a
file (`client_secret_file`). The secret is taken from the derived config's
`Hidden` field: it is never written to disk, and never shown (its repr is
`<redacted>`). Everything else is the azure provider's.
"""

from __future__ import annotations

import msgspec

from smagent.config_arcion import ArcionAzureProviderConfig
from smagent.providers.azure import AzureProvider


class ArcionAzureProvider(AzureProvider):
    def __init__(self, name: str, config: ArcionAzureProviderConfig) -> None:
        # built as a `default` credential so that no client_secret_file is read, then given
        # the inline secret: `_make_credential` uses it with credential: client_secret
        super().__init__(name, msgspec.structs.replace(config, credential="default"))
        self.config = config
        if config.client_secret is not None:
            self._client_secret = config.client_secret.reveal()
