"""Logging: the redaction processor and the choice of renderer."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from smagent.logging import REDACTED, Redactor, configure, get_logger, redact_processor
from smagent.logging import REDACTOR as GLOBAL
from tests.conftest import CANARY, CANARY_USER


def test_redactor_scrubs_values_and_json_leaves() -> None:
    """A registered secret and every string inside its JSON are scrubbed from text."""
    redactor = Redactor()
    redactor.add(json.dumps({"user": CANARY_USER, "password": CANARY, "port": 5432}))
    text = redactor.scrub(f"login {CANARY_USER} with {CANARY} on 5432")
    assert f"login {REDACTED} with {REDACTED} on {REDACTED}" == text


def test_redactor_prefers_longest_match() -> None:
    """Overlapping secrets are scrubbed whole, not leaving a tail behind."""
    redactor = Redactor()
    redactor.add("secret")
    redactor.add("secret-and-more")
    assert f"x {REDACTED} y" == redactor.scrub("x secret-and-more y")


def test_redactor_ignores_short_values() -> None:
    """Values under four characters are not scrubbed (they would blank out every log)."""
    redactor = Redactor()
    redactor.add("on")
    assert "turned on" == redactor.scrub("turned on")


def test_redactor_handles_bytes_and_nested_fields() -> None:
    """Binary secrets and values nested in lists/dicts of a log event are scrubbed."""
    redactor = Redactor()
    redactor.add(CANARY.encode())
    assert {"a": [REDACTED, {"b": f"x{REDACTED}"}], "n": 3} == redactor.scrub_any(
        {"a": [CANARY, {"b": "x" + CANARY}], "n": 3}
    )


def test_processor_scrubs_but_keeps_config_fields() -> None:
    """The structlog step scrubs free-text fields, not config-derived paths and names."""
    GLOBAL.add(CANARY_USER)
    event = redact_processor(
        None,
        "info",
        {"event": "x", "destination": f"/srv/{CANARY_USER}/f", "detail": f"user {CANARY_USER}"},
    )
    assert f"user {REDACTED}" == event["detail"]
    assert f"/srv/{CANARY_USER}/f" == event["destination"]


def test_json_logs_scrub_exceptions() -> None:
    """An exception message holding a secret is redacted in the JSON log line."""
    stream = io.StringIO()
    configure("json", "info", stream)
    GLOBAL.add(CANARY)
    try:
        raise RuntimeError(f"boom {CANARY}")
    except RuntimeError:
        get_logger().error("thing.failed", exc_info=True, note=CANARY)
    line = json.loads(stream.getvalue())
    assert "thing.failed" == line["event"]
    assert CANARY not in stream.getvalue()
    assert REDACTED in line["exception"]
    assert REDACTED == line["note"]


@pytest.mark.parametrize(("fmt", "is_json"), [("json", True), ("console", False), ("auto", True)])
def test_format_choice(fmt: str, is_json: bool) -> None:
    """json and auto-on-a-non-TTY give JSON lines; console gives text."""
    stream = io.StringIO()
    configure(fmt, "info", stream)  # type: ignore[arg-type]
    get_logger().info("template.rendered", template="t")
    text = stream.getvalue()
    assert is_json == text.startswith("{")
    assert "template.rendered" in text


def test_level_filters() -> None:
    """--log-level warning drops info events."""
    stream = io.StringIO()
    configure("json", "warning", stream)
    log = get_logger()
    log.info("quiet")
    log.warning("loud")
    assert ["loud"] == [json.loads(line)["event"] for line in stream.getvalue().splitlines()]


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()
