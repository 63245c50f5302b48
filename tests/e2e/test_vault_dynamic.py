"""Vault dynamic credentials on a real database host: roles come and go, clients never notice.

The Vault fake's database engine is backed by the test's PostgreSQL
(tests/fakes/vault_postgres.py): issuing `database/creds/app` creates a LOGIN
role VALID UNTIL the lease's end, a renewal moves VALID UNTIL, and a revoke
or the lease's end drops the role. The agent (`smagent render`, a real
process) runs examples/database-host/smagent-vault.yaml, pointed at the fake
and at this test's pgbouncer (with the example's pgbouncer-vault.ini
auth_query and pgbouncer-auth.sql): it renders pgbouncer's userlist (its
auth_user) and the clients' service file, renews each lease at 2/3 of its
TTL, replaces it near max_ttl, and revokes the replaced lease once the
service file holds the new role and the grace passed. pgbouncer finds each
role in PostgreSQL (auth_query): no reload per replacement, and none of the
crash pgbouncer 1.18 has when a reload adds to its auth_file a user it met
through auth_query (see templates/userlist-vault.txt.j2). Meanwhile the load
loop connects through pgbouncer 25 times a second, each time with the role
its file names, and a sampler counts the Vault roles in PostgreSQL against
the leases Vault holds. `pytest -s tests/e2e/test_vault_dynamic.py` prints
the figures.
"""

from __future__ import annotations

import configparser
import itertools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import leaks
from tests.agent_config import replace_file
from tests.agent_process import AgentFactory
from tests.e2e.dbhost import (
    EXAMPLE,
    DbHost,
    event_time,
    example_config,
    postgres_owner,
    write_config,
)
from tests.e2e.load import LoadLoop
from tests.fakes.vault import LeaseRecord, VaultFake, running
from tests.fakes.vault_postgres import PostgresEngine

pytestmark = pytest.mark.postgres

TTL = 4.0
MAX_TTL = 6.5
"""Renewed once at ~2.7 s (the grant is capped at max_ttl), replaced at ~4.7 s with ~1.8 s
of the old lease left: a new role every ~4.7 s."""
GRACE = 0.5
"""`revoke_replaced_after` in this test (the example says 30s)."""
REPLACEMENTS = 5
TOKEN = leaks.plant("hvs.canary-e2e-vault-token-Pz6", "E2E_VAULT_TOKEN")
DB_PREFIX = leaks.plant("canary-e2e-vault-dbpw-Qs3", "E2E_VAULT_DB_PASSWORD")
USERLIST = "pgbouncer-userlist"
CLIENTS = "app-pg-service"
AUTH_ROLE = "pgbouncer_auth"


