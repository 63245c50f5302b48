"""A throwaway PostgreSQL server on 127.0.0.1, for tests that need the real consumer.

SCRAM verifiers and .pgpass files are only proven right when PostgreSQL and
libpq accept them. The server is started once per test session and requires
scram-sha-256 over TCP. Without PostgreSQL installed the tests skip locally
and fail when `CI` is set, so CI cannot pass by silently skipping.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest


def _find_bin() -> Path:
    if os.environ.get("SMAGENT_PG_BIN"):
        return Path(os.environ["SMAGENT_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _find_bin()


def postgres_unavailable(reason: str) -> NoReturn:
    """Skip locally; fail on CI, so CI cannot pass by silently skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the postgres tests must run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Postgres:
    base: Path
    port: int

    def admin(self, sql: str) -> str:
        """Run SQL as the superuser over the Unix socket (trust)."""
        result = subprocess.run(
            [PG_BIN / "psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", self.base,
             "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql],
            capture_output=True, text=True, timeout=30, env=self._env(),
        )  # fmt: skip
        assert 0 == result.returncode, result.stderr
        return result.stdout.strip()

    def login(self, role: str, password: str | None = None, passfile: Path | None = None) -> bool:
        """Whether `role` logs in over TCP with SCRAM, given a password or a .pgpass file."""
        extra = {"PGPASSWORD": password} if password is not None else {}
        if passfile is not None:
            extra["PGPASSFILE"] = str(passfile)
        result = subprocess.run(
            [PG_BIN / "psql", "-X", "-w", "-qAt", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", role, "-d", "postgres", "-c", "select 1"],
            capture_output=True, text=True, timeout=30, env=self._env(**extra),
        )  # fmt: skip
        if result.returncode == 0:
            return "1" == result.stdout.strip()
        assert (
            "password authentication failed" in result.stderr
            or "no password supplied" in result.stderr
        ), result.stderr
        return False

    def _env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": os.devnull,
                "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10", **extra}  # fmt: skip


def start_postgres() -> Iterator[Postgres]:
    missing = [name for name in ("initdb", "pg_ctl", "psql") if not (PG_BIN / name).exists()]
    if missing:
        postgres_unavailable(f"PostgreSQL binaries not found in {PG_BIN}: {', '.join(missing)}")
    as_postgres: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="smagent-pg-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            postgres_unavailable("running as root and there is no 'postgres' account")
        os.chown(base, account.pw_uid, account.pw_gid)
        as_postgres = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    pg_ctl = [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run(
            [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        (data / "pg_hba.conf").write_text(
            "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
            "-c fsync=off -c password_encryption=scram-sha-256"
        )
        subprocess.run(
            [*pg_ctl, "-l", str(base / "server.log"), "-o", options, "-w", "-t", "30", "start"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        started = True
        yield Postgres(base=base, port=port)
    finally:
        if started:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
