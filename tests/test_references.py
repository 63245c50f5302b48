"""Tests for smagent.references: pure parsers, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smagent.references import (
    Lookup,
    Namespace,
    ReferenceSyntaxError,
    SecretRef,
    parse_reference_text,
    parse_secret_call,
    split_key,
)

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"

NAMESPACES = {
    "db": Namespace("db", "aws-prod", "prod/db"),
    "old": Namespace("old", "aws-prod", "prod/db", version="v1", stage="AWSPREVIOUS"),
    "kv": Namespace("kv", "azure"),
    # a name that is both a namespace and a provider
    "local": Namespace("local", "local", "app/creds"),
}
PROVIDERS = frozenset({"aws-prod", "azure", "local", "env"})


def parse(text: str, **kwargs: str | None) -> Lookup:
    return parse_secret_call(text, NAMESPACES, PROVIDERS, **kwargs)


# --- SecretRef / Lookup ---------------------------------------------------------------------------


def test_secret_ref_str_plain() -> None:
    """A SecretRef reads PROVIDER:ID."""
    assert "aws-prod:prod/db" == str(SecretRef("aws-prod", "prod/db"))


def test_secret_ref_str_version_and_stage() -> None:
    """Version follows `@`, stage follows `#`."""
    assert "aws-prod:prod/db@v1" == str(SecretRef("aws-prod", "prod/db", version="v1"))
    assert "aws-prod:prod/db#AWSPENDING" == str(
        SecretRef("aws-prod", "prod/db", stage="AWSPENDING")
    )
    assert "vault:kv/app@3#x" == str(SecretRef("vault", "kv/app", "3", "x"))


def test_lookup_str() -> None:
    """A Lookup is its ref, plus ` key a.b` when it walks into the value."""
    ref = SecretRef("aws-prod", "prod/db")
    assert "aws-prod:prod/db" == str(Lookup(ref))
    assert "aws-prod:prod/db key a.b" == str(Lookup(ref, ("a", "b")))


def test_refs_are_hashable_and_sort_by_text() -> None:
    """SecretRef and Lookup are values usable as keys; pinned and unpinned sort by str."""
    a, b = SecretRef("p", "a"), SecretRef("p", "b")
    pinned = SecretRef("p", "a", version="2", stage="AWSPREVIOUS")
    assert 1 == {a: 1}[SecretRef("p", "a")]
    assert [a, pinned, b] == sorted([b, pinned, a], key=str)
    assert [Lookup(a), Lookup(a, ("x",))] == sorted([Lookup(a, ("x",)), Lookup(a)], key=str)


# --- split_key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "parts"),
    [(None, ()), ("", ()), ("a", ("a",)), ("a.b.c", ("a", "b", "c")), ("x-y.z_1", ("x-y", "z_1"))],
)
def test_split_key(key: str | None, parts: tuple[str, ...]) -> None:
    """A dotted key splits into its parts; no key is the empty path."""
    assert parts == split_key(key)


@pytest.mark.parametrize("key", [".", "a.", ".a", "a..b"])
def test_split_key_empty_part_is_error(key: str) -> None:
    """An empty part is an error, never silently dropped."""
    with pytest.raises(ReferenceSyntaxError, match="has an empty part"):
        split_key(key)


# --- Namespace.lookup -----------------------------------------------------------------------------


def test_secret_namespace_keeps_key_path() -> None:
    """A secret namespace looks up its one secret with the whole path as the key."""
    ns = Namespace("db", "aws-prod", "prod/db")
    assert Lookup(SecretRef("aws-prod", "prod/db"), ("a", "b")) == ns.lookup(("a", "b"))
    assert Lookup(SecretRef("aws-prod", "prod/db")) == ns.lookup(())


def test_store_namespace_first_part_is_secret_name() -> None:
    """A store namespace takes the first part as the secret's name, the rest as the key."""
    ns = Namespace("kv", "azure")
    assert ns.is_store
    assert Lookup(SecretRef("azure", "db-password")) == ns.lookup(("db-password",))
    assert Lookup(SecretRef("azure", "app"), ("user",)) == ns.lookup(("app", "user"))


def test_store_namespace_needs_a_secret_name() -> None:
    """A store namespace with no path is an error suggesting secrets.NS.SECRET_NAME."""
    with pytest.raises(ReferenceSyntaxError, match=r"secrets\.kv\.SECRET_NAME"):
        Namespace("kv", "azure").lookup(())


