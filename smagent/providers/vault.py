"""The `vault` provider: HashiCorp Vault over its HTTP API, with our own aiohttp client.

Why our own client: hvac is synchronous (requests), and Vault's API for what
we read is a handful of JSON GETs. One `aiohttp.ClientSession` per provider
instance carries every request of every template, through the instance's
`Limits`; this module is imported only when a vault provider is configured,
so nobody else pays for aiohttp.

A secret id is a Vault path, as `vault read` and the HTTP API take it:

    secret/data/app      KV v2, the API path (SPEC's example); `secret/app`, as
                         `vault kv get` takes it, is the same secret
    kv/app               KV v1
    database/creds/app   any other engine read with GET: dynamic credentials
                         with a lease (database, aws, ...)

Which of these a path is comes from its mount, as the vault CLI's preflight
does it: `GET sys/internal/ui/mounts/<path>` (type and KV version), asked once
per mount per provider instance, never per secret or per pass. It needs no
policy line of its own: Vault answers it for any path the token may use.

The value is the JSON text of the secret's fields (KV) or of the engine's
`data` (`username`, `password`), so `secrets.NS.password` selects a field as
for an AWS JSON secret. `version` pins a KV v2 version; KV v1 and the other
engines have none, and no path has a stage: asking for one is an error.

A dynamic-secret read creates a database user: the resolver asks for each
distinct reference once a pass, and `refresh` renews its lease rather than
reading again; a new read happens only when the lease cannot be renewed or
nears its max_ttl. Replace, not revoke, here: the old user must keep working
until the service reloads its new file. The agent revokes the replaced lease
later (`revoke`), once every file that used it was rewritten and its actions
ran, plus `revoke_replaced_after` of grace (smagent/retire.py).

Auth: a token (`token_file`, else `$VAULT_TOKEN` as the vault CLI reads it)
or AppRole (role_id or role_id_file, secret_id_file, re-read at each login).
A background task owned by the instance (started on open, cancelled on close)
renews the token at 2/3 of its TTL; when renewal is refused or the token
nears its max TTL, AppRole logs in again. TLS verification is always on;
`ca_cert` adds the CA of a private Vault.

Retries: ours (`BaseProvider.request`, i.e. `retry.retrying`), never
aiohttp's (it has none): 429 (a rate-limit quota), 5xx (503 sealed or
standby) and network errors, briefly, with backoff, full jitter and
Retry-After, within the pass's deadline; 400/403/404 fail at once with
Vault's own words and the reference. A Retry-After longer than `retrying`'s
`max_wait`, or than what is left of the pass, goes back at once as
`Throttled(retry_after=...)` for the agent to schedule. `_STATUS_KINDS` and
`_EXCEPTION_KINDS` are the one translation table from statuses and aiohttp
exceptions to our kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from smagent.config import VaultApproleAuth, VaultProviderConfig
from smagent.logging import get_logger
from smagent.providers.base import (
    AccessDenied,
    BaseProvider,
    FetchResult,
    Lease,
    NotFound,
    ProviderBug,
    ProviderError,
    RefreshResult,
    SecretValue,
    Throttled,
    Unavailable,
    Unchanged,
)
from smagent.references import SecretRef
from smagent.regular_file import NotRegularFile, read_regular

log = get_logger()

RENEW_AT = 2 / 3
"""Renew a token or a lease at 2/3 of its TTL, as Vault Agent does."""
REPLACE_BELOW = 1 / 3
"""A renewal that grants less than this share of the lease's first TTL means max_ttl is
near: read a new secret instead (the old one stays valid until it expires)."""
MAX_ERROR_WORDS = 300
"""Vault's error words are quoted up to this length (they never carry values, but a
proxy's HTML error page could be long)."""


@dataclass(frozen=True, slots=True)
class Mount:
    path: str
    """With its trailing slash, as Vault writes it: `secret/`."""
    kind: str
    kv_version: int | None


@dataclass(frozen=True, slots=True)
class _Read:
    """One GET against Vault: what a reference turns into once its mount is known."""

    path: str
    version: str | None
    mount: Mount | None


