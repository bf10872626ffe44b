"""``hubserve containerize`` and ``hubserve export k8s --baked``.

No container engine runs here, so the build context is checked by reading it: the
Containerfile is parsed (instructions, continuation lines, JSON-form ``CMD``), every path it
copies must be in the context and not ignored, and what the image runs must be exactly what
the ``--baked`` manifests run. That the image builds (``hubserve env build`` inside) is
verified only on paper.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
from click.testing import CliRunner, Result

from model_runtime.bundle import build_bundle
from model_runtime.cli import cli
from model_runtime.k8s import (
    DEFAULT_IMAGE,
    IMAGE_BUNDLE,
    IMAGE_ENV_ROOT,
    SUPPORTED_KUBERNETES_VERSIONS,
    EnvPolicy,
    ManifestError,
    containerize_files,
)

REPO = Path(__file__).parents[3]
IMAGE = "registry.example.org/models/iris:v1"
POLICY = EnvPolicy(
    index_url="https://pypi.example.org/simple",
    extra_index_urls=("https://download.pytorch.org/whl/cpu",),
    find_links=("/opt/wheels dir",),
    deny=("tensorflow", "jax"),
    max_env_bytes=10**9,
)


def invoke(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def parse_containerfile(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments and blank lines dropped, lines ending
    in a backslash joined with the next."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        pending = ""
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the last line continues"
    return instructions


def json_form(arguments: str) -> list[str]:
    """``CMD``/``ENTRYPOINT`` in exec (JSON) form; the shell form is refused."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .containerignore leaves ``path`` out: the last matching pattern wins, and a
    pattern that matches a parent folder matches what is in it (Docker's and Buildah's rule)."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern[1:] if negated else pattern
        if any(fnmatch.fnmatchcase("/".join(parts[:n]), bare) for n in range(1, len(parts) + 1)):
            result = not negated
    return result


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture(scope="module")
def iris_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """examples/iris pushed as alice to a local store: the store and the version."""
    root = tmp_path_factory.mktemp("containerize")
    built = build_bundle(f"{REPO / 'examples/iris/iris.py'}:service", output_dir=root / "b")
    store = root / "store"
    args = ["push", str(built.archive), "--store", str(store), "--owner", "alice", "--json"]
    pushed = json.loads(invoke(*args).stdout)
    return store, str(pushed["version"])


