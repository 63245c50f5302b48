"""`smagent render` end to end: edits, reloads, sd_notify, `smagent status` and the metrics file.

The agent runs as a real subprocess (tests/agent_process.py) on real files;
the dependent service is the SIGHUP counter, systemd is a socket the test
binds (tests/notify_listener.py), a slow or remote store is the Vault fake.
Waits are for the agent's own events; the few places where time itself must
pass (a process held stopped) keep it under a second.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smagent import health
from tests.agent_config import AgentWorkspace, hup, replace_file
from tests.agent_process import AgentFactory, AgentProcess
from tests.conftest import CANARY, CANARY_USER, run_cli
from tests.fakes.vault import VaultFake, running
from tests.notify_listener import NotifyListener
from tests.sighup_counter import SighupCounter

ROLE_ID = "agent-reload-role"
SECRET_ID = "agent-reload-secret-id"
VAULT_LATENCY = 0.6
"""Seconds the Vault fake holds each answer when a test wants a slow first pass."""


# --- helpers -----------------------------------------------------------------------------------


def workspace(tmp_path: Path) -> AgentWorkspace:
    """Canary secrets (`db`: prod/db, `store`: the whole file) and a `staging/db` beside."""
    ws = AgentWorkspace.with_canaries(tmp_path)
    ws.secrets["staging/db"] = {"username": "stage-user", "password": "stage-pw-1"}
    return ws


def wait_text(proc: AgentProcess, path: Path, text: str, timeout: float = 10) -> None:
    """Wait, pass by pass, until `path` holds `text` (a pass that left it otherwise is not it)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text() == text):
        proc.wait_for("pass.finished", timeout=max(0.0, deadline - time.monotonic()))


def read_status(ws: AgentWorkspace) -> health.AgentStatus:
    assert ws.state_dir is not None
    return health.AgentStatus.from_json((ws.state_dir / "status.json").read_bytes())


def wait_status(
    ws: AgentWorkspace, check: Callable[[health.AgentStatus], bool], timeout: float = 10
) -> health.AgentStatus:
    """The agent's status.json once `check` holds for it (it is rewritten after each pass)."""
    assert ws.state_dir is not None
    return wait_status_in(ws.state_dir, check, timeout)


def wait_status_in(
    folder: Path, check: Callable[[health.AgentStatus], bool], timeout: float = 10
) -> health.AgentStatus:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = health.AgentStatus.from_json((folder / "status.json").read_bytes())
        except (OSError, ValueError):
            status = None
        if status is not None and check(status):
            return status
        assert time.monotonic() < deadline, f"status.json never matched; last: {status}"
        time.sleep(0.02)


def template_health(status: health.AgentStatus, name: str) -> health.TemplateHealth:
    return next(t for t in status.templates if t.name == name)


def touched(proc: AgentProcess, since: Any, template: str) -> list[dict[str, Any]]:
    """What the agent did to `template` since the mark (rendered, unchanged or failed)."""
    return [
        event
        for name in ("template.rendered", "template.unchanged", "template.failed")
        for event in proc.events(name, since=since, template=template)
    ]


def vim_save(path: Path, text: str) -> None:
    """As vim saves (backupcopy=no): the old file renamed to a backup, a new one written, the
    backup removed."""
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


def in_place(path: Path, text: str) -> None:
    """As `echo > file` saves: truncated, then written, the same inode."""
    with open(path, "w") as handle:
        handle.write(text)


def rename_over(path: Path, text: str) -> None:
    replace_file(path, text, 0o644)


@pytest.fixture
def vault() -> Iterator[VaultFake]:
    """The Vault fake, served, with an AppRole (one login per provider session)."""
    fake = VaultFake()
    fake.approles[ROLE_ID] = (SECRET_ID, "smagent")
    fake.approle_token_ttl = 3600.0
    fake.put_kv2("app", {"password": CANARY, "user": "app"})
    with running(fake) as served:
        yield served


