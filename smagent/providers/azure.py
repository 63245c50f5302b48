"""The `azure` provider: secrets from one Azure Key Vault, through the real async SDK.

One `SecretClient` (and one credential) per provider instance, made on
`open()` (or the first fetch) and closed with it, shared by every template
and reference. A provider is one vault: a namespace without `secret` maps
`secrets.NS.NAME` to the secret NAME in it, as Arcion's `arcion-sm://VAULT/KEY`
does.

Requests and limits: every HTTP request to the vault, including the bare
first request the SDK sends to learn the tenant from the 401 challenge,
holds one slot of the instance's `Limits` (the SDK's transport is wrapped,
see `_LimitedTransport`), so the rate limit is what the vault sees. Token
requests go to Entra ID, not the vault, and are not counted.

Who retries: we do. azure-core's own retry policy is turned off
(`retry_total=0`) and `retry.retrying` retries 429 (honouring Retry-After), 5xx
and network errors a few times with backoff and full jitter, within the
pass's deadline, so retries are never stacked. Not found, forbidden and bad
requests fail at once with the vault's own words and the reference. (Not
`BaseProvider.request`: it takes a `Limits` slot around the whole read, and
the transport takes one per HTTP request inside it; at max_concurrency 1
the second would wait for the first forever.)

Errors are translated exactly once, in `_translated`, from the table
`_BY_EXCEPTION` (azure.core.exceptions) and `_BY_STATUS` (HTTP codes). The
messages carry the vault's error code and message, never a response body;
anything else the SDK raises while reading an answer is a ProviderBug named
by its type only (its text may quote the answer, and an answer holds values).

Rotation check (`refresh`): Key Vault has no batch read and no cheaper call
that returns a secret's current version (listing a vault gives names without
versions; listing a secret's versions costs pages), so a secret read at the
latest version is read again, one GET each, and answered `Unchanged` when
its version is the same. A secret pinned to a version is immutable in Key
Vault: it costs no request at all.

A refused credential (Entra ID says no, or the vault answers 401 to our
token) answers for the rest of its batch: one token request, not one per
secret.

Disabled secrets: the vault answers 403 SecretDisabled; that is an
AccessDenied saying the secret is disabled. Expired secrets: Key Vault still
serves them (the expiry is advice, not enforced), so do we, with a
`secret.expired` warning; a future expiry becomes `check_after`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    SerializationError,
    ServiceRequestError,
    ServiceResponseError,
    TooManyRedirectsError,
)
from azure.core.pipeline.transport._aiohttp import AioHttpTransport  # the public name is lazy (Any)
from azure.identity.aio import (
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.keyvault.secrets.aio import SecretClient

from smagent.config import AzureProviderConfig
from smagent.logging import get_logger, shown
from smagent.providers import ProviderSetupError
from smagent.providers.base import (
    AccessDenied,
    BaseProvider,
    FetchResult,
    NotFound,
    ProviderBug,
    ProviderError,
    RefreshResult,
    SecretValue,
    Throttled,
    Unavailable,
    Unchanged,
)
from smagent.providers.limits import Limits
from smagent.providers.retry import retrying
from smagent.references import SecretRef
from smagent.regular_file import read_regular

log = get_logger()

# The SDK logs every request at INFO and credential failures at WARNING to stdlib logging,
# which nobody configures: Python's last-resort handler would print them on stderr next to
# our own line for the same failure. We translate every error into our own log instead.
logging.getLogger("azure").addHandler(logging.NullHandler())
logging.getLogger("azure").propagate = False

NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
"""Key Vault secret names: 1-127 letters, digits and dashes (case-insensitive)."""
VERSION = re.compile(r"^[0-9A-Za-z]{1,64}$")
MAX_CLIENT_SECRET_BYTES = 64 * 1024
CONNECTION_TEST_NAME = "smagent-connection-test"


class _LimitedTransport(AioHttpTransport):
    """The SDK's aiohttp transport, each request holding a slot of the provider's limits."""

    def __init__(self, limits: Limits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._limits = limits

    async def send(self, request: Any, **kwargs: Any) -> Any:
        async with self._limits.slot():
            return await super().send(request, **kwargs)


class AzureProvider(BaseProvider):
    def __init__(self, name: str, config: AzureProviderConfig) -> None:
        super().__init__(name, config)
        self.config = config
        self.vault_url = config.vault_url.rstrip("/")
        self._client_secret = (
            _read_client_secret(name, config.client_secret_file)
            if config.credential == "client_secret"
            else None
        )
        self._client: SecretClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._learned = False
        self._learning = asyncio.Lock()
        self._auth_failure: str | None = None

    def __repr__(self) -> str:
        return (
            f"AzureProvider({self.name!r}, vault_url={self.vault_url!r}, "
            f"credential={self.config.credential!r})"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        verify: dict[str, Any] = {}
        if self.config.ca_cert is not None:
            verify["connection_verify"] = self.config.ca_cert
        self._credential = self._make_credential(verify)
        self._client = SecretClient(
            self.vault_url,
            self._credential,
            verify_challenge_resource=self.config.verify_challenge_resource,
            retry_total=0,  # `retry.retrying` retries; never both
            transport=_LimitedTransport(self.limits, **verify),
        )

    def _make_credential(self, verify: dict[str, Any]) -> AsyncTokenCredential:
        config = self.config
        authority: dict[str, Any] = {}
        if config.authority_host is not None:
            authority["authority"] = config.authority_host
        if config.credential == "client_secret":
            assert config.tenant_id is not None  # the config checks these three
            assert config.client_id is not None
            assert self._client_secret is not None
            return ClientSecretCredential(
                config.tenant_id,
                config.client_id,
                self._client_secret,
                # a host of our own is not one of Microsoft's clouds: no discovery call to them
                disable_instance_discovery=config.authority_host is not None,
                **authority,
                **verify,
            )
        if config.credential == "managed_identity":
            return ManagedIdentityCredential(client_id=config.client_id, **verify)
        extra = {} if config.client_id is None else {"managed_identity_client_id": config.client_id}
        return DefaultAzureCredential(**authority, **extra, **verify)

    async def close(self) -> None:
        """Close the client and the credential; a failure of one still closes the other."""
        client, credential = self._client, self._credential
        self._client = self._credential = None
        self._learned = False
        try:
            if client is not None:
                await client.close()
        finally:
            if credential is not None:
                await credential.close()

    # --- the provider face -------------------------------------------------------------------

    def canonical(self, ref: SecretRef) -> SecretRef:
        """Key Vault names are case-insensitive: `DB-Pass` and `db-pass` are one secret."""
        return msgspec.structs.replace(ref, secret_id=ref.secret_id.lower())

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        self._auth_failure = None  # each batch asks for a token again
        results = await asyncio.gather(*(self._fetch_one(ref) for ref in refs))
        return dict(zip(refs, results, strict=True))

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        out: dict[SecretRef, RefreshResult] = {}
        latest: list[SecretRef] = []
        for ref, value in known.items():
            if ref.version is not None:  # a version never changes in Key Vault: no request
                out[ref] = Unchanged(check_after=value.check_after)
            else:
                latest.append(ref)
        fresh = await self.fetch(latest)
        for ref in latest:
            result = fresh[ref]
            if isinstance(result, SecretValue) and result.version == known[ref].version:
                out[ref] = Unchanged(check_after=result.check_after)
            else:
                out[ref] = result
        return out

    async def test_connection(self) -> None:
        """Authenticate and read one name: not found means the vault and the token work."""
        ref = SecretRef(self.name, CONNECTION_TEST_NAME)
        self._auth_failure = None
        try:
            await retrying(lambda: self._read(ref), what=str(ref), health=self.health)
        except NotFound:
            return

    # --- one secret ----------------------------------------------------------------------------

    async def _fetch_one(self, ref: SecretRef) -> FetchResult:
        problem = _ref_problem(ref)
        if problem is not None:
            return NotFound(ref, problem)
        try:
            return await retrying(lambda: self._read(ref), what=str(ref), health=self.health)
        except ProviderError as exc:
            return exc

    async def _read(self, ref: SecretRef) -> SecretValue:
        await self.open()
        if not self._learned:
            async with self._learning:
                # The SDK learns the vault's tenant from a 401 to a bare first request, per
                # client. Until one answer has taught it, every concurrent first read would
                # send its own bare request (doubling a first pass): the first read goes alone.
                # The reads that waited here read after leaving the lock, all at once: read
                # inside it, they went one at a time (100 reads took 100 round trips).
                if not self._learned:
                    try:
                        value = await self._get(ref)
                    except Unavailable:
                        raise  # the vault was not reached: the next read learns instead
                    except ProviderError:
                        self._learned = True
                        raise
                    self._learned = True
                    return value
        return await self._get(ref)

    async def _get(self, ref: SecretRef) -> SecretValue:
        assert self._client is not None
        if self._auth_failure is not None:
            # one refused credential answers for the whole batch: 500 secrets must not
            # become 500 refused token requests to Entra ID
            raise AccessDenied(ref, self._auth_failure)
        try:
            with _translated(ref, self.vault_url):  # the SDK parses lazily: read it all here
                secret = await self._client.get_secret(ref.secret_id, ref.version)
                value, version = secret.value, secret.properties.version
                expires = secret.properties.expires_on
        except AccessDenied as exc:
            if isinstance(exc.__context__, ClientAuthenticationError):
                self._auth_failure = exc.detail
            raise
        if value is None:
            raise ProviderBug(ref, "the vault answered without a value")
        check_after = None
        if expires is not None:
            if expires.timestamp() <= time.time():
                log.warning(
                    "secret.expired",
                    provider=self.name,
                    reference=shown(ref),
                    expired_at=expires.isoformat(),
                )
            else:
                check_after = expires.timestamp()
        return SecretValue(value, version=version, check_after=check_after)


def _ref_problem(ref: SecretRef) -> str | None:
    """Why a reference can name no Key Vault secret, if so (no request is sent for it)."""
    if ref.stage is not None:
        return (
            f"Azure Key Vault has no staging labels (stage {ref.stage!r}); "
            "pin a version instead, or leave both out for the latest"
        )
    if not NAME.fullmatch(ref.secret_id):
        return (
            f"{ref.secret_id!r} is not a Key Vault secret name (1-127 letters, digits and dashes)"
        )
    if ref.version is not None and not VERSION.fullmatch(ref.version):
        return f"{ref.version!r} is not a Key Vault secret version (letters and digits)"
    return None


def _read_client_secret(name: str, path: str | None) -> str:
    """The client secret, read once at start-up: a setup error (exit 2) when unusable."""
    if path is None:
        raise ProviderSetupError(
            name, "client_secret_file is required with credential: client_secret"
        )
    try:
        data, _ = read_regular(path, MAX_CLIENT_SECRET_BYTES + 1)
    except OSError as exc:
        raise ProviderSetupError(
            name, f"cannot read client_secret_file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > MAX_CLIENT_SECRET_BYTES:
        raise ProviderSetupError(name, f"client_secret_file {path} is larger than 64 KiB")
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        raise ProviderSetupError(name, f"client_secret_file {path} is not UTF-8 text") from None
    if not text:
        raise ProviderSetupError(name, f"client_secret_file {path} is empty")
    return text


# --- translation: azure.core.exceptions and HTTP codes -> our kinds -----------------------------

_BY_EXCEPTION: tuple[tuple[type[Exception], type[ProviderError] | None], ...] = (
    (ResourceNotFoundError, NotFound),
    (ClientAuthenticationError, AccessDenied),  # a 401 with a token; any credential failure
    (IncompleteReadError, Unavailable),  # the connection dropped mid-answer
    (DecodeError, ProviderBug),  # an answer that is not the JSON Key Vault sends
    (TooManyRedirectsError, ProviderBug),
    (HttpResponseError, None),  # by status: `_BY_STATUS`
    (ServiceRequestError, Unavailable),  # could not send: refused, DNS, TLS, connect timeout
    (ServiceResponseError, Unavailable),  # no answer: reset, read timeout
    (AzureError, ProviderBug),  # stream misuse and the like: our bug or the SDK's
    (DeserializationError, ProviderBug),
    (SerializationError, ProviderBug),
    (json.JSONDecodeError, ProviderBug),  # an answer that is not JSON
    (ValueError, ProviderBug),  # a malformed id (the challenge's own ValueError: `translate`)
    (Exception, ProviderBug),  # the SDK tripping over an answer it cannot read
)
"""First match wins: subclasses come before their bases. Everything the SDK call raises is
translated; cancellation (a BaseException) goes through untouched."""

_BY_STATUS: dict[int, type[ProviderError]] = {
    400: NotFound,  # BadParameter: a malformed name or version
    401: AccessDenied,
    403: AccessDenied,  # no RBAC role / access policy, or the secret is disabled
    404: NotFound,
    408: Unavailable,
    429: Throttled,
    500: Unavailable,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
"""Any other 4xx is a ProviderBug (an answer we did not expect); any other 5xx Unavailable."""


@contextmanager
def _translated(ref: SecretRef, vault_url: str) -> Iterator[None]:
    """Raise the ProviderError kind of an SDK exception, in the vault's words and no value."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise translate(exc, ref, vault_url) from None


