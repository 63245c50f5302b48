"""Template loading: each reason a file cannot be loaded is named, and denied files stay denied."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smagent.config import load_config
from smagent.render import Renderer, RenderOutcome
from tests import leaks
from tests.conftest import CANARIES, Workspace, assert_no_canary, special_file


def render(ws: Workspace, text: str, values: dict[object, object] | None = None) -> RenderOutcome:
    ws.templates = []
    ws.template("t.j2", text)
    config = load_config(ws.write())
    return Renderer(config).render(config.templates[0], values or {})  # type: ignore[arg-type]


def problem(outcome: RenderOutcome) -> str:
    assert outcome.output is None
    (found,) = outcome.problems
    return str(found)


def test_missing_include_names_the_folders(ws: Workspace) -> None:
    """A missing include says "not found", with its line and the folders that were searched."""
    text = problem(render(ws, 'line one\n{% include "nope.j2" %}\n'))
    assert "t.j2:2: template 'nope.j2': not found (looked in " in text
    assert f"{ws.root}, {ws.root / 'templates'})" in text


def test_symlink_out_of_the_folders_is_named_as_such(ws: Workspace, tmp_path: Path) -> None:
    """A symlink that resolves outside the allowed folders says so, naming where it leads."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("not a template\n")
    try:
        (ws.root / "templates").mkdir(parents=True, exist_ok=True)
        (ws.root / "templates" / "link.j2").symlink_to(outside)
        text = problem(render(ws, '{% include "link.j2" %}'))
    finally:
        outside.unlink()
    assert "template 'link.j2': " in text
    assert f"resolves to {outside}, outside the folders templates may include from" in text


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_include_of_a_special_file_says_what_it_is(ws: Workspace, kind: str) -> None:
    """A FIFO or a folder under the template folder is named as such, and never read."""
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    with special_file(ws.root / "templates" / "odd.j2", kind):
        text = problem(render(ws, '{% include "odd.j2" %}'))
    expected = "a FIFO" if kind == "fifo" else "a folder"
    assert f"template 'odd.j2': {ws.root / 'templates' / 'odd.j2'} is {expected}" in text


def test_include_that_is_not_utf8(ws: Workspace) -> None:
    """A file that is not UTF-8 is named as such, not as missing."""
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    (ws.root / "templates" / "latin1.j2").write_bytes("caf\xe9\n".encode("latin-1"))
    text = problem(render(ws, 'x\n\n{% include "latin1.j2" %}'))
    assert "t.j2:3: template 'latin1.j2': " in text
    assert "latin1.j2 is not UTF-8 text" in text


def test_the_template_itself_not_utf8(ws: Workspace) -> None:
    """A configured template that is not UTF-8 says so, with its path."""
    ws.templates = []
    path = ws.template("t.j2", "")
    source = ws.root / "templates" / "t.j2"
    config = load_config(ws.write())
    source.write_bytes(b"\xff\xfe\n")
    outcome = Renderer(config).render(config.templates[0], {})
    assert not path.exists()
    assert f"{source}: cannot load the template: {source} is not UTF-8 text" == problem(outcome)


