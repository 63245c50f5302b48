"""Arcion Replicant's secret-manager file, turned into smagent providers and namespaces.

An Arcion user already has this file (`--secret-manager FILE` to Replicant):

    type: AWS                      # or AZURE
    use-password-rotation: false
    cache-refresh-max-retries: 3
    namespaces:
      mysql_src:                   # AWS: the secret's name; KEY = a key of its JSON value
        region: us-east-1
        role-arn: arn:aws:iam::123456789012:role/replicant
        session-name: replicant
        access-key: AKIA...        # optional: an IAM user's keys (else the default chain)
        secret-key: ...
      myvault:                     # AZURE: the key vault's name; KEY = a secret's name in it
        tenant-id: ...
        client-id: ...
        client-secret: ...

Each namespace becomes a smagent namespace of the same name, so that
`arcion-sm://NS/KEY` resolves as Replicant resolves it: on AWS, namespace NS
is the secret NS and KEY a key of its JSON value; on Azure, NS is a store
namespace on the vault `https://NS.vault.azure.net` and KEY a secret's name.

Per-namespace credentials mean per-namespace sessions: one provider per
distinct credential set (namespaces with the same region, keys and role share
one), named `ARCION.NS` after the first namespace that uses it (a name no
user-written provider can take, as those hold no `.`).

Inline credentials (`access-key`, `secret-key`, `client-secret`) are held as
`Hidden` values, whose repr and str are `<redacted>`: the derived provider
configs may be printed or logged without showing them. They reach only the
SDK. The derived configs are subclasses that the YAML schema does not accept
(they are not in `ProviderConfig`'s union), so a user cannot write these
fields in smagent's own config, where every credential is named by a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from smagent.config import AwsProviderConfig, AzureProviderConfig, Text
from smagent.references import Namespace

if TYPE_CHECKING:
    from smagent.config import ProviderConfig, _Builder

TYPES = ("AWS", "AZURE")
AWS_FIELDS = ("region", "role-arn", "session-name", "access-key", "secret-key")
AZURE_FIELDS = ("tenant-id", "client-id", "client-secret")
CREDENTIAL_KEYS = ("access-key", "secret-key", "client-secret")
"""Inline credentials: an error about one never shows its value."""
DEFAULT_SESSION_NAME = "smagent"
_VAULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{1,22}[A-Za-z0-9]")
"""Azure's rule for a key vault's name: 3-24 letters, digits and dashes."""


class Hidden:
    """An inline credential: compared and hashed by value, never shown."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def reveal(self) -> str:
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hidden) and other._text == self._text

    def __hash__(self) -> int:
        return hash((Hidden, self._text))

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __structlog__(self) -> str:
        return "<redacted>"


# --- the file's schema (Arcion's kebab-case keys) -------------------------------------------------


class _Kebab(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, rename="kebab"):
    pass


class ArcionNamespace(_Kebab, frozen=True, kw_only=True):
    region: Text | None = None
    role_arn: Text | None = None
    session_name: Text | None = None
    access_key: str | None = None
    secret_key: str | None = None
    tenant_id: Text | None = None
    client_id: Text | None = None
    client_secret: str | None = None


class ArcionFile(_Kebab, frozen=True, kw_only=True):
    type: str
    use_password_rotation: bool = False
    """Replicant re-reads a secret when a connection is refused; smagent's agent re-checks every
    secret on its refresh schedule anyway. Accepted, with no further effect."""
    cache_refresh_max_retries: int | None = None
    """Replicant's retries of a cache refresh; smagent's retries are its providers' own."""
    namespaces: dict[str, Any] = {}


# --- what it becomes ----------------------------------------------------------------------------


class ArcionAwsProviderConfig(AwsProviderConfig, tag="arcion-aws", frozen=True, kw_only=True):
    """An aws provider with the credentials of Arcion namespaces (never read from YAML)."""

    access_key: Hidden | None = None
    secret_key: Hidden | None = None
    role_arn: str | None = None
    session_name: str | None = None
    origin: str = ""
    """Where the credentials were written (`FILE: namespaces.NS`), for messages."""


class ArcionAzureProviderConfig(AzureProviderConfig, tag="arcion-azure", frozen=True, kw_only=True):
    """An azure provider for one Arcion namespace's vault; the client secret inline."""

    client_secret: Hidden | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Expansion:
    """One arcion provider's contribution to the config."""

    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    holds_credentials: bool = False


