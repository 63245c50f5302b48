"""A local Azure Key Vault: the REST API the real SDK speaks, over HTTPS on 127.0.0.1.

The real `azure.keyvault.secrets.aio.SecretClient` refuses a non-https vault
URL, so the fake serves TLS with a certificate from a `trustme` CA (pass
`ca_path` as `connection_verify` / the provider's `ca_cert`). It speaks:

- the vault's challenge: a request without a token we issued gets 401 with
  `WWW-Authenticate: Bearer authorization=".../<tenant>", resource=...`;
- `GET /secrets/{name}/[{version}]?api-version=...`: the secret bundle
  (`value`, `id` ending in the version, `attributes`); names case-insensitive;
  404 `SecretNotFound`, 403 `Forbidden` (a denied name, or `SecretDisabled`);
- the Entra ID v2 token endpoint for `ClientSecretCredential`
  (`authority=https://127.0.0.1:PORT`, `disable_instance_discovery=True`):
  `POST /{tenant}/oauth2/v2.0/token`, plus the OpenID metadata MSAL reads;
- the App Service managed identity endpoint (`IDENTITY_ENDPOINT` /
  `IDENTITY_HEADER`) for `ManagedIdentityCredential`, on a plain-HTTP port
  as Azure serves it to the host.

Knobs: `latency` (seconds before each vault answer), `script` (canned error
answers for the next vault requests: 429 with Retry-After, 503, ...),
`denied` (names answered 403). Counters: every vault request is recorded with
its monotonic arrival time (`requests`), tokens issued (`token_requests`).

It runs on its own event loop in a daemon thread, so synchronous tests,
async tests and subprocesses (`smagent render --once`) can all use it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

VAULT_RESOURCE = "https://vault.azure.net"


@dataclass
class Version:
    value: str
    version: str
    enabled: bool = True
    expires: float | None = None
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Seen:
    """One vault request as the fake saw it."""

    at: float
    """time.monotonic() at arrival."""
    path: str
    name: str
    version: str
    authorized: bool
    status: int = 0


@dataclass
class Canned:
    """An error answer to give instead of the real one."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    """Sent as it is instead of the error JSON (a malformed answer)."""


class KeyVaultFake:
    def __init__(self, tmp: Path, *, tenant: str = "tenant-1", ca: trustme.CA | None = None):
        self.tenant = tenant
        self.ca = ca or trustme.CA()
        self.ca_path = tmp / "kv-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.secrets: dict[str, tuple[str, list[Version]]] = {}
        self.clients: dict[str, str] = {}
        """client_id -> client_secret accepted by the token endpoint."""
        self.identity_header = secrets.token_hex(8)
        self.latency = 0.0
        self.script: list[Canned] = []
        self.denied: set[str] = set()
        self.requests: list[Seen] = []
        self.token_requests: list[dict[str, str]] = []
        self.unknown: list[str] = []
        self._tokens: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.http_port = 0

    # --- setting up -------------------------------------------------------------------------

    def put(self, name: str, value: str, **attrs: Any) -> str:
        """Add a new version of `name` (it becomes the latest); returns the version id."""
        version = Version(value, secrets.token_hex(16), **attrs)
        stored = self.secrets.setdefault(name.lower(), (name, []))
        stored[1].append(version)
        return version.version

    def fail_next(
        self, status: int, code: str, *, count: int = 1, retry_after: str | None = None
    ) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        message = {429: "Too many requests.", 503: "Service unavailable."}.get(status, code)
        self.script.extend(Canned(status, code, message, headers) for _ in range(count))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/msi/token"

    def vault_reads(self) -> list[Seen]:
        """The requests that carried a token (the challenge's bare request excluded)."""
        return [seen for seen in self.requests if seen.authorized]

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the Key Vault fake did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/secrets/{name}", self._get_secret)
        app.router.add_get("/secrets/{name}/", self._get_secret)
        app.router.add_get("/secrets/{name}/{version}", self._get_secret)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._aad_token)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_get("/msi/token", self._msi_token)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        tls = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        plain = web.TCPSite(self._runner, "127.0.0.1", 0)
        await tls.start()
        await plain.start()
        self.port = tls._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.http_port = plain._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        """Stop serving (the port then refuses connections); a second call does nothing."""
        if self._loop.is_closed() or not self._loop.is_running():
            return

        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # --- the vault --------------------------------------------------------------------------

    async def _get_secret(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        name = request.match_info["name"]
        seen = Seen(
            time.monotonic(),
            request.path,
            name,
            request.match_info.get("version", ""),
            token in self._tokens,
        )
        self.requests.append(seen)
        response = self._answer(seen)
        if self.latency and seen.authorized:
            await asyncio.sleep(self.latency)
        seen.status = response.status
        return response

    def _answer(self, seen: Seen) -> web.Response:
        if not seen.authorized:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{self.tenant}", '
                f'resource="{VAULT_RESOURCE}"'
            )
            return _error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer token.",
                {"WWW-Authenticate": challenge},
            )
        if self.script:
            canned = self.script.pop(0)
            if canned.body is not None:
                return web.Response(status=canned.status, text=canned.body, headers=canned.headers)
            return _error(canned.status, canned.code, canned.message, canned.headers)
        if seen.name.lower() in self.denied:
            return _error(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource. "
                "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'",
            )
        stored = self.secrets.get(seen.name.lower())
        versions = stored[1] if stored else []
        if seen.version:
            versions = [v for v in versions if v.version == seen.version]
        if stored is None or not versions:
            what = f"{seen.name}/{seen.version}" if seen.version else seen.name
            return _error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {what} was not found in this key vault. "
                "If you recently deleted this secret you may be able to recover it using the "
                "correct recovery command.",
            )
        version = versions[-1]
        if not version.enabled:
            return _error(
                403,
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
                inner="SecretDisabled",
            )
        attributes: dict[str, Any] = {
            "enabled": True,
            "created": version.created,
            "updated": version.created,
            "recoveryLevel": "Recoverable+Purgeable",
        }
        if version.expires is not None:
            attributes["exp"] = int(version.expires)
        body = {
            "value": version.value,
            "id": f"{self.url}/secrets/{stored[0]}/{version.version}",
            "attributes": attributes,
            "tags": {},
        }
        return web.json_response(body)

    # --- the token endpoints ----------------------------------------------------------------

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = f"{self.url}/{tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            }
        )

    async def _aad_token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        tenant = request.match_info["tenant"]
        self.token_requests.append(
            {"kind": "client_secret", "tenant": tenant, "client_id": str(form.get("client_id"))}
        )
        client_id = str(form.get("client_id", ""))
        if self.clients.get(client_id) != form.get("client_secret") or tenant != self.tenant:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                },
                status=401,
            )
        return web.json_response(
            {"token_type": "Bearer", "expires_in": 3599, "access_token": self._mint()}
        )

    async def _msi_token(self, request: web.Request) -> web.Response:
        self.token_requests.append(
            {
                "kind": "managed_identity",
                "resource": request.query.get("resource", ""),
                "client_id": request.query.get("client_id", ""),
            }
        )
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return web.json_response({"error": "bad header"}, status=401)
        return web.json_response(
            {
                "access_token": self._mint(),
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query.get("resource", ""),
                "token_type": "Bearer",
            }
        )

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown.append(f"{request.method} {request.path_qs}")
        return web.json_response({"error": "not served by the fake"}, status=404)

    def _mint(self) -> str:
        token = secrets.token_urlsafe(16)
        self._tokens.add(token)
        return token


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    inner: str | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner}
    return web.Response(
        status=status,
        text=json.dumps({"error": error}),
        content_type="application/json",
        headers=headers or {},
    )


@contextmanager
def running_vault(tmp: Path, **kwargs: Any) -> Iterator[KeyVaultFake]:
    fake = KeyVaultFake(tmp, **kwargs)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
