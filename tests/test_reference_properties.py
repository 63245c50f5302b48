"""Property-based tests (hypothesis) of the reference parsers in smagent.references.

Every text a template or a command line can hand the parsers gives a `Lookup`
or a `ReferenceSyntaxError`, never another exception; well-formed references
round-trip to the parts they were built from; and the `PROVIDER:ID` form is
taken only when the text before the first `:` names a configured provider.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from smagent.references import (
    ARCION_SCHEME,
    Lookup,
    Namespace,
    ReferenceSyntaxError,
    SecretRef,
    parse_reference_text,
    parse_secret_call,
    split_key,
)

MANY = settings(max_examples=250)
"""The parsers are pure and fast: more examples cost little."""

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True)
OPTIONAL_TEXT = st.none() | st.text(max_size=8)
KEY_PARTS = st.lists(st.text(min_size=1, max_size=10).filter(lambda p: "." not in p), max_size=5)
"""Key parts as `a.b.c` splits them: anything but a dot, never empty."""


Config = tuple[dict[str, Namespace], frozenset[str]]


@st.composite
def configs(draw: st.DrawFn, min_providers: int = 0, min_namespaces: int = 0) -> Config:
    """A random set of providers, and namespaces on them (some whole stores, some pinned)."""
    providers = frozenset(draw(st.sets(NAMES, min_size=min_providers, max_size=4)))
    namespaces: dict[str, Namespace] = {}
    for name in draw(st.sets(NAMES, min_size=min_namespaces, max_size=4)):
        provider = draw(st.sampled_from(sorted(providers)) if providers else NAMES)
        secret = draw(st.none() | st.text(min_size=1, max_size=12))
        version, stage = draw(OPTIONAL_TEXT), draw(OPTIONAL_TEXT)
        namespaces[name] = Namespace(name, provider, secret, version, stage)
    return namespaces, providers


PIECES = st.sampled_from(
    ["secrets.", ARCION_SCHEME, "/", ":", ".", "..", " ", "\n", "@", "#", "arn:aws:x", "\x00"]
)
REFERENCE_LIKE = st.lists(PIECES | NAMES | st.text(max_size=3), max_size=8).map("".join)
"""Texts made of the grammar's own pieces: they reach far more branches than random text."""
ANY_TEXT = st.text() | REFERENCE_LIKE


def _outcome(call: object, *args: object, **kwargs: object) -> Lookup | None:
    """The Lookup, or None for a ReferenceSyntaxError; any other exception fails the test."""
    assert callable(call)
    try:
        result = call(*args, **kwargs)
    except ReferenceSyntaxError as exc:
        message = str(exc)
        assert message, "a syntax error must say what is wrong"
        return None
    assert isinstance(result, Lookup)
    return result


# --- never another exception ----------------------------------------------------------------------


@MANY
@given(
    config=configs(),
    text=ANY_TEXT | st.sampled_from(["", "db", "db/", "local:", "x:y"]),
    key=st.none() | ANY_TEXT,
    version=OPTIONAL_TEXT,
    stage=OPTIONAL_TEXT,
)
def test_secret_call_gives_a_lookup_or_a_syntax_error(
    config: Config,
    text: str,
    key: str | None,
    version: str | None,
    stage: str | None,
) -> None:
    """secret(TEXT, key=, version=, stage=) of any text parses or raises ReferenceSyntaxError."""
    namespaces, providers = config
    _outcome(parse_secret_call, text, namespaces, providers, key=key, version=version, stage=stage)


@MANY
@given(config=configs(), text=ANY_TEXT)
@example(config=({}, frozenset()), text="secrets.")
@example(config=({}, frozenset()), text=ARCION_SCHEME)
def test_command_line_reference_gives_a_lookup_or_a_syntax_error(config: Config, text: str) -> None:
    """`smagent get TEXT` of any text parses or raises ReferenceSyntaxError."""
    namespaces, providers = config
    _outcome(parse_reference_text, text, namespaces, providers)


@given(
    config=configs(),
    value=st.none() | st.integers() | st.binary() | st.lists(st.text(), max_size=2) | st.floats(),
)
def test_secret_call_of_a_non_string_is_a_syntax_error(config: Config, value: object) -> None:
    """secret(123), secret(None), secret(b'..'), secret([..]) ask for a reference."""
    namespaces, providers = config
    assert None is _outcome(parse_secret_call, value, namespaces, providers)


@MANY
@given(key=st.none() | ANY_TEXT)
def test_split_key_parts_join_back_to_the_key(key: str | None) -> None:
    """split_key gives non-empty, dot-free parts that join back to the key, or a syntax error."""
    try:
        parts = split_key(key)
    except ReferenceSyntaxError:
        assert key is not None
        assert "" in key.split(".")
        return
    assert all(part and "." not in part for part in parts)
    assert (key or "") == ".".join(parts)


# --- round trips ----------------------------------------------------------------------------------


