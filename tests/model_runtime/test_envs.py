"""Per-bundle environments (model_runtime.envs): planning, building with uv, reuse, failures,
eviction and the admin's policy.

Everything runs air-gapped: the packages come from a wheelhouse the session writes itself
(:mod:`.wheelhouse`) with ``no_index``; uv's cache lives under each test's root.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from model_runtime.envs import (
    EnvBuildError,
    Environment,
    EnvironmentManager,
    EnvironmentPolicy,
    EnvPolicyError,
    _build,
    failure_reason,
    normalize,
    pip_configuration,
    plan,
)

from .wheelhouse import Dist, build_wheelhouse

A = "hubserve-testpkg-a"
B = "hubserve-testpkg-b"
CONFLICT = "hubserve-testpkg-conflict"
#: Needs numpy and packaging, which the runtime has and the wheelhouse does not.
USES_RUNTIME = "hubserve-testpkg-uses-runtime"
SDIST = "hubserve-testpkg-sdist"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheelhouse(
        tmp_path_factory.mktemp("wheelhouse"),
        wheels=[
            Dist(A, "1.0"),
            Dist(A, "2.0"),
            Dist(B, "1.0", requires=(f"{A}>=1.0",)),
            # needs an older version of a package the runtime itself imports
            Dist(CONFLICT, "1.0", requires=("packaging<20",)),
            Dist("packaging", "19.0"),
            Dist(USES_RUNTIME, "1.0", requires=("numpy>=1.20", "packaging>=20")),
        ],
        sdists=[Dist(SDIST, "1.0")],
    )


def offline(wheelhouse: Path, **options: Any) -> EnvironmentPolicy:
    """The tests' policy: the wheelhouse only, pip's configuration on this host ignored."""
    return EnvironmentPolicy.create(
        find_links=[str(wheelhouse)], no_index=True, use_pip_config=False, **options
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "envroot"


@pytest.fixture
def manager(root: Path, wheelhouse: Path) -> EnvironmentManager:
    return EnvironmentManager(root, offline(wheelhouse))


def children(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_nothing_left(root: Path) -> None:
    """After a failure: no environment, no build folder."""
    assert children(root / "envs") == []
    assert children(root / "building") == []


def installed_version(name: str) -> str:
    return importlib.metadata.version(name)


# -- normalize ------------------------------------------------------------------------------


def test_normalize_canonical_names_sorted_and_deduplicated() -> None:
    lines = [
        "# requirements of a bundle",
        "",
        "Hubserve_Testpkg.B>=1.0",
        "numpy  # from the kernel",
        "hubserve-testpkg-b",
        "  HUBSERVE-testpkg-a >= 1.0 , <3  ",
    ]
    assert normalize(lines) == (f"{A}<3,>=1.0", f"{B}>=1.0", "numpy")
    assert normalize(reversed(lines)) == normalize(lines)


def test_normalize_merges_a_package_named_twice() -> None:
    assert normalize(["numpy>=1.24", "NumPy<3", "numpy>=1.24"]) == ("numpy<3,>=1.24",)
    assert normalize(["Pandas[Excel]==2.2", "pandas[parquet]"]) == ("pandas[excel,parquet]==2.2",)


def test_normalize_drops_markers_that_do_not_apply() -> None:
    reqs = normalize(
        [
            f'{A}==1.0; python_version >= "3"',
            f'{B}; python_version < "3"',
            'numpy; extra == "gpu"',
            f'{CONFLICT}; sys_platform == "{sys.platform}"',
        ]
    )
    assert reqs == (f"{A}==1.0", CONFLICT)


@pytest.mark.parametrize(
    "line",
    [
        "-r other-requirements.txt",
        "--index-url https://evil.example/simple",
        "--extra-index-url=https://evil.example/simple",
        "-e ./src",
        "--find-links /tmp",
        "evil @ https://evil.example/evil-1.0-py3-none-any.whl",
        "Evil @ file:///tmp/evil-1.0.tar.gz#sha256=00",
        "evil @ git+https://evil.example/evil.git",
    ],
)
def test_normalize_refuses_options_and_direct_references(line: str) -> None:
    with pytest.raises(EnvPolicyError):
        normalize(["numpy", line])


def test_normalize_invalid_line_is_a_build_error_not_a_policy_error() -> None:
    with pytest.raises(EnvBuildError, match="invalid requirement") as caught:
        normalize(["numpy >>> 1"])
    assert not isinstance(caught.value, EnvPolicyError)


# -- plan -------------------------------------------------------------------------------------


def test_plan_runtime_when_the_runtime_has_everything() -> None:
    torch = Version(installed_version("torch"))
    reqs = normalize(
        [
            f"numpy=={installed_version('numpy')}",
            # the bundle was packaged with a "+cpu" (or "+cu121") torch, pinned without it
            f"torch=={torch.public}",
            "pydantic>=2",
        ]
    )
    decided = plan(reqs)
    assert (decided.kind, decided.requirements, decided.wanted) == ("runtime", (), ())


def test_plan_overlay_for_a_missing_package() -> None:
    decided = plan(normalize([B, f"numpy=={installed_version('numpy')}"]))
    assert decided.kind == "overlay"
    assert decided.requirements == (B,)  # only what the runtime lacks is installed
    assert B in decided.reason


def test_plan_overlay_for_another_version_of_a_package_the_runtime_never_imports() -> None:
    # pytest is installed here (it runs this test) but no runtime imports it
    decided = plan(normalize(["pytest==1.0"]))
    assert (decided.kind, decided.requirements) == ("overlay", ("pytest==1.0",))


@pytest.mark.parametrize("name", ["numpy", "pydantic", "packaging"])
def test_plan_full_for_a_conflict_with_what_the_runtime_imports(name: str) -> None:
    decided = plan(normalize([f"{name}==1.0", A]))
    assert decided.kind == "full"
    assert f"{name}==1.0 (the runtime has {name} {installed_version(name)})" in decided.reason
    assert decided.requirements == normalize([f"{name}==1.0", A])  # a full env installs all
    assert set(decided.wanted) == {A, f"{name}==1.0"}


# -- prepare: nothing to build ------------------------------------------------------------


def test_runtime_requirements_build_nothing(manager: EnvironmentManager, root: Path) -> None:
    env = manager.prepare([f"numpy=={installed_version('numpy')}", "pydantic"])
    assert (env.kind, env.key, env.site, env.python, env.built) == (
        "runtime",
        None,
        None,
        None,
        False,
    )
    assert env.describe().startswith("runtime environment")
    assert not root.exists()


def test_disabled_policy_uses_the_runtime(root: Path, wheelhouse: Path) -> None:
    env = EnvironmentManager(root, offline(wheelhouse, enabled=False)).prepare([B])
    assert env.kind == "runtime"
    assert "turned off" in env.reason
    assert not root.exists()


# -- prepare: overlays --------------------------------------------------------------------


def test_overlay_is_built_from_the_wheelhouse_and_importable(
    manager: EnvironmentManager, root: Path
) -> None:
    messages: list[str] = []
    env = manager.prepare([B], progress=messages.append)

    assert (env.kind, env.built) == ("overlay", True)
    assert env.packages == {A: "2.0", B: "1.0"}  # b, and a (its dependency) at the newest
    assert env.key is not None and env.path == root / "envs" / env.key
    assert env.site == env.path / "site"
    assert env.python is None
    assert {"hubserve_testpkg_a", "hubserve_testpkg_b"} <= set(children(env.site))
    assert any(m.startswith(f"built overlay environment {env.key}") for m in messages)
    assert env.describe().startswith(f"overlay {env.key} (adds {B}): {A} 2.0, {B} 1.0")
    assert env.to_json() == {"kind": "overlay", "reason": env.reason, "key": env.key,
                             "packages": env.packages}  # fmt: skip
    assert [r["key"] for r in manager.environments()] == [env.key]
    assert children(root / "building") == []

    # a replica puts the site folder first on its path
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hubserve_testpkg_a as a, hubserve_testpkg_b as b;"
            "print(a.VERSION, b.VERSION, a.__file__)",
        ],
        env={**os.environ, "PYTHONPATH": str(env.site)},
        capture_output=True,
        text=True,
        check=True,
    )
    version_a, version_b, where = done.stdout.split()
    assert (version_a, version_b) == ("2.0", "1.0")
    assert Path(where).is_relative_to(env.site)


def test_overlay_resolves_against_the_runtime_without_its_wheels(
    manager: EnvironmentManager,
) -> None:
    """Air-gapped: the wheelhouse holds the bundle's package, not numpy or packaging, which
    the runtime has installed; the resolver takes those as installed and installs neither."""
    env = manager.prepare([USES_RUNTIME])
    assert (env.kind, env.packages) == ("overlay", {USES_RUNTIME: "1.0"})


def test_overlay_honours_the_requested_versions(manager: EnvironmentManager) -> None:
    env = manager.prepare([B, f"{A}<2"])
    assert env.packages == {A: "1.0", B: "1.0"}


def test_same_requirements_reuse_the_environment(
    manager: EnvironmentManager, root: Path, wheelhouse: Path
) -> None:
    first = manager.prepare([B, f"{A}>=1.0"])
    assert first.key is not None
    log = manager.log_file(first.key).read_text()

    messages: list[str] = []
    again = manager.prepare(["Hubserve_Testpkg.A >= 1.0", "HUBSERVE-TESTPKG-B"], messages.append)
    # and from another manager on the same root (another process, another deploy)
    other = EnvironmentManager(root, offline(wheelhouse)).prepare([f"{A}>=1.0", B])

    for env in (again, other):
        assert (env.key, env.kind, env.packages, env.built) == (
            first.key,
            "overlay",
            first.packages,
            False,
        )
    assert messages == []  # no resolution, no installation
    assert manager.log_file(first.key).read_text() == log
    assert children(root / "envs") == [first.key]


def test_other_requirements_or_sources_get_another_environment(
    manager: EnvironmentManager, root: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    one = manager.prepare([B])
    two = manager.prepare([A])
    elsewhere = build_wheelhouse(tmp_path / "other-wheelhouse", [Dist(A, "1.0")])
    three = EnvironmentManager(root, offline(elsewhere)).prepare([A])
    assert len({one.key, two.key, three.key}) == 3
    assert three.packages == {A: "1.0"}


WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from model_runtime.envs import EnvironmentManager, EnvironmentPolicy

    root, wheelhouse, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    policy = EnvironmentPolicy(find_links=(wheelhouse,), no_index=True, use_pip_config=False)

    def say(message):
        print(message, flush=True)
        if mode == "die" and message.startswith("installing"):
            os.kill(os.getpid(), signal.SIGKILL)  # a crash (or a killed pod) mid-build

    env = EnvironmentManager(root, policy).prepare(["hubserve-testpkg-b"], progress=say)
    print(json.dumps({"key": env.key, "built": env.built}), flush=True)
    """
)


