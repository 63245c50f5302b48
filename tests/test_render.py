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


SANDBOX = "blocked by the sandbox: access to attribute "
SANDBOX_ESCAPES = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", SANDBOX + "'__class__' of a 'str'"),
    ("{{ ().__class__.__base__.__subclasses__() }}", SANDBOX + "'__class__' of a 'tuple'"),
    ("{{ dict.__base__.__subclasses__() }}", SANDBOX + "'__base__' of a 'type'"),
    ("{{ lipsum.__globals__['os'] }}", SANDBOX + "'__globals__' of a 'function'"),
    ("{{ cycler.__init__.__globals__.os }}", SANDBOX + "'__init__' of a 'type'"),
    ("{{ secret.__globals__ }}", SANDBOX + "'__globals__' of a 'function'"),
    ("{{ secret.__code__ }}", SANDBOX + "'__code__' of a 'function'"),
    ("{{ self.__init__.__globals__ }}", SANDBOX + "'__init__' of a 'TemplateReference'"),
    ("{{ secrets.db.host.__class__.__mro__ }}", SANDBOX + "'__class__' of a 'str'"),
    ("{{ secrets.db.host.upper.__self__ }}", SANDBOX + "'__self__' of a 'builtin_function"),
    ("{% set l = [] %}{{ l.append(1) }}", SANDBOX + "'append' of a 'list'"),
    ("{% set d = {} %}{{ d.update(a=1) }}", SANDBOX + "'update' of a 'dict'"),
    # the sandbox swaps str.format for a safe wrapper, which has no __self__ to reach
    ("{{ 'x'.format.__self__ }}", "'function object' has no attribute '__self__'"),
    ("{% include '/etc/passwd' %}", "template '/etc/passwd': outside the folders"),
    (
        "{% include '../../../../../../etc/passwd' %}",
        "resolves to /etc/passwd, outside the folders",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), SANDBOX_ESCAPES)
def test_sandbox_escapes_fail(ws: Workspace, payload: str, reason: str) -> None:
    """Attribute tricks and includes are stopped by the sandbox or the loader, and say so.

    Each payload would reach Python internals or another file without them: the
    reason is asserted, so a payload that fails for some other reason (a typo,
    a missing name) cannot pass for a blocked escape.
    """
    outcome = render(ws, payload)
    assert outcome.output is None, "sandbox escape produced output"
    (problem,) = outcome.problems
    assert reason in str(problem)


KEY_FIRST = [
    ("{{ secrets.__class__.__init__.__globals__ }}", "unknown namespace '__class__'"),
    ("{{ secrets.db.__class__ }}", "key '__class__' not in secret prod/db (keys: "),
    (
        "{{ secrets.db.nested.__class__.__mro__ }}",
        "key '__class__' not in secret prod/db at nested",
    ),
    ("{{ secrets.store.__class__ }}", "local:__class__: not found"),
    ("{{ '{0.__class__}'.format(secrets) }}", "unknown namespace <computed>"),
]


@pytest.mark.parametrize(("payload", "reason"), KEY_FIRST)
def test_secret_nodes_answer_keys_not_attributes(ws: Workspace, payload: str, reason: str) -> None:
    """On secret data, `.__class__` is a key like any other: never a Python attribute."""
    values = {**VALUES, SecretRef("local", "__class__"): NotFound(None, "not found")}
    outcome = render(ws, payload, values)  # type: ignore[arg-type]
    assert outcome.output is None, "a Python attribute was reached"
    (problem,) = outcome.problems
    assert reason in str(problem)


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


def test_include_of_a_fifo_does_not_hang(ws: Workspace) -> None:
    """A FIFO under the template folder is refused, not read (a read would block forever)."""
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    with special_file(ws.root / "templates" / "pipe.j2", "fifo"):
        outcome = finishes_within(2.0, lambda: render(ws, '{% include "pipe.j2" %}'))
    assert outcome.output is None
    assert "pipe.j2 is a FIFO, not a file" in str(outcome.problems[0])


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


# --- defect class 1: no leak through a value derived from a secret ------------------------------

