"""`smagent render` (the agent) as a real process against the local stores, end to end.

moto (AWS Secrets Manager), the Vault fake and the HTTPS Key Vault fake, each
reached through a `Gate`: a TCP port of ours in front of the store that a test
opens, takes down (every connection reset: the store is gone) or makes hang
(connections accepted, requests read, nothing ever answered). What is counted
is counted at the store (moto's and the fakes' request logs, the gate's
connections), what is signalled at a SIGHUP counter, what is written on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests import leaks
from tests.agent_config import AWS_ENV, AgentWorkspace, hup
from tests.agent_process import AgentFactory, AgentProcess, Mark
from tests.fakes.keyvault import KeyVaultFake, running_vault
from tests.fakes.moto_server import REGION, MotoFake, shared_moto
from tests.fakes.vault import VaultFake, running
from tests.sighup_counter import SighupCounter

AWS_ONE = leaks.plant("canary-agent-aws-first-Vb27", "AWS_ONE")
AWS_TWO = leaks.plant("canary-agent-aws-rotated-Lm40", "AWS_TWO")
AWS_THREE = leaks.plant("canary-agent-aws-while-down-Qe13", "AWS_THREE")
KV_ONE = leaks.plant("canary-agent-vault-kv-first-Ty83", "KV_ONE")
KV_TWO = leaks.plant("canary-agent-vault-kv-second-Rp52", "KV_TWO")
AZ_ONE = leaks.plant("canary-agent-azure-first-Hs19", "AZ_ONE")
AZ_TWO = leaks.plant("canary-agent-azure-second-Wd66", "AZ_TWO")
VAULT_TOKEN = leaks.plant("hvs.canary-agent-stores-token-Ck7", "VAULT_TOKEN")
CLIENT_SECRET = leaks.plant("canary-agent-kv-client-secret-Nu5", "CLIENT_SECRET")
DB_PREFIX = "canary-agent-dbpw-"
"""Dynamic database passwords begin with this (the rest is random): checked for leaks below."""
TENANT = "tenant-1"
CLIENT_ID = "app-1"

REFRESH = 0.3
"""`defaults.refresh` of these tests, in seconds."""
SETTLE = 1.0
"""The most a change may take to reach the file and its signal, beyond one refresh."""
AWS = {**AWS_ENV, "AWS_DEFAULT_REGION": REGION}


# --- a port in front of a store -----------------------------------------------------------------


@dataclass
class Gate:
    """A TCP forwarder on 127.0.0.1 in front of `upstream` ("scheme://host:port"), with a mode:

    - "open": every byte forwarded both ways;
    - "down": each connection, new or already open, is reset (RST) at its next byte: a store
      that stopped (counted: `connections` after `mark`);
    - "hang": connections accepted and requests read, nothing forwarded or answered.
    """

    upstream: str
    mode: str = "open"
    accepted: list[tuple[float, str]] = field(default_factory=list)
    """(time.monotonic(), mode) of every connection accepted."""
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{urlsplit(self.upstream).scheme}://127.0.0.1:{self.port}"

    def start(self) -> Gate:
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def main() -> None:
            try:
                self._loop.run_until_complete(serve())
                self._loop.run_forever()
            finally:
                for task in asyncio.all_tasks(self._loop):
                    task.cancel()
                self._loop.run_until_complete(asyncio.sleep(0))
                self._loop.close()

        self._thread = threading.Thread(target=main, name="gate", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the gate did not start"
        return self

    def set(self, mode: str) -> None:
        assert mode in ("open", "down", "hang")
        self.mode = mode

    def connections(self, since: float = 0.0, mode: str | None = None) -> list[float]:
        return [at for at, m in list(self.accepted) if at >= since and (mode in (None, m))]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append((time.monotonic(), self.mode))
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "down":
                _reset(writer)
                return
            if self.mode == "hang":
                while await reader.read(65536):
                    pass
                return
            parts = urlsplit(self.upstream)
            up_reader, upstream = await asyncio.open_connection(parts.hostname, parts.port)
            self._writers.add(upstream)
            await asyncio.gather(
                self._pump(reader, upstream, writer), self._pump(up_reader, writer, writer)
            )
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the gate closing: the connection ends with it
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        while data := await source.read(65536):
            if self.mode == "down":
                _reset(client)
                raise ConnectionResetError
            if self.mode == "hang":
                continue  # swallowed: the other side waits forever
            sink.write(data)
            await sink.drain()
        with contextlib.suppress(OSError):
            if sink.can_write_eof():
                sink.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def gate(upstream: str) -> Iterator[Gate]:
    opened = Gate(upstream).start()
    try:
        yield opened
    finally:
        opened.stop()


# --- the stores ---------------------------------------------------------------------------------


@pytest.fixture
def moto() -> MotoFake:
    server = shared_moto()
    server.reset()
    return server


@pytest.fixture
def aws_gate(moto: MotoFake) -> Iterator[Gate]:
    with gate(moto.endpoint) as opened:
        yield opened


@pytest.fixture
def vault() -> Iterator[VaultFake]:
    fake = VaultFake()
    fake.add_token(VAULT_TOKEN)
    fake.password_prefix = DB_PREFIX
    with running(fake):
        yield fake


@pytest.fixture
def vault_gate(vault: VaultFake) -> Iterator[Gate]:
    with gate(vault.url) as opened:
        yield opened


def aws_client(moto: MotoFake, key: str = AWS["AWS_ACCESS_KEY_ID"], attempts: int = 3) -> Any:
    return boto3.client(
        "secretsmanager",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        config=BotoConfig(retries={"total_max_attempts": attempts, "mode": "legacy"}),
    )


def workspace(tmp_path: Path, refresh: float = REFRESH) -> AgentWorkspace:
    ws = AgentWorkspace(tmp_path, refresh=f"{int(refresh * 1000)}ms")
    ws.secrets = {}
    ws.namespaces = {}
    return ws


def read(path: Path) -> str:
    return path.read_text()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `predicate` every 10 ms; the time.monotonic() it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic()


def status_of(ws: AgentWorkspace) -> dict[str, Any]:
    assert ws.state_dir is not None
    data: dict[str, Any] = json.loads((ws.state_dir / "status.json").read_text())
    return data


def provider_state(ws: AgentWorkspace, name: str) -> str:
    return str(next(p for p in status_of(ws)["providers"] if p["name"] == name)["state"])


def cycles(process: AgentProcess, count: int, **fields: Any) -> None:
    """Let `count` refresh cycles of a provider pass (its `provider.refreshed` debug lines)."""
    for _ in range(count):
        process.wait_for("provider.refreshed", timeout=5, **fields)


# --- AWS ----------------------------------------------------------------------------------------


def aws_workspace(
    tmp_path: Path, url: str, counter: SighupCounter, *, refresh: float = REFRESH
) -> tuple[AgentWorkspace, Path]:
    ws = workspace(tmp_path, refresh)
    ws.aws("aws", url)
    ws.namespace("db", "aws", secret="prod/db")
    out = ws.contents("out/db.conf", "pw={{ secrets.db.password }}\n", on_change=[hup(counter)])
    ws.write()
    return ws, out


def test_aws_rotation_reaches_the_file_with_one_sighup_unchanged_gives_none(
    agent: AgentFactory,
    tmp_path: Path,
    moto: MotoFake,
    aws_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """A new AWSCURRENT reaches the file and one SIGHUP within refresh + 1 s; checks of an
    unchanged secret write nothing and signal nothing."""
    client = aws_client(moto)
    client.create_secret(Name="prod/db", SecretString=json.dumps({"password": AWS_ONE}))
    ws, out = aws_workspace(tmp_path, aws_gate.url, sighup_counter)
    process = agent(ws.config_path, env=AWS, log_level="debug")
    process.wait_for("agent.ready")
    assert f"pw={AWS_ONE}\n" == read(out)
    sighup_counter.wait_count(1)

    cycles(process, 2, provider="aws")
    client.put_secret_value(SecretId="prod/db", SecretString=json.dumps({"password": AWS_TWO}))
    rotated = time.monotonic()
    written = wait_until(lambda: read(out) == f"pw={AWS_TWO}\n", REFRESH + SETTLE, "rotation")
    sighup_counter.wait_count(2, timeout=REFRESH + SETTLE)
    assert written - rotated <= REFRESH + SETTLE
    assert sighup_counter.times()[-1] - rotated <= REFRESH + SETTLE
    process.wait_for("secret.rotated", generation=1)

    mark = process.mark()
    stamp = out.stat().st_mtime_ns
    moto.reset_counters()
    cycles(process, 5, provider="aws")
    assert [] == process.events("template.rendered", since=mark)
    assert [] == process.events("secret.rotated", since=mark)
    assert 2 == sighup_counter.count()
    assert stamp == out.stat().st_mtime_ns
    assert f"pw={AWS_TWO}\n" == read(out)
    assert process.alive()


def test_aws_checks_are_batched_per_refresh_cycle_not_per_template(
    agent: AgentFactory, tmp_path: Path, moto: MotoFake, aws_gate: Gate
) -> None:
    """45 secrets in 45 templates cost ceil(45 / 20) = 3 BatchGetSecretValue per refresh
    cycle, counted at moto, and nothing else."""
    client = aws_client(moto)
    ws = workspace(tmp_path)
    ws.aws("aws", aws_gate.url)
    count = 45
    for i in range(count):
        client.create_secret(Name=f"app/{i}", SecretString=json.dumps({"password": AWS_ONE}))
        ws.namespace(f"s{i}", "aws", secret=f"app/{i}")
        ws.contents(f"out/{i}.conf", f"{{{{ secrets.s{i}.password }}}}\n")
    ws.write()
    process = agent(ws.config_path, env=AWS, log_level="debug")
    process.wait_for("agent.ready")
    cycles(process, 2, provider="aws")  # let the first checks line up
    mark = process.mark()
    moto.reset_counters()
    cycles(process, 7, provider="aws")
    refreshed = process.events("provider.refreshed", since=mark)
    ends = [logged_at(event) for event in refreshed]
    calls = moto.calls()
    per_cycle = [  # the requests each cycle made: those after the previous one's end
        [c for c in calls if start < c.at <= end] for start, end in itertools.pairwise(ends)
    ]
    print(
        f"moto per refresh cycle of {count} secrets: "
        f"{[Counter(c.operation for c in cycle) for cycle in per_cycle]}"
    )
    assert {count} == {event["references"] for event in refreshed}
    assert [["BatchGetSecretValue"] * 3] * 6 == [[c.operation for c in cyc] for cyc in per_cycle]
    assert all(len(call.secret_ids) <= 20 for call in calls)
    assert [] == process.events("template.rendered", since=mark)


# --- Vault --------------------------------------------------------------------------------------


def test_vault_kv2_new_version_reaches_the_file(
    agent: AgentFactory,
    tmp_path: Path,
    vault: VaultFake,
    vault_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """A new KV v2 version reaches the file and one SIGHUP within refresh + 1 s; the checks
    in between read only the metadata (one small GET per secret per cycle)."""
    vault.put_kv2("app", {"password": KV_ONE})
    ws = workspace(tmp_path)
    ws.vault("vault", vault_gate.url, VAULT_TOKEN)
    ws.namespace("app", "vault", secret="secret/data/app")
    out = ws.contents(
        "out/app.env", "PW={{ secrets.app.password }}\n", on_change=[hup(sighup_counter)]
    )
    ws.write()
    process = agent(ws.config_path, log_level="debug")
    process.wait_for("agent.ready")
    assert f"PW={KV_ONE}\n" == read(out)
    sighup_counter.wait_count(1)
    cycles(process, 2, provider="vault")
    before = len(vault.requests)
    cycles(process, 4, provider="vault")
    paths = [seen.path for seen in vault.requests[before:]]
    print(f"vault requests per 4 KV v2 checks: {paths}")
    assert set(paths) == {"secret/metadata/app"}

    vault.put_kv2("app", {"password": KV_TWO})
    rotated = time.monotonic()
    wait_until(lambda: read(out) == f"PW={KV_TWO}\n", REFRESH + SETTLE, "new KV v2 version")
    sighup_counter.wait_count(2, timeout=REFRESH + SETTLE)
    assert sighup_counter.times()[-1] - rotated <= REFRESH + SETTLE
    process.wait_for("secret.rotated", generation=1)


def test_vault_dynamic_lease_renewed_replaced_and_shared(
    agent: AgentFactory,
    tmp_path: Path,
    vault: VaultFake,
    vault_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """Database credentials with a 3 s TTL and 5 s max_ttl: renewed at about 2/3 of the
    TTL, replaced before max_ttl (new user in both files, one SIGHUP), and two templates
    (two spellings) share one lease: one user created per lease, not per template."""
    ttl, max_ttl = 3.0, 5.0
    vault.db_roles["app"] = (ttl, max_ttl)
    issued: list[tuple[float, str]] = []

    def created(username: str, password: str) -> None:
        leaks.plant(password, f"DB_PASSWORD_{username}")
        issued.append((time.monotonic(), username))

    vault.on_user_created = created
    ws = workspace(tmp_path)
    ws.vault("vault", vault_gate.url, VAULT_TOKEN)
    ws.namespace("pg", "vault", secret="database/creds/app")
    first = ws.contents(
        "out/pgbouncer.txt",
        '"{{ secrets.pg.username }}" "{{ secrets.pg.password }}"\n',
        on_change=[hup(sighup_counter)],
    )
    second = ws.contents(
        "out/app.env",
        'USER={{ secret("vault:database/creds/app", key="username") }}\n'
        'PW={{ secret("vault:/database/creds/app/", key="password") }}\n',
        on_change=[hup(sighup_counter)],
    )
    ws.write()
    process = agent(ws.config_path, log_level="debug")
    process.wait_for("agent.ready")
    assert 1 == len(issued)
    user = issued[0][1]
    assert read(first).startswith(f'"{user}" "{DB_PREFIX}')
    assert read(second).startswith(f"USER={user}\nPW={DB_PREFIX}")
    sighup_counter.wait_count(1)

    wait_until(lambda: len(issued) == 2, max_ttl + SETTLE, "a new lease before max_ttl")
    new_user = issued[1][1]
    replaced_at = issued[1][0]
    assert replaced_at - issued[0][0] < max_ttl
    wait_until(
        lambda: read(first).startswith(f'"{new_user}"') and f"USER={new_user}\n" in read(second),
        SETTLE,
        "the new credentials in both files",
    )
    sighup_counter.wait_count(2, timeout=SETTLE)
    renewals = [
        seen.at - issued[0][0] for seen in vault.seen("sys/leases/renew") if seen.at < replaced_at
    ]
    print(
        f"lease issued, renewed at {[round(r, 2) for r in renewals]} s, replaced at "
        f"{replaced_at - issued[0][0]:.2f} s (ttl {ttl:g}, max_ttl {max_ttl:g})"
    )
    assert 2 == len(issued)
    assert renewals, "no renewal before the replacement"
    assert ttl * 2 / 3 - 0.3 <= renewals[0] <= ttl * 2 / 3 + 0.5
    assert len(renewals) <= 4
    assert 2 == sighup_counter.count()


# --- Azure Key Vault ----------------------------------------------------------------------------


def test_azure_new_version_reaches_the_file(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """A new Key Vault secret version reaches the file and one SIGHUP within refresh + 1 s;
    unchanged checks write nothing."""
    with running_vault(tmp_path, tenant=TENANT) as kv:
        kv.clients[CLIENT_ID] = CLIENT_SECRET
        kv.put("db-password", AZ_ONE)
        ws = workspace(tmp_path)
        secret_file = tmp_path / "kv-client-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        secret_file.chmod(0o600)
        leaks.allow_secrets_in(secret_file)
        ws.providers["kv"] = azure_provider(kv, secret_file)
        ws.namespace("az", "kv")
        out = ws.contents(
            "out/az.conf", "pw={{ secrets.az['db-password'] }}\n", on_change=[hup(sighup_counter)]
        )
        ws.write()
        process = agent(ws.config_path, log_level="debug")
        process.wait_for("agent.ready", timeout=15)
        assert f"pw={AZ_ONE}\n" == read(out)
        sighup_counter.wait_count(1)
        cycles(process, 2, provider="kv")
        mark = process.mark()
        reads = len(kv.vault_reads())
        cycles(process, 3, provider="kv")
        print(f"key vault reads per 3 checks of 1 secret: {len(kv.vault_reads()) - reads}")
        assert [] == process.events("template.rendered", since=mark)

        kv.put("db-password", AZ_TWO)
        rotated = time.monotonic()
        wait_until(lambda: read(out) == f"pw={AZ_TWO}\n", REFRESH + SETTLE, "new version")
        sighup_counter.wait_count(2, timeout=REFRESH + SETTLE)
        assert sighup_counter.times()[-1] - rotated <= REFRESH + SETTLE
        process.wait_for("secret.rotated", generation=1)
        assert 0 == process.stop()


def azure_provider(kv: KeyVaultFake, secret_file: Path) -> dict[str, Any]:
    return {
        "type": "azure",
        "vault_url": kv.url,
        "credential": "client_secret",
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret_file": str(secret_file),
        "authority_host": kv.url,
        "ca_cert": str(kv.ca_path),
        "verify_challenge_resource": False,
    }


# --- outages ------------------------------------------------------------------------------------


def report_outage(
    name: str,
    process: AgentProcess,
    store: Gate,
    mark: Mark,
    up: tuple[float, float, int],
    down: tuple[float, float],
) -> None:
    """Requests while the store was up (`up`: start, end, requests the store saw) and
    connections to its port while it was down: only the first look of the outage retries;
    each later look is one probe (two connections for aiohttp, which sends an idempotent
    request again once when the server drops the connection), and looks come no faster
    than half the refresh (the backoff is capped at it, jittered down to half)."""
    while_down = [t for t in store.connections(mode="down") if down[0] <= t < down[1]]
    events = [
        e
        for e in process.events("provider.refreshed", since=mark, provider=name)
        if down[0] <= e.at < down[1]
    ]
    looks = [logged_at(e) for e in events]
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    later = [t for t in while_down if t > events[0].at]
    print(
        f"{name}: up {up[2] / (up[1] - up[0]):.1f} requests/s; down "
        f"{len(while_down) / (down[1] - down[0]):.1f} connections/s over "
        f"{down[1] - down[0]:.1f} s: {len(while_down)} in {len(looks)} looks "
        f"({len(while_down) - len(later)} in the first, {len(later) / (len(looks) - 1):.1f} "
        f"per later look), gaps {min(gaps):.2f}-{max(gaps):.2f} s"
    )
    assert len(looks) >= 4
    assert len(later) <= 2 * (len(looks) - 1)
    assert min(gaps[1:]) >= 0.4 * REFRESH  # backoff capped at the refresh, jittered to half


def logged_at(event: dict[str, Any]) -> float:
    """The agent's own time of a log line (seconds since the epoch)."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def ride_out_an_outage(
    process: AgentProcess,
    ws: AgentWorkspace,
    gate: Gate,
    provider: str,
    asked: Callable[[], int],
    change: Callable[[], None],
    out: Path,
    before: str,
    after: str,
    sighup_counter: SighupCounter,
) -> None:
    """The outage both stores go through: up for 5 cycles, down for 6 while `change` is made
    at the store (file kept, no signal, one `provider.unavailable`, status says unavailable),
    then up again: the change arrives with one `provider.recovered` and one more SIGHUP."""
    cycles(process, 2, provider=provider)
    up_start, count = time.monotonic(), asked()
    cycles(process, 5, provider=provider)
    up = (up_start, time.monotonic(), asked() - count)
    stamp = out.stat().st_mtime_ns

    mark = process.mark()
    gate.set("down")
    down_at = time.monotonic()
    process.wait_for("provider.unavailable", provider=provider)
    change()
    cycles(process, 6, provider=provider)
    wait_until(lambda: provider_state(ws, provider) == "unavailable", 2, "status: unavailable")
    up_again = time.monotonic()
    assert process.alive()
    assert stamp == out.stat().st_mtime_ns
    assert before == read(out)
    assert 1 == sighup_counter.count()
    assert 1 == len(process.events("provider.unavailable", since=mark))
    assert [] == process.events("template.rendered", since=mark)
    assert [] == process.events("template.failed", since=mark)

    gate.set("open")
    process.wait_for("provider.recovered", provider=provider)
    wait_until(lambda: read(out) == after, REFRESH + SETTLE, "the change after the outage")
    sighup_counter.wait_count(2, timeout=SETTLE)
    wait_until(lambda: provider_state(ws, provider) == "ok", 2, "status.json: ok again")
    cycles(process, 2, provider=provider)
    assert 1 == len(process.events("provider.unavailable", since=mark))
    assert 1 == len(process.events("provider.recovered", since=mark))
    assert 2 == sighup_counter.count()
    report_outage(provider, process, gate, mark, up, (down_at, up_again))


