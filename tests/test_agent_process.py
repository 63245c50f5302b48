"""The agent test harness itself (tests/agent_process.py, sighup_counter.py, agent_config.py).

`smagent render` is driven by these in the agent tests; here they drive
small stand-in scripts instead, so that the harness is known to see every
event and every signal, to fail when it must, and to leave no process
behind, whatever the agent under test does.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from smagent.config import load_config
from tests import agent_process, leaks
from tests.agent_config import AgentWorkspace, hup, replace_file, rotate_secret
from tests.agent_process import AgentProcess, pids_alive
from tests.conftest import CANARY, run_cli
from tests.sighup_counter import SighupCounter, pending

STAND_IN = """
import json, os, signal, sys, time

def log(event, **fields):
    sys.stderr.write(json.dumps({"event": event, "level": "info", **fields}) + "\\n")
    sys.stderr.flush()

def serve():
    # signals taken in turn from the loop: a handler that logs could re-enter a write
    reloads = 0
    while True:
        info = signal.sigwaitinfo({signal.SIGHUP, signal.SIGTERM})
        if info.si_signo == signal.SIGHUP:
            reloads += 1
            log("config.reloaded", reloads=reloads)
        else:
            log("agent.stopping")
            sys.exit(0)

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
log("agent.ready", pid=os.getpid())
"""
IDLE = "serve()"


def stand_in(
    tmp_path: Path, body: str = "", *, then: str = IDLE, name: str = "stand_in.py"
) -> list[str]:
    """argv of a Python stand-in for the agent: its logging and signal set-up, `body`, then
    `then` (by default: reload on SIGHUP, exit 0 on SIGTERM, until then wait)."""
    script = tmp_path / name
    script.write_text(STAND_IN + textwrap.dedent(body) + "\n" + then + "\n")
    return [sys.executable, "-I", "-S", str(script)]


# --- AgentProcess ------------------------------------------------------------------------------


def test_waits_for_events_by_name_and_fields(tmp_path: Path) -> None:
    """wait_for returns the event with the asked fields; SIGTERM gives the exit code."""
    with AgentProcess(stand_in(tmp_path)) as proc:
        start = proc.mark()
        ready = proc.wait_for("agent.ready", timeout=10)
        assert proc.pid == ready["pid"]
        for n in (1, 2, 3):
            proc.send(signal.SIGHUP)
            assert n == proc.wait_for("config.reloaded", reloads=n)["reloads"]
        assert [1, 2, 3] == [e["reloads"] for e in proc.events("config.reloaded", since=start)]
        assert [] == proc.events("config.reloaded")  # the cursor is past the last one
        assert 0 == proc.stop()
        assert proc.events("agent.stopping")


def test_a_wait_after_a_mark_ignores_earlier_events(tmp_path: Path) -> None:
    """An event logged before mark() cannot satisfy a later wait_for (a stale pass)."""
    with AgentProcess(stand_in(tmp_path)) as proc:
        proc.wait_for("agent.ready")
        proc.send(signal.SIGHUP)
        first = proc.wait_for("config.reloaded")
        before = proc.mark()
        assert [] == proc.events("config.reloaded")
        with pytest.raises(AssertionError, match=r"no event config\.reloaded: not within"):
            proc.wait_for("config.reloaded", timeout=0.3)
        proc.send(signal.SIGHUP)
        second = proc.wait_for("config.reloaded")
        assert 2 == second["reloads"]
        assert second.index > first.index
        assert second.at >= before.at
        assert [first, second] == proc.events("config.reloaded", since=agent_process.Mark(0, 0))


def test_each_wait_moves_past_the_event_it_returns(tmp_path: Path) -> None:
    """Two waits for one event name return two events, never the same one twice."""
    with AgentProcess(stand_in(tmp_path)) as proc:
        proc.wait_for("agent.ready")
        for n in (1, 2, 3):
            proc.send(signal.SIGHUP)
            assert n == proc.wait_for("config.reloaded")["reloads"]
        with pytest.raises(AssertionError, match=r"no event agent\.ready"):
            proc.wait_for("agent.ready", timeout=0.2)


def test_field_predicates_and_missing_fields(tmp_path: Path) -> None:
    """A field may be matched by a predicate; an event lacking the field does not match."""
    with AgentProcess(stand_in(tmp_path)) as proc:
        start = proc.mark()
        proc.wait_for("agent.ready")
        for n in (1, 2, 3):
            proc.send(signal.SIGHUP)
            proc.wait_for("config.reloaded", reloads=n)
        event = proc.wait_for("config.reloaded", since=start, reloads=lambda n: n > 2)
        assert 3 == event["reloads"]
        assert [] == proc.events(None, since=start, nowhere="x")
        assert 1 == len(proc.events(None, since=start, pid=lambda pid: pid > 1))


def test_an_early_exit_fails_the_wait_at_once_with_the_log(tmp_path: Path) -> None:
    """When the process exits, wait_for fails at once, naming the exit code and the last lines."""
    argv = stand_in(tmp_path, 'log("config.invalid", error="bad key")\nsys.exit(2)')
    with AgentProcess(argv) as proc:
        started = time.monotonic()
        with pytest.raises(AssertionError) as failure:
            proc.wait_for("agent.ready", timeout=30, never="there")
        assert time.monotonic() - started < 10  # not the whole timeout
        text = str(failure.value)
        assert "exited with 2" in text
        assert '"event": "config.invalid"' in text
        assert 2 == proc.returncode


def test_the_log_tail_is_added_to_a_failure_inside_the_block(tmp_path: Path) -> None:
    """An exception leaving the `with` carries the process's last lines, and it is killed."""
    proc = AgentProcess(stand_in(tmp_path))

    def fail_inside() -> None:
        with proc:
            proc.wait_for("agent.ready")
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError) as failure:
        fail_inside()
    assert any('"event": "agent.ready"' in note for note in failure.value.__notes__)
    assert [] == pids_alive([proc.pid])


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    """A process still up after the stop timeout is killed, and the test is told."""
    body = """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # a blocked one is kept
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log("ignoring")
    """
    with AgentProcess(stand_in(tmp_path, body)) as proc:
        proc.wait_for("ignoring")
        with pytest.raises(AssertionError, match=r"still running after 0\.3s"):
            proc.stop(timeout=0.3)
        assert -signal.SIGKILL == proc.returncode


