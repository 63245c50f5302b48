"""A local HashiCorp Vault that speaks Vault's HTTP API and JSON envelopes, for tests.

No Vault server can be installed on the test hosts, so this aiohttp app plays
the parts smagent uses, answering as Vault does (checked by driving it with
hvac in tests/test_vault.py): the response envelope, `{"errors": [...]}` with
the status, and `Content-Type` exactly `application/json` (hvac ignores an
error body with a charset).

    GET  /v1/sys/internal/ui/mounts/<path>     the mount holding <path> (the vault CLI's preflight)
    GET  /v1/<kv1>/<path>                      KV v1
    GET  /v1/<kv2>/data/<path>[?version=N]     KV v2
    GET  /v1/<kv2>/metadata/<path>             KV v2 metadata (current_version)
    GET  /v1/database/creds/<role>             dynamic credentials with a lease (creates a "user")
    PUT  /v1/sys/leases/renew | revoke
    POST /v1/auth/approle/login
    POST /v1/auth/token/renew-self
    GET  /v1/auth/token/lookup-self

Knobs: `namespace` (requests must carry it in X-Vault-Namespace), `deny`
(paths answered 403), `fail_next` (429 rate-limit quota, 503 sealed, ...),
`latency`, `renew_refused`. Counters: `requests` (method, path, namespace,
monotonic time at arrival), `users_created`, and the `on_user_created` hook.
It runs in its own thread and event loop, so synchronous clients (hvac, a
subprocess run) and asyncio tests can both use it.

Leases end as in Vault: a revoke, or their expiry (the TTL granted, never
past the role's max_ttl), found by a sweeper every `SWEEP_EVERY` seconds.
`lease_events` records each issue, renewal and end (with why), for figures.
By default the "users" are names only. Opt in to a real database by setting
`database` to a `DatabaseEngine` (tests/fakes/vault_postgres.py has one for
PostgreSQL): issuing runs its `create`, a renewal its `renew` (the new
expiry), and a lease's end, by revoke or expiry, its `revoke` -- in a worker
thread, before the answer, as Vault's database engine does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import web

JSON = "application/json"
SWEEP_EVERY = 0.1
"""Seconds between two looks for expired leases (Vault's expiration manager)."""


class DatabaseEngine(Protocol):
    """What Vault's database secrets engine does in the database, for the fake to call.

    Blocking calls, run in a worker thread. `expires` is the lease's end, `time.time()`.
    """

    def create(self, username: str, password: str, expires: float) -> None: ...

    def renew(self, username: str, expires: float) -> None: ...

    def revoke(self, username: str) -> None: ...


LeaseEvent = Literal["issued", "renewed", "revoked", "expired"]


@dataclass(frozen=True)
class LeaseRecord:
    """One thing that happened to a lease (never with its password)."""

    event: LeaseEvent
    lease_id: str
    username: str
    at: float
    """time.monotonic() when it happened."""


@dataclass
class Token:
    ttl: float
    renewable: bool = True
    max_ttl: float = 3600.0
    issued: float = field(default_factory=time.time)
    expires: float = 0.0
    policies: tuple[str, ...] = ("default",)

    def __post_init__(self) -> None:
        self.expires = self.issued + self.ttl


@dataclass
class LeaseState:
    role: str
    username: str
    duration: float
    max_expires: float
    renewable: bool
    expires: float


@dataclass
class Seen:
    method: str
    path: str
    namespace: str | None
    at: float
    """time.monotonic() when the request arrived (before any latency)."""
    query: str = ""


@dataclass
class Fault:
    status: int
    message: str
    paths: str | None
    left: int
    retry_after: str | None = None
    html: bool = False


class VaultFake:
    """State of the fake Vault, and the knobs a test turns."""

    def __init__(self, *, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.mounts: dict[str, dict[str, Any]] = {
            "secret/": {"type": "kv", "options": {"version": "2"}},
            "kv/": {"type": "kv", "options": {"version": "1"}},
            "database/": {"type": "database", "options": None},
        }
        self.kv1: dict[str, dict[str, Any]] = {}
        self.kv2: dict[str, list[dict[str, Any]]] = {}
        self.db_roles: dict[str, tuple[float, float]] = {}
        """role -> (default ttl, max ttl) in seconds."""
        self.approles: dict[str, tuple[str, str]] = {}
        """role_id -> (secret_id, role name)."""
        self.approle_token_ttl = 60.0
        self.approle_token_max_ttl = 3600.0
        self.tokens: dict[str, Token] = {}
        self.leases: dict[str, LeaseState] = {}
        self.deny: set[str] = set()
        self.faults: list[Fault] = []
        self.latency = 0.0
        self.renew_refused = False
        self.requests: list[Seen] = []
        self.users_created = 0
        self.password_prefix = "A1a-"
        self.on_user_created: Callable[[str, str], None] | None = None
        self.database: DatabaseEngine | None = None
        """Opt-in: a real database behind database/creds (see the module's docstring)."""
        self.lease_events: list[LeaseRecord] = []
        self.in_transition = 0
        self.count_lock = threading.Lock()
        """Held while `leases` and `in_transition` change together (another thread counts)."""
        """Leases being issued (user created, lease not yet recorded) or ended (lease gone,
        user not yet dropped): `live_leases` counts them, so a user never outnumbers them."""
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._counter = itertools.count(1)

    # --- set-up helpers -------------------------------------------------------------------

    def reset(self) -> None:
        """Back to a fresh state, still served at the same address."""
        url, database = self.url, self.database
        self.__init__(namespace=self.namespace)  # type: ignore[misc]
        self.url, self.database = url, database

    def add_token(self, token: str, ttl: float = 3600.0, *, renewable: bool = True) -> str:
        self.tokens[token] = Token(ttl, renewable, max(ttl, 3600.0))
        return token

    def put_kv1(self, path: str, data: dict[str, Any]) -> None:
        self.kv1[path.strip("/")] = dict(data)

    def put_kv2(self, path: str, data: dict[str, Any]) -> int:
        versions = self.kv2.setdefault(path.strip("/"), [])
        versions.append({"data": dict(data), "created_time": _now_rfc3339()})
        return len(versions)

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        message: str | None = None,
        paths: str | None = None,
        retry_after: str | None = None,
        html: bool = False,
    ) -> None:
        """Answer the next `count` requests (under `paths`, a prefix after /v1/) with `status`;
        `html`: with `message` as a text/html page, as a proxy in front of Vault would."""
        words = message or _DEFAULT_WORDS.get(status, "internal error")
        self.faults.append(Fault(status, words, paths, count, retry_after, html))

    def live_leases(self) -> int:
        """Leases issued and not yet ended, and those being issued or ended this instant."""
        with self.count_lock:
            return len(self.leases) + self.in_transition

    def count(self, event: LeaseEvent) -> int:
        return sum(1 for record in self.lease_events if record.event == event)

    def seen(self, prefix: str = "", method: str | None = None) -> list[Seen]:
        return [
            r
            for r in self.requests
            if r.path.startswith(prefix) and (method is None or r.method == method)
        ]

    # --- the app --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v1/{path:.*}", self._dispatch)
        return app

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        namespace = request.headers.get("X-Vault-Namespace")
        self.requests.append(
            Seen(request.method, path, namespace, time.monotonic(), request.query_string)
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        for fault in self.faults:
            if fault.left > 0 and (fault.paths is None or path.startswith(fault.paths)):
                fault.left -= 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                if 300 <= fault.status < 400:  # a standby sending the client to the active node
                    headers["Location"] = f"http://127.0.0.1:1/v1/{path}"
                if fault.html:
                    return web.Response(
                        status=fault.status,
                        text=fault.message,
                        headers=headers,
                        content_type="text/html",
                    )
                return _errors(fault.status, [fault.message.replace("{path}", path)], headers)
        if path == "sys/health":
            return _json({"initialized": True, "sealed": False, "standby": False})
        if path == "auth/approle/login" and request.method in ("POST", "PUT"):
            return self._approle_login(await _body(request))
        if (namespace or None) != self.namespace:
            return _errors(403, ["permission denied"])
        token = self.tokens.get(request.headers.get("X-Vault-Token", ""))
        if token is None or token.expires < time.time():
            return _errors(403, ["permission denied"])
        if path.rstrip("/") in self.deny or any(path.startswith(d + "/") for d in self.deny):
            return _errors(403, ["1 error occurred:\n\t* permission denied\n\n"])
        if path == "auth/token/lookup-self" and request.method == "GET":
            return self._lookup_self(request.headers["X-Vault-Token"], token)
        if path == "auth/token/renew-self" and request.method in ("POST", "PUT"):
            return self._renew_self(token, await _body(request))
        if path.startswith("sys/internal/ui/mounts/") and request.method == "GET":
            return self._mount_of(path.removeprefix("sys/internal/ui/mounts/"))
        if path == "sys/leases/renew" and request.method in ("POST", "PUT"):
            return await self._renew_lease(await _body(request))
        if path == "sys/leases/revoke" and request.method in ("POST", "PUT"):
            lease_id = str((await _body(request)).get("lease_id"))
            lease = self._take(lease_id)
            if lease is None:
                return _errors(400, ["invalid lease ID"])
            problem = await self._end(lease_id, lease, "revoked")
            if problem is not None:
                return _errors(500, [problem])
            return web.Response(status=204)
        if request.method != "GET":
            return _errors(405, ["unsupported operation"])
        mount, rest = self._split(path)
        if mount is None:
            return _errors(404, [f"no handler for route {path!r}. route entry not found."])
        kind = self.mounts[mount]
        if kind["type"] == "database":
            return await self._creds(rest)
        if kind["options"] and kind["options"].get("version") == "2":
            return self._kv2(rest, request.query.get("version"))
        data = self.kv1.get(path.strip("/"))
        if data is None:
            return _errors(404, [])
        return _json(_envelope(data, lease_duration=2764800))

    def _split(self, path: str) -> tuple[str | None, str]:
        for mount in sorted(self.mounts, key=len, reverse=True):
            if (path + "/").startswith(mount):
                return mount, path[len(mount) :]
        return None, path

    def _mount_of(self, path: str) -> web.Response:
        mount, _ = self._split(path)
        if mount is None:
            return _errors(
                403,
                [
                    "preflight capability check returned 403, please ensure client's "
                    f'policies grant access to path "{path}/"'
                ],
            )
        info = self.mounts[mount]
        data = {
            "accessor": f"{info['type']}_0001",
            "config": {"default_lease_ttl": 0, "force_no_cache": False, "max_lease_ttl": 0},
            "description": "",
            "external_entropy_access": False,
            "local": False,
            "options": info["options"],
            "path": mount,
            "seal_wrap": False,
            "type": info["type"],
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, mount)),
        }
        return _json(_envelope(data))

    def _kv2(self, rest: str, version: str | None) -> web.Response:
        area, _, name = rest.partition("/")
        versions = self.kv2.get(name.strip("/"))
        if area == "metadata":
            if not versions:
                return _errors(404, [])
            return _json(_envelope(_metadata(versions)))
        if area != "data":
            return _errors(404, [f"no handler for route {rest!r}. route entry not found."])
        if not versions:
            return _errors(404, [])
        number = len(versions) if version in (None, "0") else int(version or 0)
        if not 1 <= number <= len(versions):
            return _errors(404, [])
        entry = versions[number - 1]
        metadata = {
            "created_time": entry["created_time"],
            "custom_metadata": None,
            "deletion_time": "",
            "destroyed": False,
            "version": number,
        }
        return _json(_envelope({"data": entry["data"], "metadata": metadata}))

    async def _creds(self, rest: str) -> web.Response:
        area, _, role = rest.partition("/")
        if area != "creds" or role not in self.db_roles:
            return _errors(400, [f"unknown role: {role}"])
        ttl, max_ttl = self.db_roles[role]
        number = next(self._counter)
        username = f"v-approle-{role}-{number:04d}"
        password = f"{self.password_prefix}{uuid.uuid4().hex}"
        lease_id = f"database/creds/{role}/{uuid.uuid4().hex[:24]}"
        now = time.time()
        if self.database is not None:
            with self.count_lock:
                self.in_transition += 1
            try:
                await asyncio.to_thread(self.database.create, username, password, now + ttl)
            except Exception as exc:  # Vault's words name the role, never the password
                with self.count_lock:
                    self.in_transition -= 1
                return _errors(500, [f"creating user {username} failed: {type(exc).__name__}"])
        self.users_created += 1
        if self.on_user_created is not None:
            self.on_user_created(username, password)
        with self.count_lock:
            self.leases[lease_id] = LeaseState(role, username, ttl, now + max_ttl, True, now + ttl)
            if self.database is not None:
                self.in_transition -= 1
        self.lease_events.append(LeaseRecord("issued", lease_id, username, time.monotonic()))
        body = _envelope({"username": username, "password": password}, lease_duration=int(ttl))
        body.update(lease_id=lease_id, renewable=True)
        return _json(body)

    async def _renew_lease(self, body: dict[str, Any]) -> web.Response:
        lease_id = str(body.get("lease_id", ""))
        lease = self.leases.get(lease_id)
        now = time.time()
        if lease is None or lease.expires < now:
            return _errors(400, ["lease not found"])
        if self.renew_refused or not lease.renewable:
            return _errors(400, ["lease is not renewable"])
        increment = float(body.get("increment") or lease.duration)
        granted = max(0.0, min(increment, lease.max_expires - now))
        if self.database is not None:  # Vault's renew_statements: ALTER ROLE ... VALID UNTIL
            try:
                await asyncio.to_thread(self.database.renew, lease.username, now + granted)
            except Exception as exc:
                words = f"renewing user {lease.username} failed: {type(exc).__name__}"
                return _errors(500, [words])
        lease.expires = now + granted
        self.lease_events.append(LeaseRecord("renewed", lease_id, lease.username, time.monotonic()))
        answer = _envelope(None, lease_duration=int(granted))
        answer.update(lease_id=lease_id, renewable=True)
        return _json(answer)

    def _take(self, lease_id: str) -> LeaseState | None:
        """Take a lease out as it ends (still counted until its user is dropped)."""
        with self.count_lock:
            lease = self.leases.pop(lease_id, None)
            if lease is not None and self.database is not None:
                self.in_transition += 1
            return lease

    async def _end(self, lease_id: str, lease: LeaseState, why: LeaseEvent) -> str | None:
        """A lease's end (already out of `leases`): the user is dropped; Vault's words if not."""
        self.lease_events.append(LeaseRecord(why, lease_id, lease.username, time.monotonic()))
        if self.database is None:
            return None
        try:
            await asyncio.to_thread(self.database.revoke, lease.username)
        except Exception as exc:
            return f"revoking user {lease.username} failed: {type(exc).__name__}"
        finally:
            with self.count_lock:
                self.in_transition -= 1
        return None

    async def sweep(self) -> None:
        """Vault's expiration manager: a lease past its end is revoked, for ever (a task)."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = time.time()
            for lease_id in [k for k, v in self.leases.items() if v.expires <= now]:
                lease = self._take(lease_id)
                if lease is not None:
                    await self._end(lease_id, lease, "expired")

    def _approle_login(self, body: dict[str, Any]) -> web.Response:
        role_id = str(body.get("role_id", ""))
        known = self.approles.get(role_id)
        if known is None or known[0] != body.get("secret_id"):
            return _errors(400, ["invalid role or secret ID"])
        token = f"hvs.{uuid.uuid4().hex}"
        self.tokens[token] = Token(self.approle_token_ttl, True, self.approle_token_max_ttl)
        return _json(_envelope(None, auth=self._auth(token, known[1])))

    def _auth(self, token: str, role: str) -> dict[str, Any]:
        state = self.tokens[token]
        return {
            "client_token": token,
            "accessor": f"acc-{token[-6:]}",
            "policies": list(state.policies),
            "token_policies": list(state.policies),
            "metadata": {"role_name": role},
            "lease_duration": int(state.expires - time.time() + 0.5),
            "renewable": state.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": True,
            "mfa_requirement": None,
            "num_uses": 0,
        }

    def _renew_self(self, token: Token, body: dict[str, Any]) -> web.Response:
        if self.renew_refused or not token.renewable:
            return _errors(400, ["lease is not renewable"])
        key = next(k for k, v in self.tokens.items() if v is token)
        now = time.time()
        increment = float(body.get("increment") or token.ttl)
        token.expires = min(now + increment, token.issued + token.max_ttl)
        return _json(_envelope(None, auth=self._auth(key, "")))

    def _lookup_self(self, key: str, token: Token) -> web.Response:
        now = time.time()
        data = {
            "accessor": f"acc-{key[-6:]}",
            "creation_time": int(token.issued),
            "creation_ttl": int(token.ttl),
            "display_name": "token",
            "entity_id": "",
            "expire_time": None,
            "explicit_max_ttl": 0,
            "id": key,
            "issue_time": _now_rfc3339(),
            "meta": None,
            "num_uses": 0,
            "orphan": True,
            "path": "auth/token/create",
            "policies": list(token.policies),
            "renewable": token.renewable,
            "ttl": int(token.expires - now + 0.5),
            "type": "service",
        }
        return _json(_envelope(data))


_DEFAULT_WORDS = {
    429: 'request path "{path}": rate limit quota exceeded',
    503: "Vault is sealed",
    500: "internal error",
}


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _metadata(versions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cas_required": False,
        "created_time": versions[0]["created_time"],
        "current_version": len(versions),
        "custom_metadata": None,
        "delete_version_after": "0s",
        "max_versions": 0,
        "oldest_version": 1,
        "updated_time": versions[-1]["created_time"],
        "versions": {
            str(i): {"created_time": v["created_time"], "deletion_time": "", "destroyed": False}
            for i, v in enumerate(versions, 1)
        },
    }


def _envelope(
    data: Any, *, lease_duration: int = 0, auth: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "lease_id": "",
        "renewable": False,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": None,
        "warnings": None,
        "auth": auth,
        "mount_type": "",
    }


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    # exactly application/json, no charset: hvac reads error bodies only then
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": JSON}
    )


def _errors(status: int, errors: list[str], headers: dict[str, str] | None = None) -> web.Response:
    response = _json({"errors": errors}, status)
    response.headers.update(headers or {})
    return response


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@contextmanager
def running(fake: VaultFake, *, tls: Path | None = None) -> Iterator[VaultFake]:
    """Serve `fake` on 127.0.0.1 (HTTPS with the cert+key PEM at `tls`) in its own thread."""
    ready = threading.Event()
    stop: asyncio.Event | None = None
    loop = asyncio.new_event_loop()
    problem: list[BaseException] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        # a stalled handler (the latency knob) must not hold the test's teardown
        runner = web.AppRunner(
            fake.app(), access_log=None, handle_signals=False, shutdown_timeout=0.2
        )
        await runner.setup()
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        sweeper = asyncio.create_task(fake.sweep(), name="vault-fake-sweeper")
        ready.set()
        try:
            await stop.wait()
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await runner.cleanup()

    def main() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # reported to the test below
            problem.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="vault-fake", daemon=True)
    thread.start()
    ready.wait(10)
    if problem:
        raise problem[0]
    try:
        yield fake
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
