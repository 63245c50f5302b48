"""Rendering: every reference form, discovery rounds, the sandbox, Arcion tokens, errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from smagent.config import Config, load_config
from smagent.providers.base import NotFound, SecretValue, Unavailable
from smagent.references import Lookup, SecretRef
from smagent.render import Renderer, RenderOutcome
from tests.conftest import (
    CANARY,
    CANARY_USER,
    Workspace,
    assert_no_canary,
    finishes_within,
    special_file,
)

DB = SecretRef("local", "prod/db")
TOKEN = SecretRef("local", "api-token")
DB_JSON = json.dumps(
    {
        "username": CANARY_USER,
        "password": CANARY,
        "host": "db.internal",
        "port": 5432,
        "ssl": True,
        "none": None,
        "items": "key-named-items",
        "nested": {"deep": {"deeper": {"value": "leaf-value-1234"}}},
        "list": ["zero", {"name": "one"}],
    }
)
VALUES = {DB: SecretValue(DB_JSON), TOKEN: SecretValue("plain-token-text")}


def make(ws: Workspace, text: str, **extra: object) -> tuple[Renderer, Config]:
    ws.templates = []
    ws.template("t.j2", text, **extra)
    config = load_config(ws.write())
    return Renderer(config), config


def render(
    ws: Workspace, text: str, values: dict[SecretRef, object] | None = None
) -> RenderOutcome:
    renderer, config = make(ws, text)
    return renderer.render(config.templates[0], VALUES if values is None else values)  # type: ignore[arg-type]


def out(outcome: RenderOutcome) -> str:
    assert outcome.problems == ()
    assert outcome.output is not None
    return outcome.output.decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ secrets.db.host }}", "db.internal"),
        ('{{ secrets.db["host"] }}', "db.internal"),
        ("{{ secrets.db.port }}", "5432"),
        ("{{ secrets.db.port + 1 }}", "5433"),
        ("{{ secrets.db.nested.deep.deeper.value }}", "leaf-value-1234"),
        ('{{ secrets.db["nested"]["deep"].deeper["value"] }}', "leaf-value-1234"),
        ("{{ secrets.db.list[0] }}/{{ secrets.db.list.1.name }}", "zero/one"),
        ("{{ secrets.db.items }}", "key-named-items"),
        ("{{ secrets.db.none }}|", "|"),
        ('{{ secret("db/host") }}', "db.internal"),
        ('{{ secret("db/nested.deep.deeper.value") }}', "leaf-value-1234"),
        ('{{ secret("db", key="nested.deep.deeper.value") }}', "leaf-value-1234"),
        ('{{ secret("local:prod/db", key="host") }}', "db.internal"),
        ('{{ secret("local:api-token") }}', "plain-token-text"),
        ("{{ secrets.store['api-token'] }}", "plain-token-text"),
        ("{{ secrets.store['prod/db'].host }}", "db.internal"),
        ("{{ secrets.db.nested }}", '{"deep":{"deeper":{"value":"leaf-value-1234"}}}'),
        ("{{ secrets.db.nested | tojson }}", '{"deep": {"deeper": {"value": "leaf-value-1234"}}}'),
        ("{% for k, v in secrets.db.nested.deep | dictsort %}{{ k }}{% endfor %}", "deeper"),
        ("{{ secrets.db.list | length }}", "2"),
        ("{{ secrets.db.host | upper }}", "DB.INTERNAL"),
        ("{% if secrets.db.ssl %}ssl{% endif %}", "ssl"),
        ("line\n", "line\n"),
    ],
)
def test_reference_forms(ws: Workspace, text: str, expected: str) -> None:
    """Every reference form of SPEC section 3 reaches the right value, at any depth."""
    assert expected == out(render(ws, text))


def test_whole_secret_is_its_text(ws: Workspace) -> None:
    """`secrets.NS` is the secret's text as stored, and string filters apply to it."""
    assert "plain-token-text" == out(render(ws, "{{ secrets.store['api-token'] }}"))
    ws.namespaces["tok"] = {"provider": "local", "secret": "api-token"}
    assert "PLAIN-TOKEN-TEXT" == out(render(ws, "{{ secrets.tok | upper }}"))


def test_namespace_version_and_stage_reach_the_ref(ws: Workspace) -> None:
    """A namespace's version/stage, or those given to secret(), are part of the fetched ref."""
    ws.namespaces["old"] = {"provider": "local", "secret": "prod/db", "stage": "AWSPREVIOUS"}
    outcome = render(
        ws, '{{ secrets.old.host }}{{ secret("local:prod/db", version=3, stage="S") }}', {}
    )
    assert {
        SecretRef("local", "prod/db", None, "AWSPREVIOUS"),
        SecretRef("local", "prod/db", "3", "S"),
    } == set(outcome.missing)


