"""Logging: the redaction processor and the choice of renderer."""

from __future__ import annotations

import base64
import io
import json
import random
import string
import time

import pytest
import structlog

from smagent import logging as smagent_logging
from smagent.logging import (
    REDACTED,
    WITHHELD,
    Redactor,
    configure,
    get_logger,
    redact_processor,
)
from smagent.logging import REDACTOR as GLOBAL
from smagent.values import MAX_DEPTH
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


def test_redactor_handles_every_form_of_a_binary_secret() -> None:
    """A bytes secret is scrubbed as its UTF-8 runs, as Python shows bytes, and as base64."""
    secret = b"\x00\x01\xff" + CANARY.encode()
    redactor = Redactor()
    redactor.add(secret)

    shown = f"got {secret!r} / {base64.b64encode(secret).decode()} / {CANARY}"

    assert f"got b'{REDACTED}' / {REDACTED} / {REDACTED}" == redactor.scrub(shown)


def test_redactor_registers_deep_json_without_crashing() -> None:
    """A JSON value nested past the limit (or 100,000 deep) is registered whole, never raises."""
    redactor = Redactor()
    for depth in (MAX_DEPTH + 1, 100_000):
        text = '{"a":' * depth + json.dumps(CANARY) + "}" * depth
        redactor.add(text)
        assert f"x {REDACTED} y" == redactor.scrub(f"x {text} y")


def test_plain_word_secret_withholds_the_whole_field() -> None:
    """A secret that is a plain word is not masked in place (that points at it): the field goes."""
    redactor = Redactor()
    redactor.add(json.dumps({"user": "localhost", "password": "password"}))

    masked = [
        redactor.scrub("key 'password' not in secret prod/db (keys: password, user)"),
        redactor.scrub("no route to localhost"),
        redactor.scrub("passwords differ"),
    ]

    assert [WITHHELD, WITHHELD, WITHHELD] == masked
    assert "nothing to hide here" == redactor.scrub("nothing to hide here")


def test_random_looking_secret_is_masked_in_place() -> None:
    """A value that is not a plain word is replaced where it stands; the rest stays readable."""
    redactor = Redactor()
    redactor.add("Xk9-fQ2p")
    redactor.add("12345")

    assert f"login {REDACTED} failed on port {REDACTED}" == redactor.scrub(
        "login Xk9-fQ2p failed on port 12345"
    )


def test_withheld_line_still_says_what_failed_where(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a secret equal to `password`, the event, template and reference fields stay intact."""
    monkeypatch.setattr(smagent_logging, "REDACTOR", Redactor())
    smagent_logging.REDACTOR.add("password")
    stream = io.StringIO()
    configure("json", "info", stream)

    get_logger().error(
        "reference.failed",
        template="pgbouncer-password",
        destination="/etc/password-files/out",
        reference="local:prod/db key password",
        error="not found",
        detail="key 'password' not in secret prod/db (keys: pass)",
    )

    line = json.loads(stream.getvalue())
    assert "reference.failed" == line["event"]
    assert "pgbouncer-password" == line["template"]
    assert "/etc/password-files/out" == line["destination"]
    assert "local:prod/db key password" == line["reference"]
    assert "not found" == line["error"]
    assert WITHHELD == line["detail"]


def _random_values(count: int) -> list[str]:
    rng = random.Random(8)
    alphabet = string.ascii_letters + string.digits + "-_!"
    # a digit in each: these stand for random secrets, masked in place (not plain words)
    return ["".join(rng.choices(alphabet, k=rng.randint(8, 40))) + "7" for _ in range(count)]


SLOW = 3.0
"""Seconds a scrubbing workload may take here; a regex of every value took 5-15 times as long."""


def test_scrub_cost_does_not_grow_with_the_number_of_secrets() -> None:
    """20,000 registered values: 200 log lines scrub in well under a second, values caught."""
    values = _random_values(20_000)
    redactor = Redactor()
    for value in values:
        redactor.add(value)
    line = "template.failed destination=/etc/app/app.env error=exited with status 1: " * 8
    started = time.monotonic()

    scrubbed = [redactor.scrub(f"{line} {values[i * 97]} tail") for i in range(200)]

    assert SLOW > time.monotonic() - started
    assert all(text.endswith(f" {REDACTED} tail") for text in scrubbed)
    assert 20_000 == len(redactor)


def test_adding_between_scrubs_is_not_quadratic() -> None:
    """Values added one at a time between log lines cost no rebuild of a pattern each time."""
    redactor = Redactor()
    started = time.monotonic()

    for value in _random_values(5_000):
        redactor.add(value)
        assert f"a {REDACTED} b" == redactor.scrub(f"a {value} b")

    assert SLOW > time.monotonic() - started


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()
