"""The bad-input corpus: case files, the workspace each case runs in, and two runners.

A case is `tests/corpus/CATEGORY/NAME.yaml` (files inline) or a folder
`tests/corpus/CATEGORY/NAME/` holding `case.yaml` plus the files themselves; the
format is in tests/corpus/README.md. The case file is validated strictly, as our
own config is: a typo in a case must not quietly weaken what it checks.

Cases run through `ForkRunner` (a warm interpreter forks one child per case; see
corpus_zygote.py) or, with SMAGENT_CORPUS_RUNNER=subprocess, through
`SubprocessRunner` (the venv's `smagent` script, one process per case). Both give
the child the same clean environment, working folder, memory cap and time limit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import resource
import select
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import msgspec
import yaml

from tests.conftest import CANARY, CANARY_ENV, CANARY_ENV_NAME, CANARY_FILE, CANARY_USER

CORPUS = Path(__file__).resolve().parent / "corpus"
ZYGOTE = Path(__file__).resolve().parent / "corpus_zygote.py"
CASE_FILE = "case.yaml"
MEMORY_CAP = 2 << 30
"""Address-space cap per case: a YAML bomb that escapes its bounds fails, not the host."""

PLACEHOLDERS = {
    b"@CANARY@": CANARY.encode(),
    b"@CANARY_USER@": CANARY_USER.encode(),
    b"@CANARY_FILE@": CANARY_FILE.encode(),
}
"""Case files write the canaries as placeholders, so no canary literal sits in the corpus."""

NO_WRITE_COMMANDS = ("check", "get", "test-connection")
VALUE_OPTIONS = ("--config", "--log-format", "--log-level")

_BLOB = base64.b64encode(CANARY.encode() + bytes([0, 255])).decode()
DEFAULT_SECRETS = f"""\
prod/db:
  username: "@CANARY_USER@"
  password: "@CANARY@"
  host: db.internal
  port: 5432
  nested: {{deep: {{value: leaf-1234}}}}
  list: [item-0, item-1]
api-token: "@CANARY@-token"
plain: just-text
blob: !!binary {_BLOB}
unused: "@CANARY_FILE@"
"""
"""The secrets every case has unless it writes its own `secrets.yaml`."""

DEFAULT_CONFIG = """\
providers:
  local: {type: file, path: secrets.yaml}
  environment: {type: env}
namespaces:
  db: {provider: local, secret: prod/db}
  store: {provider: local}
templates:
  - {source: templates/t.j2, destination: out/t}
  - {name: good, contents: "user={{ secrets.db.username }}\\n", destination: out/good}