def test_the_build_context_serves_the_bundle_in_its_environment(
    iris_store: tuple[Path, str], tmp_path: Path
) -> None:
    store, version = iris_store
    context = tmp_path / "context"
    args = ["containerize", "alice/iris:latest", "--store", str(store), "-o", str(context)]
    written = json.loads(invoke(*args, *POLICY.args(), "--json").stdout)
    ref = f"alice/iris:{version}"  # the tag, pinned
    assert written["ref"] == ref
    assert sorted(p.name for p in context.iterdir()) == [
        ".containerignore",
        "Containerfile",
        "README.md",
        "bundle",
    ]
    pulled = tmp_path / "pulled"
    invoke("pull", ref, "--store", str(store), "-o", str(pulled))
    files = tree(pulled)
    assert tree(context / "bundle") == files  # the bundle as `hubserve pull` unpacks it
    assert "bundle.json" in files

    steps = parse_containerfile((context / "Containerfile").read_text())
    kinds = [kind for kind, _ in steps]
    assert steps[0] == ("FROM", DEFAULT_IMAGE)
    # every COPY source is in the context and survives .containerignore
    patterns = [
        line
        for line in (context / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [shlex.split(rest) for kind, rest in steps if kind == "COPY"]
    assert copies == [["bundle/", f"{IMAGE_BUNDLE}/"]]
    for *sources, _ in copies:
        for source in sources:
            assert (context / source).exists(), source
            assert not ignored(source.rstrip("/"), patterns), source
    for name in files:
        assert not ignored(f"bundle/{name}", patterns), name
    for name in ("Containerfile", "README.md"):
        assert ignored(name, patterns)

    # the environment is built as the runtime user, under the policy given, which the image
    # keeps in its environment for `serve` (that finds it by a key of the package sources)
    runs = [shlex.split(rest) for kind, rest in steps if kind == "RUN"]
    build = [run for run in runs if run[:3] == ["hubserve", "env", "build"]]
    assert build == [["hubserve", "env", "build", IMAGE_BUNDLE]]  # in HUBSERVE_ENV_ROOT
    build_at = next(i for i, (k, r) in enumerate(steps) if k == "RUN" and "env build" in r)
    (env_at,) = [i for i, (kind, _) in enumerate(steps) if kind == "ENV"]
    variables = dict(item.split("=", 1) for item in shlex.split(steps[env_at][1]))
    assert variables == {
        "HUBSERVE_ENV_ROOT": IMAGE_ENV_ROOT,
        **{item["name"]: item["value"] for item in POLICY.env()},
    }
    assert json.loads(variables["HUBSERVE_ENV_FIND_LINKS"]) == ["/opt/wheels dir"]
    assert env_at < build_at
    users = [(i, rest) for i, (kind, rest) in enumerate(steps) if kind == "USER"]
    assert [rest for i, rest in users if i < build_at][-1] == "10001:10001"
    assert users[-1][1] == "10001:10001"  # the image runs unprivileged
    assert kinds.index("COPY") < build_at
    assert ("EXPOSE", "8000") in steps

    entrypoint = json_form(dict(steps)["ENTRYPOINT"])
    command = json_form(dict(steps)["CMD"])
    assert [*entrypoint, *command] == [
        *("hubserve", "serve", IMAGE_BUNDLE, "--env", "auto", "--env-root", IMAGE_ENV_ROOT),
        *("--host", "0.0.0.0", "--port", "8000"),  # noqa: S104
    ]

    # what `export k8s --baked` runs is what the image runs
    manifests = json.loads(
        invoke(
            "export", "k8s", ref, "--store", str(store), "--image", IMAGE, "--baked", "--json"
        ).stdout
    )
    pod = manifests[0]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    (runtime,) = pod["containers"]
    assert [*runtime["command"], *runtime["args"]] == [*entrypoint, *command]
    for kube_version in SUPPORTED_KUBERNETES_VERSIONS:
        for manifest in manifests:
            kubernetes_validate.validate(manifest, kube_version, strict=True)

    readme = (context / "README.md").read_text()
    assert f"hubserve export k8s {ref} --image" in readme and "--baked" in readme


def test_a_baked_export_needs_no_s3_store(
    iris_store: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUBSERVE_STORE", raising=False)
    store, version = iris_store
    explicit = json.loads(
        invoke("export", "k8s", f"alice/iris:{version}", "--baked", "--json").stdout
    )
    assert "hubserve.io/store" not in explicit[0]["metadata"]["annotations"]
    by_tag = json.loads(
        invoke(
            "export", "k8s", "alice/iris:latest", "--store", str(store), "--baked", "--json"
        ).stdout
    )
    assert by_tag[0]["metadata"]["labels"]["hubserve.io/version"] == version
    refused = invoke(
        "export", "k8s", f"alice/iris:{version}", "--baked", "--env-cache-claim", "envs", ok=False
    )
    assert refused.exit_code == 1 and "baked image holds its environment" in refused.output


def test_containerize_refuses_a_used_directory_and_an_unknown_model(
    iris_store: tuple[Path, str], tmp_path: Path
) -> None:
    store, _ = iris_store
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("mine")
    used = invoke(
        "containerize", "alice/iris", "--store", str(store), "-o", str(tmp_path / "used"), ok=False
    )
    assert used.exit_code == 1 and "is not empty" in used.output
    missing = invoke(
        "containerize", "alice/nope", "--store", str(store), "-o", str(tmp_path / "new"), ok=False
    )
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert not (tmp_path / "new").exists()
    bad = invoke(
        "containerize",
        "alice/iris",
        "--store",
        str(store),
        "-o",
        str(tmp_path / "b"),
        "--deny",
        "not a name",
        ok=False,
    )
    assert bad.exit_code == 1 and "not a package name" in bad.output


def test_containerize_files_is_pure_and_checks_its_input() -> None:
    files = containerize_files("alice/iris:v1", base_image="example.org/rt:2", policy=EnvPolicy())
    assert set(files) == {"Containerfile", ".containerignore", "README.md"}
    steps = parse_containerfile(files["Containerfile"])
    assert steps[0] == ("FROM", "example.org/rt:2")
    assert ("ENV", f"HUBSERVE_ENV_ROOT={IMAGE_ENV_ROOT}") in steps  # no policy: nothing more
    # ENV's double quotes: what would end the value or be substituted is escaped
    odd = EnvPolicy(index_url='https://h/$HOME/"x"\\')
    (env,) = [
        r
        for k, r in parse_containerfile(containerize_files("a/b:v", policy=odd)["Containerfile"])
        if k == "ENV"
    ]
    assert 'HUBSERVE_ENV_INDEX_URL="https://h/\\$HOME/\\"x\\"\\\\"' in env
    with pytest.raises(ManifestError, match="image"):
        containerize_files("alice/iris:v1", base_image="a b")
    with pytest.raises(ManifestError, match="owner/name:version"):
        containerize_files("alice/iris")


def test_the_parser_reads_what_it_should(tmp_path: Path) -> None:
    steps = parse_containerfile('# c\nFROM a\nRUN x \\\n    && y\nCMD ["p", "q"]\n')
    assert steps == [("FROM", "a"), ("RUN", "x && y"), ("CMD", '["p", "q"]')]
    with pytest.raises(AssertionError):
        json_form("p q")
    assert ignored("Containerfile", ["*", "!bundle"])
    assert not ignored("bundle/artifacts/w.safetensors", ["*", "!bundle"])
    assert ignored("bundle/x", ["*", "!bundle", "bundle/x"])
