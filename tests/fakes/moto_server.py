"""moto's Secrets Manager on 127.0.0.1, behind a WSGI middleware with knobs and counters.

moto speaks the real protocol (the real aiobotocore client talks to it), but
it has no fault injection and it does not enforce BatchGetSecretValue's
20-id maximum. The middleware adds what the tests need, per operation (the
`X-Amz-Target` header's `secretsmanager.<Operation>`):

- `latency`: seconds to wait before answering every request;
- `throttle`: how many of the next requests to answer as AWS throttles
  (HTTP 400, `x-amzn-ErrorType: ThrottlingException`);
- `deny`: operations answered with AccessDeniedException (a policy without
  `secretsmanager:BatchGetSecretValue`, say);
- `fail`: operation -> (status, error code) answered instead of moto's answer;
- `malformed`: answer every request with HTTP 200 and a body that is not JSON;
- `requests`: (time.time(), operation, secret ids asked) of every request seen,
  faults included: what the store was asked, counted at the server.

In-process (`ThreadedMotoServer`) rather than the `moto_server` script in a
subprocess: measured here, both start in ~0.5 s and answer 100 sequential
GetSecretValue calls (boto3) in ~0.35 s, so speed does not decide; in-process
the knobs and counters are plain attributes (no control protocol to write),
and there is no child process to leak when a test run is killed. werkzeug
serves each request in a thread.
`ssl_context` serves the same app over HTTPS (the TLS tests).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.secretsmanager.models import SecretsManagerBackend, secretsmanager_backends
from werkzeug.serving import make_server

REGION = "us-east-1"
ACCOUNT = "123456789012"
"""moto's default account: the ARNs it answers with are in it."""

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class Seen:
    at: float
    operation: str
    secret_ids: tuple[str, ...]
    access_key: str = ""
    """The access key id that signed the request (which credentials, hence which session)."""


@dataclass
class Knobs:
    latency: float = 0.0
    throttle: int = 0
    deny: set[str] = field(default_factory=set)
    fail: dict[str, tuple[int, str]] = field(default_factory=dict)
    malformed: bool = False


