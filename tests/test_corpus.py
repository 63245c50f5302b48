"""The bad-input corpus: every case in tests/corpus/ run through the real CLI.

For each case (format: tests/corpus/README.md) the CLI runs in a fresh folder and
must give the expected exit code and message, never a Python traceback, never a
canary secret in any form tests/leaks.py knows on stdout or stderr, and change no
file but those the case allows: nothing at all on exit 2, with --dry-run, or for
check/get; on exit 1 the failed template's previous file stays as it was. The
autouse no-leaks fixture then checks every other file the case left in tmp_path.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import leaks
from tests.conftest import CANARY, CANARY_USER
from tests.corpus_harness import (
    CORPUS,
    Case,
    CaseFileError,
    Entry,
    Result,
    Runner,
    SubprocessRunner,
    allowed_changes,
    changed_paths,
    discover,
    load_case,
    make_runner,
    materialize,
    snapshot,
    substitute,
)

CASES = discover()
TRACEBACK = "Traceback (most recent call last)"
_UNREADABLE = object()


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    """One fork server (or subprocess runner) for the whole corpus."""
    made = make_runner()
    yield made
    made.close()


def _explain(case: Case, result: Result, problem: str) -> str:
    return (
        f"{case.id}: {problem}\n  case: {case.description}\n  argv: {' '.join(case.argv)}\n"
        f"  exit: {result.exit}\n"
        f"--- stdout (canaries masked) ---\n{leaks.mask(result.stdout)[-3000:]}\n"
        f"--- stderr (canaries masked) ---\n{leaks.mask(result.stderr)[-3000:]}"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_corpus_case(
    case: Case, runner: Runner, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The case's exit code and message; no traceback, no leak, no write it does not allow."""
    if case.pending:  # a defect being fixed on another branch: report, do not fail, for now
        request.applymarker(pytest.mark.xfail(reason=f"pending: {case.pending}", strict=False))
    root = materialize(case, tmp_path / "ws")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _allow_planted_secrets(root)
    before = snapshot(root)
    result = runner.run(case, root, scratch)
    leaks.STATS["subprocess outputs"] += 1
    after = snapshot(root)
    leaks.allow_secrets_in(*(root / path for path in (*case.written, *case.may_write)))
    if case.pending:  # its wrong writes are this case's expected failure, not a teardown error
        _allow_planted_secrets(root)
    _check(case, result, root, before, after)


def _allow_planted_secrets(root: Path) -> None:
    """Files that hold a canary now (the case's secrets, old destinations) may keep it;
    tests/leaks.py then checks every other file under tmp_path after the test."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            regular = path.is_file() and not path.is_symlink()
            if regular and leaks.find_leaks(path.read_bytes(), str(path)):
                leaks.allow_secrets_in(path)


def _check(
    case: Case, result: Result, root: Path, before: dict[str, Entry], after: dict[str, Entry]
) -> None:
    """Every rule of the module docstring; a failure quotes the output with canaries masked.

    `pytest.fail` rather than `assert`: pytest's assertion rewriting would print the raw
    output it compared, canaries included.
    """
    output = result.stdout + result.stderr

    def fail_if(failed: bool, problem: str) -> None:
        if failed:
            pytest.fail(_explain(case, result, problem), pytrace=False)

    fail_if(result.timed_out, f"no exit within {case.timeout:g}s")
    fail_if(TRACEBACK in output, "a Python traceback")
    leaked = leaks.find_leaks(output, "the output")
    fail_if(bool(leaked), f"a secret leaked: {', '.join(map(str, leaked))}")
    expected = " or ".join(map(str, sorted(case.exits)))
    fail_if(result.exit not in case.exits, f"exit {result.exit}, expected {expected}")
    if result.exit != 0:
        logs = result.log_text()
        for fragment in case.stderr_contains:
            fail_if(fragment not in logs, f"stderr lacks {fragment!r}")
        for fragment in case.stdout_contains:
            fail_if(fragment not in result.stdout, f"stdout lacks {fragment!r}")
    for fragment in case.output_lacks:
        fail_if(fragment in output, f"output holds {fragment!r}")

    changed = changed_paths(before, after)
    unexpected = sorted(changed - allowed_changes((*case.written, *case.may_write)))
    fail_if(bool(unexpected), f"unexpected writes: {unexpected}")
    missing = sorted(p for p in case.written if p not in changed)
    fail_if(bool(missing), f"not written: {missing}")
    for path, want in case.yaml_equals.items():
        if path in changed and (root / path).exists():
            try:
                got = yaml.safe_load((root / path).read_text(encoding="utf-8"))
            except yaml.YAMLError:  # its message quotes the line, which holds the value
                got = _UNREADABLE
            fail_if(got is _UNREADABLE, f"{path} was written but is not valid YAML")
            fail_if(_substitute_tree(want) != got, f"{path} does not read back as expected")


def _substitute_tree(data: object) -> object:
    if isinstance(data, str):
        return substitute(data.encode()).decode()
    if isinstance(data, dict):
        return {_substitute_tree(k): _substitute_tree(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_tree(v) for v in data]
    return data


# --- the corpus itself ---------------------------------------------------------------------------


def test_corpus_is_large_and_covers_every_category() -> None:
    """At least 100 cases, and every category folder holds some."""
    counts = Counter(case.category for case in CASES)
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders == set(counts)
    assert len(CASES) >= 100, counts


def test_case_files_are_validated(tmp_path: Path) -> None:
    """A case with an unknown key, or a failure with no message to check, is refused."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("description: d\ncommand: [check]\nexit: 2\nstderr_contain: x\n")
    with pytest.raises(CaseFileError, match="stderr_contain"):
        load_case(typo, tmp_path)
    silent = tmp_path / "silent.yaml"
    silent.write_text("description: d\ncommand: [check]\nexit: 2\n")
    with pytest.raises(CaseFileError, match="needs stderr_contains"):
        load_case(silent, tmp_path)


