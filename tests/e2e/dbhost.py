"""A database host for end-to-end tests: PostgreSQL with pgbouncer in front, as an operator runs it.

How to use it (fixtures in tests/e2e/conftest.py; a whole test: test_pgbouncer_rotation.py,
whose `start_host` starts pgbouncer and the agent on the example's config):

    def test_something(dbhost: DbHost, agent: AgentFactory, new_password) -> None:
        dbhost.create_role("app_a", new_password())   # a LOGIN role in the session's server
        dbhost.start_pgbouncer()      # with an empty userlist: no user may log in yet
        config = example_config(dbhost, tmp_path, templates={...}, providers={...})
        process = agent(write_config(tmp_path, config), env=...)
        # the agent renders the userlist into `dbhost.userlist` (owner postgres, 0640)
        # and signals `dbhost.pidfile` (`{signal: HUP, pidfile: ...}`)
        dbhost.wait_reloads(1)        # pgbouncer's own log: when it re-read its files
        with LoadLoop(dbhost.conninfo(), clients_file) as load:   # tests/e2e/load.py
            ...                       # rotate (tests/e2e/rotation.py), kill (RenameKill), ...
        assert [] == load.failures()

The PostgreSQL server is tests/postgres.py's (one per session, SCRAM over
TCP). pgbouncer is one per test, started as the `postgres` account (it
refuses root) with its own port and folder: `folder/pgbouncer.ini`,
`pgbouncer.log`, `pgbouncer.pid`, and the auth file `userlist.txt` that the
agent renders. Its `[pgbouncer]` settings are those of
examples/database-host/pgbouncer.ini (the file an operator copies), with
only the host's own paths and ports replaced, so the tests prove the example.

Passwords are stored in PostgreSQL as the SCRAM verifier smagent's
`scram_sha256` filter computes (what a rotation that hashes client-side
sends: `ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'`). pgbouncer logs in to
PostgreSQL with the keys a client proved to it, which works only when its
verifier and the server's are the same bytes (same salt and iterations),
not merely the same password (see examples/database-host/README.md).

No password is ever printed: SQL that carries a verifier is not shown when
it fails, and errors quote psql's words only.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from smagent.filters import scram_sha256
from tests.postgres import PG_BIN, Postgres, free_port, postgres_unavailable

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "database-host"
"""The operator's example: its templates and pgbouncer settings are what the tests run."""
DATABASE = "app"
"""The database name clients ask pgbouncer for (mapped to the server's `postgres`)."""
RELOAD_LINE = "got SIGHUP, re-reading config"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\w+) \[(\d+)\] (\w+) (.*)$")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
HOST_KEYS = ("listen_addr", "listen_port", "unix_socket_dir", "auth_file", "logfile", "pidfile")
"""`[pgbouncer]` keys that are the host's own: the harness sets them, the example's are ignored."""


def pgbouncer_bin() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        postgres_unavailable("pgbouncer is not installed (Debian package pgbouncer)")
    return found


def as_postgres() -> list[str]:
    """The prefix that runs a command as the `postgres` account when we are root (else none).

    setpriv executes the command itself (no PAM session, no parent left in
    between), so the pid we start is pgbouncer's own.
    """
    if os.geteuid() != 0:
        return []
    account = pwd.getpwnam("postgres")
    return [
        shutil.which("setpriv") or "/usr/bin/setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--init-groups",
        "--",
    ]


def example_settings() -> dict[str, str]:
    """The `[pgbouncer]` settings of examples/database-host/pgbouncer.ini, less the host's own."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.read(EXAMPLE / "pgbouncer.ini")
    return {k: v for k, v in parser["pgbouncer"].items() if k not in HOST_KEYS}


def event_time(event: Mapping[str, object]) -> float:
    """The agent's own timestamp of one of its log events (ISO, UTC), as time.time()."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float
    """Wall-clock time (time.time()) pgbouncer stamped on the line, to the millisecond."""
    pid: int
    level: str
    text: str