COMPUTED_NAME = "<computed>"
LEAK_CASES = [
    # (expression on line 2 of its template, what the message must say instead of the value)
    ("{{ {}[secrets.db.password | upper] }}", "'dict object' has no attribute <computed>"),
    ("{{ {}[secrets.db.password | lower] }}", "'dict object' has no attribute <computed>"),
    ("{{ {}[secrets.db.password | reverse | join] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | title] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | replace('-', '_')] }}", "has no attribute <computed>"),
    ("{{ {}['x' + secrets.db.password] }}", "has no attribute <computed>"),
    ("{{ {}['x' ~ secrets.db.password ~ 'y'] }}", "has no attribute <computed>"),
    ("{{ '' | attr(secrets.db.password | upper) }}", "'str object' has no attribute <computed>"),
    ("{{ {}['%s!' | format(secrets.db.password)] }}", "has no attribute <computed>"),
    ("{{ {}['{}!'.format(secrets.db.password)] }}", "has no attribute <computed>"),
    ("{{ {}['%s!' % secrets.db.password] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password[3:20]] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password[::-1]] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | list | map('upper') | join] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | urlencode] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | b64encode] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | center(60)] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.password | tojson] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.db.username | upper] }}", "has no attribute <computed>"),
    ("{{ {}[secrets.store['api-token'] | upper] }}", "has no attribute <computed>"),
    (
        "{{ {(secrets.db.password | upper): 1}[secrets.db.username] }}",
        "has no attribute <computed>",
    ),
    ("{{ {}.get('a')[secrets.db.password | upper] }}", "'None' has no attribute <computed>"),
    ("{{ [][secrets.db.port * 7] }}", "list object has no element <computed>"),
    (
        "{{ '' | attr('__' ~ secrets.db.password ~ '__') }}",
        "'str object' has no attribute <computed>",
    ),
    ("{{ ''['_' ~ secrets.db.password[:0] ~ '_class__'] }}", SANDBOX + "<computed> of a 'str'"),
    ("{{ ('{0.' ~ secrets.db.password ~ '}').format('') }}", "has no attribute <computed>"),
    ("{{ [1] | map(secrets.db.password | upper) | list }}", "No filter named <computed>"),
    ("{{ [1] | select(secrets.db.password | lower) | list }}", "No test named <computed>"),
    ("{{ secret('db/' ~ secrets.db.password | upper) }}", "key <computed> not in secret prod/db"),
    ("{{ secret('db/password', key=secrets.db.password ~ '..') }}", "key <computed> has an empty"),
    ("{{ secrets.db[secrets.db.password | upper] }}", "key <computed> not in secret prod/db"),
    ("{{ secrets.store[secrets.db.password | upper] }}", "local:<computed>: not found"),
    ("{% include secrets.db.password | upper %}", "template <computed>: not found"),
    ("{{ '%d' % secrets.db.password }}", "TypeError while rendering"),
    ("{{ [1, 2].index(secrets.db.password | upper) }}", "ValueError while rendering"),
    ("{{ ('%(' ~ secrets.db.password ~ ')s') % {} }}", "KeyError while rendering: a missing key"),
    ("{{ ('{' ~ secrets.db.password | upper ~ '}').format() }}", "KeyError while rendering"),
    ("{{ '{:d}'.format(secrets.db.password | upper) }}", "ValueError while rendering"),
    ("{{ secrets.db.password | upper | int(base=99) + [] }}", "TypeError while rendering"),
    ("{{ 1 / (secrets.db.port - secrets.db.port) }}", "ZeroDivisionError while rendering"),
    ("{{ (secrets.db.password | upper) / 2 }}", "TypeError while rendering"),
    ("{{ secrets.db.password | b64decode }}", "b64decode: input is not valid base64"),
    (
        "{% for c in secrets.db.password | upper %}{{ {}[c ~ loop.index] }}{% endfor %}",
        "<computed>",
    ),
]


def leak_forms(secret: str) -> list[str]:
    """`secret` and the simple transforms of it that a careless message could hold.

    Whole transforms, and every 12-character window of the secret and of its
    upper, lower, reversed and title forms (a slice of a secret is a leak too).
    """
    import urllib.parse

    whole = [
        secret,
        secret.upper(),
        secret.lower(),
        secret[::-1],
        secret.title(),
        base64.b64encode(secret.encode()).decode(),
        urllib.parse.quote(secret, safe=""),
        json.dumps(secret)[1:-1],
    ]
    windows = {form[i : i + 12] for form in whole[:5] for i in range(len(form) - 11)}
    return [*whole, *sorted(windows)]


