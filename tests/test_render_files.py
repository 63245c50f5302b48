"""Which files a render read (RenderOutcome.files), and renders that follow edits to them:
`Renderer.invalidate`, and the loader's own check that a compiled template is current."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import pytest

from smagent.config import Config, load_config
from smagent.providers.base import SecretValue
from smagent.references import SecretRef
from smagent.render import Renderer, RenderOutcome
from tests.conftest import Workspace

DB = SecretRef("local", "prod/db")
VALUES = {DB: SecretValue('{"host": "db.internal"}')}


def setup(ws: Workspace, text: str, files: dict[str, str] | None = None) -> tuple[Renderer, Config]:
    """One template `templates/t.j2` holding `text`, plus `files` (relative to ws.root)."""
    ws.templates = []
    ws.template("t.j2", text)
    for name, content in (files or {}).items():
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_text(content)
    config = load_config(ws.write())
    return Renderer(config), config


def output(outcome: RenderOutcome) -> str:
    assert () == outcome.problems
    assert outcome.output is not None
    return outcome.output.decode()


def both_roots(ws: Workspace, name: str) -> set[Path]:
    """Where a relative include is looked for: the config folder, then the templates folder."""
    return {ws.root.resolve() / name, ws.root.resolve() / "templates" / name}


@pytest.mark.parametrize(
    ("text", "found", "missing"),
    [
        ('{% include "a.j2" %}', ["a.j2"], []),
        ('{% include ["nope.j2", "a.j2"] %}', ["a.j2"], ["nope.j2"]),
        ('{% include "nope.j2" ignore missing %}', [], ["nope.j2"]),
        ('{% import "m.j2" as m %}{{ m.hi() }}', ["m.j2"], []),
        ('{% from "m.j2" import hi %}{{ hi() }}', ["m.j2"], []),
        ('{% extends "base.j2" %}{% block b %}{% include "a.j2" %}{% endblock %}', [], []),
    ],
    ids=["include", "include-list", "ignore-missing", "import", "from-import", "extends"],
)
def test_files_are_the_source_and_every_file_loaded_or_looked_for(
    ws: Workspace, text: str, found: list[str], missing: list[str]
) -> None:
    """Every way a template loads another is recorded, with each folder a relative name was
    looked for in (a file created there later would be read instead), on every render (the
    compiled templates come from a cache after the first)."""
    renderer, config = setup(
        ws,
        text,
        {
            "templates/a.j2": "A",
            "templates/m.j2": "{% macro hi() %}hi{% endmacro %}",
            "templates/base.j2": "<{% block b %}{% endblock %}>",
        },
    )
    if "extends" in text:
        found = ["base.j2", "a.j2"]
    expected = {config.templates[0].source}
    for name in found + missing:
        expected |= both_roots(ws, name)
    for _ in range(2):
        outcome = renderer.render(config.templates[0], VALUES)
        output(outcome)
        assert expected == set(outcome.files)


def test_failed_render_reports_the_files_it_got_to(ws: Workspace) -> None:
    """A render that fails reports the files it read up to the failure, not those after."""
    renderer, config = setup(
        ws,
        '{% include "a.j2" %}\n{{ no_such_variable }}\n{% include "b.j2" %}\n',
        {"templates/a.j2": "A", "templates/b.j2": "B"},
    )
    outcome = renderer.render(config.templates[0], VALUES)
    assert outcome.output is None
    assert {config.templates[0].source, *both_roots(ws, "a.j2")} == set(outcome.files)


def test_missing_include_is_a_file_to_watch(ws: Workspace) -> None:
    """A render that fails on a missing include names where it looked; once the file is
    there (and the agent says so), the next render reads it."""
    renderer, config = setup(ws, '{% include "later.j2" %}')
    outcome = renderer.render(config.templates[0], VALUES)
    assert outcome.output is None
    assert both_roots(ws, "later.j2") <= outcome.files
    (ws.root / "templates" / "later.j2").write_text("now here\n")
    renderer.invalidate(outcome.files)
    assert "now here\n" == output(renderer.render(config.templates[0], VALUES))


def test_missing_template_source_is_its_file(ws: Workspace) -> None:
    """A configured template whose file is gone reports that file."""
    renderer, config = setup(ws, "x")
    source = config.templates[0].source
    assert source is not None
    source.unlink()
    outcome = renderer.render(config.templates[0], VALUES)
    assert outcome.output is None
    assert {source} == set(outcome.files)


def test_inline_contents_report_only_their_includes(ws: Workspace) -> None:
    """A `contents:` template has no file of its own: only what it includes."""
    ws.templates = [{"contents": 'x{% include "a.j2" %}', "destination": "out/x"}]
    (ws.root / "a.j2").write_text("A")
    config = load_config(ws.write())
    outcome = Renderer(config).render(config.templates[0], VALUES)
    assert "xA" == output(outcome)
    assert {ws.root.resolve() / "a.j2"} == set(outcome.files)


def test_symlinked_include_reports_the_link_and_its_target(ws: Workspace) -> None:
    """An include that is a symlink reports both paths: an edit of either is seen."""
    target = ws.root / "templates" / "real" / "a.j2"
    renderer, config = setup(ws, '{% include "a.j2" %}', {"templates/real/a.j2": "A"})
    (ws.root / "templates" / "a.j2").symlink_to(target)
    outcome = renderer.render(config.templates[0], VALUES)
    assert "A" == output(outcome)
    assert {target.resolve(), ws.root.resolve() / "templates" / "a.j2"} <= outcome.files


def test_invalidate_drops_what_read_a_changed_file_and_nothing_else(ws: Workspace) -> None:
    """invalidate() recompiles the templates that read one of the paths, whatever the file's
    size and times say, and keeps every other compiled template."""
    ws.templates = []
    ws.template("t.j2", '{% include "a.j2" %}')
    ws.template("u.j2", "u")
    (ws.root / "templates" / "a.j2").write_text("A")
    config = load_config(ws.write())
    renderer = Renderer(config)
    first = {t.name: renderer.render(t, VALUES) for t in config.templates}
    t_name, u_name = (str(t.source) for t in config.templates)
    compiled = {name: renderer.env.get_template(name) for name in (t_name, u_name, "a.j2")}

    renderer.invalidate([ws.root / "templates" / "a.j2"])

    assert compiled[t_name] is renderer.env.get_template(t_name)
    assert compiled[u_name] is renderer.env.get_template(u_name)
    assert compiled["a.j2"] is not renderer.env.get_template("a.j2")
    assert first["t.j2"].files == renderer.render(config.templates[0], VALUES).files


def test_edit_shadowing_an_include_is_read_after_invalidate(ws: Workspace) -> None:
    """An include found in the second folder, then created in the first: the file that was
    read did not change at all, so only invalidate() can tell the new one is to be read."""
    renderer, config = setup(ws, '{% include "a.j2" %}', {"templates/a.j2": "second"})
    outcome = renderer.render(config.templates[0], VALUES)
    assert "second" == output(outcome)
    (ws.root / "a.j2").write_text("first")
    assert "second" == output(renderer.render(config.templates[0], VALUES))
    renderer.invalidate(outcome.files)
    assert "first" == output(renderer.render(config.templates[0], VALUES))


def test_same_size_edit_with_the_mtime_put_back_is_read_after_invalidate(ws: Workspace) -> None:
    """An in-place edit of the same size whose mtime is set back (as a coarse clock or
    `touch -r` leaves it) is read on the next render after invalidate() (here the ctime
    moved too, which the loader also checks: this fails only if both checks fail)."""
    renderer, config = setup(ws, '{% include "a.j2" %}', {"templates/a.j2": "AAAA"})
    include = ws.root / "templates" / "a.j2"
    before = include.stat()
    assert "AAAA" == output(renderer.render(config.templates[0], VALUES))
    with include.open("r+") as file:
        file.write("BBBB")
    os.utime(include, ns=(before.st_atime_ns, before.st_mtime_ns))
    renderer.invalidate([include])
    assert "BBBB" == output(renderer.render(config.templates[0], VALUES))


def test_rename_over_keeping_the_mtime_is_seen_without_invalidate(ws: Workspace) -> None:
    """A file replaced by a rename whose mtime equals the old one (`cp -p`, `rsync -t`,
    an unpacked archive) is a new file: the loader reads it without being told."""
    renderer, config = setup(ws, '{% include "a.j2" %}', {"templates/a.j2": "old!"})
    include = ws.root / "templates" / "a.j2"
    before = include.stat()
    assert "old!" == output(renderer.render(config.templates[0], VALUES))
    replacement = ws.root / "templates" / "a.j2.new"
    replacement.write_text("new!")
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    replacement.rename(include)
    assert "new!" == output(renderer.render(config.templates[0], VALUES))


def test_symlink_swap_is_seen_without_invalidate(ws: Workspace) -> None:
    """A Kubernetes ConfigMap update (the `..data` symlink swapped to a new folder, the old
    one still there, the same mtimes) is read without being told."""
    folder = ws.root / "templates"
    renderer, config = setup(
        ws, '{% include "a.j2" %}', {"templates/..v1/a.j2": "v1", "templates/..v2/a.j2": "v2"}
    )
    v1 = (folder / "..v1" / "a.j2").stat()
    os.utime(folder / "..v2" / "a.j2", ns=(v1.st_atime_ns, v1.st_mtime_ns))
    (folder / "..data").symlink_to("..v1")
    (folder / "a.j2").symlink_to("..data/a.j2")
    assert "v1" == output(renderer.render(config.templates[0], VALUES))
    (folder / "..data_tmp").symlink_to("..v2")
    (folder / "..data_tmp").rename(folder / "..data")
    assert "v2" == output(renderer.render(config.templates[0], VALUES))


def test_messages_follow_an_edited_include(ws: Workspace) -> None:
    """The names an error may show come from the include as it is now: a key written in
    the new text is named, not masked as computed."""
    renderer, config = setup(
        ws, '{% include "a.j2" %}', {"templates/a.j2": "{{ secrets.db.host }}"}
    )
    assert "db.internal" == output(renderer.render(config.templates[0], VALUES))
    (ws.root / "templates" / "a.j2").write_text("{{ secrets.db.hots }}")
    (problem,) = renderer.render(config.templates[0], VALUES).problems
    assert "key 'hots' not in secret prod/db (keys: host)" in str(problem)


def test_renders_in_threads_at_once_each_report_their_own_files(ws: Workspace) -> None:
    """A pass renders its templates in threads at once: each outcome holds only the files
    of its own template."""
    ws.templates = []
    for index in range(8):
        ws.template(f"t{index}.j2", f'{{% include "inc{index}.j2" %}}')
        (ws.root / "templates" / f"inc{index}.j2").write_text("x" * 10_000)
    config = load_config(ws.write())
    renderer = Renderer(config)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            outcomes = list(pool.map(lambda t: renderer.render(t, VALUES), config.templates))
            for index, (template, outcome) in enumerate(
                zip(config.templates, outcomes, strict=True)
            ):
                expected = {template.source, *both_roots(ws, f"inc{index}.j2")}
                assert expected == set(outcome.files)
            renderer.invalidate(p for outcome in outcomes for p in outcome.files)
