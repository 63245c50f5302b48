"""The file watcher, against real files, folders, symlinks and processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smagent.watch import Watcher, plan, signature
from tests.conftest import REPO

WAIT = 5.0  # seconds a batch may take on 2 loaded cores (it takes ~0.2 s)


async def watching(watcher: Watcher, *paths: Path) -> Batches:
    """Watch `paths` and return once inotify is armed for them.

    Files made just before set_paths would count as changed after it (their times are
    within a clock tick of it: see Watcher.set_paths), so a tick passes first. Then a
    sentinel is written twice: the second batch comes from an armed watch (or from the
    look right after arming), so what the test does next meets a watch in place.
    """
    sentinel = _file(Path(tempfile.mkdtemp(prefix="sentinel-", dir=_BASETEMP)) / "sentinel")
    await asyncio.sleep(0.02)
    watcher.set_paths([*paths, sentinel])  # it stays: a change to the set would re-arm
    batches = Batches(watcher)
    for _ in range(2):
        await batches.settle(sentinel)
    batches.hidden.add(sentinel)
    return batches


class Batches:
    """A running Watcher and the batches it yields, one at a time."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._it = watcher.changes().__aiter__()
        self.hidden: set[Path] = set()
        """Paths left out of batches (the sentinel of `watching`, once it has served)."""

    async def next(self) -> set[Path]:
        while not (batch := await asyncio.wait_for(self._it.__anext__(), WAIT) - self.hidden):
            pass
        return batch

    async def settle(self, sentinel: Path) -> set[Path]:
        """The batch with a write to `sentinel` (a watched path): anything reported for the
        changes made before it arrives in this batch or an earlier one."""
        sentinel.write_text(sentinel.read_text() + "+")
        while sentinel not in (batch := await self.next()):
            pass
        return batch


_BASETEMP: Path | None = None


@pytest.fixture(autouse=True)
def _sentinels_in_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`watching` puts its sentinels in pytest's own temporary folder, cleaned as tmp_path is."""
    global _BASETEMP
    _BASETEMP = tmp_path_factory.getbasetemp()


@pytest.fixture
async def watch(tmp_path: Path) -> AsyncIterator[Watcher]:
    watcher = Watcher([], step_ms=20, debounce_ms=200)
    yield watcher
    await watcher.close()


def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _save_like_vim(path: Path, text: str) -> None:
    """Write a new file beside, rename the old one to a backup, the new one over it."""
    new = path.with_name(f".{path.name}.swp")
    new.write_text(text)
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    os.rename(new, path)
    backup.unlink()


async def test_in_place_write_is_reported(tmp_path: Path, watch: Watcher) -> None:
    """A write into the file itself gives a batch with exactly that path."""
    target = _file(tmp_path / "a.j2")
    batches = await watching(watch, target, tmp_path / "other.j2")
    with target.open("a") as f:
        f.write("more")
    assert {target} == await batches.next()


async def test_every_save_by_rename_is_seen(tmp_path: Path, watch: Watcher) -> None:
    """Editor saves (new file renamed over, old one moved to a backup) are seen every time."""
    target = _file(tmp_path / "conf" / "app.yaml")
    batches = await watching(watch, target)
    for i in range(3):
        _save_like_vim(target, f"version {i}")
        assert {target} == await batches.next()


async def test_delete_then_recreate(tmp_path: Path, watch: Watcher) -> None:
    """Deleting a watched file is a change (missing is a state), and so is its return."""
    target = _file(tmp_path / "t.j2")
    batches = await watching(watch, target)
    target.unlink()
    assert {target} == await batches.next()
    _file(target, "back")
    assert {target} == await batches.next()


async def test_kubernetes_configmap_update(tmp_path: Path, watch: Watcher) -> None:
    """A ConfigMap update (new folder, `..data` symlink renamed over, old folder removed)."""
    volume = tmp_path / "config"
    _file(volume / "..2026_01" / "smagent.yaml", "one")
    (volume / "..data").symlink_to("..2026_01")
    (volume / "smagent.yaml").symlink_to("..data/smagent.yaml")
    target = volume / "smagent.yaml"
    batches = await watching(watch, target)
    for old, new in (("..2026_01", "..2026_02"), ("..2026_02", "..2026_03")):
        _file(volume / new / "smagent.yaml", new)
        (volume / "..data_tmp").symlink_to(new)
        os.rename(volume / "..data_tmp", volume / "..data")
        for leftover in (volume / old).iterdir():
            leftover.unlink()
        (volume / old).rmdir()
        assert {target} == await batches.next()
        assert new == target.read_text()


