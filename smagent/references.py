"""What a template asks for, and the parsers for every way of writing it.

A `SecretRef` names one secret in one store (what a provider fetches); a
`Lookup` is a `SecretRef` plus the path of keys to walk inside its JSON value
(what a template uses). Many lookups share one `SecretRef`, which is why the
resolver fetches each `SecretRef` once per pass however many keys use it.

Every form a user can write resolves here, against the configured namespaces:

    secrets.NS / secrets.NS.KEY.sub     -> attribute access (see render/context.py)
    secret("NS/KEY.sub")                -> parse_secret_call
    secret("PROVIDER:ID", key="a.b", version=..., stage=...)
    arcion-sm://NS/KEY                  -> a bare token in the file
    NS/KEY, secrets.NS.KEY, PROVIDER:ID -> `smagent get` (parse_reference_text)
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass


class ReferenceSyntaxError(ValueError):
    """A reference that names no namespace/provider or is malformed."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """One secret in one provider instance, at one version or stage."""

    provider: str
    secret_id: str
    version: str | None = None
    stage: str | None = None

    def __str__(self) -> str:
        text = f"{self.provider}:{self.secret_id}"
        if self.version is not None:
            text += f"@{self.version}"
        if self.stage is not None:
            text += f"#{self.stage}"
        return text


@dataclass(frozen=True, slots=True)
class Lookup:
    """A value a template uses: a secret and the key path inside it."""

    ref: SecretRef
    key: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.key:
            return str(self.ref)
        return f"{self.ref} key {'.'.join(self.key)}"


@dataclass(frozen=True, slots=True)
class Namespace:
    """A configured short name for a secret (`secret` set) or a whole store."""

    name: str
    provider: str
    secret: str | None = None
    version: str | None = None
    stage: str | None = None

    @property
    def is_store(self) -> bool:
        return self.secret is None

    def lookup(
        self,
        path: tuple[str, ...],
        *,
        version: str | None = None,
        stage: str | None = None,
    ) -> Lookup:
        """The lookup for `secrets.NAME.<path>`; a store takes the secret name first."""
        version = version if version is not None else self.version
        stage = stage if stage is not None else self.stage
        if self.secret is not None:
            return Lookup(SecretRef(self.provider, self.secret, version, stage), path)
        if not path:
            raise ReferenceSyntaxError(
                f"namespace {self.name!r} is a whole store: name a secret, "
                f"e.g. secrets.{self.name}.SECRET_NAME"
            )
        return Lookup(SecretRef(self.provider, path[0], version, stage), path[1:])


_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_PROVIDER_FORM = re.compile(rf"^(?P<provider>{_NAME}):(?P<id>.+)$", re.DOTALL)
_NS_FORM = re.compile(rf"^(?P<ns>{_NAME})(?:/(?P<key>.*))?$", re.DOTALL)


def spellings(text: str) -> frozenset[str]:
    """The ways a store or a log line may spell a name it was given: as is, case-folded
    (Key Vault names are case-insensitive, so the provider lowercases them), quoted by
    `repr`, and URL-encoded (a request path in an error)."""
    return frozenset(
        (text, text.lower(), text.upper(), repr(text)[1:-1], urllib.parse.quote(text, safe=""))
    )


def split_key(key: str | None) -> tuple[str, ...]:
    """`a.b.c` -> ('a', 'b', 'c'); empty parts are errors, not silently dropped."""
    if key is None or key == "":
        return ()
    parts = tuple(key.split("."))
    if any(part == "" for part in parts):
        raise ReferenceSyntaxError(f"key {key!r} has an empty part")
    return parts


def parse_secret_call(
    text: str,
    namespaces: Mapping[str, Namespace],
    providers: frozenset[str] | set[str],
    *,
    key: str | None = None,
    version: str | None = None,
    stage: str | None = None,
) -> Lookup:
    """Resolve the arguments of `secret(...)` in a template.

    `NS/KEY.sub` names a namespace; `PROVIDER:SECRET_ID` names a provider
    directly (the id may itself hold `:` and `/`, as an ARN does). The
    provider form wins only when the text before the first `:` is a provider
    name and holds no `/`.
    """
    if not isinstance(text, str) or not text:
        raise ReferenceSyntaxError("secret() needs a reference such as 'NS/KEY' or 'PROVIDER:ID'")
    match = _PROVIDER_FORM.match(text)
    if match and match["provider"] in providers:
        ref = SecretRef(match["provider"], match["id"], version, stage)
        return Lookup(ref, split_key(key))
    match = _NS_FORM.match(text)
    if match is None:
        raise ReferenceSyntaxError(
            f"{text!r} is not a reference: write 'NAMESPACE/KEY' or 'PROVIDER:SECRET_ID'"
        )
    namespace = namespaces.get(match["ns"])
    if namespace is None:
        raise ReferenceSyntaxError(_unknown(match["ns"], namespaces, providers, text))
    if match["key"] == "":
        raise ReferenceSyntaxError(f"{text!r} ends with '/': name a key after it, or drop the '/'")
    path = split_key(match["key"]) + split_key(key)
    return namespace.lookup(path, version=version, stage=stage)


def parse_reference_text(
    text: str,
    namespaces: Mapping[str, Namespace],
    providers: frozenset[str] | set[str],
) -> Lookup:
    """A reference typed on the command line (`smagent get`), in any template form."""
    text = text.strip()
    if text.startswith(ARCION_SCHEME):
        return parse_secret_call(text[len(ARCION_SCHEME) :], namespaces, providers)
    if text.startswith("secrets."):
        ns, _, rest = text[len("secrets.") :].partition(".")
        return parse_secret_call(f"{ns}/{rest}" if rest else ns, namespaces, providers)
    return parse_secret_call(text, namespaces, providers)


def _unknown(
    name: str, namespaces: Mapping[str, Namespace], providers: frozenset[str] | set[str], text: str
) -> str:
    known = ", ".join(sorted(namespaces)) or "none declared"
    hint = ""
    if name in providers:
        hint = f"; {name!r} is a provider: write '{name}:SECRET_ID'"
    return f"{text!r}: unknown namespace {name!r} (namespaces: {known}){hint}"


ARCION_SCHEME = "arcion-sm://"
