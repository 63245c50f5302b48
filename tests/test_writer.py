"""Tests for smagent.writer: real files in tmp_path, real subprocesses and signals."""

from __future__ import annotations

import grp
import json
import os
import pwd
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from smagent.writer import (
    TEMP_MARKER,
    FileSpec,
    Leftovers,
    UnknownOwnerError,
    WriteError,
    WriteOutcome,
    clean_stale_temp_files,
    compare,
    resolve_group,
    resolve_owner,
    temp_path_for,
    write_file,
    write_file_async,
)
from tests.conftest import finishes_within, flock_held, special_file

CANARY = b"CANARY-s3cr3t-7f1d"
UNKNOWN_NAME = "smagent-no-such-account"


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def names_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def fingerprint(path: Path) -> tuple[int, ...]:
    """Everything a write or chmod could change; not atime, which reading alone updates."""
    st = path.lstat()
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def snapshot(folder: Path) -> dict[str, tuple[int, ...]]:
    return {p.name: fingerprint(p) for p in folder.iterdir()}


def removed_for(dest: Path) -> list[Path]:
    """The leftovers `clean_stale_temp_files` removes for one destination; fails on an error."""
    (found,) = clean_stale_temp_files([dest])
    assert None is found.error
    return list(found.removed)


def service_account() -> tuple[str, int, str, int]:
    """(user, uid, group, gid) of an existing non-root account, or skip."""
    for user in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(user)
            group = grp.getgrgid(entry.pw_gid)
        except KeyError:
            continue
        return entry.pw_name, entry.pw_uid, group.gr_name, group.gr_gid
    pytest.skip("neither a 'postgres' nor a 'nobody' account exists")


# -- write only when bytes change ----------------------------------------------


def test_missing_file_is_written_with_content_and_default_mode(tmp_path: Path) -> None:
    """A missing destination is created with the data and mode 0600."""
    dest = tmp_path / "app.conf"

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"password=x\n")

    assert b"password=x\n" == dest.read_bytes()
    assert 0o600 == mode_of(dest)
    assert {"app.conf"} == names_in(tmp_path)


def test_same_bytes_leave_file_untouched(tmp_path: Path) -> None:
    """Writing the same bytes again keeps the inode and the mtime."""
    dest = tmp_path / "app.conf"
    write_file(FileSpec(dest), b"same\n")
    os.utime(dest, ns=(1_000_000_000, 1_000_000_000))  # an mtime a rewrite could not keep
    before = dest.stat()

    assert WriteOutcome.UNCHANGED == write_file(FileSpec(dest), b"same\n")

    after = dest.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_changed_bytes_replace_file_by_rename(tmp_path: Path) -> None:
    """Changed bytes give a new inode (a rename, not an in-place rewrite)."""
    dest = tmp_path / "app.conf"
    write_file(FileSpec(dest), b"old\n")
    old_inode = dest.stat().st_ino

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"new\n")

    assert b"new\n" == dest.read_bytes()
    assert old_inode != dest.stat().st_ino
    assert {"app.conf"} == names_in(tmp_path)


def test_same_prefix_different_length_is_a_change(tmp_path: Path) -> None:
    """A file that is a prefix of the new data (or longer) counts as changed."""
    dest = tmp_path / "app.conf"
    write_file(FileSpec(dest), b"abc")

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"abcd")
    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"abc")
    assert b"abc" == dest.read_bytes()


@pytest.mark.parametrize("same_content", [True, False])
def test_symlink_at_destination_is_replaced_never_followed(
    tmp_path: Path, same_content: bool
) -> None:
    """A symlink is replaced by a regular file; its target keeps its bytes and mode."""
    target = tmp_path / "shadow"
    target.write_bytes(b"new\n" if same_content else b"root:secret\n")
    target.chmod(0o644)
    target_before = fingerprint(target)
    dest = tmp_path / "app.conf"
    dest.symlink_to(target)

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"new\n")

    assert stat.S_ISREG(dest.lstat().st_mode)
    assert b"new\n" == dest.read_bytes()
    assert 0o600 == mode_of(dest)
    assert target_before == fingerprint(target)
    assert (b"new\n" if same_content else b"root:secret\n") == target.read_bytes()


