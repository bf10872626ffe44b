"""Options and output helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from tqdm import tqdm

from ..naming import ModelRef
from ..store import (
    ProgressCallback,
    Store,
    StoreSettings,
    default_owner,
    open_store,
    split_model_uri,
)

F = TypeVar("F", bound=Callable[..., Any])


def store_options(fn: F) -> F:
    """``--store`` and the S3 options; each falls back to its ``HUBSERVE_*`` variable."""
    options = [
        click.option(
            "--store",
            "store",
            envvar="HUBSERVE_STORE",
            default=None,
            help="Store location: a directory, file:///dir or s3://bucket[/prefix]"
            " [env HUBSERVE_STORE; default $HUBSERVE_HOME].",
        ),
        click.option(
            "--s3-endpoint",
            envvar="HUBSERVE_S3_ENDPOINT",
            default=None,
            help="S3 server host:port [env HUBSERVE_S3_ENDPOINT].",
        ),
        click.option(
            "--s3-access-key",
            envvar="HUBSERVE_S3_ACCESS_KEY",
            default=None,
            help="S3 access key [env HUBSERVE_S3_ACCESS_KEY].",
        ),
        click.option(
            "--s3-secret-key",
            envvar="HUBSERVE_S3_SECRET_KEY",
            default=None,
            help="S3 secret key; prefer the environment variable [env HUBSERVE_S3_SECRET_KEY].",
        ),
        click.option(
            "--s3-secure/--s3-insecure",
            envvar="HUBSERVE_S3_SECURE",
            default=None,
            help="Use TLS for S3 [env HUBSERVE_S3_SECURE; default off].",
        ),
        click.option(
            "--s3-region",
            envvar="HUBSERVE_S3_REGION",
            default=None,
            help="S3 region [env HUBSERVE_S3_REGION].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def owner_option(fn: F) -> F:
    return click.option(
        "--owner",
        envvar="HUBSERVE_OWNER",
        default=None,
        help="Owner of the models [env HUBSERVE_OWNER; default: the hub or login user].",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def make_store(options: dict[str, Any], location: str | None = None) -> Store:
    overrides = {
        "store": options.get("store"),
        "s3_endpoint": options.get("s3_endpoint"),
        "s3_access_key": options.get("s3_access_key"),
        "s3_secret_key": options.get("s3_secret_key"),
        "s3_secure": options.get("s3_secure"),
        "s3_region": options.get("s3_region"),
    }
    settings = StoreSettings(**{k: v for k, v in overrides.items() if v is not None})
    return open_store(location or settings.store or None, settings)


def store_and_ref(text: str, options: dict[str, Any]) -> tuple[Store, ModelRef]:
    """Accept ``[owner/]name[:sel]`` with ``--store``, or a full URI naming both.

    ``s3://bucket/owner/name:version`` and ``file:///root/owner/name:version``: the last two
    path parts are the owner and the model, the rest is the store.
    """
    uri = split_model_uri(text)
    if uri is not None:
        location, ref = uri
        return make_store(options, location), ref
    owner = options.get("owner") or default_owner()
    return make_store(options), ModelRef.parse(text, default_owner=owner)


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True, default=str))
    else:
        human()


def _jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_jsonable(d) for d in data]
    if isinstance(data, dict):
        return {k: _jsonable(v) for k, v in data.items()}
    return data


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr fed by ``progress(done, total)`` callbacks."""
    bar = tqdm(
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled or None,
        leave=False,
    )

    def update(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
