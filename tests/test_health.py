"""The status file: its JSON form, what is refused, the atomic 0600 write, the scrub on write."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from smagent.health import (
    AgentStatus,
    StatusUnreadable,
    TemplateHealth,
    read_status,
    scrubbed,
    write_status,
)
from smagent.logging import REDACTED, REDACTOR
from tests import leaks
from tests.health_samples import troubled

CANARY_AGENT = leaks.plant("canary-agent-error-Vb63-secret", "CANARY_AGENT")
"""A value only the agent's (this process's) redactor knows: it reaches write_status in an
error message, as a slip in the agent's wording would put it there."""


def test_status_round_trips_through_json() -> None:
    """Every field survives to_json / from_json."""
    status = troubled()
    assert status == AgentStatus.from_json(status.to_json())


def test_unknown_keys_are_ignored() -> None:
    """A newer agent's extra keys (top level and nested) do not stop an older reader."""
    data = json.loads(troubled().to_json())
    data["added_later"] = {"x": 1}
    data["templates"][0]["added_later"] = [1, 2]
    status = AgentStatus.from_json(json.dumps(data).encode())
    assert "userlist" == status.templates[0].name


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda d: d.pop("pid"), "missing required field `pid`", id="missing-field"),
        pytest.param(lambda d: d.update(pid="12"), "Expected `int`", id="wrong-type"),
        pytest.param(lambda d: d.update(pid=0), "pid: expected a process id", id="pid-0"),
        pytest.param(lambda d: d.update(pid=-1), "pid: expected a process id", id="pid-negative"),
        pytest.param(lambda d: d.update(heartbeat_s=0), "heartbeat_s", id="heartbeat-0"),
        pytest.param(
            lambda d: d["templates"][0].update(state="fine"),
            "template.state: expected one of ok, failing, pending",
            id="template-state",
        ),
        pytest.param(
            lambda d: d["providers"][0].update(state="down"),
            "provider.state: expected one of ok, unavailable",
            id="provider-state",
        ),
        pytest.param(lambda d: d.update(templates={}), "Expected `array`", id="templates-object"),
    ],
)
def test_a_status_that_does_not_fit_raises_value_error(change: object, expected: str) -> None:
    """A field missing, of the wrong type or out of range is a ValueError naming it."""
    data = json.loads(troubled().to_json())
    change(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"(?i)" + expected.replace("`", ".")):
        AgentStatus.from_json(json.dumps(data).encode())


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"\xff\xfe"], ids=repr)
def test_not_json_raises_value_error(data: bytes) -> None:
    """Text that is not a JSON object is a ValueError, not a crash."""
    with pytest.raises(ValueError):  # noqa: PT011 - any of msgspec's messages will do
        AgentStatus.from_json(data)


def test_write_status_is_atomic_private_and_scrubbed(tmp_path: Path) -> None:
    """write_status leaves one 0600 file, readable back, with a known value masked in errors."""
    REDACTOR.add(CANARY_AGENT)
    status = troubled()
    status.templates[1].error = f"aws-prod rejected {CANARY_AGENT}: bad"
    status.config_error = f"line 3: {CANARY_AGENT}"
    status.pending_actions[0].last_error = f"exit 1: {CANARY_AGENT}"
    status.providers[0].last_error = f"{CANARY_AGENT} refused"
    path = tmp_path / "state" / "status.json"
    write_status(path, status)
    write_status(path, status)  # replaced, not appended, no temporary file left
    assert ["status.json"] == [p.name for p in path.parent.iterdir()]
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    back = read_status(path)
    assert back is not None
    assert f"aws-prod rejected {REDACTED}: bad" == back.templates[1].error
    assert f"line 3: {REDACTED}" == back.config_error
    assert f"exit 1: {REDACTED}" == back.pending_actions[0].last_error
    assert f"{REDACTED} refused" == back.providers[0].last_error
    assert status.templates[0] == back.templates[0]  # names and numbers kept as they are
    leaks.assert_no_leak(path.read_bytes(), "status.json")


def test_scrubbed_leaves_the_original_untouched() -> None:
    """scrubbed() returns a copy: the agent's own record keeps its text."""
    status = troubled()
    copy = scrubbed(status, lambda text: "x")
    assert ("x", "aws-prod unavailable: no answer within 10s (fetch_timeout)") == (
        copy.templates[1].error,
        status.templates[1].error,
    )


def test_read_status_of_no_file_is_none(tmp_path: Path) -> None:
    """No file (or no folder) means no agent has written one: None, not an error."""
    assert None is read_status(tmp_path / "status.json")
    assert None is read_status(tmp_path / "missing" / "status.json")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda p: p.mkdir(), "not a regular file", id="folder"),
        pytest.param(lambda p: p.write_text("{oops"), "not an smagent status file", id="garbage"),
        pytest.param(
            lambda p: p.write_text('{"pid": 1}'), "missing required field", id="incomplete"
        ),
    ],
)
def test_read_status_of_something_else_names_the_file(
    tmp_path: Path, make: object, expected: str
) -> None:
    """A status path holding anything but a status is StatusUnreadable naming the path."""
    path = tmp_path / "status.json"
    make(path)  # type: ignore[operator]
    with pytest.raises(StatusUnreadable, match=expected) as caught:
        read_status(path)
    assert str(path) in str(caught.value)


def test_template_state_is_checked_when_built() -> None:
    """The agent cannot build a status with a misspelt state (it would fail at read time)."""
    with pytest.raises(ValueError, match=r"template\.state"):
        TemplateHealth(name="a", destination="/a", state="OK")