@MANY
@given(
    config=configs(min_namespaces=1),
    data=st.data(),
    parts=KEY_PARTS,
    extra=KEY_PARTS,
    version=OPTIONAL_TEXT,
    stage=OPTIONAL_TEXT,
)
def test_namespace_form_round_trips(
    config: Config,
    data: st.DataObject,
    parts: list[str],
    extra: list[str],
    version: str | None,
    stage: str | None,
) -> None:
    """`NS/a.b` with key="c.d" is the namespace's secret (a store's: secret `a`) at the parts."""
    namespaces, providers = config
    ns = namespaces[data.draw(st.sampled_from(sorted(namespaces)))]
    text = f"{ns.name}/{'.'.join(parts)}" if parts else ns.name
    key = ".".join(extra) if extra else None
    path = (*parts, *extra)
    got = _outcome(
        parse_secret_call, text, namespaces, providers, key=key, version=version, stage=stage
    )
    if ns.is_store and not path:
        assert got is None  # a whole store: a secret name is needed
        return
    ref_version = version if version is not None else ns.version
    ref_stage = stage if stage is not None else ns.stage
    if ns.secret is not None:
        expected = Lookup(SecretRef(ns.provider, ns.secret, ref_version, ref_stage), path)
    else:
        expected = Lookup(SecretRef(ns.provider, path[0], ref_version, ref_stage), path[1:])
    assert expected == got


@MANY
@given(
    config=configs(min_providers=1),
    data=st.data(),
    secret_id=st.text(min_size=1, max_size=30) | st.sampled_from(["a:b/c", "arn:aws:x:1:secret:p"]),
    parts=KEY_PARTS,
    version=OPTIONAL_TEXT,
    stage=OPTIONAL_TEXT,
)
def test_provider_form_round_trips(
    config: Config,
    data: st.DataObject,
    secret_id: str,
    parts: list[str],
    version: str | None,
    stage: str | None,
) -> None:
    """`PROVIDER:ID` with key/version/stage is exactly that ref, whatever ID holds (`:`, `/`)."""
    namespaces, providers = config
    provider = data.draw(st.sampled_from(sorted(providers)))
    key = ".".join(parts) if parts else None
    got = _outcome(
        parse_secret_call,
        f"{provider}:{secret_id}",
        namespaces,
        providers,
        key=key,
        version=version,
        stage=stage,
    )
    assert Lookup(SecretRef(provider, secret_id, version, stage), tuple(parts)) == got


@MANY
@given(config=configs(), name=NAMES, rest=st.text(min_size=1, max_size=20))
def test_provider_form_only_for_a_provider_name(config: Config, name: str, rest: str) -> None:
    """`NAME:REST` is the provider form when NAME is a provider, else a syntax error."""
    namespaces, providers = config
    got = _outcome(parse_secret_call, f"{name}:{rest}", namespaces, providers)
    if name in providers:
        assert Lookup(SecretRef(name, rest)) == got
    else:
        assert got is None


@MANY
@given(
    config=configs(min_namespaces=1),
    data=st.data(),
    before=NAMES,
    after=st.text(max_size=10).filter(lambda t: "." not in t),
)
def test_colon_after_a_slash_stays_in_the_key(
    config: Config,
    data: st.DataObject,
    before: str,
    after: str,
) -> None:
    """In `NS/x:y` the `:` is part of the key, even when `NS` is also a provider name."""
    namespaces, providers = config
    ns = namespaces[data.draw(st.sampled_from(sorted(namespaces)))]
    key = f"{before}:{after}"
    got = _outcome(parse_secret_call, f"{ns.name}/{key}", namespaces, providers | {ns.name})
    if ns.secret is not None:
        assert Lookup(SecretRef(ns.provider, ns.secret, ns.version, ns.stage), (key,)) == got
    else:
        assert Lookup(SecretRef(ns.provider, key, ns.version, ns.stage)) == got


# --- the command line accepts every template form ------------------------------------------------


def _same(
    first: str, second: str, namespaces: Mapping[str, Namespace], providers: frozenset[str]
) -> None:
    assert _outcome(parse_reference_text, first, namespaces, providers) == _outcome(
        parse_secret_call, second, namespaces, providers
    )


@MANY
@given(
    config=configs(min_namespaces=1),
    data=st.data(),
    parts=KEY_PARTS,
    pad=st.sampled_from(["", " ", "\n\t "]),
)
def test_command_line_forms_agree_with_secret_call(
    config: Config,
    data: st.DataObject,
    parts: list[str],
    pad: str,
) -> None:
    """`NS/KEY`, `secrets.NS.KEY`, `arcion-sm://NS/KEY` typed for `get` mean secret("NS/KEY")."""
    namespaces, providers = config
    name = data.draw(st.sampled_from(sorted(namespaces)))
    key = ".".join(parts)
    text = f"{name}/{key}" if parts else name
    assume(text == text.strip())  # the command line trims the ends: the next test's business
    _same(f"{pad}{text}{pad}", text, namespaces, providers)
    _same(f"{ARCION_SCHEME}{text}", text, namespaces, providers)
    _same(f"secrets.{name}.{key}" if parts else f"secrets.{name}", text, namespaces, providers)


@MANY
@given(config=configs(), text=ANY_TEXT, pad=st.text(alphabet=" \t\n\r", max_size=3))
def test_command_line_ignores_surrounding_whitespace(config: Config, text: str, pad: str) -> None:
    """Spaces and line breaks around a reference typed on the command line change nothing."""
    namespaces, providers = config
    assert _outcome(parse_reference_text, text, namespaces, providers) == _outcome(
        parse_reference_text, f"{pad}{text}{pad}", namespaces, providers
    )