@dataclass
class DbHost:
    """One test's pgbouncer (and the session's PostgreSQL); see the module docstring."""

    postgres: Postgres
    folder: Path
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=example_settings)
    """`[pgbouncer]` settings (the example's); a test may change them before `start_pgbouncer`."""
    roles: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def userlist(self) -> Path:
        """pgbouncer's auth_file: the agent renders it."""
        return self.folder / "userlist.txt"

    @property
    def ini(self) -> Path:
        return self.folder / "pgbouncer.ini"

    @property
    def logfile(self) -> Path:
        return self.folder / "pgbouncer.log"

    @property
    def pidfile(self) -> Path:
        return self.folder / "pgbouncer.pid"

    # --- PostgreSQL ----------------------------------------------------------------------

    def sql(self, sql: str) -> str:
        """Run SQL as the superuser (Unix socket, trust); its output (psql -At)."""
        return self.postgres.admin(sql)

    def _secret_sql(self, sql: str) -> None:
        """Run SQL that carries a verifier: on failure, psql's first line only, never the SQL."""
        result = subprocess.run(
            [PG_BIN / "psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", self.postgres.base,
             "-p", str(self.postgres.port), "-U", "postgres", "-d", "postgres"],
            input=sql, capture_output=True, text=True, timeout=30, env=self.postgres._env(),
        )  # fmt: skip
        if result.returncode != 0:
            first = (result.stderr.splitlines() or ["(no output)"])[0]
            raise AssertionError(f"psql failed: {first.split('LINE')[0][:200]}")

    def create_role(self, role: str, password: str) -> None:
        """A LOGIN role with `password` (stored as smagent's verifier); dropped after the test."""
        assert _ROLE.match(role), f"not a plain role name: {role!r}"
        self._secret_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{scram_sha256(password)}';")
        self.roles.append(role)

    def set_password(self, role: str, password: str) -> None:
        """Set `role`'s password, as a rotation's setSecret step does (client-side verifier)."""
        assert _ROLE.match(role), f"not a plain role name: {role!r}"
        self._secret_sql(f"ALTER ROLE {role} PASSWORD '{scram_sha256(password)}';")

    def end_sessions(self, role: str) -> int:
        """End `role`'s sessions on the server: pgbouncer's pooled server connections for it
        go, so its next client needs a new server login (as when a pool grows under load or
        a connection reaches server_lifetime). How many there were."""
        assert _ROLE.match(role), f"not a plain role name: {role!r}"
        query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = "
        ended = self.sql(f"{query}'{role}'")
        return int(ended)

    def drop_roles(self) -> None:
        """Drop the roles this test created (their sessions ended first)."""
        for role in self.roles:
            self.sql(  # role names are checked plain (_ROLE) when created
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"  # noqa: S608
            )
            self.sql(f"DROP ROLE IF EXISTS {role}")
        self.roles.clear()

    # --- pgbouncer -----------------------------------------------------------------------

    def write_ini(self) -> None:
        settings = {
            **self.settings,
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_file": str(self.userlist),
            "logfile": str(self.logfile),
            "pidfile": str(self.pidfile),
        }
        lines = [
            "[databases]",
            f"{DATABASE} = host=127.0.0.1 port={self.postgres.port} dbname=postgres",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        self.ini.write_text("\n".join(lines) + "\n")
        os.chmod(self.ini, 0o644)

    def start_pgbouncer(self, timeout: float = 10) -> int:
        """Start pgbouncer as `postgres` (in the foreground, its own session); its pid.

        Without a userlist yet, an empty one is put there first (owned by postgres, as the
        agent writes it): pgbouncer then starts with no user, and the agent's first pass
        fills it and reloads pgbouncer (one reload in its log).
        """
        assert self._proc is None, "pgbouncer already started"
        binary = pgbouncer_bin()
        if not self.userlist.exists():
            self.userlist.write_text("")
            owner = postgres_owner()
            if owner:
                shutil.chown(self.userlist, owner["owner"], owner["group"])
        self.write_ini()
        self._proc = subprocess.Popen(
            [*as_postgres(), binary, str(self.ini)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC"},
            start_new_session=True,  # a Ctrl-C of the test run is not its signal
        )
        deadline = time.monotonic() + timeout
        while not self._listening():
            code = self._proc.poll()
            if code is not None:
                raise AssertionError(f"pgbouncer exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"pgbouncer not listening after {timeout}s\n{self.log_tail()}")
            time.sleep(0.01)
        return self._proc.pid

    def _listening(self) -> bool:
        import socket

        if not self.pidfile.exists():
            return False
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def pgbouncer_pid(self) -> int:
        assert self._proc is not None, "pgbouncer not started"
        return self._proc.pid

    def pgbouncer_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop_pgbouncer(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: immediate shutdown (SIGINT would wait for clients)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def conninfo(self) -> str:
        """Where clients connect (pgbouncer), as a libpq conninfo; user and password come
        from the clients' file (libpq takes them as separate keywords)."""
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE}"

    # --- pgbouncer's log -----------------------------------------------------------------

    def log(self) -> list[LogLine]:
        """pgbouncer's log lines with their times (they never hold a password)."""
        if not self.logfile.exists():
            return []
        lines = []
        for raw in self.logfile.read_text(errors="replace").splitlines():
            match = _LOG_TIME.match(raw)
            if match is None:
                continue
            stamp, zone, pid, level, text = match.groups()
            assert "UTC" == zone, f"pgbouncer logs in {zone}: run it with TZ=UTC"
            at = datetime.fromisoformat(f"{stamp}+00:00").timestamp()
            lines.append(LogLine(at, int(pid), level, text))
        return lines

    def reloads(self) -> list[float]:
        """When pgbouncer re-read its config and auth_file (SIGHUP), wall-clock, in order."""
        return [line.at for line in self.log() if RELOAD_LINE in line.text]

    def wait_reloads(self, count: int, timeout: float = 10) -> list[float]:
        """Wait until pgbouncer logged `count` reloads (more is a failure); their times."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.reloads()
            if len(seen) > count:
                raise AssertionError(f"expected {count} pgbouncer reloads, got {len(seen)}")
            if len(seen) == count:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} pgbouncer reloads within {timeout}s, got {len(seen)}\n"
                    + self.log_tail()
                )
            time.sleep(0.01)

    def log_tail(self, count: int = 20) -> str:
        if not self.logfile.exists():
            return "(no pgbouncer log)"
        lines = self.logfile.read_text(errors="replace").splitlines()[-count:]
        return "--- pgbouncer log ---\n" + "\n".join(lines)


def make_folder() -> Path:
    """A folder the `postgres` account owns (pgbouncer writes its log and pidfile there)."""
    folder = Path(tempfile.mkdtemp(prefix="smagent-dbhost-"))
    os.chmod(folder, 0o755)  # noqa: S103 (pgbouncer's files: the agent and pgbouncer both go in)
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
    return folder


def postgres_owner() -> Mapping[str, str]:
    """The userlist's `owner`/`group` in a template entry: postgres when we are root."""
    return {"owner": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@contextlib.contextmanager
def running_dbhost(postgres: Postgres) -> Iterator[DbHost]:
    """A DbHost for one test; pgbouncer stopped, roles dropped and folder removed after."""
    host = DbHost(postgres, make_folder())
    try:
        yield host
    finally:
        host.stop_pgbouncer()
        try:
            host.drop_roles()
        finally:
            shutil.rmtree(host.folder, ignore_errors=True)


# --- the operator's example config, pointed at this host ---------------------------------------


def example_config(
    dbhost: DbHost,
    folder: Path,
    *,
    templates: Mapping[str, Path],
    providers: Mapping[str, Mapping[str, object]],
    refresh: str | None = None,
    defaults: Mapping[str, object] | None = None,
    example: str = "smagent.yaml",
) -> dict[str, object]:
    """examples/database-host/smagent.yaml (or `example`, another config of that folder) as
    a config for this test host.

    `templates`: the example's template entries to keep, by `name`, each with its
    destination here (the userlist's is `dbhost.userlist`, whatever is given). Sources
    stay the example's own files (absolute paths), so the tests render exactly what an
    operator copies. Owners become postgres (root) or none; a `{signal, pidfile}` action
    aims at this host's pgbouncer. `providers`: fields merged into the example's providers
    of those names (an `endpoint_url`, say); the others are dropped, and so are namespaces
    on them. `refresh` replaces every namespace's `refresh`.
    """
    import yaml

    config = yaml.safe_load((EXAMPLE / example).read_text())
    kept_providers = {
        name: {**config["providers"][name], **fields} for name, fields in providers.items()
    }
    namespaces = {
        name: dict(ns) for name, ns in config["namespaces"].items() if ns["provider"] in providers
    }
    if refresh is not None:
        for ns in namespaces.values():
            ns["refresh"] = refresh
    entries = []
    for entry in config["templates"]:
        if entry.get("name") not in templates:
            continue
        entry = dict(entry)
        entry["source"] = str(EXAMPLE / entry["source"])
        is_userlist = any("pidfile" in action for action in entry.get("on_change", []))
        entry["destination"] = str(dbhost.userlist if is_userlist else templates[entry["name"]])
        entry.pop("owner", None)
        entry.pop("group", None)
        if is_userlist:
            entry.update(postgres_owner())
        entry["on_change"] = [
            {**action, "pidfile": str(dbhost.pidfile)} if "pidfile" in action else action
            for action in entry.get("on_change", [])
        ]
        entries.append(entry)
    missing = set(templates) - {entry.get("name") for entry in entries}
    assert not missing, f"no template named {sorted(missing)} in the example"
    return {
        "providers": kept_providers,
        "namespaces": namespaces,
        "defaults": {**config["defaults"], **(defaults or {})},
        "state_dir": str(folder / "state"),
        "templates": entries,
    }


def write_config(folder: Path, config: Mapping[str, object]) -> Path:
    import yaml

    path = folder / "smagent.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


# --- killing a process the moment a file is renamed into place ---------------------------------


class RenameKill:
    """SIGKILL `pid` the moment a file named `name` is renamed into `folder`.

    The kill must come before the agent's next system calls (a folder fsync, then the
    SIGHUP), so it is done by a process of its own (tests/e2e/rename_kill.py: raw
    inotify, blocked in read, no GIL shared with the test's load threads). A context
    manager around the step that makes the agent write the file; `wait()` says when the
    kill was sent (time.time()).
    """

    def __init__(self, folder: Path, name: str, pid: int) -> None:
        self._args = [str(folder), name, str(pid)]
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> RenameKill:
        script = Path(__file__).with_name("rename_kill.py")
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(script), *self._args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        assert "ready" == self._proc.stdout.readline().strip(), "the watcher did not start"
        return self

    def wait(self, timeout: float) -> float:
        assert self._proc is not None
        assert self._proc.stdout is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise AssertionError(
                f"{self._args[1]} was not renamed into place within {timeout}s"
            ) from None
        return float(self._proc.stdout.read().strip())

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
