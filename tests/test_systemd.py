"""systemd/: the unit is valid and as hardened as it claims, its capabilities are the ones a
pgbouncer host needs, and the sample config is a valid config.

`systemd-analyze` (Debian's systemd package; .ci/run installs it) checks the unit
without systemd running: these tests skip without it locally and fail on CI. The
capability test runs the real CLI as an unprivileged user holding exactly the unit's
ambient capabilities (util-linux's setpriv), which needs root.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_cli

SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "smagent.service"
SAMPLE = SYSTEMD / "smagent.yaml"
SHIPPED_BINARY = "/opt/smagent/bin/smagent"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")


def _skip_or_fail(reason: str) -> None:
    """Skip locally; fail on CI, so CI cannot pass by silently skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the systemd tests must run)")
    pytest.skip(reason)


@pytest.fixture
def analyze() -> str:
    if ANALYZE is None:
        _skip_or_fail("systemd-analyze not installed (Debian package systemd)")
    assert ANALYZE is not None
    return ANALYZE


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value, in order (a key may repeat in a unit file)."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key), []).append(value)
    return found


SERVICE = directives(UNIT.read_text())


def service(key: str) -> list[str]:
    return SERVICE.get(("Service", key), [])


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit as shipped, ExecStart pointed at this venv's smagent (verify wants it to exist)."""
    smagent = Path(sys.executable).with_name("smagent")
    assert smagent.exists()
    text = UNIT.read_text()
    local = text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={smagent} ")
    assert local != text, f"ExecStart no longer starts with {SHIPPED_BINARY}"
    path = tmp_path / "smagent.service"
    path.write_text(local)
    return path


def verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def exposure(analyze: str, unit: Path) -> float:
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found is not None, proc.stdout + proc.stderr
    return float(found.group(1))


def test_systemd_analyze_verify_says_nothing(analyze: str, unit_copy: Path) -> None:
    """`systemd-analyze verify` prints no warning and no error about the unit."""
    proc = verify(analyze, unit_copy)
    assert ("", "", 0) == (proc.stdout, proc.stderr, proc.returncode)


def test_verify_would_report_a_misspelt_directive(analyze: str, unit_copy: Path) -> None:
    """The clean verify above means something: a typo in the unit makes it speak."""
    unit_copy.write_text(unit_copy.read_text().replace("ProtectSystem=", "ProtectSytem="))
    proc = verify(analyze, unit_copy)
    assert "ProtectSytem" in proc.stdout + proc.stderr


def test_exposure_is_at_most_2_and_the_figure_the_unit_states(
    analyze: str, unit_copy: Path
) -> None:
    """`systemd-analyze security --offline=yes` rates the unit <= 2.0, as its header says."""
    score = exposure(analyze, unit_copy)
    print(f"systemd-analyze security --offline=yes: exposure {score}")
    assert score <= MAX_EXPOSURE
    stated = re.search(r"rates this unit (\d+\.\d+)", UNIT.read_text())
    assert stated is not None
    assert float(stated.group(1)) == score


def test_exposure_measures_the_hardening(analyze: str, unit_copy: Path) -> None:
    """The score is not a constant: the unit without its sandboxing lines rates far worse."""
    bare = [
        line
        for line in unit_copy.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    ]
    unit_copy.write_text("\n".join(bare) + "\n")
    assert exposure(analyze, unit_copy) > MAX_EXPOSURE + 2


def test_unit_runs_the_agent_under_sd_notify() -> None:
    """Type=notify, only the main process may notify, a watchdog, SIGHUP to reload."""
    assert ["notify"] == service("Type")
    assert ["main"] == service("NotifyAccess")
    assert ["30s"] == service("WatchdogSec")
    assert ["/bin/kill -HUP $MAINPID"] == service("ExecReload")
    (start,) = service("ExecStart")
    assert start.endswith(" render")  # the agent, not --once
    assert ["mixed"] == service("KillMode")  # SIGTERM to the agent alone: it ends its step


