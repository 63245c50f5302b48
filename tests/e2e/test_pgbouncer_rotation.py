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

import json
import os
import pwd
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import leaks
from tests.agent_config import AWS_ENV
from tests.agent_process import AgentFactory, AgentProcess
from tests.e2e.conftest import unique_roles
from tests.e2e.dbhost import (
    DbHost,
    RenameKill,
    event_time,
    example_config,
    postgres_owner,
    write_config,
)
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


def start_host(
    dbhost: DbHost,
    moto: MotoFake,
    agent: AgentFactory,
    folder: Path,
    *,
    refresh: str = REFRESH,
    wait: str = "0s",
) -> tuple[AgentProcess, Path, Path]:
    """pgbouncer (with an empty userlist), then the agent on the example's config: the agent's
    first pass writes both files and reloads pgbouncer once. (agent, config, clients' file)"""
    clients_file = folder / "app" / "pg_service.conf"
    clients_file.parent.mkdir()
    leaks.allow_secrets_in(clients_file)
    dbhost.start_pgbouncer()
    config = example_config(
        dbhost,
        folder,
        templates={USERLIST: dbhost.userlist, CLIENTS: clients_file},
        providers={"aws": {"endpoint_url": moto.endpoint, "region": REGION}},
        refresh=refresh,
        defaults={"wait": {"min": wait, "max": "0s"}},
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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten alternating-users rotations under 25 connections/s: no connection fails, and each
    rotation reloads pgbouncer exactly once."""
    rotator = Rotator(secretsmanager, dbhost, new_password)
    users = unique_roles("alt")
    rotator.bootstrap(users)
    process, _config, clients_file = start_host(dbhost, moto, agent, tmp_path)
    info = dbhost.userlist.stat()
    assert (0o640, postgres_uid()) == (info.st_mode & 0o777, info.st_uid)
    inodes = [info.st_ino]
    rows = []
    with LoadLoop(dbhost.conninfo(), clients_file) as load:
        load.wait_attempts(10)
        for number in range(1, ROTATIONS + 1):
            mark = process.mark()
            rotation = rotator.rotate(alternating=True)
            written = process.wait_for("template.rendered", since=mark, template=CLIENTS)
            userlists = process.events("template.rendered", since=mark, template=USERLIST)
            assert 1 == len(userlists), "the userlist is written once per rotation"
            userlist = userlists[0]
            reloads = dbhost.wait_reloads(1 + number)
            assert sorted(users) == listed_users(dbhost.userlist)
            # pgbouncer re-reads its auth_file only when its stat changed: verifiers have a
            # fixed length and rotations come within a second, so only a new inode is sure
            # (a file renamed in always has one: it exists beside the file it replaces)
            inodes.append(dbhost.userlist.stat().st_ino)
            assert inodes[-2] != inodes[-1], "the userlist was rewritten in place"
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
    # libpq itself reads the rendered service file (the load loop parsed it by hand)
    monkeypatch.setenv("PGSERVICEFILE", str(clients_file))
    with psycopg.connect(f"service=app {dbhost.conninfo()}", connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    assert rotator.stage("AWSCURRENT")["username"] == row[0]
    report("alternating users", load, rows)
    assert [] == load.failures()
    assert 20 <= load.rate_seen()


def listed_users(userlist: Path) -> list[str]:
    """The user names in pgbouncer's auth_file, in file order (the verifiers are not read)."""
    return [line.split('" "', 1)[0].lstrip('"') for line in userlist.read_text().splitlines()]


def postgres_uid() -> int:
    return pwd.getpwnam("postgres").pw_uid if postgres_owner() else os.geteuid()


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


SINGLE_ROTATIONS = 3
"""Per kind (a quiet pool, a pool that needs a new server connection mid-rotation)."""


@dataclass(frozen=True)
class Window:
    """The failed connections of one single-user rotation."""

    failed: int
    seconds: float
    """From the first failed attempt's start to the last one's end (0 when none failed)."""
    set_to_reload: float


def single_user_windows(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    folder: Path,
    *,
    churn: list[bool],
    refresh: str = REFRESH,
    settle: float = 1.5,
    wait: str = "0s",
) -> tuple[LoadLoop, list[Window]]:
    """Single-user rotations under load, one per item of `churn` (True: the user's pooled
    server connections are ended right after the password changed). Per rotation, the
    failed connections that started after its setSecret and before the next one's."""
    rotator = Rotator(secretsmanager, dbhost, new_password)
    rotator.bootstrap(unique_roles("single", 1))
    process, _config, clients_file = start_host(
        dbhost, moto, agent, folder, refresh=refresh, wait=wait
    )
    reload_times = []
    with LoadLoop(dbhost.conninfo(), clients_file) as load:
        load.wait_attempts(10)
        for number, end_sessions in enumerate(churn, 1):
            mark = process.mark()
            rotator.rotate(
                alternating=False, after_set=dbhost.end_sessions if end_sessions else None
            )
            process.wait_for("template.rendered", since=mark, template=CLIENTS, timeout=30)
            reload_times.append(dbhost.wait_reloads(1 + number, timeout=30)[-1])
            time.sleep(settle)  # the rotation's failures (if any) are over by now
            load.wait_attempts(5)
    attempts = load.snapshot()
    sets = [rotation.set_at for rotation in rotator.rotations]
    windows = []
    for index, set_at in enumerate(sets):
        until = sets[index + 1] if index + 1 < len(sets) else float("inf")
        failed = [a for a in attempts if not a.ok and set_at <= a.start < until]
        seconds = failed[-1].end - failed[0].start if failed else 0.0
        windows.append(Window(len(failed), seconds, reload_times[index] - set_at))
    before = [a for a in attempts if not a.ok and a.start < sets[0]]
    assert [] == before, "failures before the first rotation"
    return load, windows


def test_single_user_rotation_fails_connections_only_in_a_short_window(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A single user rotated under 25 connections/s with the example's settings: with a quiet
    pool only connections in flight at the reload may fail; when the pool needs a new server
    connection between setSecret and the reload, failures stop within about a second of it."""
    churn = [False] * SINGLE_ROTATIONS + [True] * SINGLE_ROTATIONS
    load, windows = single_user_windows(
        dbhost, moto, secretsmanager, new_password, agent, tmp_path, churn=churn
    )
    print(f"\nsingle user: {load.summary()}")
    for window, ended in zip(windows, churn, strict=True):
        kind = "pool emptied" if ended else "quiet pool  "
        print(
            f"  {kind}: setSecret->reload {window.set_to_reload * 1000:4.0f} ms, "
            f"{window.failed:2d} failed over {window.seconds * 1000:5.0f} ms"
        )
    errors = sorted({a.error.split("FATAL:")[-1].strip() for a in load.failures()})
    print(f"  errors: {errors}")
    retry = float(dbhost.settings["server_login_retry"])
    for window, ended in zip(windows, churn, strict=True):
        if ended:
            assert window.seconds <= window.set_to_reload + retry + 1.0, window
        else:
            assert window.failed <= 3, window


SWEEP = [
    # (refresh, server_login_retry, wait.min)
    ("500ms", "1", "0s"),
    ("500ms", "0", "0s"),
    ("2s", "1", "0s"),
    ("500ms", "1", "1s"),
    ("500ms", "15", "0s"),
]


@pytest.mark.skipif(
    not os.environ.get("SMAGENT_E2E_SWEEP"), reason="long mode: SMAGENT_E2E_SWEEP=1 (~2 min)"
)
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("refresh", "retry", "wait"), SWEEP)
def test_single_user_window_by_setting(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    tmp_path: Path,
    refresh: str,
    retry: str,
    wait: str,
) -> None:
    """The single-user window (pool emptied mid-rotation) for each setting of SWEEP."""
    dbhost.settings["server_login_retry"] = retry
    settle = float(retry) + 1.5
    load, windows = single_user_windows(
        dbhost, moto, secretsmanager, new_password, agent, tmp_path,
        churn=[True, True, True], refresh=refresh, settle=settle, wait=wait,
    )  # fmt: skip
    failed = [w.failed for w in windows]
    spans = [round(w.seconds * 1000) for w in windows]
    reloads = [round(w.set_to_reload * 1000) for w in windows]
    print(
        f"\nSWEEP refresh={refresh} server_login_retry={retry} wait.min={wait}: "
        f"failed {failed}, window ms {spans}, setSecret->reload ms {reloads}; {load.summary()}"
    )


CRASHES = 2


def test_sigkill_right_after_the_userlist_is_written_then_a_restart_still_reloads_pgbouncer(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """The agent SIGKILLed the moment a rotated userlist lands (before its SIGHUP), then
    started again: pgbouncer gets its reload from the pending record, the rotation completes,
    and no connection fails."""
    rotator = Rotator(secretsmanager, dbhost, new_password)
    rotator.bootstrap(unique_roles("crash"))
    process, config, clients_file = start_host(dbhost, moto, agent, tmp_path)
    pending = tmp_path / "state" / "pending"
    landed_before_reload = 0
    rows = []
    with LoadLoop(dbhost.conninfo(), clients_file) as load:
        load.wait_attempts(10)
        for _ in range(CRASHES):
            reloads_before = len(dbhost.reloads())
            with RenameKill(dbhost.folder, dbhost.userlist.name, process.pid) as watch:
                user = rotator.stage("AWSPREVIOUS")["username"]
                password = new_password()
                dbhost.set_password(user, password)
                put_at = time.time()
                answer = secretsmanager.put_secret_value(
                    SecretId=rotator.secret_id,
                    SecretString=json.dumps({"username": user, "password": password}),
                    VersionStages=["AWSPENDING"],
                )
                killed_at = watch.wait(10)
            assert -signal.SIGKILL == process.wait(5)
            process.kill()  # reaped
            time.sleep(0.3)  # a SIGHUP sent before the kill shows in pgbouncer's log by now
            before_restart = len(dbhost.reloads())
            landed_before_reload += before_restart == reloads_before
            owed = sorted(p.name for p in pending.iterdir()) if pending.exists() else []
            if before_restart == reloads_before:
                assert owed, "the SIGHUP is owed, yet no pending record"
            restart_at = time.time()
            process = agent(config, env=AWS_ENV)
            process.wait_for("agent.ready", timeout=30)
            reloads = dbhost.wait_reloads(before_restart + 1, timeout=10)
            accepted_at = rotator.wait_accepted(user, password, 10)
            rotator.finish(answer["VersionId"])
            process.wait_for("template.rendered", template=CLIENTS, timeout=10)
            rows.append((killed_at - put_at, reloads[-1] - restart_at, accepted_at - put_at))
            load.wait_attempts(10)
    print(f"\ncrash in the middle: {load.summary()}")
    for killed, reload, accepted in rows:
        print(
            f"  put->SIGKILL {killed * 1000:4.0f} ms, restart->reload {reload * 1000:4.0f} ms, "
            f"put->pgbouncer accepts the new user {accepted * 1000:5.0f} ms"
        )
    print(
        f"  kills that landed between the userlist's rename and its SIGHUP: "
        f"{landed_before_reload} of {CRASHES}"
    )
    assert [] == load.failures()
    assert [] == sorted(p.name for p in pending.iterdir())
    assert landed_before_reload >= 1, "no kill fell between the rename and the SIGHUP"


PLAIN_USERLIST = """\
{%- macro line(e) %}"{{ e.username }}" "{{ e.password | scram_sha256 }}"
{% endmacro -%}
{%- set cur = secrets.pg_app -%}{%- set prev = secrets.pg_app_previous -%}
{%- if cur.username < prev.username %}{{ line(cur) }}{{ line(prev) }}
{%- else %}{{ line(prev) }}{{ line(cur) }}{% endif -%}
"""
"""The userlist without AWSPENDING: the current and the previous user (sorted)."""


@pytest.mark.skipif(
    not os.environ.get("SMAGENT_E2E_SWEEP"), reason="long mode: SMAGENT_E2E_SWEEP=1 (~1 min)"
)
@pytest.mark.timeout(600)
def test_alternating_users_with_a_plain_put_race_the_reload(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Why the example reads AWSPENDING: with a userlist of AWSCURRENT and AWSPREVIOUS only,
    and each rotation one put_secret_value, clients that read the new file between its rename
    and pgbouncer's reload are refused. Counts them over 30 rotations."""
    rotator = Rotator(secretsmanager, dbhost, new_password)
    rotator.bootstrap(unique_roles("plain"))
    clients_file = tmp_path / "app" / "pg_service.conf"
    clients_file.parent.mkdir()
    leaks.allow_secrets_in(clients_file)
    dbhost.start_pgbouncer()
    config = example_config(
        dbhost,
        tmp_path,
        templates={USERLIST: dbhost.userlist, CLIENTS: clients_file},
        providers={"aws": {"endpoint_url": moto.endpoint, "region": REGION}},
        refresh=REFRESH,
    )
    userlist = config["templates"][0]  # type: ignore[index]
    del userlist["source"]
    userlist["contents"] = PLAIN_USERLIST
    del config["namespaces"]["pg_app_pending"]  # type: ignore[attr-defined]
    process = agent(write_config(tmp_path, config), env=AWS_ENV)
    process.wait_for("agent.ready", timeout=30)
    dbhost.wait_reloads(1)
    gaps: list[float] = []
    with LoadLoop(dbhost.conninfo(), clients_file) as load:
        load.wait_attempts(10)
        for _ in range(30):
            mark = process.mark()
            user = rotator.stage("AWSPREVIOUS")["username"]
            password = new_password()
            dbhost.set_password(user, password)
            secretsmanager.put_secret_value(
                SecretId=rotator.secret_id,
                SecretString=json.dumps({"username": user, "password": password}),
            )
            written = process.wait_for("template.rendered", since=mark, template=CLIENTS)
            gaps.append(dbhost.wait_reloads(2 + len(gaps))[-1] - event_time(written))
            load.wait_attempts(8)
    print(f"\nplain put (AWSCURRENT + AWSPREVIOUS only), 30 rotations: {load.summary()}")
    print(
        "  clients' file written -> pgbouncer reloaded: "
        f"median {statistics.median(gaps) * 1000:.1f} ms, max {max(gaps) * 1000:.1f} ms"
    )
    for failure in load.failures():
        print(f"  {failure.user}: {failure.error.split('FATAL:')[-1].strip()}")


def test_sigkill_mid_single_user_rotation_fails_connections_only_until_the_restart_reloads(
    dbhost: DbHost,
    moto: MotoFake,
    secretsmanager: Any,
    new_password: Callable[[], str],
    agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A single user: the agent SIGKILLed the moment the new clients' file lands (userlist
    written too, SIGHUP not sent), restarted at once: connections fail only until the
    restarted agent's reload (plus pgbouncer's server_login_retry)."""
    rotator = Rotator(secretsmanager, dbhost, new_password)
    rotator.bootstrap(unique_roles("crash1", 1))
    process, config, clients_file = start_host(dbhost, moto, agent, tmp_path)
    with LoadLoop(dbhost.conninfo(), clients_file) as load:
        load.wait_attempts(10)
        with RenameKill(clients_file.parent, clients_file.name, process.pid) as watch:
            rotation = rotator.rotate(alternating=False)
            killed_at = watch.wait(10)
        assert -signal.SIGKILL == process.wait(5)
        process.kill()
        restart_at = time.time()  # at once, as a supervisor with no delay would
        process = agent(config, env=AWS_ENV)
        process.wait_for("agent.ready", timeout=30)
        reload_at = dbhost.wait_reloads(2, timeout=10)[1]
        unreloaded = reload_at > killed_at  # pgbouncer's log: to the millisecond
        time.sleep(float(dbhost.settings["server_login_retry"]) + 1)
        load.wait_attempts(10)
    failed, window = load.failure_window()
    print(
        f"\ncrash mid single-user rotation: {load.summary()}; finish->SIGKILL "
        f"{(killed_at - rotation.finish_at) * 1000:.0f} ms, restart->reload "
        f"{(reload_at - restart_at) * 1000:.0f} ms; {failed} failed over {window * 1000:.0f} ms"
        f"{'' if unreloaded else ' (the kill came after the SIGHUP)'}"
    )
    retry = float(dbhost.settings["server_login_retry"])
    late = [a for a in load.failures() if a.start > reload_at + retry + 0.5]
    assert [] == late
