"""What a user writes by hand instead of smagent: the contenders of `stores.py`'s fan-out.

  loop   one boto3 `get_secret_value` per reference, in order, while Jinja2 renders
  cache  the same through aws-secretsmanager-caching's `SecretCache` (DescribeSecret and
         GetSecretValue per secret on a cold cache)
  bound  not a renderer: BatchGetSecretValue calls of 20 ids, all issued at once
         (threads), to measure what the store physically allows

Usage: `python benchmarks/aws_by_hand.py MODE TEMPLATES_DIR OUT_DIR [SECRET_ID...]`
(endpoint and credentials from the usual AWS_* variables; an endpoint other than
127.0.0.1 is refused: benchmarks never leave this host). Each template refers to
secrets as `{{ secret("aws:NAME") }}`, the spelling smagent reads too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import botocore.config
import jinja2


def render_all(templates: Path, out: Path, fetch: Callable[[str], str]) -> None:
    # config files, not HTML: no autoescape, as smagent renders them
    env = jinja2.Environment(  # noqa: S701
        loader=jinja2.FileSystemLoader(templates), keep_trailing_newline=True
    )
    env.globals["secret"] = lambda ref: fetch(ref.removeprefix("aws:"))
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(templates)):
        text = env.get_template(name).render()
        target = out / name.removesuffix(".j2")
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)


def local_endpoint() -> str:
    """The endpoint `stores.py` sets; without it boto3 would call the real AWS."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or os.environ.get(
        "AWS_ENDPOINT_URL", ""
    )
    if not endpoint.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
        sys.exit(
            "aws_by_hand.py: set AWS_ENDPOINT_URL_SECRETS_MANAGER to a local store "
            f"(http://127.0.0.1:PORT), not {endpoint!r}: benchmarks stay on this host"
        )
    return endpoint


def main() -> None:
    mode, templates, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    local_endpoint()
    pool = botocore.config.Config(max_pool_connections=50)
    client = boto3.client("secretsmanager", config=pool)
    if mode == "loop":
        render_all(
            templates, out, lambda name: client.get_secret_value(SecretId=name)["SecretString"]
        )
    elif mode == "cache":
        from aws_secretsmanager_caching import SecretCache  # type: ignore[import-untyped]

        cache = SecretCache(client=client)
        render_all(templates, out, cache.get_secret_string)
    elif mode == "bound":
        ids = sys.argv[4:]
        chunks = [ids[i : i + 20] for i in range(0, len(ids), 20)]
        with ThreadPoolExecutor(len(chunks)) as threads:
            answers = list(
                threads.map(lambda c: client.batch_get_secret_value(SecretIdList=c), chunks)
            )
        assert len(ids) == sum(len(a["SecretValues"]) for a in answers)
    else:
        raise SystemExit(f"unknown mode {mode!r} (loop, cache or bound)")


if __name__ == "__main__":
    main()
