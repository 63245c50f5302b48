"""Limits of a render: hostile templates fail fast, in bounded memory, naming template:line
and the limit; real templates are not touched by them."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smagent.config import load_config
from smagent.providers.base import SecretValue
from smagent.references import SecretRef
from smagent.render import Renderer, RenderOutcome, sandbox
from tests import leaks
from tests.conftest import Workspace

TEXT = "a text of more than 16 MiB"
ITEMS = "a list of more than 1,000,000 items"
WIDTH = "a width or precision larger than 16,777,216"
OUTPUT = "output larger than 16 MiB"
STEPS = "more than 1,000,000 steps of work in one render"
CPU = "more than 1 s of CPU time in one render"
INT = "an integer of more than 4,096 bits"
SCRAM_RANGE = "scram_sha256: iterations must be from 1 (PostgreSQL's minimum) to 100,000"

MEMORY_BOMBS = [
    # (expression on line 3 of its template, the limit its message names)
    ('{{ "x" * 3000000000 }}', TEXT),
    ('{{ "x" * 10**9 }}', TEXT),
    ('{{ 3000000000 * "x" }}', TEXT),
    ("{{ [0] * 10**9 }}", ITEMS),
    ("{{ 10 ** 100000000 }}", INT),
    (
        "{% set ns = namespace(n=3) %}{% for i in range(64) %}"
        "{% set ns.n = ns.n * ns.n %}{% endfor %}",
        INT,
    ),
    ("{{ range(10**9) | list }}", "range() of more than 100,000 items"),
    ('{{ "x" | center(10**9) }}', "center() width larger than 16,777,216"),
    ('{{ "x".center(10**9) }}', "center() width larger than 16,777,216"),
    ('{{ "x".ljust(10**9) }}', "ljust() width larger than 16,777,216"),
    ('{{ "x".rjust(10**9) }}', "rjust() width larger than 16,777,216"),
    ('{{ "7".zfill(10**9) }}', "zfill() width larger than 16,777,216"),
    ('{{ ("\\t" * 1000).expandtabs(10**7) }}', TEXT),
    ('{{ ("x\\n" * 1000) | indent(10**6, true) }}', TEXT),
    ('{{ ("x " * 1000) | wordwrap(1, wrapstring="y" * 100000) }}', TEXT),
    ('{{ "%0999999999d" | format(1) }}', WIDTH),
    ('{{ "%0999999999d" % 1 }}', WIDTH),
    ('{{ "%*d" % (999999999, 1) }}', WIDTH),
    ('{{ "{:>999999999}".format("x") }}', WIDTH),
    ('{{ "{:>{}}".format("x", 999999999) }}', WIDTH),
    ('{{ "{:.999999999f}".format(1.5) }}', WIDTH),
    ('{{ ("x" * 100000) | replace("", "y" * 1000) }}', TEXT),
    ('{{ ("x" * 100000).replace("x", "y" * 1000) }}', TEXT),
    ('{{ ("y" * 1000000) | join("z" * 100) }}', TEXT),
    ('{{ ("y" * 100000).join(range(100000) | map("string")) }}', TEXT),
    ('{{ range(10) | batch(10**9, "x") | list }}', "batch() size larger than 1,000,000"),
    ("{{ range(10) | slice(10**9) | list }}", "slice() count larger than 1,000,000"),
    ("{{ lipsum(10**6) }}", "lipsum() of more than 100,000 words"),
    ("{{ range(10) | list | tojson(indent=10**8) }}", "tojson() indent larger than 1,024"),
    (
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}'
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        TEXT,
    ),
    (
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}'
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        TEXT,
    ),
    (
        "{% set ns = namespace(s=[0]) %}{% for i in range(64) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        ITEMS,
    ),
    (
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}'
        "{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}",
        OUTPUT,
    ),
    ('{% set big = "x" * 1000000 %}{% for i in range(100000) %}{{ big }}{% endfor %}', OUTPUT),
    (
        '{% for i in range(100) %}{% set s = "x" * 10000000 %}.{% endfor %}',
        "more than 128 MiB of text and lists built in one render",
    ),
    ("{{ secrets.db.password | scram_sha256(iterations=10**9) }}", SCRAM_RANGE),
    ("{{ secrets.db.password | scram_sha256(iterations=0) }}", SCRAM_RANGE),
]

HEAVY_WORK = [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", STEPS),
    (
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        STEPS,
    ),
    (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        (STEPS, CPU),
    ),
    (
        "{% for x in [1, 2] recursive %}{% if loop.depth < 40 %}{{ loop([1, 2]) }}{% endif %}"
        "{% endfor %}",
        (STEPS, CPU),
    ),
    (
        '{% for i in range(1000) %}{% for j in range(1000) %}{% include "part.j2" %}'
        "{% endfor %}{% endfor %}",
        (STEPS, CPU),
    ),
    ('{{ range(100000) | map("string") | list | toyaml }}', STEPS),
    ('{% for i in range(100000) %}{{ ("x" * 1000000) | wordcount }}{% endfor %}', STEPS),
    ('{{ ("see http://example.com/ " * 600000) | urlize }}', STEPS),
    (
        '{% for i in range(100000) %}{{ ("p" ~ i) | scram_sha256 }}{% endfor %}',
        "more than 8,192,000 SCRAM (PBKDF2) iterations in one render",
    ),
]

DB = SecretRef("local", "prod/db")
VALUES = {DB: SecretValue(json.dumps({"password": "pw-1", "users": {"u1": "p1"}}))}


def render_line3(ws: Workspace, expression: str) -> RenderOutcome:
    ws.templates = []
    ws.template("t.j2", f"line one\nline two\n{expression}\nline four\n")
    (ws.root / "templates" / "part.j2").write_text("part {{ 1 }}\n")
    config = load_config(ws.write())
    return Renderer(config).render(config.templates[0], VALUES)  # type: ignore[arg-type]


def _vm_size() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmSize:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match[1]) * 1024


@pytest.fixture
def memory_cap() -> Iterator[int]:
    """This process may map at most 512 MiB more while the test runs (RLIMIT_AS).

    A broken limit then ends in a MemoryError the test reports, not in the OOM
    killer ending the whole run.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + 512 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def assert_fails_at_line3(outcome: RenderOutcome, expected: str | tuple[str, ...]) -> None:
    assert outcome.output is None
    (problem,) = outcome.problems
    text = str(problem)
    assert re.search(r"/templates/t\.j2:3: ", text), text
    wanted = (expected,) if isinstance(expected, str) else expected
    assert any(w in text for w in wanted), text


