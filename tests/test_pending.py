"""Tests for smagent.pending: actions owed to services are kept on disk until they have run.

Real files in tmp_path, real `flock`s, real processes: a record held by a
live process is one a helper process wrote and still holds; a dead one's is
one whose writer was SIGKILLed. The end-to-end "SIGKILL between a rename and
its action" tests are in tests/test_pending_cli.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from smagent.config import Action, Config, load_config
from smagent.pending import Journal, Ledger, Record, key_of
from smagent.pipeline import Pipeline, Status
from smagent.providers import open_providers
from tests.conftest import REPO, flock_held

NOBODY = 65534


def counting_command(log: Path, word: str, *, fail: bool = False, sleep: float = 0) -> list[str]:
    """argv of a command that appends `word` to `log` (after `sleep` s), then exits 0 or 1."""
    code = (
        f"import sys, time; time.sleep({sleep}); "
        f"open({str(log)!r}, 'a').write({word!r} + '\\n'); sys.exit({int(fail)})"
    )
    return [sys.executable, "-c", code]


def runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def make_config(
    root: Path, on_change: list[list[dict[str, Any]]], state_dir: Path | None = None
) -> Config:
    """A config of one template per list of actions (contents templates, no store)."""
    templates = [
        {"contents": f"t{i}", "destination": f"out/t{i}.conf", "on_change": actions}
        for i, actions in enumerate(on_change)
    ]
    raw: dict[str, Any] = {"templates": templates}
    raw["state_dir"] = str(state_dir or root / "state")
    path = root / "smagent.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def actions_of(config: Config) -> list[Action]:
    seen: dict[str, Action] = {}
    for template in config.templates:
        for action in template.on_change:
            seen.setdefault(key_of(action), action)
    return list(seen.values())


def pending_files(config: Config) -> list[Path]:
    folder = Path(str(config.state_dir)) / "pending"
    return sorted(folder.iterdir()) if folder.exists() else []


HOLDER = """
import asyncio, sys
from pathlib import Path
from smagent.config import load_config
from smagent.logging import configure
from smagent.pending import Journal

async def main() -> None:
    configure("json")
    config = load_config(Path(sys.argv[1]))
    journal = await Journal.open(config)
    if sys.argv[2] == "record":
        actions = [a for t in config.templates for a in t.on_change]
        record = await journal.record(actions, [t.name for t in config.templates])
        print(record.path.name, flush=True)
    else:
        sys.stdin.readline()  # all claimants start at once
        claimed = await journal.orphans()
        print(" ".join(r.path.name for r in claimed) or "-", flush=True)
    sys.stdin.read()  # hold what we have until the test closes our stdin