"""
"""The config every case has unless it writes its own `smagent.yaml`."""


# --- the case file ---------------------------------------------------------------------------


class _CaseFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    description: str
    command: list[str]
    exit: int | list[int]
    stderr_contains: str | list[str] = []
    stdout_contains: str | list[str] = []
    output_lacks: str | list[str] = []
    files: dict[str, Any] = {}
    existing: dict[str, str] = {}
    written: list[str] = []
    may_write: list[str] = []
    yaml_equals: dict[str, Any] = {}
    env: dict[str, str] = {}
    timeout: float = 20.0
    pending: str | None = None


@dataclass(frozen=True)
class Special:
    """A file-system entry that is not a regular file with content."""

    kind: str  # fifo | folder | symlink | hardlink | absent
    target: str = ""


@dataclass(frozen=True)
class Case:
    id: str
    source: Path
    description: str
    argv: tuple[str, ...]
    exits: frozenset[int]
    stderr_contains: tuple[str, ...]
    stdout_contains: tuple[str, ...]
    output_lacks: tuple[str, ...]
    files: dict[str, bytes | Special] = field(repr=False)  # canaries planted: never printed
    existing: dict[str, bytes] = field(repr=False)
    written: tuple[str, ...]
    may_write: tuple[str, ...]
    yaml_equals: dict[str, Any]
    env: dict[str, str]
    timeout: float
    pending: str | None
    category: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", self.id.split("/", 1)[0])

    @property
    def writes_nothing(self) -> bool:
        """Commands (and exit codes) after which no file may have changed."""
        return self.exits == {2} or "--dry-run" in self.argv or self.command in NO_WRITE_COMMANDS

    @property
    def command(self) -> str:
        """The smagent command in argv, past the global options and their values."""
        args = iter(self.argv)
        for arg in args:
            if arg in VALUE_OPTIONS:
                next(args, None)
            elif not arg.startswith("-"):
                return arg
        return ""


class CaseFileError(ValueError):
    """A case file that does not follow tests/corpus/README.md."""


def discover(root: Path = CORPUS) -> list[Case]:
    """Every case under `root`, sorted by id."""
    return [
        load_case(path, root)
        for path in sorted(root.rglob("*.yaml"))
        if path.name == CASE_FILE or not _inside_folder_case(path, root)
    ]


def _inside_folder_case(path: Path, root: Path) -> bool:
    """A file of a folder case (`NAME/case.yaml` beside it or above it), not a case itself."""
    return any(
        (folder / CASE_FILE).exists()
        for folder in path.parents
        if folder != root and folder.is_relative_to(root)
    )


def load_case(path: Path, root: Path = CORPUS) -> Case:
    folder_case = path.name == CASE_FILE
    case_id = str((path.parent if folder_case else path.with_suffix("")).relative_to(root))
    try:
        raw = msgspec.convert(yaml.safe_load(path.read_text(encoding="utf-8")), _CaseFile)
    except (msgspec.ValidationError, yaml.YAMLError) as exc:
        raise CaseFileError(f"{path}: {exc}") from None
    files: dict[str, bytes | Special] = {}
    if folder_case:
        for item in sorted(path.parent.rglob("*")):
            if item.is_file() and item != path:
                files[str(item.relative_to(path.parent))] = substitute(item.read_bytes())
    for name, spec in raw.files.items():
        files[name] = _content(spec, f"{path}: files.{name}")
    argv = tuple(raw.command)
    if "--config" not in argv and "SMAGENT_CONFIG" not in raw.env:
        argv = ("--config", "smagent.yaml", *argv)
    case = Case(
        id=case_id,
        source=path,
        description=raw.description,
        argv=argv,
        exits=frozenset([raw.exit] if isinstance(raw.exit, int) else raw.exit),
        stderr_contains=_strings(raw.stderr_contains),
        stdout_contains=_strings(raw.stdout_contains),
        output_lacks=_strings(raw.output_lacks),
        files=files,
        existing={k: substitute(v.encode()) for k, v in raw.existing.items()},
        written=tuple(raw.written),
        may_write=tuple(raw.may_write),
        yaml_equals=raw.yaml_equals,
        env={k: substitute(v.encode()).decode() for k, v in raw.env.items()},
        timeout=raw.timeout,
        pending=raw.pending,
    )
    _validate(case)
    return case


def _validate(case: Case) -> None:
    where = case.source
    if case.exits - {0, 1} and not (case.stderr_contains or case.stdout_contains):
        raise CaseFileError(f"{where}: a failing case needs stderr_contains or stdout_contains")
    if case.writes_nothing and (case.written or case.may_write):
        raise CaseFileError(f"{where}: this command writes nothing; drop written/may_write")
    if set(case.yaml_equals) - {*case.written, *case.may_write}:
        raise CaseFileError(f"{where}: yaml_equals names a path not in written/may_write")


def _strings(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def substitute(data: bytes) -> bytes:
    for placeholder, value in PLACEHOLDERS.items():
        data = data.replace(placeholder, value)
    return data


def _content(spec: object, where: str) -> bytes | Special:
    """A file's content: text, a list of pieces joined, or one special form (README)."""
    if isinstance(spec, str):
        return substitute(spec.encode())
    if isinstance(spec, list):
        pieces = [_content(piece, where) for piece in spec]
        if not all(isinstance(p, bytes) for p in pieces):
            raise CaseFileError(f"{where}: a list joins text pieces only")
        return b"".join(cast(list[bytes], pieces))
    if isinstance(spec, dict) and len(spec) >= 1:
        if spec.keys() == {"text", "repeat"}:
            return substitute(str(spec["text"]).encode()) * int(spec["repeat"])
        if spec.keys() == {"base64"}:
            return substitute(base64.b64decode(spec["base64"]))
        if spec.keys() == {"fifo"} or spec.keys() == {"folder"} or spec.keys() == {"absent"}:
            return Special(next(iter(spec)))
        if spec.keys() == {"symlink"} or spec.keys() == {"hardlink"}:
            kind = next(iter(spec))
            return Special(kind, str(spec[kind]))
    raise CaseFileError(f"{where}: unknown content form {spec!r}")


# --- the workspace -----------------------------------------------------------------------------


def materialize(case: Case, root: Path) -> Path:
    """The case's files in `root` (the child's working folder), defaults filled in."""
    root.mkdir(parents=True)
    files: dict[str, bytes | Special] = {
        "smagent.yaml": substitute(DEFAULT_CONFIG.encode()),
        "secrets.yaml": substitute(DEFAULT_SECRETS.encode()),
        **case.files,
    }
    links = []
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content.kind == "fifo":
            os.mkfifo(path)
        elif content.kind == "folder":
            path.mkdir(exist_ok=True)
        elif content.kind in ("symlink", "hardlink"):
            links.append((path, content))
    for path, content in links:  # after every file, so a link may point at any of them
        if content.kind == "symlink":
            path.symlink_to(content.target)
        else:
            path.hardlink_to(root / content.target)
    for name, data in case.existing.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)
    return root