# --- the checks themselves can fail --------------------------------------------------------------


def _synthetic(tmp_path: Path, text: str) -> Case:
    path = tmp_path / "cases" / "synthetic" / "case.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_case(path, tmp_path / "cases")


RENDER_FAILS = (
    "description: d\ncommand: [render, --once]\nexit: 1\nstderr_contains: [t.j2:1]\n"
    "existing: {out/t: old}\n"
)


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (Result(1, "", "t.j2:1\nTraceback (most recent call last):\n"), "a Python traceback"),
        (Result(1, "", f"t.j2:1 {CANARY.upper()}"), "CANARY (as is, upper-case)"),
        (Result(1, base64.b64encode(CANARY_USER.encode()).decode(), "t.j2:1"), "USER (base64)"),
        (Result(2, "", "t.j2:1"), "exit 2, expected 1"),
        (Result(1, "", "t.j2:2"), "stderr lacks 't.j2:1'"),
        (Result(1, "", "t.j2:1", timed_out=True), "no exit within 20s"),
    ],
)
def test_checker_refuses_bad_outcomes(tmp_path: Path, result: Result, problem: str) -> None:
    """A traceback, a leak, a wrong exit code or message, a hang: each fails the case."""
    case = _synthetic(tmp_path, RENDER_FAILS)
    root = materialize(case, tmp_path / "ws")
    _allow_planted_secrets(root)
    state = snapshot(root)
    with pytest.raises(pytest.fail.Exception) as failed:
        _check(case, result, root, state, state)
    assert problem in str(failed.value)
    assert [] == leaks.find_leaks(str(failed.value), "the failure text")


def test_checker_refuses_a_changed_file_and_a_new_one(tmp_path: Path) -> None:
    """The failed template's old file rewritten, or any file not allowed created, fails the case."""
    case = _synthetic(tmp_path, RENDER_FAILS)
    root = materialize(case, tmp_path / "ws")
    _allow_planted_secrets(root)
    before = snapshot(root)
    (root / "out" / "t").write_text("new")
    (root / "stray").write_text("x")
    with pytest.raises(pytest.fail.Exception, match=r"unexpected writes: \['out/t', 'stray'\]"):
        _check(case, Result(1, "", "t.j2:1"), root, before, snapshot(root))


def test_checker_refuses_yaml_that_reads_back_wrong(tmp_path: Path) -> None:
    """A written file that does not parse, or parses to other data, fails the case."""
    case = _synthetic(
        tmp_path,
        "description: d\ncommand: [render, --once]\nexit: 0\nwritten: [out/c]\n"
        "yaml_equals: {out/c: {password: '@CANARY@'}}\n",
    )
    root = materialize(case, tmp_path / "ws")
    _allow_planted_secrets(root)
    leaks.allow_secrets_in(root / "out" / "c")
    before = snapshot(root)
    (root / "out").mkdir()
    for text, problem in (
        (f'password: "{CANARY}\n', "is not valid YAML"),
        (f"password: {CANARY}x\n", "does not read back as expected"),
    ):
        (root / "out" / "c").write_text(text)
        with pytest.raises(pytest.fail.Exception, match=problem) as failed:
            _check(case, Result(0, "", ""), root, before, snapshot(root))
        assert CANARY not in str(failed.value)


AGREEMENT_SAMPLE = (
    "config-syntax/duplicate-top-key",
    "config-schema/many-errors-reported-at-once",
    "templates/undefined-variable",
    "secrets/a-fifo",
    "get/missing-key",
    "leaks/dry-run-prints-line-numbers-only",
    "arcion/replicant-connection-file",
    "cli/unknown-command",
)


def _normalized(result: Result, root: Path) -> str:
    """Exit code, stdout and log lines with the folder, times and durations taken out.

    Canaries are masked too: a mismatch is printed, and must not print a leak.
    """
    lines: list[object] = [result.exit, result.stdout.replace(str(root), "<ROOT>")]
    for line in result.stderr.replace(str(root), "<ROOT>").splitlines():
        event = json.loads(line) if line.startswith("{") else line
        if isinstance(event, dict):
            event = {k: v for k, v in event.items() if k not in ("timestamp", "ms")}
        lines.append(event)
    return leaks.mask(json.dumps(lines, indent=1))


@pytest.mark.parametrize("case_id", AGREEMENT_SAMPLE)
def test_fork_runner_matches_a_real_process(case_id: str, runner: Runner, tmp_path: Path) -> None:
    """A case run in a forked child gives what the real `smagent` script gives, line for line."""
    case = next(case for case in CASES if case.id == case_id)
    outcomes = []
    for name, run in (("fork", runner), ("process", SubprocessRunner())):
        root = materialize(case, tmp_path / name / "ws")
        _allow_planted_secrets(root)
        leaks.allow_secrets_in(*(root / path for path in (*case.written, *case.may_write)))
        (tmp_path / name / "scratch").mkdir()
        outcomes.append(_normalized(run.run(case, root, tmp_path / name / "scratch"), root))
    forked, real = outcomes
    assert real == forked