def worker(root: Path, wheelhouse: Path, mode: str = "build") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root), str(wheelhouse), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes_build_once(root: Path, wheelhouse: Path, tmp_path: Path) -> None:
    key = EnvironmentManager(tmp_path / "scout", offline(wheelhouse)).prepare([B]).key
    assert key is not None
    lock = root / "locks" / f"{key}.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a") as held:
        # hold the key's lock so that both processes are waiting when it is released
        fcntl.flock(held, fcntl.LOCK_EX)
        workers = [worker(root, wheelhouse) for _ in range(2)]
        for process in workers:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == (
                "waiting for another build of the same environment"
            )
        fcntl.flock(held, fcntl.LOCK_UN)
    results = []
    for process in workers:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert {r["key"] for r in results} == {key}
    assert sorted(r["built"] for r in results) == [False, True]
    manager = EnvironmentManager(root, offline(wheelhouse))
    assert manager.log_file(key).read_text().count(" building ") == 1
    assert children(root / "envs") == [key]
    assert children(root / "building") == []


def test_concurrent_threads_build_once(manager: EnvironmentManager, root: Path) -> None:
    start = threading.Barrier(3)
    results: list[Environment] = []

    def deploy() -> None:
        start.wait()
        results.append(manager.prepare([B]))

    threads = [threading.Thread(target=deploy) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len({env.key for env in results}) == 1
    assert sorted(env.built for env in results) == [False, False, True]
    assert len(children(root / "envs")) == 1


def test_killed_build_is_never_reused(root: Path, wheelhouse: Path) -> None:
    process = worker(root, wheelhouse, "die")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == -9, out
    (leftover,) = children(root / "building")  # what the dead build left
    key = leftover.split("-", 1)[0]
    assert children(root / "envs") == []

    env = EnvironmentManager(root, offline(wheelhouse)).prepare([B])
    assert (env.key, env.built) == (key, True)
    assert env.site is not None and "hubserve_testpkg_b" in children(env.site)
    assert children(root / "building") == []  # the dead build's folder is gone too


def test_half_removed_or_unfinished_environment_is_rebuilt(
    manager: EnvironmentManager, root: Path
) -> None:
    env = manager.prepare([B])
    assert env.key is not None and env.path is not None and env.site is not None
    # a build killed just before its rename: complete-looking, but in building/
    leftover = root / "building" / f"{env.key}-deadbeef"
    leftover.parent.mkdir(exist_ok=True)
    env.path.rename(leftover)
    # and an eviction interrupted after env.json went: envs/<key> without it
    (env.site).mkdir(parents=True)
    (env.site / "half-removed").write_text("")

    messages: list[str] = []
    again = manager.prepare([B], messages.append)
    assert (again.key, again.built) == (env.key, True)
    assert any(m.startswith("installing") for m in messages)
    assert again.site is not None and "half-removed" not in children(again.site)
    assert {"hubserve_testpkg_a", "hubserve_testpkg_b"} <= set(children(again.site))
    assert children(root / "building") == []


# -- prepare: full environments -------------------------------------------------------------


def test_full_environment_when_a_dependency_conflicts_with_the_runtime(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full environment also installs the runtime's own dependencies (fastapi, numpy ...),
    # which an offline wheelhouse lacks: here it installs the bundle's packages only.
    monkeypatch.setattr(_build, "_runtime_requirements", list)
    # the allow list holds the bundle's package; packaging is the runtime's: allowed too
    manager = EnvironmentManager(root, offline(wheelhouse, allow=[CONFLICT]))
    assert plan(normalize([CONFLICT])).kind == "overlay"  # metadata alone cannot tell

    messages: list[str] = []
    env = manager.prepare([CONFLICT], messages.append)

    assert (env.kind, env.built) == ("full", True)
    assert "packaging" in env.reason and "conflicts with the runtime" in env.reason
    assert any(m.startswith("needs a separate environment") for m in messages)
    assert env.packages == {CONFLICT: "1.0", "packaging": "19.0"}
    assert env.path is not None and env.python == env.path / "venv" / "bin" / "python"
    assert env.site is None
    done = subprocess.run(
        [
            str(env.python),
            "-c",
            "import sys, packaging, hubserve_testpkg_conflict;"
            "print(packaging.VERSION, any(p.endswith('runtime-src') for p in sys.path))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["19.0", "True"]  # and model_runtime is on its path
    assert manager.prepare([CONFLICT]).built is False


def test_failed_full_environment_leaves_nothing(manager: EnvironmentManager, root: Path) -> None:
    with pytest.raises(EnvBuildError) as caught:
        manager.prepare(["numpy==1.0"])  # a full environment; no numpy in the wheelhouse
    assert caught.value.reason.startswith("unresolvable:")
    assert "\n" not in caught.value.reason
    assert_nothing_left(root)


# -- failures -----------------------------------------------------------------------------


def test_unresolvable_pin(manager: EnvironmentManager, root: Path) -> None:
    with pytest.raises(EnvBuildError) as caught:
        manager.prepare([f"{A}==9.9"])
    reason = caught.value.reason
    assert reason.startswith("unresolvable:")
    assert f"{A}==9.9" in reason and "\n" not in reason
    assert caught.value.log_file is not None
    assert "No solution found" in Path(caught.value.log_file).read_text()
    assert_nothing_left(root)


def test_source_only_package_refused_with_wheels_only(
    manager: EnvironmentManager, root: Path
) -> None:
    with pytest.raises(EnvBuildError) as caught:
        manager.prepare([SDIST])
    reason = caught.value.reason
    assert reason.startswith("unresolvable:") and "\n" not in reason
    assert SDIST in reason and "wheels only" in reason
    assert_nothing_left(root)


def test_denied_package_refused_before_any_build(root: Path, wheelhouse: Path) -> None:
    manager = EnvironmentManager(root, offline(wheelhouse, deny=["Hubserve_Testpkg_A"]))
    with pytest.raises(EnvPolicyError, match=f"{A} is denied"):
        manager.check([A])
    with pytest.raises(EnvPolicyError, match=f"{A} is denied"):
        manager.prepare([B, "hubserve.testpkg.a==1.0"])
    assert not root.exists()  # not even a lock or a log


def test_denied_dependency_refused(root: Path, wheelhouse: Path) -> None:
    manager = EnvironmentManager(root, offline(wheelhouse, deny=[A]))
    assert manager.check([B]) == (B,)  # the bundle's own requirements pass
    with pytest.raises(EnvPolicyError, match=f"{A} \\(needed by {B}\\) is denied"):
        manager.prepare([B])
    assert_nothing_left(root)


def test_allow_list(root: Path, wheelhouse: Path) -> None:
    numpy = f"numpy=={installed_version('numpy')}"
    only_b = EnvironmentManager(root, offline(wheelhouse, allow=[B]))
    with pytest.raises(EnvPolicyError, match=f"{A} is not on the hub's list"):
        only_b.prepare([A])
    with pytest.raises(EnvPolicyError, match=f"{A} \\(needed by {B}\\) is not on"):
        only_b.prepare([B])
    assert_nothing_left(root)

    both = EnvironmentManager(root, offline(wheelhouse, allow=[A, B]))
    # what the runtime provides needs no allowing
    assert both.prepare([B, numpy]).packages == {A: "2.0", B: "1.0"}


def test_reused_environment_is_checked_against_todays_policy(
    manager: EnvironmentManager, root: Path, wheelhouse: Path
) -> None:
    assert manager.prepare([B]).built
    stricter = EnvironmentManager(root, offline(wheelhouse, deny=[A]))
    with pytest.raises(EnvPolicyError, match=f"{A} \\(needed by {B}\\) is denied"):
        stricter.prepare([B])


def test_unreachable_index(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")  # uv retries 3 times, with back-off
    policy = EnvironmentPolicy(index_url="http://127.0.0.1:9/simple", use_pip_config=False)
    with pytest.raises(EnvBuildError) as caught:
        EnvironmentManager(root, policy).prepare([A])
    reason = caught.value.reason
    assert reason.startswith("the package index is not reachable") and "\n" not in reason
    assert "127.0.0.1:9" in reason
    assert_nothing_left(root)


def test_filesystem_error_is_a_build_error(manager: EnvironmentManager, root: Path) -> None:
    root.mkdir()
    (root / "envs").write_text("not a folder")
    with pytest.raises(EnvBuildError, match="cannot build the environment") as caught:
        manager.prepare([B])
    assert "\n" not in caught.value.reason
    assert children(root / "building") == []


def test_environment_over_the_size_limit(root: Path, wheelhouse: Path) -> None:
    manager = EnvironmentManager(root, offline(wheelhouse, max_env_bytes=4096))
    with pytest.raises(EnvBuildError, match=r"over the hub's limit of 4\.0 KiB per environment"):
        manager.prepare([B])
    assert_nothing_left(root)


# -- gc -------------------------------------------------------------------------------------


def test_gc_evicts_least_recently_used_and_keeps_what_is_in_use(
    manager: EnvironmentManager, root: Path
) -> None:
    one, two = manager.prepare([B]).key, manager.prepare([A]).key
    assert one is not None and two is not None
    assert manager.gc() == []  # the default cache size holds them
    now = time.time()
    os.utime(root / "envs" / one / "env.json", (now - 100, now - 100))
    os.utime(root / "envs" / two / "env.json", (now - 50, now - 50))
    manager.prepare([B])  # a deploy uses `one` again: `two` is now the least recently used
    assert [r["key"] for r in manager.environments()] == [one, two]

    assert manager.gc([one, two], max_bytes=0) == []
    assert manager.gc(in_use=[one], max_bytes=0) == [two]
    assert children(root / "envs") == [one]

    with (root / "locks" / f"{one}.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # being built or used right now
        assert manager.gc(max_bytes=0) == []
    assert manager.gc(max_bytes=0) == [one]
    assert children(root / "envs") == []
    assert manager.prepare([B]).built  # evicted: built again when asked for


def test_gc_order_without_in_use(manager: EnvironmentManager, root: Path) -> None:
    one, two = manager.prepare([B]).key, manager.prepare([A]).key
    assert one is not None and two is not None
    now = time.time()
    os.utime(root / "envs" / one / "env.json", (now - 50, now - 50))
    os.utime(root / "envs" / two / "env.json", (now - 100, now - 100))
    assert manager.gc(max_bytes=0) == [two, one]


def test_gc_removes_leftovers_of_dead_builds(manager: EnvironmentManager, root: Path) -> None:
    key = manager.prepare([B]).key
    dead = "0" * 24
    (root / "building" / f"{dead}-cafe0001" / "site").mkdir(parents=True)  # builder gone
    (root / "envs" / dead / "site").mkdir(parents=True)  # an interrupted removal
    busy = "1" * 24
    (root / "building" / f"{busy}-cafe0002").mkdir()
    with (root / "locks" / f"{busy}.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a build in progress
        assert manager.gc() == []
        assert children(root / "building") == [f"{busy}-cafe0002"]
    assert children(root / "envs") == [key]


# -- uv's output as one line ------------------------------------------------------------------

NO_VERSION = """\
error: No solution found when resolving dependencies
  cause: Because there is no version of hubserve-testpkg-a==9.9 and you require \
hubserve-testpkg-a==9.9, we can conclude that your requirements are unsatisfiable.
"""
CONFLICTING = """\
  \u00d7 No solution found when resolving dependencies:
  \u2570\u2500\u25b6 Because all versions of hubserve-testpkg-conflict depend on packaging<20 and \
packaging==26.4, we can conclude that all versions of hubserve-testpkg-conflict cannot be used.
      And because you require hubserve-testpkg-conflict, we can conclude that your \
requirements are unsatisfiable.
"""
NO_WHEELS = """\
error: No solution found when resolving dependencies
  cause: Because hubserve-testpkg-sdist==1.0 has no usable wheels and only \
hubserve-testpkg-sdist==1.0 is available, we can conclude that all versions of \
hubserve-testpkg-sdist cannot be used.
         And because you require hubserve-testpkg-sdist, we can conclude that your \
requirements are unsatisfiable.

hint: Wheels are required for `hubserve-testpkg-sdist` because building from source is \
disabled for all packages (i.e., with `--no-build`)
"""
UNREACHABLE = """\
error: Request failed after 3 retries in 10.3s
  cause: Failed to fetch: http://127.0.0.1:9/simple/hubserve-testpkg-a/
  cause: error sending request for url (http://127.0.0.1:9/simple/hubserve-testpkg-a/)
  cause: client error (Connect)
  cause: tcp connect error
  cause: Connection refused (os error 111)
"""


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (NO_VERSION, "unresolvable: there is no version of hubserve-testpkg-a==9.9"),
        (
            CONFLICTING,
            "unresolvable: all versions of hubserve-testpkg-conflict depend on packaging<20",
        ),
        (
            NO_WHEELS,
            "unresolvable: hubserve-testpkg-sdist==1.0 has no wheel for this platform and only"
            " hubserve-testpkg-sdist==1.0 is available (hubserve-testpkg-sdist is not built"
            " from source: the hub installs wheels only)",
        ),
        (
            UNREACHABLE,
            "the package index is not reachable (http://127.0.0.1:9/simple/hubserve-testpkg-a/)",
        ),
        (
            "error: Failed to fetch: `https://mirror.example/simple/x/`\n  cause: 503\n",
            "the package index is not reachable (https://mirror.example/simple/x/)",
        ),
        ("error: tcp connect error: timed out\n", "the package index is not reachable"),
        (
            "warning: something\nerror: Distribution not found at: file:///gone\n  cause: x\n",
            "Distribution not found at: file:///gone",
        ),
        ("Resolved 3 packages\n\nKilled\n", "Killed"),
        ("", "the installer failed"),
    ],
)
def test_failure_reason(output: str, reason: str) -> None:
    assert failure_reason(output) == reason


# -- the admin's policy -----------------------------------------------------------------------

PIP_VARIABLES = ("INDEX_URL", "EXTRA_INDEX_URL", "FIND_LINKS", "CONSTRAINT", "NO_INDEX", "CERT")


@pytest.fixture
def pip_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """pip's configuration from the test only: no config file, no PIP_* from this host."""
    for name in PIP_VARIABLES:
        monkeypatch.delenv(f"PIP_{name}", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    pip_configuration.cache_clear()
    yield monkeypatch
    pip_configuration.cache_clear()


def test_sources_from_pip_environment_variables(pip_env: pytest.MonkeyPatch) -> None:
    pip_env.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    pip_env.setenv("PIP_EXTRA_INDEX_URL", "https://a.example/simple https://b.example/simple")
    pip_env.setenv("PIP_FIND_LINKS", "/srv/wheels")
    pip_env.setenv("PIP_CONSTRAINT", "/etc/hubserve/constraints.txt")

    sources = EnvironmentPolicy().sources()
    assert sources.index_url == "https://mirror.example/simple"
    assert sources.extra_index_urls == ("https://a.example/simple", "https://b.example/simple")
    assert sources.find_links == ("/srv/wheels",)
    assert sources.constraints == ("/etc/hubserve/constraints.txt",)
    assert (sources.no_index, sources.use_pip_config) == (False, False)
    assert sources.uv_arguments() == [
        "--index-url", "https://mirror.example/simple",
        "--extra-index-url", "https://a.example/simple",
        "--extra-index-url", "https://b.example/simple",
        "--find-links", "/srv/wheels",
        "--constraint", "/etc/hubserve/constraints.txt",
        "--index-strategy", "unsafe-best-match",
        "--only-binary", ":all:",
    ]  # fmt: skip
    # the policy's own constraints win over pip's
    assert EnvironmentPolicy(constraints=("/c.txt",)).sources().constraints == ("/c.txt",)


def test_sources_no_index_from_pip(pip_env: pytest.MonkeyPatch) -> None:
    pip_env.setenv("PIP_FIND_LINKS", "/srv/wheels /srv/more-wheels")
    pip_env.setenv("PIP_NO_INDEX", "1")
    sources = EnvironmentPolicy().sources()
    assert (sources.no_index, sources.index_url) == (True, None)
    assert sources.uv_arguments() == [
        "--no-index", "--find-links", "/srv/wheels", "--find-links", "/srv/more-wheels",
        "--only-binary", ":all:",
    ]  # fmt: skip


def test_sources_from_a_pip_config_file(pip_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pip.conf"
    config.write_text(
        textwrap.dedent(
            """\
            [global]
            index-url = https://mirror.example/simple
            extra-index-url =
                https://a.example/simple
                https://b.example/simple
            find-links =
                /srv/wheels
                /srv/more-wheels
            constraint = /etc/hubserve/constraints.txt
            no-index = yes
            """
        )
    )
    pip_env.setenv("PIP_CONFIG_FILE", str(config))
    sources = EnvironmentPolicy().sources()
    assert sources.index_url == "https://mirror.example/simple"
    assert sources.extra_index_urls == ("https://a.example/simple", "https://b.example/simple")
    assert sources.find_links == ("/srv/wheels", "/srv/more-wheels")
    assert sources.constraints == ("/etc/hubserve/constraints.txt",)
    assert sources.no_index is True


def test_sources_named_by_the_policy_ignore_pip(pip_env: pytest.MonkeyPatch) -> None:
    pip_env.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    for policy in (
        EnvironmentPolicy(find_links=("/srv/wheels",)),
        EnvironmentPolicy(index_url="https://other.example/simple"),
        EnvironmentPolicy(no_index=True),
        EnvironmentPolicy(use_pip_config=False),
    ):
        assert policy.sources() is policy
    assert EnvironmentPolicy(use_pip_config=False).uv_arguments() == ["--only-binary", ":all:"]


def test_uv_arguments() -> None:
    policy = EnvironmentPolicy(
        index_url="https://mirror.example/simple",
        find_links=("/srv/wheels",),
        allow_sdist=True,
        use_pip_config=False,
    )
    arguments = policy.uv_arguments()
    assert "--only-binary" not in arguments and "--index-strategy" not in arguments
    assert arguments == ["--index-url", "https://mirror.example/simple", "--find-links",
                         "/srv/wheels"]  # fmt: skip
    assert EnvironmentPolicy(no_index=True, find_links=("/w",)).uv_arguments()[:3] == [
        "--no-index",
        "--find-links",
        "/w",
    ]


def test_policy_names_are_canonical() -> None:
    policy = EnvironmentPolicy.create(allow=["Scikit_Learn"], deny=("Evil.Pkg",), find_links=["/w"])
    assert policy.allow == frozenset({"scikit-learn"})
    assert policy.deny == frozenset({"evil-pkg"})
    assert policy.find_links == ("/w",)
    assert policy.fingerprint() != EnvironmentPolicy(find_links=("/x",)).fingerprint()
