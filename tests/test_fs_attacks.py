"""File-system attacks on the destination: a folder other users can write to.

Real files throughout. The attacker plants things before the write, or runs
as a concurrent process. What it plants belongs to the `nobody` account when
the tests run as root (lchown), exactly as if that user had planted it; the
process doing it is ours, because an interpreter under /root is out of
nobody's reach on many hosts. Each test names the attack and what must hold:
the write is not redirected, no other file changes, a clear error where a
write cannot be made, and a warning naming a folder others can write to.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smagent.writer import (
    TEMP_MARKER,
    FileSpec,
    WriteError,
    WriteOutcome,
    compare,
    temp_path_for,
    write_file,
)
from tests.conftest import REPO, Workspace, run_cli

RACES = "it keeps appearing and vanishing while we open it"

SHARED_MODES = [pytest.param(0o1777, id="sticky-1777"), pytest.param(0o0777, id="open-0777")]
DATA = b"password=rendered-by-smagent\n"
VICTIM = b"root:the victim's own content\n"


def attacker_ids() -> tuple[int, int] | None:
    """The `nobody` account's ids when we are root, to give planted things another owner."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def plant_symlink(target: Path, link: Path) -> None:
    """A symlink as the attacker leaves it: owned by `nobody` when we can make it so."""
    link.symlink_to(target)
    ids = attacker_ids()
    if ids is not None:
        os.lchown(link, *ids)


def plant_file(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    ids = attacker_ids()
    if ids is not None:
        os.chown(path, *ids)


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """Where the attack happens; its `etc` folder holds the victim files."""
    return tmp_path


def shared_folder(arena: Path, mode: int) -> Path:
    folder = arena / "shared"
    folder.mkdir()
    folder.chmod(mode)
    return folder


def victim_file(arena: Path, content: bytes = VICTIM, mode: int = 0o644) -> Path:
    """A file the attack wants us to overwrite, outside the shared folder."""
    (arena / "etc").mkdir(exist_ok=True)
    victim = arena / "etc" / "passwd"
    victim.write_bytes(content)
    victim.chmod(mode)
    return victim


def fingerprint(path: Path) -> tuple[object, ...]:
    st = path.lstat()
    return (path.read_bytes(), st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)


def listing(folder: Path) -> dict[str, str]:
    """Each entry and what it is (a symlink with its target)."""
    kinds: dict[str, str] = {}
    for entry in folder.iterdir():
        st = entry.lstat()
        kinds[entry.name] = (
            f"-> {os.readlink(entry)}" if stat.S_ISLNK(st.st_mode) else stat.filemode(st.st_mode)
        )
    return kinds


def assert_written(dest: Path, mode: int = 0o600) -> None:
    st = dest.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert (DATA, mode, 1) == (dest.read_bytes(), stat.S_IMODE(st.st_mode), st.st_nlink)


# -- planted symlinks ----------------------------------------------------------


@pytest.mark.parametrize("mode", SHARED_MODES)
@pytest.mark.parametrize("target", ["victim-file", "missing-file", "folder"])
def test_symlink_planted_at_destination_is_replaced_not_followed(
    arena: Path, mode: int, target: str
) -> None:
    """A symlink at the destination (to a file, a missing path, a folder) is replaced."""
    folder = shared_folder(arena, mode)
    victim = victim_file(arena)
    before = fingerprint(victim)
    pointed = {
        "victim-file": victim,
        "missing-file": arena / "etc" / "created-by-attack",
        "folder": arena / "etc",
    }[target]
    dest = folder / "app.conf"
    plant_symlink(pointed, dest)

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), DATA)

    assert_written(dest)
    assert before == fingerprint(victim)
    assert {"passwd"} == {p.name for p in (arena / "etc").iterdir()}


def predictable_names(dest: Path) -> list[str]:
    """Names an attacker would try: other tools' conventions, and 'random' parts with no entropy."""
    name = dest.name
    guesses = [f"{name}.tmp", f".{name}.tmp", f"{name}~", f".{name}.swp", f"{name}.new"]
    for random_part in ("0" * 16, "f" * 16, f"{os.getpid():016x}", f"{int(time.time()):016x}"):
        guesses.append(f".{name}{TEMP_MARKER}{random_part}")
    guesses += [f".{name}{TEMP_MARKER}{i:016x}" for i in range(64)]
    return list(dict.fromkeys(guesses))


@pytest.mark.parametrize("mode", SHARED_MODES)
def test_symlinks_planted_at_predictable_temp_names_do_not_redirect_the_write(
    arena: Path, mode: int
) -> None:
    """Symlinks at every predictable temp name stay as they are; the victim is untouched."""
    folder = shared_folder(arena, mode)
    victim = victim_file(arena)
    before = fingerprint(victim)
    dest = folder / "app.conf"
    planted = predictable_names(dest)
    for name in planted:
        plant_symlink(victim, folder / name)

    for _ in range(20):
        write_file(FileSpec(dest), DATA)
        dest.unlink()
    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), DATA)

    assert_written(dest)
    assert before == fingerprint(victim)
    assert dict.fromkeys(planted, f"-> {victim}") | {"app.conf": "-rw-------"} == listing(folder)