def use_vault(ws: AgentWorkspace, fake: VaultFake, **extra: Any) -> None:
    secret_id = ws.root / "vault.secret-id"
    replace_file(secret_id, SECRET_ID, 0o600)
    ws.providers["vault"] = {
        "type": "vault",
        "address": fake.url,
        "auth": {"method": "approle", "role_id": ROLE_ID, "secret_id_file": secret_id.name},
        **extra,
    }
    ws.namespace("app", "vault", secret="secret/data/app")


# --- (1) template and include edits ----------------------------------------------------------


@pytest.mark.parametrize("save", [in_place, rename_over, vim_save], ids=lambda f: f.__name__)
def test_a_template_edit_rerenders_that_template_only(
    agent: AgentFactory, tmp_path: Path, save: Callable[[Path, str], None]
) -> None:
    """An edited template file, however saved, is rendered again at once; the others are not."""
    ws = workspace(tmp_path)
    out_a = ws.template("a.txt.j2", "a={{ secrets.db.password }}\n")
    out_b = ws.template("b.txt.j2", "b={{ secrets.db.username }}\n")
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    b_before = out_b.stat()
    mark = proc.mark()
    save(ws.root / "templates" / "a.txt.j2", "edited a={{ secrets.db.password }}\n")
    wait_text(proc, out_a, f"edited a={CANARY}\n")
    assert proc.events("template.changed", since=mark, templates="a.txt.j2")
    assert [] == touched(proc, mark, "b.txt.j2")
    assert (b_before.st_ino, b_before.st_mtime_ns) == (
        out_b.stat().st_ino,
        out_b.stat().st_mtime_ns,
    )
    assert all(0 == e["secrets_fetched"] for e in proc.events("pass.finished", since=mark))


