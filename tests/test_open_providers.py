"""Opening and closing providers together; each store's SDK imported only when configured.

In-process tests use small providers whose open or close fails on purpose
(no real store can be made to); the CLI tests run the real `smagent` in a
subprocess, with an SDK hidden by a `sitecustomize` to play a host without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from smagent.providers import ProviderSetupError, enter_providers, open_providers
from smagent.providers.base import Unavailable
from tests.conftest import CANARY, Workspace, run_cli
from tests.fakes.memory import MemoryProvider


class FailingClose(MemoryProvider):
    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        raise RuntimeError(CANARY)  # a bug whose text holds a value


class FailingOpen(MemoryProvider):
    async def __aenter__(self) -> FailingOpen:
        raise Unavailable(None, "cannot read the credentials file /etc/creds")


async def test_every_provider_is_closed_when_one_close_fails() -> None:
    """a, b (whose close raises), c: all three closed, the body's result kept, the failure
    logged by type only (its text may hold a value)."""
    a, b, c = MemoryProvider("a"), FailingClose("b"), MemoryProvider("c")

    with capture_logs() as logs:
        async with enter_providers({"a": a, "b": b, "c": c}) as opened:
            assert {"a": a, "b": b, "c": c} == opened
            assert [1, 1, 1] == [a.opened, b.opened, c.opened]

    assert [1, 1, 1] == [a.closed, b.closed, c.closed]
    failed = [e for e in logs if e["event"] == "provider.close_failed"]
    assert [("b", "RuntimeError")] == [(e["provider"], e["error_type"]) for e in failed]
    assert CANARY not in repr(logs)


async def test_an_error_in_the_body_still_closes_every_provider() -> None:
    """The command fails: its exception goes up, every provider is closed on the way."""
    a, b = MemoryProvider("a"), MemoryProvider("b")

    with pytest.raises(KeyError):
        async with enter_providers({"a": a, "b": b}):
            raise KeyError("the command's own failure")

    assert [1, 1] == [a.closed, b.closed]


async def test_a_provider_that_cannot_open_closes_those_opened_before_it() -> None:
    """b fails to open: a (already open) is closed, c never opened; a setup error names b."""
    a, b, c = MemoryProvider("a"), FailingOpen("b"), MemoryProvider("c")

    with pytest.raises(ProviderSetupError) as info:
        async with enter_providers({"a": a, "b": b, "c": c}):
            pytest.fail("the body must not run")

    assert "providers.b: cannot be opened: cannot read the credentials file /etc/creds" == str(
        info.value
    )
    assert (1, 1) == (a.opened, a.closed)
    assert (0, 0) == (c.opened, c.closed)


async def test_open_providers_builds_and_enters_the_configured_ones(ws: Workspace) -> None:
    """From a real config: the file and env providers, entered, usable, then closed."""
    from smagent.config import load_config
    from smagent.references import SecretRef

    ws.providers["environment"] = {"type": "env"}
    config = load_config(ws.write())

    async with open_providers(config.providers) as providers:
        assert ["local", "environment"] == list(providers)
        found = await providers["local"].fetch([SecretRef("local", "api-token")])
        assert "SecretValue(<redacted>, version=None)" == repr(
            found[SecretRef("local", "api-token")]
        )


# -- each SDK only when configured ---------------------------------------------------------------

CLOUD_SDKS = ("aiobotocore", "botocore", "boto3", "azure", "aiohttp", "msal")

RECORD_MODULES = """
import atexit, sys
def _record():
    with open({path!r}, "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
atexit.register(_record)
"""


def test_a_file_only_render_imports_no_cloud_sdk(ws: Workspace, tmp_path: Path) -> None:
    """`render --once` with file and env providers imports no botocore, aiobotocore, azure or
    aiohttp: `sys.modules` as the process exits, recorded by a sitecustomize."""
    site, record = tmp_path / "site", tmp_path / "modules.txt"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RECORD_MODULES.format(path=str(record)))
    ws.providers["environment"] = {"type": "env"}
    dest = ws.template("t.j2", "{{ secrets.db.password }}\n")

    run = ws.run("render", "--once", env={"PYTHONPATH": str(site)})

    assert 0 == run.returncode, run.stderr
    assert CANARY + "\n" == dest.read_text()
    modules = record.read_text().splitlines()
    assert "smagent.providers.file" in modules  # the record is complete: the render ran
    assert [] == [m for m in modules if m.split(".")[0] in CLOUD_SDKS]


@pytest.mark.parametrize(
    ("raw", "hidden", "extra"),
    [
        ({"type": "aws", "region": "eu-west-1"}, "aiobotocore", "aws"),
        ({"type": "azure", "vault_url": "https://kv.vault.azure.net"}, "azure.identity", "azure"),
        (
            {"type": "vault", "address": "https://vault:8200", "auth": {"method": "token"}},
            "aiohttp",
            "vault",
        ),
    ],
    ids=["aws", "azure", "vault"],
)
def test_a_store_whose_sdk_is_missing_is_a_setup_error_naming_the_extra(
    tmp_path: Path, raw: dict[str, object], hidden: str, extra: str
) -> None:
    """A configured store without its SDK: exit 2, nothing written, no traceback, and the
    error says which pip extra to install."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{hidden!r}] = None\n")
    config = tmp_path / "smagent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "providers": {"cloud": raw},
                "templates": [{"contents": "x\n", "destination": "out/x"}],
            }
        )
    )

    run = run_cli("--config", config, "render", "--once", env={"PYTHONPATH": str(site)})

    assert 2 == run.returncode
    assert f"pip install 'smagent[{extra}]'" in run.stderr
    assert run.stderr.startswith(f"error: {config}: providers.cloud: the {raw['type']} provider")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