_GUESSED_RIGHT = """
import secrets, sys
from pathlib import Path
from smagent.writer import FileSpec, write_file
guessed, tail = sys.argv[2], iter([sys.argv[2]])
real = secrets.token_hex
secrets.token_hex = lambda n=None: next(tail, None) or real(n)
print(write_file(FileSpec(Path(sys.argv[1])), b"password=rendered-by-smagent\\n").value)
"""


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_correctly_guessed_temp_name_is_skipped_not_opened(arena: Path, planted: str) -> None:
    """If the attacker guessed the random part, O_EXCL|O_NOFOLLOW refuses it; a fresh name is used.

    The guess is made right by the child's random source answering the
    planted name first; the writer itself is the real one.
    """
    folder = shared_folder(arena, 0o1777)
    victim = victim_file(arena)
    before = fingerprint(victim)
    dest = folder / "app.conf"
    guessed = "0123456789abcdef"
    trap = folder / f".app.conf{TEMP_MARKER}{guessed}"
    if planted == "symlink":
        plant_symlink(victim, trap)
    else:
        plant_file(trap, b"the attacker's file")
    trap_before = os.lstat(trap)

    child = subprocess.run(
        [sys.executable, "-c", _GUESSED_RIGHT, str(dest), guessed],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )

    assert (0, "written") == (child.returncode, child.stdout.strip()), child.stderr
    assert_written(dest)
    assert before == fingerprint(victim)
    trap_after = os.lstat(trap)
    assert (trap_before.st_ino, trap_before.st_mtime_ns) == (
        trap_after.st_ino,
        trap_after.st_mtime_ns,
    )
    assert {trap.name, "app.conf"} == set(listing(folder))


_NAMES = """
import sys
from pathlib import Path
from smagent.writer import temp_path_for
print("\\n".join(temp_path_for(Path(sys.argv[1])).name for _ in range(500)))
"""


def test_temp_names_are_unpredictable(tmp_path: Path) -> None:
    """Temp names carry 64 fresh random bits: no repeats, every hex digit used, per process too."""
    dest = tmp_path / "app.conf"
    prefix = f".app.conf{TEMP_MARKER}"
    ours = [temp_path_for(dest).name for _ in range(2000)]
    theirs = subprocess.run(
        [sys.executable, "-c", _NAMES, str(dest)], capture_output=True, text=True, check=True
    ).stdout.split()

    randoms = [name.removeprefix(prefix) for name in ours + theirs]
    assert 2500 == len(set(randoms))
    assert all(len(r) == 16 and set(r) <= set("0123456789abcdef") for r in randoms)
    for position in range(16):
        assert 16 == len({r[position] for r in randoms}), f"hex digit {position} barely varies"


# -- hard links ----------------------------------------------------------------


@pytest.mark.parametrize("mode", SHARED_MODES)
@pytest.mark.parametrize("same_bytes", [False, True], ids=["other-bytes", "same-bytes"])
def test_hard_link_at_destination_never_changes_the_other_file(
    arena: Path, mode: int, same_bytes: bool
) -> None:
    """A hard link to another file at the destination: that file keeps its bytes, mode, owner."""
    folder = shared_folder(arena, mode)
    victim = victim_file(arena, DATA if same_bytes else VICTIM, mode=0o644)
    before = fingerprint(victim)
    dest = folder / "app.conf"
    os.link(victim, dest)  # the attacker needs no rights on the victim with protected_hardlinks=0

    assert WriteOutcome.WRITTEN == write_file(FileSpec(dest, mode=0o600), DATA)

    assert_written(dest)
    assert before[:3] == fingerprint(victim)[:3]  # bytes, inode, mode
    assert 1 == victim.stat().st_nlink
    assert WriteOutcome.UNCHANGED == write_file(FileSpec(dest, mode=0o600), DATA)


# -- things that are not files -------------------------------------------------