def test_an_include_edit_rerenders_the_templates_that_include_it(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """An edited include re-renders each template that includes it, and no other."""
    ws = workspace(tmp_path)
    include = ws.root / "templates" / "common.j2"
    out_a = ws.template("a.txt.j2", "{% include 'common.j2' %}a={{ secrets.db.password }}\n")
    out_b = ws.template("b.txt.j2", "{% include 'common.j2' %}b\n")
    ws.template("c.txt.j2", "c={{ secrets.db.username }}\n")
    include.parent.mkdir(parents=True, exist_ok=True)
    include.write_text("# v1\n")
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    assert "# v1\nb\n" == out_b.read_text()
    mark = proc.mark()
    rename_over(include, "# v2\n")
    wait_text(proc, out_a, f"# v2\na={CANARY}\n")
    wait_text(proc, out_b, "# v2\nb\n")
    assert [] == touched(proc, mark, "c.txt.j2")


def test_an_include_created_later_heals_the_template(agent: AgentFactory, tmp_path: Path) -> None:
    """A template whose include is missing fails, the others are written; creating the include
    renders it, with no restart and no SIGHUP."""
    ws = workspace(tmp_path)
    out_late = ws.template("late.txt.j2", "{% include 'later.j2' %}={{ secrets.db.password }}\n")
    out_ok = ws.template("ok.txt.j2", "ok={{ secrets.db.username }}\n")
    ws.write()
    proc = agent(ws.config_path)
    failed = proc.wait_for("template.failed", template="late.txt.j2")
    assert "later.j2" in failed["error"]
    ready = proc.wait_for("agent.ready")
    assert "1 of 2 files current; failing: late.txt.j2" == ready["summary"]
    assert f"ok={CANARY_USER}\n" == out_ok.read_text()
    assert not out_late.exists()
    rename_over(ws.root / "templates" / "later.j2", "pw")
    wait_text(proc, out_late, f"pw={CANARY}\n")
    status = wait_status(ws, lambda s: "ok" == template_health(s, "late.txt.j2").state)
    assert None is template_health(status, "late.txt.j2").error


# --- (2) config edits take effect without SIGHUP -----------------------------------------------


def test_a_config_edit_adds_and_drops_templates(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """Config saved: a new template is rendered; a dropped one is no longer managed and its
    file stays as it was, even when the secret it used rotates."""
    ws = workspace(tmp_path)
    out_a = ws.template("a.txt.j2", "a={{ secrets.db.password }}\n")
    out_b = ws.template(
        "b.txt.j2", "b={{ secrets.db.password }}\n", on_change=[hup(sighup_counter)]
    )
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    assert 1 == sighup_counter.count()
    ws.templates = [t for t in ws.templates if t["source"] != "templates/b.txt.j2"]
    out_c = ws.contents("out/c.txt", "c={{ secrets.db.username }}\n")
    ws.write_config()
    reloaded = proc.wait_for("config.reloaded")
    assert ("b.txt.j2", "none") == (reloaded["templates_dropped"], reloaded["providers_replaced"])
    wait_text(proc, out_c, f"c={CANARY_USER}\n")
    mark = proc.mark()
    rename_over(ws.root / "templates" / "b.txt.j2", "b edited={{ secrets.db.password }}\n")
    ws.rotate("prod/db", "rotated-pw-2", "password")
    wait_text(proc, out_a, "a=rotated-pw-2\n")
    assert f"b={CANARY}\n" == out_b.read_text()
    assert [] == touched(proc, mark, "b.txt.j2")
    assert all(
        "b.txt.j2" not in e["templates"] for e in proc.events("template.changed", since=mark)
    )
    assert 1 == sighup_counter.count()  # b's action went with it
    status = wait_status(ws, lambda s: "b.txt.j2" not in {t.name for t in s.templates})
    assert 2 == len(status.templates)


def test_a_config_edit_moves_a_namespace_to_another_secret(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """A namespace pointed at another secret re-renders its templates with that secret; the
    old secret no longer matters to them."""
    ws = workspace(tmp_path)
    out = ws.template("a.txt.j2", "{{ secrets.db.username }}:{{ secrets.db.password }}\n")
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    ws.namespaces["db"]["secret"] = "staging/db"
    ws.write_config()
    proc.wait_for("config.reloaded")
    wait_text(proc, out, "stage-user:stage-pw-1\n")
    mark = proc.mark()
    ws.rotate("prod/db", "prod-rotated-9", "password")  # no longer used: no pass for it
    ws.rotate("staging/db", "stage-pw-2", "password")
    wait_text(proc, out, "stage-user:stage-pw-2\n")
    assert [] == proc.events("template.unchanged", since=mark, template="a.txt.j2")
    assert 1 == len(proc.events("template.rendered", since=mark, template="a.txt.j2"))


# --- (3) SIGHUP, invalid configs, provider sessions -------------------------------------------


def test_an_invalid_config_keeps_the_old_one_running_until_fixed(
    agent: AgentFactory, tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """An invalid config, saved or on SIGHUP, is reported (log, status.json, `smagent status`,
    which still finds the agent);
    the old config keeps rotating secrets and signalling; the fixed config is taken."""
    ws = workspace(tmp_path)
    out = ws.template("a.txt.j2", "a={{ secrets.db.password }}\n", on_change=[hup(sighup_counter)])
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    good = ws.config_path.read_text()
    ws.defaults["refresh"] = "fast"
    ws.write_config()
    invalid = proc.wait_for("config.invalid")
    assert "defaults.refresh" in invalid["error"]
    assert "smagent.yaml" in invalid["error"]
    assert "the running configuration" == invalid["keeping"]
    status = wait_status(ws, lambda s: s.config_error is not None)
    assert status.config_error is not None
    assert "defaults.refresh" in status.config_error
    # `smagent status` reads the invalid file too: it still finds the agent (through the
    # state_dir that still reads) and says both what runs and what is wrong on disk
    run = run_cli("--config", ws.config_path, "status")
    assert 1 == run.returncode, run.stderr
    assert "smagent: ATTENTION:" in run.stdout
    assert f"pid {proc.pid}" in run.stdout
    assert "RELOAD REJECTED" in run.stdout
    assert "defaults.refresh" in run.stderr
    mark = proc.mark()
    proc.send(signal.SIGHUP)
    proc.wait_for("agent.reload_requested", cause="SIGHUP")
    assert "defaults.refresh" in proc.wait_for("config.invalid")["error"]
    assert [] == proc.events("config.reloaded", since=mark)
    ws.rotate("prod/db", "rotated-under-old-config", "password")
    wait_text(proc, out, "a=rotated-under-old-config\n")
    sighup_counter.wait_count(2)
    ws.config_path.write_text(good)  # fixed in place
    proc.wait_for("config.reloaded")
    assert None is wait_status(ws, lambda s: s.config_error is None).config_error
    assert 2 == sighup_counter.count()


BAD_CONFIGS: dict[str, Callable[[Path, str], None]] = {
    "invalid YAML": lambda path, good: replace_file(path, good + "templates: [\n", 0o644),
    "unknown key": lambda path, good: replace_file(path, good + "templatez: []\n", 0o644),
    "unknown provider": lambda path, good: replace_file(
        path, good.replace("provider: local", "provider: nope"), 0o644
    ),
    "template file missing": lambda path, good: replace_file(
        path, good.replace("templates/a.txt.j2", "templates/gone.j2"), 0o644
    ),
    "empty file": lambda path, good: replace_file(path, "", 0o644),
    "truncated in place": lambda path, good: in_place(path, ""),
    "file removed": lambda path, good: path.unlink(),
}
"""How a config goes bad on a host, each with what the agent must name."""
BAD_CONFIG_WORDS = {
    "invalid YAML": "invalid YAML",
    "unknown key": "templatez",
    "unknown provider": "namespaces.db.provider",
    "template file missing": "gone.j2",
    "empty file": "no templates",
    "truncated in place": "no templates",
    "file removed": "not found",
}


def test_every_kind_of_bad_config_is_rejected_and_the_old_one_kept(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """Bad YAML, a schema error, a missing template, an emptied or removed file: each is
    reported naming the file and the problem, the running config stays, and the good file
    put back is taken (no restart between them)."""
    ws = workspace(tmp_path)
    out = ws.template("a.txt.j2", "a={{ secrets.db.password }}\n")
    ws.write()
    good = ws.config_path.read_text()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    for kind, spoil in BAD_CONFIGS.items():
        mark = proc.mark()
        spoil(ws.config_path, good)
        invalid = proc.wait_for("config.invalid")
        assert str(ws.config_path) in invalid["error"], kind
        assert BAD_CONFIG_WORDS[kind] in invalid["error"], kind
        assert [] == proc.events("config.reloaded", since=mark), kind
        rename_over(ws.config_path, good)
        assert "none" == proc.wait_for("config.reloaded")["templates_dropped"], kind
    ws.rotate("prod/db", "still-managed", "password")
    wait_text(proc, out, "a=still-managed\n")


def test_sighup_reloads_and_unchanged_providers_keep_their_session(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """A reload keeps the providers whose config did not change (no new Vault login, no
    re-fetch: the reload pass fetches nothing); a changed provider is opened anew."""
    ws = workspace(tmp_path)
    use_vault(ws, vault)
    out = ws.template("a.txt.j2", "{{ secrets.app.password }}/{{ secrets.db.password }}\n")
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    assert f"{CANARY}/{CANARY}\n" == out.read_text()
    assert 1 == len(vault.seen("auth/approle/login"))

    proc.mark()
    proc.send(signal.SIGHUP)
    assert "none" == proc.wait_for("config.reloaded")["providers_replaced"]
    assert 0 == proc.wait_for("pass.finished")["secrets_fetched"]

    out_b = ws.contents("out/b.txt", "{{ secrets.app.user }}\n")  # a config edit this time
    ws.write_config()
    assert "none" == proc.wait_for("config.reloaded")["providers_replaced"]
    wait_text(proc, out_b, "app\n")
    assert 1 == len(vault.seen("auth/approle/login"))

    ws.providers["vault"]["max_concurrency"] = 4
    ws.write_config()
    assert "vault" == proc.wait_for("config.reloaded")["providers_replaced"]
    proc.wait_for("pass.finished")
    assert 2 == len(vault.seen("auth/approle/login"))
    assert f"{CANARY}/{CANARY}\n" == out.read_text()


# --- (4) sd_notify -------------------------------------------------------------------------------


def test_ready_only_after_a_slow_first_pass_and_a_sighup_meanwhile_is_kept(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """READY=1 (with a one-line STATUS=) comes once the first pass is done, however slow the
    store; a SIGHUP during that pass is not lost: RELOADING=1 then READY=1 follow."""
    vault.latency = VAULT_LATENCY
    ws = workspace(tmp_path)
    use_vault(ws, vault)
    out = ws.template("a.txt.j2", "{{ secrets.app.password }}\n")
    ws.write()
    with NotifyListener(tmp_path) as listener:
        proc = agent(ws.config_path, env=listener.env)
        deadline = time.monotonic() + 10
        while not vault.seen("secret/"):
            assert time.monotonic() < deadline, "the agent never asked the store"
            time.sleep(0.01)
        asked = vault.seen("secret/")[0].at
        proc.send(signal.SIGHUP)  # while the first pass waits for the store
        ready = listener.wait_for("READY", "1")
        ready_at = listener.times("READY", "1")[0]
        assert ready_at >= asked + VAULT_LATENCY
        assert ready["STATUS"].startswith("1 of 1 files current")  # an action may be running
        assert f"{CANARY}\n" == out.read_text()
        proc.wait_for("config.reloaded", timeout=15)
        listener.wait_count("READY", 2, timeout=15)
        kinds = [
            "RELOADING" if "RELOADING" in f else "READY"
            for _, f in listener.messages()
            if "RELOADING" in f or "READY" in f
        ]
        assert ["READY", "RELOADING", "READY"] == kinds[:3]
        assert all("\n" not in f.get("STATUS", "") for _, f in listener.messages())
        assert 0 == proc.stop()


def test_notify_reloading_ready_status_and_stopping(agent: AgentFactory, tmp_path: Path) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC (now, on CLOCK_MONOTONIC), then READY=1; a pass
    updates STATUS=; SIGTERM: STOPPING=1 and exit 0."""
    ws = workspace(tmp_path)
    ws.template("a.txt.j2", "{{ secrets.db.password }}\n")
    ws.write()
    with NotifyListener(tmp_path) as listener:
        proc = agent(ws.config_path, env=listener.env)
        listener.wait_for("READY", "1")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        since = time.monotonic()
        proc.send(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1", since=since)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        reloading_at = listener.times("RELOADING", "1")[-1]
        again = listener.wait_for("READY", "1", since=reloading_at)
        assert again["STATUS"].startswith("1 of 1 files current")
        since = time.monotonic()
        ws.rotate("prod/db", "rotated-for-status", "password")
        proc.wait_for("template.rendered", template="a.txt.j2")
        assert listener.wait_for("STATUS", since=since)["STATUS"].startswith("1 of 1 files current")
        since = time.monotonic()
        proc.send(signal.SIGTERM)
        listener.wait_for("STOPPING", "1", since=since)
        assert 0 == proc.wait()
        assert [] == [f for at, f in listener.messages() if at >= since and "READY" in f]


def test_watchdog_pings_at_half_the_interval_and_stop_while_the_agent_is_stopped(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """WATCHDOG=1 every WATCHDOG_USEC/2 while idle; none while the process is SIGSTOPped; they
    resume after SIGCONT."""
    ws = workspace(tmp_path)
    ws.template("a.txt.j2", "{{ secrets.db.password }}\n")
    ws.write()
    interval = 0.1
    with NotifyListener(tmp_path) as listener:
        env = {**listener.env, "WATCHDOG_USEC": str(int(2 * interval * 1_000_000))}
        proc = agent(ws.config_path, env=env)
        ready_at = time.monotonic()
        listener.wait_for("READY", "1")
        pings = listener.wait_count("WATCHDOG", 8, since=ready_at)
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        assert interval * 0.5 <= gaps[len(gaps) // 2] <= interval * 1.6, gaps
        proc.send(signal.SIGSTOP)
        stopped_at = time.monotonic()
        time.sleep(6 * interval)  # time must pass: a stopped process sends nothing to wait for
        silent_until = time.monotonic()
        proc.send(signal.SIGCONT)
        # one datagram sent just before the stop may be read a moment after it
        during = [at for at in listener.times("WATCHDOG") if stopped_at + 0.05 < at < silent_until]
        assert [] == during
        listener.wait_count("WATCHDOG", 3, since=silent_until)
        assert 0 == proc.stop()


# --- (5) smagent status against the running agent ----------------------------------------------


def status_cli(ws: AgentWorkspace, *args: str) -> tuple[int, str]:
    run = run_cli("--config", ws.config_path, "status", *args)
    return run.returncode, run.stdout


def test_status_tells_current_failing_pending_and_stopped(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """`smagent status`: 0 all current; 1 with a failing template (since when, why, no secret);
    1 with a failing action pending; 0 once both recover; 3 after SIGTERM (stopped)."""
    ws = workspace(tmp_path)
    flag = tmp_path / "action-fails"
    fail_if_flag = f"import os, sys; sys.exit(3 if os.path.exists({str(flag)!r}) else 0)"
    ws.template("a.txt.j2", "a={{ secrets.db.password }}\n")
    out_b = ws.template(
        "b.txt.j2",
        "b={{ secrets.db.username }}\n",
        on_change=[{"command": [sys.executable, "-c", fail_if_flag], "timeout": "10s"}],
    )
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    wait_status(ws, lambda s: s.ready)
    code, text = status_cli(ws)
    assert 0 == code, text
    code, text = status_cli(ws, "--json")
    report = json.loads(text)
    assert (0, "ok") == (code, report["state"])
    assert proc.pid == report["status"]["pid"]

    ws.edit_template("a.txt.j2", "a={{ secrets.db.pasword }}\n")
    proc.wait_for("template.failed", template="a.txt.j2")
    wait_status(ws, lambda s: "failing" == template_health(s, "a.txt.j2").state)
    code, text = status_cli(ws)
    assert 1 == code, text
    line = next(line for line in text.splitlines() if "a.txt.j2" in line)
    assert "failing" in line
    assert "since" in line
    assert "pasword" in text  # why: the key it did not find
    code, text = status_cli(ws, "--json")
    report = json.loads(text)
    failing = [t for t in report["status"]["templates"] if t["state"] == "failing"]
    assert ["a.txt.j2"] == [t["name"] for t in failing]
    assert failing[0]["failing_since"] is not None
    assert "pasword" in failing[0]["error"]
    ws.edit_template("a.txt.j2", "a={{ secrets.db.password }}\n")
    wait_status(ws, lambda s: "ok" == template_health(s, "a.txt.j2").state)

    flag.touch()
    ws.rotate("prod/db", "user-rotated", "username")
    proc.wait_for("action.failed")
    wait_status(ws, lambda s: len(s.pending_actions) == 1)
    code, text = status_cli(ws)
    assert 1 == code, text
    assert "pending" in text
    assert "b=user-rotated\n" == out_b.read_text()
    flag.unlink()
    proc.wait_for("action.ran", timeout=15)
    wait_status(ws, lambda s: not s.pending_actions)
    assert 0 == status_cli(ws)[0]

    assert 0 == proc.stop()
    code, text = status_cli(ws)
    assert 3 == code, text
    assert "stopped" in text
    assert read_status(ws).stopped_at is not None


def test_status_without_any_agent_state_exits_2(tmp_path: Path) -> None:
    """`smagent status` for a config no agent ever ran with: exit 2, saying where it looked."""
    ws = workspace(tmp_path)
    ws.template("a.txt.j2", "{{ secrets.db.password }}\n")
    ws.write()
    run = run_cli("--config", ws.config_path, "status")
    assert 2 == run.returncode
    assert "status.json" in run.stdout + run.stderr


# --- (6) the metrics textfile ---------------------------------------------------------------


def metric(path: Path, name: str, **labels: str) -> float | None:
    """The value of sample `name` with `labels` (among others) in a Prometheus text file,
    parsed by prometheus_client's own parser; None when there is no such sample."""
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def wait_metric(path: Path, name: str, check: Callable[[float], bool], **labels: str) -> float:
    """The sample's value once `check` holds for it (the file is rewritten after each pass)."""
    deadline = time.monotonic() + 10
    while True:
        value = metric(path, name, **labels) if path.exists() else None
        if value is not None and check(value):
            return value
        assert time.monotonic() < deadline, f"{name} {labels} is {value}"
        time.sleep(0.02)


def test_the_metrics_file_is_written_and_moves_on_a_rotation(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """metrics_file is written after the first pass, parses as Prometheus text, and its
    renders and last-written figures move when a rotation rewrites the file."""
    ws = workspace(tmp_path)
    textfile = ws.metrics_file = tmp_path / "metrics" / "smagent.prom"
    textfile.parent.mkdir()
    ws.template("a.txt.j2", "{{ secrets.db.password }}\n")
    ws.write()
    proc = agent(ws.config_path)
    proc.wait_for("agent.ready")
    wait_metric(textfile, "smagent_agent_ready", lambda v: v == 1)
    a = {"template": "a.txt.j2"}
    assert 1 == metric(textfile, "smagent_template_renders_total", **a)
    assert 1 == metric(textfile, "smagent_template_ok", **a)
    assert 1 == metric(textfile, "smagent_provider_up", provider="local")
    written = metric(textfile, "smagent_template_last_written_time_seconds", **a)
    assert written is not None
    assert abs(time.time() - written) < 60
    fetches = metric(textfile, "smagent_provider_fetches_total", provider="local")
    assert fetches is not None
    assert fetches >= 1
    assert 0o644 == textfile.stat().st_mode & 0o777

    ws.rotate("prod/db", "rotated-for-metrics", "password")
    proc.wait_for("template.rendered", template="a.txt.j2")
    assert 2 == wait_metric(textfile, "smagent_template_renders_total", lambda v: v >= 2, **a)
    later = metric(textfile, "smagent_template_last_written_time_seconds", **a)
    assert later is not None
    assert later > written
    assert fetches < (metric(textfile, "smagent_provider_fetches_total", provider="local") or 0)


def test_a_metrics_file_that_cannot_be_written_is_told_once_and_its_recovery_once(
    agent: AgentFactory, tmp_path: Path
) -> None:
    """A metrics "folder" that is a file gives one status.write_failed however many passes
    fail, status.json is still written, and the fix gives one status.write_recovered."""
    ws = workspace(tmp_path)
    textfile = ws.metrics_file = tmp_path / "metrics" / "smagent.prom"
    textfile.parent.write_text("not a folder\n")
    ws.template("a.txt.j2", "{{ secrets.db.password }}\n")
    ws.write()
    proc = agent(ws.config_path)
    start = proc.mark()
    proc.wait_for("agent.ready")
    for n in range(3):
        ws.rotate("prod/db", f"rotated-{n}-while-broken", "password")
        proc.wait_for("template.rendered", template="a.txt.j2")
    proc.wait_for("pass.finished")
    assert 1 == len(proc.events("status.write_failed", since=start))
    assert {"file": "metrics", "path": str(textfile)}.items() <= proc.events(
        "status.write_failed", since=start
    )[0].items()
    assert (ws.state_dir / "status.json").exists()
    textfile.parent.unlink()
    textfile.parent.mkdir()
    ws.rotate("prod/db", "rotated-after-the-fix", "password")
    proc.wait_for("status.write_recovered", file="metrics")
    assert textfile.exists()
    assert 1 == len(proc.events("status.write_failed", since=start))


# --- under the conditions of the real systemd unit -------------------------------------------

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "smagent.service"
STAND_IN_UID = 65534
"""`nobody` stands in for the unit's own `smagent` user (a test adds no user to the host)."""


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit file: each key with its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def can_sandbox() -> str | None:
    """Why the unit's conditions cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (to drop to another user with capabilities)"
    for tool in ("unshare", "setpriv", "env", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-o", "remount,bind,ro", "/"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return "no mount namespace here"
    return None


def test_the_agent_runs_under_the_units_conditions(
    tmp_path: Path, sighup_counter: SighupCounter
) -> None:
    """As systemd runs the unit (without systemd): its ExecStart as an unprivileged user with
    only the unit's ambient capabilities, NoNewPrivileges, its UMask, a read-only root except
    the destinations and StateDirectory=, a minimal environment, cwd /, NOTIFY_SOCKET and
    WATCHDOG_USEC: READY=1 from the main pid, the file written with its owner and mode, the
    service (another user's process) signalled, a rotation, a reload and a clean stop."""
    why = can_sandbox()
    if why is not None:
        pytest.skip(why)
    unit = unit_settings(UNIT)
    exec_start = shlex.split(unit["ExecStart"][0])
    smagent = Path(sys.executable).parent / "smagent"
    if not smagent.exists():
        pytest.skip(f"no {smagent} (the suite runs outside the project's venv)")
    caps = ",".join(
        f"+{cap.removeprefix('CAP_').lower()}"
        for value in unit["AmbientCapabilities"]
        for cap in value.split()
    )
    assert ["yes"] == unit["NoNewPrivileges"]
    assert ["strict"] == unit["ProtectSystem"]

    tmp_path.chmod(0o755)
    ws = workspace(tmp_path)
    ws.state_dir = None  # StateDirectory= decides, as in the unit
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, STAND_IN_UID, STAND_IN_UID)
    textfile = ws.metrics_file = tmp_path / "metrics" / "smagent.prom"
    textfile.parent.mkdir()
    (tmp_path / "out").mkdir()
    out = ws.template(
        "userlist.txt.j2",
        '"app" "{{ secrets.db.password }}"\n',
        owner="postgres",
        group="postgres",
        mode="0640",
        on_change=[hup(sighup_counter)],
    )
    ws.write()
    argv = [str(smagent), *exec_start[1:]]
    argv[argv.index("--config") + 1] = str(ws.config_path)
    writable = [tmp_path / "out", state, textfile.parent]

    with NotifyListener(tmp_path) as listener:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "HOME": "/nonexistent",
            "USER": "nobody",
            "LOGNAME": "nobody",
            "LANG": "C.UTF-8",
            "STATE_DIRECTORY": str(state),
            "NOTIFY_SOCKET": listener.path,
            "WATCHDOG_USEC": "400000",  # the unit's 30 s would make a slow test
        }
        drop = [
            "setpriv",
            f"--reuid={STAND_IN_UID}",
            f"--regid={STAND_IN_UID}",
            "--clear-groups",
            "--no-new-privs",
            f"--inh-caps=-all,{caps}",
            f"--ambient-caps=-all,{caps}",
            f"--bounding-set=-all,{caps}",
        ]
        command = " ".join(
            shlex.quote(a) for a in ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
        )
        command += " " + " ".join(shlex.quote(a) for a in [*drop, *argv])
        # ProtectSystem=strict with ReadWritePaths=: each writable folder bound onto itself,
        # then the root made read-only; the shell then becomes the agent (one pid throughout)
        script = (
            'set -e; for p in "$@"; do mount --bind "$p" "$p"; done; '
            f"mount -o remount,bind,ro /; umask {unit['UMask'][0]}; exec {command}"
        )
        sandboxed = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", script, "sh", *map(str, writable),
        ]  # fmt: skip
        with AgentProcess(sandboxed, cwd=Path("/")) as proc:
            ready = listener.wait_for("READY", "1", timeout=20)
            assert ready["STATUS"].startswith("1 of 1 files current")  # an action may be running
            assert {proc.pid} == {m.pid for m in listener.records()}  # NotifyAccess=main
            assert f'"app" "{CANARY}"\n' == out.read_text()
            info = out.stat()
            assert ("postgres", 0o640) == (pwd.getpwuid(info.st_uid).pw_name, info.st_mode & 0o777)
            assert 1 == sighup_counter.count()
            listener.wait_count("WATCHDOG", 2)
            status = wait_status_in(state, lambda s: s.ready)
            assert proc.pid == status.pid
            assert STAND_IN_UID == (state / "status.json").stat().st_uid

            ws.rotate("prod/db", "rotated-in-the-sandbox", "password")
            wait_text(proc, out, '"app" "rotated-in-the-sandbox"\n')
            sighup_counter.wait_count(2)
            since = time.monotonic()
            proc.send(signal.SIGHUP)
            proc.wait_for("config.reloaded")
            listener.wait_for("READY", "1", since=since)
            wait_metric(textfile, "smagent_template_renders_total", lambda v: v >= 2)
            assert 0 == proc.stop()
            listener.wait_for("STOPPING", "1")
            trouble = [e for e in proc.all_events() if e.get("level") in ("warning", "error")]
            assert [] == trouble
        assert 2 == sighup_counter.count()