def test_discovery_records_missing_refs_without_output(ws: Workspace) -> None:
    """With no values, a render lists what it needs and produces no output."""
    outcome = render(ws, "{{ secrets.db.password | scram_sha256 }} {{ secrets.store.x.y }}", {})
    assert outcome.output is None
    assert {DB, SecretRef("local", "x")} == set(outcome.missing)
    assert Lookup(DB, ("password",)) in outcome.lookups
    assert Lookup(SecretRef("local", "x"), ("y",)) in outcome.lookups


def test_missing_key_names_keys_not_values(ws: Workspace) -> None:
    """A wrong key names the template line, the key and the keys present, never values."""
    outcome = render(ws, "ok\n{{ secrets.db.pasword }}\n")
    assert outcome.output is None
    (problem,) = outcome.problems
    text = str(problem)
    assert "t.j2:2" in text
    assert "'pasword' not in secret prod/db" in text
    assert "password" in text
    assert "username" in text
    assert_no_canary(text)


def test_key_of_a_plain_text_secret(ws: Workspace) -> None:
    """Asking a key of a non-JSON secret says so."""
    (problem,) = render(ws, "{{ secrets.store['api-token'].field }}").problems
    assert "not a JSON object" in str(problem)


def test_undefined_variable_is_an_error_with_line(ws: Workspace) -> None:
    """Undefined names are errors (StrictUndefined), reported with their line."""
    (problem,) = render(ws, "a\nb\n{{ nonsense }}").problems
    assert "t.j2:3" in str(problem)
    assert "'nonsense' is undefined" in str(problem)


def test_unknown_namespace(ws: Workspace) -> None:
    """An unknown namespace lists the declared ones."""
    (problem,) = render(ws, "{{ secrets.nope.x }}").problems
    assert "unknown namespace 'nope'" in str(problem)
    assert "db, store" in str(problem)


def test_syntax_error_has_line(ws: Workspace) -> None:
    """A Jinja syntax error names the file and line."""
    (problem,) = render(ws, "ok\n{% if %}\n").problems
    assert "t.j2:2" in str(problem)
    assert "syntax error" in str(problem)


def test_failed_references_are_all_reported(ws: Workspace) -> None:
    """Every failed reference of a template is reported, each with the provider's words."""
    values = {
        DB: NotFound(DB, "no secret named 'prod/db'"),
        TOKEN: Unavailable(TOKEN, "connection refused"),
    }
    outcome = render(ws, "{{ secrets.db.password }} {{ secrets.store['api-token'] }}", values)  # type: ignore[arg-type]
    assert outcome.output is None
    assert 2 == len(outcome.problems)
    texts = sorted(str(p) for p in outcome.problems)
    assert "not found: no secret named 'prod/db'" in texts[1] or "not found" in " ".join(texts)
    assert any("unavailable: connection refused" in t for t in texts)


def test_binary_secret(ws: Workspace) -> None:
    """A binary secret only goes through b64encode; as text it is a clear error."""
    blob = bytes(range(256))
    values = {TOKEN: SecretValue(blob)}
    ok = render(ws, "{{ secrets.store['api-token'] | b64encode }}", values)  # type: ignore[arg-type]
    assert base64.b64encode(blob).decode() == out(ok)
    (problem,) = render(ws, "{{ secrets.store['api-token'] }}", values).problems  # type: ignore[arg-type]
    assert "binary secret" in str(problem)
    assert "b64encode" in str(problem)


def test_non_finite_output_never_partial(ws: Workspace) -> None:
    """A template failing half-way yields no output at all."""
    outcome = render(ws, "first line\n{{ secrets.db.password }}\n{{ 1 // 0 }}\n")
    assert outcome.output is None
    assert "ZeroDivisionError" in str(outcome.problems[0])


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ secret.__globals__ }}",
    "{{ secret.__code__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ secrets.__class__.__init__.__globals__ }}",
    "{{ secrets.db.__class__ }}",
    "{{ secrets.db.nested.__class__.__mro__ }}",
    "{{ secrets.db.host.__class__.__mro__ }}",
    "{{ 'x'.format.__self__ }}",
    "{{ '{0.__class__}'.format(secrets) }}",
    "{% set l = [] %}{{ l.append(1) }}",
    "{{ range.__self__ }}",
    "{% include '/etc/passwd' %}",
    "{% include '../../../../../../etc/passwd' %}",
]


@pytest.mark.parametrize("payload", SANDBOX_ESCAPES)
def test_sandbox_escapes_fail(ws: Workspace, payload: str) -> None:
    """Attribute tricks and includes cannot reach Python internals or other files."""
    outcome = render(ws, payload)
    assert outcome.output is None, "sandbox escape produced output"
    assert outcome.problems