Entry = tuple[Any, ...]


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry under `root` with what a write would change (FIFOs are never opened)."""
    entries: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
                entries[rel] = ("file", info.st_mode, info.st_ino, info.st_mtime_ns, digest)
            elif stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", os.readlink(path))
            else:
                entries[rel] = ("other", info.st_mode)
    return entries


def changed_paths(before: dict[str, Entry], after: dict[str, Entry]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def allowed_changes(paths: tuple[str, ...]) -> set[str]:
    """The paths themselves and the folders a writer may create for them."""
    allowed = set()
    for path in paths:
        allowed.add(os.path.normpath(path))
        parent = os.path.dirname(os.path.normpath(path))
        while parent:
            allowed.add(parent)
            parent = os.path.dirname(parent)
    return allowed


# --- running a case ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    exit: int
    stdout: str = field(repr=False)  # a failing test's report must not print a leak
    stderr: str = field(repr=False)
    timed_out: bool = False

    def log_text(self) -> str:
        """stderr, plus the string fields of its JSON log lines decoded (quotes unescaped)."""
        texts = [self.stderr]
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    texts.extend(_strings_in(json.loads(line)))
        return "\n".join(texts)


def _strings_in(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for v in data.values() for s in _strings_in(v)]
    if isinstance(data, list):
        return [s for v in data for s in _strings_in(v)]
    return []


def child_env(case: Case, root: Path) -> dict[str, str]:
    """A small, fixed environment: nothing of the test run's own leaks into a case."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(root),
        CANARY_ENV_NAME: CANARY_ENV,  # the env provider holds a canary too
        **case.env,
    }


class Runner(Protocol):
    def run(self, case: Case, root: Path, scratch: Path) -> Result: ...

    def close(self) -> None: ...


def _read(path: Path) -> str:
    """The text of a captured stream; the file goes (it may hold a leak that the case reports)."""
    text = path.read_bytes().decode("utf-8", "replace")
    path.unlink()
    return text


class ForkRunner:
    """Cases in children forked from one warm interpreter (corpus_zygote.py)."""

    def __init__(self) -> None:
        self._proc = self._start()

    @staticmethod
    def _start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            cwd="/",
        )

    def run(self, case: Case, root: Path, scratch: Path) -> Result:
        if self._proc.poll() is not None:  # it died with an earlier case: that one failed
            self._proc = self._start()
        out, err = scratch / "stdout", scratch / "stderr"
        request = {
            "argv": list(case.argv),
            "cwd": str(root),
            "env": child_env(case, root),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": case.timeout,
            "memory": MEMORY_CAP,
        }
        stdin, stdout = cast(IO[str], self._proc.stdin), cast(IO[str], self._proc.stdout)
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the corpus fork server died (exit {self._proc.wait()})")
        reply = json.loads(line)
        return Result(reply["exit"], _read(out), _read(err), reply["timed_out"])

    def close(self) -> None:
        cast(IO[str], self._proc.stdin).close()
        self._proc.wait(timeout=30)
        cast(IO[str], self._proc.stdout).close()


class SubprocessRunner:
    """Each case as its own `smagent` process: slower, and exactly what users run."""

    def __init__(self) -> None:
        script = Path(sys.executable).parent / "smagent"
        self.command = [str(script)] if script.exists() else [sys.executable, "-m", "smagent"]

    def run(self, case: Case, root: Path, scratch: Path) -> Result:
        out, err = scratch / "stdout", scratch / "stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [*self.command, *case.argv],
                cwd=root,
                env=child_env(case, root),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_cap_memory,
            )
        pidfd = os.pidfd_open(proc.pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], case.timeout)
        finally:
            os.close(pidfd)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet: the group id is still ours
        code = proc.wait()
        return Result(code, _read(out), _read(err), not ready)

    def close(self) -> None:
        return None


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def make_runner() -> Runner:
    kind = os.environ.get("SMAGENT_CORPUS_RUNNER", "fork")
    if kind == "subprocess":
        return SubprocessRunner()
    if kind == "fork":
        return ForkRunner()
    raise ValueError(f"SMAGENT_CORPUS_RUNNER must be fork or subprocess, not {kind!r}")


def figures(cases: list[Case]) -> str:
    """The corpus in numbers, for README's Reliability section."""
    by_category: dict[str, int] = {}
    for case in cases:
        by_category[case.category] = by_category.get(case.category, 0) + 1
    by_exit = {code: sum(code in case.exits for case in cases) for code in (0, 1, 2)}
    pending = sum(case.pending is not None for case in cases)
    lines = [f"bad-input corpus: {len(cases)} cases, {pending} pending"]
    lines += [f"  {name:<14} {count:>4}" for name, count in sorted(by_category.items())]
    lines.append("  expecting exit " + ", ".join(f"{c}: {n}" for c, n in by_exit.items()))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.corpus_harness
    print(figures(discover()))