@pytest.mark.parametrize(("expression", "expected"), MEMORY_BOMBS)
def test_memory_bombs_fail_at_once(
    ws: Workspace, memory_cap: int, expression: str, expected: str
) -> None:
    """Each template that would build gigabytes fails within 0.5 s of CPU, under a 512 MiB cap,
    naming template:line and the limit."""
    started = time.thread_time()
    outcome = render_line3(ws, expression)
    assert time.thread_time() - started < 0.5
    assert_fails_at_line3(outcome, expected)


@pytest.mark.parametrize(("expression", "expected"), HEAVY_WORK)
def test_heavy_work_is_cut_short(
    ws: Workspace, memory_cap: int, expression: str, expected: str | tuple[str, ...]
) -> None:
    """Nested loops, exponential recursion and costly filters stop within 2 s of CPU.

    CPU time, not wall time: 2 cores shared by parallel runs make wall time
    noise. SCRAM is bounded by its own budget (1,000 new default verifiers,
    about 1.5 s here), so it gets 3 s.
    """
    started = time.thread_time()
    outcome = render_line3(ws, expression)
    spent = time.thread_time() - started
    assert spent < (3.0 if "scram" in expression else 2.0)
    assert_fails_at_line3(outcome, expected)


@pytest.mark.parametrize(
    "loop",
    [
        "{% for x in items %}{% endfor %}",
        "{% for x in [items] recursive %}{% if x is iterable %}{{ loop(x) }}{% endif %}"
        "{% endfor %}",
        "{% for x in items if x is odd %}{% endfor %}",
        "{% for x in items %}{{ loop.length }}{% endfor %}",
    ],
)
def test_every_loop_item_is_a_step(ws: Workspace, loop: str) -> None:
    """Each item a loop runs over is a step: plain, filtered, recursive (`loop(...)`), or with
    `loop.length` (which reads all items first)."""
    ws.template("t.j2", "")
    env = Renderer(load_config(ws.write())).env
    steps = []
    for count in (1, 10_001):
        with sandbox.metered() as meter:
            env.from_string(loop).render(items=list(range(count)))
        steps.append(meter.steps)
    assert 10_000 <= steps[1] - steps[0] < 40_000


