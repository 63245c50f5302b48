"""Renders at scale: each template is compiled once per process, however many there are;
a one-shot pass holds a chunk's compiled templates at a time, not all of them."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from smagent import pipeline
from smagent.config import load_config
from smagent.pipeline import PassResult, Pipeline, TemplateResult
from smagent.providers import open_providers
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
    assert set(a.lookups) == set(b.lookups)
    assert {id(lookup) for lookup in a.lookups} == {id(lookup) for lookup in b.lookups}
    assert all(a.labels[lookup] == str(lookup) == b.labels[lookup] for lookup in a.lookups)


def _scale_workspace(root: Path, count: int) -> Workspace:
    ws = Workspace(root)
    ws.secrets = {f"s{n}": f"value {n}" for n in range(20)}
    ws.namespaces = {"app": {"provider": "local"}}
    for n in range(count):
        refs = " ".join(f"{{{{ secrets.app.s{(n + k) % 20} }}}}" for k in range(6))
        ws.template(f"t{n}.j2", f"line_{n} = {refs}\nother_{n} = {{{{ secrets.app.s{n % 20} }}}}\n")
    return ws


async def _peak_of_one_shot_pass(root: Path, count: int) -> tuple[int, PassResult]:
    """Peak traced memory (bytes) of a one-shot pass over `count` templates."""
    config = load_config(_scale_workspace(root, count).write())
    async with open_providers(config.providers) as providers:
        gc.collect()
        tracemalloc.start()
        try:
            result = await Pipeline(config, providers, one_shot=True).run()
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()


async def test_a_one_shot_pass_holds_few_compiled_templates_at_once(tmp_path: Path) -> None:
    """Memory of `render --once` grows by a few KB per template, not by each compiled template
    (held from the first round to the end: ~20 KB each, 412 MB at 10,000 templates)."""
    small = pipeline.CHUNK // 2
    large = small + 3 * pipeline.CHUNK
    peak_small, result_small = await _peak_of_one_shot_pass(tmp_path / "small", small)
    peak_large, result_large = await _peak_of_one_shot_pass(tmp_path / "large", large)
    assert result_small.ok
    assert result_large.ok
    assert "line_7 = value 7 value 8" in (tmp_path / "large/out/t7").read_text()
    per_template = (peak_large - peak_small) / (large - small)
    assert per_template < 4_000, f"{per_template:.0f} bytes more per template"


async def test_a_one_shot_pass_keeps_no_compiled_template(ws: Workspace) -> None:
    """After a one-shot pass the renderer holds no compiled template nor literal text; a
    pipeline that runs again (the agent's) keeps them for its next pass."""
    ws.templates = []
    for n in range(3):
        ws.template(f"t{n}.j2", f"{n} {{{{ secrets.db.host }}}}\n")
    ws.secrets["prod/db"] = {"host": "db.internal"}
    ws.namespaces = {"db": {"provider": "local", "secret": "prod/db"}}
    config = load_config(ws.write())
    async with open_providers(config.providers) as providers:
        once = Pipeline(config, providers, one_shot=True)
        kept = Pipeline(config, providers)
        assert (await once.run()).ok
        assert (await kept.run()).ok
    assert 0 == len(once.renderer.env.scans)
    assert 0 == len(once.renderer.env.cache or {})
    assert 3 == len(kept.renderer.env.scans)
    assert 3 <= len(kept.renderer.env.cache or {})


def test_a_pass_result_shows_counts_not_contents(ws: Workspace) -> None:
    """repr() of a pass's result is short however many templates it holds: asyncio.run
    builds it for its main task at exit (it took ~1 s and ~70 MB at 10,000 templates)."""
    ws.template("t.j2", "x")
    template = load_config(ws.write()).templates[0]
    result = PassResult(templates=[TemplateResult(template, pipeline.Status.WRITTEN)] * 1000)
    assert "PassResult(templates=1000, actions=0, fetched=0, ok=True)" == repr(result)