def expand(
    builder: _Builder,
    name: str,
    path: Path,
    raw: Mapping[str, Any],
    limits: Mapping[str, Any],
    flag_type: str | None = None,
) -> Expansion:
    """The providers and namespaces of the Arcion file `path` (parsed: `raw`); issues name
    the file and the key path inside it, through `builder` (a builder of that file)."""
    out = Expansion()
    parsed: ArcionFile | None = builder.convert(dict(raw), ArcionFile, "")
    if parsed is None:
        return out
    kind = parsed.type.strip().upper() if isinstance(parsed.type, str) else ""
    if kind not in TYPES:
        builder.issue("type", f"expected AWS or AZURE, got {parsed.type!r}")
        return out
    if flag_type is not None and flag_type != kind:
        builder.issue("type", f"this file is for {kind}, but --use-sm-provider says {flag_type}")
        return out
    retries = parsed.cache_refresh_max_retries
    if retries is not None and retries < 0:
        builder.issue("cache-refresh-max-retries", "expected a whole number from 0")
    if not isinstance(raw.get("namespaces", {}), dict):
        return out
    shared: dict[tuple[object, ...], str] = {}
    for ns_name, ns_raw in parsed.namespaces.items():
        where = f"namespaces.{ns_name}"
        if not builder.check_name(ns_name, where):
            continue
        ns: ArcionNamespace | None = builder.convert(ns_raw, ArcionNamespace, where)
        if ns is None:
            continue
        origin = f"{path}: {where}"
        if kind == "AWS":
            config = _aws(builder, ns, where, origin, limits)
            if config is None:
                continue
            key = (config.region, config.access_key, config.secret_key, config.role_arn,
                   config.session_name)  # fmt: skip
            provider = shared.setdefault(key, f"{name}.{ns_name}")
            out.providers.setdefault(provider, config)
            out.namespaces[ns_name] = Namespace(ns_name, provider, secret=ns_name)
        else:
            azure = _azure(builder, ns, ns_name, where, origin, limits)
            if azure is None:
                continue
            provider = f"{name}.{ns_name}"
            out.providers[provider] = azure
            out.namespaces[ns_name] = Namespace(ns_name, provider)
        if ns.secret_key is not None or ns.client_secret is not None:
            object.__setattr__(out, "holds_credentials", True)
    return out


def _wrong_fields(builder: _Builder, ns: ArcionNamespace, where: str, fields: tuple[str, ...],
                  kind: str) -> bool:  # fmt: skip
    bad = [f for f in fields if getattr(ns, f.replace("-", "_")) is not None]
    for f in bad:
        builder.issue(f"{where}.{f}", f"not a field of a type: {kind} file's namespace")
    return bool(bad)


def _aws(
    builder: _Builder,
    ns: ArcionNamespace,
    where: str,
    origin: str,
    limits: Mapping[str, Any],
) -> ArcionAwsProviderConfig | None:
    if _wrong_fields(builder, ns, where, AZURE_FIELDS, "AWS"):
        return None
    if (ns.access_key is None) != (ns.secret_key is None):
        missing = "secret-key" if ns.secret_key is None else "access-key"
        builder.issue(f"{where}.{missing}", "access-key and secret-key go together")
        return None
    for key, value in (("access-key", ns.access_key), ("secret-key", ns.secret_key)):
        if value is not None and (not value.strip() or not value.isprintable()):
            builder.issue(f"{where}.{key}", "expected the IAM user's key, on one line")
            return None
    if ns.session_name is not None and ns.role_arn is None:
        builder.issue(f"{where}.session-name", "only used with role-arn")
        return None
    return ArcionAwsProviderConfig(
        region=ns.region,
        access_key=None if ns.access_key is None else Hidden(ns.access_key),
        secret_key=None if ns.secret_key is None else Hidden(ns.secret_key),
        role_arn=ns.role_arn,
        session_name=(ns.session_name or DEFAULT_SESSION_NAME) if ns.role_arn else None,
        origin=origin,
        **limits,
    )


def _azure(
    builder: _Builder,
    ns: ArcionNamespace,
    vault: str,
    where: str,
    origin: str,
    limits: Mapping[str, Any],
) -> ArcionAzureProviderConfig | None:
    if _wrong_fields(builder, ns, where, AWS_FIELDS, "AZURE"):
        return None
    if not _VAULT_NAME.fullmatch(vault):
        builder.issue(
            where, "an Azure namespace is a key vault's name: 3-24 letters, digits and dashes"
        )
        return None
    given = [f for f in AZURE_FIELDS if getattr(ns, f.replace("-", "_")) is not None]
    if given and len(given) != len(AZURE_FIELDS):
        for f in AZURE_FIELDS:
            if f not in given:
                builder.issue(f"{where}.{f}", f"required with {', '.join(given)}")
        return None
    if ns.client_secret is not None and (
        not ns.client_secret.strip() or not ns.client_secret.isprintable()
    ):
        builder.issue(f"{where}.client-secret", "expected the app's client secret, on one line")
        return None
    return ArcionAzureProviderConfig(
        vault_url=f"https://{vault.lower()}.vault.azure.net",
        credential="client_secret" if given else "default",
        tenant_id=ns.tenant_id,
        client_id=ns.client_id,
        client_secret=None if ns.client_secret is None else Hidden(ns.client_secret),
        origin=origin,
        **limits,
    )


def without_credentials(problem: str, key: str) -> str:
    """`problem` with the value it quotes dropped, when `key` holds an inline credential."""
    if key.rsplit(".", 1)[-1] not in CREDENTIAL_KEYS or ", got " not in problem:
        return problem
    return problem.split(", got ", 1)[0] + " (the value is not shown: it is a credential)"


class DefaultChainNamespaces(Mapping[str, Namespace]):
    """`--use-sm-provider AWS` without a file, as Replicant: any namespace not declared is the
    AWS secret of that name, read through `provider` (the default credential chain).

    Iteration and len() see the declared namespaces only (what `check` lists); a name that is
    not declared is looked up as a secret, so a typo is the store's NotFound naming it.
    """

    def __init__(self, declared: Mapping[str, Namespace], provider: str) -> None:
        self._declared = dict(declared)
        self.provider = provider

    def __getitem__(self, name: str) -> Namespace:
        found = self._declared.get(name)
        if found is not None:
            return found
        if not isinstance(name, str) or not name:
            raise KeyError(name)
        return Namespace(name, self.provider, secret=name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def __repr__(self) -> str:
        return f"DefaultChainNamespaces({self._declared!r}, provider={self.provider!r})"