# --- translation: HTTP statuses and aiohttp exceptions -> our kinds -------------------------

_STATUS_KINDS: dict[int, type[ProviderError]] = {
    400: NotFound,  # "invalid request": unknown role, lease not found, ...
    401: AccessDenied,
    403: AccessDenied,  # permission denied, or a token that expired
    404: NotFound,
    405: ProviderBug,  # we asked with the wrong method
    412: Unavailable,  # a performance standby not yet caught up
    429: Throttled,  # rate-limit quota exceeded
    472: Unavailable,  # DR secondary
    473: Unavailable,  # performance standby
}
"""Any other 5xx is Unavailable (500 internal, 502/504 proxy, 503 sealed or standby);
any other 4xx a ProviderBug (a request Vault could not take is our mistake)."""

_EXCEPTION_KINDS: tuple[tuple[type[BaseException], type[ProviderError], str], ...] = (
    (
        aiohttp.ClientConnectorCertificateError,
        AccessDenied,
        "TLS: the server's certificate is not trusted ({error}); "
        "set ca_cert to the CA that signed it",
    ),
    (aiohttp.ClientSSLError, AccessDenied, "TLS handshake failed ({error}); check ca_cert"),
    (aiohttp.ClientConnectorError, Unavailable, "cannot connect ({error})"),
    (aiohttp.ServerTimeoutError, Unavailable, "no answer in time"),
    (aiohttp.ServerDisconnectedError, Unavailable, "the server closed the connection"),
    (aiohttp.ClientPayloadError, Unavailable, "the answer was cut short"),
    (aiohttp.ContentTypeError, ProviderBug, "an answer that is not JSON"),
    (aiohttp.InvalidURL, ProviderBug, "an invalid URL"),
    (aiohttp.ClientResponseError, Unavailable, "a malformed answer ({error})"),
    (aiohttp.ClientOSError, Unavailable, "network error ({error})"),
    (aiohttp.ClientError, Unavailable, "request failed ({error})"),
    (TimeoutError, Unavailable, "no answer in time"),
    (ValueError, ProviderBug, "an answer that is not valid JSON"),
)
"""First match wins (subclasses first). The words name the exception's kind, never a body."""


def kind_of_status(status: int) -> type[ProviderError]:
    if status in _STATUS_KINDS:
        return _STATUS_KINDS[status]
    return Unavailable if status >= 500 else ProviderBug


def translate_exception(exc: BaseException, ref: SecretRef | None, what: str) -> ProviderError:
    """The one place an aiohttp (or JSON) exception becomes one of our kinds."""
    for cls, kind, words in _EXCEPTION_KINDS:
        if isinstance(exc, cls):
            error = _exception_words(exc)
            return kind(ref, f"vault {what}: {words.format(error=error)}")
    raise exc