def translate(exc: Exception, ref: SecretRef, vault_url: str) -> ProviderError:
    if isinstance(exc, ValueError) and "challenge resource" in str(exc):
        # the SDK will not send a token to a host outside the resource the vault claims
        return AccessDenied(
            ref,
            f"{vault_url} is not under the domain its challenge names "
            f"({_one_line(str(exc).split('. Pass')[0])}); for a vault reached by another "
            "name (a private endpoint alias, a test vault) set verify_challenge_resource: false",
        )
    kind = _kind_of(exc)
    if kind is None:
        raise exc
    detail = _detail(exc, vault_url)
    if kind is Throttled:
        return Throttled(ref, detail, retry_after=_retry_after(exc))
    return kind(ref, detail)


def _kind_of(exc: Exception) -> type[ProviderError] | None:
    for cls, kind in _BY_EXCEPTION:
        if isinstance(exc, cls):
            if kind is not None:
                return kind
            status = getattr(exc, "status_code", None) or 0
            if status in _BY_STATUS:
                return _BY_STATUS[status]
            return Unavailable if status >= 500 else ProviderBug
    return None


def _detail(exc: Exception, vault_url: str) -> str:
    """The vault's error code and message, or the SDK's first line; never a response body."""
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        status = exc.status_code
        error = exc.error
        if error is not None and (error.code or error.message):
            inner = _inner_code(exc)
            code = f"{error.code}/{inner}" if inner else error.code
            text = f"{code}: {_one_line(error.message or '')}"
        else:
            text = _one_line(exc.message or type(exc).__name__)
        return f"{vault_url} answered {status} {text}" if status else f"{vault_url}: {text}"
    if isinstance(exc, ClientAuthenticationError):
        return f"authentication for {vault_url} failed: {_one_line(exc.message or str(exc))}"
    if isinstance(exc, json.JSONDecodeError):  # its str() holds the position, not the text
        return f"{vault_url} answered with a body that is not JSON ({exc})"
    if not isinstance(exc, AzureError):
        # a parse error's text may quote the answer (a malformed id, a field), and an answer
        # holds a value: the type only
        return f"{vault_url} sent an answer the Key Vault SDK cannot read ({type(exc).__name__})"
    text = _one_line(exc.message or str(exc) or type(exc).__name__)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"the TLS certificate of {vault_url} is not trusted ({text}); "
            "if the vault uses a private CA, set ca_cert to its PEM file"
        )
    return f"{vault_url}: {text}"


def _inner_code(exc: HttpResponseError) -> str | None:
    inner = getattr(exc.error, "innererror", None)
    code = inner.get("code") if isinstance(inner, dict) else None
    return code if isinstance(code, str) else None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _retry_after(exc: Exception) -> float | None:
    """Seconds from the answer's retry-after-ms / Retry-After (seconds or an HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
