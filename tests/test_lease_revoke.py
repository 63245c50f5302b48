"""Replaced Vault leases are revoked once nothing on the host uses them (smagent/retire.py).

The agent as a real process against the Vault fake: the replaced lease is
revoked after every file was rewritten and its SIGHUP delivered, plus the
grace; a failing action holds it back (the lease then ends on its own). And
`review`, the decision itself, on its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smagent.held_leases import HeldLease, held_path, lock_held, read_held, write_held
from smagent.providers.base import Lease
from smagent.references import SecretRef
from smagent.retire import HostView, Retiring, next_due, review
from tests import leaks
from tests.agent_config import AgentWorkspace, hup
from tests.agent_process import AgentFactory
from tests.conftest import run_cli
from tests.fakes.memory import MemoryProvider
from tests.fakes.vault import LeaseRecord, VaultFake, running
from tests.sighup_counter import SighupCounter

TOKEN = leaks.plant("hvs.canary-revoke-token-Jd4", "REVOKE_TOKEN")
DB_PREFIX = leaks.plant("canary-revoke-dbpw-Mx8", "REVOKE_DB_PASSWORD")
ROLE = leaks.plant("canaryrole_Qv7", "REVOKE_COMPUTED_ROLE")
TTL = 4.0
GRACE = 0.4


@pytest.fixture
def vault() -> Iterator[VaultFake]:
    fake = VaultFake()
    fake.add_token(TOKEN)
    fake.password_prefix = DB_PREFIX + "-"
    fake.db_roles["app"] = (TTL, 60.0)
    fake.renew_refused = True  # each lease is replaced at 2/3 of its TTL: 1.3 s of it left
    with running(fake):
        yield fake


def workspace(tmp_path: Path, vault: VaultFake, grace: str | None) -> AgentWorkspace:
    ws = AgentWorkspace(tmp_path, refresh="1m")
    ws.secrets = {}
    ws.namespaces = {}
    ws.vault("vault", vault.url, TOKEN, revoke_replaced_after=grace)
    ws.namespace("pg", "vault", secret="database/creds/app")
    return ws


def held_file(ws: AgentWorkspace) -> Path:
    """The config's leases file in its state folder."""
    assert ws.state_dir is not None
    return held_path(ws.state_dir, ws.config_path)


def ends(vault: VaultFake, lease_id: str) -> list[LeaseRecord]:
    return [e for e in vault.lease_events if e.lease_id == lease_id and e.event != "renewed"]


def wait_end(vault: VaultFake, lease_id: str, timeout: float) -> LeaseRecord:
    deadline = time.monotonic() + timeout
    while len(ends(vault, lease_id)) < 2:
        assert time.monotonic() < deadline, "the lease did not end"
        time.sleep(0.02)
    return ends(vault, lease_id)[1]


def test_replaced_lease_revoked_after_files_signal_and_grace(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake, sighup_counter: SighupCounter
) -> None:
    """The old lease is revoked after both files hold the new user and the SIGHUP ran, plus
    the grace, and before it would have ended by itself."""
    ws = workspace(tmp_path, vault, f"{int(GRACE * 1000)}ms")
    first = ws.contents(
        "out/userlist.txt", '"{{ secrets.pg.username }}" "{{ secrets.pg.password }}"\n',
        on_change=[hup(sighup_counter)],
    )  # fmt: skip
    second = ws.contents(
        "out/app.env", "USER={{ secrets.pg.username }}\n", on_change=[hup(sighup_counter)]
    )
    ws.write()
    process = agent(ws.config_path)
    process.wait_for("agent.ready")
    sighup_counter.wait_count(1)
    issued = [e for e in vault.lease_events if e.event == "issued"]
    old = issued[0]
    end = wait_end(vault, old.lease_id, TTL + 2)
    new = [e for e in vault.lease_events if e.event == "issued"][1]
    hups = sighup_counter.times()
    after_replacement = [at for at in hups if at > new.at]
    assert after_replacement, "no SIGHUP after the replacement"
    print(
        f"replaced at {new.at - old.at:.2f} s, SIGHUP +{after_replacement[0] - new.at:.3f} s, "
        f"old lease {end.event} +{end.at - after_replacement[0]:.3f} s after it "
        f"(grace {GRACE} s; it would have ended {old.at + TTL - end.at:.2f} s later)"
    )
    assert "revoked" == end.event
    assert end.at >= after_replacement[0] + GRACE
    assert end.at < old.at + TTL
    assert new.username in first.read_text()
    assert f"USER={new.username}\n" == second.read_text()
    process.wait_for("lease.revoked", reference="vault:database/creds/app")