def test_dangling_symlink_is_replaced_without_creating_its_target(tmp_path: Path) -> None:
    """A dangling symlink is replaced; nothing is created where it pointed."""
    dest = tmp_path / "app.conf"
    dest.symlink_to(tmp_path / "elsewhere")

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"x")

    assert stat.S_ISREG(dest.lstat().st_mode)
    assert not (tmp_path / "elsewhere").exists()


def test_directory_at_destination_is_an_error(tmp_path: Path) -> None:
    """A directory at the destination raises WriteError from write_file and compare."""
    dest = tmp_path / "app.conf"
    dest.mkdir()

    with pytest.raises(WriteError, match="is a directory") as written:
        write_file(FileSpec(dest), b"x")
    with pytest.raises(WriteError, match="is a directory"):
        compare(FileSpec(dest), b"x")

    assert dest == written.value.destination
    assert {"app.conf"} == names_in(tmp_path)


def test_fifo_at_destination_is_an_error_without_blocking(tmp_path: Path) -> None:
    """A FIFO at the destination raises WriteError instead of hanging on open."""
    dest = tmp_path / "app.conf"

    with special_file(dest, "fifo"), pytest.raises(WriteError, match="not a regular file"):
        finishes_within(2.0, lambda: write_file(FileSpec(dest), b"x"))


# -- mode ----------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o077])
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_new_file_mode_is_exact_whatever_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    """A new or replaced file has exactly the spec's mode under umask 000 and 077."""
    new = tmp_path / "new.conf"
    replaced = tmp_path / "replaced.conf"
    replaced.write_bytes(b"old")
    replaced.chmod(0o666)

    with umask(mask):
        write_file(FileSpec(new, mode=mode), b"x")
        write_file(FileSpec(replaced, mode=mode), b"x")

    assert mode == mode_of(new)
    assert mode == mode_of(replaced)


def test_same_bytes_wrong_mode_is_fixed_in_place(tmp_path: Path) -> None:
    """Same bytes with mode 0644 on disk are chmod-ed to 0600 in place, not rewritten."""
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"same")
    dest.chmod(0o644)
    os.utime(dest, ns=(1_000_000_000, 1_000_000_000))
    before = dest.stat()

    assert WriteOutcome.METADATA_FIXED == write_file(FileSpec(dest, mode=0o600), b"same")

    after = dest.stat()
    assert 0o600 == mode_of(dest)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert WriteOutcome.UNCHANGED == write_file(FileSpec(dest, mode=0o600), b"same")


# -- owner and group -----------------------------------------------------------


