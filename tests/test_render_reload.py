"""`Renderer.for_config`: a config reload keeps the compiled templates when it can, and
never serves what the new config would not allow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smagent.config import Config, TemplateSpec, load_config
from smagent.providers.base import SecretValue
from smagent.references import SecretRef
from smagent.render import Renderer, RenderOutcome
from tests.conftest import Workspace

DB = SecretRef("local", "prod/db")
VALUES = {DB: SecretValue('{"host": "db.internal"}')}


def output(outcome: RenderOutcome) -> str:
    assert () == outcome.problems
    assert outcome.output is not None
    return outcome.output.decode()


def named(config: Config, name: str) -> TemplateSpec:
    return next(t for t in config.templates if t.name == name)


@pytest.fixture
def first(ws: Workspace) -> tuple[Renderer, Config]:
    """A renderer that has rendered templates/t.j2 (which includes a.j2) once."""
    ws.templates = []
    ws.template("t.j2", '{{ secrets.db.host }} {% include "a.j2" %}')
    (ws.root / "templates" / "a.j2").write_text("A")
    config = load_config(ws.write())
    renderer = Renderer(config)
    assert "db.internal A" == output(renderer.render(named(config, "t.j2"), VALUES))
    return renderer, config


def test_reload_of_values_and_actions_keeps_every_compiled_template(
    ws: Workspace, first: tuple[Renderer, Config]
) -> None:
    """New namespaces, modes and actions: the same renderer, the same compiled templates,
    and the new namespaces in use."""
    renderer, config = first
    compiled = [
        renderer.env.get_template(name) for name in (str(config.templates[0].source), "a.j2")
    ]
    ws.namespaces["db"] = {"provider": "local", "secret": "prod/db2"}
    ws.templates[0] |= {"mode": "0640", "on_change": [{"command": ["true"]}]}
    reloaded = load_config(ws.write())

    assert renderer is renderer.for_config(reloaded)
    outcome = renderer.render(named(reloaded, "t.j2"), VALUES)
    assert {SecretRef("local", "prod/db2")} == set(outcome.missing)
    assert compiled == [
        renderer.env.get_template(name) for name in (str(config.templates[0].source), "a.j2")
    ]


def test_reload_adding_a_template_in_the_same_folder_keeps_the_renderer(
    ws: Workspace, first: tuple[Renderer, Config]
) -> None:
    """A template added next to the others is rendered by the same renderer."""
    renderer, config = first
    compiled = renderer.env.get_template(str(config.templates[0].source))
    ws.template("u.j2", "u here")
    reloaded = load_config(ws.write())
    assert renderer is renderer.for_config(reloaded)
    assert "u here" == output(renderer.render(named(reloaded, "u.j2"), VALUES))
    assert compiled is renderer.env.get_template(str(config.templates[0].source))


def test_reload_with_another_template_folder_is_a_new_renderer(
    ws: Workspace, first: tuple[Renderer, Config]
) -> None:
    """A template in a new folder changes where includes are looked for: a new renderer."""
    renderer, _ = first
    (ws.root / "more").mkdir()
    (ws.root / "more" / "v.j2").write_text("v")
    ws.templates.append({"source": "more/v.j2", "destination": "out/v"})
    reloaded = load_config(ws.write())
    fresh = renderer.for_config(reloaded)
    assert renderer is not fresh
    assert "v" == output(fresh.render(named(reloaded, "v.j2"), VALUES))


def test_reload_with_another_secrets_file_refuses_it_to_templates(
    ws: Workspace, first: tuple[Renderer, Config]
) -> None:
    """A provider reading a new file: a new renderer, in which that file cannot be included."""
    renderer, _ = first
    ws.providers["local"]["path"] = "templates/other-secrets.yaml"
    (ws.root / "templates" / "other-secrets.yaml").write_text("k: v\n")
    (ws.root / "templates" / "other-secrets.yaml").chmod(0o600)
    ws.template("leak.j2", '{% include "other-secrets.yaml" %}')
    reloaded = load_config(ws.write())
    fresh = renderer.for_config(reloaded)
    assert renderer is not fresh
    (problem,) = fresh.render(named(reloaded, "leak.j2"), VALUES).problems
    assert "other-secrets.yaml is a file provider 'local' reads" in str(problem)


def test_reload_with_new_inline_text_renders_the_new_text(ws: Workspace) -> None:
    """A `contents:` template edited in the config renders its new text (inline text has no
    file whose change the loader could see)."""
    ws.templates = [{"contents": "one {{ secrets.db.host }}", "destination": "out/x"}]
    config = load_config(ws.write())
    renderer = Renderer(config)
    assert "one db.internal" == output(renderer.render(config.templates[0], VALUES))
    ws.templates[0]["contents"] = "two {{ secrets.db.host }}"
    reloaded = load_config(ws.write())
    assert renderer is renderer.for_config(reloaded)
    assert "two db.internal" == output(renderer.render(reloaded.templates[0], VALUES))


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A file outside every folder templates may include from."""
    path = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    path.write_text("outside text\n")
    yield path
    path.unlink()


def test_template_dropped_by_a_reload_is_no_longer_read_outside_the_folders(
    ws: Workspace, outside: Path
) -> None:
    """A configured template may be a symlink to anywhere; once a reload drops it, an
    include of the same path is refused, though its compiled text was in the cache."""
    ws.templates = []
    ws.template("t.j2", "t")
    link = ws.root / "templates" / "link.j2"
    ws.templates.append({"source": "templates/link.j2", "destination": "out/link"})
    link.symlink_to(outside)
    ws.template("inc.j2", "{% include '" + str(link) + "' %}")
    config = load_config(ws.write())
    renderer = Renderer(config)
    assert "outside text\n" == output(renderer.render(named(config, "link.j2"), VALUES))
    assert "outside text\n" == output(renderer.render(named(config, "inc.j2"), VALUES))

    ws.templates = [t for t in ws.templates if t["source"] != "templates/link.j2"]
    reloaded = load_config(ws.write())
    assert renderer is renderer.for_config(reloaded)
    (problem,) = renderer.render(named(reloaded, "inc.j2"), VALUES).problems
    assert "outside the folders templates may include from" in str(problem)


def test_reload_giving_a_name_another_source_renders_that_source(
    ws: Workspace, first: tuple[Renderer, Config]
) -> None:
    """A template name that now names another file renders the other file."""
    renderer, _ = first
    (ws.root / "templates" / "t2.j2").write_text("second file")
    ws.templates[0] |= {"source": "templates/t2.j2", "name": "t.j2"}
    reloaded = load_config(ws.write())
    assert renderer is renderer.for_config(reloaded)
    assert "second file" == output(renderer.render(named(reloaded, "t.j2"), VALUES))