class MotoFake(ThreadedMotoServer):
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self._ssl_context = ssl_context
        self.knobs = Knobs()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()

    # --- the server ------------------------------------------------------------------------------

    def _server_entry(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address,
            self._port,
            self._middleware(app),
            threaded=True,
            request_handler=MotoRequestHandler,
            ssl_context=self._ssl_context,
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{port}"

    def reset(self) -> None:
        """Forget every secret, knob and counter (moto's state is process-global).

        Only the Secrets Manager backend is reset, in-process: `POST /moto-api/reset`
        resets every service moto has and takes ~0.5 s, this takes microseconds.
        """
        secretsmanager_backends.reset()
        self.knobs = Knobs()
        with self._lock:
            self.requests.clear()

    # --- what it was asked -----------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Forget what was asked so far (the set-up's own requests), keep the secrets."""
        with self._lock:
            self.requests.clear()

    def by_operation(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seen in self.calls():
            counts[seen.operation] = counts.get(seen.operation, 0) + 1
        return counts

    def calls(self, operation: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if operation is None or s.operation == operation]

    def count(self, operation: str | None = None) -> int:
        return len(self.calls(operation))

    def ids_asked(self, operation: str) -> list[str]:
        return [i for seen in self.calls(operation) for i in seen.secret_ids]

    # --- the middleware --------------------------------------------------------------------------

    def _middleware(self, app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> Any:
        def middleware(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "").startswith("/moto-api"):
                return app(environ, start_response)
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            body = _read_body(environ)
            # JSON protocol (Secrets Manager): the target header; query protocol (STS): Action=
            operation = target.rpartition(".")[2] or _query_action(body)
            self._record(operation, body, _access_key(environ))
            knobs = self.knobs
            if knobs.latency:
                time.sleep(knobs.latency)
            if knobs.malformed:
                return _answer(start_response, 200, b"<html>not json", {})
            with self._lock:
                throttled = knobs.throttle > 0
                if throttled:
                    knobs.throttle -= 1
            if throttled:
                return _error(start_response, 400, "ThrottlingException", "Rate exceeded")
            if operation in knobs.deny:
                return _error(
                    start_response,
                    400,
                    "AccessDeniedException",
                    f"User: arn:aws:iam::{ACCOUNT}:user/test is not authorized to perform: "
                    f"secretsmanager:{operation} because no identity-based policy allows it",
                )
            if operation in knobs.fail:
                status, code = knobs.fail[operation]
                if not target:  # a query-protocol service (STS) answers errors in XML
                    return _xml_error(start_response, status, code, f"injected {code}")
                return _error(start_response, status, code, f"injected {code}")
            return app(environ, start_response)

        return middleware

    def _record(self, operation: str, body: bytes, access_key: str = "") -> None:
        try:
            asked = json.loads(body or b"{}")
        except ValueError:
            asked = {}
        if not isinstance(asked, dict):
            asked = {}
        ids = asked.get("SecretIdList") or ([asked["SecretId"]] if "SecretId" in asked else [])
        with self._lock:
            self.requests.append(Seen(time.time(), operation, tuple(ids), access_key))


def _query_action(body: bytes) -> str:
    from urllib.parse import parse_qs

    return parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]


def _access_key(environ: Environ) -> str:
    """`Credential=AKID/date/region/service/aws4_request` of a SigV4 Authorization header."""
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    _, found, rest = header.partition("Credential=")
    return rest.partition("/")[0] if found else ""


def _read_body(environ: Environ) -> bytes:
    """Read the request body and put it back for moto."""
    import io

    length = int(environ.get("CONTENT_LENGTH") or 0)
    body: bytes = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
    body = json.dumps({"__type": code, "message": message}).encode()
    return _answer(start_response, status, body, {"x-amzn-ErrorType": code})


def _xml_error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
    body = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
        f"<Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    ).encode()
    start_response(
        f"{status} Error", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _answer(
    start_response: StartResponse, status: int, body: bytes, headers: dict[str, str]
) -> list[bytes]:
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}.get(status, "Error")
    start_response(
        f"{status} {reason}",
        [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("Content-Length", str(len(body))),
            *headers.items(),
        ],
    )
    return [body]


def _current_follows_its_label() -> None:
    """Make moto answer the version that AWSCURRENT is on, as AWS does.

    moto 5.2 answers GetSecretValue and BatchGetSecretValue without a stage from
    a `default_version_id` that `UpdateSecretVersionStage` never moves: after a
    rotation's finishSecret step (AWSCURRENT moved to the AWSPENDING version)
    AWS serves the new value and moto kept serving the old one.
    """
    original = SecretsManagerBackend.update_secret_version_stage
    if getattr(original, "follows_label", False):
        return

    def update_secret_version_stage(
        self: SecretsManagerBackend,
        secret_id: str,
        version_stage: str,
        remove_from_version_id: str,
        move_to_version_id: str,
    ) -> tuple[str, str]:
        answer = original(
            self, secret_id, version_stage, remove_from_version_id, move_to_version_id
        )
        if version_stage == "AWSCURRENT" and move_to_version_id:
            self.secrets[secret_id].set_default_version_id(move_to_version_id)  # type: ignore[union-attr]
        return answer

    update_secret_version_stage.follows_label = True  # type: ignore[attr-defined]
    SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage  # type: ignore[method-assign]


_current_follows_its_label()
_SHARED: list[MotoFake] = []


def shared_moto() -> MotoFake:
    """The process's one plain-HTTP moto server, started on first use (moto's state is
    process-global anyway); stopped when the test process exits (a daemon thread)."""
    if not _SHARED:
        server = MotoFake()
        server.start()
        _SHARED.append(server)
    return _SHARED[0]