@pytest.mark.parametrize("by", ["name", "id"])
def test_new_file_gets_owner_and_group(tmp_path: Path, by: str) -> None:
    """owner/group given by name or id end up on the new file."""
    user, uid, group, gid = service_account()
    dest = tmp_path / "app.conf"
    owner, grp_ = (user, group) if by == "name" else (uid, gid)

    assert WriteOutcome.WRITTEN == write_file(
        FileSpec(dest, mode=0o640, owner=owner, group=grp_), b"x"
    )

    st = dest.stat()
    assert (uid, gid, 0o640) == (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def test_same_bytes_wrong_owner_is_fixed_in_place(tmp_path: Path) -> None:
    """Same bytes owned by root, spec owner set: chown in place, same inode."""
    user, uid, group, gid = service_account()
    dest = tmp_path / "app.conf"
    write_file(FileSpec(dest), b"same")
    inode = dest.stat().st_ino

    spec = FileSpec(dest, owner=user, group=group)
    assert WriteOutcome.METADATA_FIXED == write_file(spec, b"same")

    st = dest.stat()
    assert (inode, uid, gid, 0o600) == (st.st_ino, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    assert WriteOutcome.UNCHANGED == write_file(spec, b"same")


def test_owner_none_does_not_check_the_owner(tmp_path: Path) -> None:
    """With owner/group None, an existing file's owner is left as it is."""
    _, uid, _, gid = service_account()
    dest = tmp_path / "app.conf"
    write_file(FileSpec(dest), b"same")
    os.chown(dest, uid, gid)

    assert WriteOutcome.UNCHANGED == write_file(FileSpec(dest), b"same")
    assert (uid, gid) == (dest.stat().st_uid, dest.stat().st_gid)


@pytest.mark.parametrize("field", ["owner", "group"])
def test_unknown_owner_or_group_raises_and_writes_nothing(tmp_path: Path, field: str) -> None:
    """An unknown user/group name raises WriteError naming it; nothing is written."""
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"old")
    spec = FileSpec(dest, **{field: UNKNOWN_NAME})  # type: ignore[arg-type]

    with pytest.raises(WriteError) as raised:
        write_file(spec, b"new" + CANARY)

    message = str(raised.value)
    assert f"{field} '{UNKNOWN_NAME}'" in message
    assert str(dest) in message
    assert CANARY.decode() not in message
    assert b"old" == dest.read_bytes()
    assert {"app.conf"} == names_in(tmp_path)


def test_resolve_owner_and_group_accept_names_ids_and_none() -> None:
    """Names map through pwd/grp; ints and digit strings pass through; None stays None."""
    user, uid, group, gid = service_account()

    assert uid == resolve_owner(user)
    assert gid == resolve_group(group)
    assert 4321 == resolve_owner(4321)
    assert 4321 == resolve_group("4321")
    assert None is resolve_owner(None)
    assert None is resolve_group(None)


@pytest.mark.parametrize(
    ("resolve", "value", "message"),
    [
        (resolve_owner, UNKNOWN_NAME, f"owner '{UNKNOWN_NAME}': no such user"),
        (resolve_group, UNKNOWN_NAME, f"group '{UNKNOWN_NAME}': no such group"),
        (resolve_owner, -1, "owner -1: ids cannot be negative"),
    ],
)
def test_resolve_rejects_unknown_names_and_negative_ids(
    resolve: Callable[[str | int | None], int | None], value: str | int, message: str
) -> None:
    """Unknown names and negative ids raise UnknownOwnerError (a ValueError) saying which."""
    with pytest.raises(UnknownOwnerError) as raised:
        resolve(value)

    assert message == str(raised.value)
    assert isinstance(raised.value, ValueError)


# -- missing folders -----------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o077])
@pytest.mark.parametrize(("file_mode", "folder_mode"), [(0o600, 0o700), (0o640, 0o750)])
def test_missing_folders_are_created_with_exact_mode(
    tmp_path: Path, mask: int, file_mode: int, folder_mode: int
) -> None:
    """Missing parents are created (0700 for a 0600 file) whatever the umask; existing ones kept."""
    tmp_path.chmod(0o711)
    dest = tmp_path / "a" / "b" / "app.conf"

    with umask(mask):
        assert WriteOutcome.WRITTEN == write_file(FileSpec(dest, mode=file_mode), b"x")

    assert b"x" == dest.read_bytes()
    assert (folder_mode, folder_mode) == (mode_of(tmp_path / "a"), mode_of(tmp_path / "a" / "b"))
    assert 0o711 == mode_of(tmp_path)


def test_missing_folders_get_the_spec_owner(tmp_path: Path) -> None:
    """New folders belong to the spec's owner/group so the service can reach its file."""
    user, uid, group, gid = service_account()
    dest = tmp_path / "pgbouncer" / "app.conf"

    write_file(FileSpec(dest, owner=user, group=group), b"x")

    st = dest.parent.stat()
    assert (uid, gid) == (st.st_uid, st.st_gid)


def test_parent_that_is_a_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    """A regular file where a folder should be gives WriteError; nothing is created."""
    (tmp_path / "etc").write_bytes(b"not a folder")
    dest = tmp_path / "etc" / "sub" / "app.conf"

    with pytest.raises(WriteError, match="not a directory") as raised:
        write_file(FileSpec(dest), CANARY)
    with pytest.raises(WriteError, match="not a directory"):
        compare(FileSpec(dest), CANARY)

    assert CANARY.decode() not in str(raised.value)
    assert {"etc"} == names_in(tmp_path)
    assert b"not a folder" == (tmp_path / "etc").read_bytes()


# -- failures leave the old file -----------------------------------------------

_FSIZE_CHILD = """
import resource, signal, sys
from pathlib import Path
from smagent.writer import FileSpec, WriteError, write_file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
try:
    write_file(FileSpec(Path(sys.argv[1])), sys.argv[2].encode() * 200_000)
except WriteError as exc:
    print(exc)
    sys.exit(3)
"""


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    """A write failing halfway (file size limit, EFBIG) keeps the old file; no temp remains."""
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"old content\n")
    dest.chmod(0o640)
    before = fingerprint(dest)

    child = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(dest), CANARY.decode()],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert 3 == child.returncode, child.stderr
    message = child.stdout.strip()
    assert message.startswith(
        f"cannot write {dest}: writing {len(CANARY) * 200_000} bytes to a temporary file"
    )
    assert message.endswith("file too large")
    assert CANARY.decode() not in child.stdout + child.stderr
    assert b"old content\n" == dest.read_bytes()
    assert before == fingerprint(dest)
    assert {"app.conf"} == names_in(tmp_path)