def test_configured_template_may_be_a_symlink_anywhere(ws: Workspace, tmp_path: Path) -> None:
    """The config names its templates: a configured source may be a symlink to another folder."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "real.j2").write_text("host={{ secrets.db.host }}\n")
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    (ws.root / "templates" / "t.j2").symlink_to(shared / "real.j2")
    ws.templates = [{"source": "templates/t.j2", "destination": "out/t"}]
    result = ws.run("render", "--once")
    assert 0 == result.returncode, result.stderr
    assert "host=db.internal\n" == (ws.root / "out" / "t").read_text()


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("secrets.yaml", "a file provider 'local' reads"),
        ("../secrets.yaml", "a file provider 'local' reads"),
        ("smagent.yaml", "the config file"),
    ],
)
def test_include_cannot_read_secrets_or_config(ws: Workspace, name: str, what: str) -> None:
    """The secrets file and the config file are refused by name, even in the same folder."""
    text = problem(render(ws, f'{{% include "{name}" %}}'))
    assert f"template '{name}': refused: " in text
    assert f" is {what}" in text
    assert_no_canary(text)


def test_hard_link_to_the_secrets_file_is_refused(ws: Workspace) -> None:
    """A hard link to the secrets file inside the template folder is the same file: refused."""
    ws.write()
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    os.link(ws.root / "secrets.yaml", ws.root / "templates" / "copy.j2")
    leaks.allow_secrets_in(ws.root / "templates" / "copy.j2")  # the same file, on purpose
    text = problem(render(ws, '{% include "copy.j2" %}'))
    assert "template 'copy.j2': refused: " in text
    assert f"is the same file as {ws.root / 'secrets.yaml'} (a hard link or another name)" in text
    assert "a file provider 'local' reads" in text


def test_hard_link_refused_through_the_cli(ws: Workspace) -> None:
    """End to end: the hard link is refused, the file is not written, no secret is printed."""
    ws.write()
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    os.link(ws.root / "secrets.yaml", ws.root / "templates" / "copy.j2")
    leaks.allow_secrets_in(ws.root / "templates" / "copy.j2")  # the same file, on purpose
    dest = ws.template("t.j2", '{% include "copy.j2" %}')
    result = ws.run("render", "--once")
    assert 1 == result.returncode
    assert not dest.exists()
    assert "refused" in result.stderr
    for canary in CANARIES:
        assert canary not in result.stdout + result.stderr


def test_hard_link_to_the_config_file_is_refused(ws: Workspace) -> None:
    """The config file is compared by inode too."""
    ws.write()
    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    os.link(ws.config_path, ws.root / "templates" / "conf.j2")
    text = problem(render(ws, '{% include "conf.j2" %}'))
    assert "refused: " in text
    assert "the config file" in text


def test_computed_include_names_are_masked_but_the_reason_stays(ws: Workspace) -> None:
    """An include whose name comes from a secret shows <computed>, the reason, and no path."""
    from smagent.providers.base import SecretValue
    from smagent.references import SecretRef

    ws.write()
    ref = SecretRef("local", "prod/db")
    values = {ref: SecretValue('{"name": "../secrets.yaml", "missing": "no-such-file-77"}')}
    text = problem(render(ws, "{% include secrets.db.name %}", values))  # type: ignore[arg-type]
    assert "template <computed>: refused: it is a file provider 'local' reads" in text
    assert "secrets.yaml" not in text
    text = problem(render(ws, "{% include secrets.db.missing %}", values))  # type: ignore[arg-type]
    assert "template <computed>: not found" in text
    assert "no-such-file-77" not in text


def test_missing_include_with_ignore_missing_is_skipped_but_a_refused_one_is_not(
    ws: Workspace,
) -> None:
    """`ignore missing` skips a file that is not there, never one that is refused."""
    assert b"ok" == render(ws, '{% include "nope.j2" ignore missing %}ok').output
    text = problem(render(ws, '{% include "secrets.yaml" ignore missing %}ok'))
    assert "refused" in text


def test_unreadable_include_says_permission_denied(ws: Workspace) -> None:
    """A file the process may not read is named as such, not as missing.

    Root reads any file, so as root the CLI runs without the two capabilities
    that let it (`setpriv`, util-linux), and then meets the mode bits like anyone.
    """
    ws.template("t.j2", 'a\n{% include "locked.j2" %}\n')
    locked = ws.root / "templates" / "locked.j2"
    locked.write_text("not for this process\n")
    locked.chmod(0o000)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: every file is readable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    ws.write()
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "smagent", "--config", str(ws.config_path), "check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("SMAGENT_")},
    )
    leaks.assert_no_leak(proc.stdout + proc.stderr, "smagent check")
    assert 1 == proc.returncode, proc.stderr
    assert f"t.j2:2: template 'locked.j2': {locked}: permission denied" in proc.stdout


def test_syntax_error_in_a_computed_include_hides_its_path(ws: Workspace) -> None:
    """A syntax error in a file included by a computed name names neither the file nor its path."""
    from smagent.providers.base import SecretValue
    from smagent.references import SecretRef

    (ws.root / "templates").mkdir(parents=True, exist_ok=True)
    (ws.root / "templates" / "broken-part-41.j2").write_text("ok\n{% if %}\n")
    values = {SecretRef("local", "prod/db"): SecretValue('{"part": "broken-part-41.j2"}')}
    text = problem(render(ws, "{% include secrets.db.part %}", values))  # type: ignore[arg-type]
    assert text.startswith("<computed>:2: template syntax error: "), text
    assert "broken-part-41" not in text
    text = problem(render(ws, '{% include "broken-part-41.j2" %}'))
    assert (
        text.startswith(f"{ws.root / 'broken-part-41.j2'}:2: ") or "broken-part-41.j2:2: " in text
    )


def test_include_of_a_list_names_each_name_it_tried(ws: Workspace) -> None:
    """`{% include [a, b] %}` with neither there names both (literal names only)."""
    from smagent.providers.base import SecretValue
    from smagent.references import SecretRef

    values = {SecretRef("local", "prod/db"): SecretValue('{"host": "b-76.j2"}')}
    text = problem(render(ws, '{% include ["a.j2", secrets.db.host] %}', values))  # type: ignore[arg-type]
    assert "none of the templates 'a.j2', <computed> could be loaded" in text