def test_output_limit_names_the_line_that_crossed_it(ws: Workspace) -> None:
    """The rendered file's limit points at the line whose output crossed it, not the top."""
    ws.templates = []
    ws.template(
        "t.j2",
        '{% set big = "x" * 1000000 %}\n{% for i in range(100) %}\nline\n{{ big }}\n{% endfor %}\n',
    )
    config = load_config(ws.write())
    (problem,) = Renderer(config).render(config.templates[0], {}).problems
    assert re.search(r"/templates/t\.j2:4: output larger than 16 MiB", str(problem)), problem


def test_real_templates_stay_well_inside_the_limits(ws: Workspace) -> None:
    """A large real template renders: 3,000 lines from a loop, 100 SCRAM verifiers, toyaml of
    a 500-key secret, and a 15 MiB file."""
    users = {f"user{i:04}": f"pw-{i}" for i in range(500)}
    values = {DB: SecretValue(json.dumps({"password": "pw-1", "users": users}))}
    text = (
        "{% for i in range(3000) %}host{{ i }} = {{ ('h' ~ i) | upper }}:{{ 5432 + i }}\n"
        "{% endfor %}"
        '{% for name, pw in secrets.db.users | dictsort %}{% if loop.index <= 100 %}"{{ name }}" '
        '"{{ pw | scram_sha256 }}"\n{% endif %}{% endfor %}'
        "{{ secrets.db.users | toyaml }}\n"
        '{{ "x" * (15 * 1024 * 1024) }}\n'
    )
    ws.templates = []
    ws.template("t.j2", text)
    config = load_config(ws.write())
    outcome = Renderer(config).render(config.templates[0], values)  # type: ignore[arg-type]
    assert outcome.problems == ()
    assert outcome.output is not None
    assert 15 * 1024 * 1024 < len(outcome.output) < sandbox.MAX_TEXT
    assert 3000 + 100 + 500 < outcome.output.count(b"\n")


def test_scram_iterations_up_to_the_cap_work() -> None:
    """100,000 iterations (the cap) is accepted; one more is not, nor 0 or a non-integer."""
    from smagent import filters

    verifier = filters.scram_sha256("pw", salt="c2FsdA==", iterations=100_000)
    assert verifier.startswith("SCRAM-SHA-256$100000:c2FsdA==$")
    for bad in (100_001, 0, -1, 1.5, True, "4096"):
        with pytest.raises(filters.FilterError, match="iterations must be"):
            filters.scram_sha256("pw", iterations=bad)  # type: ignore[arg-type]


def test_cli_bounded_run_writes_the_good_template(ws: Workspace) -> None:
    """End to end, under a 1 GiB address-space limit: every hostile template fails with
    template:line and its limit, the good template is still written, exit 1, in seconds."""
    ws.templates = []
    cases = [*MEMORY_BOMBS, HEAVY_WORK[0]]
    for index, (expression, _) in enumerate(cases):
        ws.template(f"h{index:02}.j2", f"line one\nline two\n{expression}\n")
    good = ws.template("good.j2", "host=db.internal\n")
    ws.write()

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "smagent", "--config", str(ws.config_path), "render", "--once"],
        capture_output=True,
        text=True,
        preexec_fn=limit_memory,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    leaks.assert_no_leak(proc.stdout + proc.stderr, "smagent render --once")
    assert 1 == proc.returncode, proc.stderr[-2000:]
    assert "host=db.internal\n" == good.read_text()
    errors = {
        Path(event["template"]).name: event["error"]
        for line in proc.stderr.splitlines()
        if line.startswith("{") and (event := json.loads(line))["event"] == "template.failed"
    }
    for index, (_, expected) in enumerate(cases):
        name = f"h{index:02}.j2"
        assert f"{name}:3: " in errors[name]
        assert expected in errors[name], errors[name]
    assert elapsed < 30, f"{elapsed:.1f} s"