def test_error_messages_never_hold_content(tmp_path: Path) -> None:
    """No WriteError message (nor its cause) contains the data being written."""
    folder_file = tmp_path / "file"
    folder_file.write_bytes(b"")
    directory = tmp_path / "dir"
    directory.mkdir()
    failing = [
        FileSpec(directory),
        FileSpec(folder_file / "app.conf"),
        FileSpec(tmp_path / "x.conf", owner=UNKNOWN_NAME),
    ]

    for spec in failing:
        with pytest.raises(WriteError) as raised:
            write_file(spec, CANARY * 3)
        texts = [str(raised.value), repr(raised.value), str(raised.value.__cause__)]
        assert [] == [text for text in texts if CANARY.decode() in text]


# -- temporary files -----------------------------------------------------------


def test_clean_stale_temp_files_removes_only_this_destinations(tmp_path: Path) -> None:
    """Only this destination's temp files are removed and returned; others stay."""
    dest = tmp_path / "app.conf"
    dest.write_bytes(b"live")
    mine = {temp_path_for(dest) for _ in range(2)}
    theirs = temp_path_for(tmp_path / "other.conf")
    lookalikes = [
        tmp_path / f".app.conf{TEMP_MARKER}not-random",
        tmp_path / f".app.conf{TEMP_MARKER}0123456789abcdef0",
        tmp_path / ".app.conf.bak",
    ]
    for path in [*mine, theirs, *lookalikes]:
        path.write_bytes(b"x")
    (tmp_path / temp_path_for(dest).name).mkdir()  # a folder is never ours to remove
    expected_left = names_in(tmp_path) - {p.name for p in mine}

    assert sorted(mine) == sorted(removed_for(dest))
    assert expected_left == names_in(tmp_path)
    assert [] == removed_for(dest)


def test_clean_stale_temp_files_in_missing_folder_returns_nothing(tmp_path: Path) -> None:
    """A destination whose folder does not exist has nothing to clean."""
    dest = tmp_path / "missing" / "app.conf"

    assert [Leftovers(dest)] == clean_stale_temp_files([dest])


def test_temp_name_is_recognisable_and_next_to_destination(tmp_path: Path) -> None:
    """Temp names are hidden siblings: .NAME.smagent-tmp-<16 hex>, fresh each time."""
    dest = tmp_path / "app.conf"
    first, second = temp_path_for(dest), temp_path_for(dest)

    assert tmp_path == first.parent
    assert first.name.startswith(f".app.conf{TEMP_MARKER}")
    assert 16 == len(first.name) - len(f".app.conf{TEMP_MARKER}")
    assert first != second


def test_long_destination_name_still_gets_a_temp_file_that_fits(tmp_path: Path) -> None:
    """A 250-byte file name is written; its shortened temp name is still cleaned."""
    dest = tmp_path / ("n" * 250)

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), b"x")

    stale = temp_path_for(dest)
    assert len(stale.name) < 255
    stale.write_bytes(b"x")
    other = temp_path_for(tmp_path / ("n" * 251))
    other.write_bytes(b"x")
    assert [stale] == removed_for(dest)
    assert other.exists()