def test_include_within_config_folder(ws: Workspace) -> None:
    """Templates may include others that sit in the config folder tree."""
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    (ws.root / "templates" / "part.j2").write_text("host={{ secrets.db.host }}\n")
    assert "host=db.internal\n" == out(render(ws, '{% include "templates/part.j2" %}'))


SEED = Path(__file__).resolve().parent.parent / "templates" / "mysql.yaml"


def test_arcion_seed_file_renders_unchanged(tmp_path: Path) -> None:
    """The Arcion connection file works as a template as it is, typed as Arcion expects."""
    ws = Workspace(tmp_path)
    ws.secrets = {}
    ws.namespaces = {"mysql_src": {"provider": "local", "secret": "m"}}
    ws.template("mysql.yaml", SEED.read_text())
    config = load_config(ws.write())
    password = "p@ss: w#rd 'single' \"double\" \\ {x} [y] - * & ! % @ `"
    values = {
        SecretRef("local", "m"): SecretValue(
            json.dumps(
                {"host": "mysql.internal", "port": 3306, "username": "yes", "password": password}
            )
        )
    }
    outcome = Renderer(config).render(config.templates[0], values)  # type: ignore[arg-type]
    assert outcome.output is not None, outcome.problems
    text = outcome.output.decode()
    loaded = yaml.safe_load(text)
    assert {
        "type": "MYSQL",
        "host": "mysql.internal",
        "port": 3306,
        "username": "yes",
        "password": password,
        "slaveServerIds": [1],
        "maxConnections": 20,
        "maxRetries": 10,
        "retryWaitDurationMs": 1000,
    } == loaded
    assert "port: 3306\n" in text
    assert "host: mysql.internal\n" in text
    # every line without a token is byte-identical to the seed
    seed_lines = [line for line in SEED.read_text().splitlines() if "arcion-sm://" not in line]
    assert seed_lines == [line for line in text.splitlines() if line in seed_lines]


def render_arcion(tmp_path: Path, text: str, fields: dict[str, object]) -> RenderOutcome:
    """Render `text` as a template whose namespace `m` holds `fields` as a JSON secret."""
    ws = Workspace(tmp_path)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}}
    ws.template("c.yaml", text)
    config = load_config(ws.write())
    values = {SecretRef("local", "m"): SecretValue(json.dumps(fields))}
    return Renderer(config).render(config.templates[0], values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "value", "expected"),
    [
        ('password: "arcion-sm://m/password"', 'a"b\\c', 'a"b\\c'),
        ("password: 'arcion-sm://m/password'", "it's", "it's"),
        ("hosts: [arcion-sm://m/password, other]", "x, y", None),
        ("- arcion-sm://m/password", "- dash", None),
        ("url: jdbc:mysql://arcion-sm://m/password/db", "h", "jdbc:mysql://h/db"),
        ("password: arcion-sm://m/password  # comment", "a #b", "a #b"),
    ],
)
def test_arcion_token_contexts(tmp_path: Path, line: str, value: str, expected: str | None) -> None:
    """A token in quotes, flow lists, block lists, inside a longer value or before a comment."""
    outcome = render_arcion(tmp_path, line + "\n", {"password": value})
    assert outcome.output is not None, outcome.problems
    loaded = yaml.safe_load(outcome.output.decode())
    if isinstance(loaded, list):
        assert [value] == loaded
    elif "hosts" in loaded:
        assert [value, "other"] == loaded["hosts"]
    else:
        key = next(iter(loaded))
        assert expected == loaded[key]


def test_inline_contents_template(ws: Workspace) -> None:
    """`contents:` templates render like files, and their errors name the template."""
    ws.templates.append({"contents": "x={{ secrets.db.host }}\n", "destination": "out/inline"})
    ws.templates.append(
        {"contents": "{{ secrets.db.nope }}", "destination": "out/bad", "name": "bad"}
    )
    config = load_config(ws.write())
    renderer = Renderer(config)
    assert "x=db.internal\n" == out(renderer.render(config.templates[0], VALUES))  # type: ignore[arg-type]
    (problem,) = renderer.render(config.templates[1], VALUES).problems  # type: ignore[arg-type]
    assert str(problem).startswith("bad")


def test_problems_never_hold_values(ws: Workspace) -> None:
    """Errors that involve a secret's value (type errors, bad filters) do not quote it."""
    payloads = [
        "{{ secrets.db.password + 1 }}",
        "{{ secrets.db.password | b64decode }}",
        "{{ secrets.db.password.nope }}",
        "{{ secrets.db.username[99] }}",
        "{{ secrets.db.password | scram_sha256(iterations='x') }}",
        "{{ secrets.db.password | abs }}",
    ]
    for payload in payloads:
        outcome = render(ws, payload)
        assert outcome.problems, f"{payload} rendered: nothing was checked"
        for problem in outcome.problems:
            assert_no_canary(str(problem))