def _exception_words(exc: BaseException) -> str:
    """An exception's own reason, without request/response bodies."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return str(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or type(exc.os_error).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


def _status_error(
    status: int, body: Any, headers: Mapping[str, str], ref: SecretRef | None, what: str
) -> ProviderError:
    errors = body.get("errors") if isinstance(body, dict) else None
    words = "; ".join(str(e).strip() for e in errors or () if str(e).strip())
    words = " ".join(words.split())[:MAX_ERROR_WORDS]
    if not words:
        words = "no such path" if status == 404 else "no reason given"
    kind = kind_of_status(status)
    detail = f"vault {what}: HTTP {status}: {words}"
    if kind is Throttled:
        return Throttled(ref, detail, retry_after=_retry_after(headers.get("Retry-After")))
    return kind(ref, detail)


def _retry_after(text: str | None) -> float | None:
    try:
        seconds = float(text) if text is not None else None
    except ValueError:
        return None
    if seconds is None or not 0 <= seconds < float("inf"):
        return None
    return seconds  # however long: `retrying` gives a long one back to the agent at once


# --- the provider --------------------------------------------------------------------------


class VaultProvider(BaseProvider):
    def __init__(
        self,
        name: str,
        config: VaultProviderConfig,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        super().__init__(name, config)
        self.config = config
        self.address = config.address.rstrip("/")
        self._environ = environ
        self._session: aiohttp.ClientSession | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._mounts: dict[str, Mount] = {}
        self._mount_lock: asyncio.Lock | None = None
        self._auth_lock: asyncio.Lock | None = None
        self._authenticated: asyncio.Event | None = None
        """Set by the first token obtained: opening never contacts the store by itself."""
        self._token: str | None = None
        self._token_expires: float | None = None
        """time.monotonic() at which the token expires; None: unknown or never."""
        self._token_ttl: float | None = None
        self._token_renewable = False
        self._first_ttl: dict[str, float] = {}
        """lease_id -> the TTL of its first grant (to tell when renewal nears max_ttl)."""
        self._tls = _tls_context(name, config.ca_cert)

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the session and start the token's renewal task; nothing is sent to Vault
        until the first request (so one unreachable store never stops the others opening)."""
        if self._session is not None:
            return
        self._mount_lock = asyncio.Lock()
        self._auth_lock = asyncio.Lock()
        self._authenticated = asyncio.Event()
        connector = aiohttp.TCPConnector(ssl=self._tls, limit=self.limits.max_concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=30, connect=10),
            raise_for_status=False,
            auto_decompress=True,
            trust_env=False,
        )
        self._renewer = asyncio.create_task(self._keep_token(), name=f"vault-token-{self.name}")
        host = urlsplit(self.address).hostname or ""
        if self.address.startswith("http://") and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "vault.plaintext",
                provider=self.name,
                address=self.address,
                advice="the token crosses the network unencrypted: use https://",
            )

    async def close(self) -> None:
        """Stop renewing and close the session; leases are left to expire, not revoked
        (the files just written use them)."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- the Provider face -----------------------------------------------------------------

    def canonical(self, ref: SecretRef) -> SecretRef:
        """One spelling per path: no leading, trailing or doubled slashes."""
        path = "/".join(part for part in ref.secret_id.split("/") if part)
        if path == ref.secret_id:
            return ref
        return SecretRef(ref.provider, path, ref.version, ref.stage)

    async def fetch(self, refs: Sequence[SecretRef]) -> Mapping[SecretRef, FetchResult]:
        await self.open()
        plans = await self._plan(refs)
        reads: dict[_Read, list[SecretRef]] = {}
        results: dict[SecretRef, FetchResult] = {}
        for ref, plan in plans.items():
            if isinstance(plan, ProviderError):
                results[ref] = plan
            else:
                reads.setdefault(plan, []).append(ref)

        async def one(read: _Read, asking: list[SecretRef]) -> None:
            # two spellings of one secret (secret/app, secret/data/app): one request
            try:
                value: FetchResult = await self._read(read, asking[0])
            except ProviderError as exc:
                value = exc
            for ref in asking:
                results[ref] = value.for_ref(ref) if isinstance(value, ProviderError) else value

        await asyncio.gather(*(one(read, asking) for read, asking in reads.items()))
        return results

    async def refresh(
        self, known: Mapping[SecretRef, SecretValue]
    ) -> Mapping[SecretRef, RefreshResult]:
        """KV v2: the metadata's current_version (one small GET each); leases: renewal;
        KV v1 and other reads: read again and compare."""
        await self.open()
        plans = await self._plan(list(known))
        results: dict[SecretRef, RefreshResult] = {}

        async def one(ref: SecretRef, plan: _Read | ProviderError) -> None:
            try:
                results[ref] = await self._refresh_one(ref, plan, known[ref])
            except ProviderError as exc:
                results[ref] = exc

        await asyncio.gather(*(one(ref, plan) for ref, plan in plans.items()))
        return results

    async def test_connection(self) -> None:
        await self.open()
        await self._request("GET", "auth/token/lookup-self", None, "token lookup")

    def revoke_after(self) -> float | None:
        after = self.config.revoke_replaced_after
        return None if after is None else float(after)

    async def revoke(self, ref: SecretRef, lease: Lease) -> None:
        """`sys/leases/revoke`: Vault runs the engine's revocation (the database user is
        dropped) before it answers. A lease Vault no longer knows (expired) is not an error."""
        await self.open()
        with contextlib.suppress(NotFound):  # "invalid lease ID": it ended already
            await self._request(
                "PUT",
                "sys/leases/revoke",
                ref,
                "lease revocation",
                payload={"lease_id": lease.lease_id},
            )
        self._first_ttl.pop(lease.lease_id, None)

    def __repr__(self) -> str:
        return f"VaultProvider(name={self.name!r}, address={self.address!r})"

    # --- planning: reference -> mount -> one GET -------------------------------------------

    async def _plan(self, refs: Sequence[SecretRef]) -> dict[SecretRef, _Read | ProviderError]:
        paths = {self.canonical(ref).secret_id for ref in refs}
        mounts = await self._mounts_of(paths)
        plans: dict[SecretRef, _Read | ProviderError] = {}
        for ref in refs:
            path = self.canonical(ref).secret_id
            found = mounts.get(path)
            if isinstance(found, ProviderError):
                plans[ref] = found if found.ref == ref else found.for_ref(ref)
            else:
                plans[ref] = _read_of(ref, path, found)
        return plans

    async def _mounts_of(self, paths: set[str]) -> dict[str, Mount | ProviderError | None]:
        """The mount of each path: from the cache, else one preflight per new mount."""
        assert self._mount_lock is not None
        out: dict[str, Mount | ProviderError | None] = {}
        outage: ProviderError | None = None
        async with self._mount_lock:  # concurrent passes share one preflight per mount
            for path in sorted(paths):
                mount = self._known_mount(path)
                if mount is None and outage is not None:
                    out[path] = outage  # a sealed or throttling Vault is not asked again
                    continue
                if mount is None:
                    try:
                        mount = await self._preflight(path)
                    except ProviderError as exc:
                        out[path] = exc
                        outage = exc if exc.transient else None
                        continue
                out[path] = mount if mount.kind else None
        return out

    def _known_mount(self, path: str) -> Mount | None:
        for prefix in sorted(self._mounts, key=len, reverse=True):
            if (path + "/").startswith(prefix):
                return self._mounts[prefix]
        return None

    async def _preflight(self, path: str) -> Mount:
        what = f"mount of {path!r}"
        try:
            body = await self._request("GET", f"sys/internal/ui/mounts/{path}", None, what)
        except NotFound:  # a Vault older than the endpoint: read the path as it is (as the CLI)
            return Mount(path.split("/", 1)[0] + "/", "", None)
        data = body.get("data") or {}
        mount_path = str(data.get("path") or "")
        if not mount_path or not (path + "/").startswith(mount_path):
            raise ProviderBug(None, f"vault {what}: the answer names no mount of this path")
        options = data.get("options") or {}
        version = str(options.get("version") or "1") if data.get("type") == "kv" else None
        mount = Mount(mount_path, str(data.get("type") or "unknown"), _int(version))
        self._mounts[mount_path] = mount
        return mount

    # --- reads -----------------------------------------------------------------------------

    async def _read(self, read: _Read, ref: SecretRef) -> SecretValue:
        params = {"version": read.version} if read.version is not None else None
        body = await self._request("GET", read.path, ref, "read", params=params)
        data = body.get("data")
        if read.mount is not None and read.mount.kv_version == 2:
            inner = data.get("data") if isinstance(data, dict) else None
            metadata = data.get("metadata") if isinstance(data, dict) else None
            if inner is None:
                raise NotFound(ref, "vault read: this version is deleted or destroyed")
            version = metadata.get("version") if isinstance(metadata, dict) else None
            return SecretValue(_json_text(inner, ref), version=_text(version))
        if not isinstance(data, dict):
            raise NotFound(ref, "vault read: the path holds no data")
        lease_id = str(body.get("lease_id") or "")
        if not lease_id:
            return SecretValue(_json_text(data, ref))
        duration = float(body.get("lease_duration") or 0)
        now = time.time()
        lease = Lease(lease_id, duration, bool(body.get("renewable")), obtained_at=now)
        self._first_ttl.setdefault(lease_id, duration)
        check_after = now + duration * RENEW_AT if duration > 0 else None
        return SecretValue(_json_text(data, ref), lease=lease, check_after=check_after)

    async def _refresh_one(
        self, ref: SecretRef, plan: _Read | ProviderError, value: SecretValue
    ) -> RefreshResult:
        if isinstance(plan, ProviderError):
            return plan
        if value.lease is not None:
            return await self._renew_or_replace(ref, plan, value.lease)
        mount = plan.mount
        if mount is not None and mount.kv_version == 2:
            if plan.version is not None:
                return Unchanged()  # a pinned version never changes
            metadata_path = mount.path + "metadata/" + plan.path[len(mount.path + "data/") :]
            body = await self._request("GET", metadata_path, ref, "metadata read")
            current = (body.get("data") or {}).get("current_version")
            if _text(current) == value.version:
                return Unchanged()
        fresh = await self._read(plan, ref)
        if fresh.same_as(value):
            return Unchanged()
        return fresh

    async def _renew_or_replace(self, ref: SecretRef, plan: _Read, lease: Lease) -> RefreshResult:
        """Renew at ~2/3 TTL; near max_ttl, or when renewal is refused, read a new secret."""
        first = self._first_ttl.setdefault(lease.lease_id, lease.duration_s)
        if lease.renewable:
            try:
                body = await self._request(
                    "PUT",
                    "sys/leases/renew",
                    ref,
                    "lease renewal",
                    payload={"lease_id": lease.lease_id, "increment": int(first)},
                )
            except (NotFound, AccessDenied) as exc:
                log.info("vault.lease.replaced", provider=self.name, ref=str(ref), why=exc.kind)
            else:
                granted = float(body.get("lease_duration") or 0)
                if granted >= first * REPLACE_BELOW:
                    now = time.time()
                    renewed = Lease(lease.lease_id, granted, lease.renewable, obtained_at=now)
                    return Unchanged(check_after=now + granted * RENEW_AT, lease=renewed)
                log.info("vault.lease.replaced", provider=self.name, ref=str(ref), why="max_ttl")
        self._first_ttl.pop(lease.lease_id, None)
        return await self._read(plan, ref)

    # --- auth ------------------------------------------------------------------------------

    async def _ensure_token(self, *, force: bool = False) -> str:
        assert self._auth_lock is not None
        async with self._auth_lock:
            margin = min(1.0, (self._token_ttl or 0) / 10)
            expired = (
                self._token_expires is not None and time.monotonic() >= self._token_expires - margin
            )
            if self._token is None or expired or force:
                await self._login()
            assert self._token is not None
            assert self._authenticated is not None
            self._authenticated.set()
            return self._token

    async def _login(self) -> None:
        auth = self.config.auth
        if not isinstance(auth, VaultApproleAuth):  # re-read: another agent may rewrite it
            self._token = self._read_token()
            self._token_expires = self._token_ttl = None  # the renewal task looks it up
            return
        role_id = auth.role_id or _read_file(auth.role_id_file, "auth.role_id_file")
        payload = {"role_id": role_id}
        if auth.secret_id_file is not None:  # re-read: a secret_id may be single-use
            payload["secret_id"] = _read_file(auth.secret_id_file, "auth.secret_id_file")
        mount = auth.mount.strip("/")
        try:
            body = await self._request(
                "POST",
                f"auth/{mount}/login",
                None,
                "AppRole login",
                payload=payload,
                authenticated=False,
            )
        except NotFound as exc:  # Vault answers a bad role or secret id with 400
            raise AccessDenied(None, exc.detail) from None
        granted = body.get("auth") or {}
        token = granted.get("client_token")
        if not isinstance(token, str) or not token:
            raise ProviderBug(None, "vault AppRole login: the answer holds no client token")
        self._token = token
        self._set_ttl(granted)
        log.info("vault.login", provider=self.name, ttl=self._token_ttl)

    def _read_token(self) -> str:
        auth = self.config.auth
        path = getattr(auth, "token_file", None)
        if path is not None:
            return _read_file(path, "auth.token_file")
        token = self._environ.get("VAULT_TOKEN", "").strip()
        if not token:
            raise AccessDenied(None, "vault: no token: set auth.token_file (or $VAULT_TOKEN)")
        return token

    def _set_ttl(self, auth: Mapping[str, Any]) -> None:
        ttl = float(auth.get("lease_duration") or auth.get("ttl") or 0)
        self._token_ttl = ttl or None
        self._token_expires = time.monotonic() + ttl if ttl else None
        self._token_renewable = bool(auth.get("renewable"))

    async def _keep_token(self) -> None:
        """The renewal task: renew at 2/3 TTL; re-login (AppRole) when refused or near max."""
        assert self._authenticated is not None
        await self._authenticated.wait()  # a provider nobody uses makes no request
        delay = 0.0
        failing: str | None = None
        while True:
            await asyncio.sleep(delay)
            try:
                delay = await self._renew_token()
                failing = None
            except Exception as exc:  # the task must outlive any one failure
                reason = exc.detail if isinstance(exc, ProviderError) else type(exc).__name__
                if reason != failing:  # a state change is logged once, not every attempt
                    log.warning("vault.token.renew_failed", provider=self.name, error=reason)
                    failing = reason
                delay = max(1.0, (self._token_ttl or 30.0) / 10)

    async def _renew_token(self) -> float:
        """One step of the renewal task; returns how long to wait before the next."""
        approle = isinstance(self.config.auth, VaultApproleAuth)
        if self._token is None:
            await self._ensure_token()
        if self._token_expires is None and not approle:  # a given token: learn its TTL
            body = await self._request("GET", "auth/token/lookup-self", None, "token lookup")
            self._set_ttl(body.get("data") or {})
        if self._token_ttl is None or self._token_expires is None:
            return 3600.0  # a token that never expires; look again in an hour
        wait = (self._token_expires - time.monotonic()) - self._token_ttl * (1 - RENEW_AT)
        if wait > 0:
            return wait
        asked = self._token_ttl
        try:
            if not self._token_renewable:
                raise AccessDenied(None, "vault token renewal: the token is not renewable")
            body = await self._request(
                "POST", "auth/token/renew-self", None, "token renewal", payload={}
            )
            granted = float((body.get("auth") or {}).get("lease_duration") or 0)
            if granted < asked * REPLACE_BELOW:
                raise AccessDenied(None, "vault token renewal: the token nears its max TTL")
            self._token_expires = time.monotonic() + granted
            log.debug("vault.token.renewed", provider=self.name, ttl=granted)
            return granted * RENEW_AT
        except (AccessDenied, NotFound) as exc:
            if not approle:
                raise
            log.info("vault.token.relogin", provider=self.name, why=exc.detail)
            await self._ensure_token(force=True)
            return 0.0

    # --- one request -----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        ref: SecretRef | None,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        payload: Mapping[str, Any] | None = None,
        authenticated: bool = True,
    ) -> dict[str, Any]:
        """One API call, retried briefly on transient errors; returns the decoded envelope.

        The token is made sure of before, outside the request's `limits` slot:
        an AppRole login is a request of its own with its own slot (one slot
        nested in another would count twice and, at max_concurrency 1, wait
        for itself). Each attempt sends the token of the moment, so a retry
        after the renewal task logged in again carries the new one.
        """
        if authenticated:
            await self._ensure_token()

        async def attempt() -> dict[str, Any]:
            headers = {}
            if authenticated:
                if self._token is None:
                    raise ProviderBug(ref, f"vault {what}: no token to send")
                headers["X-Vault-Token"] = self._token
            if self.config.namespace:
                headers["X-Vault-Namespace"] = self.config.namespace
            return await self._once(method, path, ref, what, headers, params, payload)

        return await self.request(attempt, what=what)

    async def _once(
        self,
        method: str,
        path: str,
        ref: SecretRef | None,
        what: str,
        headers: dict[str, str],
        params: Mapping[str, str] | None,
        payload: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise ProviderBug(ref, "vault: the provider is closed")
        url = f"{self.address}/v1/{quote(path, safe='/')}"
        try:  # inside the `limits` slot `BaseProvider.request` holds
            async with session.request(
                method,
                url,
                headers=headers,
                params=params,
                json=payload,
                allow_redirects=False,  # the token goes to `address` and nowhere else
            ) as response:
                raw = await response.read()
                status = response.status
                got = response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate_exception(exc, ref, what) from None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if 300 <= status < 400:  # a standby that does not forward, or a proxy
            raise Unavailable(
                ref,
                f"vault {what}: HTTP {status}: a redirect, not followed (the token is sent to "
                "`address` only): point address at the active node or its load balancer",
            )
        if status >= 400 or body is None:
            if status < 400:
                raise ProviderBug(ref, f"vault {what}: HTTP {status}: an answer that is not JSON")
            raise _status_error(status, body, got, ref, what)
        if not isinstance(body, dict):
            raise ProviderBug(ref, f"vault {what}: an answer that is not a JSON object")
        return body


def _tls_context(name: str, ca_cert: str | None) -> ssl.SSLContext:
    """Verification always on (no switch to turn it off); `ca_cert` adds a private CA."""
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as exc:
        from smagent.providers import ProviderSetupError

        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM CA"
        raise ProviderSetupError(name, f"ca_cert {ca_cert}: cannot use it ({reason})") from None


def _read_of(ref: SecretRef, path: str, mount: Mount | None) -> _Read | ProviderError:
    if ref.stage is not None:
        return NotFound(ref, "vault has no staging labels (stage is for AWS)")
    if mount is not None and mount.kv_version == 2:
        rest = path[len(mount.path) :]
        if rest.startswith("metadata/") or not rest:
            return NotFound(ref, f"name a secret under {mount.path}data/ (KV v2)")
        logical = rest.removeprefix("data/")
        if ref.version is not None and not ref.version.isdigit():
            return NotFound(ref, "a KV v2 version is a whole number")
        return _Read(mount.path + "data/" + logical, ref.version, mount)
    if ref.version is not None:
        kind = "KV v1" if mount is not None and mount.kind == "kv" else "this secrets engine"
        return NotFound(ref, f"{kind} keeps no versions: drop `version`")
    return _Read(path, None, mount)


def _json_text(data: Any, ref: SecretRef) -> str:
    if not isinstance(data, dict):
        raise ProviderBug(ref, "vault read: the secret's data is not a JSON object")
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


MAX_CREDENTIAL_FILE_BYTES = 64 * 1024
"""A token, role_id or secret_id is a line; a bigger file is not one of those."""


def _read_file(path: str | None, where: str) -> str:
    """A credential file's one line, through the non-blocking regular-file read: it is read on
    the event loop at login, so a FIFO or a device there must be refused, never waited on."""
    assert path is not None
    try:
        data, _ = read_regular(path, MAX_CREDENTIAL_FILE_BYTES + 1)
        if len(data) > MAX_CREDENTIAL_FILE_BYTES:
            raise ValueError("larger than 64 KiB")
        text = data.decode("utf-8").strip()
    except (OSError, ValueError) as exc:
        if isinstance(exc, NotRegularFile):
            reason = "not a regular file"
        elif isinstance(exc, OSError):
            reason = exc.strerror or type(exc).__name__
        elif isinstance(exc, UnicodeDecodeError):
            reason = "not UTF-8 text"
        else:
            reason = str(exc)
        raise AccessDenied(None, f"vault: {where} {path}: cannot read it ({reason})") from None
    if not text:
        raise AccessDenied(None, f"vault: {where} {path}: the file is empty")
    return text


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)
