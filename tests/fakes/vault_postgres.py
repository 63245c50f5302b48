"""The Vault fake's database engine on a real PostgreSQL: what Vault's postgresql plugin runs.

Set `VaultFake.database = PostgresEngine(admin)` (opt-in; the fake's default
keeps its users as names only). `admin` runs SQL as a superuser (both
`tests/postgres.py`'s `Postgres.admin` and the e2e harness have one). The
statements are those Vault's documentation gives for PostgreSQL:

    creation   CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}'
                   VALID UNTIL '{{expiration}}';
               GRANT ... TO "{{name}}";
    renewal    ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';
    revocation REVOKE ALL ... FROM "{{name}}"; DROP ROLE IF EXISTS "{{name}}";

so a login with a credential works exactly while its lease lives: VALID
UNTIL follows each renewal, and a revoke, or the lease's end found by the
fake's sweeper, drops the role. PostgreSQL hashes the password itself
(SCRAM, its own random salt), as with real Vault.

A failing statement raises `EngineError` naming the role and the step, never
the SQL (the creation statement holds the password, and psql quotes the
statement in its error text).
"""

from __future__ import annotations

import datetime
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

ROLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")
"""The fake's usernames (v-approle-app-0001); anything else is refused before any SQL."""


class EngineError(Exception):
    """A statement of the engine failed; says which role and step, never the statement."""


@dataclass
class PostgresEngine:
    admin: Callable[[str], str]
    """Runs SQL as a superuser; raises on failure."""
    grants: tuple[str, ...] = ('GRANT CONNECT ON DATABASE postgres TO "{name}"',)
    """Extra creation statements, `{name}` filled in (Vault's creation_statements after
    CREATE ROLE)."""
    prefix: str = "v-"
    """Roles of this engine start with it: `roles()` counts only these."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """One statement at a time: DDL on roles from two threads would only wait in PostgreSQL."""

    def create(self, username: str, password: str, expires: float) -> None:
        name = _checked(username)
        if "'" in password or "\\" in password:
            raise EngineError(f"creating role {name}: the password has a quote")
        sql = [
            f"CREATE ROLE \"{name}\" WITH LOGIN PASSWORD '{password}' "
            f"VALID UNTIL '{_timestamp(expires)}'",
            *(grant.format(name=name) for grant in self.grants),
        ]
        self._run(";\n".join(sql), f"creating role {name}")

    def renew(self, username: str, expires: float) -> None:
        name = _checked(username)
        sql = f"ALTER ROLE \"{name}\" VALID UNTIL '{_timestamp(expires)}'"
        self._run(sql, f"renewing role {name}")

    def revoke(self, username: str) -> None:
        name = _checked(username)
        sql = (
            f'REVOKE ALL PRIVILEGES ON DATABASE postgres FROM "{name}";\n'
            f'REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM "{name}";\n'
            f'DROP ROLE IF EXISTS "{name}"'
        )
        self._run(sql, f"dropping role {name}")

    def roles(self) -> list[str]:
        """The LOGIN roles of this engine now in PostgreSQL (names only)."""
        pattern = _checked(self.prefix).replace("_", r"\_") + "%"
        out = self._run(  # the names are checked against ROLE_NAME: no quote gets in
            f"SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname LIKE '{pattern}' "  # noqa: S608
            "ORDER BY rolname",
            "listing roles",
        )
        return [line for line in out.splitlines() if line]

    def valid_until(self, username: str) -> float | None:
        """The role's VALID UNTIL as `time.time()`; None when it has none or does not exist."""
        name = _checked(username)
        out = self._run(
            f"SELECT extract(epoch FROM rolvaliduntil) FROM pg_roles WHERE rolname = '{name}'",  # noqa: S608
            f"reading role {name}",
        )
        return float(out) if out else None

    def _run(self, sql: str, what: str) -> str:
        with self._lock:
            try:
                return self.admin(sql)
            except Exception:
                raise EngineError(f"{what} failed") from None


def _checked(username: str) -> str:
    if not ROLE_NAME.fullmatch(username):
        raise EngineError("a role name outside [A-Za-z0-9_-]")
    return username


def _timestamp(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds")
