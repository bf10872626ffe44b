"""``export k8s`` (print or write Kubernetes manifests), ``export gitlab-ci`` and
``containerize`` (an image build context with the bundle and its environment inside).

The export commands describe one deployment of a stored model version with the options below
and build the objects with :mod:`model_runtime.k8s`, exactly as the hub service's
``kubernetes`` backend does. The version is pinned: a tag (``:latest``, ``:prod``) is
resolved to its version in the store when the files are written, so every pod of the
deployment serves the same bytes; an explicit version needs no store access at all.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import click

from ..k8s import (
    DEFAULT_IMAGE,
    DEFAULT_KUBECTL_IMAGE,
    Autoscale,
    EnvPolicy,
    RuntimeTarget,
    build_manifests,
    containerize_files,
    gitlab_files,
    object_files,
    to_yaml,
)
from ..k8s._containerize import BUNDLE_DIR
from ..naming import ModelRef
from ..store import default_owner, split_model_uri
from ._common import (
    emit,
    json_option,
    make_store,
    owner_option,
    progress_bar,
    store_and_ref,
    store_options,
)

#: Files ``export`` writes into a manifest directory (and replaces on the next export).
_OBJECT_FILE_RE = re.compile(r"^\d\d-[a-z0-9-]+\.yaml$")


def _key_values(values: tuple[str, ...], hint: str) -> dict[str, str]:
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=hint)
        result[key] = value
    return result


def _env_policy_options(fn: Any) -> Any:
    """The policy of ``hubserve env build``, with its flags' names (see ``hubserve env``)."""
    options = [
        click.option(
            "--index-url",
            default=None,
            help="Package index for the environment [default: the image's pip configuration,"
            " else PyPI].",
        ),
        click.option(
            "--extra-index-url",
            "extra_index_urls",
            multiple=True,
            help="Another package index (repeatable).",
        ),
        click.option(
            "--find-links",
            multiple=True,
            metavar="PATH_OR_URL",
            help="Wheels in this folder or at this URL (repeatable).",
        ),
        click.option(
            "--no-index", is_flag=True, help="Install from --find-links only (air-gapped)."
        ),
        click.option("--allow-sdist", is_flag=True, help="Allow building source distributions."),
        click.option(
            "--allow", multiple=True, metavar="PKG", help="Only these packages may be added."
        ),
        click.option("--deny", multiple=True, metavar="PKG", help="Never install PKG."),
        click.option(
            "--max-env-size",
            "max_env_bytes",
            type=click.IntRange(1),
            default=None,
            metavar="BYTES",
            help="Largest environment the build may make.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _env_policy(options: dict[str, Any]) -> EnvPolicy:
    return EnvPolicy(
        index_url=options["index_url"],
        extra_index_urls=tuple(options["extra_index_urls"]),
        find_links=tuple(options["find_links"]),
        no_index=options["no_index"],
        allow_sdist=options["allow_sdist"],
        allow=tuple(options["allow"]),
        deny=tuple(options["deny"]),
        max_env_bytes=options["max_env_bytes"],
    )


def _target_options(fn: Any) -> Any:
    """The options that describe the deployment (shared by both export commands)."""
    options = [
        click.option(
            "--name",
            "deployment_name",
            default=None,
            help="Name of the deployment [default: the model's name].",
        ),
        click.option(
            "--deployment-owner",
            default=None,
            help="Owner of the deployment [default: the model's owner].",
        ),
        click.option(
            "--namespace", default="hubserve", show_default=True, help="Kubernetes namespace."
        ),
        click.option("--image", default=None, help="Runtime image [default: this version's]."),
        click.option("--replicas", type=click.IntRange(0, 1000), default=1, show_default=True),
        click.option(
            "--s3-secret",
            default="hubserve-store",
            show_default=True,
            help="Secret with HUBSERVE_S3_ENDPOINT/ACCESS_KEY/SECRET_KEY/SECURE for the pull.",
        ),
        click.option(
            "--token-secret",
            default=None,
            help="Secret whose key 'token' callers must send [default: no token].",
        ),
        click.option("--threads", type=click.IntRange(1, 1024), default=None),
        click.option("--cpu", default=None, help="CPU request, e.g. 500m."),
        click.option("--memory", default=None, help="Memory request, e.g. 1Gi."),
        click.option("--cpu-limit", default=None, help="CPU limit."),
        click.option("--memory-limit", default=None, help="Memory limit."),
        click.option(
            "--batching",
            default=None,
            metavar="JSON",
            help='Batching per API, e.g. \'{"predict": {"max_batch_size": 32}}\'.',
        ),
        click.option("--ingress-host", default=None, help="Host of a direct endpoint (Ingress)."),
        click.option("--tls-issuer", default=None, help="cert-manager ClusterIssuer for TLS."),
        click.option("--ingress-class", default=None, help="IngressClass of the Ingress."),
        click.option(
            "--autoscale",
            default=None,
            metavar="MIN:MAX",
            help="Add a HorizontalPodAutoscaler between MIN and MAX replicas.",
        ),
        click.option(
            "--cpu-percent",
            type=click.IntRange(1, 1000),
            default=70,
            show_default=True,
            help="CPU utilisation the autoscaler aims at.",
        ),
        click.option(
            "--generation", type=click.IntRange(1), default=1, show_default=True, hidden=True
        ),
        click.option(
            "--label",
            "extra_labels",
            multiple=True,
            metavar="KEY=VALUE",
            help="Extra label for every object (repeatable).",
        ),
        click.option(
            "--image-pull-secret",
            "image_pull_secrets",
            multiple=True,
            help="Secret for pulling a private image (repeatable).",
        ),
        click.option(
            "--environments/--no-environments",
            default=True,
            show_default=True,
            help="Build the bundle's own environment in an init container and serve in it;"
            " --no-environments: serve in the image's environment.",
        ),
        click.option(
            "--env-cache-claim",
            default=None,
            metavar="CLAIM",
            help="PersistentVolumeClaim (ReadWriteMany) that keeps environments across pods"
            " [default: an emptyDir per pod].",
        ),
        click.option(
            "--baked",
            is_flag=True,
            help="--image holds the bundle and its environment (`hubserve containerize`):"
            " no init containers, no store access from the pods.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return owner_option(store_options(_env_policy_options(fn)))


def _resolve(ref: str, options: dict[str, Any]) -> tuple[str, ModelRef, str]:
    """``(store URI, reference, version)`` for REF; tags are looked up in the store.

    Pods pull from S3, so the store must be one, except for a baked image, which holds the
    bundle: its store (any, or none with an explicit version) only pins and is recorded.
    """
    uri = split_model_uri(ref)
    if uri is not None:
        location, model_ref = uri
    else:
        location = options.get("store") or ""
        model_ref = ModelRef.parse(ref, default_owner=options.get("owner") or default_owner())
    if not options["baked"] and not location.startswith("s3://"):
        raise click.UsageError(
            "the cluster pulls the bundle from S3: give --store s3://bucket[/prefix]"
            " (or HUBSERVE_STORE), or REF as s3://bucket/owner/name:version"
        )
    version = model_ref.version
    if version is None:  # a tag: pin the version it points at now
        version = make_store(options, location or None).stat(model_ref).version
    return location, model_ref, version


def _build_target(ref: str, options: dict[str, Any]) -> RuntimeTarget:
    location, model_ref, version = _resolve(ref, options)
    autoscale = None
    if options["autoscale"]:
        low, sep, high = options["autoscale"].partition(":")
        if not sep or not low.isdigit() or not high.isdigit():
            raise click.BadParameter("use MIN:MAX, e.g. 1:5", param_hint="--autoscale")
        autoscale = Autoscale(int(low), int(high), options["cpu_percent"])
    batching: dict[str, Any] = {}
    if options["batching"]:
        try:
            batching = json.loads(options["batching"])
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--batching") from None
        if not isinstance(batching, dict) or not all(
            isinstance(v, dict) for v in batching.values()
        ):
            raise click.BadParameter(
                'expected {"API": {"max_batch_size": N, "max_latency_ms": MS}}',
                param_hint="--batching",
            )
    return RuntimeTarget(
        owner=options["deployment_owner"] or model_ref.owner,
        name=options["deployment_name"] or model_ref.name,
        model_owner=model_ref.owner,
        model_name=model_ref.name,
        version=version,
        store_uri=location.rstrip("/"),
        replicas=options["replicas"],
        namespace=options["namespace"],
        image=options["image"] or DEFAULT_IMAGE,
        s3_secret=options["s3_secret"],
        token_secret=options["token_secret"],
        threads=options["threads"],
        cpu=options["cpu"],
        memory=options["memory"],
        cpu_limit=options["cpu_limit"],
        memory_limit=options["memory_limit"],
        batching=batching,
        ingress_host=options["ingress_host"],
        tls_issuer=options["tls_issuer"],
        autoscale=autoscale,
        generation=options["generation"],
        extra_labels=_key_values(options["extra_labels"], "--label"),
        ingress_class=options["ingress_class"],
        image_pull_secrets=tuple(options["image_pull_secrets"]),
        environments=options["environments"],
        env_cache_claim=options["env_cache_claim"],
        env_policy=_env_policy(options),
        baked=options["baked"],
    )


def target_args(target: RuntimeTarget) -> list[str]:
    """The ``export k8s`` options (after REF) that rebuild ``target`` for another version."""
    args = ["--store", target.store_uri] if target.store_uri else []
    if target.owner != target.model_owner:
        args += ["--deployment-owner", target.owner]
    if target.name != target.model_name:
        args += ["--name", target.name]
    args += ["--namespace", target.namespace, "--replicas", str(target.replicas)]
    if target.image != DEFAULT_IMAGE:
        args += ["--image", target.image]
    args += ["--s3-secret", target.s3_secret]
    for flag, value in (
        ("--token-secret", target.token_secret),
        ("--threads", target.threads),
        ("--cpu", target.cpu),
        ("--memory", target.memory),
        ("--cpu-limit", target.cpu_limit),
        ("--memory-limit", target.memory_limit),
        ("--ingress-host", target.ingress_host),
        ("--tls-issuer", target.tls_issuer),
        ("--ingress-class", target.ingress_class),
    ):
        if value is not None:
            args += [flag, str(value)]
    if target.batching:
        args += ["--batching", json.dumps(target.batching, sort_keys=True)]
    if target.autoscale is not None:
        scale = target.autoscale
        args += [
            "--autoscale",
            f"{scale.min_replicas}:{scale.max_replicas}",
            "--cpu-percent",
            str(scale.cpu_percent),
        ]
    if target.generation != 1:
        args += ["--generation", str(target.generation)]
    for key, value in target.extra_labels.items():
        args += ["--label", f"{key}={value}"]
    for secret in target.image_pull_secrets:
        args += ["--image-pull-secret", secret]
    if not target.environments:
        args.append("--no-environments")
    if target.env_cache_claim is not None:
        args += ["--env-cache-claim", target.env_cache_claim]
    args += target.env_policy.args()
    if target.baked:
        args.append("--baked")
    return args


def _replace_files(directory: Path, files: dict[str, str]) -> list[Path]:
    """Write ``files`` under ``directory``; numbered object files of an older export go."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        if old.is_file() and _OBJECT_FILE_RE.match(old.name) and old.name not in files:
            old.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def register_export_commands(cli: click.Group) -> None:
    @cli.group()
    def export() -> None:
        """Deployment files for other platforms: Kubernetes manifests, GitLab CI/CD."""

    @export.command("k8s")
    @click.argument("ref")
    @_target_options
    @click.option(
        "-o",
        "--output-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Write one NN-kind.yaml file per object here instead of printing.",
    )
    @click.option(
        "--omit-namespace",
        is_flag=True,
        help="Leave metadata.namespace out (kubectl -n decides).",
    )
    @json_option
    def export_k8s(
        ref: str, output_dir: Path | None, omit_namespace: bool, as_json: bool, **options: Any
    ) -> None:
        """Print the Kubernetes objects that serve a model version.

        REF is [OWNER/]NAME[:VERSION|TAG] with --store s3://..., or
        s3://bucket[/prefix]/OWNER/NAME[:VERSION|TAG]; a tag is pinned to its version.
        The objects: a Deployment and a Service, plus an Ingress (--ingress-host) and a
        HorizontalPodAutoscaler (--autoscale). Apply them with `kubectl apply -f -`; the
        namespace and the Secret named by --s3-secret must exist. The pods pull the bundle
        and build its environment in init containers (--no-environments: no environment;
        --baked: neither, the image of `hubserve containerize` holds both).
        """
        target = _build_target(ref, options)
        manifests = build_manifests(target)
        if omit_namespace:
            for manifest in manifests:
                manifest["metadata"].pop("namespace", None)
        if output_dir is not None:
            written = _replace_files(output_dir, object_files(manifests))
            emit(
                {"files": [str(p) for p in written], "object_name": target.object_name},
                as_json,
                lambda: click.echo("\n".join(f"wrote {p}" for p in written)),
            )
            return
        if as_json:
            click.echo(json.dumps(manifests, indent=2))
        else:
            click.echo(to_yaml(manifests), nl=False)

    @export.command("gitlab-ci")
    @click.argument("ref")
    @_target_options
    @click.option(
        "-d",
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(),
        show_default=True,
        help="Repository directory to write .gitlab-ci.yml and k8s/ into.",
    )
    @click.option(
        "--build",
        "build_source",
        default=None,
        metavar="SOURCE",
        help="Also push SOURCE (a service in the repository) in a build job and deploy"
        " the version it makes.",
    )
    @click.option(
        "--kubectl-image",
        default=None,
        help="Image with sh and kubectl for the deploy/destroy jobs.",
    )
    @click.option("--rollout-timeout", default="10m", show_default=True)
    @click.option("--force", is_flag=True, help="Replace an existing .gitlab-ci.yml.")
    @json_option
    def export_gitlab_ci(
        ref: str,
        directory: Path,
        build_source: str | None,
        kubectl_image: str | None,
        rollout_timeout: str,
        force: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        """Write a GitLab CI/CD pipeline that deploys REF to Kubernetes and destroys it.

        Writes .gitlab-ci.yml (stages deploy and destroy, and build with --build) and the
        manifests in k8s/. The CI variables are documented at the top of the file.
        """
        if not re.match(r"^\d+(\.\d+)?(ms|s|m|h)$", rollout_timeout):
            raise click.BadParameter(
                "use a duration such as 90s or 10m", param_hint="--rollout-timeout"
            )
        target = _build_target(ref, options)
        ci_file = directory / ".gitlab-ci.yml"
        if ci_file.exists() and not force:
            raise click.ClickException(f"{ci_file} exists: use --force to replace it")
        files = gitlab_files(
            target,
            kubectl_image=kubectl_image or DEFAULT_KUBECTL_IMAGE,
            rollout_timeout=rollout_timeout,
            build_source=build_source,
            export_args=target_args(target),
        )
        directory.mkdir(parents=True, exist_ok=True)
        ci_file.write_text(files.pop(".gitlab-ci.yml"), encoding="utf-8")
        manifests = {name.split("/", 1)[1]: text for name, text in files.items()}
        written = [ci_file, *_replace_files(directory / "k8s", manifests)]
        emit(
            {"files": [str(p) for p in written], "object_name": target.object_name},
            as_json,
            lambda: click.echo("\n".join(f"wrote {p}" for p in written)),
        )

    @cli.command()
    @click.argument("ref")
    @click.option(
        "-o",
        "--output-dir",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="Directory for the build context (new or empty).",
    )
    @click.option(
        "--image",
        "base_image",
        default=DEFAULT_IMAGE,
        show_default=True,
        help="Runtime image to build on (deploy/Containerfile --target runtime).",
    )
    @_env_policy_options
    @owner_option
    @store_options
    @json_option
    def containerize(
        ref: str, output_dir: Path, base_image: str, as_json: bool, **options: Any
    ) -> None:
        """Write an image build context that serves REF with its environment built in.

        REF is [OWNER/]NAME[:VERSION|TAG] (with --store) or a store URI, as for `hubserve
        pull`. OUTPUT_DIR gets a Containerfile, the bundle (bundle/), a .containerignore and a
        README. The image builds the environment with `hubserve env build` under the policy
        options, which it keeps as HUBSERVE_ENV_* for `hubserve serve` (an index URL's
        credentials stay visible in it); deploy it with `hubserve export k8s REF --image
        IMAGE --baked`.
        """
        if output_dir.exists() and any(output_dir.iterdir()):
            raise click.ClickException(f"{output_dir} is not empty")
        policy = _env_policy(options)  # refused before anything is downloaded
        store, model_ref = store_and_ref(ref, options)
        with progress_bar(f"pull {model_ref}", enabled=not as_json) as progress:
            pulled = store.pull(model_ref, progress=progress)
        record = pulled.record
        pinned = f"{record.owner}/{record.name}:{record.version}"
        files = containerize_files(pinned, base_image=base_image, policy=policy)
        output_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(pulled.path, output_dir / BUNDLE_DIR)
        for name, text in files.items():
            (output_dir / name).write_text(text, encoding="utf-8")
        emit(
            {"directory": str(output_dir), "ref": pinned, "files": sorted(files)},
            as_json,
            lambda: click.echo(
                f"wrote {output_dir} for {pinned}; build it with:"
                f" podman build -t IMAGE {output_dir}"
            ),
        )