def test_close_kills_the_process_and_every_descendant(tmp_path: Path) -> None:
    """Leaving the block kills the process, its group and children in sessions of their own."""
    body = """
    import subprocess
    same = subprocess.Popen(["sleep", "300"])
    own = subprocess.Popen(["sleep", "300"], start_new_session=True)
    log("children", pids=[same.pid, own.pid])
    """
    with AgentProcess(stand_in(tmp_path, body)) as proc:
        children = proc.wait_for("children")["pids"]
        assert children == pids_alive(children)
    assert [] == pids_alive([proc.pid, *children])


def test_a_process_left_running_is_killed_at_the_end_of_the_test(tmp_path: Path) -> None:
    """end_of_test (run by conftest after each test) kills what a test started and left."""
    proc = AgentProcess(stand_in(tmp_path)).start()
    counter = SighupCounter(tmp_path).start()
    proc.wait_for("agent.ready")
    agent_process.end_of_test()
    assert [] == pids_alive([proc.pid, counter.pid])


def test_a_canary_in_the_output_fails_at_close_masked(tmp_path: Path) -> None:
    """A canary on stderr or stdout fails the test when the process is closed, value masked."""
    body = f"""
    log("oops", detail={CANARY!r})
    print("plain " + {CANARY!r}[::-1], flush=True)
    """
    argv = stand_in(tmp_path, body)
    leaks.allow_secrets_in(argv[-1])  # the script holds the canary it prints
    proc = AgentProcess(argv).start()
    proc.wait_for("oops")
    deadline = time.monotonic() + 5
    while "plain" not in proc.stdout() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(AssertionError) as failure:
        proc.close()
    text = str(failure.value)
    assert "CANARY (as is) in stderr" in text
    assert "CANARY (reversed) in stdout" in text
    assert "CANARY (reversed) in stdout" in text
    assert CANARY not in text
    assert "<CANARY as is>" in text


