"""AgentStatus objects as the agent would write them, for the health, metrics and status tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

from smagent.health import (
    AgentStatus,
    LeaseHealth,
    PendingHealth,
    ProviderHealth,
    TemplateHealth,
)


def healthy(now: float | None = None, pid: int | None = None, **changes: object) -> AgentStatus:
    """A running agent with every template current: by default this test process, started
    when it did; with `pid`, 2 hours ago."""
    now = time.time() if now is None else now
    status = AgentStatus(
        pid=os.getpid() if pid is None else pid,
        started_at=_started_at() if pid is None else now - 7200,
        updated_at=now - 2,
        heartbeat_s=30.0,
        config="/etc/smagent/smagent.yaml",
        config_loaded_at=now - 3600,
        ready=True,
        templates=[
            TemplateHealth(
                name="userlist",
                destination="/etc/pgbouncer/userlist.txt",
                state="ok",
                last_success=now - 12,
                renders=40,
                failures=0,
                last_written=now - 5400,
            ),
            TemplateHealth(
                name="mysql",
                destination="/opt/replicant/conn/mysql.yaml",
                state="ok",
                last_success=now - 12,
                renders=38,
                failures=2,
                last_written=now - 86400,
            ),
        ],
        providers=[
            ProviderHealth(
                name="aws-prod", type="aws", state="ok", fetches=120, errors=2, last_success=now - 3
            ),
            ProviderHealth(name="vault", type="vault", state="ok", fetches=30, throttles=1),
        ],
        leases=[
            LeaseHealth(
                provider="vault", secret="database/creds/app", expires_at=now + 2465, renewable=True
            )
        ],
    )
    for key, value in changes.items():
        setattr(status, key, value)
    return status


def troubled(now: float | None = None, pid: int | None = None, **changes: object) -> AgentStatus:
    """A running agent with one template failing for 3m12s because aws-prod is down."""
    now = time.time() if now is None else now
    status = healthy(now, pid, **changes)
    status.templates[1] = TemplateHealth(
        name="mysql",
        destination="/opt/replicant/conn/mysql.yaml",
        state="failing",
        last_success=now - 3720,
        failing_since=now - 192,
        error="aws-prod unavailable: no answer within 10s (fetch_timeout)",
        renders=38,
        failures=7,
        last_written=now - 86400,
    )
    status.providers[0] = ProviderHealth(
        name="aws-prod",
        type="aws",
        state="unavailable",
        since=now - 192,
        fetches=130,
        errors=9,
        throttles=3,
        last_error="no answer within 10s (fetch_timeout)",
        last_success=now - 200,
    )
    status.pending_actions = [
        PendingHealth(
            action="signal HUP to /run/pgbouncer/pgbouncer.pid",
            since=now - 65,
            attempts=3,
            last_error="no process with pid 4242",
        )
    ]
    return status


def _started_at() -> float:
    """When this process started (Unix time), from /proc."""
    stat = Path("/proc/self/stat").read_text()
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    boot = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")
