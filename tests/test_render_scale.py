"""Renders at scale: each template is compiled once per process, however many there are."""

from __future__ import annotations

from smagent.config import load_config
from smagent.providers.base import SecretValue
from smagent.references import SecretRef
from smagent.render import Renderer
from smagent.render.context import Words
from tests.conftest import Workspace

DB = SecretRef("local", "prod/db")
VALUES = {DB: SecretValue('{"host": "db.internal"}')}
MANY = 450
"""More than Jinja's default cache of 400 compiled templates."""


def test_more_templates_than_jinjas_cache_are_compiled_once(ws: Workspace) -> None:
    """450 templates rendered twice (two rounds or two passes): the second render of each
    uses the template compiled by the first."""
    ws.templates = []
    for n in range(MANY):
        ws.template(f"t{n}.j2", f"{n} {{{{ secrets.db.host }}}}\n")
    config = load_config(ws.write())
    renderer = Renderer(config)
    compiled = []
    for template in config.templates:
        assert b"db.internal" in (renderer.render(template, VALUES).output or b"")
        compiled.append(renderer.env.get_template(str(template.source)))
    for template in config.templates:
        assert f"{template.name.removesuffix('.j2')[1:]} db.internal\n".encode() == (
            renderer.render(template, VALUES).output
        )
    assert all(
        a is renderer.env.get_template(str(t.source))
        for a, t in zip(compiled, config.templates, strict=True)
    )


def test_a_reload_with_more_templates_keeps_them_all_compiled(ws: Workspace) -> None:
    """A reload growing the config past 400 templates keeps each compiled template."""
    ws.templates = []
    ws.template("t0.j2", "{{ secrets.db.host }}")
    renderer = Renderer(load_config(ws.write()))
    for n in range(1, MANY):
        ws.template(f"t{n}.j2", f"{n} {{{{ secrets.db.host }}}}")
    config = load_config(ws.write())
    assert renderer is renderer.for_config(config)
    for template in config.templates:
        renderer.render(template, VALUES)
    compiled = [renderer.env.get_template(str(t.source)) for t in config.templates]
    for template in config.templates:
        renderer.render(template, VALUES)
    assert all(
        a is renderer.env.get_template(str(t.source))
        for a, t in zip(compiled, config.templates, strict=True)
    )


def test_words_are_looked_up_in_every_part_without_merging() -> None:
    """A render's safe words: the config's and the template's, and what is added later."""
    config_words = frozenset({"prod/db"})
    words = Words(config_words, frozenset({"host"})) | {"added"}
    assert all(text in words for text in ("prod/db", "host", "added"))
    assert "secret-canary" not in words
    assert frozenset({"prod/db"}) == config_words  # never merged into


def test_literal_words_come_from_the_compile_and_follow_an_edit(ws: Workspace) -> None:
    """The words a template's messages may show are those of its current text: scanned
    when it is compiled, and scanned again when the file changes."""
    ws.templates = []
    ws.template("t.j2", "{{ secrets.db.alpha_word }}")
    source = ws.root / "templates" / "t.j2"
    config = load_config(ws.write())
    renderer = Renderer(config)
    template = config.templates[0]
    first = renderer.render(template, VALUES)
    assert "'alpha_word'" in str(first.problems[0])
    assert "alpha_word" in renderer.env.scans[str(template.source)].words
    source.write_text("{{ secrets.db.beta_word }}")
    renderer.invalidate([source])
    second = renderer.render(template, VALUES)
    assert "'beta_word'" in str(second.problems[0])
    assert "alpha_word" not in renderer.env.scans[str(template.source)].words


def test_templates_naming_one_secret_share_its_lookup_and_label(ws: Workspace) -> None:
    """Outcomes keep one lookup object and one label string per distinct reference,
    however many templates name it (memory at 10,000 templates)."""
    ws.templates = []
    ws.template("a.j2", "{{ secrets.db.host }}")
    ws.template("b.j2", "b {{ secrets.db.host }}")
    config = load_config(ws.write())
    renderer = Renderer(config)
    a, b = (renderer.render(template, VALUES) for template in config.templates)
    assert a.lookups == b.lookups
    assert {id(lookup) for lookup in a.lookups} == {id(lookup) for lookup in b.lookups}
    assert all(a.labels[lookup] is b.labels[lookup] for lookup in a.lookups)