def test_unit_runs_as_its_own_user_with_its_state_directory() -> None:
    """Its own user, never root; StateDirectory=smagent (0700) for pending actions and status."""
    assert ["smagent"] == service("User")
    assert ["smagent"] == service("Group")
    assert ["smagent"] == service("StateDirectory")
    assert ["0700"] == service("StateDirectoryMode")
    assert ["yes"] == service("NoNewPrivileges")
    assert ["strict"] == service("ProtectSystem")
    assert ["yes"] == service("PrivateTmp")


UNIT_CAPS = ("CAP_DAC_OVERRIDE", "CAP_CHOWN", "CAP_FOWNER", "CAP_KILL")


def test_unit_grants_the_documented_capabilities_and_no_more() -> None:
    """Ambient and bounding sets are the same four capabilities, each explained in the unit."""
    assert [" ".join(UNIT_CAPS)] == service("AmbientCapabilities")
    assert [" ".join(UNIT_CAPS)] == service("CapabilityBoundingSet")
    comments = "\n".join(line for line in UNIT.read_text().splitlines() if line.startswith("#"))
    for cap in UNIT_CAPS:
        assert re.search(rf"^#\s+{cap}\s+\S", comments, re.MULTILINE), cap


def test_the_sample_config_is_valid(tmp_path: Path) -> None:
    """systemd/smagent.yaml passes `smagent check` with the template it names from templates/."""
    config = yaml.safe_load(SAMPLE.read_text())
    folder = tmp_path / "etc-smagent"
    (folder / "templates").mkdir(parents=True)
    for template in config["templates"]:
        source = template["source"]
        shutil.copy(REPO / source, folder / source)
    text = SAMPLE.read_text()
    try:
        pwd.getpwnam("postgres")
    except KeyError:  # the sample's owner, created by Debian's postgresql package
        text = text.replace("owner: postgres", "owner: root").replace("group: postgres", "group: 0")
    (folder / "smagent.yaml").write_text(text)
    run = run_cli("--config", folder / "smagent.yaml", "check")
    assert 0 == run.returncode, run.stderr
    assert "userlist.txt.j2 -> /etc/pgbouncer/userlist.txt" in run.stdout


def test_the_unit_lets_the_sample_config_write_its_files() -> None:
    """Every folder the sample writes to (destinations, metrics file) is in ReadWritePaths=."""
    config = yaml.safe_load(SAMPLE.read_text())
    writable = {path.removeprefix("-") for path in service("ReadWritePaths")}
    written = [template["destination"] for template in config["templates"]]
    written.append(config["metrics_file"])
    assert [] == [path for path in written if str(Path(path).parent) not in writable]


# --- the capabilities, exercised: a pgbouncer host in miniature ------------------------------
#
# As on Debian: the folder is root's (0755), userlist.txt and pgbouncer.ini are daemon:daemon
# 0640 (postgres there), and the process to signal runs as daemon. The agent runs as nobody.

AGENT_USER, AGENT_GROUP = "nobody", "nogroup"
TARGET_USER = "daemon"


def _as_agent(caps: tuple[str, ...]) -> list[str]:
    """setpriv: become nobody holding exactly `caps`, as the unit's ambient set gives them."""
    names = ",".join(["-all", *("+" + cap.removeprefix("CAP_").lower() for cap in caps)])
    return [
        "setpriv",
        f"--reuid={AGENT_USER}",
        f"--regid={AGENT_GROUP}",
        "--clear-groups",
        "--no-new-privs",
        f"--inh-caps={names}",
        f"--ambient-caps={names}",
        f"--bounding-set={names}",
    ]