_CRASH_CHILD = """
import sys
from pathlib import Path
from smagent.writer import FileSpec, write_file
spec = FileSpec(Path(sys.argv[1]))
size = int(sys.argv[2])
old, new = b"o" * size, b"n" * (size + 1)
print("ready", flush=True)
while True:
    write_file(spec, new)
    write_file(spec, old)
"""


def test_sigkill_at_any_moment_leaves_old_or_new_file(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves the whole old or whole new file; cleanup removes temp files."""
    size = 50_000_000
    old, new = b"o" * size, b"n" * (size + 1)
    dest = tmp_path / "big.conf"
    write_file(FileSpec(dest), old)
    rng = random.Random(20240601)
    seen: list[str] = []
    temp_files_found = 0

    for _ in range(10):
        with subprocess.Popen(
            [sys.executable, "-c", _CRASH_CHILD, str(dest), str(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdout is not None
            assert "ready\n" == child.stdout.readline(), child.communicate()[1]
            time.sleep(rng.uniform(0.0, 0.1))  # one write cycle is ~0.1 s
            child.send_signal(signal.SIGKILL)
            child.communicate()
        assert -signal.SIGKILL == child.returncode

        content = dest.read_bytes()
        seen.append("old" if content == old else "new" if content == new else "MIXED")
        temp_files_found += len(removed_for(dest))
        assert {"big.conf"} == names_in(tmp_path)

    assert [] == [kind for kind in seen if kind == "MIXED"]
    assert temp_files_found >= 1  # at least one kill really landed mid-write


def test_clean_up_keeps_a_live_writers_temp_file_and_removes_it_once_killed(
    tmp_path: Path,
) -> None:
    """A writer frozen mid-write keeps its temp file through a clean-up; once killed, it goes."""
    size = 20_000_000
    dest = tmp_path / "big.conf"
    with subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(dest), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert "ready\n" == child.stdout.readline(), child.communicate()[1]
            frozen: list[Path] = []
            deadline = time.monotonic() + 30
            while not frozen and time.monotonic() < deadline:
                child.send_signal(signal.SIGSTOP)
                # Mid-write means its temp file exists and is locked (not between create and lock).
                frozen = [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name and flock_held(p)]
                if not frozen:
                    child.send_signal(signal.SIGCONT)
                    time.sleep(0.002)
            assert frozen, "never caught the writer with a temp file"

            (kept,) = clean_stale_temp_files([dest])
            assert (dest, (), tuple(frozen), None) == (
                kept.destination,
                kept.removed,
                kept.in_use,
                kept.error,
            )
            assert all(p.exists() for p in frozen)
        finally:
            child.kill()  # SIGKILL ends a stopped process too
            child.communicate()

    assert frozen == removed_for(dest)
    assert [] == [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]


_WRITE_ONCE = """
import sys
from pathlib import Path
from smagent.writer import FileSpec, write_file
print(write_file(FileSpec(Path(sys.argv[1])), b"new content\\n").value, flush=True)
"""


def test_writer_whose_fresh_temp_file_a_cleaner_removed_starts_over(tmp_path: Path) -> None:
    """A temp file removed by a cleaner between its create and its lock: the write starts over.

    strace delays the writer's first flock by 0.3 s (fault injection), which
    holds open the instant a concurrent start-up could find the file unlocked.
    """
    folder = tmp_path / "out"
    folder.mkdir()
    dest = folder / "app.conf"
    dest.write_bytes(b"old\n")
    tracer = [strace_or_skip(), "-f", "-qq", "-o", os.devnull, "-e", "trace=flock"]
    tracer += ["-e", "inject=flock:delay_enter=300000:when=1"]
    with subprocess.Popen(
        [*tracer, sys.executable, "-c", _WRITE_ONCE, str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            deadline = time.monotonic() + 20
            unlocked: list[Path] = []
            while not unlocked and child.poll() is None and time.monotonic() < deadline:
                unlocked = [p for p in folder.iterdir() if TEMP_MARKER in p.name]
                time.sleep(0.005)
            assert unlocked, "the writer's temp file never showed up"
            assert not flock_held(unlocked[0])

            assert unlocked == removed_for(dest)
            stdout, stderr = child.communicate(timeout=30)
        finally:
            child.kill()

    assert (0, "written") == (child.returncode, stdout.strip()), stderr
    assert b"new content\n" == dest.read_bytes()
    assert {"app.conf"} == names_in(folder)


_CLEAN_ONCE = """
import json, sys
from pathlib import Path
from smagent.writer import clean_stale_temp_files
(found,) = clean_stale_temp_files([Path(sys.argv[1])])
print(json.dumps([len(found.removed), len(found.in_use), str(found.error)]))
"""


def test_writer_meeting_a_cleaner_holding_its_temp_file_starts_over(tmp_path: Path) -> None:
    """A cleaner holding the lock of a writer's fresh temp file: the writer takes a new name.

    strace holds both at the worst instant: the writer's first flock is delayed
    1.5 s, and the cleaner, which got the lock meanwhile, is delayed 1.5 s
    before its unlink; so the writer finds the lock taken.
    """
    folder = tmp_path / "out"
    folder.mkdir()
    dest = folder / "app.conf"
    dest.write_bytes(b"old\n")
    strace = strace_or_skip()
    trace = tmp_path / "writer.strace"
    slow_lock = [strace, "-f", "-qq", "-o", str(trace), "-e", "trace=flock,openat"]
    slow_lock += ["-e", "inject=flock:delay_enter=1500000:when=1"]
    slow_unlink = [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=unlinkat"]
    slow_unlink += ["-e", "inject=unlinkat:delay_enter=1500000:when=1"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(
        [*slow_lock, sys.executable, "-c", _WRITE_ONCE, str(dest)], **pipes
    ) as writer:
        try:
            deadline = time.monotonic() + 20
            while writer.poll() is None and time.monotonic() < deadline:
                if [p for p in folder.iterdir() if TEMP_MARKER in p.name]:
                    break
                time.sleep(0.005)
            cleaner = subprocess.run(
                [*slow_unlink, sys.executable, "-c", _CLEAN_ONCE, str(dest)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            stdout, stderr = writer.communicate(timeout=30)
        finally:
            writer.kill()

    assert (0, "written") == (writer.returncode, stdout.strip()), stderr
    assert 0 == cleaner.returncode, cleaner.stderr
    assert [0, 0, "None"] == json.loads(cleaner.stdout)  # it removed nothing in the end
    calls = trace.read_text().splitlines()
    creates = [line for line in calls if "O_CREAT" in line and TEMP_MARKER in line]
    locks = [line.rsplit("= ", 1)[1].split()[:2] for line in calls if " flock(" in line]
    assert 2 == len(creates), calls  # the first name given up, a second one written
    assert [["-1", "EAGAIN"], ["0"]] == locks
    assert b"new content\n" == dest.read_bytes()
    assert {"app.conf"} == names_in(folder)


_COUNT_LISTINGS = """
import sys
from pathlib import Path
from smagent.writer import clean_stale_temp_files, temp_path_for
listings = []
def count(event, args):
    if event in ("os.scandir", "os.listdir"):
        listings.append(args)
sys.addaudithook(count)
destinations = [Path(p) for p in sys.argv[1:]]
leftovers = [temp_path_for(d) for d in destinations]
for path in leftovers:
    path.write_bytes(b"x")
found = clean_stale_temp_files(destinations)
assert sorted(leftovers) == sorted(p for f in found for p in f.removed), found
print(len(listings))
"""


def test_clean_up_lists_each_folder_once_per_call(tmp_path: Path) -> None:
    """Ten destinations in two folders cost two directory listings, and each leftover is found."""
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    destinations = [folder / f"f{i}.conf" for folder in folders for i in range(5)]

    child = subprocess.run(
        [sys.executable, "-c", _COUNT_LISTINGS, *map(str, destinations)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert 0 == child.returncode, child.stderr
    assert "2" == child.stdout.strip()
    assert set() == names_in(folders[0]) | names_in(folders[1])


# -- the order of operations, as the kernel sees it ----------------------------
#
# strace (Debian package `strace`) records every system call the writer makes on
# the destination's folder; an audit hook in the same child records the temp
# file's mode, owner and size at the instant of the rename. Nothing of ours is
# replaced: the child calls the real write_file.

_TRACED_CALLS = (
    "openat,flock,fchmod,fchown,write,fsync,fdatasync,close,"
    "rename,renameat,renameat2,chmod,fchmodat,chown,fchownat,lchown,unlinkat"
)
_TRACED_CHILD = """
import json, os, stat, sys
from pathlib import Path
from smagent.writer import FileSpec, write_file
at_rename = []
def hook(event, args):
    if event == "os.rename":
        src, _, src_dir_fd, _ = args
        st = os.stat(src, dir_fd=None if src_dir_fd == -1 else src_dir_fd, follow_symlinks=False)
        at_rename.append([stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size])
sys.addaudithook(hook)
os.umask(0)  # a temp file created wider than its mode would show it
dest, mode, owner, group, size = sys.argv[1:]
ids = [int(i) if i else None for i in (owner, group)]
spec = FileSpec(Path(dest), int(mode, 8), *ids)
write_file(spec, b"x" * int(size))
print(json.dumps(at_rename))
"""
_SYSCALL = re.compile(r"^\d+\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")


def strace_or_skip() -> str:
    """The strace binary, if it can trace here; skipped without it, but a failure under CI=1."""
    found = shutil.which("strace")
    probe = (
        subprocess.run([found, "-f", "-o", os.devnull, "true"], capture_output=True, check=False)
        if found
        else None
    )
    if found and probe is not None and probe.returncode == 0:
        return found
    reason = "strace is missing or cannot trace here (apt-get install strace)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def traced_write(
    folder: Path, mode: int, owner: int | None, group: int | None, size: int, *, strace: bool
) -> tuple[list[str], list[list[int]]]:
    """One real write_file (under strace if asked): its steps on `folder`, the stat at rename."""
    log = folder.parent / "strace.log"
    ids = ["" if owner is None else str(owner), "" if group is None else str(group)]
    tracer: list[str] = []
    if strace:
        tracer = [strace_or_skip(), "-f", "-qq", "-y", "-s", "0", "-e", f"trace={_TRACED_CALLS}"]
        tracer += ["-o", str(log)]
    args = [str(folder / "app.conf"), f"{mode:o}", *ids, str(size)]
    child = subprocess.run(
        [*tracer, sys.executable, "-c", _TRACED_CHILD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == child.returncode, child.stderr
    steps: list[str] = []
    for line in log.read_text().splitlines() if strace else []:
        match = _SYSCALL.match(line)
        if match and str(folder) in match["args"]:
            step = _step(match["name"], match["args"], folder)
            if step and not (step == "write temp" and steps and steps[-1] == step):
                steps.append(step)
    return steps, json.loads(child.stdout)


def _step(name: str, args: str, folder: Path) -> str | None:
    """A system call on `folder` as a readable step; None for the ones the order ignores."""
    on_temp = TEMP_MARKER in args.split(",")[0]
    on_folder = args.split(",")[0].endswith(f"<{folder}>")
    if name == "openat" and "O_CREAT" in args:
        flags = "|".join(sorted(f for f in re.findall(r"O_[A-Z]+", args) if f != "O_CLOEXEC"))
        return f"create {flags} {args.rsplit(', ', 1)[1]}"
    if name in ("fchmod", "fchown") or "chmod" in name or "chown" in name:
        return f"{name} {'temp' if on_temp else 'other'} {args.split(', ', 1)[1]}"
    if name in ("write", "fsync", "fdatasync", "flock") and (on_temp or on_folder):
        return f"{name} {'temp' if on_temp else 'folder'}"
    if name.startswith("rename"):
        return f"rename temp -> {args.split(', ')[3]}"
    return None  # opening folders, close


def test_write_order_create_with_mode_then_owner_data_fsync_rename_fsync_folder(
    tmp_path: Path,
) -> None:
    """Under strace: O_EXCL create with the mode, chmod/chown, data, fsync, rename, folder fsync."""
    owner = group = None
    if os.geteuid() == 0:
        _, owner, _, group = service_account()
    folder = tmp_path / "out"
    folder.mkdir()

    steps, at_rename = traced_write(folder, 0o640, owner, group, 300_000, strace=True)

    assert [
        "create O_CREAT|O_EXCL|O_NOFOLLOW|O_WRONLY 0640",
        "flock temp",
        "fchmod temp 0640",
        *([] if owner is None else [f"fchown temp {owner}, {group}"]),
        "write temp",
        "fsync temp",
        'rename temp -> "app.conf"',
        "fsync folder",
    ] == steps
    uid = os.geteuid() if owner is None else owner
    gid = os.getegid() if group is None else group
    assert [[0o640, uid, gid, 300_000]] == at_rename  # mode and owner already final at rename


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o2750])
def test_temp_file_has_final_mode_owner_and_data_at_rename(tmp_path: Path, mode: int) -> None:
    """At the instant of the rename (audit hook), the temp file has its mode, owner and data."""
    owner = group = None
    if os.geteuid() == 0:
        _, owner, _, group = service_account()
    folder = tmp_path / "out"
    folder.mkdir()

    _, at_rename = traced_write(folder, mode, owner, group, 70_000, strace=False)

    uid = os.geteuid() if owner is None else owner
    gid = os.getegid() if group is None else group
    assert [[mode, uid, gid, 70_000]] == at_rename


# -- compare (dry run) ---------------------------------------------------------

Setup = Callable[[Path], None]


def _missing(dest: Path) -> None:
    pass


def _same(dest: Path) -> None:
    dest.write_bytes(b"data")
    dest.chmod(0o600)


def _different(dest: Path) -> None:
    dest.write_bytes(b"other")
    dest.chmod(0o600)


def _wrong_mode(dest: Path) -> None:
    dest.write_bytes(b"data")
    dest.chmod(0o644)


def _symlink(dest: Path) -> None:
    target = dest.with_name("target")
    target.write_bytes(b"data")
    target.chmod(0o600)
    dest.symlink_to(target)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (_missing, WriteOutcome.WRITTEN),
        (_same, WriteOutcome.UNCHANGED),
        (_different, WriteOutcome.WRITTEN),
        (_wrong_mode, WriteOutcome.METADATA_FIXED),
        (_symlink, WriteOutcome.WRITTEN),
    ],
)
def test_compare_predicts_write_file_without_touching_anything(
    tmp_path: Path, setup: Setup, expected: WriteOutcome
) -> None:
    """compare returns what write_file then does, and changes nothing itself."""
    dest = tmp_path / "app.conf"
    setup(dest)
    before = snapshot(tmp_path)

    predicted = compare(FileSpec(dest), b"data")

    assert before == snapshot(tmp_path)
    assert expected == predicted
    assert predicted == write_file(FileSpec(dest), b"data")


def test_compare_with_missing_folder_says_written_and_creates_nothing(tmp_path: Path) -> None:
    """compare on a destination in a missing folder says WRITTEN and creates no folder."""
    assert WriteOutcome.WRITTEN == compare(FileSpec(tmp_path / "new" / "app.conf"), b"x")
    assert set() == names_in(tmp_path)


def test_compare_raises_for_unknown_owner(tmp_path: Path) -> None:
    """compare raises the same WriteError as write_file for an unknown owner."""
    with pytest.raises(WriteError, match=f"owner '{UNKNOWN_NAME}': no such user"):
        compare(FileSpec(tmp_path / "app.conf", owner=UNKNOWN_NAME), b"x")


# -- spec and async ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"destination": Path("relative/app.conf")}, "must be an absolute path"),
        ({"destination": Path("/")}, "must name a file"),
        ({"destination": Path("/etc/app.conf"), "mode": 0o10000}, "is not 0..0o7777"),
    ],
)
def test_file_spec_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    """A relative or nameless destination or an out-of-range mode is a ValueError."""
    with pytest.raises(ValueError, match=message):
        FileSpec(**kwargs)  # type: ignore[arg-type]


async def test_write_file_async_writes_in_a_thread(tmp_path: Path) -> None:
    """write_file_async writes like write_file and reports the outcome."""
    dest = tmp_path / "app.conf"

    assert WriteOutcome.WRITTEN == await write_file_async(FileSpec(dest, mode=0o640), b"x")
    assert WriteOutcome.UNCHANGED == await write_file_async(FileSpec(dest, mode=0o640), b"x")
    assert b"x" == dest.read_bytes()
    assert 0o640 == mode_of(dest)
