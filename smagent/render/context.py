"""The values of one render, and the objects a template sees (`secrets`, `secrets.NS.KEY`).

On secret data, `.name` always means the key `name`, never a Python
attribute: `secrets.db.items` is the key "items", not dict.items. The objects
here answer `child(key)`; environment.py routes attribute and item access on
them there, and keeps the sandbox's rules for every other object. Iterate a
secret mapping with `| items` or `| dictsort`.

A reference whose secret is not fetched yet (or failed) is a `Pending`: a
forgiving undefined that renders empty and chains quietly, and is recorded so
the pipeline can fetch it (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from smagent.providers.base import FetchResult, ProviderError
from smagent.references import Lookup, Namespace, SecretRef
from smagent.render.messages import SafeMessages, Show, current_show
from smagent.render.outcome import COMPUTED, ReferenceProblem
from smagent.values import Binary, JsonArray, JsonObject, parse_json_text


class Words:
    """Text safe to show in messages: several sets looked up in turn, never merged. A
    render's words are the config's (one per template path: thousands) and its template's
    (a few dozen); merging them copied the config's for every render."""

    __slots__ = ("_parts",)

    def __init__(self, *parts: Set[str]) -> None:
        self._parts = parts

    def __contains__(self, text: object) -> bool:
        return any(text in part for part in self._parts)

    def __or__(self, more: Set[str]) -> Words:
        return Words(*self._parts, more)


@dataclass(slots=True)
class RenderContext:
    """The values of one render, and what the template asked for."""

    values: Mapping[SecretRef, FetchResult]
    namespaces: Mapping[str, Namespace]
    providers: frozenset[str]
    known: Words = field(default_factory=Words)
    """Text written literally in the template or the config: safe to show in messages."""
    lookups: set[Lookup] = field(default_factory=set)
    missing: set[SecretRef] = field(default_factory=set)
    failed: dict[SecretRef, tuple[Lookup, ProviderError]] = field(default_factory=dict)
    """Per failed secret, the deepest lookup that hit it (`db.password`, not `db`)."""
    parsed: dict[SecretRef, Any] = field(default_factory=dict)
    """Each secret's JSON, parsed once per render however often a loop reads it."""
    files: set[Path] = field(default_factory=set)
    """The template files the render read or looked for (environment.py records them)."""

    def plain(self, text: object) -> str:
        """`text` as it may be shown: itself when written literally, else `<computed>`."""
        return str(text) if str(text) in self.known else COMPUTED

    def show(self, text: object) -> str:
        """`plain`, quoted when shown."""
        return repr(str(text)) if str(text) in self.known else COMPUTED

    def computed_parts(self) -> frozenset[str]:
        """The parts of the missing references a provider will be given that are not
        literal text (see `RenderOutcome.computed`)."""
        parts = (
            part
            for ref in self.missing
            for part in (ref.secret_id, ref.version, ref.stage)
            if part is not None and part not in self.known
        )
        return frozenset(parts)

    def label(self, lookup: Lookup) -> str:
        """`str(lookup)` with every part that is not literal text masked."""
        ref = lookup.ref
        part = self.plain
        text = f"{ref.provider}:{part(ref.secret_id)}"
        if ref.version is not None:
            text += f"@{part(ref.version)}"
        if ref.stage is not None:
            text += f"#{part(ref.stage)}"
        if lookup.key:
            text += " key " + ".".join(part(k) for k in lookup.key)
        return text

    def value(self, lookup: Lookup) -> Any:
        """The value at `lookup`, or `Pending` when its secret is not fetched (or failed)."""
        self.lookups.add(lookup)
        result = self.values.get(lookup.ref)
        if result is None:
            self.missing.add(lookup.ref)
            return Pending.of(self, lookup)
        if isinstance(result, ProviderError):
            seen = self.failed.get(lookup.ref)
            if seen is None or len(lookup.key) > len(seen[0].key):
                self.failed[lookup.ref] = (lookup, result)
            return Pending.of(self, lookup)
        raw = result.reveal()
        if isinstance(raw, bytes):
            if lookup.key:
                raise ReferenceProblem(
                    f"{self.label(Lookup(lookup.ref))} is a binary secret; it has no keys", lookup
                )
            return Binary(raw, self.label(lookup))
        if not lookup.key:
            return SecretDoc(raw, self, lookup)
        return self._walk(raw, lookup)

    def _walk(self, raw: str, lookup: Lookup) -> Any:
        secret = self.plain(lookup.ref.secret_id)
        if lookup.ref not in self.parsed:
            self.parsed[lookup.ref] = parse_json_text(raw)
        node = self.parsed[lookup.ref]
        if node is None:
            raise ReferenceProblem(
                f"secret {secret} is not a JSON object, "
                f"so it has no key {self.show(lookup.key[0])}",
                lookup,
            )
        for depth, part in enumerate(lookup.key):
            at = ".".join(map(self.plain, lookup.key[:depth]))
            where = f"secret {secret}" + (f" at {at}" if at else "")
            node = child_value(node, part, where, self.show, lookup)
        if isinstance(node, JsonObject):
            return SecretMap(node, self, lookup)
        if isinstance(node, JsonArray):
            return SecretList(node, self, lookup)
        return node