@pytest.fixture
def host() -> Iterator[Path]:
    """A folder every user may traverse (pytest's tmp_path is root's 0700)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the CLI as another user")
    folder = Path(tempfile.mkdtemp(prefix="smagent-caps-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder)


def _lay_out(host: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    nobody = pwd.getpwnam(AGENT_USER)
    daemon = pwd.getpwnam(TARGET_USER)
    conf = host / "etc-smagent"
    conf.mkdir()
    (conf / "secrets.yaml").write_text("pg: {username: app, password: new-pw-4kq}\n")
    etc = host / "etc-pgbouncer"
    etc.mkdir(mode=0o755)
    (etc / "userlist.txt").write_text('"app" "old-pw"\n')
    (etc / "pgbouncer.ini").write_text("listen_port = 6432\n")
    for name, mode in (("userlist.txt", 0o640), ("pgbouncer.ini", 0o644)):  # .ini: mode to fix
        os.chown(etc / name, daemon.pw_uid, daemon.pw_gid)
        (etc / name).chmod(mode)
    as_target = ["setpriv", f"--reuid={TARGET_USER}", f"--regid={TARGET_USER}", "--clear-groups"]
    target = subprocess.Popen([*as_target, "sleep", "60"])
    (host / "pgbouncer.pid").write_text(f"{target.pid}\n")
    config: dict[str, Any] = {
        "providers": {"local": {"type": "file", "path": "secrets.yaml"}},
        "namespaces": {"pg": {"provider": "local", "secret": "pg"}},
        "state_dir": str(host / "state"),
        "templates": [
            {
                "contents": '"{{ secrets.pg.username }}" "{{ secrets.pg.password }}"\n',
                "destination": str(etc / "userlist.txt"),
                "on_change": [{"signal": "HUP", "pidfile": str(host / "pgbouncer.pid")}],
            },
            {"contents": "listen_port = 6432\n", "destination": str(etc / "pgbouncer.ini")},
        ],
    }
    for template in config["templates"]:
        template.update({"mode": "0640", "owner": TARGET_USER, "group": TARGET_USER})
    (conf / "smagent.yaml").write_text(yaml.safe_dump(config))
    for path in (conf, *conf.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        path.chmod(0o700 if path.is_dir() else 0o600)
    os.chown(host, nobody.pw_uid, nobody.pw_gid)  # for state_dir; the files it holds stay root's
    return conf / "smagent.yaml", target


def _render_once(config: Path, caps: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONDONTWRITEBYTECODE": "1",  # nobody writes nothing into the source tree
        "HOME": "/nonexistent",
    }
    cli = [sys.executable, "-m", "smagent", "--config", str(config), "--log-format", "json"]
    return subprocess.run(
        [*_as_agent(caps), *cli, "render", "--once"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )


def _outcome(host: Path, target: subprocess.Popen[bytes]) -> dict[str, object]:
    etc = host / "etc-pgbouncer"
    userlist, ini = os.stat(etc / "userlist.txt"), os.stat(etc / "pgbouncer.ini")
    try:
        target_exit = target.wait(timeout=2)
    except subprocess.TimeoutExpired:
        target_exit = None
    daemon = pwd.getpwnam(TARGET_USER).pw_uid
    return {
        "userlist written": (etc / "userlist.txt").read_text() == '"app" "new-pw-4kq"\n',
        "userlist owner": userlist.st_uid == daemon,
        "ini mode fixed": stat.S_IMODE(ini.st_mode) == 0o640,
        "target signalled": target_exit == -signal.SIGHUP,
    }


def test_the_units_capabilities_let_an_unprivileged_agent_serve_pgbouncer(host: Path) -> None:
    """As nobody with the unit's four capabilities: root's folder, daemon's files, daemon's pid."""
    config, target = _lay_out(host)
    try:
        run = _render_once(config, UNIT_CAPS)
        outcome = _outcome(host, target)
    finally:
        target.kill()
        target.wait()
    assert 0 == run.returncode, run.stderr
    assert all(outcome.values()), outcome


@pytest.mark.parametrize(
    ("dropped", "lost"),
    [
        ("CAP_DAC_OVERRIDE", "userlist written"),
        ("CAP_CHOWN", "userlist written"),
        ("CAP_FOWNER", "ini mode fixed"),
        ("CAP_KILL", "target signalled"),
    ],
)
def test_each_capability_of_the_unit_is_needed(host: Path, dropped: str, lost: str) -> None:
    """Without any one of the four, the part of the job that needs it fails (and exit 1)."""
    config, target = _lay_out(host)
    try:
        run = _render_once(config, tuple(cap for cap in UNIT_CAPS if cap != dropped))
        outcome = _outcome(host, target)
    finally:
        target.kill()
        target.wait()
    assert 1 == run.returncode, run.stderr
    assert outcome.pop(lost) is False, run.stderr


MDWE_CHILD = """
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)  # kernel older than 6.3
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("writable+executable memory still allowed: the check would prove nothing")
except PermissionError:
    pass