async def test_folder_created_later(tmp_path: Path, watch: Watcher) -> None:
    """A path two folders below anything that exists is seen once it is created."""
    target = tmp_path / "a" / "b" / "include.j2"
    batches = await watching(watch, target)
    _file(target)
    assert {target} == await batches.next()


async def test_folder_removed_and_created_again(tmp_path: Path, watch: Watcher) -> None:
    """A watched folder removed, then created again: both seen, and the new one is watched."""
    folder = tmp_path / "templates"
    target = _file(folder / "t.j2")
    batches = await watching(watch, target)
    target.unlink()
    folder.rmdir()
    assert {target} == await batches.next()
    _file(target, "new")
    assert {target} == await batches.next()
    with target.open("a") as f:  # not deaf: the new folder has a watch of its own
        f.write(" edit")
    assert {target} == await batches.next()


async def test_folder_replaced_at_once(tmp_path: Path, watch: Watcher) -> None:
    """A folder removed and made again in one go gets a new watch (same name, new folder)."""
    folder = tmp_path / "templates"
    target = _file(folder / "t.j2")
    batches = await watching(watch, target)
    shutil.rmtree(folder)
    _file(target, "new")
    assert {target} == await batches.next()
    with target.open("a") as f:
        f.write(" edit")
    assert {target} == await batches.next()


async def test_same_size_and_mtime_rewrite(tmp_path: Path, watch: Watcher) -> None:
    """A rewrite keeping size and mtime (restored by hand) is still reported."""
    target = _file(tmp_path / "t.j2", "aaaa")
    before = target.stat()
    batches = await watching(watch, target)
    target.write_text("bbbb")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert {target} == await batches.next()


async def test_unrelated_changes_and_reads_report_nothing(tmp_path: Path, watch: Watcher) -> None:
    """Other files in the folder changing, and the watched file being read, report nothing."""
    target = _file(tmp_path / "t.j2")
    sentinel = _file(tmp_path / "elsewhere" / "sentinel")
    batches = await watching(watch, target, sentinel)
    _file(tmp_path / "unrelated.txt")
    _save_like_vim(_file(tmp_path / "other.j2"), "y")
    (tmp_path / "sub").mkdir()
    assert "x" == target.read_text()
    assert {sentinel} == await batches.settle(sentinel)


async def test_set_paths_replaces_the_watched_set(tmp_path: Path, watch: Watcher) -> None:
    """After set_paths a new path is reported, a dropped one is not, a kept one keeps its past."""
    kept = _file(tmp_path / "kept.j2")
    dropped = _file(tmp_path / "dropped.j2")
    added = _file(tmp_path / "more" / "added.j2")
    batches = await watching(watch, kept, dropped)
    kept.write_text("changed just before the set changes")
    watch.set_paths([kept, added])
    dropped.write_text("not watched any more")
    assert {kept} == await batches.next()
    added.write_text("watched now")  # maybe before the thread took the new set in: still seen
    assert {added} == await batches.next()


async def test_set_paths_since_reports_what_changed_after_a_read(
    tmp_path: Path, watch: Watcher
) -> None:
    """A path added with `since` (when it was read) is reported if it changed after that."""
    include = _file(tmp_path / "include.j2")
    untouched = _file(tmp_path / "untouched.j2")
    sentinel = _file(tmp_path / "sentinel")
    batches = await watching(watch, sentinel)
    read_at = time.time()
    include.write_text("changed between the render and set_paths")
    watch.set_paths([include, untouched, sentinel], since=read_at)
    assert {include} == await batches.next()
    assert {sentinel} == await batches.settle(sentinel)