def test_failing_action_holds_the_revocation_back(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """While the file's action fails, the replaced lease is not revoked: it ends by itself."""
    ws = workspace(tmp_path, vault, "100ms")
    ws.contents(
        "out/app.env", "USER={{ secrets.pg.username }}\n", on_change=[{"command": ["false"]}]
    )
    ws.write()
    process = agent(ws.config_path)
    process.wait_for("agent.ready")
    old = vault.lease_events[0]
    end = wait_end(vault, old.lease_id, TTL + 2)
    assert "expired" == end.event
    assert [] == vault.seen("sys/leases/revoke")


def test_no_grace_configured_means_never_revoked(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """`revoke_replaced_after: null`: replaced leases end on their own (the old behaviour)."""
    ws = workspace(tmp_path, vault, None)
    ws.contents("out/app.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    process = agent(ws.config_path)
    process.wait_for("agent.ready")
    end = wait_end(vault, vault.lease_events[0].lease_id, TTL + 2)
    assert "expired" == end.event
    assert [] == vault.seen("sys/leases/revoke")


@pytest.mark.parametrize("how", ["sigkill", "reload"])
def test_restart_or_reload_revokes_what_the_earlier_instance_held(
    agent: AgentFactory,
    tmp_path: Path,
    vault: VaultFake,
    sighup_counter: SighupCounter,
    how: str,
) -> None:
    """An agent SIGKILLed and started again (or a reload that replaces the Vault provider)
    reads new credentials; the lease the earlier instance held (listed in the state folder's
    leases.json, never a credential) is revoked after the new file's SIGHUP plus the grace."""
    vault.db_roles["app"] = (60.0, 600.0)  # no replacement of its own during the test
    ws = workspace(tmp_path, vault, f"{int(GRACE * 1000)}ms")
    out = ws.contents(
        "out/app.env", "USER={{ secrets.pg.username }}\n", on_change=[hup(sighup_counter)]
    )
    ws.write()
    first = agent(ws.config_path)
    first.wait_for("agent.ready")
    sighup_counter.wait_count(1)
    old = vault.lease_events[0]
    held = held_file(ws).read_text()
    assert old.lease_id in held
    assert DB_PREFIX not in held
    if how == "sigkill":
        first.kill()
        process = agent(ws.config_path)
        process.wait_for("agent.ready")
    else:
        process = first
        ws.providers["vault"]["rate_limit"] = 50  # a changed provider: a new instance
        ws.write_config()
    end = wait_end(vault, old.lease_id, 10)
    new = [e for e in vault.lease_events if e.event == "issued"][1]
    sighup_counter.wait_count(2)
    hup_at = sighup_counter.times()[-1]
    assert "revoked" == end.event
    assert end.at >= hup_at + GRACE
    assert f"USER={new.username}\n" == out.read_text()
    process.wait_for("lease.revoked", reference="vault:database/creds/app")
    deadline = time.monotonic() + 5
    while old.lease_id in held_file(ws).read_text():
        assert time.monotonic() < deadline, "leases.json still lists the revoked lease"
        time.sleep(0.05)
    assert 1 == vault.live_leases()


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_a_template_failing_before_its_secret_call_holds_the_revocation_back(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake, how: str
) -> None:
    """A template whose renders now fail before they reach the secret (so they name none)
    still has the old lease in its file: the lease is not revoked, it ends on its own."""
    ws = workspace(tmp_path, vault, "100ms")
    ws.contents("out/a.env", "USER={{ secrets.pg.username }}\n")
    held = ws.contents("out/b.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    first = agent(ws.config_path)
    first.wait_for("agent.ready")
    old = vault.lease_events[0]
    assert f"USER={old.username}\n" == held.read_text()
    ws.templates[1]["contents"] = "{{ 1 // 0 }}USER={{ secrets.pg.username }}\n"
    if how == "restart":
        first.kill()
        ws.write_config()
        process = agent(ws.config_path)
    else:
        process = first
        ws.write_config()
    process.wait_for("template.failed")
    end = wait_end(vault, old.lease_id, TTL + 2)
    assert "expired" == end.event
    assert f"USER={old.username}\n" == held.read_text()


def test_lease_events_mask_a_computed_secret_path(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """A Vault path computed from a secret (`"database/creds/" ~ secrets.cfg.role`) never
    shows in clear in the lease events (rotated, revoked, postponed at a stop) or the
    status file; only the 0600 leases.json in the state folder lists it."""
    vault.db_roles[ROLE] = (TTL, 60.0)
    vault.put_kv2("cfg", {"role": ROLE})
    ws = workspace(tmp_path, vault, "100ms")
    ws.namespace("cfg", "vault", secret="secret/data/cfg")
    ws.contents(
        "out/app.env",
        'USER={{ secret("vault:database/creds/" ~ secrets.cfg.role, key="username") }}\n',
    )
    ws.write()
    held = held_file(ws)
    leaks.allow_secrets_in(held)
    process = agent(ws.config_path)
    process.wait_for("agent.ready")
    old = vault.lease_events[0]
    wait_end(vault, old.lease_id, TTL + 2)
    process.wait_for("secret.rotated")
    revoked = process.wait_for("lease.revoked")
    assert ROLE not in revoked["reference"]
    assert ROLE in held.read_text()
    assert 0o600 == held.stat().st_mode & 0o777


def test_a_renewed_lease_is_revoked_after_a_restart(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """leases.json follows each renewal: after a restart past the lease's first end, the
    lease the earlier run renewed is still revoked, not left to end on its own."""
    vault.renew_refused = False
    vault.db_roles["app"] = (3.0, 60.0)
    ws = workspace(tmp_path, vault, "100ms")
    ws.contents("out/app.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    first = agent(ws.config_path)
    first.wait_for("agent.ready")
    old = vault.lease_events[0]
    deadline = time.monotonic() + 10
    while (
        not any(e.event == "renewed" for e in vault.lease_events) or time.monotonic() < old.at + 3.1
    ):
        assert time.monotonic() < deadline, "no renewal"
        time.sleep(0.05)
    first.kill()
    process = agent(ws.config_path)
    process.wait_for("agent.ready")
    assert "revoked" == wait_end(vault, old.lease_id, 5).event


def test_agents_sharing_a_state_folder_keep_their_own_leases(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """Two configs, one state folder: the second agent does not take the first one's current
    lease for one an earlier run left behind, so it revokes nothing of it."""
    vault.db_roles["app"] = (60.0, 600.0)
    spaces = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        ws = workspace(tmp_path / name, vault, "100ms")
        ws.state_dir = tmp_path / "state"
        ws.contents("out/app.env", "USER={{ secrets.pg.username }}\n")
        ws.write()
        spaces.append(ws)
    first = agent(spaces[0].config_path)
    first.wait_for("agent.ready")
    mine = vault.lease_events[0]
    second = agent(spaces[1].config_path)
    second.wait_for("agent.ready")
    time.sleep(1.0)  # an absence: the old code revoked `mine` 0.1 s after the pass
    assert [] == vault.seen("sys/leases/revoke")
    assert [mine.event] == [e.event for e in ends(vault, mine.lease_id)]
    assert mine.lease_id in held_file(spaces[0]).read_text()
    assert mine.lease_id not in held_file(spaces[1]).read_text()


def test_a_reload_that_replaces_the_provider_keeps_the_leases_waiting_for_it(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """A lease replaced and waiting out its grace when a reload replaces the Vault provider is
    revoked by the new instance, not left to end on its own."""
    vault.db_roles["app"] = (6.0, 60.0)  # replaced at 4 s, ends at 6 s
    ws = workspace(tmp_path, vault, "30s")
    ws.contents("out/app.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    process = agent(ws.config_path)
    process.wait_for("agent.ready")
    old = vault.lease_events[0]
    process.wait_for("secret.rotated", timeout=8)
    ws.providers["vault"]["revoke_replaced_after"] = "100ms"  # a new instance
    ws.write_config()
    process.wait_for("config.reloaded")
    assert "revoked" == wait_end(vault, old.lease_id, 4).event


def test_a_transient_revoke_failure_is_tried_again(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """Vault unavailable when the lease is due: the revocation is tried again after a wait
    (until the lease's end), not given up."""
    vault.db_roles["app"] = (60.0, 600.0)
    ws = workspace(tmp_path, vault, "100ms")
    ws.contents("out/app.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    first = agent(ws.config_path)
    first.wait_for("agent.ready")
    old = vault.lease_events[0]
    first.kill()
    vault.fail_next(503, count=4, paths="sys/leases/revoke")  # every attempt of one try
    process = agent(ws.config_path)
    process.wait_for("lease.revoke_failed", then=lambda then: then.startswith("retrying"))
    assert "revoked" == wait_end(vault, old.lease_id, 5).event
    process.wait_for("lease.revoked")


CLOCK_BACK = """\
import os
import time

_real = time.time
_flag = os.environ["SMAGENT_TEST_CLOCK_BACK"]


def _stepped() -> float:
    return _real() - (30.0 if os.path.exists(_flag) else 0.0)


time.time = _stepped
"""


def test_a_wall_clock_stepped_back_does_not_make_an_old_render_look_new(
    agent: AgentFactory, tmp_path: Path, vault: VaultFake
) -> None:
    """The agent's wall clock steps back 30 s (NTP) before a replacement: the file rendered
    before it, now failing to render, still holds the old lease; it is not revoked."""
    hook = tmp_path / "clock"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CLOCK_BACK)
    flag = tmp_path / "clock-back"
    ws = workspace(tmp_path, vault, "100ms")
    ws.contents("out/a.env", "USER={{ secrets.pg.username }}\n")
    ws.contents("out/b.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    env = {"PYTHONPATH": str(hook), "SMAGENT_TEST_CLOCK_BACK": str(flag)}
    process = agent(ws.config_path, env=env)
    process.wait_for("agent.ready")
    old = vault.lease_events[0]
    flag.touch()
    ws.templates[1]["contents"] = "{{ 1 // 0 }}USER={{ secrets.pg.username }}\n"
    ws.write_config()
    process.wait_for("template.failed")
    assert "expired" == wait_end(vault, old.lease_id, TTL + 2).event


# --- one-shot commands that only look ---------------------------------------------------------


@pytest.mark.parametrize("grace", ["30s", None])
def test_commands_that_only_look_revoke_their_credentials(
    tmp_path: Path, vault: VaultFake, grace: str | None
) -> None:
    """check --connect, render --dry-run and get (masked) revoke the lease they read: nothing
    will use it; get --reveal and render --once keep theirs; `revoke_replaced_after: null`
    revokes nothing."""
    ws = workspace(tmp_path, vault, grace)
    ws.contents("out/app.env", "USER={{ secrets.pg.username }}\n")
    ws.write()
    looks = [
        ("check", "--connect"),
        ("render", "--dry-run"),
        ("get", "pg/username"),
    ]
    for args in looks:
        run = run_cli("--config", ws.config_path, *args)
        assert 0 == run.returncode, run.stderr
    revoked_by_looks = vault.count("revoked")
    for args in (("get", "pg/username", "--reveal"), ("render", "--once")):
        run = run_cli("--config", ws.config_path, *args)
        assert 0 == run.returncode, run.stderr
    assert 5 == vault.count("issued")
    assert (3 if grace else 0) == revoked_by_looks
    assert revoked_by_looks == vault.count("revoked")
    assert 5 - revoked_by_looks == vault.live_leases()


# --- the decision alone ---------------------------------------------------------------------------

REF = SecretRef("vault", "database/creds/app")


class View:
    """A host with templates `a` and `b` using REF; each test sets what it needs."""

    def __init__(self) -> None:
        self.held = True
        self.rendered: dict[str, float | None] = {"a": None, "b": None}
        self.owed: set[str] = set()

    def host(self) -> HostView:
        return HostView(
            still_held=lambda item: self.held,
            using=lambda item: {"a", "b"} if item.ref == REF else set(),
            rendered_since=self.rendered.get,
            owes_actions=lambda name: name in self.owed,
        )


def retiring(now: float, duration: float = 60.0) -> Retiring:
    lease = Lease("database/creds/app/x", duration, True, obtained_at=now - 1)
    return Retiring(REF, lease, MemoryProvider("vault"), replaced_at=now, grace=2.0)


def test_review_waits_for_every_template_and_action_then_the_grace() -> None:
    """Due only when all templates rendered after the replacement, no action is owed, and
    the grace passed since both held."""
    now, mono = 1000.0, 50.0
    view, pending = View(), [retiring(now)]
    view.rendered["a"] = now + 0.1
    view.rendered["b"] = now - 0.1  # a pass that began before the replacement: not enough
    assert [] == review(pending, view.host(), now + 1, mono).due
    view.rendered["b"] = now + 0.2
    view.owed = {"b"}
    assert [] == review(pending, view.host(), now + 1, mono).due
    assert next_due(pending) is None
    view.owed = set()
    assert [] == review(pending, view.host(), now + 1, mono + 1).due
    assert mono + 1 + 2.0 == next_due(pending)
    assert [] == review(pending, view.host(), now + 2, mono + 2.9).due
    assert [pending[0]] == review(list(pending), view.host(), now + 3, mono + 3.0).due


def test_review_gives_up_when_unused_or_expired() -> None:
    """A secret no longer used (or a provider reloaded), or a lease past its end: dropped."""
    now = 1000.0
    view, pending = View(), [retiring(now)]
    view.held = False
    found = review(pending, view.host(), now, 0.0)
    assert ([], []) == (found.due, pending)
    assert 1 == len(found.dropped)
    view.held, pending = True, [retiring(now, duration=5.0)]
    found = review(pending, view.host(), now + 4.5, 0.0)
    assert "it ended on its own first" == found.dropped[0][1]


def test_held_leases_round_trip_and_a_bad_file_is_ignored(tmp_path: Path) -> None:
    """The leases file reads back as written (mode 0600) for its config only; an unreadable
    one gives no leases; its lock is held by one process at a time."""
    path = held_path(tmp_path, tmp_path / "a.yaml")
    assert path != held_path(tmp_path, tmp_path / "b.yaml")
    held = [HeldLease(REF, Lease("database/creds/app/abc", 60.0, True, obtained_at=1000.0))]
    write_held(path, "/etc/a.yaml", held)
    assert 0o600 == path.stat().st_mode & 0o777
    assert held == read_held(path, "/etc/a.yaml")
    assert [] == read_held(path, "/etc/b.yaml")
    assert [] == read_held(tmp_path / "none.json", "/etc/a.yaml")
    path.write_text('{"format": 2, "config": "/etc/a.yaml", "leases": [{"provider": "vault"}]}')
    assert [] == read_held(path, "/etc/a.yaml")
    path.write_text("not json")
    assert [] == read_held(path, "/etc/a.yaml")
    fd = lock_held(path)
    assert fd is not None
    assert lock_held(path) is None
    os.close(fd)
    again = lock_held(path)
    assert again is not None
    os.close(again)