def test_computed_keys_are_never_shown(ws: Workspace) -> None:
    """A key computed from a secret is shown as <computed> in errors and labels."""
    values = {
        DB: SecretValue(json.dumps({"name": "ab", "upper": "zq"})),
        TOKEN: SecretValue(json.dumps({"ALICE": "x"})),
    }
    ws.namespaces["users"] = {"provider": "local", "secret": "api-token"}
    for text in (
        "{{ secrets.users[secrets.db.name] }}",
        "{{ secrets.users[secrets.db.upper | upper] }}",
        "{{ secrets.store[secrets.db.name] }}",
        "{{ secret(secrets.db.name) }}",
    ):
        outcome = render(ws, text, values)  # type: ignore[arg-type]
        shown = " ".join([*map(str, outcome.problems), *outcome.labels.values()])
        assert "ab" not in shown.replace("local:prod/db", "")
        assert "ZQ" not in shown
        assert "<computed>" in shown


def test_literal_keys_are_shown(ws: Workspace) -> None:
    """Keys written in the template are named in errors, as users need them."""
    (problem,) = render(ws, '{{ secrets.db["pass" ~ "word2"] }}{{ secrets.db.oops }}').problems
    assert "<computed>" in str(problem)
    (problem,) = render(ws, "{{ secrets.db.oops }}").problems
    assert "'oops' not in secret prod/db" in str(problem)


def test_include_cannot_read_secrets_or_config(ws: Workspace) -> None:
    """{% include %} refuses the secrets file and the config file, even in the same folder."""
    for name in ("secrets.yaml", "smagent.yaml", "../secrets.yaml"):
        outcome = render(ws, f'{{% include "{name}" %}}')
        assert outcome.output is None, name
        assert "template not found" in str(outcome.problems[0])


def test_include_of_a_fifo_does_not_hang(ws: Workspace) -> None:
    """A FIFO under the template folder is refused, not read (a read would block forever)."""
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    with special_file(ws.root / "templates" / "pipe.j2", "fifo"):
        outcome = finishes_within(2.0, lambda: render(ws, '{% include "pipe.j2" %}'))
    assert outcome.output is None
    assert "template not found" in str(outcome.problems[0])


def test_binary_secret_attributes_are_blocked(ws: Workspace) -> None:
    """A binary secret's methods and items are not reachable from a template."""
    values = {TOKEN: SecretValue(b"\x00\x01binary")}
    for text in (
        "{{ secrets.store['api-token'].reveal() }}",
        "{{ secrets.store['api-token'][0] }}",
    ):
        outcome = render(ws, text, values)  # type: ignore[arg-type]
        assert outcome.output is None
        assert "binary secret" in str(outcome.problems[0])


def test_slices_work_on_secret_text_and_lists(ws: Workspace) -> None:
    """Slicing a secret's text or list gives the slice, not a key named 'slice(...)'."""
    assert "db.|zero" == out(render(ws, "{{ secrets.db.host[:3] }}|{{ secrets.db.list[:1][0] }}"))


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ('password: "pre-arcion-sm://m/password"', 'pw: "x'),
        ("password: 'pre-arcion-sm://m/password post'", "it's"),
        ('"password": "arcion-sm://m/password"', 'a"b'),
    ],
)
def test_arcion_token_inside_longer_quoted_value(tmp_path: Path, line: str, value: str) -> None:
    """A token inside a longer quoted value is escaped for that quote style."""
    outcome = render_arcion(tmp_path, line + "\n", {"password": value})
    assert outcome.output is not None, outcome.problems
    loaded = yaml.safe_load(outcome.output.decode())
    expected = yaml.safe_load(line.replace("arcion-sm://m/password", "MARKER"))
    key = next(iter(loaded))
    assert expected[key].replace("MARKER", value) == loaded[key]


def test_arcion_token_in_comment_is_left_alone(tmp_path: Path) -> None:
    """Commented-out lines keep their token and need no secret."""
    ws = Workspace(tmp_path)
    ws.namespaces = {"m": {"provider": "local", "secret": "m"}}
    text = "#password: arcion-sm://old/pw\nuser: x  # was arcion-sm://old/user\n"
    ws.template("c.yaml", text)
    config = load_config(ws.write())
    outcome = Renderer(config).render(config.templates[0], {})
    assert text.encode() == outcome.output


def test_arcion_token_inside_plain_value_requotes_the_value(tmp_path: Path) -> None:
    """A value with `: ` inside a longer unquoted YAML value: the whole value is double-quoted."""
    text = "url: jdbc:mysql://arcion-sm://m/host:3306/db\n"
    outcome = render_arcion(tmp_path, text, {"host": "a: b"})
    assert b'url: "jdbc:mysql://a: b:3306/db"\n' == outcome.output