def test_namespace_version_and_stage_used() -> None:
    """A namespace's version and stage go into its refs."""
    secret = Namespace("old", "aws-prod", "prod/db", version="v1", stage="AWSPREVIOUS")
    store = Namespace("kv", "azure", version="abc")
    assert SecretRef("aws-prod", "prod/db", "v1", "AWSPREVIOUS") == secret.lookup(("k",)).ref
    assert SecretRef("azure", "s", "abc") == store.lookup(("s",)).ref


def test_call_site_version_and_stage_override() -> None:
    """Version/stage given at the call site override the namespace's."""
    ns = Namespace("old", "aws-prod", "prod/db", version="v1", stage="AWSPREVIOUS")
    assert SecretRef("aws-prod", "prod/db", "v2", "AWSPREVIOUS") == ns.lookup((), version="v2").ref
    assert (
        SecretRef("aws-prod", "prod/db", "v1", "AWSPENDING")
        == ns.lookup((), stage="AWSPENDING").ref
    )


# --- parse_secret_call ----------------------------------------------------------------------------


def test_parse_namespace_key() -> None:
    """`NS/KEY` is a key of the namespace's secret."""
    assert Lookup(SecretRef("aws-prod", "prod/db"), ("password",)) == parse("db/password")


def test_parse_namespace_deep_key() -> None:
    """`NS/a.b.c` walks nested keys."""
    assert Lookup(SecretRef("aws-prod", "prod/db"), ("a", "b", "c")) == parse("db/a.b.c")


def test_parse_namespace_alone() -> None:
    """`NS` alone is the whole value."""
    assert Lookup(SecretRef("aws-prod", "prod/db")) == parse("db")


def test_parse_namespace_with_key_kwarg() -> None:
    """A `key=` argument extends the path written in the text."""
    assert Lookup(SecretRef("aws-prod", "prod/db"), ("a", "b", "c")) == parse("db/a", key="b.c")


def test_parse_namespace_uses_its_version_unless_overridden() -> None:
    """The namespace's version/stage apply; call-site version/stage override them."""
    assert SecretRef("aws-prod", "prod/db", "v1", "AWSPREVIOUS") == parse("old/k").ref
    assert SecretRef("aws-prod", "prod/db", "v9", "AWSCURRENT") == (
        parse("old/k", version="v9", stage="AWSCURRENT").ref
    )


def test_parse_store_namespace() -> None:
    """`STORE/NAME.key` names a secret of the store and a key inside it."""
    assert Lookup(SecretRef("azure", "app"), ("user",)) == parse("kv/app.user")


def test_parse_store_namespace_alone_is_error() -> None:
    """A store namespace alone names no secret."""
    with pytest.raises(ReferenceSyntaxError, match="whole store"):
        parse("kv")


def test_parse_provider_form() -> None:
    """`PROVIDER:ID` names a secret of a provider with no namespace."""
    assert Lookup(SecretRef("aws-prod", "prod/db")) == parse("aws-prod:prod/db")


def test_parse_provider_form_with_arn() -> None:
    """The id may itself hold `:` and `/`, as an ARN does."""
    assert Lookup(SecretRef("aws-prod", ARN)) == parse(f"aws-prod:{ARN}")


def test_parse_provider_form_with_kwargs() -> None:
    """key, version and stage arguments apply to the provider form."""
    expected = Lookup(SecretRef("aws-prod", ARN, "v3", "AWSPREVIOUS"), ("a", "b"))
    assert expected == parse(f"aws-prod:{ARN}", key="a.b", version="v3", stage="AWSPREVIOUS")


def test_parse_provider_form_bad_key_kwarg() -> None:
    """An empty part in `key=` is an error in the provider form too."""
    with pytest.raises(ReferenceSyntaxError, match="empty part"):
        parse("aws-prod:x", key="a..b")


def test_parse_name_both_namespace_and_provider() -> None:
    """For a name that is both: `NAME:ID` is the provider form, `NAME/KEY` the namespace."""
    assert Lookup(SecretRef("local", "other/secret")) == parse("local:other/secret")
    assert Lookup(SecretRef("local", "app/creds"), ("user",)) == parse("local/user")