@dataclass
class RoleSampler:
    """Counts, every `period`, the Vault roles in PostgreSQL and the leases Vault holds."""

    engine: PostgresEngine
    vault: VaultFake
    period: float = 0.1
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    """(time.monotonic(), roles, live leases) -- leases counted before and after the query,
    the larger kept (a lease issued or ended meanwhile)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RoleSampler:
        self._thread = threading.Thread(target=self._run, name="role-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            before = self.vault.live_leases()
            roles = len(self.engine.roles())
            after = self.vault.live_leases()
            self.samples.append((time.monotonic(), roles, max(before, after)))
            self._stop.wait(self.period)


@pytest.fixture
def engine(dbhost: DbHost) -> Iterator[PostgresEngine]:
    engine = PostgresEngine(dbhost.sql)
    yield engine
    for role in engine.roles():  # the server is the session's: leave no role behind
        engine.revoke(role)


@pytest.fixture
def vault(engine: PostgresEngine) -> Iterator[VaultFake]:
    fake = VaultFake()
    fake.add_token(TOKEN)
    fake.password_prefix = DB_PREFIX + "-"
    fake.db_roles["app"] = (TTL, MAX_TTL)
    fake.database = engine
    with running(fake):
        yield fake


@pytest.fixture
def auth_user(dbhost: DbHost, vault: VaultFake, new_password: Callable[[], str]) -> Iterator[str]:
    """The example's auth_query set-up: pgbouncer_auth (its password in Vault's KV) and
    pgbouncer-auth.sql; both removed after the test."""
    password = new_password()
    vault.put_kv2("pgbouncer/auth_user", {"username": AUTH_ROLE, "password": password})
    dbhost.sql(f"DROP SCHEMA IF EXISTS pgbouncer CASCADE; DROP ROLE IF EXISTS {AUTH_ROLE}")
    dbhost.create_role(AUTH_ROLE, password)
    dbhost.sql((EXAMPLE / "pgbouncer-auth.sql").read_text())
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.read(EXAMPLE / "pgbouncer-vault.ini")
    dbhost.settings.update(parser["pgbouncer"])
    yield AUTH_ROLE
    dbhost.stop_pgbouncer()  # its auth_user sessions end before the role goes
    dbhost.sql("DROP SCHEMA IF EXISTS pgbouncer CASCADE")


def start_agent(
    dbhost: DbHost, vault: VaultFake, agent: AgentFactory, folder: Path
) -> tuple[object, Path]:
    """pgbouncer (empty userlist), then the agent on smagent-vault.yaml; (agent, clients' file)."""
    clients_file = folder / "app" / "pg_service.conf"
    clients_file.parent.mkdir()
    leaks.allow_secrets_in(clients_file)
    leaks.allow_secrets_in(dbhost.userlist)
    dbhost.userlist.write_text("")
    owner = postgres_owner()
    if owner:
        shutil.chown(dbhost.userlist, owner["owner"], owner["group"])
    dbhost.start_pgbouncer()
    token_file = folder / "vault.token"
    replace_file(token_file, TOKEN, 0o600)
    leaks.allow_secrets_in(token_file)
    config = example_config(
        dbhost,
        folder,
        templates={USERLIST: dbhost.userlist, CLIENTS: clients_file},
        providers={
            "vault": {
                "address": vault.url,
                "ca_cert": None,
                "auth": {"method": "token", "token_file": str(token_file)},
                "revoke_replaced_after": f"{int(GRACE * 1000)}ms",
            }
        },
        example="smagent-vault.yaml",
    )
    process = agent(write_config(folder, config))
    process.wait_for("agent.ready", timeout=30)
    dbhost.wait_reloads(1)
    return process, clients_file


def ended(vault: VaultFake) -> dict[str, LeaseRecord]:
    return {e.lease_id: e for e in vault.lease_events if e.event in ("revoked", "expired")}


def test_dynamic_credentials_rotate_with_zero_failed_connections(
    dbhost: DbHost,
    engine: PostgresEngine,
    vault: VaultFake,
    auth_user: str,
    agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Five lease replacements (TTL 4 s, max_ttl 6.5 s) under 25 connections/s: no connection
    fails and pgbouncer is never reloaded; each replaced lease is revoked by the agent the
    grace after the clients' file got the new role; the Vault roles in PostgreSQL never
    outnumber the leases, and are at most two (the live one and the one in hand-over)."""
    offset = time.time() - time.monotonic()
    process, clients_file = start_agent(dbhost, vault, agent, tmp_path)
    with RoleSampler(engine, vault) as sampler, LoadLoop(dbhost.conninfo(), clients_file) as load:
        deadline = time.monotonic() + (REPLACEMENTS + 1) * MAX_TTL
        while vault.count("issued") < 1 + REPLACEMENTS:
            assert time.monotonic() < deadline, f"only {vault.count('issued')} leases issued"
            time.sleep(0.05)
        issued = [e for e in vault.lease_events if e.event == "issued"]
        while not all(e.lease_id in ended(vault) for e in issued[:-1]):  # the last hand-over
            assert time.monotonic() < deadline + MAX_TTL, "a replaced lease never ended"
            time.sleep(0.05)
        load.wait_attempts(5)
    process.stop()
    issued = [e for e in vault.lease_events if e.event == "issued"][: 1 + REPLACEMENTS]
    ends = ended(vault)
    written = [  # the agent's timestamps, as monotonic
        event_time(e) - offset
        for e in process.all_events()
        if e.get("event") == "template.rendered" and e.get("template") == CLIENTS
    ]
    rows = []
    for old, new in itertools.pairwise(issued):
        end = ends[old.lease_id]
        at = min((at for at in written if at >= new.at - 0.002), default=None)
        rows.append((old, new, end, at))
    peak = max(roles for _, roles, _ in sampler.samples)
    over = [(at, roles, leases) for at, roles, leases in sampler.samples if roles > leases]
    report(load, vault, rows, sampler, peak)
    failed = [f"{a.user}: {a.error}" for a in load.failures()]
    assert [] == failed[:3], f"{len(failed)} failed\n{dbhost.log_tail(40)}"
    assert dbhost.pgbouncer_alive()
    assert 1 == len(dbhost.reloads()), "pgbouncer reloaded for a replacement"
    assert 20 <= load.rate_seen()
    assert ["revoked"] * REPLACEMENTS == [end.event for _, _, end, _ in rows]
    for _, _, end, at in rows:
        assert at is not None, "the clients' file did not get a replacement"
        assert end.at >= at + GRACE
    assert REPLACEMENTS <= vault.count("renewed")
    assert [] == over
    assert peak <= 2
    assert 1 == sampler.samples[-1][1]


def report(
    load: LoadLoop,
    vault: VaultFake,
    rows: list[tuple[LeaseRecord, LeaseRecord, LeaseRecord, float | None]],
    sampler: RoleSampler,
    peak: int,
) -> None:
    leases = max(leases for _, _, leases in sampler.samples)
    print(f"\nvault dynamic credentials (TTL {TTL:g} s, max_ttl {MAX_TTL:g} s, grace {GRACE} s):")
    print(f"  clients: {load.summary()}")
    print(
        f"  leases: {vault.count('issued')} issued, {vault.count('renewed')} renewals, "
        f"{vault.count('revoked')} revoked by the agent, {vault.count('expired')} expired"
    )
    print(
        f"  roles in PostgreSQL: at most {peak} (leases at most {leases}) in "
        f"{len(sampler.samples)} samples"
    )
    print("  replacement  issued->written  written->revoked  revoked before its end by")
    for number, (old, new, end, at) in enumerate(rows, 1):
        to_file = "-" if at is None else f"{(at - new.at) * 1000:.0f} ms"
        to_end = "-" if at is None else f"{(end.at - at) * 1000:.0f} ms"
        spare = old.at + MAX_TTL - end.at
        print(f"  {number:11d}  {to_file:>15}  {to_end:>16}  {spare:.2f} s")
