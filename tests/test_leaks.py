"""The "No leaks" suite checks itself: each form and each channel of a planted leak is caught.

The checker is tested directly (every canary in every form), then the whole
fixture is run on a small test file in a child pytest: one test per channel
that leaks on purpose, each must fail, and the allowed places must not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import leaks
from tests.conftest import CANARIES, CANARY, CANARY_TOKEN, REPO, run_cli


def _forms() -> list[tuple[str, str, str, str]]:
    """(canary, transform, form, the transform reported): two transforms may give one text
    (a value with nothing to URL-encode), which is then reported under the first."""
    forms = []
    for name, value in leaks.canaries().items():
        owner: dict[str, tuple[str, str]] = {}
        for transform, make in leaks.TRANSFORMS.items():
            for form in make(value):
                first = owner.setdefault(form.lower(), (transform, form))
                forms.append((name, transform, form, first[0]))
    return forms


FORMS = [form for form in _forms() if leaks.canaries()[form[0]] in CANARIES]


@pytest.mark.parametrize(
    ("name", "transform", "form", "reported"),
    FORMS,
    ids=[f"{n}-{t}-{i}" for i, (n, t, _, _) in enumerate(FORMS)],
)
@pytest.mark.parametrize(
    "case", [str.lower, str.upper, lambda text: text], ids=["lower", "upper", "same"]
)
def test_every_form_of_every_canary_is_found(
    name: str, transform: str, form: str, reported: str, case: Callable[[str], str]
) -> None:
    """A canary in any listed form and letter case, inside other text, is reported and masked."""
    text = f"before {case(form)} after"

    found = leaks.find_leaks(text, "a log line")

    assert (name, reported) in {(leak.canary, leak.transform) for leak in found}
    assert [] == leaks.find_leaks(leaks.mask(text), "masked")


@pytest.mark.parametrize(
    ("shown", "case"),
    [(CANARY, ""), (CANARY.upper(), "upper-case"), (CANARY.lower(), "lower-case"),
     (CANARY.swapcase(), "mixed case")],
)  # fmt: skip
def test_the_letter_case_of_a_leak_is_named(shown: str, case: str) -> None:
    """A leak says whether it was found as written, in upper, lower or mixed case."""
    assert [leaks.Leak("CANARY", "as is", "x", case)] == [
        leak for leak in leaks.find_leaks(shown, "x") if leak.transform == "as is"
    ]


def test_the_suite_has_the_forms_the_issue_names() -> None:
    """Upper, lower, reversed, base64 and URL-encoded forms (at least) are all searched for."""
    value = CANARY_TOKEN
    encoded = __import__("base64").b64encode(("xx" + value).encode()).decode()
    texts = {
        "upper-case": value.upper(),
        "lower-case": value.lower(),
        "reversed": value[::-1],
        "base64": encoded,
        "URL-encoded": __import__("urllib.parse").parse.quote(value, safe=""),
    }
    for label, text in texts.items():
        assert leaks.find_leaks(text, label), label
    assert 5 == len(texts)


def test_ordinary_text_is_not_a_leak() -> None:
    """Names of canaries, <redacted>, and unrelated text raise nothing."""
    text = "CANARY CANARY_USER canary <redacted> password=******** user=app host=db"
    assert [] == leaks.find_leaks(text, "a log line")


def test_a_canary_deep_in_a_big_text_is_found_in_every_form() -> None:
    """Past 1 MB the search skips needles by their letters; a planted form is still found."""
    filler = "o" * 3_000_000
    for shown in (CANARY, CANARY.upper(), CANARY[::-1]):
        found = leaks.find_leaks(f"{filler}{shown}{filler}", "a big file")
        assert ["CANARY"] == sorted({leak.canary for leak in found}), shown
    assert [] == leaks.find_leaks(filler, "a big file")


def test_files_are_checked_except_the_allowed_ones(tmp_path: Path) -> None:
    """A file holding a canary is a leak unless allowed; FIFOs and symlinks are never opened."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "creds").write_text(f"password={CANARY}\n")
    (tmp_path / "out" / ".creds.tmp-123").write_text(f"password={CANARY}\n")
    os.mkfifo(tmp_path / "out" / "pipe")
    (tmp_path / "out" / "link").symlink_to("/dev/zero")
    leaks.allow_secrets_in(tmp_path / "out" / "creds")

    found = leaks.files_with_leaks(tmp_path)

    assert [leaks.Leak("CANARY", "as is", "file out/.creds.tmp-123")] == [
        leak for leak in found if leak.transform == "as is"
    ]
    (tmp_path / "out" / ".creds.tmp-123").unlink()  # planted for this test only