def test_a_stray_stderr_line_fails_at_close(tmp_path: Path) -> None:
    """A traceback or warning on stderr (not a JSON log line) fails; `error:` lines do not."""
    body = 'sys.stderr.write("error: smagent.yaml: a CLI error line\\n")\n'
    body += 'sys.stderr.write("Traceback (most recent call last):\\n")\nsys.exit(1)\n'
    proc = AgentProcess(stand_in(tmp_path, body)).start()
    assert 1 == proc.wait()
    with pytest.raises(AssertionError, match=r"1 stderr line\(s\) .* are not JSON .*Traceback"):
        proc.close()


def test_cpu_seconds_tells_busy_from_idle(tmp_path: Path) -> None:
    """cpu_seconds counts what a busy loop burnt and stays near zero for a waiting process."""
    busy = "while time.process_time() < 0.5:\n    pass\nlog('spun', cpu=time.process_time())"
    with (
        AgentProcess(stand_in(tmp_path, busy, name="busy.py")) as spinner,
        AgentProcess(stand_in(tmp_path, name="idle.py")) as idler,
    ):
        idler.wait_for("agent.ready")
        idle_before = idler.cpu_seconds()
        spun = spinner.wait_for("spun")["cpu"]
        assert spun - 0.02 <= spinner.cpu_seconds() <= spun + 0.2  # ticks: 10 ms
        assert idler.cpu_seconds() - idle_before < 0.02


def test_the_environment_is_clean_and_extended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child gets the test's env without SMAGENT_*/NOTIFY_SOCKET, plus what is passed."""
    monkeypatch.setenv("SMAGENT_CONFIG", "/nowhere.yaml")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    body = """
    prefixes = ("SMAGENT", "NOTIFY", "WANTED")
    log("env", keys=sorted(k for k in os.environ if k.startswith(prefixes)))
    """
    with AgentProcess(stand_in(tmp_path, body), env={"WANTED": "1"}) as proc:
        assert ["WANTED"] == proc.wait_for("env")["keys"]


def test_the_agent_fixture_runs_smagent_render(
    agent: agent_process.AgentFactory, tmp_path: Path
) -> None:
    """The fixture starts the real CLI with JSON logs (here `render --once`, which exits)."""
    workspace = AgentWorkspace.with_canaries(tmp_path)
    out = workspace.template("a.txt.j2", "pw={{ secrets.db.password }}\n")
    workspace.write()
    proc = agent(workspace.config_path, "--once")
    proc.wait_for("template.rendered", template="a.txt.j2")
    assert 0 == proc.wait()
    assert f"pw={CANARY}\n" == out.read_text()


# --- the SIGHUP counter ------------------------------------------------------------------------


def test_the_counter_counts_every_delivered_sighup(sighup_counter: SighupCounter) -> None:
    """500 SIGHUPs, each sent once the previous one was delivered: exactly 500 counted."""
    for _ in range(500):
        os.kill(sighup_counter.pid, signal.SIGHUP)
        while pending(sighup_counter.pid, signal.SIGHUP):
            pass
    assert 500 == sighup_counter.count()
    assert 500 == len(sighup_counter.times())


def test_count_waits_for_signals_in_flight(sighup_counter: SighupCounter) -> None:
    """count() sees a SIGHUP sent just before it (the sync barrier), never an older count."""
    for n in range(1, 51):
        os.kill(sighup_counter.pid, signal.SIGHUP)
        assert n == sighup_counter.count()