def make_special(dest: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(dest)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(dest))
    elif kind == "folder":
        dest.mkdir()
    else:
        os.mknod(dest, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null


SPECIAL = [
    ("fifo", "a FIFO (named pipe)"),
    ("socket", "a socket"),
    ("char-device", "a character device"),
]


@pytest.mark.parametrize(("kind", "called"), [*SPECIAL, ("folder", "a directory")])
def test_special_file_at_destination_is_refused_and_left_alone(
    tmp_path: Path, kind: str, called: str
) -> None:
    """write_file and compare refuse a non-file at the destination, naming its kind; it stays."""
    if kind == "char-device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    dest = tmp_path / "app.conf"
    make_special(dest, kind)
    before = dest.lstat()
    expected = f"cannot write {dest}: the destination is {called}, not a regular file"

    for attempt in (write_file, compare):
        with pytest.raises(WriteError) as raised:
            attempt(FileSpec(dest), DATA)
        assert str(raised.value).startswith(expected)

    after = dest.lstat()
    assert (before.st_ino, before.st_mode) == (after.st_ino, after.st_mode)
    assert ["app.conf"] == [p.name for p in tmp_path.iterdir()]


@pytest.mark.parametrize(("kind", "called"), SPECIAL)
def test_special_file_at_destination_is_a_clear_error_without_hanging(
    ws: Workspace, kind: str, called: str
) -> None:
    """A FIFO, socket or device at a destination: a config error (exit 2) naming it, at once;
    nothing is written and the special file stays (the writer refuses it too, see above)."""
    if kind == "char-device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    bad = ws.template("bad.j2", "{{ secrets.db.host }}\n")
    good = ws.template("good.j2", "{{ secrets.db.host }}\n")
    bad.parent.mkdir(parents=True)
    make_special(bad, kind)
    kind_before = stat.S_IFMT(bad.lstat().st_mode)

    result = ws.run("render", "--once", timeout=20)  # a hang is a TimeoutExpired, not a pass

    assert 2 == result.returncode, result.stderr
    called_short = called.removesuffix(" (named pipe)").removeprefix("a ")
    assert f"templates[0].destination: {bad} is a {called_short}" in result.stderr
    assert kind_before == stat.S_IFMT(bad.lstat().st_mode)
    assert not good.exists()
    assert [] == [p.name for p in bad.parent.iterdir() if TEMP_MARKER in p.name]


# -- the folder itself ---------------------------------------------------------

_SWAPPER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
folder, link, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
swaps, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    if libc.renameat2(AT_FDCWD, folder, AT_FDCWD, link, RENAME_EXCHANGE) != 0:
        sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
    swaps += 1
print(swaps)
"""

_WRITER_LOOP = """
import json, sys, time
from pathlib import Path
from smagent.writer import FileSpec, WriteError, write_file
dest, seconds = Path(sys.argv[1]), float(sys.argv[2])
outcomes, end = {}, time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    i += 1
    try:
        write_file(FileSpec(dest), b"write %d\\n" % i)
        outcomes["written"] = outcomes.get("written", 0) + 1
    except WriteError as exc:
        reason = "symlink refused" if "is a symlink in a folder" in exc.reason else exc.reason
        outcomes[reason] = outcomes.get(reason, 0) + 1
print(json.dumps(outcomes))
"""


def test_folder_swapped_for_a_symlink_mid_write_never_redirects(arena: Path) -> None:
    """The folder and a symlink swapped atomically, again and again, as we write: never followed.

    The attacker owns the symlink and the parent is not sticky, so the walk
    must refuse the symlink whenever it meets it; a write that got the real
    folder's descriptor finishes there, whatever that folder is called by then.
    """
    parent = shared_folder(arena, 0o0777)
    (parent / "sub").mkdir()
    victim_folder = arena / "etc"
    victim = victim_file(arena)
    before = fingerprint(victim)
    plant_symlink(victim_folder, parent / "sub.link")
    seconds = "1.5"
    with subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(parent / "sub"), str(parent / "sub.link"), seconds],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as swapper:
        writer = subprocess.run(
            [sys.executable, "-c", _WRITER_LOOP, str(parent / "sub" / "passwd"), seconds],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
        swaps, swapper_errors = swapper.communicate(timeout=60)

    assert 0 == writer.returncode, writer.stderr
    assert 0 == swapper.returncode, swapper_errors
    outcomes = json.loads(writer.stdout)
    assert {"written", "symlink refused"} <= set(outcomes), outcomes
    assert {"written", "symlink refused", f"opening folder {parent / 'sub'}: {RACES}"} >= set(
        outcomes
    )
    assert int(swaps) > 100
    assert before == fingerprint(victim)
    assert {"passwd"} == {p.name for p in victim_folder.iterdir()}
    (real,) = [p for p in parent.iterdir() if stat.S_ISDIR(p.lstat().st_mode)]
    assert ["passwd"] == [p.name for p in real.iterdir()]
    assert (real / "passwd").read_bytes().startswith(b"write ")


@pytest.mark.parametrize(
    ("parent_mode", "link_owner", "followed"),
    [
        pytest.param(0o755, "root", True, id="private-folder"),
        pytest.param(0o1777, "root", True, id="sticky-folder-root-link"),
        pytest.param(0o1777, "attacker", False, id="sticky-folder-attacker-link"),
        pytest.param(0o0777, "root", False, id="open-folder-root-link"),
        pytest.param(0o0777, "attacker", False, id="open-folder-attacker-link"),
    ],
)
def test_symlinked_folder_is_followed_only_where_others_cannot_plant_it(
    arena: Path, parent_mode: int, link_owner: str, followed: bool
) -> None:
    """A symlink on the path is followed as usual, unless others could have planted it there."""
    if link_owner == "attacker" and os.geteuid() != 0:
        pytest.skip("needs root to plant a symlink as another user")
    parent = shared_folder(arena, parent_mode)
    real = arena / "real"
    real.mkdir()
    link = parent / "conf"
    if link_owner == "attacker":
        plant_symlink(real, link)
    else:
        link.symlink_to(real)
    dest = link / "app.conf"

    if followed:
        assert WriteOutcome.WRITTEN == write_file(FileSpec(dest), DATA)
        assert DATA == (real / "app.conf").read_bytes()
        return
    with pytest.raises(WriteError) as raised:
        write_file(FileSpec(dest), DATA)
    assert (
        f"cannot write {dest}: {link} is a symlink in a folder other users can write to: "
        "not followed (write the real folder's path in the config)"
    ) == str(raised.value)
    assert [] == list(real.iterdir())


def test_missing_folder_planted_as_a_symlink_is_refused(arena: Path) -> None:
    """Before the first write the attacker creates the missing folder as a symlink: refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a symlink as another user")
    parent = shared_folder(arena, 0o1777)
    victim_folder = arena / "etc"
    victim = victim_file(arena)
    before = fingerprint(victim)
    plant_symlink(victim_folder, parent / "pgbouncer")

    with pytest.raises(WriteError, match="is a symlink in a folder other users can write to"):
        write_file(FileSpec(parent / "pgbouncer" / "passwd"), DATA)

    assert before == fingerprint(victim)
    assert {"passwd"} == {p.name for p in victim_folder.iterdir()}


# -- the warning ---------------------------------------------------------------


def warnings_of(stderr: str) -> list[dict[str, str]]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "folder.writable_by_others"]