INNER_TESTS = """
import base64, logging, os, subprocess, urllib.parse
import structlog
from tests.conftest import (
    CANARY, CANARY_ENV_NAME, CANARY_FILE, CANARY_TOKEN, CANARY_USER, Workspace, run_cli
)


def test_stdout_leaks():
    print("password:", CANARY)


def test_stderr_upper_leaks():
    import sys
    sys.stderr.write(CANARY.upper())


def test_fd2_base64_leaks():
    os.write(2, base64.b64encode(b"Basic user:" + CANARY_USER.encode()))


def test_child_process_output_leaks():
    subprocess.run(["sh", "-c", f'printf %s "${CANARY_ENV_NAME}"'], check=True)


def test_log_record_leaks():
    logging.getLogger("some.library").warning("retrying with %s", CANARY[::-1])


def test_structlog_event_leaks():
    structlog.get_logger().info("login", password=CANARY_USER)


def test_file_in_tmp_path_leaks(tmp_path):
    (tmp_path / "debug.log").write_text(urllib.parse.quote(CANARY_TOKEN, safe=""))


def test_leftover_temp_file_next_to_a_destination_leaks(tmp_path):
    ws = Workspace(tmp_path)
    dest = ws.template("creds.j2", "{{ secrets.x }}")
    dest.parent.mkdir()
    dest.write_text(CANARY)
    (dest.parent / ".creds.tmp").write_text(CANARY)


def test_exception_text_leaks():
    raise RuntimeError(f"cannot parse {CANARY!r}")


def test_secrets_file_and_destination_are_allowed(tmp_path):
    ws = Workspace(tmp_path)
    ws.secrets = {"db": {"password": CANARY}}
    ws.namespaces = {"db": {"provider": "local", "secret": "db"}}
    dest = ws.template("creds.j2", "{{ secrets.db.password }}")
    assert 0 == ws.run("render", "--once").returncode
    assert CANARY == dest.read_text()
    assert CANARY_FILE in (tmp_path / "secrets.yaml").read_text()


def test_get_reveal_stdout_is_allowed(tmp_path):
    ws = Workspace(tmp_path)
    ws.secrets = {"db": {"password": CANARY}}
    ws.namespaces = {"db": {"provider": "local", "secret": "db"}}
    assert CANARY + "\\n" == ws.run("get", "db/password", "--reveal").stdout


def test_clean_test_passes():
    print("nothing secret here: <redacted>")
"""

EXPECTED = {
    "test_stdout_leaks": ("error", "CANARY (as is) in stdout"),
    "test_stderr_upper_leaks": ("error", "CANARY (as is, upper-case) in stderr"),
    "test_fd2_base64_leaks": ("error", "CANARY_USER (base64) in stderr"),
    "test_child_process_output_leaks": ("error", "CANARY_ENV (as is) in stdout"),
    "test_log_record_leaks": ("error", "CANARY (reversed) in log record some.library:WARNING"),
    "test_structlog_event_leaks": ("error", "CANARY_USER (as is) in stdout"),
    "test_file_in_tmp_path_leaks": ("error", "CANARY_TOKEN (URL-encoded) in file debug.log"),
    "test_leftover_temp_file_next_to_a_destination_leaks": (
        "error",
        "CANARY (as is) in file out/.creds.tmp",
    ),
    "test_exception_text_leaks": (
        "failure",
        "[no-leaks] an exception raised by the code under test held a canary",
    ),
    "test_secrets_file_and_destination_are_allowed": ("passed", ""),
    "test_get_reveal_stdout_is_allowed": ("passed", ""),
    "test_clean_test_passes": ("passed", ""),
}


def test_the_fixture_fails_every_planted_leak_and_only_those(tmp_path: Path) -> None:
    """In a child pytest, each test leaking through one channel fails; the allowed ones pass."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(
        "from tests.conftest import _no_leaks, pytest_runtest_makereport  # noqa: F401\n"
    )
    (inner / "test_planted.py").write_text(INNER_TESTS)
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         f"--basetemp={tmp_path / 'base'}", "-o", "asyncio_default_fixture_loop_scope=function",
         str(inner)],
        capture_output=True, text=True, cwd=inner, env=env, timeout=120, check=False,
    )  # fmt: skip
    try:
        outcomes = _outcomes(report)
        assert EXPECTED.keys() == outcomes.keys(), child.stdout[-2000:]
        for name, (kind, words) in EXPECTED.items():
            assert kind == outcomes[name][0], f"{name}: {outcomes[name][1][-500:]}"
            assert words in outcomes[name][1], f"{name}: {outcomes[name][1][-500:]}"
        # the report of a leak is itself masked: pytest's whole output holds no canary
        leaks.assert_no_leak(child.stdout + child.stderr, "the child pytest's output")
        assert "<CANARY as is>" in child.stdout
    finally:
        shutil.rmtree(tmp_path / "base")  # the leaks planted there on purpose (report.xml stays)


def _outcomes(report: Path) -> dict[str | None, tuple[str, str]]:
    """Per test of a JUnit XML report: passed / error / failure, and the problem's text."""
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - our own report
        problems = [child for child in case if child.tag in ("error", "failure")]
        kind = problems[0].tag if problems else "passed"
        text = "".join(p.get("message", "") + (p.text or "") for p in problems)
        outcomes[case.get("name")] = (kind, text)
    return outcomes


def test_run_cli_checks_the_output_of_every_smagent_run(tmp_path: Path) -> None:
    """run_cli fails a run whose stderr holds a canary (here: one typed on the command line)."""
    with pytest.raises(AssertionError) as info:
        run_cli("--config", tmp_path / f"{CANARY}.yaml", "check")
    assert "CANARY (as is) in stderr of smagent --config" in str(info.value)
    assert CANARY not in str(info.value)