def test_wait_count_is_exact(sighup_counter: SighupCounter) -> None:
    """wait_count(n) returns at n, fails at once past n, and after its timeout below n."""
    assert 0 == sighup_counter.count()
    with pytest.raises(AssertionError, match=r"expected 1 SIGHUP within 0\.2s, got 0"):
        sighup_counter.wait_count(1, timeout=0.2)
    os.kill(sighup_counter.pid, signal.SIGHUP)
    sighup_counter.wait_count(1)
    sighup_counter.sync()
    os.kill(sighup_counter.pid, signal.SIGHUP)
    sighup_counter.sync()
    with pytest.raises(AssertionError, match="expected 1 SIGHUP, got 2"):
        sighup_counter.wait_count(1)


def test_the_counter_counts_other_signals_apart_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """USR1/USR2 are counted by name; SIGTERM exits 0 after counting what came before it."""
    with SighupCounter(tmp_path, "pg").start() as counter:
        assert str(counter.pid) == (tmp_path / "pg.pid").read_text().strip()
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            os.kill(counter.pid, sig)
            while pending(counter.pid, sig):
                pass
        assert 0 == counter.stop()
        state = json.loads(counter.countfile.read_text())
        assert {"HUP": 1, "USR1": 1, "USR2": 1} == state["counts"]
    with pytest.raises(AssertionError, match="not running"):
        counter.count()


def test_the_counter_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """A counter whose test process was killed does not stay behind."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from tests.sighup_counter import SighupCounter; "
            "c = SighupCounter(Path(sys.argv[1])).start(); "
            "print(c.pid, flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while pids_alive([pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [] == pids_alive([pid])


# --- the config builder ------------------------------------------------------------------------


def test_the_agent_workspace_is_a_valid_config(tmp_path: Path) -> None:
    """The built config loads: providers, namespaces, the short refresh, state_dir, metrics
    and one HUP action for both templates."""
    workspace = AgentWorkspace.with_canaries(tmp_path)
    counter = SighupCounter(tmp_path)
    workspace.template("a.txt.j2", "{{ secrets.db.password }}\n", on_change=[hup(counter)])
    workspace.contents("out/b.env", "B={{ secrets.db.username }}\n", on_change=[hup(counter)])
    workspace.metrics_file = tmp_path / "metrics" / "smagent.prom"
    workspace.aws("aws", "http://127.0.0.1:9")
    workspace.vault("vault", "http://127.0.0.1:9", "hvs.agent-test-token")
    workspace.namespace("cloud", "aws", secret="prod/cloud", refresh="250ms")
    workspace.namespace("kv", "vault", secret="secret/data/app")
    workspace.write()
    config = load_config(workspace.config_path)
    assert 0.5 == config.defaults.refresh
    assert tmp_path / "state" == config.state_dir
    assert workspace.metrics_file == config.metrics_file
    actions = {action for template in config.templates for action in template.on_change}
    assert 1 == len(actions)
    assert str(counter.pidfile) == next(iter(actions)).pidfile  # type: ignore[union-attr]
    assert 0.25 == config.namespace_refresh["cloud"]
    assert {"local", "aws", "vault"} == set(config.providers)
    assert 0 == run_cli("--config", workspace.config_path, "check").returncode


def test_rotate_replaces_the_secrets_file_by_rename(tmp_path: Path) -> None:
    """A rotation is a new inode with mode 0600 holding the new value, the rest kept."""
    workspace = AgentWorkspace.with_canaries(tmp_path)
    workspace.write()
    before = os.stat(workspace.secrets_path)
    workspace.rotate("prod/db", "rotated-pw-1", "password")
    after = os.stat(workspace.secrets_path)
    assert before.st_ino != after.st_ino
    assert 0o600 == stat.S_IMODE(after.st_mode)
    data = yaml.safe_load(workspace.secrets_path.read_text())
    assert "rotated-pw-1" == data["prod/db"]["password"]
    assert 5432 == data["prod/db"]["port"]
    assert workspace.secrets["prod/db"]["password"] == "rotated-pw-1"
    rotate_secret(workspace.secrets_path, "api-token", "token-2")
    assert "token-2" == yaml.safe_load(workspace.secrets_path.read_text())["api-token"]
    assert [] == list(tmp_path.glob(".*.tmp"))


def test_replace_file_keeps_the_mode_under_any_umask(tmp_path: Path) -> None:
    """replace_file gives the asked mode even when the umask would take bits away."""
    old = os.umask(0o077)
    try:
        replace_file(tmp_path / "config.yaml", "a: 1\n", 0o644)
    finally:
        os.umask(old)
    assert 0o644 == stat.S_IMODE(os.stat(tmp_path / "config.yaml").st_mode)


# --- in a failing test's report -----------------------------------------------------------------

INNER_TEST = """
import sys
from tests.agent_process import AgentProcess

