"""`smagent status` as a monitoring check runs it: the real CLI on a status file the agent wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from smagent.health import AgentStatus, LeaseHealth, TemplateHealth, write_status
from smagent.state import ensure_state_dir
from smagent.status_report import age, one_line
from tests import leaks
from tests.conftest import CANARY, CANARY_ENV, CANARY_ENV_NAME, Run, Workspace, run_cli
from tests.health_samples import healthy, troubled


def configure(root: Path, **extra: object) -> Path:
    """A config in `root` whose state_dir is root/state (created as the agent does)."""
    config = root / "smagent.yaml"
    raw = yaml.safe_load(config.read_text()) if config.exists() else {"templates": []}
    raw["state_dir"] = "state"
    raw.update(extra)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    ensure_state_dir(root / "state")
    return config


def status_of(config: Path, status: AgentStatus | None, *args: str) -> Run:
    if status is not None:
        write_status(config.parent / "state" / "status.json", status)
    return run_cli("--config", config, "status", *args)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return configure(tmp_path)


@pytest.fixture
def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_all_current_exits_0(config: Path) -> None:
    """A live agent with every template ok: exit 0, one OK line first, each template listed."""
    run = status_of(config, healthy())
    assert (0, "") == (run.returncode, run.stderr)
    lines = run.stdout.splitlines()
    assert "smagent: OK: all 2 templates current" == lines[0]
    assert re.search(rf"agent: pid {os.getpid()}, started .* UTC \(.* ago\)", run.stdout)
    assert re.search(
        r"ok +userlist -> /etc/pgbouncer/userlist.txt +current as of 1\ds ago, "
        r"file changed 1h30m ago",
        run.stdout,
    )
    assert re.search(r"vault:database/creds/app +expires in 41m0\ds \(renewable\)", run.stdout)
    assert f"  note: not the config this command read ({config})" in lines
    assert re.search(
        r"ok +aws-prod \(aws\) +last answer \ds ago; 120 fetches, 2 errors, 0 throttled", run.stdout
    )
    assert re.search(r"ok +vault \(vault\) +30 fetches, 0 errors, 1 throttled", run.stdout)


def test_failing_template_says_since_when_and_why(config: Path) -> None:
    """Failing: exit 1, the template first, failing for how long, since when, why; the store
    down since when; the pending action with its attempts."""
    now = time.time()
    run = status_of(config, troubled(now, config=str(config)))
    assert 1 == run.returncode
    lines = run.stdout.splitlines()
    assert (
        "smagent: ATTENTION: 1 template failing, 1 provider unavailable, 1 action pending"
        == lines[0]
    )
    assert not any("note: not the config" in line for line in lines)
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now - 192))
    failing = next(line for line in lines if "FAILING" in line)
    assert re.fullmatch(
        r"  FAILING  mysql -> /opt/replicant/conn/mysql\.yaml  failing for 3m1[2-5]s "
        rf"\(since {since}\): aws-prod unavailable: no answer within 10s \(fetch_timeout\); "
        r"last success 1h02m ago \(the file keeps it\)",
        failing,
    ), failing
    assert lines.index(failing) < next(i for i, line in enumerate(lines) if "userlist" in line)
    assert re.search(
        r"DOWN +aws-prod \(aws\) +unavailable for 3m1[2-5]s: no answer within 10s "
        r"\(fetch_timeout\); last answer 3m2[0-3]s ago; 130 fetches, 9 errors, 3 throttled",
        run.stdout,
    )
    assert re.search(
        r"signal HUP to /run/pgbouncer/pgbouncer\.pid +pending for 1m0[5-8]s \(3 attempts\): "
        r"no process with pid 4242",
        run.stdout,
    )


def _pending_template(s: AgentStatus) -> None:
    s.templates.append(TemplateHealth(name="new", destination="/etc/new", state="pending"))


def _expired_lease(s: AgentStatus) -> None:
    s.leases = [LeaseHealth("vault", "database/creds/app", time.time() - 130, True)]


def _rejected_reload(s: AgentStatus) -> None:
    s.config_error = "smagent.yaml: defaults.refresh: expected a duration, got 'soon'"


def _not_ready(s: AgentStatus) -> None:
    s.ready = False


@pytest.mark.parametrize(
    ("change", "headline", "detail"),
    [
        pytest.param(
            _pending_template,
            "1 template not rendered yet",
            r"pending +new -> /etc/new +not rendered yet",
            id="template-pending",
        ),
        pytest.param(
            _expired_lease,
            "1 lease expired",
            r"vault:database/creds/app +EXPIRED 2m1\ds ago \(renewable\)",
            id="lease-expired",
        ),
        pytest.param(
            _rejected_reload,
            "config reload rejected",
            r"RELOAD REJECTED: smagent\.yaml: defaults\.refresh: expected a duration, got 'soon'",
            id="reload-rejected",
        ),
        pytest.param(
            _not_ready,
            "first pass not finished",
            r"agent: pid \d+",
            id="starting",
        ),
    ],
)
def test_each_kind_of_trouble_exits_1(
    config: Path, change: object, headline: str, detail: str
) -> None:
    """Each thing an operator must look at gives exit 1 and says what it is."""
    status = healthy()
    change(status)  # type: ignore[operator]
    run = status_of(config, status)
    assert 1 == run.returncode, run.stdout
    assert f"smagent: ATTENTION: {headline}" == run.stdout.splitlines()[0]
    assert re.search(detail, run.stdout), run.stdout


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited but not been reaped (its pid still answers signals)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while _state(proc.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)  # no event to await: the kernel's process state is polled
    yield proc.pid
    proc.wait()


def _state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def test_no_status_file_is_not_running(config: Path) -> None:
    """No status file: exit 2 (SPEC: no agent state found), naming the file."""
    run = status_of(config, None)
    assert 2 == run.returncode
    path = config.parent / "state" / "status.json"
    assert run.stdout.startswith(f"smagent: NOT RUNNING: no status file at {path}: ")
    assert "/var/lib/smagent" in run.stdout


@pytest.mark.parametrize(
    "why",
    ["pid-gone", "pid-zombie", "pid-reused", "stopped", "stale"],
)
def test_an_agent_that_is_gone_or_hung_is_not_running(
    config: Path, why: str, request: pytest.FixtureRequest
) -> None:
    """Exit 3 when the agent's pid is gone, a zombie or another process now, a clean stop is
    recorded, or the status is older than 3 heartbeats; its last state is still shown."""
    now = time.time()
    status = troubled(now)
    expected = {
        "pid-gone": r"pid \d+ is gone \(no clean stop recorded; last status \ds ago\)",
        "pid-zombie": r"pid \d+ is gone \(no clean stop recorded; .*\)",
        "pid-reused": r"pid \d+ is now another process \(the agent's is gone\)",
        "stopped": r"stopped at .* UTC \(1m40s ago\)",
        "stale": r"not responding: status last written \S+ ago, expected every \S+ "
        r"\(pid \d+ exists: hung\?\)",
    }[why]
    if why == "pid-gone":
        status.pid = request.getfixturevalue("gone_pid")
    elif why == "pid-zombie":
        status.pid = request.getfixturevalue("zombie")
    elif why == "pid-reused":
        # the process at this pid (this test's) began a minute after the agent's last write
        status.started_at -= 3600
        status.updated_at = status.started_at + 3540
    elif why == "stopped":
        status.stopped_at = now - 100
    else:  # last written when this process (the agent) started, over 3 heartbeats ago
        status.updated_at = status.started_at
        status.heartbeat_s = (now - status.started_at) / 3.5
    run = status_of(config, status)
    assert 3 == run.returncode, run.stdout
    lines = run.stdout.splitlines()
    assert re.fullmatch(f"smagent: NOT RUNNING: {expected}", lines[0]), lines[0]
    assert "last state the agent recorded:" == lines[1]
    assert any(line.startswith("  FAILING  mysql") for line in lines)


def test_a_status_within_3_heartbeats_is_current(config: Path) -> None:
    """A status written over a heartbeat ago, but less than 3, is still a running agent."""
    status = healthy()
    status.updated_at = status.started_at  # when this process (the agent) started
    status.heartbeat_s = (time.time() - status.started_at) / 2 + 10
    assert 0 == status_of(config, status).returncode


def test_an_agent_of_another_user_counts_as_running(config: Path) -> None:
    """The agent's pid belonging to a user we may not signal (EPERM) is a running agent."""
    if os.geteuid() != 0:
        run = status_of(config, healthy(pid=1, started_at=time.time()))  # init: not ours
    else:  # root may signal anyone: start the "agent" as nobody, ask from a user namespace
        if shutil.which("unshare") is None:
            pytest.skip("util-linux unshare is needed to drop root's right to signal")
        agent = subprocess.Popen(["sleep", "60"], user=65534)
        try:
            status = healthy(pid=agent.pid, started_at=time.time())
            write_status(config.parent / "state" / "status.json", status)
            probe = subprocess.run(
                ["unshare", "--user", "--map-root-user", "true"], capture_output=True, check=False
            )
            if probe.returncode != 0:
                pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
            proc = subprocess.run(
                ["unshare", "--user", "--map-root-user", sys.executable, "-c",
                 f"import os; os.kill({agent.pid}, 0)"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert "PermissionError" in proc.stderr  # the situation under test holds
            run = _run_in_user_namespace(config)
        finally:
            agent.kill()
            agent.wait()
    assert (0, "") == (run.returncode, run.stderr), run.stdout
    assert run.stdout.startswith("smagent: OK: ")


def _run_in_user_namespace(config: Path) -> Run:
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-m", "smagent",
         "--config", str(config), "status"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    leaks.assert_no_leak(proc.stdout + proc.stderr, "smagent status")
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_json_form_carries_the_verdict_and_the_status(config: Path) -> None:
    """--json: the verdict (state, exit code, problems) and the status file's fields; same
    exit code as the text form."""
    now = time.time()
    status = troubled(now)
    run = status_of(config, status, "--json")
    assert 1 == run.returncode
    machine = json.loads(run.stdout)
    assert ("attention", 1) == (machine["state"], machine["exit_code"])
    assert str(config.parent / "state" / "status.json") == machine["status_file"]
    assert 3 == len(machine["problems"])
    assert re.fullmatch(
        r"template mysql failing for 3m1[2-5]s: aws-prod unavailable: .*", machine["problems"][0]
    )
    assert status == AgentStatus.from_json(json.dumps(machine["status"]).encode())
    assert now <= machine["checked_at"] <= time.time()


def test_json_form_without_an_agent(config: Path) -> None:
    """--json with no status file: state not_running, status null, exit 2."""
    run = status_of(config, None, "--json")
    machine = json.loads(run.stdout)
    assert (2, "not_running", None) == (run.returncode, machine["state"], machine["status"])


def test_secret_in_a_message_is_scrubbed(ws: Workspace, tmp_path: Path) -> None:
    """A value of the file store or an env variable the config names, in any message of the
    status file (a slip in the agent's scrub), is masked in both forms of the output."""
    ws.namespaces["envpw"] = {"provider": "env", "secret": CANARY_ENV_NAME}
    ws.providers["env"] = {"type": "env"}
    ws.write()
    config = configure(tmp_path)
    status = troubled()
    status.templates[1].error = f"aws-prod said {CANARY} is wrong"
    status.providers[0].last_error = f"refused {CANARY_ENV}"
    status.config_error = f"line 1: {CANARY}"
    status.pending_actions[0].last_error = f"exit 1: {CANARY}"
    path = tmp_path / "state" / "status.json"
    path.write_bytes(status.to_json())  # as written by an agent that did not know the value
    leaks.allow_secrets_in(path)
    text = run_cli("--config", config, "status")  # run_cli fails on any canary in its output
    machine = run_cli("--config", config, "status", "--json")
    assert 1 == text.returncode == machine.returncode
    assert "aws-prod said <redacted> is wrong" in text.stdout
    assert "refused <redacted>" in text.stdout
    problems = json.loads(machine.stdout)["problems"]
    assert "config reload rejected: line 1: <redacted>" in problems[0]
    assert (
        "exit 1: <redacted>"
        == json.loads(machine.stdout)["status"]["pending_actions"][0]["last_error"]
    )


def test_an_unreadable_status_file_is_a_usage_error(config: Path) -> None:
    """A status file that is not one: exit 2, an error naming it, no traceback."""
    path = config.parent / "state" / "status.json"
    path.write_text('{"pid": "x"}')
    run = status_of(config, None)
    assert 2 == run.returncode
    assert run.stderr.startswith(f"error: {path}: not an smagent status file (")
    assert "Traceback" not in run.stderr


def test_a_config_error_exits_2(tmp_path: Path) -> None:
    """status validates the config first: a bad one exits 2 naming the key."""
    config = configure(tmp_path, state_dir=12)
    run = run_cli("--config", config, "status")
    assert 2 == run.returncode
    assert "state_dir" in run.stderr


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (-5, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (192, "3m12s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7500, "2h05m"),
        (86400, "1d00h"),
        (3 * 86400 + 4 * 3600 + 59, "3d04h"),
    ],
)
def test_ages_read_as_an_operator_says_them(seconds: float, expected: str) -> None:
    """Durations: 45s, 3m12s, 2h05m, 3d04h (a clock that jumped back reads 0s)."""
    assert expected == age(seconds)


def test_messages_are_shown_on_one_line_without_terminal_escapes() -> None:
    """A multi-line message joins with ' | '; control characters are shown escaped."""
    assert "a | b \\x1b[31mred" == one_line("a\n  \nb \x1b[31mred\n")