def test_aws_outage_keeps_files_logs_once_and_recovers_with_the_rotation_made_meanwhile(
    agent: AgentFactory,
    tmp_path: Path,
    moto: MotoFake,
    aws_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """AWS down for several refresh cycles: file unchanged, no signal, agent alive, one
    `provider.unavailable`, status.json says unavailable; a rotation made meanwhile arrives
    after it returns, with one `provider.recovered` and one SIGHUP."""
    client = aws_client(moto)
    client.create_secret(Name="prod/db", SecretString=json.dumps({"password": AWS_ONE}))
    ws, out = aws_workspace(tmp_path, aws_gate.url, sighup_counter)
    process = agent(ws.config_path, env=AWS, log_level="debug")
    process.wait_for("agent.ready")
    sighup_counter.wait_count(1)
    ride_out_an_outage(
        process,
        ws,
        aws_gate,
        "aws",
        moto.count,
        lambda: client.put_secret_value(
            SecretId="prod/db", SecretString=json.dumps({"password": AWS_THREE})
        ),
        out,
        f"pw={AWS_ONE}\n",
        f"pw={AWS_THREE}\n",
        sighup_counter,
    )


def test_vault_outage_keeps_files_logs_once_and_recovers_with_the_version_made_meanwhile(
    agent: AgentFactory,
    tmp_path: Path,
    vault: VaultFake,
    vault_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """Vault down for several refresh cycles: file unchanged, no signal, agent alive, one
    `provider.unavailable`, status.json says unavailable; a KV v2 version written meanwhile
    arrives after it returns, with one `provider.recovered` and one SIGHUP."""
    vault.put_kv2("app", {"password": KV_ONE})
    ws = workspace(tmp_path)
    ws.vault("vault", vault_gate.url, VAULT_TOKEN)
    ws.namespace("app", "vault", secret="secret/data/app")
    out = ws.contents(
        "out/app.env", "PW={{ secrets.app.password }}\n", on_change=[hup(sighup_counter)]
    )
    ws.write()
    process = agent(ws.config_path, log_level="debug")
    process.wait_for("agent.ready")
    sighup_counter.wait_count(1)
    ride_out_an_outage(
        process,
        ws,
        vault_gate,
        "vault",
        lambda: len(vault.requests),
        lambda: vault.put_kv2("app", {"password": KV_TWO}),
        out,
        f"PW={KV_ONE}\n",
        f"PW={KV_TWO}\n",
        sighup_counter,
    )


def test_aws_throttling_storm_keeps_files_and_recovers(
    agent: AgentFactory,
    tmp_path: Path,
    moto: MotoFake,
    aws_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """A throttling storm (every request throttled for a while): files stay, no signal, one
    `provider.throttled`, one probe per look after the first; then it recovers by itself and
    the rotation made during the storm arrives with one SIGHUP."""
    client = aws_client(moto)
    client.create_secret(Name="prod/db", SecretString=json.dumps({"password": AWS_ONE}))
    ws, out = aws_workspace(tmp_path, aws_gate.url, sighup_counter)
    process = agent(ws.config_path, env=AWS, log_level="debug")
    process.wait_for("agent.ready")
    sighup_counter.wait_count(1)
    cycles(process, 2, provider="aws")
    mark = process.mark()
    moto.reset_counters()
    moto.knobs.throttle = 12
    process.wait_for("provider.throttled", provider="aws")
    # the storm throttles everyone: the test's own client (another key) retries until it
    # gets through
    tester = aws_client(moto, key="AKIASTORMTESTER00001", attempts=30)
    tester.put_secret_value(SecretId="prod/db", SecretString=json.dumps({"password": AWS_TWO}))
    assert f"pw={AWS_ONE}\n" == read(out)
    assert 1 == sighup_counter.count()
    process.wait_for("provider.recovered", provider="aws", timeout=10)
    looks = len(process.events("provider.refreshed", since=mark, provider="aws"))
    asked = len([c for c in moto.calls() if c.access_key == AWS["AWS_ACCESS_KEY_ID"]])
    wait_until(lambda: read(out) == f"pw={AWS_TWO}\n", REFRESH + SETTLE, "rotation after")
    sighup_counter.wait_count(2, timeout=SETTLE)
    print(f"aws throttling storm: {asked} requests of the agent in {looks} looks until over")
    assert asked <= looks + 4  # the first look retries (4 attempts), the later ones probe once
    assert 1 == len(process.events("provider.throttled", since=mark))
    assert 1 == len(process.events("provider.recovered", since=mark))
    assert [] == process.events("template.failed", since=mark)
    throttles = next(p for p in status_of(ws)["providers"] if p["name"] == "aws")["throttles"]
    assert throttles >= 1
    assert process.alive()


# --- a store that hangs -------------------------------------------------------------------------


def test_a_hanging_store_blocks_nothing_else_and_sigterm_exits_at_once(
    agent: AgentFactory,
    tmp_path: Path,
    moto: MotoFake,
    aws_gate: Gate,
    vault: VaultFake,
    vault_gate: Gate,
    sighup_counter: SighupCounter,
) -> None:
    """AWS accepts connections and never answers: Vault's templates still refresh on time,
    the AWS file stays, the hang is one `provider.unavailable` (not a line per look),
    status.json says so, and SIGTERM exits 0 within a second with requests in flight."""
    client = aws_client(moto)
    client.create_secret(Name="prod/db", SecretString=json.dumps({"password": AWS_ONE}))
    vault.put_kv2("app", {"password": KV_ONE})
    ws, aws_out = aws_workspace(tmp_path, aws_gate.url, sighup_counter)
    ws.defaults["fetch_timeout"] = "1s"
    ws.vault("vault", vault_gate.url, VAULT_TOKEN)
    ws.namespace("app", "vault", secret="secret/data/app")
    vault_out = ws.contents("out/app.env", "PW={{ secrets.app.password }}\n")
    ws.write()
    process = agent(ws.config_path, env=AWS, log_level="debug")
    process.wait_for("agent.ready")
    cycles(process, 2, provider="aws")

    mark = process.mark()
    aws_gate.set("hang")
    hung_at = time.monotonic()
    process.wait_for("provider.unavailable", provider="aws", timeout=5)
    vault.put_kv2("app", {"password": KV_TWO})
    rotated = time.monotonic()
    wait_until(lambda: read(vault_out) == f"PW={KV_TWO}\n", REFRESH + SETTLE, "vault refresh")
    assert time.monotonic() - rotated <= REFRESH + SETTLE
    for _ in range(2):  # two more hung looks, each given up at fetch_timeout
        last = process.wait_for("provider.timeout", provider="aws", timeout=5)
    wait_until(lambda: provider_state(ws, "aws") == "unavailable", 2, "status: unavailable")
    hung = aws_gate.connections(since=hung_at)
    print(f"aws hanging: {len(hung)} connections in {time.monotonic() - hung_at:.1f} s")
    assert f"pw={AWS_ONE}\n" == read(aws_out)
    assert 1 == sighup_counter.count()
    assert 1 == len(process.events("provider.unavailable", since=mark, provider="aws"))
    assert len(process.events("provider.timeout", since=mark, level="warning")) <= 1

    wait_until(lambda: bool(aws_gate.connections(since=last.at)), 3, "an AWS look in flight")
    stop_at = time.monotonic()
    assert 0 == process.stop(timeout=5)
    assert time.monotonic() - stop_at < 1.0
    assert f"pw={AWS_ONE}\n" == read(aws_out)