STARTED = []

def test_fails(agent, tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(
        "import json, sys, time\\n"
        "line = {'event': 'template.failed', 'template': 'a.j2'}\\n"
        "sys.stderr.write(json.dumps(line) + '\\\\n')\\n"
        "sys.stderr.flush()\\n"
        "time.sleep(60)\\n"
    )
    proc = AgentProcess([sys.executable, "-I", "-S", str(script)]).start()
    STARTED.append(proc.pid)
    proc.wait_for("template.failed")
    assert 1 == 2, "the inner test fails on purpose"


def test_after():
    from tests.agent_process import pids_alive
    assert [] == pids_alive(STARTED), "the process the failed test left was killed"
"""


def test_a_failing_test_report_shows_the_agent_log(tmp_path: Path) -> None:
    """A failed test's report has a section with each started process's last log lines, and
    a process the test left running is killed when it ends."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(
        "from tests.conftest import _no_leaks, agent, pytest_runtest_makereport  # noqa\n"
    )
    (inner / "test_inner.py").write_text(INNER_TEST)
    repo = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(inner)],
        capture_output=True,
        text=True,
        cwd=inner,
        env={**os.environ, "PYTHONPATH": str(repo)},
        timeout=60,
        check=False,
    )
    assert 1 == run.returncode, run.stdout[-2000:]
    assert "the inner test fails on purpose" in run.stdout
    section = run.stdout.split("agent log, pid ", 1)[1]
    assert '{"event": "template.failed", "template": "a.j2"}' in section
    assert "(running): last 1 of 1 output lines" in section
    assert "1 failed, 1 passed" in run.stdout  # test_after: it was killed when test_fails ended


def test_a_canary_is_still_reported_when_the_block_fails(tmp_path: Path) -> None:
    """A leak found at close is added to the test's own failure, not swallowed by it."""
    argv = stand_in(tmp_path, f"log('oops', detail={CANARY!r})")
    leaks.allow_secrets_in(argv[-1])
    proc = AgentProcess(argv)

    def fail_inside() -> None:
        with proc:
            proc.wait_for("oops")
            raise ValueError("the test's own failure")

    with pytest.raises(ValueError, match="own failure") as failure:
        fail_inside()
    notes = "\n".join(failure.value.__notes__)
    assert "and at close: a canary secret leaked: CANARY (as is)" in notes
    assert CANARY not in notes


def test_the_pieces_together_with_render_once(
    agent: agent_process.AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """Builder, rotation, the real CLI and the counter: one SIGHUP per changed pass, none else."""
    workspace = AgentWorkspace.with_canaries(tmp_path)
    out = workspace.template(
        "userlist.txt.j2", '"app" "{{ secrets.db.password }}"\n', on_change=[hup(sighup_counter)]
    )
    workspace.write()
    expected = {"first": 1, "unchanged": 1, "rotated": 2}
    for step, count in expected.items():
        if step == "rotated":
            workspace.rotate("prod/db", "rotated-pw-7", "password")
        assert 0 == agent(workspace.config_path, "--once").wait()
        assert count == sighup_counter.count(), step
    assert '"app" "rotated-pw-7"\n' == out.read_text()
