"""Tests for smagent.index: which templates a changed secret or file makes dirty."""

from __future__ import annotations

from pathlib import Path

from smagent.index import Index
from smagent.references import SecretRef

DB = SecretRef("local", "prod/db")
API = SecretRef("local", "api")
VAULT = SecretRef("vault", "database/creds/app")


def test_a_changed_secret_makes_dirty_only_the_templates_using_it() -> None:
    """`using` names the templates that use any of the refs, and no other."""
    index = Index()
    index.update("pgbouncer", [DB], [Path("/t/pgbouncer.j2")])
    index.update("app", [DB, API], [Path("/t/app.j2")])
    index.update("static", [], [Path("/t/static.j2")])
    assert {"pgbouncer", "app"} == index.using([DB])
    assert {"app"} == index.using([API, VAULT])
    assert set() == index.using([VAULT])
    assert set() == index.using([])


def test_a_changed_file_makes_dirty_the_templates_that_read_it() -> None:
    """`reading` names the templates whose source or include is among the paths, including a
    missing include that a failed render tried to read."""
    index = Index()
    common = Path("/t/common.j2")
    index.update("a", [DB], [Path("/t/a.j2"), common])
    index.update("b", [API], [Path("/t/b.j2"), common, Path("/t/missing.j2")])
    assert {"a", "b"} == index.reading([common])
    assert {"b"} == index.reading([Path("/t/missing.j2")])
    assert set() == index.reading([Path("/t/other.j2")])


def test_an_update_replaces_what_a_template_used_before() -> None:
    """A render that no longer uses a secret or an include drops it from that template."""
    index = Index()
    index.update("app", [DB, API], [Path("/t/app.j2"), Path("/t/old.j2")])
    index.update("app", [API], [Path("/t/app.j2")])
    assert set() == index.using([DB])
    assert set() == index.reading([Path("/t/old.j2")])
    assert frozenset({API}) == index.refs_of("app")


def test_remove_forgets_a_template_and_what_only_it_used() -> None:
    """A template taken out of the config no longer counts; unknown names are fine."""
    index = Index()
    index.update("a", [DB], [Path("/t/a.j2")])
    index.update("b", [DB, API], [Path("/t/b.j2")])
    index.remove("b")
    index.remove("never-there")
    assert "b" not in index
    assert "a" in index
    assert {"a"} == index.templates()
    assert {DB} == index.all_refs()
    assert {Path("/t/a.j2")} == index.all_files()
    assert frozenset() == index.refs_of("b")


def test_all_refs_and_files_are_the_union_over_templates() -> None:
    """What the cache must keep and the watcher must watch: the union over every template."""
    index = Index()
    index.update("a", [DB], [Path("/t/a.j2"), Path("/t/inc.j2")])
    index.update("b", [DB, VAULT], [Path("/t/b.j2"), Path("/t/inc.j2")])
    assert {DB, VAULT} == index.all_refs()
    assert {Path("/t/a.j2"), Path("/t/b.j2"), Path("/t/inc.j2")} == index.all_files()
    assert set() == Index().all_refs()
    assert set() == Index().all_files()