import asyncio, ssl
import aiobotocore.session, aiohttp, azure.identity.aio, azure.keyvault.secrets.aio
async def clients():
    ssl.create_default_context()
    async with aiohttp.ClientSession():
        pass
    async with aiobotocore.session.get_session().create_client(
        "secretsmanager", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ):
        pass
asyncio.run(clients())
from smagent.cli import main
sys.argv = ["smagent", "--config", sys.argv[1], "render", "--once"]
main()
"""


def test_the_agent_runs_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes holds: the CLI and every store's SDK work under PR_SET_MDWE."""
    assert ["yes"] == service("MemoryDenyWriteExecute")
    (tmp_path / "secrets.yaml").write_text("pg: {password: pw-under-mdwe}\n")
    (tmp_path / "secrets.yaml").chmod(0o600)
    config = {
        "providers": {"local": {"type": "file", "path": "secrets.yaml"}},
        "namespaces": {"pg": {"provider": "local", "secret": "pg"}},
        "state_dir": str(tmp_path / "state"),
        "templates": [
            {"contents": "{{ secrets.pg.password }}\n", "destination": str(tmp_path / "out")}
        ],
    }
    (tmp_path / "smagent.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_CHILD, str(tmp_path / "smagent.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode == 77:
        pytest.skip("PR_SET_MDWE needs Linux 6.3 or newer")
    assert 0 == proc.returncode, proc.stderr
    assert "pw-under-mdwe\n" == (tmp_path / "out").read_text()


POLKIT_HARNESS = """
const fs = require("fs");
const rules = [];
const polkit = {Result: {YES: "yes", NO: "no"}, addRule: (rule) => rules.push(rule)};
new Function("polkit", fs.readFileSync(process.argv.at(-1), "utf8"))(polkit);
const ask = (id, user, details) => {
    const action = {id: id, lookup: (key) => details[key]};
    for (const rule of rules) {
        const result = rule(action, {user: user});
        if (result !== undefined) return result;
    }
    return "not decided";
};
const manage = "org.freedesktop.systemd1.manage-units";
console.log(JSON.stringify([
    ask(manage, "smagent", {unit: "pgbouncer.service", verb: "kill"}),
    ask(manage, "smagent", {unit: "pgbouncer.service", verb: "restart"}),
    ask(manage, "smagent", {unit: "postgresql.service", verb: "kill"}),
    ask(manage, "someone", {unit: "pgbouncer.service", verb: "kill"}),
    ask("org.freedesktop.systemd1.manage-unit-files", "smagent", {}),
]));
"""


def test_the_polkit_rule_grants_only_signals_to_the_listed_units() -> None:
    """systemd/50-smagent.rules: smagent may `systemctl kill` pgbouncer, and nothing else."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the polkit rule (JavaScript) is not evaluated")
    proc = subprocess.run(
        [node, "-e", POLKIT_HARNESS, str(SYSTEMD / "50-smagent.rules")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    decisions = json.loads(proc.stdout)
    assert ["yes", "not decided", "not decided", "not decided", "not decided"] == decisions