async def test_change_right_after_set_paths(tmp_path: Path, watch: Watcher) -> None:
    """Changes made right after set_paths, before the watcher took the set in, are reported:
    a write (the file's ctime says so) and a removal (its folder's mtime says so)."""
    written = _file(tmp_path / "a" / "written.j2")
    removed = _file(tmp_path / "b" / "removed.j2")
    await asyncio.sleep(0.02)  # older than a clock tick
    watch.set_paths([written, removed])
    written.write_text("y")
    removed.unlink()
    batches = Batches(watch)
    seen = await batches.next()
    while seen != {written, removed}:
        seen |= await batches.next()


async def test_symlink_into_another_folder(tmp_path: Path, watch: Watcher) -> None:
    """A symlink to a file elsewhere: an edit of the target and a re-pointed link are seen."""
    shared = _file(tmp_path / "shared" / "base.j2", "one")
    other = _file(tmp_path / "shared2" / "base.j2", "two")
    link = tmp_path / "templates" / "base.j2"
    link.parent.mkdir()
    link.symlink_to(shared)
    batches = await watching(watch, link)
    with shared.open("a") as f:
        f.write(" edited")
    assert {link} == await batches.next()
    repoint = link.with_name("tmp-link")
    repoint.symlink_to(other)
    os.rename(repoint, link)
    assert {link} == await batches.next()


async def test_rescan_catches_what_inotify_cannot_see(tmp_path: Path) -> None:
    """A write through a hard link in an unwatched folder gives no event; the rescan sees it."""
    target = _file(tmp_path / "watched" / "t.j2")
    alias = tmp_path / "elsewhere" / "alias"
    alias.parent.mkdir()
    os.link(target, alias)
    watcher = Watcher([], step_ms=20, rescan_s=0.3)
    try:
        batches = await watching(watcher, target)
        await asyncio.sleep(0.1)  # the sentinel's last events are looked at: none left to wake it
        with alias.open("a") as f:
            f.write(" through the other name")
        assert {target} == await batches.next()
    finally:
        await watcher.close()


async def test_two_names_for_one_path_are_both_reported(tmp_path: Path, watch: Watcher) -> None:
    """Paths given in two spellings come back in the spelling each caller used."""
    target = _file(tmp_path / "t.j2")
    (tmp_path / "sub").mkdir()
    other = tmp_path / "sub" / ".." / "t.j2"
    batches = await watching(watch, target, other)
    target.write_text("y")
    assert {target, other} == await batches.next()


async def test_cancelled_iteration_is_prompt_and_loses_nothing(
    tmp_path: Path, watch: Watcher
) -> None:
    """Cancelling a waiting iteration is immediate; a change made meanwhile comes next time."""
    target = _file(tmp_path / "t.j2")
    batches = await watching(watch, target)
    waiting = asyncio.ensure_future(batches.next())
    await asyncio.sleep(0)
    started = time.monotonic()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert time.monotonic() - started < 0.05
    target.write_text("while nobody listened")
    again = Batches(watch)  # a cancelled async generator is finished: iterate anew
    again.hidden = batches.hidden
    assert {target} == await again.next()


async def test_close_ends_iteration_and_thread(tmp_path: Path) -> None:
    """close() returns within a second, ends the iteration and the watcher's thread."""
    target = _file(tmp_path / "t.j2")
    await asyncio.sleep(0.02)  # older than a clock tick: not a change made after Watcher()
    watcher = Watcher([target])
    batches = Batches(watcher)
    waiting = asyncio.ensure_future(batches.next())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await watcher.close()
    assert time.monotonic() - started < 1.0
    with pytest.raises(StopAsyncIteration):
        await waiting
    for thread in threading.enumerate():
        if thread.name == "smagent-watch":
            thread.join(timeout=0.1)  # it may still be returning from its last line
            assert not thread.is_alive()


