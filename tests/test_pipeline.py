"""One pass: deduplicated concurrent fetches, rounds, nothing lost, coalesced actions."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from smagent.config import load_config
from smagent.pipeline import Pipeline, Status
from smagent.providers import open_providers
from smagent.providers.base import Unavailable
from smagent.references import SecretRef
from tests.conftest import CANARY, Workspace
from tests.fakes.memory import MemoryProvider


def memory_workspace(tmp_path: Path, **stores: MemoryProvider) -> Workspace:
    ws = Workspace(tmp_path)
    ws.providers = {name: {"type": "env"} for name in stores}  # replaced by the fakes below
    return ws


async def run(ws: Workspace, providers: dict[str, object], **kwargs: object) -> object:
    config = load_config(ws.write())
    return await Pipeline(config, providers).run(**kwargs)  # type: ignore[arg-type]


async def test_each_distinct_secret_fetched_once_per_pass(tmp_path: Path) -> None:
    """A secret used by many templates and keys costs one request per pass."""
    store = MemoryProvider("mem", {"db": json.dumps({"u": "app", "p": CANARY}), "tok": "t0k3n"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"db": {"provider": "mem", "secret": "db"}, "s": {"provider": "mem"}}
    for i in range(10):
        ws.template(f"t{i}.j2", "{{ secrets.db.u }}:{{ secrets.db.p }}:{{ secrets.s.tok }}\n")
    result = await run(ws, {"mem": store})
    assert result.ok  # type: ignore[attr-defined]
    assert ["db", "tok"] == sorted(store.requested)
    assert 1 == len(store.calls)


async def test_providers_are_fetched_concurrently(tmp_path: Path) -> None:
    """Two slow stores answer in about the time of one."""
    a = MemoryProvider("a", {"x": "1"}, delay=0.4)
    b = MemoryProvider("b", {"y": "2"}, delay=0.4)
    ws = memory_workspace(tmp_path, a=a, b=b)
    ws.namespaces = {"a": {"provider": "a"}, "b": {"provider": "b"}}
    ws.template("t.j2", "{{ secrets.a.x }}{{ secrets.b.y }}\n")
    ws.template("u.j2", "{{ secrets.b.y }}\n")
    started = time.monotonic()
    result = await run(ws, {"a": a, "b": b})
    elapsed = time.monotonic() - started
    assert result.ok  # type: ignore[attr-defined]
    assert elapsed < 0.75, f"fetches were not concurrent ({elapsed:.2f}s)"
    assert "12\n" == (ws.out / "t").read_text()


async def test_references_that_depend_on_values_take_more_rounds(tmp_path: Path) -> None:
    """A key chosen by another secret's value is discovered and fetched in a later round."""
    store = MemoryProvider("mem", {"which": "second", "first": "1st", "second": "2nd-value"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    ws.template("t.j2", "{{ secrets.s[secrets.s.which] }}\n")
    result = await run(ws, {"mem": store})
    assert result.ok  # type: ignore[attr-defined]
    assert "2nd-value\n" == (ws.out / "t").read_text()
    assert [["which"], ["second"]] == store.calls


async def test_failed_fetch_keeps_old_file_and_writes_others(tmp_path: Path) -> None:
    """A failed reference leaves that file byte-identical; other templates are written."""
    store = MemoryProvider("mem", {"ok": "fine"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    bad = ws.template("bad.j2", "{{ secrets.s.missing }}\n")
    good = ws.template("good.j2", "{{ secrets.s.ok }}\n")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"previous good content\n")
    os.chmod(bad, 0o640)
    before = os.stat(bad)
    result = await run(ws, {"mem": store})
    assert not result.ok  # type: ignore[attr-defined]
    statuses = {t.template.name: t.status for t in result.templates}  # type: ignore[attr-defined]
    assert {"bad.j2": Status.FAILED, "good.j2": Status.WRITTEN} == statuses
    assert b"previous good content\n" == bad.read_bytes()
    after = os.stat(bad)
    assert (before.st_ino, before.st_mtime_ns, 0o640) == (
        after.st_ino,
        after.st_mtime_ns,
        after.st_mode & 0o777,
    )
    assert "fine\n" == good.read_text()


async def test_slow_provider_hits_the_pass_deadline(tmp_path: Path) -> None:
    """A store slower than fetch_timeout fails its references; the pass does not hang."""
    slow = MemoryProvider("slow", {"x": "1"}, delay=30)
    ws = memory_workspace(tmp_path, slow=slow)
    ws.namespaces = {"s": {"provider": "slow"}}
    ws.defaults = {"fetch_timeout": "300ms"}
    ws.template("t.j2", "{{ secrets.s.x }}\n")
    started = time.monotonic()
    result = await run(ws, {"slow": slow})
    assert time.monotonic() - started < 3
    (item,) = result.templates  # type: ignore[attr-defined]
    assert Status.FAILED == item.status
    assert isinstance(item.problems[0].error, Unavailable)
    assert "no answer within 0.3s" in str(item.problems[0])


def counting_command(marker: Path) -> list[str]:
    code = "import sys; open(sys.argv[1], 'a').write('ran\\n')"
    return [sys.executable, "-c", code, str(marker)]


async def test_actions_run_once_after_all_writes_and_only_on_change(tmp_path: Path) -> None:
    """Two changed files naming one action run it once; an unchanged pass runs nothing."""
    store = MemoryProvider("mem", {"a": "1", "b": "2"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    marker = tmp_path / "ran.txt"
    action = {"command": counting_command(marker), "timeout": "10s"}
    ws.template("a.j2", "{{ secrets.s.a }}\n", on_change=[action])
    ws.template("b.j2", "{{ secrets.s.b }}\n", on_change=[action])
    first = await run(ws, {"mem": store})
    assert first.ok  # type: ignore[attr-defined]
    assert "ran\n" == marker.read_text()
    assert 1 == len(first.actions)  # type: ignore[attr-defined]
    second = await run(ws, {"mem": store})
    assert [] == second.actions  # type: ignore[attr-defined]
    store.values["b"] = "rotated"
    third = await run(ws, {"mem": store})
    assert 1 == len(third.actions)  # type: ignore[attr-defined]
    assert "ran\nran\n" == marker.read_text()


async def test_failing_action_fails_the_pass_but_files_stay_written(tmp_path: Path) -> None:
    """A failing on_change command is reported; the file it followed is written."""
    store = MemoryProvider("mem", {"a": "1"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    dest = ws.template("a.j2", "{{ secrets.s.a }}\n", on_change=[{"command": ["false"]}])
    result = await run(ws, {"mem": store})
    assert not result.ok  # type: ignore[attr-defined]
    assert "1\n" == dest.read_text()
    assert "exited with status 1" in result.actions[0].detail  # type: ignore[attr-defined]


async def test_dry_run_writes_nothing_and_runs_nothing(tmp_path: Path) -> None:
    """--dry-run reports what would change without touching files or running actions."""
    store = MemoryProvider("mem", {"a": "new"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    marker = tmp_path / "ran.txt"
    dest = ws.template(
        "a.j2", "same\n{{ secrets.s.a }}\n", on_change=[{"command": counting_command(marker)}]
    )
    missing = ws.template("b.j2", "x\n")
    dest.parent.mkdir(parents=True)
    dest.write_text("same\nold\n")
    result = await run(ws, {"mem": store}, dry_run=True)
    items = {t.template.name: t for t in result.templates}  # type: ignore[attr-defined]
    assert Status.WOULD_WRITE == items["a.j2"].status
    assert (2,) == items["a.j2"].changed_lines
    assert Status.WOULD_WRITE == items["b.j2"].status
    assert "same\nold\n" == dest.read_text()
    assert not missing.exists()
    assert not marker.exists()


async def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    """Temp files a crash left beside a destination are gone after the next pass."""
    from smagent.writer import temp_path_for

    store = MemoryProvider("mem", {"a": "1"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    dest = ws.template("a.j2", "{{ secrets.s.a }}\n")
    dest.parent.mkdir(parents=True)
    stale = temp_path_for(dest)
    stale.write_text("half-written")
    await run(ws, {"mem": store})
    assert not stale.exists()
    assert [dest.name] == sorted(p.name for p in dest.parent.iterdir())


async def test_file_provider_end_to_end(ws: Workspace) -> None:
    """The real file provider feeds a pass; the written file holds the values."""
    dest = ws.template("t.j2", "{{ secrets.db.host }}:{{ secrets.db.port }}\n")
    config = load_config(ws.write())
    async with open_providers(config.providers) as providers:
        result = await Pipeline(config, providers).run()
    assert result.ok
    assert "db.internal:5432\n" == dest.read_text()
    assert 0o600 == os.stat(dest).st_mode & 0o777
    assert 1 == result.fetched
    assert SecretRef("local", "prod/db") in {lookup.ref for lookup in result.templates[0].lookups}


async def test_pinned_and_current_versions_of_one_secret_in_one_pass(tmp_path: Path) -> None:
    """A secret used both pinned (version/stage) and unpinned renders in one pass."""
    store = MemoryProvider("mem", {"db": json.dumps({"p": "x"})})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {
        "db": {"provider": "mem", "secret": "db"},
        "old": {"provider": "mem", "secret": "db", "stage": "AWSPREVIOUS"},
        "v2": {"provider": "mem", "secret": "db", "version": "2"},
    }
    ws.template("t.j2", "{{ secrets.db.p }}{{ secrets.old.p }}{{ secrets.v2.p }}\n")
    result = await run(ws, {"mem": store})
    assert result.ok  # type: ignore[attr-defined]
    assert 3 == len(store.requested)


async def test_two_spellings_of_one_secret_render_from_one_fetch(tmp_path: Path) -> None:
    """A namespace with stage AWSCURRENT and one without are one secret: one fetch, both filled."""
    store = MemoryProvider("mem", {"db": json.dumps({"p": "x"})})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {
        "db": {"provider": "mem", "secret": "db"},
        "cur": {"provider": "mem", "secret": "db", "stage": "AWSCURRENT"},
    }
    dest = ws.template("t.j2", '{{ secrets.db.p }}{{ secrets.cur.p }}{{ secret("mem:db").p }}\n')
    result = await run(ws, {"mem": store})
    assert result.ok  # type: ignore[attr-defined]
    assert "xxx\n" == dest.read_text()
    assert ["db"] == store.requested


async def test_deadline_covers_the_whole_pass(tmp_path: Path) -> None:
    """Rounds of dependent references share one fetch_timeout, not one each."""
    store = MemoryProvider("mem", {"which": "second", "second": "v"}, delay=0.35)
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    ws.defaults = {"fetch_timeout": "500ms"}
    ws.template("t.j2", "{{ secrets.s[secrets.s.which] }}\n")
    result = await run(ws, {"mem": store})
    (item,) = result.templates  # type: ignore[attr-defined]
    assert Status.FAILED == item.status
    assert "no answer within 0.5s" in str(item.problems[0])


async def test_a_write_that_fails_fails_its_template_only(tmp_path: Path) -> None:
    """Writes of a pass go in one batch: one failing (its folder is a file) fails that
    template, as a write failure, and the files before and after it are still written."""
    store = MemoryProvider("mem", {"ok": "fine"})
    ws = memory_workspace(tmp_path, mem=store)
    ws.namespaces = {"s": {"provider": "mem"}}
    first = ws.template("a.j2", "{{ secrets.s.ok }} a\n")
    ws.template("b.j2", "{{ secrets.s.ok }} b\n", destination="blocker/b")
    last = ws.template("c.j2", "{{ secrets.s.ok }} c\n")
    config = load_config(ws.write())
    (ws.root / "blocker").write_text("a file where a folder should be\n")  # after the check
    result = await Pipeline(config, {"mem": store}).run()
    templates = result.templates
    assert [Status.WRITTEN, Status.FAILED, Status.WRITTEN] == [t.status for t in templates]
    assert [False, True, False] == [t.write_failed for t in templates]
    assert "blocker" in str(templates[1].problems[0])
    assert ("fine a\n", "fine c\n") == (first.read_text(), last.read_text())