def assert_nothing_leaks(*texts: str) -> None:
    from tests.conftest import CANARIES

    forms = [form for canary in CANARIES for form in leak_forms(canary)]
    for text in texts:
        for form in forms:
            assert form not in text, "a secret, or a transform of one, leaked"


@pytest.mark.parametrize(("expression", "expected"), LEAK_CASES)
def test_errors_hold_no_value_derived_from_a_secret(
    ws: Workspace, expression: str, expected: str
) -> None:
    """An error about a value derived from a secret says where and what, never the value."""
    values = {**VALUES, SecretRef("local", CANARY.upper()): NotFound(None, f"no {CANARY.upper()}")}
    outcome = render(ws, "line one\n" + expression + "\n", values)  # type: ignore[arg-type]
    assert outcome.output is None
    (problem,) = outcome.problems
    text = str(problem)
    where = f"{ws.root / 'templates' / 't.j2'}"
    # a failed fetch has no line (the store answered, not the template)
    assert text.startswith(f"{where}: " if problem.error else f"{where}:2: "), text
    assert expected in text
    assert_nothing_leaks(text, *outcome.labels.values())


def test_literal_names_are_still_named(ws: Workspace) -> None:
    """Names written in the template stay in messages: a typo must be findable."""
    cases = {
        "{{ nosuchvar }}": "'nosuchvar' is undefined",
        "{{ {}.nokey }}": "'dict object' has no attribute 'nokey'",
        "{{ {}['no key'] }}": "'dict object' has no attribute 'no key'",
        "{{ [][7] }}": "list object has no element 7",
        "{{ [1] | map('nofilter') | list }}": "No filter named 'nofilter'",
        "{{ ''.__class__ }}": SANDBOX + "'__class__' of a 'str'",
        "{% macro m(a) %}{{ a }}{% endmacro %}{{ m() }}": "parameter 'a' was not provided",
    }
    for text, expected in cases.items():
        (problem,) = render(ws, text).problems
        assert expected in str(problem), text


def leak_workspace(ws: Workspace) -> list[Path]:
    """One template per leak case (the expression on line 2), and one good template."""
    ws.templates = []
    for index, (expression, _) in enumerate(LEAK_CASES):
        ws.template(f"leak{index:02}.j2", "first line\n" + expression + "\n")
    return [ws.template("good.j2", "host={{ secrets.db.host }}\n")]


@pytest.mark.parametrize(
    "args", [("render", "--once"), ("render", "--dry-run"), ("check", "--connect")]
)
def test_cli_output_holds_no_derived_value(ws: Workspace, args: tuple[str, ...]) -> None:
    """End to end, every leak case fails alone with template:line and its kind, and no value,
    nor a transform of one, reaches stdout or stderr."""
    (good,) = leak_workspace(ws)
    result = ws.run(*args, "--log-level", "debug")
    assert 1 == result.returncode, result.stderr
    assert_nothing_leaks(result.stdout, result.stderr)
    messages = [line.strip() for line in result.stdout.splitlines()]
    for event in result.logs():
        if event["event"] == "reference.failed":  # a failed fetch: logged as its parts
            messages.append(f"{event['template']}: {event['reference']}: {event['error']}")
        elif "error" in event:
            messages.append(str(event["error"]))
    for index, (_, expected) in enumerate(LEAK_CASES):
        name = f"leak{index:02}.j2"
        found = [m for m in messages if (f"{name}:2: " in m or f"{name}: " in m) and expected in m]
        assert found, f"no message for {name} with {expected!r}"
    assert (args[1] == "--once") == good.exists()


def test_reference_errors_keep_their_wording(ws: Workspace) -> None:
    """A literal bad reference is explained in full; only computed parts are masked."""
    (problem,) = render(ws, "{{ secret('nope/x') }}").problems
    assert "'nope/x': unknown namespace 'nope' (namespaces: db, store)" in str(problem)
    (problem,) = render(ws, "{{ secret('db/') }}").problems
    assert "'db/' ends with '/': name a key after it, or drop the '/'" in str(problem)
    (problem,) = render(ws, "{{ secret('db/a', key=secrets.db.host ~ '..') }}").problems
    assert "key <computed> has an empty part" in str(problem)