def test_parse_provider_form_needs_no_slash_before_colon() -> None:
    """A `/` before the first `:` makes it the namespace form, the `:` part of the key."""
    assert Lookup(SecretRef("aws-prod", "prod/db"), ("a:b",)) == parse("db/a:b")
    assert Lookup(SecretRef("local", "app/creds"), ("x:y",)) == parse("local/x:y")


def test_parse_unknown_namespace_lists_namespaces() -> None:
    """An unknown namespace is an error naming the known namespaces."""
    with pytest.raises(ReferenceSyntaxError) as info:
        parse("dbb/password")
    assert "'dbb/password': unknown namespace 'dbb' (namespaces: db, kv, local, old)" == str(
        info.value
    )


def test_parse_unknown_namespace_that_is_a_provider_hints() -> None:
    """Using a provider's name as a namespace hints at the PROVIDER:ID form."""
    with pytest.raises(ReferenceSyntaxError, match="'env' is a provider: write 'env:SECRET_ID'"):
        parse("env/HOME")


def test_parse_unknown_namespace_none_declared() -> None:
    """With no namespaces at all, the error says none are declared."""
    with pytest.raises(ReferenceSyntaxError, match=r"namespaces: none declared"):
        parse_secret_call("db/x", {}, frozenset())


def test_parse_unknown_provider_form() -> None:
    """`NAME:ID` where NAME is no provider is not a reference."""
    with pytest.raises(ReferenceSyntaxError, match="is not a reference"):
        parse("nope:thing")


@pytest.mark.parametrize(
    "text", ["", "/x", "1db/x", "db x", "db/a..b", "db/.a", "db/a.", "aws-prod:", ":x"]
)
def test_parse_malformed(text: str) -> None:
    """Malformed references raise ReferenceSyntaxError."""
    with pytest.raises(ReferenceSyntaxError):
        parse(text)


def test_parse_non_string() -> None:
    """A non-string argument is a ReferenceSyntaxError, not a crash."""
    with pytest.raises(ReferenceSyntaxError, match="needs a reference"):
        parse_secret_call(42, NAMESPACES, PROVIDERS)  # type: ignore[arg-type]


# --- parse_reference_text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("secrets.db.password", Lookup(SecretRef("aws-prod", "prod/db"), ("password",))),
        ("secrets.db.a.b", Lookup(SecretRef("aws-prod", "prod/db"), ("a", "b"))),
        ("secrets.db", Lookup(SecretRef("aws-prod", "prod/db"))),
        ("db/password", Lookup(SecretRef("aws-prod", "prod/db"), ("password",))),
        ("arcion-sm://db/password", Lookup(SecretRef("aws-prod", "prod/db"), ("password",))),
        ("arcion-sm://kv/app.user", Lookup(SecretRef("azure", "app"), ("user",))),
        (f"aws-prod:{ARN}", Lookup(SecretRef("aws-prod", ARN))),
        ("  db/password\n", Lookup(SecretRef("aws-prod", "prod/db"), ("password",))),
    ],
)
def test_parse_reference_text(text: str, expected: Lookup) -> None:
    """`smagent get` accepts secrets.NS.KEY, NS/KEY, arcion-sm://NS/KEY and PROVIDER:ID."""
    assert expected == parse_reference_text(text, NAMESPACES, PROVIDERS)


@pytest.mark.parametrize("text", ["secrets.", "arcion-sm://", "secrets.nope.x", "arcion-sm://x/"])
def test_parse_reference_text_errors(text: str) -> None:
    """Empty or unknown references on the command line raise ReferenceSyntaxError."""
    with pytest.raises(ReferenceSyntaxError):
        parse_reference_text(text, NAMESPACES, PROVIDERS)


# --- property -------------------------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]*", fullmatch=True)


@given(ns=NAMES, parts=st.lists(NAMES, min_size=1, max_size=6))
def test_namespace_key_round_trip(ns: str, parts: list[str]) -> None:
    """For any valid namespace name and key parts, `NS/a.b.c` gives key == the parts."""
    namespaces = {ns: Namespace(ns, "p", "s")}
    lookup = parse_secret_call(f"{ns}/{'.'.join(parts)}", namespaces, frozenset({"p"}))
    assert Lookup(SecretRef("p", "s"), tuple(parts)) == lookup
