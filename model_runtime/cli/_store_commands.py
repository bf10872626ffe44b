"""``package``, ``push``, ``pull``, ``list``, ``show``, ``delete``, ``tag`` and ``gc``."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from ..bundle import BuiltBundle, build_bundle
from ..naming import ModelRef, is_version
from ..store import default_owner
from ._common import (
    emit,
    human_size,
    json_option,
    make_store,
    owner_option,
    progress_bar,
    store_and_ref,
    store_options,
    table,
)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def _package_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--label",
                "labels",
                multiple=True,
                metavar="KEY=VALUE",
                help="Label to record in the bundle (repeatable).",
            ),
            click.option("--description", default=None, help="Description of the bundle."),
            click.option(
                "--requirement",
                "-r",
                "requirements",
                multiple=True,
                metavar="SPEC",
                help="Extra requirement line, e.g. 'scipy>=1.11' (repeatable).",
            ),
            click.option(
                "--trust-pickle",
                is_flag=True,
                help="Allow saving models that only pickle can store.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _build(
    source: str,
    output: Path | None,
    labels: tuple[str, ...],
    description: str | None,
    requirements: tuple[str, ...],
    trust_pickle: bool,
) -> BuiltBundle:
    return build_bundle(
        source,
        output_dir=output,
        labels=_labels(labels),
        description=description,
        requirements=requirements,
        trust_pickle=trust_pickle,
    )


def register_store_commands(cli: click.Group) -> None:
    @cli.command()
    @click.argument("source")
    @click.option(
        "-o",
        "--output",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(),
        show_default=True,
        help="Directory for the archive.",
    )
    @_package_options
    @json_option
    def package(
        source: str,
        output: Path,
        labels: tuple[str, ...],
        description: str | None,
        requirements: tuple[str, ...],
        trust_pickle: bool,
        as_json: bool,
    ) -> None:
        """Package SOURCE into a bundle archive.

        SOURCE is a service directory (with service.py), FILE.py[:VAR] or MODULE:VAR.
        """
        built = _build(source, output, labels, description, requirements, trust_pickle)
        emit(
            {"archive": str(built.archive), "manifest": built.manifest},
            as_json,
            lambda: click.echo(f"packaged {built.ref} -> {built.archive}"),
        )

    @cli.command()
    @click.argument("source")
    @click.option(
        "--tag", "tags", multiple=True, help="Tag to set on the pushed version (repeatable)."
    )
    @_package_options
    @owner_option
    @store_options
    @json_option
    def push(
        source: str,
        tags: tuple[str, ...],
        labels: tuple[str, ...],
        description: str | None,
        requirements: tuple[str, ...],
        trust_pickle: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Push a bundle to the store.

        SOURCE is a bundle archive (.tar.gz) or anything `hubserve package` accepts.
        """
        store = make_store(options)
        owner = options.get("owner") or default_owner()
        path = Path(source)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            archive = path
            built = None
        else:
            built = _build(source, None, labels, description, requirements, trust_pickle)
            archive = built.archive
        try:
            with progress_bar(f"push {archive.name}", enabled=not as_json) as progress:
                record = store.push(archive, owner=owner, tags=tags, progress=progress)
        finally:
            if built is not None:
                archive.unlink(missing_ok=True)
        emit(
            record,
            as_json,
            lambda: click.echo(
                f"pushed {record.ref} ({human_size(record.archive_size)})"
                f" to {store.objects.describe()}"
            ),
        )

    @cli.command()
    @click.argument("ref")
    @click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        default=None,
        help="Unpack into this directory (default: the cache) or, with --archive,"
        " write the archive to this file.",
    )
    @click.option(
        "--archive",
        "archive_only",
        is_flag=True,
        help="Download the archive only, do not unpack it.",
    )
    @owner_option
    @store_options
    @json_option
    def pull(
        ref: str, output: Path | None, archive_only: bool, as_json: bool, **options: Any
    ) -> None:
        """Fetch and verify a model version: [OWNER/]NAME[:VERSION|TAG] or a store URI."""
        store, model_ref = store_and_ref(ref, options)
        with progress_bar(f"pull {model_ref}", enabled=not as_json) as progress:
            if archive_only:
                record = store.stat(model_ref)
                dest = output or Path(f"{record.name}-{record.version}.tar.gz")
                store.download(model_ref, dest, progress=progress)
                path = dest
            else:
                pulled = store.pull(model_ref, progress=progress)
                record, path = pulled.record, pulled.path
                if output is not None:
                    if output.exists():
                        raise click.ClickException(f"{output} already exists")
                    shutil.copytree(pulled.path, output)
                    path = output
        emit(
            {"path": str(path), "record": record},
            as_json,
            lambda: click.echo(f"pulled {record.ref} -> {path}"),
        )

    @cli.command("list")
    @click.argument("name", required=False)
    @click.option("--all-owners", is_flag=True, help="List the models of every owner.")
    @owner_option
    @store_options
    @json_option
    def list_(name: str | None, all_owners: bool, as_json: bool, **options: Any) -> None:
        """List models, or the versions of NAME (newest first)."""
        if name is None:
            store = make_store(options)
            owner = None if all_owners else options.get("owner") or default_owner()
            models = store.list_models(owner)
            emit(
                models,
                as_json,
                lambda: click.echo(
                    table([[m.owner, m.name] for m in models], ["owner", "model"])
                    if models
                    else "no models"
                ),
            )
            return
        store, ref = store_and_ref(name, options)
        versions = store.list_versions(ref.owner, ref.name)
        rows = [
            [
                v.version,
                v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                human_size(v.size),
                ",".join(v.tags),
            ]
            for v in versions
        ]
        emit(
            versions,
            as_json,
            lambda: click.echo(
                table(rows, ["version", "created (UTC)", "size", "tags"])
                if versions
                else f"no versions of {ref.owner}/{ref.name}"
            ),
        )

    @cli.command()
    @click.argument("ref")
    @owner_option
    @store_options
    @json_option
    def show(ref: str, as_json: bool, **options: Any) -> None:
        """Show the manifest of a version: [OWNER/]NAME[:VERSION|TAG]."""
        store, model_ref = store_and_ref(ref, options)
        record = store.stat(model_ref)

        def human() -> None:
            m = record.manifest
            click.echo(
                f"{record.ref}  ({human_size(record.archive_size)}, pushed"
                f" {record.pushed_at:%Y-%m-%d %H:%M} by {record.pushed_by})"
            )
            if m.description:
                click.echo(f"  {m.description}")
            click.echo(f"  framework: {m.framework}; python {m.environment.get('python', '?')}")
            for api_entry in m.apis:
                batching = (
                    f" batch<={api_entry.batching.max_batch_size}"
                    f" wait<={api_entry.batching.max_latency_ms}ms"
                    if api_entry.batchable
                    else ""
                )
                click.echo(
                    f"  api {api_entry.name}: {api_entry.input['kind']} ->"
                    f" {api_entry.output['kind']}{batching}"
                )
            for model in m.models:
                click.echo(f"  model {model.name}: {model.format} ({model.type})")
            if m.requirements:
                click.echo(f"  requires: {', '.join(m.requirements)}")

        emit(record, as_json, human)

    @cli.command()
    @click.argument("ref")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting a whole model.")
    @owner_option
    @store_options
    @json_option
    def delete(ref: str, yes: bool, as_json: bool, **options: Any) -> None:
        """Delete a version (NAME:VERSION) or, without a version, a whole model."""
        store, model_ref = store_and_ref(ref, options)
        if ":" in ref.rpartition("/")[2] and not is_version(model_ref.selector):
            raise click.BadParameter("give a version, not a tag, to delete one version")
        result: dict[str, Any]
        if model_ref.version is not None:
            store.delete_version(model_ref.owner, model_ref.name, model_ref.version)
            result = {"deleted": [str(model_ref)]}
        else:
            if not yes and not as_json:
                click.confirm(
                    f"Delete every version of {model_ref.owner}/{model_ref.name}?", abort=True
                )
            count = store.delete_model(model_ref.owner, model_ref.name)
            result = {"deleted": [f"{model_ref.owner}/{model_ref.name}"], "versions": count}
        emit(result, as_json, lambda: click.echo(f"deleted {', '.join(result['deleted'])}"))

    @cli.command()
    @click.argument("ref")
    @click.argument("tag")
    @click.option("--delete", "remove", is_flag=True, help="Remove TAG instead of setting it.")
    @owner_option
    @store_options
    @json_option
    def tag(ref: str, tag: str, remove: bool, as_json: bool, **options: Any) -> None:
        """Point TAG at the version REF names, or remove TAG with --delete."""
        store, model_ref = store_and_ref(ref, options)
        if remove:
            store.delete_tag(model_ref.owner, model_ref.name, tag)
            emit({"deleted": tag}, as_json, lambda: click.echo(f"removed tag {tag}"))
            return
        record = store.set_tag(model_ref, tag)
        target = ModelRef(record.owner, record.name, tag)
        emit(
            {"tag": str(target), "version": record.version},
            as_json,
            lambda: click.echo(f"{target} -> {record.version}"),
        )

    @cli.command()
    @click.option(
        "--older-than",
        type=float,
        default=1.0,
        show_default=True,
        help="Only remove uploads abandoned this many hours ago.",
    )
    @store_options
    @json_option
    def gc(older_than: float, as_json: bool, **options: Any) -> None:
        """Remove archives of pushes that were interrupted before they committed."""
        removed = make_store(options).collect_garbage(older_than=timedelta(hours=older_than))
        emit(
            {"removed": removed},
            as_json,
            lambda: click.echo(f"removed {len(removed)} abandoned upload(s)"),
        )