asyncio.run(main())
"""


@contextmanager
def holder(config: Config, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A process that writes a record (`record`) or claims orphans (`claim`) and holds them."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(config.path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def dead_record(config: Config) -> str:
    """The name of a record whose writer was SIGKILLed while holding it."""
    with holder(config, "record") as proc:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert name, proc.stderr.read() if proc.stderr else ""
        proc.kill()
        proc.wait()
    return name


# --- the journal ---------------------------------------------------------------------------------


async def test_a_record_is_on_disk_locked_and_closed_to_others(tmp_path: Path) -> None:
    """`record` leaves a 0600 JSON file in state_dir/pending naming the actions, the templates
    and the config, held under a flock by this process; nothing temporary is left."""
    log = tmp_path / "runs.log"
    config = make_config(
        tmp_path, [[{"command": counting_command(log, "a")}, {"signal": "HUP", "pidfile": "x"}]]
    )
    journal = await Journal.open(config)
    record = await journal.record(actions_of(config), ["t0"])
    assert record is not None
    (path,) = pending_files(config)
    assert record.path == path
    assert 0o600 == path.stat().st_mode & 0o777
    assert 0o700 == path.parent.stat().st_mode & 0o777
    document = json.loads(path.read_text())
    assert [key_of(a) for a in actions_of(config)] == document["actions"]
    assert ["t0"] == document["templates"]
    assert os.path.realpath(config.path) == document["config"]
    assert os.getpid() == document["pid"]
    assert flock_held(path)
    record.release()
    assert not flock_held(path)
    assert path.exists()


async def test_settling_some_actions_rewrites_the_record_still_locked(tmp_path: Path) -> None:
    """Settling part of a record keeps the rest owed, on disk and locked; settling the rest
    removes the file."""
    config = make_config(tmp_path, [[{"command": ["true"]}, {"command": ["false"]}]])
    journal = await Journal.open(config)
    record = await journal.record(actions_of(config), ["t0"])
    assert record is not None
    first, second = record.keys
    record.settle([first])
    (path,) = pending_files(config)
    assert [second] == json.loads(path.read_text())["actions"]
    assert flock_held(path)
    record.settle([second])
    assert [] == pending_files(config)
    assert not flock_held(path)


async def test_actions_of_one_record_settled_at_once_settle_it_whole(tmp_path: Path) -> None:
    """Two actions of one record finishing together (their settles run in worker threads at
    the same time) settle the record whole: nothing owed is left, no error."""
    config = make_config(tmp_path, [[{"command": [word]} for word in ("a", "b", "c", "d")]])
    journal = await Journal.open(config)
    for _ in range(20):
        record = await journal.record(actions_of(config), ["t0"])
        assert record is not None
        keys = list(record.keys)
        barrier = threading.Barrier(2)

        def settle_each(
            mine: list[str], record: Record = record, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            for key in mine:
                record.settle([key])

        await asyncio.gather(
            asyncio.to_thread(settle_each, keys[:2]), asyncio.to_thread(settle_each, keys[2:])
        )
        assert [] == pending_files(config)
        assert -1 == record.fd


async def test_a_live_processes_record_is_never_claimed(tmp_path: Path) -> None:
    """While the process that wrote a record lives, no other claims it; once it is SIGKILLed,
    the next look claims it."""
    config = make_config(tmp_path, [[{"command": ["true"]}]])
    journal = await Journal.open(config)
    with holder(config, "record") as proc:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert [] == await journal.orphans()
        assert [name] == [p.name for p in pending_files(config)]
        proc.kill()
        proc.wait()
    claimed = await journal.orphans()
    assert [name] == [r.path.name for r in claimed]
    assert ['["command",["true"],30.0]'] == claimed[0].keys
    assert [] == await Journal(journal.folder, config.path).orphans()  # ours now
    for record in claimed:
        record.release()


async def test_processes_starting_together_claim_each_dead_record_once(tmp_path: Path) -> None:
    """Four processes looking at once at six dead processes' records: each record is claimed
    by exactly one of them."""
    config = make_config(tmp_path, [[{"command": ["true"]}]])
    names = {dead_record(config) for _ in range(6)}
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(holder(config, "claim")) for _ in range(4)]
        for proc in procs:  # let them go together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        claims = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            claims += [] if line == "-" else line.split()
    assert sorted(names) == sorted(claims)


async def test_a_dead_writers_temporary_file_is_removed(tmp_path: Path) -> None:
    """A temporary record left by a writer that died before its rename owed nothing yet: it
    is removed at the next look; a record beside it is claimed."""
    config = make_config(tmp_path, [[{"command": ["true"]}]])
    name = dead_record(config)
    folder = Path(str(config.state_dir)) / "pending"
    leftover = folder / f".tmp-{name}-other.json"
    leftover.write_text("{")
    leftover.chmod(0o600)
    claimed = await (await Journal.open(config)).orphans()
    assert [name] == [r.path.name for r in claimed]
    assert not leftover.exists()
    claimed[0].release()


async def test_records_of_another_config_are_left_alone(tmp_path: Path) -> None:
    """Two configs sharing one state folder: each claims only its own records."""
    state = tmp_path / "state"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a = make_config(tmp_path / "a", [[{"command": ["true"]}]], state)
    config_b = make_config(tmp_path / "b", [[{"command": ["true"]}]], state)
    name = dead_record(config_a)
    assert [] == await (await Journal.open(config_b)).orphans()
    assert [name] == [p.name for p in pending_files(config_a)]
    assert not flock_held(pending_files(config_a)[0])
    claimed = await (await Journal.open(config_a)).orphans()
    assert [name] == [r.path.name for r in claimed]
    claimed[0].release()


async def test_a_config_reached_through_a_symlink_is_the_same_config(tmp_path: Path) -> None:
    """A record written by a run given the config through a symlinked folder is claimed by a
    run given its real path (and the other way round): the config is one file, however named."""
    real = tmp_path / "real"
    real.mkdir()
    config = make_config(real, [[{"command": ["true"]}]], tmp_path / "state")
    (tmp_path / "etc").symlink_to(real)
    via_link = load_config(tmp_path / "etc" / "smagent.yaml")
    name = dead_record(via_link)
    claimed = await (await Journal.open(config)).orphans()
    assert [name] == [r.path.name for r in claimed]
    claimed[0].release()


@pytest.mark.parametrize("problem", ["mode 0666", "owned by nobody", "symlink"])
async def test_a_record_not_ours_alone_is_refused(tmp_path: Path, problem: str) -> None:
    """A record others could have written (writable by others, another user's, a symlink) is
    never run: anything in this folder makes smagent act."""
    if problem == "owned by nobody" and os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    config = make_config(tmp_path, [[{"command": ["true"]}]])
    name = dead_record(config)
    path = Path(str(config.state_dir)) / "pending" / name
    if problem == "mode 0666":
        path.chmod(0o666)
    elif problem == "owned by nobody":
        os.chown(path, NOBODY, NOBODY)
    else:
        target = tmp_path / "elsewhere.json"
        path.rename(target)
        path.symlink_to(target)
    with structlog.testing.capture_logs() as events:
        claimed = await (await Journal.open(config)).orphans()
    assert [] == claimed
    if problem != "symlink":
        assert ["pending.refused"] == [e["event"] for e in events]


async def test_an_unreadable_record_is_reported_and_left(tmp_path: Path) -> None:
    """A record that is not one of ours (garbage) is reported, not run, not removed."""
    config = make_config(tmp_path, [[{"command": ["true"]}]])
    journal = await Journal.open(config)
    assert journal.folder is not None
    garbage = journal.folder / "1-2-3.json"
    garbage.write_text("not json")
    garbage.chmod(0o600)
    with structlog.testing.capture_logs() as events:
        assert [] == await journal.orphans()
    assert ["pending.unreadable"] == [e["event"] for e in events]
    assert garbage.exists()


@pytest.mark.parametrize("problem", ["a file", "mode 0777", "owned by nobody", "pending 0777"])
async def test_a_state_dir_not_ours_alone_is_refused_once(tmp_path: Path, problem: str) -> None:
    """A state folder that is not a folder, others may write to, or another user owns is not
    trusted: one `state_dir.unavailable` warning naming it, and the journal is disabled."""
    if problem == "owned by nobody" and os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    state = tmp_path / "state"
    if problem == "a file":
        state.write_text("")
    else:
        (state / "pending").mkdir(parents=True, mode=0o700)
        state.chmod(0o700)
    if problem == "mode 0777":
        state.chmod(0o777)
    elif problem == "owned by nobody":
        os.chown(state, NOBODY, NOBODY)
    elif problem == "pending 0777":
        (state / "pending").chmod(0o777)
    config = make_config(tmp_path, [[{"command": ["true"]}]], state)
    with structlog.testing.capture_logs() as events:
        journal = await Journal.open(config)
        assert [] == await journal.orphans()
        assert None is await journal.record(actions_of(config), ["t0"])
    assert not journal.enabled
    (warning,) = events
    assert "state_dir.unavailable" == warning["event"]
    assert str(state) in warning["error"]


async def test_a_state_dir_refused_at_start_is_used_once_fixed(tmp_path: Path) -> None:
    """A state folder unusable when the journal opened (a file in its place) is tried again
    when actions are owed: once fixed, records are written again, told by one
    `state_dir.recovered` (a long-running agent is not left without its journal)."""
    state = tmp_path / "state"
    state.write_text("")
    config = make_config(tmp_path, [[{"command": ["true"]}]], state)
    with structlog.testing.capture_logs() as events:
        journal = await Journal.open(config)
        assert None is await journal.record(actions_of(config), ["t0"])
        state.unlink()
        record = await journal.record(actions_of(config), ["t0"])
    assert record is not None
    assert journal.enabled
    assert [record.path] == sorted((state / "pending").iterdir())
    assert ["state_dir.unavailable", "state_dir.recovered"] == [e["event"] for e in events]
    record.release()


# --- the ledger ----------------------------------------------------------------------------------


async def test_one_action_owed_by_two_records_runs_once_and_settles_both(tmp_path: Path) -> None:
    """Coalescing across records: an action owed by this pass and by a dead process runs once,
    and both records are settled."""
    log = tmp_path / "runs.log"
    action = {"command": counting_command(log, "ran")}
    config = make_config(tmp_path, [[action], [action]])
    dead_record(config)
    journal = await Journal.open(config)
    ledger = Ledger()
    await ledger.adopt(await journal.orphans(), config)
    mine = await journal.record(actions_of(config), ["t0", "t1"])
    ledger.add(actions_of(config), mine)
    assert 1 == len(ledger)
    results = await ledger.run()
    assert [True] == [r.ok for r in results]
    assert ["ran"] == runs(log)
    assert [] == pending_files(config)
    assert 0 == len(ledger)


async def test_actions_no_longer_configured_are_dropped(tmp_path: Path) -> None:
    """A dead process's record naming an action the config no longer has: that action is
    dropped with `action.dropped` and never run; the others still run."""
    log = tmp_path / "runs.log"
    kept = {"command": counting_command(log, "kept")}
    gone = {"command": counting_command(log, "gone")}
    dead_record(make_config(tmp_path, [[kept, gone]]))
    config = make_config(tmp_path, [[kept]])
    journal = await Journal.open(config)
    ledger = Ledger()
    with structlog.testing.capture_logs() as events:
        await ledger.adopt(await journal.orphans(), config)
    dropped = [e for e in events if e["event"] == "action.dropped"]
    assert [key_of(actions_of(make_config(tmp_path, [[gone]]))[0])] == [
        e["action"] for e in dropped
    ]
    config = make_config(tmp_path, [[kept]])
    (path,) = pending_files(config)
    assert 1 == len(json.loads(path.read_text())["actions"])
    await ledger.run()
    assert ["kept"] == runs(log)
    assert [] == pending_files(config)


async def test_a_record_with_only_dropped_actions_is_removed(tmp_path: Path) -> None:
    """When nothing a record owes is still configured, the record goes."""
    log = tmp_path / "runs.log"
    dead_record(make_config(tmp_path, [[{"command": counting_command(log, "gone")}]]))
    config = make_config(tmp_path, [[{"signal": "HUP", "pidfile": "other.pid"}]])
    ledger = Ledger()
    with structlog.testing.capture_logs() as events:
        await ledger.adopt(await (await Journal.open(config)).orphans(), config)
    assert 0 == len(ledger)
    assert [] == pending_files(config)
    assert ["action.dropped"] == [e["event"] for e in events if e["event"].startswith("action")]
    assert [] == runs(log)


async def test_a_failed_action_backs_off_and_stays_on_disk(tmp_path: Path) -> None:
    """A failing action is logged with when it is retried, doubles its wait each time, stays
    owed (and its record on disk); a new change owes it at once; success settles it."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "try", fail=True)}]])
    (action,) = actions_of(config)
    journal = await Journal.open(config)
    ledger = Ledger()
    ledger.add([action], await journal.record([action], ["t0"]))
    waits = []
    with structlog.testing.capture_logs() as events:
        for _ in range(3):
            before = time.monotonic()
            [result] = await ledger.run()
            assert not result.ok
            (owed,) = ledger.owed.values()
            waits.append(owed.next_try - before)
            assert [] == ledger.due(time.monotonic())
    assert 3 == owed.attempts
    assert "exited with status 1" == owed.last_error
    assert [1, 2, 4] == [round(w) for w in waits]
    assert [1.0, 2.0, 4.0] == [e["retry_in"] for e in events if e["event"] == "action.failed"]
    assert 1 == len(pending_files(config))
    ledger.add([action], None)  # a new change: owed now, whatever the backoff said
    assert [key_of(action)] == ledger.due(time.monotonic())
    assert ledger.next_try() == 0.0


async def test_an_action_failing_for_weeks_keeps_one_record_and_one_fd(tmp_path: Path) -> None:
    """Every pass that changes a file while its action keeps failing records it again; after
    each failed run only the newest record holds it, so files in pending/ and open fds do
    not pile up until the process runs out of them."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "try", fail=True)}]])
    (action,) = actions_of(config)
    journal = await Journal.open(config)
    ledger = Ledger()
    for _ in range(5):
        ledger.add([action], await journal.record([action], ["t0"]))
        await ledger.run()
    (owed,) = ledger.owed.values()
    assert 1 == len(owed.records)
    assert 1 == len(pending_files(config))
    ledger.release()


async def test_an_action_that_raises_is_a_failure_with_backoff(tmp_path: Path) -> None:
    """A host that refuses the command's output file (no /tmp) fails the action like any
    other failure, with its backoff: no exception out of the ledger, no busy loop."""
    import tempfile

    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "x")}]])
    (action,) = actions_of(config)
    ledger = Ledger()
    ledger.add([action], None)
    saved, tempfile.tempdir = tempfile.tempdir, str(tmp_path / "no-such-folder")
    try:
        [result] = await ledger.run()
    finally:
        tempfile.tempdir = saved
    assert (False, "could not be run: No such file or directory") == (result.ok, result.detail)
    assert [] == ledger.due(time.monotonic())
    assert [] == runs(log)


async def test_an_action_owed_again_while_it_runs_runs_once_more(tmp_path: Path) -> None:
    """A pass that owes an action while that action is running (it may have read the old file)
    gets one more run after it; each record is settled by the run that followed it."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "run", sleep=0.3)}]])
    (action,) = actions_of(config)
    journal = await Journal.open(config)
    ledger = Ledger()
    first = await journal.record([action], ["t0"])
    ledger.add([action], first)
    running = asyncio.create_task(ledger.run())
    await asyncio.sleep(0.1)
    second = await journal.record([action], ["t0"])
    ledger.add([action], second)
    assert [] == ledger.due(time.monotonic())  # not twice at once
    await running
    assert ["run"] == runs(log)
    assert second is not None
    assert [second.path] == pending_files(config)
    assert [key_of(action)] == ledger.due(time.monotonic())
    await ledger.run()
    assert ["run", "run"] == runs(log)
    assert [] == pending_files(config)
    assert 0 == len(ledger)


async def test_an_action_owed_while_its_last_run_is_being_settled_is_not_lost(
    tmp_path: Path,
) -> None:
    """A pass that owes an action in the instant after its last run ended, while that run's
    records are being settled, keeps it owed (and its record on disk) for the next run."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "run")}]])
    (action,) = actions_of(config)
    journal = await Journal.open(config)
    ledger = Ledger()
    ledger.add([action], await journal.record([action], ["t0"]))
    later = await journal.record([action], ["t0"])  # the next pass's, written beforehand
    running = asyncio.create_task(ledger.run())
    async with asyncio.timeout(10):
        while not runs(log):  # the command is running (or has just run)
            await asyncio.sleep(0)
        while ledger.owed and not ledger.due(time.monotonic()):
            await asyncio.sleep(0)  # owed, not due: still running or being settled
    ledger.add([action], later)  # at once, in the same turn of the loop
    await running
    assert later is not None
    assert [later.path] == pending_files(config)
    assert [key_of(action)] == ledger.due(time.monotonic())
    await ledger.run()
    assert ["run", "run"] == runs(log)
    assert [] == pending_files(config)


async def test_release_leaves_what_is_owed_for_the_next_start(tmp_path: Path) -> None:
    """At exit, owed actions stay on disk, unlocked: the next start claims them."""
    config = make_config(tmp_path, [[{"command": ["false"]}]])
    journal = await Journal.open(config)
    ledger = Ledger()
    ledger.add(actions_of(config), await journal.record(actions_of(config), ["t0"]))
    await ledger.run()
    ledger.release()
    (path,) = pending_files(config)
    assert not flock_held(path)
    claimed = await Journal(journal.folder, config.path).orphans()
    assert [path] == [r.path for r in claimed]
    claimed[0].release()


# --- the pass ------------------------------------------------------------------------------------


async def test_a_cancelled_pass_finishes_its_writes_and_actions(tmp_path: Path) -> None:
    """SIGTERM (cancellation) once writing has begun: the file is written, its action runs to
    its end (not killed), the record is settled, and then the pass is cancelled."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "ran", sleep=0.5)}]])
    journal = await Journal.open(config)
    ledger = Ledger()
    async with open_providers(config.providers) as providers:
        task = asyncio.create_task(Pipeline(config, providers).run(journal=journal, ledger=ledger))
        destination = config.templates[0].destination
        async with asyncio.timeout(10):
            while not destination.exists():
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ["ran"] == runs(log)
    assert [] == pending_files(config)


async def test_a_state_dir_lost_mid_run_still_writes_and_acts(tmp_path: Path) -> None:
    """The state folder removed after it was opened (a clean-up job, a full disk): the pass
    warns `state_dir.unavailable` once and still writes the files and runs their actions."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "ran")}]])
    journal = await Journal.open(config)
    assert journal.folder is not None
    journal.folder.rmdir()
    journal.folder.parent.rmdir()
    journal.folder.parent.write_text("")  # and it cannot be made again
    async with open_providers(config.providers) as providers:
        with structlog.testing.capture_logs() as events:
            result = await Pipeline(config, providers).run(journal=journal, ledger=Ledger())
    assert [Status.WRITTEN] == [t.status for t in result.templates]
    assert ["ran"] == runs(log)
    warnings = [e["event"] for e in events if e["log_level"] == "warning"]
    assert ["state_dir.unavailable"] == warnings


async def test_a_pass_that_changes_nothing_owes_nothing(tmp_path: Path) -> None:
    """A second pass over unchanged files writes no record and runs no action."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "ran")}]])
    journal = await Journal.open(config)
    async with open_providers(config.providers) as providers:
        pipeline = Pipeline(config, providers)
        await pipeline.run(journal=journal, ledger=Ledger())
        assert journal.folder is not None
        before = os.stat(journal.folder).st_mtime_ns
        result = await pipeline.run(journal=journal, ledger=Ledger())
    assert [Status.UNCHANGED] == [t.status for t in result.templates]
    assert result.record is None
    assert ["ran"] == runs(log)
    assert before == os.stat(journal.folder).st_mtime_ns  # not even written and removed


async def test_a_record_owed_by_a_write_that_failed_is_settled(tmp_path: Path) -> None:
    """A file that was going to change but could not be written owes no action: its record is
    settled at the end of the pass, and the action does not run."""
    log = tmp_path / "runs.log"
    config = make_config(tmp_path, [[{"command": counting_command(log, "ran")}]])
    (tmp_path / "out").write_text("a file where the folder should be")
    journal = await Journal.open(config)
    async with open_providers(config.providers) as providers:
        result = await Pipeline(config, providers).run(journal=journal, ledger=Ledger())
    assert [Status.FAILED] == [t.status for t in result.templates]
    assert [] == runs(log)
    assert [] == pending_files(config)
