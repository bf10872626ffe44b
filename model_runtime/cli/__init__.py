"""The ``hubserve`` command line.

Model-store verbs (``package``, ``push``, ``pull``, ``list``, ``show``, ``delete``, ``tag``,
``gc``) work against ``--store`` (or ``HUBSERVE_STORE``): a local directory or an S3 bucket.
``serve`` runs a model runtime in the foreground and ``predict`` calls one.
``export k8s`` and ``export gitlab-ci`` write Kubernetes manifests and a GitLab pipeline;
``env build|list|gc`` manage per-bundle Python environments (``serve --env`` uses them).
Every command prints human-readable text, or JSON with ``--json``; errors are one line on
stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from .._version import __version__
from ..errors import HubserveError
from ._env_commands import register_env_commands
from ._export_commands import register_export_commands
from ._serve_commands import register_serve_commands
from ._store_commands import register_store_commands


class _Group(click.Group):
    """Turns hubserve errors into clean ``Error: ...`` messages with exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HubserveError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubserve")
def cli() -> None:
    """Package, version, store and serve models."""


register_store_commands(cli)
register_serve_commands(cli)
register_export_commands(cli)
register_env_commands(cli)


def main() -> None:
    cli(prog_name="hubserve")
