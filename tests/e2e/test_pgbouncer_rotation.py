"""A database host end to end: PostgreSQL, pgbouncer, clients that never pause, rotations in AWS.

The agent (`smagent render`, a real process) renders examples/database-host's
templates: pgbouncer's userlist.txt (SCRAM verifiers) and the applications'
libpq service file, with the example's config pointed at moto and at this
test's pgbouncer. A load loop (tests/e2e/load.py) connects through pgbouncer
25 times a second, each time with the credentials it reads from the service
file, while a rotation function (tests/e2e/rotation.py) rotates the secret
the way AWS's rotation Lambdas do. `pytest -s tests/e2e` prints the figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import leaks
from tests.agent_config import AWS_ENV
from tests.agent_process import AgentFactory, AgentProcess, Event
from tests.e2e.conftest import unique_roles
from tests.e2e.dbhost import DbHost, example_config, postgres_owner, write_config
from tests.e2e.load import LoadLoop
from tests.e2e.rotation import Rotator
from tests.fakes.moto_server import REGION, MotoFake

pytestmark = pytest.mark.postgres

REFRESH = "500ms"
"""The namespaces' `refresh` in these tests (the example says 5s): a rotation step reaches
pgbouncer within about this, and the suite stays short."""
ROTATIONS = 10
USERLIST = "pgbouncer-userlist"
CLIENTS = "app-pg-service"


def event_time(event: Event) -> float:
    """The agent's own timestamp of a log event, as time.time()."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def start_host(
    dbhost: DbHost,
    moto: MotoFake,
    agent: AgentFactory,
    folder: Path,
    *,
    refresh: str = REFRESH,
) -> tuple[AgentProcess, Path, Path]:
    """pgbouncer (with an empty userlist), then the agent on the example's config: the agent's
    first pass writes both files and reloads pgbouncer once. (agent, config, clients' file)"""
    clients_file = folder / "app" / "pg_service.conf"
    clients_file.parent.mkdir()
    leaks.allow_secrets_in(clients_file)
    dbhost.userlist.write_text("")
    owner = postgres_owner()
    if owner:
        import shutil

        shutil.chown(dbhost.userlist, owner["owner"], owner["group"])
    dbhost.start_pgbouncer()
    config = example_config(
        dbhost,
        folder,
        templates={USERLIST: dbhost.userlist, CLIENTS: clients_file},
        providers={"aws": {"endpoint_url": moto.endpoint, "region": REGION}},
        refresh=refresh,
    )
    path = write_config(folder, config)
    process = agent(path, env=AWS_ENV)
    process.wait_for("agent.ready", timeout=30)
    dbhost.wait_reloads(1)
    return process, path, clients_file


def test_alternating_users_rotate_with_zero_failed_connections(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Ten alternating-users rotations under 25 connections/s: no connection fails, and each
    rotation reloads pgbouncer exactly once."""
    rotator = Rotator(secretsmanager, dbhost, new_password)
    rotator.bootstrap(unique_roles("alt"))
    process, _config, clients_file = start_host(dbhost, moto, agent, tmp_path)
    rows = []
    with LoadLoop(dbhost.conninfo(), clients_file) as load:
        load.wait_attempts(10)
        for number in range(1, ROTATIONS + 1):
            mark = process.mark()
            rotation = rotator.rotate(alternating=True)
            written = process.wait_for("template.rendered", since=mark, template=CLIENTS)
            [userlist] = process.events("template.rendered", since=mark, template=USERLIST)
            reloads = dbhost.wait_reloads(1 + number)
            rows.append(
                (
                    event_time(userlist) - rotation.put_at,
                    reloads[-1] - rotation.put_at,
                    rotation.accepted_at - rotation.put_at,
                    event_time(written) - rotation.finish_at,
                )
            )
        load.wait_attempts(10)
    time.sleep(0.3)  # a late reload would show in pgbouncer's log by now
    assert 1 + ROTATIONS == len(dbhost.reloads()), "one reload per rotation"
    report("alternating users", load, rows)
    assert [] == load.failures()
    assert 20 <= load.rate_seen()


def report(title: str, load: LoadLoop, rows: Sequence[tuple[float, ...]]) -> None:
    print(f"\n{title}: {load.summary()}")
    print("  rotation  put->userlist  put->reload  put->accepted  finish->clients' file")
    for number, row in enumerate(rows, 1):
        print(f"  {number:8d}  " + "  ".join(f"{value * 1000:11.0f}ms" for value in row))
    for name, column in zip(
        ("put->userlist", "put->reload", "put->accepted", "finish->clients"),
        zip(*rows, strict=True),
        strict=True,
    ):
        print(
            f"  {name}: median {statistics.median(column) * 1000:.0f} ms, "
            f"max {max(column) * 1000:.0f} ms"
        )