async def test_event_loop_keeps_running_while_many_paths_change(tmp_path: Path) -> None:
    """Looking at 500 files happens off the event loop: its ticks stay on time."""
    paths = [_file(tmp_path / f"d{i % 10}" / f"f{i}.j2") for i in range(500)]
    watcher = Watcher(paths, step_ms=20, debounce_ms=100)
    try:
        batches = Batches(watcher)
        worst = 0.0
        done = False

        async def tick() -> None:
            nonlocal worst
            while not done:
                before = time.monotonic()
                await asyncio.sleep(0.005)
                worst = max(worst, time.monotonic() - before)

        ticker = asyncio.ensure_future(tick())
        await asyncio.to_thread(lambda: [p.write_text("y") for p in paths])
        seen: set[Path] = set()
        while len(seen) < len(paths):
            seen |= await batches.next()
        done = True
        await ticker
        assert set(paths) == seen
        assert worst < 0.25, f"the event loop stalled {worst:.3f} s"
    finally:
        await watcher.close()


async def test_idle_watcher_costs_almost_no_cpu(tmp_path: Path) -> None:
    """Watching 50 files that do not change costs well under 1 % of a core (0.05 % measured)."""
    paths = [_file(tmp_path / f"d{i % 5}" / f"f{i}.j2") for i in range(50)]
    watcher = Watcher(paths)
    try:
        await asyncio.sleep(0.2)  # past the first look
        before = time.process_time()
        await asyncio.sleep(1.0)
        used = time.process_time() - before
    finally:
        await watcher.close()
    assert used < 0.02, f"{used * 1000:.1f} ms of CPU in 1 s idle"


def test_plan_watches_the_folders_that_decide_a_path(tmp_path: Path) -> None:
    """The folders planned: the file's, each symlink's, and the nearest existing one."""
    _file(tmp_path / "real" / "f")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "f").symlink_to(tmp_path / "real" / "f")
    (tmp_path / "loop").symlink_to("loop")
    planned = plan(
        [
            str(tmp_path / "links" / "f"),
            str(tmp_path / "missing" / "deeper" / "g"),
            str(tmp_path / "loop"),
        ]
    )
    assert {str(tmp_path), str(tmp_path / "links"), str(tmp_path / "real")} == set(planned.folders)
    assert {str(tmp_path / "real" / "f"), str(tmp_path / "links" / "f")} <= set(planned.names)
    assert {str(tmp_path / "real" / "f"): frozenset({str(tmp_path / "links" / "f")})} == {
        k: v for k, v in planned.files.items() if k.endswith("/f")
    }


def test_signature_of_missing_and_unreadable_paths(tmp_path: Path) -> None:
    """Missing is None; a path through a file is missing too; a symlink loop is a state."""
    (tmp_path / "loop").symlink_to("loop")
    _file(tmp_path / "file")
    assert signature(str(tmp_path / "nope")) is None
    assert signature(str(tmp_path / "file" / "under")) is None
    assert (-1, 40) == signature(str(tmp_path / "loop"))  # ELOOP
    assert signature(str(tmp_path / "file")) != signature(str(tmp_path))


def _start(mode: str, *paths: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.watch_process", mode, *map(str, paths)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return child


def _line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().rstrip("\n")


def test_sigterm_stops_a_watching_process_within_a_second(tmp_path: Path) -> None:
    """A process watching files exits 0 within a second of SIGTERM."""
    target = _file(tmp_path / "t.j2")
    with _start("plain", target) as child:
        assert "ready" == _line(child)
        target.write_text("y")
        assert str(target) == _line(child)
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert 0 == child.wait(timeout=5)
        assert time.monotonic() - started < 1.0
        assert "stopping" == _line(child)


def test_polling_when_inotify_cannot_be_used(tmp_path: Path) -> None:
    """Without a file descriptor for inotify it polls (said once), then returns to inotify."""
    target = _file(tmp_path / "t.j2")
    with _start("no-fds", target) as child:
        assert child.stdin is not None
        assert child.stderr is not None
        assert "polling" == _line(child)
        target.write_text("seen while polling")
        # the change is picked up by polling now, or by the first look once inotify is back
        child.stdin.write("restore\n")
        child.stdin.flush()
        assert "ready" == _line(child)
        assert str(target) == _line(child)
        target.write_text("seen by inotify")
        assert str(target) == _line(child)
        child.send_signal(signal.SIGTERM)
        assert 0 == child.wait(timeout=5)
        events = [json.loads(line)["event"] for line in child.stderr.read().splitlines()]
    assert ["watch.polling", "watch.inotify"] == [e for e in events if e.startswith("watch.")]