@pytest.mark.parametrize("mode", SHARED_MODES)
def test_destination_folder_writable_by_others_is_warned_once(
    ws: Workspace, arena: Path, mode: int
) -> None:
    """A destination folder others can write to: one warning line naming it, however many files."""
    shared = shared_folder(arena, mode)
    safe = arena / "safe"
    for i in range(3):
        ws.template(f"s{i}.j2", "x\n", destination=str(shared / f"s{i}.conf"))
    ws.template("ok.j2", "x\n", destination=str(safe / "ok.conf"))

    result = ws.run("render", "--once")

    assert 0 == result.returncode, result.stderr
    warnings = warnings_of(result.stderr)
    assert [str(shared)] == [w["folder"] for w in warnings]
    assert "warning" == warnings[0]["level"]
    assert 1 == sum("folder.writable_by_others" in line for line in result.stderr.splitlines())
    dry_run = run_cli("--config", ws.config_path, "render", "--dry-run")
    assert [str(shared)] == [w["folder"] for w in warnings_of(dry_run.stderr)]


@pytest.mark.parametrize(
    ("ancestor_mode", "warned"),
    [(0o0777, True), (0o1777, False), (0o0755, False)],
    ids=["open-ancestor", "sticky-ancestor", "private-ancestor"],
)
def test_folder_above_writable_by_others_is_warned_unless_sticky(
    ws: Workspace, arena: Path, ancestor_mode: int, warned: bool
) -> None:
    """An open folder above the destination lets others swap the folders below it: warned."""
    ancestor = shared_folder(arena, ancestor_mode)
    ws.template("t.j2", "x\n", destination=str(ancestor / "app" / "conf" / "t.conf"))

    result = ws.run("render", "--once")

    assert 0 == result.returncode, result.stderr
    assert ([str(ancestor)] if warned else []) == [w["folder"] for w in warnings_of(result.stderr)]


async def test_warning_is_given_once_per_pipeline_not_once_per_pass(
    ws: Workspace, arena: Path
) -> None:
    """An agent running pass after pass warns about a folder once, not at every pass."""
    from structlog.testing import capture_logs

    from smagent.config import load_config
    from smagent.pipeline import Pipeline
    from smagent.providers import open_providers

    shared = shared_folder(arena, 0o1777)
    ws.template("t.j2", "x\n", destination=str(shared / "t.conf"))
    config = load_config(ws.write())
    async with open_providers(config.providers) as providers:
        pipeline = Pipeline(config, providers)
        with capture_logs() as logs:
            for _ in range(3):
                assert (await pipeline.run()).ok

    warned = [e["folder"] for e in logs if e["event"] == "folder.writable_by_others"]
    assert [str(shared)] == warned
