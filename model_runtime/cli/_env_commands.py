"""``hubserve env`` (build, list, gc) and the environment options of ``serve``.

The policy options are shared by every command that builds environments, and each falls
back to the ``HUBSERVE_ENV_*`` variable the hub service reads (lists as JSON), so a
Kubernetes init container, ``hubserve serve`` and the service apply the same rules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..envs import Environment, EnvironmentManager, EnvironmentPolicy
from ..paths import default_cache_dir

F = TypeVar("F", bound=Callable[..., Any])


def default_env_root() -> Path:
    """``$HUBSERVE_ENV_ROOT``, else ``$HUBSERVE_CACHE/envs``: environments can be rebuilt."""
    env = os.environ.get("HUBSERVE_ENV_ROOT")
    return Path(env).expanduser() if env else default_cache_dir() / "envs"


def _env_list(name: str, given: tuple[str, ...]) -> tuple[str, ...]:
    if given:
        return given
    raw = os.environ.get(name)
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise click.BadParameter(f"${name} must be a JSON list of strings") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise click.BadParameter(f"${name} must be a JSON list of strings")
    return tuple(value)


def env_policy_options(fn: F) -> F:
    """The admin policy for environment builds, as options (each with its variable)."""
    options = [
        click.option(
            "--env-root",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where environments are built and cached [env HUBSERVE_ENV_ROOT;"
            " default $HUBSERVE_CACHE/envs].",
        ),
        click.option(
            "--index-url",
            envvar="HUBSERVE_ENV_INDEX_URL",
            default=None,
            help="Package index [env HUBSERVE_ENV_INDEX_URL; default: pip's configuration].",
        ),
        click.option(
            "--extra-index-url",
            "extra_index_urls",
            multiple=True,
            help="Another package index (repeat) [env HUBSERVE_ENV_EXTRA_INDEX_URLS, JSON].",
        ),
        click.option(
            "--find-links",
            multiple=True,
            help="A wheelhouse folder or URL (repeat) [env HUBSERVE_ENV_FIND_LINKS, JSON].",
        ),
        click.option(
            "--no-index",
            is_flag=True,
            envvar="HUBSERVE_ENV_NO_INDEX",
            help="Install from --find-links only (air-gapped) [env HUBSERVE_ENV_NO_INDEX].",
        ),
        click.option(
            "--allow-sdist",
            is_flag=True,
            envvar="HUBSERVE_ENV_ALLOW_SDIST",
            help="Allow building source distributions (default: wheels only).",
        ),
        click.option(
            "--allow",
            multiple=True,
            help="The only packages bundles may add (repeat) [env HUBSERVE_ENV_ALLOW, JSON].",
        ),
        click.option(
            "--deny",
            multiple=True,
            help="Packages bundles may never install (repeat) [env HUBSERVE_ENV_DENY, JSON].",
        ),
        click.option(
            "--max-env-size",
            type=click.IntRange(1),
            envvar="HUBSERVE_ENV_MAX_ENV_BYTES",
            default=4 * 1024**3,
            show_default=True,
            help="Largest environment, in bytes [env HUBSERVE_ENV_MAX_ENV_BYTES].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def manager_from_options(options: dict[str, Any]) -> EnvironmentManager:
    """Pop the policy options from a command's keyword arguments; the manager they describe."""
    policy = EnvironmentPolicy.create(
        index_url=options.pop("index_url"),
        extra_index_urls=_env_list(
            "HUBSERVE_ENV_EXTRA_INDEX_URLS", options.pop("extra_index_urls")
        ),
        find_links=_env_list("HUBSERVE_ENV_FIND_LINKS", options.pop("find_links")),
        no_index=options.pop("no_index"),
        allow_sdist=options.pop("allow_sdist"),
        allow=_env_list("HUBSERVE_ENV_ALLOW", options.pop("allow")),
        deny=_env_list("HUBSERVE_ENV_DENY", options.pop("deny")),
        max_env_bytes=options.pop("max_env_size"),
    )
    root = options.pop("env_root") or default_env_root()
    return EnvironmentManager(root, policy)


def _print_progress(message: str) -> None:
    click.echo(f"environment: {message}", err=True)


def prepare_for_bundle(manager: EnvironmentManager, bundle: Path) -> Environment:
    """The environment of the unpacked bundle at ``bundle`` (its manifest's requirements)."""
    from ..bundle import read_manifest

    return manager.prepare(read_manifest(bundle).requirements, progress=_print_progress)


_env_root_option = click.option(
    "--env-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where environments are [env HUBSERVE_ENV_ROOT].",
)


def register_env_commands(cli: click.Group) -> None:
    @cli.group()
    def env() -> None:
        """Per-bundle Python environments: build, list, clean up."""

    @env.command("build")
    @click.argument("source")
    @env_policy_options
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def build(source: str, as_json: bool, **options: Any) -> None:
        """Build (or reuse) the environment of SOURCE: a bundle directory or archive, or a
        store reference. Prints what the bundle runs in; fails with a one-line reason."""
        from ..runtime import bundle_directory

        manager = manager_from_options(options)
        environment = prepare_for_bundle(manager, bundle_directory(source))
        if as_json:
            click.echo(json.dumps({**environment.to_json(), "built": environment.built}))
        else:
            click.echo(("built " if environment.built else "") + environment.describe())

    @env.command("list")
    @_env_root_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def list_envs(env_root: Path | None, as_json: bool) -> None:
        """Built environments, most recently used first."""
        records = EnvironmentManager(env_root or default_env_root()).environments()
        if as_json:
            click.echo(json.dumps(records, indent=1))
            return
        for record in records:
            size = int(record.get("bytes", 0)) / 2**20
            click.echo(
                f"{record['key']}  {record['kind']:<7}  {size:8,.0f} MiB  "
                + " ".join(record.get("requirements", []))
            )

    @env.command("gc")
    @_env_root_option
    @click.option(
        "--max-bytes",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="Keep environments (most recently used first) while they fit in this size.",
    )
    @click.option("--keep", multiple=True, help="An environment key to keep (repeat).")
    def gc(env_root: Path | None, max_bytes: int, keep: tuple[str, ...]) -> None:
        """Remove environments (not being built or used right now) beyond --max-bytes."""
        manager = EnvironmentManager(env_root or default_env_root())
        for key in manager.gc(keep, max_bytes=max_bytes):
            click.echo(f"removed {key}")