def child_value(node: Any, part: str, where: str, show: Show, lookup: Lookup | None) -> Any:
    if isinstance(node, dict):
        if part in node:
            return node[part]
        keys = sorted(node)
        listed = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        raise ReferenceProblem(
            f"key {show(part)} not in {where} (keys: {listed or 'none'})", lookup
        )
    if isinstance(node, list):
        if re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            return node[int(part)]
        raise ReferenceProblem(
            f"{where} is a list of {len(node)}; {show(part)} is not an index", lookup
        )
    kind = type(node).__name__ if node is not None else "null"
    raise ReferenceProblem(
        f"{where} is a {kind}, not a JSON object; it has no key {show(part)}", lookup
    )


class _Located:
    """A value that knows which lookup produced it, so `.KEY` extends that lookup."""

    _ctx: RenderContext
    _lookup: Lookup

    def _locate(self, ctx: RenderContext, lookup: Lookup) -> None:
        self._ctx = ctx
        self._lookup = lookup

    def child(self, key: Any) -> Any:
        return self._ctx.value(Lookup(self._lookup.ref, (*self._lookup.key, str(key))))


class Pending(_Located, SafeMessages, jinja2.ChainableUndefined):
    """A reference whose value is not fetched yet: renders empty, chains quietly."""

    @classmethod
    def of(cls, ctx: RenderContext, lookup: Lookup) -> Pending:
        pending = cls(name=ctx.label(lookup))
        pending._locate(ctx, lookup)
        return pending


class SecretDoc(_Located, str):
    """The whole text of a secret: a str for every text filter; `.KEY` walks its JSON."""

    def __new__(cls, text: str, ctx: RenderContext, lookup: Lookup) -> SecretDoc:
        doc = super().__new__(cls, text)
        doc._locate(ctx, lookup)
        return doc

    def __repr__(self) -> str:
        return "SecretDoc(<redacted>)"


class SecretMap(_Located, JsonObject):
    """A JSON object inside a secret, that remembers where it came from (for messages)."""

    def __init__(self, data: JsonObject, ctx: RenderContext, lookup: Lookup) -> None:
        super().__init__(data)
        self._locate(ctx, lookup)


class SecretList(_Located, JsonArray):
    def __init__(self, data: JsonArray, ctx: RenderContext, lookup: Lookup) -> None:
        super().__init__(data)
        self._locate(ctx, lookup)


class StoreNode:
    """`secrets.NS` for a namespace without `secret`: each key names a whole secret."""

    __slots__ = ("_ctx", "_ns")

    def __init__(self, ctx: RenderContext, ns: Namespace) -> None:
        self._ctx = ctx
        self._ns = ns

    def child(self, key: Any) -> Any:
        return self._ctx.value(self._ns.lookup((str(key),)))

    def __str__(self) -> str:
        raise ReferenceProblem(
            f"namespace {self._ns.name!r} is a whole store: name a secret, "
            f"e.g. secrets.{self._ns.name}.SECRET_NAME"
        )


class SecretsRoot:
    """The `secrets` variable of every template."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RenderContext) -> None:
        self._ctx = ctx

    def child(self, key: Any) -> Any:
        ns = self._ctx.namespaces.get(str(key))
        if ns is None:
            known = ", ".join(sorted(self._ctx.namespaces)) or "none declared"
            raise ReferenceProblem(f"unknown namespace {self._ctx.show(key)} (namespaces: {known})")
        if ns.is_store:
            return StoreNode(self._ctx, ns)
        return self._ctx.value(ns.lookup(()))

    def __str__(self) -> str:
        raise ReferenceProblem(
            "write secrets.NAMESPACE or secrets.NAMESPACE.KEY, not secrets alone"
        )


NODES = (SecretsRoot, StoreNode, SecretDoc, SecretMap, SecretList, Pending)
"""The objects that answer `child(key)`: `.KEY` and `[KEY]` on them name a key."""


def plain_child(obj: JsonObject | JsonArray, key: Any) -> Any:
    """`.KEY` / `[KEY]` on JSON data a template built or took apart (no lookup behind it)."""
    return child_value(obj, str(key), "this JSON value", current_show(), None)


def extract(lookup: Lookup, result: FetchResult) -> str | bytes:
    """The text (or bytes) at `lookup` in a fetched secret, as `smagent get` prints it."""
    typed = [lookup.ref.secret_id, lookup.ref.version, lookup.ref.stage, *lookup.key]
    known = frozenset(text for text in typed if text is not None)
    ctx = RenderContext({lookup.ref: result}, {}, frozenset(), known=Words(known))
    value = ctx.value(lookup)
    if isinstance(value, Binary):
        return value.reveal()
    if isinstance(value, Pending):
        failed = ctx.failed.get(lookup.ref)
        detail = f"{failed[1].kind}: {failed[1].detail}" if failed else "no value"
        raise ReferenceProblem(detail, lookup)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str.__str__(str(value))
