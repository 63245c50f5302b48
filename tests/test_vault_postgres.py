"""The Vault fake's database engine on a real PostgreSQL (tests/fakes/vault_postgres.py).

Driven with hvac, as a Vault client would: a credential logs in exactly while
its lease lives (issued, renewed: VALID UNTIL follows; revoked, expired or
past max_ttl: the role is gone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import hvac
import hvac.exceptions
import pytest

from tests import leaks
from tests.fakes.vault import VaultFake, running
from tests.fakes.vault_postgres import EngineError, PostgresEngine
from tests.postgres import Postgres

pytestmark = pytest.mark.postgres

TOKEN = leaks.plant("hvs.canary-engine-token-Rt7", "ENGINE_TOKEN")
PASSWORD_PREFIX = leaks.plant("canary-engine-pass-Vb2", "ENGINE_PASSWORD")


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[PostgresEngine]:
    engine = PostgresEngine(postgres.admin)
    yield engine
    for role in engine.roles():  # the server lives for the session: leave no role behind
        engine.revoke(role)


@pytest.fixture
def fake(engine: PostgresEngine) -> Iterator[VaultFake]:
    fake = VaultFake()
    fake.add_token(TOKEN)
    fake.password_prefix = PASSWORD_PREFIX + "-"
    fake.database = engine
    with running(fake) as served:
        yield served


def client(fake: VaultFake) -> hvac.Client:
    return hvac.Client(url=fake.url, token=TOKEN)


def creds(fake: VaultFake, role: str = "app") -> tuple[str, str, str]:
    """(lease_id, username, password) of a new credential."""
    answer = client(fake).secrets.database.generate_credentials(name=role)
    return answer["lease_id"], answer["data"]["username"], answer["data"]["password"]


def until(condition: Callable[[], bool], limit: float) -> float:
    """Seconds it took `condition` to hold (fails after `limit`)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, f"not within {limit} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_issued_credential_is_a_login_role_valid_until_the_lease_end(
    fake: VaultFake, engine: PostgresEngine, postgres: Postgres
) -> None:
    """database/creds creates a LOGIN role that logs in, VALID UNTIL the lease's end."""
    fake.db_roles["app"] = (60.0, 600.0)
    before = time.time()
    lease_id, username, password = creds(fake)
    assert [username] == engine.roles()
    assert postgres.login(username, password)
    assert not postgres.login(username, "wrong-password")
    valid_until = engine.valid_until(username)
    assert valid_until is not None
    assert before + 59 < valid_until < time.time() + 61
    assert ["issued"] == [e.event for e in fake.lease_events if e.lease_id == lease_id]


def test_renewal_moves_valid_until(fake: VaultFake, engine: PostgresEngine) -> None:
    """A renewal runs the renew statement: VALID UNTIL follows the lease's new end."""
    fake.db_roles["app"] = (60.0, 600.0)
    lease_id, username, _ = creds(fake)
    first = engine.valid_until(username)
    assert first is not None
    time.sleep(1.1)
    client(fake).sys.renew_lease(lease_id, increment=120)
    second = engine.valid_until(username)
    assert second is not None
    assert first + 60 < second <= time.time() + 121
    assert 1 == fake.count("renewed")


def test_revoke_drops_the_role(fake: VaultFake, engine: PostgresEngine, postgres: Postgres) -> None:
    """sys/leases/revoke drops the role before answering; its login fails, the other's works."""
    fake.db_roles["app"] = (60.0, 600.0)
    old_lease, old_user, old_password = creds(fake)
    _, new_user, new_password = creds(fake)
    assert [old_user, new_user] == engine.roles()
    client(fake).sys.revoke_lease(old_lease)
    assert [new_user] == engine.roles()
    assert not postgres.login(old_user, old_password)
    assert postgres.login(new_user, new_password)
    assert 1 == fake.live_leases()
    assert 1 == fake.count("revoked")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client(fake).sys.revoke_lease(old_lease)  # gone: Vault says "invalid lease ID"


def test_expiry_drops_the_role(fake: VaultFake, engine: PostgresEngine) -> None:
    """A lease not renewed ends at its TTL: the sweeper drops the role within ~0.2 s."""
    fake.db_roles["app"] = (1.0, 600.0)
    _, username, _ = creds(fake)
    assert [username] == engine.roles()
    took = until(lambda: not engine.roles(), limit=5)
    assert took < 1.0 + 1.0  # the TTL, and the sweep, a psql round trip, load
    assert 1 == fake.count("expired")
    assert 0 == fake.live_leases()


def test_max_ttl_caps_renewals_then_drops_the_role(
    fake: VaultFake, engine: PostgresEngine, postgres: Postgres
) -> None:
    """A renewal never passes max_ttl (granted less than asked); at max_ttl the role goes."""
    fake.db_roles["app"] = (1.0, 1.5)
    lease_id, username, password = creds(fake)
    time.sleep(0.6)
    granted = client(fake).sys.renew_lease(lease_id, increment=1)["lease_duration"]
    assert granted < 1
    assert postgres.login(username, password)
    until(lambda: not engine.roles(), limit=5)
    assert not postgres.login(username, password)
    assert ["issued", "renewed", "expired"] == [e.event for e in fake.lease_events]


def test_engine_errors_name_the_role_never_the_password(
    fake: VaultFake, engine: PostgresEngine
) -> None:
    """A failing statement: the fake answers 500 naming the role; no password anywhere."""
    fake.db_roles["app"] = (60.0, 600.0)
    _, username, password = creds(fake)
    with pytest.raises(EngineError) as failed:
        engine.create(username, password, time.time() + 60)  # the role exists already
    assert f"creating role {username} failed" == str(failed.value)
    assert failed.value.__cause__ is None
    assert failed.value.__suppress_context__
    engine.grants = ('GRANT nothing TO "{name}"',)  # every creation now fails
    with pytest.raises(hvac.exceptions.InternalServerError) as answered:
        creds(fake)
    assert "failed: EngineError" in str(answered.value)
    assert PASSWORD_PREFIX not in str(answered.value)
    assert 1 == fake.live_leases()
